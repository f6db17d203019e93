"""Hugging Face configs of the two-matrix-MLP families with LayerNorm (GPT-2, GPT-NeoX / Pythia, Falcon,
StarCoder2): biased projections, an ungated MLP, and for GPT-2 a learned position table. Their parallel
attention/MLP blocks (GPT-NeoX, Falcon) hold the same weights and move the same bytes as sequential ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from simulator.config import BlockConfig, DenseFFNConfig
from simulator.hf.reader import Reader, attention_config, plain_activation, validated


def _plain_ffn(r: Reader, d_ff: int, bias: bool, act_key: str, act_default: str) -> DenseFFNConfig:
    act = plain_activation(r, act_key, act_default)
    return validated(r, lambda: DenseFFNConfig(d_ff=d_ff, activation=act, bias=bias))


def _blocks(
    r: Reader, d: int, n_layers: int, bias: bool, ffn: DenseFFNConfig, **attn: Any
) -> list[BlockConfig]:
    a = attention_config(r, d, qkv_bias=bias, o_bias=bias, **attn)
    return [BlockConfig(attention=a, ffn=[ffn], norm="layernorm") for _ in range(n_layers)]


def _gpt2(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """GPT-2: fused qkv and every projection biased (no switch), MLP of `n_inner` (4 x n_embd when
    null) with `activation_function` (gelu_new); the position table is the model's (learned_positions)."""
    width = r.opt_int("intermediate_size", 4 * d) or 4 * d  # n_inner, read through its alias; null: 4d
    return _blocks(r, d, n_layers, True, _plain_ffn(r, width, True, "activation_function", "gelu_new"))


def _gpt_neox(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """GPT-NeoX / Pythia: MHA with q/k/v and output biased by `attention_bias` (on by default); the
    MLP always biased (plain Linear layers), RoPE on `rotary_pct` of each head (no weights)."""
    bias = r.opt_bool("attention_bias", True)
    ffn = _plain_ffn(r, r.need_int("intermediate_size"), True, "hidden_act", "gelu")
    a = attention_config(r, d, qkv_bias=bias, o_bias=bias)
    return [BlockConfig(attention=a, ffn=[ffn], norm="layernorm") for _ in range(n_layers)]


def _falcon(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """Falcon: K/V heads from `num_kv_heads` with the new decoder architecture (40B, 180B), one with
    `multi_query` (7B), else as many as the query heads; every projection biased by `bias` (off in the
    published models); MLP of `ffn_hidden_size` (4 x hidden by default) with `activation` (gelu)."""
    heads = r.need_int("num_attention_heads")
    if r.opt_bool("new_decoder_architecture", False):
        kv = r.opt_int("num_kv_heads", heads)
    elif r.opt_bool("multi_query", True):
        kv = 1
    else:
        kv = r.opt_int("num_kv_heads", heads)
    bias = r.opt_bool("bias", False)
    ffn = _plain_ffn(r, r.opt_size("ffn_hidden_size", 4 * d), bias, "activation", "gelu")
    # the K/V head count is the architecture's, whatever num_kv_heads says beside multi_query
    view = Reader({**r.cfg, "num_key_value_heads": kv}, r.what)
    blocks = _blocks(view, d, n_layers, bias, ffn)
    r.defaults.update(view.defaults)
    return blocks


def _starcoder2(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """StarCoder2: GQA with q/k/v/o and the MLP biased by `use_bias` (on by default), `hidden_act`
    gelu_pytorch_tanh, the sliding window (when set) on every layer."""
    bias = r.opt_bool("use_bias", True)
    ffn = _plain_ffn(r, r.need_int("intermediate_size"), bias, "hidden_act", "gelu_pytorch_tanh")
    # Starcoder2Config's default is 2 K/V heads (its 3B's)
    return _blocks(r, d, n_layers, bias, ffn, window=r.opt_int("sliding_window", None), kv_default=2)


BUILDERS: dict[str, Callable[[Reader, int, int], list[BlockConfig]]] = {
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
    "falcon": _falcon,
    "starcoder2": _starcoder2,
}
# what these families hold beside their blocks: LayerNorm throughout, and GPT-2's position table
MODEL_FIELDS: dict[str, dict[str, Any]] = {
    "gpt2": {"norm": "layernorm", "learned_positions": True},
    "gpt_neox": {"norm": "layernorm"},
    "falcon": {"norm": "layernorm"},
    "starcoder2": {"norm": "layernorm"},
}

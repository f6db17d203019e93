"""Hugging Face configs of the LayerNorm families (GPT-2, OPT, BLOOM, GPT-J, GPT-NeoX / Pythia, Falcon,
StarCoder2, Phi-2, StableLM, MPT), mostly with biased projections and a two-matrix MLP; GPT-2 and OPT
have a learned position table, GPT-J and Phi-2 a biased LM head. Their parallel attention/MLP blocks
(GPT-J, GPT-NeoX, Falcon, Phi) hold the same weights and move the same bytes as sequential ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from simulator.config import BlockConfig, DenseFFNConfig
from simulator.errors import ConfigError
from simulator.hf.reader import Reader, attention_config, dense_ffn, plain_activation, validated


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


def _opt(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """OPT: q/k/v/out and fc1/fc2 biased by `enable_bias` (on by default), an MLP of `ffn_dim` with
    `activation_function` (relu); a learned position table of max_position_embeddings + 2 rows; tied.
    The projections to a narrower embedding (`word_embed_proj_dim`, OPT-350m) are refused."""
    proj = r.opt_int("word_embed_proj_dim", None)
    if proj is not None and proj != d:
        raise ConfigError(f"{r.what}: word_embed_proj_dim {proj} != hidden_size {d} is not modelled")
    bias = r.opt_bool("enable_bias", True)
    ffn = _plain_ffn(r, r.need_int("ffn_dim"), bias, "activation_function", "relu")
    return _blocks(r, d, n_layers, bias, ffn)


def _bloom(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """BLOOM: fused q/k/v and dense biased, an MLP of 4 x hidden (GELU) biased, ALiBi (no position
    weights); tied. Its embedding LayerNorm holds norm weights only."""
    return _blocks(r, d, n_layers, True, _plain_ffn(r, 4 * d, True, "hidden_act", "gelu"))


def _gptj(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """GPT-J: q/k/v/out without biases, fc_in/fc_out of `n_inner` (4 x n_embd when null) with biases,
    `activation_function` gelu_new, attention and MLP in parallel on one LayerNorm; an LM head with a
    bias, untied. The checkpoint's causal-mask buffers are not weights."""
    width = r.opt_int("intermediate_size", 4 * d) or 4 * d  # n_inner, read through its alias
    attn = attention_config(r, d, qkv_bias=False, o_bias=False)
    ffn = _plain_ffn(r, width, True, "activation_function", "gelu_new")
    return [BlockConfig(attention=attn, ffn=[ffn], norm="layernorm") for _ in range(n_layers)]


def _phi(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """Phi-1/1.5/2: attention (q/k/v/dense) and MLP (fc1/fc2, `hidden_act` gelu_new) all biased, run in
    parallel on one LayerNorm's output (the same weights and bytes as in sequence); an LM head with a
    bias (head_bias); q/k LayerNorms (`qk_layernorm`) are norm weights."""
    attn = attention_config(r, d, qkv_bias=True, o_bias=True)
    ffn = _plain_ffn(r, r.need_int("intermediate_size"), True, "hidden_act", "gelu_new")
    return [BlockConfig(attention=attn, ffn=[ffn], norm="layernorm") for _ in range(n_layers)]


def _stablelm(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """StableLM (2): q/k/v biased by `use_qkv_bias`, o never; a gated SwiGLU MLP without biases;
    LayerNorm (with bias); StableLmConfig's 32 K/V heads by default."""
    attn = attention_config(r, d, qkv_bias=r.opt_bool("use_qkv_bias", False), o_bias=False, kv_default=32)
    return [BlockConfig(attention=attn, ffn=[dense_ffn(r)], norm="layernorm") for _ in range(n_layers)]


def _mpt(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """MPT: fused Wqkv and out_proj, an MLP of 4 x d_model (transformers' width; `expansion_ratio` must
    agree), GELU, no biases when `no_bias` (the default); ALiBi holds no weights (a learned position
    table is refused: transformers' MPT has none); multi-head attention only."""
    attn_cfg = r.cfg.get("attn_config") or {}
    if not isinstance(attn_cfg, dict):
        raise ConfigError(f"{r.what}: 'attn_config' must be a JSON object")
    if attn_cfg.get("alibi") is False:
        raise ConfigError(f"{r.what}: attn_config.alibi false (learned positions) is not modelled for MPT")
    if attn_cfg.get("attn_type", "multihead_attention") != "multihead_attention":
        raise ConfigError(f"{r.what}: attn_config.attn_type {attn_cfg['attn_type']!r} is not modelled")
    if r.opt_size("expansion_ratio", 4) != 4:
        raise ConfigError(f"{r.what}: expansion_ratio other than 4 is not modelled (transformers builds 4x)")
    bias = not r.opt_bool("no_bias", True)
    return _blocks(r, d, n_layers, bias, _plain_ffn(r, 4 * d, bias, "hidden_act", "gelu"))


BUILDERS: dict[str, Callable[[Reader, int, int], list[BlockConfig]]] = {
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
    "falcon": _falcon,
    "starcoder2": _starcoder2,
    "opt": _opt,
    "bloom": _bloom,
    "gptj": _gptj,
    "phi": _phi,
    "stablelm": _stablelm,
    "mpt": _mpt,
}
# what these families hold beside their blocks: LayerNorm throughout, and GPT-2's position table
MODEL_FIELDS: dict[str, dict[str, Any]] = {
    "gpt2": {"norm": "layernorm", "learned_positions": True},
    "gpt_neox": {"norm": "layernorm"},
    "falcon": {"norm": "layernorm"},
    "starcoder2": {"norm": "layernorm"},
    "opt": {"norm": "layernorm", "learned_positions": True, "position_offset": 2},
    "bloom": {"norm": "layernorm"},
    "gptj": {"norm": "layernorm", "head_bias": True},
    "phi": {"norm": "layernorm", "head_bias": True},
    "stablelm": {"norm": "layernorm"},
    "mpt": {"norm": "layernorm"},
}

"""Hugging Face config.json ingestion of the recurrent and hybrid families (Qwen3-Next, Jamba, Mamba,
Falcon-Mamba, Mamba-2, Nemotron-H, Granite 4.0-H, Bamba): the layer pattern by index, the mixer fields,
and the total parameter count against a hand count written out from the transformers modeling files'
weight shapes (norm weights excluded, as everywhere in this project) and against the published totals
(tests/data/hf/SOURCES.md)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from simulator.config import (
    AttentionConfig,
    DenseFFNConfig,
    GatedDeltaNetConfig,
    Mamba2Config,
    MambaConfig,
    ModelConfig,
    MoEConfig,
    Workload,
)
from simulator.errors import ConfigError
from simulator.hf import from_hf_config
from simulator.loading import load_hardware, load_model
from simulator.sweep import simulate

HF_DIR = Path(__file__).parent / "data" / "hf"


def hf(name: str) -> dict[str, Any]:
    return json.loads((HF_DIR / f"{name}.json").read_text())


def load(name: str) -> ModelConfig:
    """Through the same entry point as the CLI: a config.json path."""
    return load_model(HF_DIR / f"{name}.json")


def simulated(model: ModelConfig, batch: int = 1, context: int = 1) -> Any:
    """The simulator's total row (one decode step) for the model."""
    wl = Workload(batch=[batch], context=[context])
    return simulate(model, load_hardware("h100-sxm"), wl).iloc[0]


def layers(model: ModelConfig) -> list[tuple[str | None, list[str]]]:
    """Per layer: the token mixer's kind (None: an FFN-only block) and the FFN-position kinds."""
    out = []
    for block in model.expanded_blocks():
        mixer = block.attention
        kind = None if mixer is None else ("attention" if isinstance(mixer, AttentionConfig) else mixer.kind)
        out.append((kind, [f.kind for f in block.ffn]))
    return out


def where(kinds: list[tuple[str | None, list[str]]], mixer: str | None) -> list[int]:
    return [i for i, (k, _) in enumerate(kinds) if k == mixer]


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text and text.strip() == text
    return text


# ------------------------------------------------------- hand counts, from the modeling files' shapes


def mamba1_weights(d: int, d_inner: int, d_state: int, dt_rank: int, d_conv: int, conv_bias: bool) -> int:
    """MambaMixer / JambaMambaMixer without projection biases: in_proj (d -> 2 d_inner), conv1d
    (d_inner x d_conv, + bias), x_proj (d_inner -> dt_rank + 2 d_state), dt_proj (dt_rank -> d_inner, with
    bias), A_log (d_inner x d_state), D (d_inner), out_proj (d_inner -> d). Jamba's dt/B/C norms: norms."""
    in_proj = d * 2 * d_inner
    conv = d_inner * d_conv + (d_inner if conv_bias else 0)
    x_proj = d_inner * (dt_rank + 2 * d_state)
    dt_proj = dt_rank * d_inner + d_inner
    return in_proj + conv + x_proj + dt_proj + d_inner * d_state + d_inner + d_inner * d


def mamba2_weights(d: int, heads: int, head_dim: int, groups: int, d_state: int, d_conv: int) -> int:
    """Mamba2Mixer (and Nemotron-H's, Bamba's) without projection biases, conv bias on: in_proj (d ->
    d_inner + conv_dim + heads), conv1d over conv_dim = d_inner + 2 groups d_state (+ bias), dt_bias, A_log
    and D per head, out_proj (d_inner -> d); the gated RMSNorm is a norm."""
    d_inner = heads * head_dim
    conv_dim = d_inner + 2 * groups * d_state
    return d * (d_inner + conv_dim + heads) + conv_dim * (d_conv + 1) + 3 * heads + d_inner * d


def attention_weights(d: int, heads: int, kv_heads: int, head_dim: int, gate: bool = False) -> int:
    """q (twice as wide with Qwen3-Next's output gate), k, v and o projections, no biases."""
    q = d * heads * head_dim * (2 if gate else 1)
    return q + 2 * d * kv_heads * head_dim + heads * head_dim * d


def gated_deltanet_weights(d: int, k_heads: int, v_heads: int, dk: int, dv: int, d_conv: int) -> int:
    """Qwen3NextGatedDeltaNet: in_proj_qkvz (d -> 2 k_heads dk + 2 v_heads dv), in_proj_ba (d -> 2
    v_heads), conv1d (2 k_heads dk + v_heads dv channels, no bias), dt_bias and A_log per value head,
    out_proj (v_heads dv -> d); its gated RMSNorm is a norm."""
    key, value = k_heads * dk, v_heads * dv
    return d * (2 * key + 2 * value) + d * 2 * v_heads + (2 * key + value) * d_conv + 2 * v_heads + value * d


def swiglu(d: int, width: int) -> int:
    return 3 * d * width


def moe_weights(
    d: int, experts: int, width: int, shared: int, mats: int = 3, selection_bias: bool = False
) -> int:
    """Routed experts, one shared MLP, the router (d x experts), DeepSeek-style selection bias."""
    return experts * mats * d * width + mats * d * shared + d * experts + (experts if selection_bias else 0)


# ------------------------------------------------------------------------------------------ Qwen3-Next


def test_qwen3_next_layer_pattern_mixers_and_ffns() -> None:
    m = load("Qwen3-Next-80B-A3B-Instruct")
    kinds = layers(m)
    assert len(kinds) == 48
    # full_attention_interval 4: layers 3, 7, ..., 47 attend; the other 36 are Gated DeltaNet
    assert where(kinds, "attention") == list(range(3, 48, 4))
    assert where(kinds, "gated_deltanet") == [i for i in range(48) if i % 4 != 3]
    assert all(ffn == ["moe"] for _, ffn in kinds)  # decoder_sparse_step 1, no mlp_only_layers
    linear = m.blocks[0].attention
    assert isinstance(linear, GatedDeltaNetConfig)
    assert (linear.n_k_heads, linear.n_v_heads, linear.head_k_dim, linear.head_v_dim) == (16, 32, 128, 128)
    assert (linear.d_conv, linear.conv_bias, linear.proj_bias) == (4, False, False)
    full = m.blocks[1].attention
    assert isinstance(full, AttentionConfig)
    assert (full.kind, full.n_heads, full.kv_heads, full.head_dim, full.output_gate) == (
        "gqa",
        16,
        2,
        256,
        True,
    )
    moe = m.blocks[0].ffn[0]
    assert isinstance(moe, MoEConfig)
    assert (moe.n_experts, moe.top_k, moe.expert_ffn, moe.n_shared_experts, moe.shared_ffn) == (
        512,
        10,
        512,
        1,
        512,
    )
    assert not m.tie_embeddings and m.vocab_size == 151936 and m.max_positions == 262144


def test_qwen3_next_total_against_hand_count_and_the_hub() -> None:
    m = load("Qwen3-Next-80B-A3B-Instruct")
    d, vocab = 2048, 151936
    linear = gated_deltanet_weights(d, 16, 32, 128, 128, 4)
    full = attention_weights(d, 16, 2, 256, gate=True)
    moe = moe_weights(d, 512, 512, 512)
    shared_gate = d  # a d -> 1 projection per layer scales the shared expert
    hand = 36 * linear + 12 * full + 48 * (moe + shared_gate) + 2 * vocab * d
    assert simulated(m)["params"] == hand == 79_674_181_888
    # The Hub's 81,324,862,720 (safetensors) also holds what the simulator leaves out on purpose:
    # the multi-token-prediction module transformers does not load (fc 2d -> d, one full-attention MoE
    # decoder layer with its q/k norms and shared-expert gate, five norms) and every norm weight.
    mtp = 2 * d * d + full + 2 * 256 + (moe + d) + 5 * d
    norms = 48 * 2 * d + d + 36 * 128 + 12 * 2 * 256  # pre/post norms, final, GDN gated norm, q/k norms
    assert mtp == 1_650_471_424
    assert hand == 81_324_862_720 - mtp - norms
    assert hand + norms == 79_674_391_296  # what transformers loads (the MTP module left out)


def test_qwen3_next_layer_types_and_dense_layers() -> None:
    cfg = hf("Qwen3-Next-80B-A3B-Instruct")
    types = ["full_attention", "linear_attention"] * 24  # layer_types wins over the interval
    kinds = layers(from_hf_config({**cfg, "layer_types": types, "mlp_only_layers": [0, 1]}, "q"))
    assert where(kinds, "attention") == list(range(0, 48, 2))
    assert [ffn for _, ffn in kinds[:3]] == [["dense"], ["dense"], ["moe"]]
    dense = from_hf_config({**cfg, "mlp_only_layers": [0]}, "q").blocks[0].ffn[0]
    assert isinstance(dense, DenseFFNConfig) and (dense.d_ff, dense.activation) == (5120, "swiglu")
    # decoder_sparse_step 2: MoE where (i + 1) % 2 == 0
    stepped = layers(from_hf_config({**cfg, "decoder_sparse_step": 2}, "q"))
    assert [ffn[0] for _, ffn in stepped[:4]] == ["dense", "moe", "dense", "moe"]
    with pytest.raises(ConfigError) as exc:
        from_hf_config({**cfg, "layer_types": ["linear_attention"] * 47}, "q")
    assert "'layer_types' must list one type per layer (48)" in one_line(exc)


def test_qwen3_next_defaults_are_the_config_class_defaults() -> None:
    # Qwen3NextConfig's defaults are the 80B-A3B's linear-attention and MoE shapes: without those keys the
    # same model, each default recorded in the provenance
    cfg = hf("Qwen3-Next-80B-A3B-Instruct")
    keys = (
        "linear_num_value_heads",
        "linear_key_head_dim",
        "head_dim",
        "full_attention_interval",
        "num_experts",
    )
    bare = {k: v for k, v in cfg.items() if k not in keys}
    m = from_hf_config(bare, "q")
    assert m.blocks == load("Qwen3-Next-80B-A3B-Instruct").blocks
    assert {f"hf.{k}" for k in keys} <= set(m.provenance)


# --------------------------------------------------------------------------------------------- Jamba


def test_jamba_layer_pattern_and_mixers() -> None:
    m = load("Jamba-1.5-Mini")
    kinds = layers(m)
    assert where(kinds, "attention") == [4, 12, 20, 28]  # i % attn_layer_period 8 == attn_layer_offset 4
    assert len(where(kinds, "mamba")) == 28
    assert [ffn[0] for _, ffn in kinds] == ["dense", "moe"] * 16  # i % 2 == 1: MoE
    mamba = m.blocks[0].attention
    assert isinstance(mamba, MambaConfig)
    assert (mamba.d_inner, mamba.d_state, mamba.dt_rank, mamba.d_conv) == (8192, 16, 256, 4)
    assert (mamba.conv_bias, mamba.proj_bias) == (True, False)
    attn = m.blocks[4].attention
    assert isinstance(attn, AttentionConfig) and (attn.n_heads, attn.kv_heads, attn.head_dim) == (32, 8, 128)
    moe, dense = m.blocks[1].ffn[0], m.blocks[0].ffn[0]
    assert isinstance(moe, MoEConfig) and (moe.n_experts, moe.top_k, moe.expert_ffn, moe.shared_ffn) == (
        16,
        2,
        14336,
        0,
    )
    assert isinstance(dense, DenseFFNConfig) and (dense.d_ff, dense.activation) == (14336, "swiglu")


def test_jamba_total_against_hand_count_and_published() -> None:
    m = load("Jamba-1.5-Mini")
    d, vocab = 4096, 65536
    mamba = mamba1_weights(d, 2 * d, 16, 256, 4, conv_bias=True)
    attn = attention_weights(d, 32, 8, 128)
    hand = 28 * mamba + 4 * attn + 16 * swiglu(d, 14336) + 16 * moe_weights(d, 16, 14336, 0) + 2 * vocab * d
    r = simulated(m)
    assert r["params"] == hand == 51_570_049_024
    # published: 52 B total, 12 B active (arXiv 2408.12570; Jamba-v0.1's arXiv 2403.19887 the same);
    # the norms (274,304 weights) are not counted
    assert abs(hand / 52e9 - 1) < 0.01
    assert abs(r["active_params"] / 12e9 - 1) < 0.02


def test_jamba_dt_rank_auto_layers_block_type_and_offsets() -> None:
    cfg = hf("Jamba-1.5-Mini")
    auto = from_hf_config({**cfg, "mamba_dt_rank": "auto"}, "j")
    assert auto.blocks == load("Jamba-1.5-Mini").blocks  # ceil(4096 / 16) = 256
    stated = ["attention" if i % 8 == 4 else "mamba" for i in range(32)]
    assert from_hf_config({**cfg, "layers_block_type": stated}, "j").blocks == auto.blocks
    with pytest.raises(ConfigError) as exc:
        from_hf_config({**cfg, "layers_block_type": ["mamba"] * 32}, "j")
    assert "'layers_block_type' disagrees with attn_layer_period 8" in one_line(exc)
    with pytest.raises(ConfigError) as exc:
        from_hf_config({**cfg, "attn_layer_offset": 8}, "j")
    assert "'attn_layer_offset' 8 must be at least 0 and below attn_layer_period 8" in one_line(exc)
    # one expert everywhere is Jamba's dense variant: no MoE layer at all
    dense = layers(from_hf_config({**cfg, "num_experts": 1}, "j"))
    assert all(ffn == ["dense"] for _, ffn in dense)


# --------------------------------------------------------------------------- Mamba-1 and Falcon-Mamba


def test_falcon_mamba_is_mixer_only_and_its_width_is_intermediate_size() -> None:
    m = load("falcon-mamba-7b")
    kinds = layers(m)
    assert kinds == [("mamba", [])] * 64 and len(m.blocks) == 1
    mamba = m.blocks[0].attention
    assert isinstance(mamba, MambaConfig)
    # intermediate_size 8192, not expand 16 x hidden 4096
    assert (mamba.d_inner, mamba.d_state, mamba.dt_rank, mamba.d_conv) == (8192, 16, 256, 4)
    assert (mamba.conv_bias, mamba.proj_bias) == (True, False)
    assert not m.tie_embeddings
    d, vocab = 4096, 65024
    hand = 64 * mamba1_weights(d, 8192, 16, 256, 4, conv_bias=True) + 2 * vocab * d
    assert simulated(m)["params"] == hand == 7_272_398_848
    # published 7.27 B (model card, arXiv 2410.05355); the 64 + 1 RMSNorms (266,240) are not counted
    assert abs(hand / 7.27e9 - 1) < 0.001


def test_mamba_type_defaults_width_rank_and_tied_head() -> None:
    # state-spaces/mamba-*-hf configs name model_type "mamba"; without intermediate_size the width is
    # expand x hidden, time_step_rank "auto" is ceil(hidden / 16), and MambaConfig ties the LM head
    cfg = {
        k: v
        for k, v in hf("falcon-mamba-7b").items()
        if k not in ("intermediate_size", "tie_word_embeddings")
    }
    cfg.update(model_type="mamba", architectures=["MambaForCausalLM"], expand=2, time_step_rank="auto")
    m = from_hf_config(cfg, "mamba")
    mamba = m.blocks[0].attention
    assert isinstance(mamba, MambaConfig) and (mamba.d_inner, mamba.dt_rank) == (8192, 256)
    assert m.tie_embeddings and "hf.tie_word_embeddings" in m.provenance
    del cfg["model_type"]  # read through architectures
    assert from_hf_config(cfg, "mamba").blocks == m.blocks


# ------------------------------------------------------------------------------------------- Mamba-2


def test_mamba2_codestral_mixers_and_exact_published_total() -> None:
    m = load("Mamba-Codestral-7B-v0.1")
    assert layers(m) == [("mamba2", [])] * 64
    mixer = m.blocks[0].attention
    assert isinstance(mixer, Mamba2Config)
    assert (mixer.n_heads, mixer.head_dim, mixer.n_groups, mixer.d_state, mixer.chunk_size) == (
        128,
        64,
        8,
        128,
        256,
    )
    assert (mixer.d_conv, mixer.conv_bias, mixer.proj_bias) == (4, True, False)
    d, vocab = 4096, 32768
    hand = 64 * mamba2_weights(d, 128, 64, 8, 128, 4) + 2 * vocab * d
    assert simulated(m)["params"] == hand
    # published: exactly 7,285,403,648 (the Hub's count); the difference is the norm weights, per layer the
    # block's RMSNorm and the mixer's gated RMSNorm over d_inner, and the final norm
    norms = 64 * (d + 128 * 64) + d
    assert hand == 7_285_403_648 - norms


def test_mamba2_heads_must_fill_the_mixer_width() -> None:
    cfg = {**hf("Mamba-Codestral-7B-v0.1"), "head_dim": 32}
    with pytest.raises(ConfigError) as exc:
        from_hf_config(cfg, "m2")
    assert "num_heads x head_dim = 128 x 32 must equal the mixer width 8192" in one_line(exc)


# ---------------------------------------------------------------------------------------- Nemotron-H


def test_nemotron_h_pattern_layers_and_mixers() -> None:
    m = load("Nemotron-H-8B-Base-8K")
    pattern = hf("Nemotron-H-8B-Base-8K")["hybrid_override_pattern"]
    kinds = layers(m)
    assert len(kinds) == 52
    assert where(kinds, "mamba2") == [i for i, c in enumerate(pattern) if c == "M"]
    assert where(kinds, "attention") == [7, 18, 29, 40] == [i for i, c in enumerate(pattern) if c == "*"]
    mlp = [i for i, (k, ffn) in enumerate(kinds) if k is None and ffn == ["dense"]]
    assert mlp == [i for i, c in enumerate(pattern) if c == "-"]
    assert (len(where(kinds, "mamba2")), len(mlp)) == (24, 24)  # 24 Mamba-2, 24 MLP, 4 attention
    assert all(ffn == [] for k, ffn in kinds if k is not None)  # each layer is ONE of them
    mamba = m.blocks[0].attention
    assert isinstance(mamba, Mamba2Config)
    assert (mamba.n_heads, mamba.head_dim, mamba.n_groups, mamba.d_state, mamba.chunk_size) == (
        128,
        64,
        8,
        128,
        128,
    )
    attn = m.blocks[7].attention
    assert isinstance(attn, AttentionConfig) and (attn.n_heads, attn.kv_heads, attn.head_dim) == (32, 8, 128)
    mlp_layer = m.blocks[1].ffn[0]
    assert isinstance(mlp_layer, DenseFFNConfig) and (mlp_layer.d_ff, mlp_layer.activation) == (21504, "relu")


def test_nemotron_h_total_against_hand_count_and_published() -> None:
    m = load("Nemotron-H-8B-Base-8K")
    d, vocab = 4096, 131072
    hand = (
        24 * mamba2_weights(d, 128, 64, 8, 128, 4)
        + 4 * attention_weights(d, 32, 8, 128)
        + 24 * 2 * d * 21504  # up and down projections of the relu^2 MLP
        + 2 * vocab * d
    )
    assert simulated(m)["params"] == hand == 8_100_439_040
    # published "8B" (arXiv 2504.03624, model card); the 413,696 norm weights are not counted
    assert abs(hand / 8e9 - 1) < 0.02


def test_nemotron_h_decode_reads_kv_only_in_its_four_attention_layers() -> None:
    m = load("Nemotron-H-8B-Base-8K")
    grows = simulated(m, context=4096)["kv_read_bytes"] - simulated(m, context=2048)["kv_read_bytes"]
    assert grows == 4 * 2048 * 2 * 8 * 128 * 2  # K and V, 8 KV heads of 128, bf16; the Mamba states stay


def test_nemotron_h_moe_layers_and_layers_block_type() -> None:
    cfg = hf("Nemotron-H-8B-Base-8K")
    moe_cfg = {
        **cfg,
        "hybrid_override_pattern": "ME*E-",
        "num_hidden_layers": 5,
        "n_routed_experts": 64,
        "num_experts_per_tok": 6,
        "moe_intermediate_size": 1024,
        "moe_shared_expert_intermediate_size": 2048,
    }
    m = from_hf_config(moe_cfg, "nh")
    assert layers(m) == [
        ("mamba2", []),
        (None, ["moe"]),
        ("attention", []),
        (None, ["moe"]),
        (None, ["dense"]),
    ]
    moe = m.blocks[1].ffn[0]
    assert isinstance(moe, MoEConfig)
    assert (moe.n_experts, moe.top_k, moe.expert_ffn, moe.shared_ffn) == (64, 6, 1024, 2048)
    assert (moe.activation, moe.router, moe.router_bias) == ("relu", "sigmoid", True)
    d, vocab = 4096, 131072
    # relu^2 experts and shared MLP: up and down projections only; router and its selection bias
    moe_layer = moe_weights(d, 64, 1024, 2048, mats=2, selection_bias=True)
    hand = (
        mamba2_weights(d, 128, 64, 8, 128, 4)
        + attention_weights(d, 32, 8, 128)
        + 2 * moe_layer
        + 2 * d * 21504
        + 2 * vocab * d
    )
    assert simulated(m)["params"] == hand
    types = ["mamba", "moe", "attention", "moe", "mlp"]
    listed = {k: v for k, v in moe_cfg.items() if k != "hybrid_override_pattern"}
    assert from_hf_config({**listed, "layers_block_type": types}, "nh").blocks == m.blocks
    newer = ["linear_attention", "moe", "full_attention", "moe", "mlp"]  # transformers 5 names
    assert from_hf_config({**listed, "layers_block_type": newer}, "nh").blocks == m.blocks
    with pytest.raises(ConfigError) as exc:
        from_hf_config({**moe_cfg, "moe_latent_size": 1024}, "nh")
    assert "moe_latent_size" in one_line(exc)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"hybrid_override_pattern": "M-M*X-"}, "hybrid_override_pattern has unknown layer symbol(s) 'X'"),
        (
            {"hybrid_override_pattern": "M-M*-"},
            "hybrid_override_pattern has 5 layers but num_hidden_layers is 52",
        ),
        ({"hybrid_override_pattern": None}, "missing required key 'hybrid_override_pattern'"),
        ({"mamba_num_heads": -128}, "'mamba_num_heads' must be at least 1, got -128"),
        ({"mlp_hidden_act": "gelu"}, "mlp_hidden_act 'gelu' is not supported"),
    ],
)
def test_nemotron_h_bad_patterns_and_keys_are_one_line_errors(change: dict[str, Any], needle: str) -> None:
    cfg = {**hf("Nemotron-H-8B-Base-8K"), **change}
    with pytest.raises(ConfigError) as exc:
        from_hf_config(cfg, "nh")
    assert needle in one_line(exc)


# ------------------------------------------------------------------------------------ Granite 4.0-H


def test_granite_h_tiny_layers_mixers_and_moe() -> None:
    m = load("granite-4.0-h-tiny")
    kinds = layers(m)
    assert where(kinds, "attention") == [5, 15, 25, 35]
    assert len(where(kinds, "mamba2")) == 36
    assert all(ffn == ["moe"] for _, ffn in kinds)  # every layer: MoE plus the shared MLP
    mamba = m.blocks[0].attention
    assert isinstance(mamba, Mamba2Config)
    assert (mamba.n_heads, mamba.head_dim, mamba.n_groups, mamba.d_state, mamba.chunk_size) == (
        48,
        64,
        1,
        128,
        256,
    )
    attn = m.blocks[1].attention
    assert isinstance(attn, AttentionConfig) and (attn.n_heads, attn.kv_heads, attn.head_dim) == (12, 4, 128)
    moe = m.blocks[0].ffn[0]
    assert isinstance(moe, MoEConfig)
    assert (moe.n_experts, moe.top_k, moe.expert_ffn, moe.n_shared_experts, moe.shared_ffn) == (
        64,
        6,
        512,
        1,
        1024,
    )
    assert m.tie_embeddings


def test_granite_h_tiny_total_against_hand_count_and_published() -> None:
    m = load("granite-4.0-h-tiny")
    d, vocab = 1536, 100352
    moe = moe_weights(d, 64, 512, 1024)  # input_linear (2 x 512 rows) and output_linear per expert
    hand = (
        36 * mamba2_weights(d, 48, 64, 1, 128, 4)
        + 4 * attention_weights(d, 12, 4, 128)
        + 40 * moe
        + vocab * d
    )
    assert simulated(m)["params"] == hand == 6_938_802_240
    # published: 7 B total (IBM's model card); the 235,008 norm weights are not counted (tied head)
    assert abs(hand / 7e9 - 1) < 0.01


def test_granite_h_dense_variant_auto_head_dim_and_all_mamba_default() -> None:
    cfg = hf("granite-4.0-h-tiny")
    # Granite 4.0-H-1B / -Micro publish num_local_experts 0: the shared MLP alone, a dense SwiGLU FFN
    dense = from_hf_config({**cfg, "num_local_experts": 0, "shared_intermediate_size": 4096}, "g")
    ffn = dense.blocks[0].ffn[0]
    assert isinstance(ffn, DenseFFNConfig) and (ffn.d_ff, ffn.activation) == (4096, "swiglu")
    auto = from_hf_config({**cfg, "mamba_d_head": "auto"}, "g")  # 2 x 1536 / 48 heads = 64
    assert auto.blocks == load("granite-4.0-h-tiny").blocks
    no_types = {k: v for k, v in cfg.items() if k != "layer_types"}
    assert layers(from_hf_config(no_types, "g")) == [("mamba2", ["moe"])] * 40
    with pytest.raises(ConfigError) as exc:
        from_hf_config({**cfg, "mamba_d_head": 32}, "g")
    assert "mamba_n_heads x mamba_d_head = 48 x 32 must equal the mixer width 3072" in one_line(exc)
    with pytest.raises(ConfigError) as exc:
        from_hf_config({**cfg, "num_local_experts": -1}, "g")
    assert "'num_local_experts' must be at least 0, got -1" in one_line(exc)


# --------------------------------------------------------------------------------------------- Bamba


def test_bamba_attention_indices_and_dense_mlp() -> None:
    # a small config in BambaConfig's key names (no checkpoint file: the builder's rule and shapes)
    cfg = {
        "model_type": "bamba",
        "hidden_size": 512,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "intermediate_size": 1536,
        "vocab_size": 1000,
        "attn_layer_indices": [2, 6],
        "mamba_n_heads": 16,
        "mamba_d_state": 64,
    }
    m = from_hf_config(cfg, "bamba")
    kinds = layers(m)
    assert where(kinds, "attention") == [2, 6] and len(where(kinds, "mamba2")) == 6
    assert all(ffn == ["dense"] for _, ffn in kinds)
    mamba = m.blocks[0].attention
    assert isinstance(mamba, Mamba2Config)
    # BambaConfig's defaults: head dim "auto" = 2 x 512 / 16, one group, chunks of 256
    assert (mamba.n_heads, mamba.head_dim, mamba.n_groups, mamba.d_state, mamba.chunk_size) == (
        16,
        64,
        1,
        64,
        256,
    )
    d = 512
    hand = (
        6 * mamba2_weights(d, 16, 64, 1, 64, 4)
        + 2 * attention_weights(d, 8, 2, 64)
        + 8 * swiglu(d, 1536)
        + 2 * 1000 * d
    )
    assert simulated(m)["params"] == hand
    with pytest.raises(ConfigError) as exc:
        from_hf_config({**cfg, "attn_layer_indices": [2, 8]}, "bamba")
    assert "attn_layer_indices [8] are not layers of a 8-layer model" in one_line(exc)


# ------------------------------------------------------------------------------------ malformed input


@pytest.mark.parametrize(
    ("file", "change", "needle"),
    [
        (
            "Qwen3-Next-80B-A3B-Instruct",
            {"linear_num_value_heads": -32},
            "'linear_num_value_heads' must be at least 1",
        ),
        (
            "Qwen3-Next-80B-A3B-Instruct",
            {"linear_num_value_heads": 24},
            "n_v_heads=24 is not a multiple of n_k_heads=16",
        ),
        (
            "Qwen3-Next-80B-A3B-Instruct",
            {"full_attention_interval": 0},
            "'full_attention_interval' must be at least 1",
        ),
        (
            "Qwen3-Next-80B-A3B-Instruct",
            {"layer_types": ["mamba"] * 48},
            "layer_types ['mamba'] not supported",
        ),
        ("Jamba-1.5-Mini", {"hidden_size": None}, "missing required key 'hidden_size'"),
        ("Jamba-1.5-Mini", {"mamba_d_state": "16"}, "'mamba_d_state' must be an integer"),
        ("Jamba-1.5-Mini", {"mamba_dt_rank": "full"}, "'mamba_dt_rank' must be an integer"),
        ("falcon-mamba-7b", {"state_size": 0}, "'state_size' must be at least 1, got 0"),
        ("falcon-mamba-7b", {"intermediate_size": -8192}, "'intermediate_size' must be at least 1"),
        ("Mamba-Codestral-7B-v0.1", {"num_heads": 128.5}, "'num_heads' must be an integer"),
        ("Mamba-Codestral-7B-v0.1", {"n_groups": 3}, "n_heads=128 is not a multiple of n_groups=3"),
        (
            "granite-4.0-h-tiny",
            {"layer_types": ["mamba"] * 39},
            "'layer_types' must list one type per layer (40)",
        ),
        ("granite-4.0-h-tiny", {"mamba_conv_bias": "yes"}, "'mamba_conv_bias' must be true or false"),
    ],
)
def test_malformed_recurrent_configs_are_one_line_errors(
    file: str, change: dict[str, Any], needle: str
) -> None:
    cfg = {**hf(file), **change}
    with pytest.raises(ConfigError) as exc:
        from_hf_config(cfg, "bad")
    assert needle in one_line(exc)


@pytest.mark.parametrize(
    ("model_type", "architecture"),
    [
        ("zamba2", "Zamba2ForCausalLM"),  # shared attention blocks reused across the stack
        ("kimi", "KimiForCausalLM"),  # a remote-code family of no known class
    ],
)
def test_families_the_simulator_cannot_model_are_refused(model_type: str, architecture: str) -> None:
    cfg = copy.deepcopy(hf("Nemotron-H-8B-Base-8K"))
    cfg.update(model_type=model_type, architectures=[architecture])
    with pytest.raises(ConfigError) as exc:
        from_hf_config(cfg, "x")
    text = one_line(exc)
    assert f"unsupported model_type {model_type!r}" in text and "nemotron_h" in text and "qwen3_next" in text


def test_supported_list_names_every_new_family() -> None:
    with pytest.raises(ConfigError) as exc:
        from_hf_config({"model_type": "rwkv7", "hidden_size": 8, "num_hidden_layers": 1}, "x")
    text = one_line(exc)
    for family in (
        "bamba",
        "falcon_mamba",
        "granitemoehybrid",
        "jamba",
        "mamba",
        "mamba2",
        "nemotron_h",
        "qwen3_next",
    ):
        assert family in text


def test_qwen3_next_config_equals_its_preset() -> None:
    ingested, preset = load("Qwen3-Next-80B-A3B-Instruct"), load_model("qwen3-next-80b-a3b")
    assert ingested.blocks == preset.blocks
    fields = ("d_model", "vocab_size", "tie_embeddings", "max_positions")
    assert [getattr(ingested, f) for f in fields] == [getattr(preset, f) for f in fields]


def test_falcon_mamba_config_equals_its_preset() -> None:
    ingested, preset = load("falcon-mamba-7b"), load_model("falcon-mamba-7b")
    assert ingested.blocks == preset.blocks
    fields = ("d_model", "vocab_size", "tie_embeddings")
    assert [getattr(ingested, f) for f in fields] == [getattr(preset, f) for f in fields]


# ------------------------------------------------------------------------------------------- Kimi Linear
def test_kimi_linear_layers_mixers_and_exact_published_total() -> None:
    """Kimi-Linear-48B-A3B: 20 Kimi Delta Attention layers and 7 MLA layers at the 1-based positions
    linear_attn_config lists (0-based 3, 7, ..., 23 and 26), a dense layer 0, then MoE. Its 49,122,681,728
    weights (the Hub's safetensors total, the index's total_parameters and llama.cpp's count agree) less
    its norm weights (two per layer, the final norm, KDA's 128-wide o_norm, MLA's 512-wide latent norm)
    equal a hand count of the checkpoint's tensors, and the simulator's total."""
    m = load("Kimi-Linear-48B-A3B-Instruct")
    blocks = m.expanded_blocks()
    mla_at = [i for i, b in enumerate(blocks) if isinstance(b.attention, AttentionConfig)]
    assert mla_at == [3, 7, 11, 15, 19, 23, 26]
    kda = blocks[0].attention
    assert isinstance(kda, GatedDeltaNetConfig)
    assert (kda.n_v_heads, kda.head_k_dim, kda.gate_rank, kda.state_dtype, kda.d_conv) == (
        32,
        128,
        128,
        "fp32",
        4,
    )
    assert [b.ffn[0].kind for b in blocks[:2]] == ["dense", "moe"]

    d, p = 2304, 32 * 128
    kda_layer = 3 * p * d + 3 * p * 4 + 2 * (128 * d + p * 128) + 32 * d + 32 + p + p * d
    mla_layer = d * 32 * 192 + d * 576 + 512 * 32 * 256 + p * d
    moe_layer = 256 * 3 * d * 1024 + 3 * d * 1024 + d * 256 + 256
    hand = 20 * kda_layer + 7 * mla_layer + 3 * d * 9216 + 26 * moe_layer + 2 * 163840 * d
    norms = 27 * 2 * d + d + 20 * 128 + 7 * 512
    assert hand == 49_122_681_728 - norms
    frame = simulate(m, load_hardware("h100-sxm"), Workload(batch=[1], context=[1024]))
    assert frame["params"].iloc[0] == hand
    assert m.max_positions == 1_048_576  # model_max_length, KimiLinearConfig's name for it


def test_kimi_linear_decode_reads_fp32_states_and_seven_layers_of_cache() -> None:
    """One sequence's decode step at 32k: 20 fp32 states of 32 x 128 x 128 with their convolution
    inputs (12288 channels x 3, bf16), and 7 MLA layers' 576-wide latents of every token (hand count)."""
    m = load("Kimi-Linear-48B-A3B-Instruct")
    frame = simulate(m, load_hardware("h100-sxm"), Workload(batch=[1], context=[32768]))
    states = 20 * (32 * 128 * 128 * 4 + 12288 * 3 * 2)
    assert frame["kv_read_bytes"].iloc[0] == states + 7 * 32768 * 576 * 2


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"linear_attn_config": None}, "missing required key 'linear_attn_config'"),
        (
            {
                "linear_attn_config": {
                    "kda_layers": [1, 2],
                    "full_attn_layers": [3],
                    "num_heads": 32,
                    "head_dim": 128,
                }
            },
            "must share out layers 1..27",
        ),
    ],
)
def test_kimi_linear_bad_layer_lists_are_one_line_errors(change: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        from_hf_config({**hf("Kimi-Linear-48B-A3B-Instruct"), **change}, "bad")
    assert needle in one_line(exc)


# ------------------------------------------------------------------------------------------- Falcon-H1
def test_falcon_h1_runs_attention_and_mamba2_side_by_side_in_every_layer() -> None:
    """Falcon-H1-7B: 44 layers, each attention (12 query heads of 128 over a 3072-wide model, 2 K/V heads)
    beside a Mamba-2 mixer of 24 heads of 128 (d_ssm 3072, state 256, one group), then an MLP of 12288.
    Its weights less the norms (two a layer and the final one) equal a hand count of the checkpoint's
    tensors (7,585,513,568 with norms, the published 7.59 B); a decode step reads both caches in every
    layer: 2 K/V heads of 128 per token, and the Mamba-2 state with its convolution inputs."""
    m = load("Falcon-H1-7B-Instruct")
    assert len(m.blocks) == 1 and m.blocks[0].repeat == 44
    attn, mamba = m.blocks[0].attention, m.blocks[0].parallel_mixer
    assert isinstance(attn, AttentionConfig) and isinstance(mamba, Mamba2Config)
    assert (attn.n_heads, attn.kv_heads, attn.head_dim) == (12, 2, 128)
    assert (mamba.n_heads, mamba.head_dim, mamba.d_state, mamba.n_groups) == (24, 128, 256, 1)
    d, conv = 3072, 3072 + 2 * 256
    layer = (
        2 * d * 12 * 128
        + 2 * d * 2 * 128  # q, o; k, v
        + d * (3072 + conv + 24)
        + conv * 4
        + conv
        + 3 * 24
        + 3072 * d  # Mamba-2: in_proj, conv, A/D/dt, out
        + 3 * d * 12288  # SwiGLU MLP
    )
    hand = 44 * layer + 2 * 130048 * d
    assert hand + 44 * 2 * d + d == 7_585_513_568
    assert abs(7_585_513_568 / 7.59e9 - 1) < 0.001
    frame = simulate(m, load_hardware("h100-sxm"), Workload(batch=[1], context=[1024]))
    assert frame["params"].iloc[0] == hand
    state = 24 * 128 * 256 * 2 + conv * 3 * 2  # bf16 state and the convolution's last 3 inputs
    assert frame["kv_read_bytes"].iloc[0] == 44 * (1024 * 2 * 2 * 128 * 2 + state)


def test_falcon_h1_bias_switches_that_differ_are_refused() -> None:
    cfg = {**hf("Falcon-H1-7B-Instruct"), "mamba_proj_bias": True, "projectors_bias": False}
    with pytest.raises(ConfigError) as exc:
        from_hf_config(cfg, "h1")
    assert "mamba_proj_bias and projectors_bias differ" in one_line(exc)


# ------------------------------------------------------------------------------------ MiniMax-Text-01 / M1
def test_minimax01_lightning_and_softmax_layers_and_its_published_sizes() -> None:
    """MiniMax-Text-01: 70 lightning-attention layers and a softmax one every eighth (0-based 7, 15, ...,
    79), every layer a MoE of 32 experts of 9216, top-2. A hand count of its tensors (lightning: fused
    qkv, output gate, out_proj, no bias; softmax: 64 q / 8 K/V heads of 128) less the norms is the
    simulator's total; with its norms it is the published 456 B, and the weights a token uses without
    the embedding and LM head the published 45.9 B activated. A decode step reads 70 states of 64 heads
    of 128 x 128 (bf16, vLLM's model-dtype default) and 10 layers' K/V."""
    m = load("MiniMax-Text-01")
    blocks = m.expanded_blocks()
    full_at = [i for i, b in enumerate(blocks) if isinstance(b.attention, AttentionConfig)]
    assert full_at == list(range(7, 80, 8))
    d, inner = 6144, 64 * 128
    lightning = 4 * d * inner + inner * d
    softmax = 2 * d * inner + 2 * d * 8 * 128
    moe = 32 * 3 * d * 9216 + 32 * d
    embeddings = 2 * 200064 * d
    hand = 70 * lightning + 10 * softmax + 80 * moe + embeddings
    with_norms = hand + 80 * 2 * d + d + 70 * inner  # two a layer, the final one, lightning's output norm
    assert abs(with_norms / 456e9 - 1) < 0.001
    active = 70 * lightning + 10 * softmax + 80 * (2 * 3 * d * 9216 + 32 * d)
    assert abs(active / 45.9e9 - 1) < 0.002
    frame = simulate(m, load_hardware("h200"), Workload(batch=[1], context=[4096]))
    assert frame["params"].iloc[0] == hand
    assert frame["kv_read_bytes"].iloc[0] == 70 * 64 * 128 * 128 * 2 + 10 * 4096 * 2 * 8 * 128 * 2


def test_minimax01_layer_types_spelling_and_bad_type_lists() -> None:
    """The converted MiniMax-Text-01-hf config (model_type minimax) lists layer_types instead."""
    cfg = hf("MiniMax-Text-01")
    types = ["full_attention" if t else "linear_attention" for t in cfg.pop("attn_type_list")]
    hf_style = from_hf_config({**cfg, "model_type": "minimax", "layer_types": types}, "minimax-hf")
    assert hf_style.blocks == load("MiniMax-Text-01").blocks
    with pytest.raises(ConfigError) as exc:
        from_hf_config({**cfg, "attn_type_list": [0, 2] * 40}, "bad")
    assert "'attn_type_list' must give 0 (lightning) or 1 (softmax)" in one_line(exc)
    with pytest.raises(ConfigError) as exc:  # both spellings, saying different things
        from_hf_config({**cfg, "layer_types": types, "attn_type_list": [1] * 80}, "both")
    assert "layer_types and attn_type_list disagree" in one_line(exc)

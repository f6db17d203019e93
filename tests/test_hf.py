"""Hugging Face config.json ingestion: published parameter totals, equality with the presets, and the
config-ingestion rules that other tools got wrong (prior-art.md 6.9 and 10.12)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from simulator.config import GATED, AttentionConfig, DenseFFNConfig, ModelConfig, MoEConfig, Workload
from simulator.errors import ConfigError
from simulator.hf import from_hf_config
from simulator.loading import load_model

HF_DIR = Path(__file__).parent / "data" / "hf"


def hf(name: str) -> dict[str, Any]:
    return json.loads((HF_DIR / f"{name}.json").read_text())


# ------------------------------------------------------------------- hand parameter count (independent)


def attention_params(a: AttentionConfig, d: int) -> int:
    """Projection weights (+ biases, + MLA's two latent RMSNorms), written out from the model code."""
    if a.kind == "mla":
        assert a.qk_nope_head_dim and a.qk_rope_head_dim and a.kv_lora_rank and a.v_head_dim
        q_out = a.n_heads * (a.qk_nope_head_dim + a.qk_rope_head_dim)
        # with a query LoRA: W_DQ, q_a_layernorm, W_UQ; without: one W_Q
        q = d * a.q_lora_rank + a.q_lora_rank + a.q_lora_rank * q_out if a.q_lora_rank else d * q_out
        kv_a = d * (a.kv_lora_rank + a.qk_rope_head_dim) + a.kv_lora_rank  # kv_a_proj_with_mqa + its norm
        kv_b = a.kv_lora_rank * a.n_heads * (a.qk_nope_head_dim + a.v_head_dim)
        # DeepSeek-V3.2's lightning indexer: queries off the query latent, one key, a weight per head
        indexer = (
            (a.q_lora_rank or d) * a.index_n_heads * a.index_head_dim
            + d * (a.index_head_dim + a.index_n_heads)
            if a.index_n_heads and a.index_head_dim
            else 0
        )
        return q + kv_a + kv_b + a.n_heads * a.v_head_dim * d + indexer
    assert a.head_dim is not None
    kv = a.n_kv_heads or a.n_heads
    weights = d * a.n_heads * a.head_dim + 2 * d * kv * a.head_dim + a.n_heads * a.head_dim * d
    bias = (a.n_heads + 2 * kv) * a.head_dim if a.qkv_bias else 0
    return weights + bias + (d if a.o_bias else 0)


def ffn_params(layer: Any, d: int) -> int:
    if isinstance(layer, DenseFFNConfig):
        mats = 3 if layer.activation in GATED else 2
        return mats * d * layer.d_ff + ((layer.d_ff + d) if layer.bias else 0)
    assert isinstance(layer, MoEConfig)
    experts = layer.n_experts * 3 * d * layer.expert_ffn + 3 * d * layer.shared_ffn
    return experts + d * layer.n_experts + (layer.n_experts if layer.router_bias else 0)


def total_params(m: ModelConfig) -> int:
    d = m.d_model
    embed = m.vocab_size * d * (1 if m.tie_embeddings else 2) if m.embeddings else 0
    blocks = sum(
        b.repeat * (attention_params(b.attention, d) + sum(ffn_params(f, d) for f in b.ffn) + 2 * d)
        for b in m.blocks
    )
    return embed + blocks + d  # + final norm


# published totals: model cards / papers (see each preset's sources)
PUBLISHED = {
    "Llama-3.1-8B": ("llama-3.1-8b", 8.03e9),
    "Mixtral-8x7B": ("mixtral-8x7b", 46.7e9),
    "Qwen3-30B-A3B": ("qwen3-30b-a3b", 30.5e9),
    "OLMoE-1B-7B": ("olmoe-1b-7b", 6.92e9),
    "DeepSeek-V3": ("deepseek-v3", 671e9),
    "DeepSeek-V2-Lite": ("deepseek-v2-lite", 15.7e9),
    "Qwen1.5-MoE-A2.7B": ("qwen1.5-moe-a2.7b", 14.3e9),
}


@pytest.mark.parametrize("file", sorted(PUBLISHED))
def test_total_params_match_published(file: str) -> None:
    model = from_hf_config(hf(file), file)
    total = total_params(model)
    assert abs(total / PUBLISHED[file][1] - 1) < 0.01, f"{file}: {total:,}"


def test_deepseek_v3_total_is_the_main_model() -> None:
    # 3 dense + 58 MoE blocks + untied embeddings = 671,026,419,200; the MTP block is not counted
    assert total_params(from_hf_config(hf("DeepSeek-V3"), "v3")) == 671_026_419_200


@pytest.mark.parametrize("file", sorted(PUBLISHED))
def test_hf_config_equals_hand_written_preset(file: str) -> None:
    ingested = from_hf_config(hf(file), file)
    assert_same_model(ingested, load_model(PUBLISHED[file][0]))
    assert ingested.max_positions == hf(file)["max_position_embeddings"]


def assert_same_model(ingested: Any, preset: Any) -> None:
    """An ingested config.json and the hand-written preset of it describe the same model."""
    assert ingested.blocks == preset.blocks
    fields = ("d_model", "vocab_size", "tie_embeddings", "embeddings", "max_positions")
    assert [getattr(ingested, f) for f in fields] == [getattr(preset, f) for f in fields]


# the two dense presets whose config.json is not stored in tests/data/hf: the published values inline
QWEN25_72B = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_act": "silu",
    "hidden_size": 8192,
    "intermediate_size": 29568,
    "num_attention_heads": 64,
    "num_hidden_layers": 80,
    "num_key_value_heads": 8,
    "tie_word_embeddings": False,
    "vocab_size": 152064,
    "max_position_embeddings": 32768,
}
LLAMA31_405B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_act": "silu",
    "hidden_size": 16384,
    "intermediate_size": 53248,
    "num_attention_heads": 128,
    "num_hidden_layers": 126,
    "num_key_value_heads": 8,
    "tie_word_embeddings": False,
    "vocab_size": 128256,
    "attention_bias": False,
    "mlp_bias": False,
    "max_position_embeddings": 131072,
}


@pytest.mark.parametrize(
    "cfg,preset,published",
    [(QWEN25_72B, "qwen2.5-72b", 72.7e9), (LLAMA31_405B, "llama-3.1-405b", 405e9)],
)
def test_dense_presets_match_their_configs(cfg: dict[str, Any], preset: str, published: float) -> None:
    ingested = from_hf_config(cfg, preset)
    assert ingested.blocks == load_model(preset).blocks
    assert ingested.max_positions == load_model(preset).max_positions == cfg["max_position_embeddings"]
    assert abs(total_params(ingested) / published - 1) < 0.01


# -------------------------------------------------------------------------------- ingestion rules


def test_explicit_head_dim_wins_over_hidden_over_heads() -> None:
    cfg = hf("Qwen3-30B-A3B")
    assert cfg["hidden_size"] // cfg["num_attention_heads"] == 64  # the wrong answer
    attn = from_hf_config(cfg, "q3").blocks[0].attention
    assert attn.head_dim == 128 and attn.kind == "gqa" and attn.kv_heads == 4
    assert attn.kv_elements_per_token == 2 * 4 * 128


def test_head_dim_derived_only_when_absent_and_null_counts_as_absent() -> None:
    cfg = hf("Mixtral-8x7B")
    assert "head_dim" not in cfg
    assert from_hf_config(cfg, "m").blocks[0].attention.head_dim == 128
    cfg["head_dim"] = None  # newer Mistral configs write an explicit null
    assert from_hf_config(cfg, "m").blocks[0].attention.head_dim == 128
    cfg["head_dim"] = 96
    assert from_hf_config(cfg, "m").blocks[0].attention.head_dim == 96


def test_gqa_mha_mqa_from_num_key_value_heads() -> None:
    cfg = hf("Llama-3.1-8B")
    assert from_hf_config(cfg, "l").blocks[0].attention.kind == "gqa"
    cfg["num_key_value_heads"] = 1
    assert from_hf_config(cfg, "l").blocks[0].attention.kind == "mqa"
    del cfg["num_key_value_heads"]  # LlamaConfig default: as many KV heads as query heads
    model = from_hf_config(cfg, "l")
    assert model.blocks[0].attention.kind == "mha"
    assert "hf.num_key_value_heads" in model.provenance


def test_mla_fields_and_kv_cache() -> None:
    v3 = from_hf_config(hf("DeepSeek-V3"), "v3")
    a = v3.blocks[0].attention
    assert (a.kind, a.q_lora_rank, a.kv_lora_rank, a.qk_rope_head_dim, a.qk_nope_head_dim, a.v_head_dim) == (
        "mla",
        1536,
        512,
        64,
        128,
        128,
    )
    assert a.kv_elements_per_token == 576
    lite = from_hf_config(hf("DeepSeek-V2-Lite"), "lite").blocks[0].attention
    assert lite.q_lora_rank is None  # q_lora_rank: null -> a plain W_Q


def test_deepseek_dense_then_moe_with_shared_experts() -> None:
    v3 = from_hf_config(hf("DeepSeek-V3"), "v3")
    assert [b.repeat for b in v3.blocks] == [3, 58]
    dense, moe = v3.blocks[0].ffn[0], v3.blocks[1].ffn[0]
    assert isinstance(dense, DenseFFNConfig) and dense.d_ff == 18432
    assert isinstance(moe, MoEConfig)
    assert (moe.n_experts, moe.top_k, moe.expert_ffn, moe.n_shared_experts, moe.shared_ffn) == (
        256,
        8,
        2048,
        1,
        2048,
    )
    assert (moe.router, moe.router_bias, moe.n_groups, moe.topk_groups) == ("sigmoid", True, 8, 4)
    lite = from_hf_config(hf("DeepSeek-V2-Lite"), "lite").blocks[1].ffn[0]
    assert isinstance(lite, MoEConfig)
    # 2 shared experts of the routed width 1408, not of intermediate_size 10944
    assert (lite.n_shared_experts, lite.shared_ffn, lite.n_groups, lite.router) == (2, 2816, None, "softmax")


def test_deepseek_moe_layer_freq_interleaves() -> None:
    cfg = hf("DeepSeek-V2-Lite")
    cfg["moe_layer_freq"] = 2
    cfg["num_hidden_layers"] = 6
    kinds = [b.ffn[0].kind for b in from_hf_config(cfg, "x").expanded_blocks()]
    # layer 0 dense (first_k_dense_replace 1); then MoE on even layers only
    assert kinds == ["dense", "dense", "moe", "dense", "moe", "dense"]


def test_qwen_decoder_sparse_step_and_mlp_only_layers() -> None:
    cfg = hf("Qwen1.5-MoE-A2.7B")
    cfg.update(num_hidden_layers=6, decoder_sparse_step=2, mlp_only_layers=[3])
    model = from_hf_config(cfg, "x")
    kinds = [b.ffn[0].kind for b in model.expanded_blocks()]
    # MoE where (i + 1) % 2 == 0 and i not in mlp_only_layers
    assert kinds == ["dense", "moe", "dense", "dense", "dense", "moe"]
    dense = model.blocks[0].ffn[0]
    assert isinstance(dense, DenseFFNConfig) and dense.d_ff == 5632
    shared = model.blocks[1].ffn[0]
    assert isinstance(shared, MoEConfig) and (shared.n_shared_experts, shared.shared_ffn) == (1, 5632)


def test_consecutive_identical_blocks_are_grouped() -> None:
    cfg = hf("Qwen3-30B-A3B")
    cfg["mlp_only_layers"] = [0, 1, 47]
    model = from_hf_config(cfg, "x")
    assert [(b.repeat, b.ffn[0].kind) for b in model.blocks] == [(2, "dense"), (45, "moe"), (1, "dense")]
    assert model.n_layers == 48


def test_tied_embeddings_and_attention_bias() -> None:
    cfg = hf("Llama-3.1-8B")
    assert from_hf_config(cfg, "l").tie_embeddings is False
    cfg["tie_word_embeddings"] = True  # e.g. Llama-3.2-1B/3B
    assert from_hf_config(cfg, "l").tie_embeddings is True
    qwen = from_hf_config(QWEN25_72B, "q").blocks[0].attention
    assert (qwen.qkv_bias, qwen.o_bias) == (True, False)  # qwen2: bias on q, k, v only
    cfg["attention_bias"] = True
    llama = from_hf_config(cfg, "l").blocks[0].attention
    assert (llama.qkv_bias, llama.o_bias) == (True, True)


def test_architectures_without_model_type() -> None:
    cfg = hf("Mixtral-8x7B")
    del cfg["model_type"]
    assert from_hf_config(cfg, "m").blocks == load_model("mixtral-8x7b").blocks


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text and text.strip() == text
    return text


def test_unsupported_model_type_is_one_line_with_supported_list() -> None:
    cfg = copy.deepcopy(hf("Llama-3.1-8B"))
    cfg["model_type"] = "zamba2"  # attention blocks shared across the stack: not modelled
    cfg["architectures"] = ["Zamba2ForCausalLM"]
    with pytest.raises(ConfigError) as exc:
        from_hf_config(cfg, "g")
    text = one_line(exc)
    assert "'zamba2'" in text and "deepseek_v3" in text and "gemma2" in text and "qwen3_next" in text


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"hidden_size": None}, "hidden_size"),
        ({"num_attention_heads": "32"}, "num_attention_heads"),
        ({"hidden_act": "relu2"}, "hidden_act"),
        ({"num_key_value_heads": 5}, "n_kv_heads=5"),
        ({"tie_word_embeddings": "no"}, "tie_word_embeddings"),
        ({"max_position_embeddings": "128k"}, "max_position_embeddings"),
        ({"max_position_embeddings": 0}, "max_positions"),
    ],
)
def test_bad_hf_values_are_one_line_config_errors(change: dict[str, Any], needle: str) -> None:
    cfg = hf("Llama-3.1-8B")
    cfg.update(change)
    with pytest.raises(ConfigError) as exc:
        from_hf_config(cfg, "bad")
    assert needle in one_line(exc)


def test_moe_top_k_above_experts_from_hf() -> None:
    cfg = hf("Mixtral-8x7B")
    cfg["num_experts_per_tok"] = 9
    with pytest.raises(ConfigError) as exc:
        from_hf_config(cfg, "m")
    assert "top_k=9 exceeds n_experts=8" in one_line(exc)


# -------------------------------------------------------------------------------- Gemma 2 / 3
def gemma_total(m: ModelConfig, qk_norms: bool) -> int:
    """Hand count with Gemma's norms: four per block (pre/post attention, pre/post MLP), Gemma 3's
    per-head q and k norms, the final norm; tied embeddings."""
    d = m.d_model
    blocks = 0
    for b in m.blocks:
        a = b.attention
        assert a.head_dim is not None
        norms = 4 * d + (2 * a.head_dim if qk_norms else 0)
        blocks += b.repeat * (attention_params(a, d) + sum(ffn_params(f, d) for f in b.ffn) + norms)
    return m.vocab_size * d + blocks + d


def test_gemma2_alternates_sliding_and_full_layers() -> None:
    m = from_hf_config(hf("Gemma-2-2B"), "gemma-2-2b")
    windows = [b.attention.sliding_window for b in m.blocks for _ in range(b.repeat)]
    assert windows == [4096 if i % 2 == 0 else None for i in range(26)]  # even layers slide
    assert m.tie_embeddings and all(b.ffn[0].activation == "geglu" for b in m.blocks)
    assert m.blocks[0].attention.head_dim == 256 and m.blocks[0].attention.kind == "gqa"
    assert gemma_total(m, qk_norms=False) == 2_614_341_888


def test_gemma3_five_sliding_layers_per_full_one_and_its_kv_cache() -> None:
    m = from_hf_config(hf("Gemma-3-1B"), "gemma-3-1b")
    windows = [b.attention.sliding_window for b in m.blocks for _ in range(b.repeat)]
    assert windows == [None if (i + 1) % 6 == 0 else 512 for i in range(26)]  # full at 5, 11, 17, 23
    assert m.blocks[0].attention.kind == "mqa" and m.tie_embeddings
    assert gemma_total(m, qk_norms=True) == 999_885_952
    # decode at 32k context: 22 sliding layers read 512 entries, 4 full layers the whole 32,768
    from simulator.config import Workload
    from simulator.loading import load_hardware
    from simulator.sweep import simulate

    tot = simulate(m, load_hardware("h100-sxm"), Workload(batch=[2], context=[32768])).iloc[0]
    per_entry = 2 * 1 * 256 * 2  # K and V, one KV head of 256, bf16
    assert tot["kv_read_bytes"] == 2 * (22 * 512 + 4 * 32768) * per_entry


def test_layer_types_win_over_the_pattern_and_multimodal_gemma3_reads_its_text_config() -> None:
    cfg = hf("Gemma-3-1B")
    types = ["full_attention"] * 3 + ["sliding_attention"] * 23
    m = from_hf_config({**cfg, "layer_types": types}, "custom")
    windows = [b.attention.sliding_window for b in m.blocks for _ in range(b.repeat)]
    assert windows == [None] * 3 + [512] * 23
    with pytest.raises(ConfigError, match="layer_types \\['chunked_attention'\\] not supported"):
        from_hf_config({**cfg, "layer_types": ["chunked_attention"] * 26}, "bad")
    with pytest.raises(ConfigError, match="one type per layer"):
        from_hf_config({**cfg, "layer_types": ["full_attention"]}, "short")
    text = {k: v for k, v in cfg.items() if k not in ("architectures", "vocab_size")}
    multimodal = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "text_config": text,
    }
    mm = from_hf_config(multimodal, "gemma-3-mm")
    assert mm.blocks == from_hf_config(cfg, "t").blocks
    assert mm.vocab_size == 262_208  # the Gemma3TextConfig default, recorded as such
    assert "hf.vocab_size" in mm.provenance


def test_phi3_and_olmo2_read_as_llama_shapes() -> None:
    base = {
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32064,
        "hidden_act": "silu",
    }
    phi = from_hf_config({**base, "model_type": "phi3", "sliding_window": 2047}, "phi3")
    assert phi.blocks[0].repeat == 32 and phi.blocks[0].attention.sliding_window == 2047
    assert phi.blocks[0].attention.kind == "mha" and not phi.tie_embeddings
    olmo = from_hf_config({**base, "model_type": "olmo2"}, "olmo2")
    assert olmo.blocks[0].attention.sliding_window is None and olmo.blocks[0].ffn[0].activation == "swiglu"


def test_gpt_oss_checkpoint_bytes_with_mxfp4_experts() -> None:
    # the published checkpoint holds 13,761,264,768 bytes (model.safetensors.index.json): expert weights
    # in MXFP4, the rest (expert biases, router, attention, norms, embeddings) in bf16. Under
    # --weight-dtype bf16,moe=mxfp4 the simulator holds exactly that less what it models otherwise, by
    # hand: the expert biases (32 x (2 x 2880 + 2880)) costed at the mxfp4 width (the router stays bf16,
    # as the checkpoint keeps it), and the norms (2 a layer + 1 final, 2880 each) not held; the attention
    # sinks (64 a layer) are held with the attention weights
    from simulator.config import Workload
    from simulator.loading import load_hardware
    from simulator.sweep import simulate

    m = from_hf_config(hf("gpt-oss-20b"), "gpt-oss-20b")
    windows = [b.attention.sliding_window for b in m.blocks for _ in range(b.repeat)]
    assert windows == [128, None] * 12 and "quantised with mxfp4" in m.description
    wl = Workload(batch=[1], context=[1], weight_dtypes={"moe": "mxfp4"})
    r = simulate(m, load_hardware("h100-sxm"), wl).iloc[0]
    held = r["memory_bytes"] - r["kv_read_bytes"] - r["kv_write_bytes"] - r["act_peak_bytes"]
    mx = (4 + 8 / 32) / 8
    biases = 24 * 32 * 3 * 2880 * (2 - mx)
    norms = (24 * 2 * 2880 + 2880) * 2
    assert held == pytest.approx(13_761_264_768 - biases - norms, rel=1e-12)
    assert abs(held / 13_761_264_768 - 1) < 0.001
    assert abs(r["active_params"] / 3.61e9 - 1) < 0.01  # model card: 3.6 B active of 21 B


# exact published totals of the newer MoE families (SOURCES.md), less what the hand count leaves out
@pytest.mark.parametrize(
    ("file", "published", "not_counted"),
    [
        # Hub figure of the transformers model (the MTP layer 46 excluded), norms and selection bias in
        ("GLM-4.5-Air", 106_852_251_264, 0),
        # the text decoder of the Hub's 108,641,793,536 (vision tower and projector: 871,932,416)
        ("Llama-4-Scout-17B-16E", 108_641_793_536 - 871_932_416, 0),
        # LayerNorm biases (2 a layer + final, 4096 each) and the LM head bias (vocab 32064)
        ("Phi-3.5-MoE", 41_873_153_344, (32 * 2 + 1) * 4096 + 32064),
        # llama.cpp's count of the granite-3.1-3b-a800m-instruct checkpoint
        ("granite-3.1-3b-a800m", 3_298_793_472, 0),
    ],
)
def test_newer_moe_families_match_their_checkpoints(file: str, published: int, not_counted: int) -> None:
    assert total_params(from_hf_config(hf(file), file)) == published - not_counted


def test_glm45_dense_first_layer_shared_expert_and_wide_queries() -> None:
    m = from_hf_config(hf("GLM-4.5-Air"), "glm")
    assert [b.repeat for b in m.blocks] == [1, 45]
    dense, moe = m.blocks[0].ffn[0], m.blocks[1].ffn[0]
    assert isinstance(dense, DenseFFNConfig) and dense.d_ff == 10944
    assert isinstance(moe, MoEConfig) and (moe.n_experts, moe.top_k, moe.expert_ffn) == (128, 8, 1408)
    assert moe.shared_ffn == 1408 and moe.router == "sigmoid" and moe.router_bias
    a = m.blocks[0].attention
    assert a.n_heads * a.head_dim == 12288 != m.d_model and a.qkv_bias and not a.o_bias


def test_llama4_chunked_rope_layers_global_nope_layers_and_dense_interleave() -> None:
    from simulator.config import Workload
    from simulator.loading import load_hardware
    from simulator.sweep import simulate

    m = from_hf_config(hf("Llama-4-Scout-17B-16E"), "scout")
    chunks = [b.attention.attention_chunk for b in m.blocks for _ in range(b.repeat)]
    assert chunks == [8192, 8192, 8192, None] * 12  # every 4th layer is NoPE and global
    moe = m.blocks[0].ffn[0]
    assert isinstance(moe, MoEConfig) and (moe.n_experts, moe.top_k, moe.shared_ffn) == (16, 1, 8192)
    # per token: attention, router, one routed and the shared expert per layer, the LM head, one embedding row
    layer = 5120 * 5120 * 2 + 2 * 5120 * 1024 + 5120 * 16 + 2 * 3 * 5120 * 8192
    r = simulate(m, load_hardware("h100-sxm"), Workload(batch=[1], context=[20000])).iloc[0]
    assert r["active_params"] == 48 * layer + 202048 * 5120 + 5120
    # decode at 20000: 36 chunked layers read 20000 mod 8192 = 3616 entries, 12 global ones all 20000
    assert r["kv_read_bytes"] == (36 * 3616 + 12 * 20000) * 2 * 8 * 128 * 2
    # Maverick-style interleave: MoE on odd layers, a dense MLP of intermediate_size_mlp on even ones
    text = {**hf("Llama-4-Scout-17B-16E")["text_config"], "interleave_moe_layer_step": 2}
    del text["moe_layers"]
    mixed = from_hf_config({"model_type": "llama4", "text_config": text}, "mixed")
    ffns = [b.ffn[0] for b in mixed.blocks for _ in range(b.repeat)]
    assert [isinstance(f, MoEConfig) for f in ffns] == [False, True] * 24
    assert isinstance(ffns[0], DenseFFNConfig) and ffns[0].d_ff == 16384
    # transformers' defaults when the keys are absent: chunks of 8192, a NoPE (global) layer every
    # no_rope_layer_interval layers
    bare = {k: v for k, v in hf("Llama-4-Scout-17B-16E")["text_config"].items()
            if k not in ("no_rope_layers", "attention_chunk_size")}  # fmt: skip
    alt = from_hf_config({**bare, "no_rope_layer_interval": 2}, "alt")
    assert [b.attention.attention_chunk for b in alt.blocks for _ in range(b.repeat)] == [8192, None] * 24
    with pytest.raises(ConfigError, match=r"moe_layers \[48\] are not layers of a 48-layer model"):
        from_hf_config({**bare, "moe_layers": [0, 48]}, "bad")


def test_ernie45_moe_layer_range_and_shared_experts() -> None:
    m = from_hf_config(hf("ERNIE-4.5-21B-A3B"), "ernie")
    ffns = [b.ffn[0] for b in m.blocks for _ in range(b.repeat)]
    assert isinstance(ffns[0], DenseFFNConfig) and ffns[0].d_ff == 12288
    assert all(isinstance(f, MoEConfig) for f in ffns[1:]) and len(ffns) == 28
    moe = ffns[1]
    assert isinstance(moe, MoEConfig)
    assert (moe.n_experts, moe.top_k, moe.expert_ffn, moe.shared_ffn) == (64, 6, 1536, 3072)
    assert m.tie_embeddings and m.blocks[0].attention.head_dim == 128
    # a hand count: embedding (tied) 103424 x 2560; layer 0 attention (GQA 20/4 of 128) + SwiGLU 12288;
    # 27 MoE layers: attention + 64 experts + the shared MLP + router and its selection bias; norms
    attn = 2560 * 2560 * 2 + 2 * 2560 * 512
    moe_layer = attn + 64 * 3 * 2560 * 1536 + 3 * 2560 * 3072 + 2560 * 64 + 64
    dense_layer = attn + 3 * 2560 * 12288
    norms = 28 * 2 * 2560 + 2560
    assert total_params(m) == 103424 * 2560 + dense_layer + 27 * moe_layer + norms
    # Ernie4_5_MoeConfig's defaults are this model: without the keys, the same shapes
    defaulted = ("tie_word_embeddings", "moe_num_shared_experts", "moe_layer_start_index")
    bare = {k: v for k, v in hf("ERNIE-4.5-21B-A3B").items() if k not in defaulted}
    assert from_hf_config(bare, "ernie").model_dump(exclude={"provenance"}) == m.model_dump(
        exclude={"provenance"}
    )
    # the last MoE layer can be moved: end index 20 leaves layers 21..27 dense
    cut = from_hf_config({**hf("ERNIE-4.5-21B-A3B"), "moe_layer_end_index": 20}, "cut")
    kinds = [isinstance(b.ffn[0], MoEConfig) for b in cut.blocks for _ in range(b.repeat)]
    assert kinds == [False] + [True] * 20 + [False] * 7


@pytest.mark.parametrize(
    ("file", "preset"),
    [
        ("GLM-4.5-Air", "glm-4.5-air"),
        ("Llama-4-Scout-17B-16E", "llama-4-scout-17b-16e"),
        ("Phi-3.5-MoE", "phi-3.5-moe"),
        ("granite-3.1-3b-a800m", "granite-3.1-3b-a800m"),
    ],
)
def test_newer_moe_presets_equal_their_configs(file: str, preset: str) -> None:
    assert_same_model(from_hf_config(hf(file), file), load_model(preset))


def test_max_positions_is_read_where_stated_and_unknown_where_absent() -> None:
    assert from_hf_config(hf("OLMoE-1B-7B"), "olmoe").max_positions == 4096
    # Llama 4 states it in its text_config, which holds the decoder
    assert from_hf_config(hf("Llama-4-Scout-17B-16E"), "scout").max_positions == 262_144
    cfg = hf("Llama-3.1-8B")
    del cfg["max_position_embeddings"]
    ingested = from_hf_config(cfg, "no-limit")
    assert ingested.max_positions is None
    assert "hf.max_position_embeddings" not in ingested.provenance  # unknown, not a default taken


def test_a_remote_code_model_type_is_read_through_its_architectures() -> None:
    # Kimi K2's config.json names model_type "kimi_k2" (remote code) and architectures
    # ["DeepseekV3ForCausalLM"]: DeepSeek-V3's shapes, read by the DeepSeek builder
    cfg = hf("DeepSeek-V3")
    cfg["model_type"] = "kimi_k2"
    ingested = from_hf_config(cfg, "kimi")
    assert ingested.blocks == from_hf_config(hf("DeepSeek-V3"), "v3").blocks
    assert "model_type deepseek_v3, named kimi_k2" in ingested.description
    # an unknown type with no known architecture is still refused, naming the type
    cfg["architectures"] = ["KimiForCausalLM"]
    with pytest.raises(ConfigError, match="unsupported model_type 'kimi_k2'"):
        from_hf_config(cfg, "kimi")


# --------------------------------------------------- dense, multimodal and newer MoE families (SOURCES.md)
@pytest.mark.parametrize(
    ("file", "published", "not_counted"),
    [
        # llama.cpp's count of the checkpoint (its fp8 file adds 13,880,064 block scales); the hand count
        # leaves out the whole-width q/k norms (6144 + 1024 a layer)
        ("MiniMax-M2", 228_689_764_864, 62 * (6144 + 1024)),
        # the Hub's safetensors count; GLM-4 has four norms a layer, the hand count two
        ("GLM-4-9B-0414", 9_400_279_040, 40 * 2 * 4096),
        # the checkpoint's 31,070,754,032 less its vision tower (538,631,408, hand count); per-head q/k norms
        ("Qwen3-VL-30B-A3B-Instruct", 31_070_754_032 - 538_631_408, 48 * 2 * 128),
        # 24,011,361,280 less the Pixtral tower (403,305,472) and the projector (35,652,608)
        ("Mistral-Small-3.1-24B", 24_011_361_280 - 403_305_472 - 35_652_608, 0),
        # the checkpoint's count; OLMo 3's whole-width q/k norms (2 x 4096 a layer) are not in the hand count
        ("Olmo-3-7B", 7_298_011_136, 32 * 2 * 4096),
        # the published count (its bf16 shards hold twice it plus the headers): tied, two norms a layer
        ("SmolLM3-3B", 3_075_098_624, 0),
        # Aya Expanse 8B's published count: Command R7B's exact shapes under cohere v1 (one norm a layer,
        # where the hand count has two)
        ("c4ai-command-r7b", 8_028_033_024, -32 * 4096),
    ],
)
def test_newer_families_match_their_checkpoints(file: str, published: int, not_counted: int) -> None:
    assert total_params(from_hf_config(hf(file), file)) == published - not_counted


@pytest.mark.parametrize(
    ("file", "published"),
    [("c4ai-command-r-v01", 35e9), ("granite-3.1-8b", 8.1e9)],  # model cards: "35 billion", "8.1B"
)
def test_newer_dense_families_match_their_model_cards(file: str, published: float) -> None:
    assert abs(total_params(from_hf_config(hf(file), file)) / published - 1) < 0.01


def test_text_decoders_of_image_text_checkpoints_take_the_outer_tie() -> None:
    """Qwen3-VL's text_config states no tie and its text class would tie by default; the outer config's
    false is what its checkpoint holds (a separate lm_head). Mistral Small 3.1 states neither: Mistral's
    untied default applies, and its window is null (full attention), not the class default."""
    vl = from_hf_config(hf("Qwen3-VL-30B-A3B-Instruct"), "vl")
    text_only = from_hf_config(hf("Qwen3-30B-A3B"), "t")
    assert vl.blocks == text_only.blocks and not vl.tie_embeddings
    assert "text decoder of qwen3_vl_moe" in vl.description
    mistral = from_hf_config(hf("Mistral-Small-3.1-24B"), "ms")
    a = mistral.blocks[0].attention
    assert isinstance(a, AttentionConfig)
    assert (a.head_dim, a.kv_heads, a.sliding_window, mistral.tie_embeddings) == (128, 8, None, False)


def test_sliding_patterns_of_olmo3_and_command_r7b() -> None:
    """Three sliding layers of 4096 per full one, the fourth (index 3 mod 4) full: from OLMo 3's
    layer_types, and from cohere2's sliding_window_pattern when layer_types is absent."""
    expected = [None if i % 4 == 3 else 4096 for i in range(32)]
    for file in ("Olmo-3-7B", "c4ai-command-r7b"):
        m = from_hf_config(hf(file), file)
        assert [b.attention.sliding_window for b in m.expanded_blocks()] == expected  # type: ignore[union-attr]
    olmo = hf("Olmo-3-7B")
    del olmo["layer_types"], olmo["sliding_window"]  # OLMo3Config's rule and default window
    m = from_hf_config(olmo, "olmo3-defaults")
    assert [b.attention.sliding_window for b in m.expanded_blocks()] == expected  # type: ignore[union-attr]
    assert m.provenance["hf.sliding_window"].source.endswith("default 4096")


def test_minimax_m2_router_and_refused_lightning_attention() -> None:
    m = from_hf_config(hf("MiniMax-M2"), "m2")
    moe = m.blocks[0].ffn[0]
    assert isinstance(moe, MoEConfig)
    assert (moe.n_experts, moe.top_k, moe.expert_ffn, moe.shared_ffn) == (256, 8, 1536, 0)
    assert moe.router == "sigmoid" and moe.router_bias
    assert "quantised with fp8" in m.description
    cfg = hf("MiniMax-M2")
    cfg["attn_type_list"] = [0] + [1] * 61
    with pytest.raises(ConfigError, match="lightning attention"):
        from_hf_config(cfg, "m01")


def test_glm4_biases_queries_keys_values_not_the_output() -> None:
    a = from_hf_config(hf("GLM-4-9B-0414"), "glm4").blocks[0].attention
    assert isinstance(a, AttentionConfig) and a.qkv_bias and not a.o_bias
    assert (a.n_heads, a.kv_heads, a.head_dim) == (32, 2, 128)


# ------------------------------------------------- LayerNorm families with an ungated MLP (SOURCES.md)
@pytest.mark.parametrize(
    ("file", "published", "not_counted"),
    [
        # the Hub's F32 total holds 12 causal-mask buffers of 1024^2 (not parameters); the hand count
        # leaves out the learned position table and the LayerNorm biases
        ("gpt2", 137_022_720 - 12 * 1024**2, 1024 * 768 + (12 * 2 + 1) * 768),
        # the Pythia model card's exact total; LayerNorm biases not in the hand count
        ("pythia-1.4b", 1_414_647_808, (24 * 2 + 1) * 2048),
        # the Hub's safetensors totals store the tied LM head a second time (65024 x d); Falcon-7B has
        # one LayerNorm (weight and bias) a layer, Falcon-40B two (ln_attn, ln_mlp)
        ("falcon-7b", 7_217_189_760 - 65024 * 4544, 4544),
        ("falcon-40b", 41_835_970_560 - 65024 * 8192, (60 * 2 + 1) * 8192),
    ],
)
def test_layernorm_families_match_their_checkpoints(file: str, published: int, not_counted: int) -> None:
    assert total_params(from_hf_config(hf(file), file)) == published - not_counted


def test_gpt2_reads_its_own_key_names_and_holds_a_position_table() -> None:
    m = from_hf_config(hf("gpt2"), "gpt2")
    assert (m.d_model, m.n_layers, m.max_positions, m.norm) == (768, 12, 1024, "layernorm")
    assert m.learned_positions and m.tie_embeddings
    a, ffn = m.blocks[0].attention, m.blocks[0].ffn[0]
    assert isinstance(a, AttentionConfig) and isinstance(ffn, DenseFFNConfig)
    assert (a.kind, a.head_dim, a.qkv_bias, a.o_bias) == ("mha", 64, True, True)
    assert (ffn.d_ff, ffn.activation, ffn.bias) == (3072, "gelu", True)  # n_inner null: 4 x n_embd
    assert from_hf_config({**hf("gpt2"), "n_inner": 1024}, "narrow").blocks[0].ffn[0].d_ff == 1024  # type: ignore[union-attr]


def test_falcon_kv_heads_follow_its_architecture_flags() -> None:
    """multi_query (7B): one K/V head whatever num_kv_heads says; new_decoder_architecture (40B):
    num_kv_heads; neither: as many as the query heads."""

    def kv(cfg: dict[str, Any]) -> int:
        a = from_hf_config(cfg, "falcon").blocks[0].attention
        assert isinstance(a, AttentionConfig)
        return a.kv_heads

    seven = hf("falcon-7b")
    assert kv(seven) == kv({**seven, "num_kv_heads": 71}) == 1
    assert kv(hf("falcon-40b")) == 8
    assert kv({**seven, "multi_query": False}) == 71


def test_starcoder2_biases_ungated_mlp_and_window_on_every_layer() -> None:
    m = from_hf_config(hf("starcoder2-7b"), "sc2")
    assert len(m.blocks) == 1 and m.blocks[0].repeat == 32 and m.tie_embeddings
    a, ffn = m.blocks[0].attention, m.blocks[0].ffn[0]
    assert isinstance(a, AttentionConfig) and isinstance(ffn, DenseFFNConfig)
    assert (a.kv_heads, a.head_dim, a.sliding_window, a.qkv_bias, a.o_bias) == (4, 128, 4096, True, True)
    assert (ffn.d_ff, ffn.activation, ffn.bias) == (18432, "gelu", True)
    with pytest.raises(ConfigError, match="hidden_act 'swish2' is not supported"):
        from_hf_config({**hf("starcoder2-7b"), "hidden_act": "swish2"}, "bad")


def test_deepseek_v32_adds_the_lightning_indexer_to_v3() -> None:
    """DeepSeek-V3.2-Exp: V3's shapes plus a lightning indexer per layer (64 heads of 128 off the 1536
    query latent, a 128-wide key, 64 head weights). The checkpoint's 685,396,921,376 tensor elements
    are the main model, the MTP layer (13,477,385,728) and fp32 block scales (41,591,584); the hand
    count leaves out the indexer's key LayerNorm (weight and bias, 256 a layer)."""
    m = from_hf_config(hf("DeepSeek-V3.2-Exp"), "v32")
    a = m.blocks[0].attention
    assert isinstance(a, AttentionConfig)
    assert (a.index_topk, a.index_n_heads, a.index_head_dim, a.index_key_bytes) == (2048, 64, 128, 132)
    main = 685_396_921_376 - 13_477_385_728 - 41_591_584
    assert main == 671_026_419_200 + 61 * (1536 * 8192 + 7168 * 128 + 7168 * 64 + 256)  # V3 + indexers
    assert total_params(m) == main - 61 * 256
    # every other weight is V3's: the blocks equal V3's once the indexer is taken off
    plain = a.model_copy(update={"index_topk": None, "index_n_heads": None, "index_head_dim": None})
    v3 = from_hf_config(hf("DeepSeek-V3"), "v3")
    assert [b.model_copy(update={"attention": plain}) for b in m.blocks] == v3.blocks


def test_absent_head_keys_take_each_family_class_default() -> None:
    """A trimmed config without K/V heads or head_dim gets the transformers class's default, recorded
    as such: MiniMaxM2Config 8 of 128, Glm4Config 2 of 128, Starcoder2Config 2, SmolLM3Config 4."""
    cases = [
        ("MiniMax-M2", 8, 128),
        ("GLM-4-9B-0414", 2, 128),
        ("starcoder2-7b", 2, 128),
        ("SmolLM3-3B", 4, 128),
    ]
    for file, kv, head_dim in cases:
        cfg = {k: v for k, v in hf(file).items() if k not in ("num_key_value_heads", "head_dim")}
        m = from_hf_config(cfg, file)
        a = m.blocks[0].attention
        assert isinstance(a, AttentionConfig)
        assert (a.kv_heads, a.head_dim) == (kv, head_dim), file
        assert m.provenance["hf.num_key_value_heads"].source.endswith(f"default {kv}")


def test_smollm3_slides_on_its_nope_layers_when_asked() -> None:
    """SmolLM3Config: with use_sliding_window and a window, the NoPE layers (every fourth) slide; the
    RoPE layers stay full."""
    cfg = {k: v for k, v in hf("SmolLM3-3B").items() if k not in ("layer_types", "no_rope_layers")}
    m = from_hf_config({**cfg, "use_sliding_window": True, "sliding_window": 2048}, "smol-swa")
    windows = [b.attention.sliding_window for b in m.expanded_blocks()]  # type: ignore[union-attr]
    assert windows == [2048 if i % 4 == 3 else None for i in range(36)]
    assert all(
        w is None for w in (b.attention.sliding_window for b in from_hf_config(cfg, "s").expanded_blocks())
    )  # type: ignore[union-attr]


def test_the_text_configs_own_model_type_picks_the_decoder() -> None:
    """transformers builds an image-text model's decoder from text_config.model_type: a supported one
    (here Llama's, inside Mistral 3) is read as that family; an unknown one is refused by name, not read
    as the wrapper's usual decoder."""
    cfg = hf("Mistral-Small-3.1-24B")
    llama_inside = {**cfg, "text_config": {**cfg["text_config"], "model_type": "llama"}}
    assert "model_type llama" in from_hf_config(llama_inside, "m3-llama").description
    unknown = {**cfg, "text_config": {**cfg["text_config"], "model_type": "ministral3"}}
    with pytest.raises(ConfigError, match="text decoder of mistral3 is model_type 'ministral3'"):
        from_hf_config(unknown, "ministral")


@pytest.mark.parametrize("file", sorted(p.stem for p in HF_DIR.glob("*.json")))
def test_every_stored_config_builds_a_reference_model_with_the_simulators_parameters(file: str) -> None:
    """Each config.json here as the reference PyTorch model (meta tensors) holds exactly the parameters
    the simulator's cost formulas count: the modules and the formulas are written apart."""
    from profiler.modules.model import ReferenceModel
    from simulator.loading import load_hardware
    from simulator.sweep import simulate

    m = from_hf_config(hf(file), file)
    sim = simulate(m, load_hardware("h100-sxm"), Workload(batch=[1], context=[16]))
    assert ReferenceModel(m, device="meta", dtype="bf16").param_count() == int(sim["params"].iloc[0])


@pytest.mark.parametrize(
    ("file", "published", "same_as"),
    [
        # the Hub's 8,292,166,656 less the vision tower and merger (676,550,144): Qwen2.5-7B's decoder
        ("Qwen2.5-VL-7B-Instruct", 8_292_166_656 - 676_550_144, None),
        # the checkpoint's 107,710,933,120 less the vision tower (858,681,856): GLM-4.5-Air's decoder
        ("GLM-4.5V", 107_710_933_120 - 858_681_856, "GLM-4.5-Air"),
        # vLLM's audit of the checkpoint, an ERNIEKit training log: tied embeddings
        ("ERNIE-4.5-0.3B", 360_748_032, None),
    ],
)
def test_vision_language_decoders_and_ernie_dense_match_their_checkpoints(
    file: str, published: int, same_as: str | None
) -> None:
    """Qwen2.5-VL keeps its decoder's keys at the top level (no text_config); GLM-4.5V's text_config is
    a glm4v_moe_text decoder with GLM-4.5-Air's weights."""
    m = from_hf_config(hf(file), file)
    assert total_params(m) == published
    if same_as is not None:
        assert m.blocks == from_hf_config(hf(same_as), same_as).blocks


@pytest.mark.parametrize(
    ("file", "published", "not_counted"),
    [
        ("Seed-OSS-36B-Instruct", 36_151_104_512, 0),  # safetensors index metadata
        # a ledger of the safetensors headers; per-head q/k norms (2 x 128 a layer) not in the hand count
        ("Hunyuan-A13B-Instruct", 80_393_183_232, 32 * 256),
        ("Ling-mini-2.0", 16_255_643_392, 20 * 256),  # the Hub's safetensors headers
        ("dots.llm1.inst", 142_774_381_696, 62 * 256),  # the Hub's safetensors metadata
    ],
)
def test_seed_hunyuan_ling_and_dots_match_their_checkpoints(
    file: str, published: int, not_counted: int
) -> None:
    assert total_params(from_hf_config(hf(file), file)) == published - not_counted


def test_hunyuan_takes_per_layer_lists_and_refuses_cross_layer_kv_sharing() -> None:
    cfg = hf("Hunyuan-A13B-Instruct")
    m = from_hf_config({**cfg, "moe_topk": [8] * 16 + [4] * 16}, "hy")
    assert [b.ffn[0].top_k for b in m.expanded_blocks()] == [8] * 16 + [4] * 16  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="use_cla"):
        from_hf_config({**cfg, "use_cla": True}, "cla")
    with pytest.raises(ConfigError, match="one integer per layer"):
        from_hf_config({**cfg, "num_experts": [64] * 3}, "short")


@pytest.mark.parametrize(
    ("file", "published", "not_counted"),
    [
        # DeepSpeed-Chat's printed count (tied); the hand count leaves out the 2050-row learned position
        # table (2048 positions + OPT's offset of 2) and the LayerNorm biases
        ("opt-1.3b", 1_315_758_080, 2050 * 2048 + (24 * 2 + 1) * 2048),
        # the model card and the bloomz-560m safetensors metadata (tied); LayerNorm biases and the
        # embedding LayerNorm (weight and bias) are not in the hand count
        ("bloom-560m", 559_214_592, (24 * 2 + 1) * 1024 + 2 * 1024),
        # an audit of the checkpoint's 285 parameter tensors; the LM head's bias and the final LayerNorm's
        ("gpt-j-6b", 6_050_882_784, 50400 + 4096),
        # the Hub's safetensors count; the LM head's bias and the final LayerNorm's
        ("phi-2", 2_779_683_840, 51200 + 2560),
        # the Hub's safetensors count at a named revision; LayerNorm biases (two a layer and the final)
        ("stablelm-2-1_6b", 1_644_515_328, (24 * 2 + 1) * 2048),
        # the index's 13,298,573,312 bf16 bytes; weight-only LayerNorms, as the hand count has them
        ("mpt-7b", 13_298_573_312 // 2, 0),
    ],
)
def test_classic_layernorm_families_match_their_checkpoints(
    file: str, published: int, not_counted: int
) -> None:
    assert total_params(from_hf_config(hf(file), file)) == published - not_counted


def test_opt_position_offset_and_biased_lm_heads_are_held() -> None:
    """OPT's position table has two rows before position 0; GPT-J's and Phi-2's LM heads carry a bias;
    the simulator holds them, as the reference model does (the every-config test checks the totals)."""
    opt = from_hf_config(hf("opt-1.3b"), "opt")
    assert (opt.learned_positions, opt.position_offset, opt.max_positions) == (True, 2, 2048)
    for file in ("gpt-j-6b", "phi-2"):
        assert from_hf_config(hf(file), file).head_bias
    with pytest.raises(ConfigError, match="word_embed_proj_dim 512"):
        from_hf_config({**hf("opt-1.3b"), "word_embed_proj_dim": 512}, "opt-350m-like")

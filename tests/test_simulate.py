"""The sweep: published per-layer numbers, hand derivations, brute force and monotonicity properties."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.config import HardwareConfig, ModelConfig, Workload
from simulator.loading import load_hardware, load_model
from simulator.sweep import COLUMNS, simulate

H100 = HardwareConfig.model_validate(
    {
        "name": "test-h100",
        "peak_flops": {"bf16": {"value": 989.4e12, "tag": "datasheet"}},
        "hbm_bandwidth": {"value": 3.35e12, "tag": "datasheet"},
        "hbm_capacity": {"value": 80e9, "tag": "datasheet"},
        "l2_bytes": {"value": 50e6, "tag": "datasheet"},
    }
)


def olmoe_like(blocks: int = 16) -> ModelConfig:
    return ModelConfig.model_validate(
        {
            "name": "olmoe-like",
            "d_model": 2048,
            "vocab_size": 50304,
            "blocks": [
                {
                    "repeat": blocks,
                    "attention": {"kind": "mha", "n_heads": 16, "head_dim": 128},
                    "ffn": [{"kind": "moe", "n_experts": 64, "top_k": 8, "expert_ffn": 1024}],
                }
            ],
        }
    )


def test_olmoe_layer_weight_bytes_match_cost_reference_section_11() -> None:
    # cost-reference.md section 11, OLMoE-1B-7B layer (attention + router + touched experts), bf16, MB
    published = {1: 134.5, 4: 367.1, 16: 744.0, 64: 839.0, 256: 839.1}
    df = simulate(olmoe_like(), H100, Workload(batch=list(published), context=[2048]), per_layer=True)
    layer = df[df["layer"].isin(["block0.attn", "block0.moe"])].groupby("batch")["weight_bytes_ideal"].sum()
    for batch, mb in published.items():
        assert layer[batch] / 1e6 == pytest.approx(mb, abs=0.06)


def test_gqa_decode_kv_and_flops_by_hand() -> None:
    # Llama-3.1-8B-like: 32 layers, 32 q heads, 8 kv heads of 128, SwiGLU 14336, vocab 128256, untied
    model = ModelConfig.model_validate(
        {
            "name": "llama-like",
            "d_model": 4096,
            "vocab_size": 128256,
            "blocks": [
                {
                    "repeat": 32,
                    "attention": {"kind": "gqa", "n_heads": 32, "n_kv_heads": 8, "head_dim": 128},
                    "ffn": [{"kind": "dense", "d_ff": 14336}],
                }
            ],
        }
    )
    b, s = 8, 4096
    tot = simulate(model, H100, Workload(batch=[b], context=[s])).iloc[0]
    kv_per_token = 32 * 2 * 8 * 128 * 2  # L x (K+V) x kv heads x head dim x bf16
    assert tot["kv_read_bytes"] == b * s * kv_per_token
    assert tot["kv_write_bytes"] == b * kv_per_token
    attn = 4096 * 4096 * 2 + 2 * 4096 * 1024
    ffn = 3 * 4096 * 14336
    linear = 32 * (attn + ffn) + 128256 * 4096  # + LM head; the embedding gather has no FLOPs
    scores = 32 * 4 * 32 * 128 * s  # QK^T and PV per token: 4 * heads * head_dim * context
    assert tot["flops"] == pytest.approx(b * (2 * linear + scores), rel=1e-12)
    weights = (32 * (attn + ffn) + 128256 * 4096) * 2 + b * 4096 * 2  # + b embedding rows
    assert tot["weight_bytes_ideal"] == pytest.approx(weights, rel=1e-12)
    assert tot["params"] == pytest.approx(32 * (attn + ffn) + 2 * 128256 * 4096)


def test_grid_equals_pointwise_brute_force() -> None:
    model = olmoe_like(blocks=2)
    batches, contexts = [1, 3, 17, 300], [64, 1000, 5000]
    grid = simulate(model, H100, Workload(batch=batches, context=contexts), per_layer=True)
    for b in batches:
        for s in contexts:
            one = simulate(model, H100, Workload(batch=[b], context=[s]), per_layer=True)
            sub = grid[(grid["batch"] == b) & (grid["context"] == s)].reset_index(drop=True)
            num = [c for c in COLUMNS if sub[c].dtype.kind == "f"]
            np.testing.assert_allclose(sub[num].to_numpy(), one[num].to_numpy(), rtol=1e-12)


def test_prefill_moe_touches_every_expert_and_is_compute_bound() -> None:
    df = simulate(olmoe_like(), H100, Workload(phase="prefill", batch=[4], context=[4096]), per_layer=True)
    moe = df[df["layer"] == "block0.moe"].iloc[0]
    assert moe["distinct_items"] == pytest.approx(64.0)
    assert moe["weight_bytes_ideal"] == pytest.approx(moe["weight_bytes_naive"])
    assert moe["bound"] == "compute"


def test_per_layer_rows_sum_to_total() -> None:
    df = simulate(olmoe_like(blocks=3), H100, Workload(batch=[1, 64], context=[512]), per_layer=True)
    for _, group in df.groupby("batch"):
        layers, total = group[group["layer"] != "total"], group[group["layer"] == "total"].iloc[0]
        for col in ("flops", "bytes_ideal", "bytes_naive", "kv_read_bytes", "time_s"):
            assert layers[col].sum() == pytest.approx(total[col], rel=1e-12)
    names = set(df["layer"])
    assert {"embed", "head", "total", "block2.moe", "block0.attn"} <= names


@settings(max_examples=40, deadline=None)
@given(
    n_experts=st.integers(1, 300),
    k_frac=st.floats(0.01, 1.0),
    d=st.sampled_from([64, 256, 1024]),
    batch=st.lists(st.integers(1, 5000), min_size=2, max_size=6, unique=True),
    phase=st.sampled_from(["decode", "prefill"]),
)
def test_bytes_never_fall_as_batch_grows(
    n_experts: int, k_frac: float, d: int, batch: list[int], phase: str
) -> None:
    k = max(1, int(n_experts * k_frac))
    model = ModelConfig.model_validate(
        {
            "name": "p",
            "d_model": d,
            "vocab_size": 1000,
            "blocks": [
                {
                    "attention": {"kind": "gqa", "n_heads": 4, "n_kv_heads": 2, "head_dim": 16},
                    "ffn": [{"kind": "moe", "n_experts": n_experts, "top_k": k, "expert_ffn": 32}],
                }
            ],
        }
    )
    df = simulate(model, H100, Workload(phase=phase, batch=sorted(batch), context=[128]), per_layer=True)
    for _, layer in df.groupby("layer"):
        layer = layer.sort_values("batch")
        for col in ("weight_bytes_ideal", "weight_bytes_naive", "bytes_ideal", "bytes_naive", "flops"):
            assert np.all(np.diff(layer[col].to_numpy()) >= -1e-6 * layer[col].abs().max()), col
        assert np.all(layer["bytes_ideal"] <= layer["bytes_naive"] * (1 + 1e-12))
    moe = df[df["kind"] == "moe"]
    assert np.all(moe["distinct_items"] <= np.minimum(n_experts, moe["tokens"] * k) + 1e-9)


@pytest.mark.parametrize(("n", "k", "devices", "tokens"), [(256, 8, 8, 1), (256, 8, 8, 4), (64, 8, 4, 8)])
def test_busiest_expert_shard_matches_monte_carlo(n: int, k: int, devices: int, tokens: int) -> None:
    from simulator.routing import distinct_uniform, expected_max_distinct_per_device

    rng = np.random.default_rng(7)
    shard = n // devices
    trials = 3000
    busiest = np.empty(trials)
    for t in range(trials):
        touched = np.zeros(n, dtype=bool)
        for _ in range(tokens):
            touched[rng.choice(n, k, replace=False)] = True
        busiest[t] = touched.reshape(devices, shard).sum(axis=1).max()
    formula = float(expected_max_distinct_per_device(n, k, devices, distinct_uniform(n, k, tokens)))
    # exact formula: only the sampling error separates them (4 standard errors)
    assert abs(formula - busiest.mean()) <= 4 * busiest.std(ddof=1) / np.sqrt(trials)


def test_measured_histogram_through_the_sweep(tmp_path) -> None:
    from simulator.errors import ConfigError

    # Three experts ever chosen cannot describe a top-8 layer: one error line naming the file.
    few = tmp_path / "h.csv"
    few.write_text("item,count\n0,100\n1,50\n2,10\n")
    routing = {"kind": "histogram", "histogram": str(few)}
    with pytest.raises(ConfigError) as caught:
        simulate(olmoe_like(1), H100, Workload(batch=[1], routing=routing))
    assert str(caught.value) == (
        f"routing.histogram: {few} has 3 items with a nonzero count, but the layer picks 8 distinct items "
        "(experts or rows) per token"
    )
    # Ten experts, one chosen more often than there were tokens (1000 of 1756 / 8 = 219.5): one token still
    # reads top_k = 8 distinct experts, and no batch reads more than the ten.
    skewed = tmp_path / "skewed.csv"
    counts = [1000, 500, 100, 50, 40, 30, 20, 10, 5, 1]
    skewed.write_text("item,count\n" + "".join(f"{i},{c}\n" for i, c in enumerate(counts)))
    workload = Workload(batch=[1, 2, 16, 4096], routing={"kind": "histogram", "histogram": str(skewed)})
    moe = simulate(olmoe_like(1), H100, workload, per_layer=True).query("kind == 'moe'").set_index("batch")
    assert moe.loc[1, "distinct_items"] == pytest.approx(8.0, rel=1e-12)
    # by hand at 2 tokens: water-filled pi = 1 (x7), 0.625, 0.3125, 0.0625; sum of 1 - (1 - pi)^2
    assert moe.loc[2, "distinct_items"] == pytest.approx(7 + 1 - 0.375**2 + 1 - 0.6875**2 + 1 - 0.9375**2)
    assert moe.loc[16, "distinct_items"] < moe.loc[4096, "distinct_items"] == pytest.approx(10.0)


def test_expert_parallel_charges_the_busiest_device() -> None:
    # Mixtral-like, 8 experts over 8 devices, one token: two devices each read one whole expert
    model = ModelConfig.model_validate(
        {
            "name": "mixtral-like",
            "d_model": 4096,
            "vocab_size": 32000,
            "blocks": [
                {
                    "repeat": 1,
                    "attention": {"kind": "gqa", "n_heads": 32, "n_kv_heads": 8, "head_dim": 128},
                    "ffn": [{"kind": "moe", "n_experts": 8, "top_k": 2, "expert_ffn": 14336}],
                }
            ],
        }
    )
    df = simulate(model, H100, Workload(batch=[1, 64], context=[1024], ep=8), per_layer=True)
    moe = df[df["layer"] == "block0.moe"].set_index("batch")
    expert, router = 3 * 4096 * 14336 * 2, 4096 * 8 * 2
    # one token: its two experts are on two devices, one each, so the busiest device reads exactly one
    # expert (not 1 - (3/4)^8 = 0.90 of one, as independent shards would have it) and runs exactly one
    # token-expert pair through it: weight bytes and FLOPs describe the same device
    assert moe.loc[1, "weight_bytes_ideal"] == pytest.approx(expert + router, rel=1e-12)
    assert moe.loc[1, "flops"] == pytest.approx(2 * (3 * 4096 * 14336 + 4096 * 8), rel=1e-12)
    assert moe.loc[64, "weight_bytes_ideal"] == pytest.approx(expert + router)
    attn = df[df["layer"] == "block0.attn"].set_index("batch")
    # attention runs data-parallel: the busiest rank holds ceil(64/8) = 8 sequences of 1024 keys
    assert attn.loc[64, "kv_read_bytes"] == 8 * 1024 * 2 * 8 * 128 * 2


def test_sliding_window_caps_kv_reads_and_pairs() -> None:
    window, s = 4096, 16384
    model = ModelConfig.model_validate(
        {
            "name": "mistral-like",
            "d_model": 4096,
            "vocab_size": 32000,
            "blocks": [
                {
                    "repeat": 32,
                    "attention": {
                        "kind": "gqa",
                        "n_heads": 32,
                        "n_kv_heads": 8,
                        "head_dim": 128,
                        "sliding_window": window,
                    },
                    "ffn": [{"kind": "dense", "d_ff": 14336}],
                }
            ],
        }
    )
    dec = simulate(model, H100, Workload(batch=[2], context=[s])).iloc[0]
    assert dec["kv_read_bytes"] == 2 * window * 32 * 2 * 8 * 128 * 2  # only keys in the window are read
    pre = simulate(model, H100, Workload(phase="prefill", batch=[1], context=[s]), per_layer=True)
    attn = pre[pre["layer"] == "block0.attn"].iloc[0]
    pairs = sum(min(i, window) for i in range(1, s + 1))  # brute force: query i sees min(i, W) keys
    proj = 2 * (4096 * 4096 * 2 + 2 * 4096 * 1024) * s
    assert attn["flops"] == pytest.approx(proj + 4 * 32 * 128 * pairs, rel=1e-12)


def test_chunked_attention_reads_the_current_chunk() -> None:
    # Llama-4-like chunks of 8192: a decode token at position 20000 attends to the 20000 - 16384 = 3616
    # cached keys of its chunk; a 20000-token prompt has chunks of 8192, 8192 and 3616 causal queries
    chunk, s = 8192, 20000
    model = ModelConfig.model_validate(
        {
            "name": "chunked",
            "d_model": 5120,
            "vocab_size": 1000,
            "blocks": [
                {
                    "repeat": 4,
                    "attention": {
                        "kind": "gqa",
                        "n_heads": 40,
                        "n_kv_heads": 8,
                        "head_dim": 128,
                        "attention_chunk": chunk,
                    },
                    "ffn": [{"kind": "dense", "d_ff": 8192}],
                }
            ],
        }
    )
    kv_token = 4 * 2 * 8 * 128 * 2
    dec = simulate(model, H100, Workload(batch=[3], context=[s, 2 * chunk])).set_index("context")
    assert dec.loc[s, "kv_read_bytes"] == 3 * 3616 * kv_token
    assert dec.loc[2 * chunk, "kv_read_bytes"] == 0  # the first token of a chunk reads no cache
    assert dec.loc[s, "memory_bytes"] > dec.loc[2 * chunk, "memory_bytes"]  # only the chunk is held
    pre = simulate(model, H100, Workload(phase="prefill", batch=[1], context=[s]), per_layer=True)
    attn = pre[pre["layer"] == "block0.attn"].iloc[0]
    pairs = sum(i % chunk + 1 for i in range(s))  # brute force: query i sees i mod chunk + 1 keys
    proj = 2 * (5120 * 5120 * 2 + 2 * 5120 * 1024) * s
    assert attn["flops"] == pytest.approx(proj + 4 * 40 * 128 * pairs, rel=1e-12)
    with pytest.raises(ValueError, match="exclude each other"):
        ModelConfig.model_validate(
            {
                **model.model_dump(),
                "blocks": [
                    {
                        "repeat": 1,
                        "attention": {
                            "kind": "mha",
                            "n_heads": 2,
                            "head_dim": 8,
                            "sliding_window": 4,
                            "attention_chunk": 4,
                        },
                    }
                ],
            }
        )


def test_mla_down_projections_are_replicated_under_tensor_parallelism() -> None:
    mla = {
        "kind": "mla", "n_heads": 128, "q_lora_rank": 1536, "kv_lora_rank": 512,
        "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    }  # fmt: skip
    model = ModelConfig.model_validate(
        {
            "name": "mla",
            "d_model": 7168,
            "vocab_size": 1000,
            "blocks": [{"attention": mla, "ffn": [{"kind": "dense", "d_ff": 18432}]}],
        }
    )
    one = simulate(model, H100, Workload(batch=[1], context=[4096], tp=8), per_layer=True)
    attn = one[one["layer"] == "block0.attn"].iloc[0]
    down = 7168 * 1536 + 7168 * (512 + 64)
    up = 1536 * 128 * 192 + 512 * 128 * (128 + 128) + 128 * 128 * 7168
    assert attn["weight_bytes_ideal"] == pytest.approx((down + up / 8) * 2)
    assert attn["kv_read_bytes"] == 4096 * 576 * 2  # the latent is not split: every rank reads it
    assert attn["act_bytes_naive"] >= attn["act_bytes_ideal"]


def test_prefill_logits_last_or_all() -> None:
    model = olmoe_like(blocks=1)
    last = simulate(model, H100, Workload(phase="prefill", batch=[2], context=[512]), per_layer=True)
    every = simulate(
        model, H100, Workload(phase="prefill", batch=[2], context=[512], logits="all"), per_layer=True
    )
    head_last = last[last["layer"] == "head"].iloc[0]["flops"]
    head_all = every[every["layer"] == "head"].iloc[0]["flops"]
    assert head_last == 2 * 50304 * 2048 * 2
    assert head_all == 2 * 50304 * 2048 * 2 * 512


def test_resident_memory_and_capacity() -> None:
    # weights held once (tied head adds none) + the KV cache of every sequence + the largest layer's
    # activations and the residual stream beside them, against 80 GB of HBM. In decode the largest layer
    # is the head: per token the hidden state (bf16), the bf16 logits and their fp32 upcast.
    model = olmoe_like()
    df = simulate(model, H100, Workload(batch=[1, 512], context=[4096]))
    params = df["params"].iloc[0]
    kv_per_token = 16 * 2 * 16 * 128 * 2
    head_peak_per_token = 2048 * 2 + 50304 * (2 + 4) + 2048 * 2  # + the residual stream
    for _, r in df.iterrows():
        assert r["act_peak_bytes"] == pytest.approx(r["batch"] * head_peak_per_token, rel=1e-12)
        expected = params * 2 + r["batch"] * (4096 + 1) * kv_per_token + r["batch"] * head_peak_per_token
        assert r["memory_bytes"] == pytest.approx(expected, rel=1e-12)
    assert list(df["fits"]) == [True, False]  # 512 x 4096 tokens of KV cache is 275 GB


def test_prefill_activation_peak_holds_no_attention_scores() -> None:
    # Llama-like prefill of 8 x 8192 tokens: the attention layer holds x, y, q, k, v and its output
    # (GQA 32/8 heads of 128), never the 8 x 32 x 8192^2 score matrix (34 GB in bf16) that the naive
    # level moves; the gated FFN holds x, y and gate, up and their product (3 x 14336 per token).
    model = ModelConfig.model_validate(
        {
            "name": "llama-like",
            "d_model": 4096,
            "vocab_size": 128256,
            "blocks": [
                {
                    "repeat": 2,
                    "attention": {"kind": "gqa", "n_heads": 32, "n_kv_heads": 8, "head_dim": 128},
                    "ffn": [{"kind": "dense", "d_ff": 14336}],
                }
            ],
        }
    )
    tokens = 8 * 8192
    df = simulate(model, H100, Workload(phase="prefill", batch=[8], context=[8192]), per_layer=True)
    by_layer = df.set_index("layer")
    attn_peak = tokens * (2 * 4096 + 32 * 128 + 2 * 8 * 128 + 32 * 128) * 2
    ffn_peak = tokens * (2 * 4096 + 3 * 14336) * 2
    assert by_layer.loc["block0.attn", "act_peak_bytes"] == pytest.approx(attn_peak, rel=1e-12)
    assert by_layer.loc["block0.ffn", "act_peak_bytes"] == pytest.approx(ffn_peak, rel=1e-12)
    assert by_layer.loc["block0.attn", "act_bytes_naive"] > 30e9  # the score matrix the peak leaves out
    total = by_layer.loc["total"]
    residual = tokens * 4096 * 2
    # the largest layer, not a sum, and the residual stream beside it
    assert total["act_peak_bytes"] == pytest.approx(ffn_peak + residual, rel=1e-12)
    weights = total["params"] * 2
    kv = 2 * tokens * 2 * 8 * 128 * 2
    assert total["memory_bytes"] == pytest.approx(weights + kv + ffn_peak + residual, rel=1e-12)


def test_parallel_degrees_that_do_not_fit_the_model_are_refused() -> None:
    from simulator.errors import ConfigError

    with pytest.raises(ConfigError, match="--tp 3 does not divide the 16 attention heads"):
        simulate(olmoe_like(), H100, Workload(batch=[1], tp=3))
    with pytest.raises(ConfigError, match="--ep 128 exceeds the 64 experts"):
        simulate(olmoe_like(), H100, Workload(batch=[1], ep=128))


def test_moe_activation_peak_is_a_fused_kernels_workspace() -> None:
    # OLMoE-like prefill, 2 x 512 tokens, top-8 of 64 SwiGLU experts of 1024: per token copy the
    # dispatched x, gate/up/product and the expert output; per token x, y and 64 fp32 router logits
    df = simulate(olmoe_like(1), H100, Workload(phase="prefill", batch=[2], context=[512]), per_layer=True)
    moe = df[df["layer"] == "block0.moe"].iloc[0]
    tokens = 1024
    copies = tokens * 8 * (2048 + 3 * 1024 + 2048) * 2
    per_token = tokens * (2 * 2048 * 2 + 64 * 4)
    assert moe["act_peak_bytes"] == pytest.approx(copies + per_token, rel=1e-12)


def test_per_kind_weight_dtypes() -> None:
    # OLMoE-like with the MoE experts in MXFP4, 4.25 bits a weight with its block scales, and everything
    # else in bf16, the router too (quantised checkpoints keep it in full precision): by hand at batch 1
    # (8 distinct experts of 3 x 2048 x 1024, a 2048 x 64 router)
    wl = Workload(batch=[1], context=[2048], weight_dtypes={"moe": "mxfp4"})
    df = simulate(olmoe_like(1), H100, wl, per_layer=True).set_index("layer")
    mx = (4 + 8 / 32) / 8
    moe_weights = 8 * 3 * 2048 * 1024 * mx + 2048 * 64 * 2
    assert df.loc["block0.moe", "weight_bytes_ideal"] == pytest.approx(moe_weights, rel=1e-12)
    assert df.loc["block0.attn", "weight_bytes_ideal"] == 4 * 2048 * 2048 * 2
    assert df.loc["block0.moe", "weight_dtype"] == "mxfp4" and df.loc["block0.attn", "weight_dtype"] == "bf16"
    assert df.loc["total", "weight_dtype"] == "bf16, moe=mxfp4"
    # resident: every expert in mxfp4; the router, attention, the embedding and the (untied) head in bf16
    moe_params = 64 * 3 * 2048 * 1024
    other = 2048 * 64 + 4 * 2048 * 2048 + 2 * 50304 * 2048
    held = moe_params * mx + other * 2
    kv = (2048 + 1) * 2 * 16 * 128 * 2
    residual_and_peak = df.loc["total", "act_peak_bytes"]
    assert df.loc["total", "memory_bytes"] == pytest.approx(held + kv + residual_and_peak, rel=1e-12)


def test_shared_memory_table_is_held_in_its_layers_dtype() -> None:
    from simulator.loading import load_model

    # UltraMemV2-1B/7B: 16 memory layers share one value table of knum^2 rows per layer window,
    # 528^2 x 16 rows of 768 value + 384 pre-value dims (cost-reference section 9)
    model = load_model("ultramemv2-1b-7b")
    layers = simulate(model, H100, Workload(batch=[1]), per_layer=True)
    memory = layers[layers["kind"] == "ultramemv2"].drop_duplicates("layer")
    own = memory["params"].sum()  # queries, keys, cores, projections
    # the retrieval (query 2048 x 4 x 512, sub-keys 2 x 528 x 512 x 2, cores 8) stays in bf16, as routers do
    retrieval = 16 * (2048 * 4 * 512 + 2 * 528 * 512 * 2 + 8)
    table = 528**2 * 16 * (768 + 384)
    base = simulate(model, H100, Workload(batch=[1])).iloc[0]
    quant = simulate(model, H100, Workload(batch=[1], weight_dtypes={"ultramemv2": "int4"})).iloc[0]
    # the layers' other weights and the table go from 2 to 0.5 bytes a parameter; nothing else changes
    assert base["memory_bytes"] - quant["memory_bytes"] == pytest.approx(
        (own - retrieval + table) * 1.5, rel=1e-9
    )
    assert quant["weight_bytes_ideal"] < base["weight_bytes_ideal"]


def test_l2_ratio_is_the_steps_weight_and_kv_reads_over_l2() -> None:
    # a 2-block dense model small enough for its weights to sit in a 50 MB L2 at batch 1: by hand,
    # per block attention 4 x 512^2 and FFN 3 x 512 x 2048 weights, a 1000 x 512 tied embedding (a row
    # gathered per token, at most the whole table; the whole table read by the head), bf16;
    # KV 2 x 512 per token per block
    model = ModelConfig.model_validate(
        {
            "name": "tiny",
            "d_model": 512,
            "vocab_size": 1000,
            "tie_embeddings": True,
            "blocks": [
                {
                    "repeat": 2,
                    "attention": {"kind": "mha", "n_heads": 8, "head_dim": 64},
                    "ffn": [{"kind": "dense", "d_ff": 2048}],
                }
            ],
        }
    )
    df = simulate(model, H100, Workload(batch=[1, 4096], context=[1024]), per_layer=True)
    per_block = 4 * 512**2 + 3 * 512 * 2048
    for b in (1, 4096):
        tot = df[(df["layer"] == "total") & (df["batch"] == b)].iloc[0]
        rows = min(b, 1000)
        weights = (2 * per_block + 1000 * 512) * 2 + rows * 512 * 2
        kv = b * 1024 * 2 * (2 * 512 * 2)
        assert tot["l2_ratio"] == pytest.approx((weights + kv) / 50e6, rel=1e-12)
        ffn = df[(df["layer"] == "block1.ffn") & (df["batch"] == b)].iloc[0]
        assert ffn["l2_ratio"] == pytest.approx(3 * 512 * 2048 * 2 / 50e6, rel=1e-12)
    small, large = df[df["layer"] == "total"]["l2_ratio"]
    assert small < 1 < large  # 8.4 MB of weights + 4 MB of KV at batch 1; 17 GB of KV at 4096


def test_routing_cost_of_moe_router_and_memory_retrieval_by_hand() -> None:
    hw = load_hardware("h100-sxm")
    wl = Workload(batch=[1, 64], context=[2048])

    def layer(model: str, name: str) -> pd.DataFrame:
        df = simulate(load_model(model), hw, wl, per_layer=True)
        return df[df["layer"] == name].set_index("batch")

    # OLMoE-1B-7B: a router of 2048 x 64 weights, read once a step, 2 FLOPs per weight and token
    moe = layer("olmoe-1b-7b", "block0.moe")
    assert (moe["routing_weight_bytes"] == 2048 * 64 * 2).all()
    assert moe.loc[64, "routing_flops"] == 2 * 2048 * 64 * 64
    # UltraMemV2-1B/7B retrieval (d 2048, 1 head, Tucker rank 2, D_k 512, 2 cores, knum 528, top-128):
    # query projection 2048 x (2 x 2 x 512), sub-keys 2 sides x 528 x 512 x rank 2, cores 2 x 2 x 2;
    # FLOPs per token: 2 per query and key weight, plus 128^2 grid cells x 2 cores x (2 x 2^2 + 2 x 2)
    query, keys, cores = 2048 * 4 * 512, 2 * 528 * 512 * 2, 2 * 2 * 2
    memory = layer("ultramemv2-1b-7b", "block0.memory")
    assert (memory["routing_weight_bytes"] == (query + keys + cores) * 2).all()
    per_token = 2 * query + 2 * keys + 128**2 * 2 * (2 * 4 + 2 * 2)
    assert memory.loc[1, "routing_flops"] == per_token and memory.loc[64, "routing_flops"] == 64 * per_token
    # at one token the retrieval is most of what the memory layer reads; the router is a sliver of the MoE
    assert memory.loc[1, "routing_weight_bytes"] > 0.6 * memory.loc[1, "weight_bytes_ideal"]
    assert moe.loc[1, "routing_weight_bytes"] < 0.01 * moe.loc[1, "weight_bytes_ideal"]


SPARSE_AND_DENSE = ["olmoe-1b-7b", "ultramemv2-1b-7b", "pkm-xlm", "peer-1b", "ultramem-227m-1.2b",
                    "memory-plus-227m-1.2b", "deepseek-v3", "llama-3.1-8b"]  # fmt: skip


@pytest.mark.parametrize("model", SPARSE_AND_DENSE)
def test_routing_cost_is_part_of_the_layer_cost(model: str) -> None:
    df = simulate(load_model(model), load_hardware("h100-sxm"), Workload(batch=[1, 256]), per_layer=True)
    assert (df["routing_flops"] <= df["flops"] * (1 + 1e-12)).all()
    assert (df["routing_weight_bytes"] <= df["weight_bytes_ideal"] * (1 + 1e-12)).all()
    sparse = df["kind"].isin(["moe", "pkm", "peer", "memory_plus", "ultramem", "ultramemv2"])
    assert (df.loc[sparse, "routing_flops"] > 0).all() and (df.loc[~sparse & (df["layer"] != "total"),
                                                                    "routing_flops"] == 0).all()  # fmt: skip
    totals = df[df["layer"] == "total"].set_index("batch")["routing_weight_bytes"]
    layers = df[df["layer"] != "total"].groupby("batch")["routing_weight_bytes"].sum()
    assert np.allclose(totals, layers)

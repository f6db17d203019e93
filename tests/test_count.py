"""count_model: op-level FLOPs and bytes of one step of the reference model, on meta tensors."""

from __future__ import annotations

import time

import pytest

from profiler.count import SUMMARY_COLUMNS, count_model, summarize_layers
from profiler.modules.model import ReferenceModel
from profiler.opcount import SDPA_OP
from simulator.config import (
    AttentionConfig,
    BlockConfig,
    DenseFFNConfig,
    ModelConfig,
    MoEConfig,
    UltraMemV2Config,
    Workload,
)
from simulator.loading import load_hardware
from simulator.sweep import simulate

BF16 = 2
D, L, HEADS, KV, HD, FF, VOCAB = 4096, 32, 32, 8, 128, 14336, 128256


def llama_7b() -> ModelConfig:
    attn = AttentionConfig(kind="gqa", n_heads=HEADS, n_kv_heads=KV, head_dim=HD)
    return ModelConfig(
        name="llama-like-7b",
        d_model=D,
        vocab_size=VOCAB,
        blocks=[BlockConfig(repeat=L, attention=attn, ffn=[DenseFFNConfig(d_ff=FF)])],
    )


def test_7b_linear_flops_are_twice_the_non_embedding_params() -> None:
    start = time.perf_counter()
    ops = count_model(llama_7b(), batch=4, context=512, phase="decode", dtype="bf16")
    assert time.perf_counter() - start < 60
    # hand count: q/o 4096x4096 each, k/v 4096x1024 each, SwiGLU 3 x 4096x14336, untied head 4096 x vocab
    per_block = 2 * D * HEADS * HD + 2 * D * KV * HD + 3 * D * FF
    params_no_embed = L * per_block + D * VOCAB
    assert params_no_embed == 7_504_658_432  # Llama-3.1-8B: 8,030,261,248 - embedding - norm weights
    linear = ops[ops["op"] != SDPA_OP]
    assert linear["flops"].sum() == 2 * params_no_embed * 4  # 4 tokens in flight
    # attention: 2 * S * (d_qk + d_v) per query head and token over the 512-entry cache
    sdpa = ops[ops["op"] == SDPA_OP]
    assert len(sdpa) == L and sdpa["flops"].sum() == L * 4 * HEADS * 2 * 512 * (2 * HD)

    summary = summarize_layers(ops)
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    names = list(summary["layer"])
    assert names[0] == "embed" and names[-1] == "head"
    assert names[1:-1] == [f"block{i}.{s}" for i in range(L) for s in ("attn", "ffn")]
    ffn = summary.set_index("layer").loc["block7.ffn"]
    assert ffn["flops"] == 4 * 2 * 3 * D * FF
    # eager bytes read: at least the weights (read once) plus the KV cache of 4 x 512 entries
    attn = summary.set_index("layer").loc["block0.attn"]
    kv_bytes = 4 * 512 * 2 * KV * HD * BF16
    assert attn["bytes_read"] >= (2 * D * HEADS * HD + 2 * D * KV * HD) * BF16 + kv_bytes


def _sparse_model() -> ModelConfig:
    attn = AttentionConfig(kind="mha", n_heads=16, head_dim=128)
    return ModelConfig(
        name="olmoe-umv2-like",
        d_model=2048,
        vocab_size=50304,
        blocks=[
            BlockConfig(repeat=2, attention=attn, ffn=[MoEConfig(n_experts=64, top_k=8, expert_ffn=1024)]),
            BlockConfig(
                repeat=2,
                attention=attn,
                parallel_ffn=True,
                ffn=[
                    DenseFFNConfig(d_ff=6144),
                    UltraMemV2Config(knum=528, key_dim=512, top_m=128, value_dim=768, pre_value_dim=384),
                ],
            ),
        ],
    )


def test_moe_and_memory_gathers_read_less_than_their_tables() -> None:
    ops = count_model(_sparse_model(), batch=2, context=256)
    expert_bytes = 3 * 2048 * 1024 * BF16
    moe = ops[ops["layer"] == "block0.moe"]
    # uniform routing on meta: 2 tokens x top-8 touch 8 to 16 distinct experts of 64
    weight_reads = moe[moe["op"].isin(["aten.mm.default", "aten.addmm.default"])]
    assert weight_reads["bytes_read"].sum() >= 8 * expert_bytes
    assert moe["bytes_read"].sum() < 17 * expert_bytes

    mem = ops[ops["layer"] == "block2.memory"]
    gathers = mem[mem["op"].str.contains("embedding")]
    row_bytes = (768 + 384) * BF16
    table_bytes = 528**2 * 2 * row_bytes  # one table shared by the 2 memory layers
    requested = 2 * 128 * row_bytes  # T x top-m rows
    assert requested <= gathers["bytes_read"].sum() < requested * 1.1
    assert gathers["bytes_read"].sum() < table_bytes / 100


def test_chunked_decode_reads_only_the_current_chunk() -> None:
    """Llama-4-like chunks of 8192 at a context of 20000: each layer's SDPA reads the query and the
    20000 mod 8192 = 3616 K/V entries of the current chunk (hand count), the simulator's KV read."""
    chunk, ctx, b = 8192, 20000, 2
    attn = AttentionConfig(kind="gqa", n_heads=HEADS, n_kv_heads=KV, head_dim=HD, attention_chunk=chunk)
    cfg = ModelConfig(
        name="llama4-like",
        d_model=D,
        vocab_size=32000,
        blocks=[BlockConfig(repeat=2, attention=attn, ffn=[DenseFFNConfig(d_ff=FF)])],
    )
    ops = count_model(cfg, batch=b, context=ctx)
    sdpa = ops[ops["op"] == SDPA_OP]
    kv_bytes = b * 3616 * 2 * KV * HD * BF16
    assert len(sdpa) == 2
    assert (sdpa["bytes_read"] == b * HEADS * HD * BF16 + kv_bytes).all()
    frame = simulate(
        cfg, load_hardware("h100-sxm"), Workload(phase="decode", batch=[b], context=[ctx]), per_layer=True
    )
    assert frame[frame["layer"] == "block0.attn"]["kv_read_bytes"].iloc[0] == kv_bytes


def test_sliding_window_decode_reads_only_the_window() -> None:
    """Mistral-7B-like shapes, window 4096 over a 16k context: each layer's fused SDPA reads the query
    and the 4096 newest K/V entries (hand count), which is the KV read the simulator charges."""
    window, ctx, b = 4096, 16384, 2
    attn = AttentionConfig(kind="gqa", n_heads=HEADS, n_kv_heads=KV, head_dim=HD, sliding_window=window)
    cfg = ModelConfig(
        name="mistral-like",
        d_model=D,
        vocab_size=32000,
        blocks=[BlockConfig(repeat=2, attention=attn, ffn=[DenseFFNConfig(d_ff=FF)])],
    )
    ops = count_model(cfg, batch=b, context=ctx)
    sdpa = ops[ops["op"] == SDPA_OP]
    kv_bytes = b * window * 2 * KV * HD * BF16
    q_bytes = b * HEADS * HD * BF16
    assert len(sdpa) == 2
    assert (sdpa["bytes_read"] == q_bytes + kv_bytes).all()

    frame = simulate(
        cfg, load_hardware("h100-sxm"), Workload(phase="decode", batch=[b], context=[ctx]), per_layer=True
    )
    predicted = frame[frame["layer"] == "block0.attn"]["kv_read_bytes"].iloc[0]
    assert predicted == kv_bytes


def test_meta_moe_routing_touches_the_uniform_expected_number_of_experts() -> None:
    """16 MoE layers, 4 decode tokens, top-8 of 64: each layer runs its router matmul plus 3 matmuls per
    expert it routes to; their mean over layers is the uniform expectation 64 (1 - (56/64)^4) = 27.3."""
    attn = AttentionConfig(kind="mha", n_heads=4, head_dim=32)
    cfg = ModelConfig(
        name="moe16",
        d_model=128,
        vocab_size=1000,
        blocks=[
            BlockConfig(repeat=16, attention=attn, ffn=[MoEConfig(n_experts=64, top_k=8, expert_ffn=64)])
        ],
    )
    ops = count_model(cfg, batch=4, context=16)
    matmuls = ops[
        ops["layer"].str.endswith(".moe") & ops["op"].isin(["aten.mm.default", "aten.addmm.default"])
    ]
    experts = (matmuls.groupby("layer").size() - 1) / 3
    assert len(experts) == 16 and (experts >= 8).all() and (experts <= 32).all()
    expected = 64 * (1 - (56 / 64) ** 4)
    assert abs(experts.mean() - expected) < 0.1 * expected  # sd of the mean over 16 layers: about 0.6


def test_simulated_activation_peak_against_live_bytes_of_the_real_modules() -> None:
    """The simulator's per-layer act_peak_bytes (a formula) against the storages the reference modules
    really allocate, tracked op by op on meta tensors. The modules also hold the residual stream (T x d)
    and eager layout copies (transposes before/after attention, MoE's sorted token copies), so the
    measured peak lies at or above formula + residual and, for these families, within 35 % of it."""
    hw = load_hardware("h100-sxm")
    gqa = AttentionConfig(kind="gqa", n_heads=HEADS, n_kv_heads=KV, head_dim=HD)
    llama = ModelConfig(
        name="llama-like-2L",
        d_model=D,
        vocab_size=VOCAB,
        blocks=[BlockConfig(repeat=2, attention=gqa, ffn=[DenseFFNConfig(d_ff=FF)])],
    )
    for cfg in (llama, _sparse_model()):
        for phase, b, ctx in (("decode", 64, 256), ("prefill", 2, 512)):
            live = summarize_layers(count_model(cfg, batch=b, context=ctx, phase=phase)).set_index("layer")
            sim = simulate(cfg, hw, Workload(phase=phase, batch=[b], context=[ctx]), per_layer=True)
            sim = sim.set_index("layer")
            residual = (b if phase == "decode" else b * ctx) * cfg.d_model * BF16
            blocks = [name for name in live.index if name.startswith("block")]
            assert blocks
            for name in blocks:
                floor = sim.loc[name, "act_peak_bytes"] + residual
                measured = live.loc[name, "peak_live_bytes"]
                assert floor * 0.999 <= measured <= 1.35 * floor, (cfg.name, phase, name, measured, floor)


def test_dense_ffn_kernels_bytes_and_time_by_hand() -> None:
    """A SwiGLU FFN of d 256 / 512 at batch 2 (bf16) launches seven kernels: the fused RMSNorm (x and
    its weight read, y and one fp32 rstd per row written), the gate and up GEMMs, SiLU, the product,
    the down GEMM and the residual add. Each takes the H100's kernel floor plus its roofline time."""
    from profiler.count import count_sweep

    d, ff, b = 256, 512, 2
    cfg = ModelConfig(
        name="ffn",
        d_model=d,
        vocab_size=64,
        blocks=[
            BlockConfig(
                repeat=1,
                attention=AttentionConfig(kind="mha", n_heads=4, head_dim=64),
                ffn=[DenseFFNConfig(d_ff=ff)],
            )
        ],
    )
    hw = load_hardware("h100-sxm")
    row = count_sweep(cfg, [b], 16, hardware=hw).set_index("layer").loc["block0.ffn"]
    x, h, w = b * d * BF16, b * ff * BF16, d * ff * BF16
    gemm_flops = 2 * b * d * ff
    kernels = [  # (bytes read, bytes written, FLOPs)
        (x + d * BF16, x + b * 4, 0),  # fused RMSNorm
        (x + w, h, gemm_flops),  # gate
        (h, h, 0),  # SiLU
        (x + w, h, gemm_flops),  # up
        (2 * h, h, 0),  # SiLU(gate) * up
        (h + w, x, gemm_flops),  # down
        (2 * x, x, 0),  # residual add
    ]
    assert row["n_kernels"] == len(kernels)
    assert row["bytes_read"] == sum(k[0] for k in kernels)
    assert row["bytes_written"] == sum(k[1] for k in kernels)
    floor, bw = 1.50e-6, 3.35e12 * 0.90  # the preset's measured floor and sustained bandwidth
    by_hand = sum(floor + max(f / 989.4e12, (r + wr) / bw) for r, wr, f in kernels)
    assert row["kernel_time_s"] == pytest.approx(by_hand, rel=1e-12)


def test_cuda_runs_rms_norm_as_one_fused_kernel_in_the_h100_recording() -> None:
    # what count assumes (FUSED_RMS_NORM): on CUDA each nn.RMSNorm is aten::rms_norm -> aten::_fused_rms_norm
    # and one kernel; the committed H100 trace (2 norms per block x 4 blocks x 3 steps) shows exactly that
    from pathlib import Path

    from traces.kineto import read_kineto

    trace = (
        Path(__file__).resolve().parents[1]
        / "traces/samples/h100-decode-2026-11-26/kineto/moe_decode_b8.json.gz"
    )
    t = read_kineto(trace, with_ops=True)
    fused = int((t.ops["name"].astype(str) == "aten::_fused_rms_norm").sum())
    kernels = t.events[t.events["cat"].astype(str) == "kernel"]["name"].astype(str)
    norm_kernels = int(kernels.str.contains("layer_norm_kernel").sum())
    assert fused == norm_kernels > 0
    assert fused == int((t.ops["name"].astype(str) == "aten::rms_norm").sum())


def test_learned_position_table_gathers_one_row_per_token_and_counts_its_weights() -> None:
    """GPT-2-small shapes (768 wide, 1024 positions, 50257 tokens): the embed step gathers a token row
    and a position row per token (hand count, both tables' rows requested, not the tables), and the
    simulator's embed layer charges the same weight bytes and holds both tables' parameters."""
    d, positions, vocab, b = 768, 1024, 50257, 4
    attn = AttentionConfig(kind="mha", n_heads=12, head_dim=64, qkv_bias=True, o_bias=True)
    cfg = ModelConfig(
        name="gpt2-like",
        d_model=d,
        vocab_size=vocab,
        tie_embeddings=True,
        max_positions=positions,
        learned_positions=True,
        norm="layernorm",
        blocks=[
            BlockConfig(
                repeat=2,
                attention=attn,
                norm="layernorm",
                ffn=[DenseFFNConfig(d_ff=4 * d, activation="gelu", bias=True)],
            )
        ],
    )
    ops = count_model(cfg, batch=b, context=100)
    gathers = ops[(ops["layer"] == "embed") & ops["op"].str.contains("embedding")]
    assert len(gathers) == 2
    assert gathers["bytes_read"].sum() >= 2 * b * d * BF16  # b token rows + b position rows
    assert gathers["bytes_read"].sum() < 2 * b * d * BF16 + 2 * b * 8 + 1  # + the int64 ids at most
    frame = simulate(
        cfg, load_hardware("h100-sxm"), Workload(phase="decode", batch=[b], context=[100]), per_layer=True
    )
    embed = frame[frame["layer"] == "embed"].iloc[0]
    # ideal: the batch's sequences sit at one position here, so one position row serves them all
    assert embed["weight_bytes_ideal"] == (b + 1) * d * BF16
    assert embed["weight_bytes_naive"] == 2 * b * d * BF16
    assert embed["params"] == (vocab + positions) * d
    total = frame[frame["layer"] == "total"]["params"].iloc[0]
    model = ReferenceModel(cfg, device="meta")
    assert model.param_count() == total
    assert "pos_embed" in model.module_layer_map() and "pos_embed" in dict(model.named_modules())
    # tensor parallelism splits the token table over the ranks, not the position table
    tp2 = simulate(
        cfg,
        load_hardware("h100-sxm"),
        Workload(phase="decode", batch=[b], context=[100], tp=2),
        per_layer=True,
    )
    held = tp2[tp2["layer"] == "embed"]["memory_bytes"].iloc[0]
    assert held >= (vocab * d / 2 + positions * d) * BF16
    with pytest.raises(ValueError, match="learned_positions needs"):
        ModelConfig(name="x", d_model=d, vocab_size=vocab, learned_positions=True, blocks=cfg.blocks)


def _dsa_model(sparse: bool = True) -> ModelConfig:
    """One DeepSeek-V3.2 attention layer (16 of its 128 heads) and a small MLP; without `sparse`, the
    same MLA layer without its indexer (DeepSeek-V3's)."""
    attn = AttentionConfig(
        kind="mla",
        n_heads=16,
        q_lora_rank=1536,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        index_topk=2048 if sparse else None,
        index_n_heads=64 if sparse else None,
        index_head_dim=128 if sparse else None,
    )
    return ModelConfig(
        name="v32-like",
        d_model=2048,
        vocab_size=1000,
        blocks=[BlockConfig(attention=attn, ffn=[DenseFFNConfig(d_ff=1024)])],
    )


def test_sparse_attention_decode_reads_the_index_keys_and_only_the_picked_latent_rows() -> None:
    """DeepSeek-V3.2 decode at 5000 cached tokens: the indexer's score product reads every cached index
    key (2 x 5000 x 128 elements) and its queries; the gather reads the 2048 picked rows of the
    576-wide latent cache, not 5000 (hand count, bf16). The simulator charges the same rows, with the
    index keys in fp8 and a float32 scale (132 bytes, as DeepSeek's kernels and vLLM store them), and
    holds the whole cache."""
    b, ctx, topk, row = 2, 5000, 2048, 512 + 64
    ops = count_model(_dsa_model(), batch=b, context=ctx)
    attn = ops[ops["layer"] == "block0.attn"]
    index_scores = attn[(attn["op"] == "aten.bmm.default") & (attn["flops"] == 2 * b * 64 * 128 * ctx)]
    assert index_scores["bytes_read"].tolist() == [b * ctx * 128 * BF16 + b * 64 * 128 * BF16]
    gathers = attn[attn["op"] == "aten.index.Tensor"]
    assert len(gathers) == 1
    ids = b * topk * 8 + b * 8  # the picked positions and the batch index, int64
    assert gathers["bytes_read"].iloc[0] == b * topk * row * BF16 + ids

    frame = simulate(
        _dsa_model(),
        load_hardware("h100-sxm"),
        Workload(phase="decode", batch=[b], context=[ctx]),
        per_layer=True,
    )
    layer = frame[frame["layer"] == "block0.attn"].iloc[0]
    assert layer["kv_read_bytes"] == b * (topk * row * BF16 + ctx * 132)
    assert layer["kv_write_bytes"] == b * (row * BF16 + 132)
    # FLOPs: projections, absorbed MLA over the picked rows, and the indexer over every cached key
    params = layer["params"]
    mla_pair = 2 * 16 * (512 + 64) + 2 * 16 * 512
    assert layer["flops"] == 2 * params * b + mla_pair * b * topk + 2 * 64 * 129 * b * ctx
    # two tokens a step (speculative decoding): each query gathers its own 2048 rows, the index keys
    # are read once for both
    spec = simulate(
        _dsa_model(),
        load_hardware("h100-sxm"),
        Workload(phase="decode", batch=[b], context=[ctx], tokens_per_step=2),
        per_layer=True,
    )
    two = spec[spec["layer"] == "block0.attn"].iloc[0]
    assert two["kv_read_bytes"] == 2 * b * topk * row * BF16 + b * ctx * 132
    held = simulate(
        _dsa_model(sparse=False),
        load_hardware("h100-sxm"),
        Workload(phase="decode", batch=[b], context=[ctx]),
        per_layer=True,
    )
    dense_layer = held[held["layer"] == "block0.attn"].iloc[0]
    assert dense_layer["kv_read_bytes"] == b * ctx * row * BF16
    # held: every token's latent and index key (the dense layer: the latents), and the indexer weights
    indexer_weights = (1536 * 64 * 128 + 2048 * (128 + 64)) * BF16
    assert layer["memory_bytes"] - dense_layer["memory_bytes"] >= b * (ctx + 1) * 132 + indexer_weights


def test_sparse_attention_prefill_pairs_are_capped_at_top_k() -> None:
    """A 5000-token prompt: query i attends over min(i, 2048) keys (sum by hand) in MLA's absorbed
    form (DeepSeek-V3.2's sparse prefill gathers each query's picked latent rows), while the indexer
    scores all i; the latent and index keys are each read once."""
    t, topk = 5000, 2048
    frame = simulate(
        _dsa_model(),
        load_hardware("h100-sxm"),
        Workload(phase="prefill", batch=[1], context=[t]),
        per_layer=True,
    )
    layer = frame[frame["layer"] == "block0.attn"].iloc[0]
    attended = sum(min(i, topk) for i in range(1, t + 1))
    scored = t * (t + 1) // 2
    absorbed_pair = 2 * 16 * (512 + 64) + 2 * 16 * 512  # q.k over the latent and rope key, p.v over c
    assert layer["flops"] == 2 * layer["params"] * t + absorbed_pair * attended + 2 * 64 * 129 * scored
    assert layer["kv_read_bytes"] == t * (576 * BF16 + 132)

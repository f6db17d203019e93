"""Memory-layer models against published numbers and the worked examples of shared/docs/cost-reference.md.

Whole-model totals are summed over `model.expanded_blocks()`: the memory layers through their cost
functions, attention / dense FFN / MoE by the hand formulas of sections 3, 4.2 and 10.2 written out here,
so these checks do not depend on the other layer modules. Where `simulator.sweep.simulate` is available
the same totals are checked through it as well.

Where a published number is not reproduced, the test is a strict xfail that states the gap and why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from simulator.config import (
    AttentionConfig,
    BlockConfig,
    DenseFFNConfig,
    HardwareConfig,
    ModelConfig,
    UltraMemConfig,
    UltraMemV2Config,
    Workload,
)
from simulator.costs import Points
from simulator.layers import memory_plus, peer, pkm, ultramem, ultramemv2
from simulator.loading import load_model
from simulator.routing import RoutingModel

COST = {
    "pkm": pkm.cost,
    "peer": peer.cost,
    "memory_plus": memory_plus.cost,
    "ultramem": ultramem.cost,
    "ultramemv2": ultramemv2.cost,
}


def decode(batch: list[int]) -> Points:
    return Points.grid(Workload(batch=batch, context=[1]), RoutingModel(kind="uniform"))


@dataclass
class Totals:
    params: float  # stored, embeddings excluded, shared tables once
    active: float  # per token, embeddings excluded
    flops: float  # per token: 2 x dense active params + memory-layer FLOPs (matmul + grid)
    embedding: float  # one vocab x d matrix


def hand_totals(model: ModelConfig) -> Totals:
    """Sum a model by hand: attention 4d² (MHA, section 10.2), FFN 2·d·d_ff / 3·d·d_ff (section 3), MoE
    N·FFN + d·N router (section 4.2), memory layers through their cost functions at T = 1."""
    d = model.d_model
    pts = decode([1])
    params = active = flops = 0.0
    tables: dict[str, float] = {}
    for block in model.expanded_blocks():
        attn = block.attention
        assert attn.kind == "mha" and attn.n_heads * attn.head_dim == d
        params += 4 * d * d
        active += 4 * d * d
        flops += 2 * 4 * d * d
        for layer in block.ffn:
            if layer.kind == "dense":
                p = (3 if layer.activation == "swiglu" else 2) * d * layer.d_ff
                params, active, flops = params + p, active + p, flops + 2 * p
            elif layer.kind == "moe":
                expert = (3 if layer.activation == "swiglu" else 2) * d * layer.expert_ffn
                router = d * layer.n_experts
                a = layer.top_k * expert + router
                params, active, flops = params + layer.n_experts * expert + router, active + a, flops + 2 * a
            else:
                c = COST[layer.kind](layer, model, pts)
                params += c.params
                active += c.active_params
                flops += float(c.flops[0])
                if c.table_id is not None:
                    tables[c.table_id] = c.table_params
    return Totals(params + sum(tables.values()), active, flops, float(model.vocab_size * d))


def rel(ours: float, published: float) -> float:
    return abs(ours / published - 1)


def simulate_totals(model: ModelConfig) -> tuple[float, float, float] | None:
    """(params, active, FLOPs/token) through simulator.sweep.simulate, embeddings off; None if unavailable."""
    try:
        from simulator.sweep import simulate
    except ImportError:
        return None
    hw = HardwareConfig.model_validate(
        {
            "name": "test-a100",
            "peak_flops": {"bf16": {"value": 312e12, "tag": "datasheet"}},
            "hbm_bandwidth": {"value": 2.039e12, "tag": "datasheet"},
            "hbm_capacity": {"value": 80e9, "tag": "datasheet"},
            "l2_bytes": {"value": 40e6, "tag": "datasheet"},
        }
    )
    bare = model.model_copy(update={"embeddings": False})
    df = simulate(bare, hw, Workload(batch=[1], context=[1]))
    row = df.iloc[0]
    return float(row["params"]), float(row["active_params"]), float(row["flops"])


# ------------------------------------------------------------------------ UltraMem Table 1 (section 8.5)

TABLE1 = {  # name: (params B, GFLOPs/token) [Q: UltraMem arXiv 2411.12364 Table 1]
    "dense-1.6b": (1.61, 3.21),
    "moe-1.6b-2in34": (21.36, 3.52),
    "ultramem-1.6b-x12": (21.41, 3.50),
}


@pytest.mark.parametrize("name", sorted(TABLE1))
def test_ultramem_table1_params_and_flops(name: str) -> None:
    """UltraMem Table 1 within 3 %, models reconstructed as cost-reference 8.5/15.1 derives them.

    FLOPs convention that matches: matmul FLOPs per token = 2 x non-embedding active parameters (plus the
    memory layers' candidate-grid FLOPs, < 0.1 %), excluding attention score/value FLOPs and the LM head.
    Evidence: Dense-1.6B gives 3.221 G this way (Table 1: 3.21); adding the untied LM head (2·d·V =
    0.21 G) gives 3.43 G (+6.8 %), and a 2048-token context adds 4·d·S·L ≈ 0.54 G at the last position:
    either would break the 3 % match. Parameters likewise exclude embeddings.
    """
    params_b, gflops = TABLE1[name]
    model = load_model(name)
    t = hand_totals(model)
    assert rel(t.params / 1e9, params_b) < 0.03
    assert rel(t.flops / 1e9, gflops) < 0.03
    assert t.flops == pytest.approx(2 * t.active, rel=0.002)  # 2 x active params is the convention
    if name == "dense-1.6b":  # the conventions ruled out above
        assert rel((t.flops + 2 * t.embedding) / 1e9, gflops) > 0.03
        assert rel((t.flops + 4 * 2048 * 2048 * 32) / 1e9, gflops) > 0.03
    through_sweep = simulate_totals(model)
    if through_sweep is not None:
        params, active, flops = through_sweep
        assert params == pytest.approx(t.params, rel=1e-9)
        assert active == pytest.approx(t.active, rel=1e-9)
        assert rel(flops / 1e9, gflops) < 0.03  # the sweep adds context-1 attention scores (~1e-5)


def test_ultramem_x12_is_iso_param_with_moe() -> None:
    """Table 1 pairs UltraMem-1.6B-x12 with MoE-1.6B-2in34 at equal params (21.41 vs 21.36 B) and ~equal
    FLOPs (3.50 vs 3.52 G); the reconstruction keeps both within 1 %."""
    um, moe = hand_totals(load_model("ultramem-1.6b-x12")), hand_totals(load_model("moe-1.6b-2in34"))
    assert rel(um.params, moe.params) < 0.01
    assert rel(um.flops, moe.flops) < 0.01


# ------------------------------------------------------------------------ UltraMemV2 Table 10 (section 9.4)


def table10_counts(name: str) -> tuple[float, float]:
    """(active, total) as Table 10 counts them.

    No single embedding convention fits every row. The 227M rows count the tied embedding once in the
    active number but not in the total: that one convention gives UltraMemV2 224.3 M / 1.181 B (paper
    225 M / 1.18 B), UltraMem 1.181 B total and OLMoE-227M (d_e 384) 228.4 M / 1.181 B (paper 227 M /
    1.18 B). Counting it in both would put every 227M total at 1.22 B (+3.3 %). The 1B/7B rows exclude
    embeddings from both: OLMoE-1B-7B is then 1076 M / 6.713 B (paper 1070 M / 6.71 B).
    """
    t = hand_totals(load_model(name))
    if "227m" in name:
        return t.active + t.embedding, t.params
    return t.active, t.params


def olmoe_counts(d: int, blocks: int, d_e: int, embedding: float) -> tuple[float, float]:
    """OLMoE by hand (section 4.2): MHA 4d², router 64·d, 64 SwiGLU experts of d_e, top-8."""
    attn, router, expert = 4 * d * d, 64 * d, 3 * d * d_e
    return blocks * (attn + router + 8 * expert) + embedding, blocks * (attn + router + 64 * expert)


TABLE10 = {  # name: (active, total) [Q: UltraMemV2 arXiv 2508.18756 Table 10]
    "ultramemv2-227m-1.2b": (225e6, 1.18e9),
    "ultramemv2-1b-7b": (1079e6, 6.70e9),
    "ultramem-227m-1.2b": (225e6, 1.18e9),
    "memory-plus-227m-1.2b": (228e6, 1.19e9),
}

TABLE10_GAPS = {
    ("ultramemv2-1b-7b", "total"): (
        "6.215 B (-7.2 %): 16 x 528^2 rows x (768 + 384) = 5.14 B of table + 1.08 B dense. Total - active "
        "does not depend on the FFN width or the embedding, and the paper's 6.70 B - 1079 M needs 5.62 B of "
        "rows (knum ~552, or ~1261 params per row); untied embeddings would add only 0.21 B (-4.2 %)"
    ),
    ("ultramem-227m-1.2b", "active"): (
        "216.9 M (-3.6 %) with the ultramemv2-227m backbone (SwiGLU 2496); the UltraMem-227M backbone or "
        "query layout is not published (Table 10 gives only L, d, heads and the memory shape)"
    ),
    ("memory-plus-227m-1.2b", "active"): (
        "217.8 M (-4.5 %): D_v = d = 768 as the code asserts (Table 10 prints 384, which gives a 0.67 B "
        "total); the backbone next to the 4 Memory+ layers is not published"
    ),
}


@pytest.mark.parametrize(
    ("name", "which"),
    [
        pytest.param(
            name,
            which,
            marks=[pytest.mark.xfail(strict=True, reason=TABLE10_GAPS[(name, which)])]
            if (name, which) in TABLE10_GAPS
            else [],
        )
        for name in TABLE10
        for which in ("active", "total")
    ],
)
def test_ultramemv2_table10(name: str, which: str) -> None:
    active, total = table10_counts(name)
    published_active, published_total = TABLE10[name]
    if which == "active":
        assert rel(active, published_active) < 0.03
    else:
        assert rel(total, published_total) < 0.03


def test_table10_convention_on_olmoe_rows() -> None:
    """The conventions of table10_counts reproduce the OLMoE rows too (hand formulas, d_e 384 / 1024)."""
    active, total = olmoe_counts(768, 20, 384, 50304 * 768.0)
    assert rel(active, 227e6) < 0.03 and rel(total, 1.18e9) < 0.03
    active, total = olmoe_counts(2048, 16, 1024, 0.0)
    assert rel(active, 1070e6) < 0.03 and rel(total, 6.71e9) < 0.03


def test_table10_equal_activated_values() -> None:
    """Table 10: "all three memory-layer models activate the same amount of value embeddings":
    4·160·384 = 20·32·(192 + 192) = 245,760 per token [Q, D]. Our UltraMem and UltraMemV2 presets do;
    Memory+ (D_v = 768 per the code) activates twice that, the disagreement recorded in its preset."""
    per_token = {}
    for name in ("ultramem-227m-1.2b", "ultramemv2-227m-1.2b", "memory-plus-227m-1.2b"):
        model = load_model(name)
        rows = 0.0
        for block in model.expanded_blocks():
            for layer in block.ffn:
                if layer.kind in COST:
                    c = COST[layer.kind](layer, model, decode([1]))
                    # whole rows: UltraMemV2's D_v + D_p = 384 counts as its value embedding
                    rows += float(c.items_requested[0]) * c.item_bytes / 2
        per_token[name] = rows
    assert per_token["ultramem-227m-1.2b"] == per_token["ultramemv2-227m-1.2b"] == 245_760
    assert per_token["memory-plus-227m-1.2b"] == 2 * 245_760


def test_ultramemv2_readme_share_ratio_caveat() -> None:
    """Section 9.4 caveat: with the README's share_ratio 0.5 the code gives n_l = 1138 keys per side and
    ≈ 236 M active (≈ 12 M more key parameters); Table 10's 225 M matches knum = 360, the preset's choice."""
    model = load_model("ultramemv2-227m-1.2b")
    layer = model.blocks[0].ffn[1]
    ring = layer.model_copy(update={"share_ratio": 0.5})
    assert ring.keys_per_side(20) == 1138
    extra = (
        ultramemv2.cost(ring, model, decode([1])).params - ultramemv2.cost(layer, model, decode([1])).params
    )
    assert extra * 20 / 1e6 == pytest.approx(12.0, abs=0.3)
    active, _ = table10_counts("ultramemv2-227m-1.2b")
    assert (active + extra * 20) / 1e6 == pytest.approx(236, abs=1)


# ------------------------------------------------------------------------ UltraMemV2 Table 4 (section 15.4)

TABLE4_DK = [344, 432, 524, 610, 730, 796, 880]
TABLE4_MCP = [12.0, 14.5, 17.0, 19.5, 23.0, 25.0, 27.5]  # % [Q: UltraMemV2 Table 4]


def test_ultramemv2_table4_memory_compute_proportion() -> None:
    """MCP column of Table 4 within 1 point, with one fitted constant total per-layer FLOPs.

    Model: hidden 1152, 24 memory layers, knum 964, one head, TopM 94 (m_rc = 94 < 128), D_v = D_p = 144,
    r = 2, c = 2, code-level FLOPs of section 9.3 (per-rank queries 4r·d·D_k, keys 4r·n·D_k, grid
    2c·m_rc²·(r² + r), W_pre, pre-value dots, pooling, W_o). MCP = memory FLOPs / total block FLOPs.

    Why one constant total: the ablation is iso-compute. As D_k grows the memory layer's query and key
    FLOPs grow and the FFN is shrunk by the same amount, so the per-layer total stays fixed and the
    memory share is memory FLOPs / C with one C for all seven rows. C is fitted by least squares of
    M_i·x ≈ MCP_i over x = 1/C; it lands at ≈ 57.5 MFLOPs/token/layer as section 15.4 reports, and the
    residuals are ≤ 0.3 points (predicted 11.7, 14.3, 17.0, 19.6, 23.1, 25.0, 27.5).
    """
    memory_flops = []
    for dk in TABLE4_DK:
        layer = UltraMemV2Config(knum=964, key_dim=dk, top_m=94, value_dim=144, pre_value_dim=144)
        model = ModelConfig(
            name="umv2-500m-6b",
            d_model=1152,
            vocab_size=1,
            embeddings=False,
            blocks=[
                BlockConfig(
                    repeat=24,
                    attention=AttentionConfig(kind="mha", n_heads=8, head_dim=144),
                    ffn=[DenseFFNConfig(d_ff=4096), layer],
                    parallel_ffn=True,
                )
            ],
        )
        memory_flops.append(float(ultramemv2.cost(layer, model, decode([1])).flops[0]))
    m = np.asarray(memory_flops)
    mcp = np.asarray(TABLE4_MCP) / 100
    inverse_total = float(m @ mcp / (m @ m))  # least squares of m·x ≈ mcp
    total = 1 / inverse_total
    predicted = 100 * m / total
    assert total / 1e6 == pytest.approx(57.5, rel=0.01)  # fitted constant, MFLOPs/token/layer
    assert np.abs(predicted - np.asarray(TABLE4_MCP)).max() < 1.0
    assert np.abs(predicted - np.asarray(TABLE4_MCP)).max() < 0.3  # what section 15.4 reports
    assert (np.diff(predicted) > 0).all()


# ------------------------------------------------------------------------ worked examples of the reference


def test_section11_ultramemv2_layer_decode_weight_traffic() -> None:
    """Section 11: one UltraMemV2-1B/7B block, bf16 weights: attention 4d² + SwiGLU FFN 3·d·6980 (hand)
    + the memory layer's weight_bytes_ideal, within 1 %."""
    published = {1: 134.9, 4: 135.8, 16: 139.3, 64: 153.2, 256: 205.8, 1024: 375.6, 4096: 679.0}  # MB
    rows = {1: 128, 4: 512, 16: 2041, 64: 8075, 256: 30922, 1024: 104589, 4096: 236289}
    model = load_model("ultramemv2-1b-7b")
    block = model.blocks[0]
    ffn, memory = block.ffn
    d = model.d_model
    attention_and_ffn = (4 * d * d + 3 * d * ffn.d_ff) * 2
    c = ultramemv2.cost(memory, model, decode(list(published)))
    for i, batch in enumerate(published):
        assert rel((attention_and_ffn + c.weight_bytes_ideal[i]) / 1e6, published[batch]) < 0.01
        assert c.distinct_items[i] == pytest.approx(rows[batch], rel=0.001)
    # per-layer FLOPs (section 11 / 15.5): 135.3 M/token, memory 16.0 M (MCP 11.8 %); OLMoE 134.5 M
    layer_flops = 2 * (4 * d * d + 3 * d * ffn.d_ff) + float(c.flops[0])
    assert layer_flops / 1e6 == pytest.approx(135.3, abs=0.1)
    assert c.flops[0] / 1e6 == pytest.approx(16.0, abs=0.1)
    olmoe = 2 * (4 * d * d + 64 * d + 8 * 3 * d * 1024)
    assert olmoe / 1e6 == pytest.approx(134.5, abs=0.1)


def test_section11_prefill_bounds_and_ceiling() -> None:
    """Sections 2.7, 11, 12.6: requests cost 295 KB/token/layer; at T = 8192 that is 2.4 GB of requested
    rows against a 642 MB per-layer table; as T grows the layer's bytes approach 776 MB, below OLMoE's
    saturated 839 MB."""
    model = load_model("ultramemv2-1b-7b")
    ffn, memory = model.blocks[0].ffn
    d = model.d_model
    c = ultramemv2.cost(memory, model, decode([1, 8192, 10_000_000]))
    assert c.item_bytes * memory.top_m == 294_912
    dense_bytes = c.weight_bytes_naive[0] - c.item_bytes * memory.top_m
    assert (c.weight_bytes_naive[1] - dense_bytes) / 1e9 == pytest.approx(2.416, abs=0.001)
    assert memory.window_rows(16) * c.item_bytes / 1e6 == pytest.approx(642.3, abs=0.1)
    ceiling = (4 * d * d + 3 * d * ffn.d_ff) * 2 + c.weight_bytes_ideal[2]
    assert ceiling / 1e6 == pytest.approx(776.9, abs=0.5)
    assert ceiling / 1e6 < 839.0


def test_section6_2_memory_plus_worked_example() -> None:
    """Section 6.2, d 4096, H 4, m 32, d_k 512, n 1024 (the pk_7b memory layer): dense part 44.0 M params,
    89 MFLOPs/token, 1.0 MB of values per token; weight traffic 89/105/155/352/1,098 MB at
    T = 1/16/64/256/1,024, within 2 %."""
    model = load_model("memory-plus-7b")
    layer = next(f for b in model.blocks for f in b.ffn if f.kind == "memory_plus")
    published = {1: 89, 16: 105, 64: 155, 256: 352, 1024: 1098}
    c = memory_plus.cost(layer, model, decode(list(published)))
    assert c.params / 1e6 == pytest.approx(44.0, abs=0.1)
    assert c.flops[0] / 1e6 == pytest.approx(89, abs=0.5)
    assert c.item_bytes * layer.heads * layer.top_k / 2**20 == pytest.approx(1.0)
    for i, batch in enumerate(published):
        assert rel(c.weight_bytes_ideal[i] / 1e6, published[batch]) < 0.02
    # the three layers share one 1M x 4096 table: 4.29 B value params, counted once
    assert c.table_params / 1e9 == pytest.approx(4.29, abs=0.01)
    assert model.memory_layer_count("memory") == 3


def test_section2_9_distinct_rows() -> None:
    """Section 2.9 worked numbers (uniform routing): Memory+ (N = 1,048,576, H·m = 128), PKM default
    (N = 262,144, 128 per token), UltraMemV2-1B/7B (278,784 rows, m = 128)."""
    mp = load_model("memory-plus-7b")
    mp_layer = next(f for b in mp.blocks for f in b.ffn if f.kind == "memory_plus")
    rows = memory_plus.cost(mp_layer, mp, decode([64, 1024, 16384])).distinct_items
    np.testing.assert_allclose(rows, [8161, 123218, 906684], rtol=2e-4)
    xlm = load_model("pkm-xlm")
    pkm_layer = next(f for b in xlm.blocks for f in b.ffn if f.kind == "pkm")
    assert pkm.cost(pkm_layer, xlm, decode([1024])).distinct_items[0] == pytest.approx(103165, rel=2e-4)
    v2 = load_model("ultramemv2-1b-7b")
    rows = ultramemv2.cost(v2.blocks[0].ffn[1], v2, decode([64, 1024])).distinct_items
    np.testing.assert_allclose(rows, [8075, 104589], rtol=2e-4)


def test_section9_4_peer_ablation_equivalence() -> None:
    """Section 9.4: the value-embedding baseline (789 keys, D_v 288, TopM 48) and the PEER variant
    (558 keys, D_p = D_v = 288, TopM 24) gather the same 48·288 = 24·(288 + 288) = 13,824 elements per
    token per layer, and pool with the same FLOPs ("calculation and memory access completely consistent");
    their tables are also the same size (789²·288 ≈ 558²·576 ≈ 179.3 M)."""
    d = 1024
    values = UltraMemConfig(knum=789, key_dim=256, heads=1, top_m=48, value_dim=288, expansion=1)
    peer_like = UltraMemV2Config(
        knum=558, key_dim=256, top_m=24, value_dim=288, pre_value_dim=288, shared_table=None
    )
    model = ModelConfig(
        name="umv2-430m-5b",
        d_model=d,
        vocab_size=1,
        embeddings=False,
        blocks=[BlockConfig(attention=AttentionConfig(kind="mha", n_heads=8, head_dim=128), ffn=[values])],
    )
    pts = decode([1, 64, 1024])
    a = ultramem.cost(values, model, pts)
    b = ultramemv2.cost(peer_like, model, pts)
    assert 48 * 288 == 24 * (288 + 288) == 13_824
    np.testing.assert_allclose(a.items_requested * a.item_bytes, b.items_requested * b.item_bytes)
    np.testing.assert_allclose(a.items_requested * a.item_bytes / pts.tokens, 13_824 * 2)
    assert 2 * 48 * 288 == 2 * 24 * 288 + 2 * 24 * 288  # pooling vs pre-value dots + pooling
    assert rel(789**2 * 288, 558**2 * 576) < 0.001

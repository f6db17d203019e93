"""Memory-layer cost functions (PKM, PEER, Memory+, UltraMem, UltraMemV2): hand formulas and properties.

Each family is checked against the closed forms of shared/docs/cost-reference.md written out by hand here
(sections 5.2, 6.2, 7.2, 8.3, 9.3), then against properties that must hold for every config and sweep:
bytes never fall as the batch grows, distinct rows never exceed min(rows, T·H·m), ideal never exceeds naive.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from simulator.config import (
    AttentionConfig,
    BlockConfig,
    DenseFFNConfig,
    MemoryPlusConfig,
    ModelConfig,
    PEERConfig,
    PKMConfig,
    UltraMemConfig,
    UltraMemV2Config,
    Workload,
)
from simulator.costs import LayerCost, Points
from simulator.layers import memory_plus, peer, pkm, ultramem, ultramemv2
from simulator.loading import load_model
from simulator.routing import RoutingModel

MemoryConfig = PKMConfig | PEERConfig | MemoryPlusConfig | UltraMemConfig | UltraMemV2Config
COST = {
    "pkm": pkm.cost,
    "peer": peer.cost,
    "memory_plus": memory_plus.cost,
    "ultramem": ultramem.cost,
    "ultramemv2": ultramemv2.cost,
}


def model_with(layer: MemoryConfig, d: int, blocks: int = 1) -> ModelConfig:
    """A bare stack of `blocks` identical blocks: attention, a dense FFN and `layer`."""
    return ModelConfig(
        name="test",
        d_model=d,
        vocab_size=1,
        embeddings=False,
        blocks=[
            BlockConfig(
                repeat=blocks,
                attention=AttentionConfig(kind="mha", n_heads=1, head_dim=d),
                ffn=[DenseFFNConfig(d_ff=4 * d), layer],
            )
        ],
    )


def points(
    batch: list[int],
    *,
    tp: int = 1,
    phase: str = "decode",
    context: int = 1,
    routing: RoutingModel | None = None,
    dtype: str = "bf16",
) -> Points:
    workload = Workload(phase=phase, batch=batch, context=[context], tp=tp, weight_dtype=dtype)
    return Points.grid(workload, routing or RoutingModel(kind="uniform"))


def run(layer: MemoryConfig, model: ModelConfig, pts: Points) -> LayerCost:
    return COST[layer.kind](layer, model, pts)


# ------------------------------------------------------------------------------ hand formulas per family


def test_pkm_matches_section_5_2() -> None:
    d, n, h, m, dk = 1024, 512, 4, 32, 256
    layer = PKMConfig(n_keys=n, heads=h, top_k=m, key_dim=dk)
    c = run(layer, model_with(layer, d), points([1, 8]))
    dense = d * h * dk + h * dk + h * n * dk  # query (+bias) and keys
    assert c.params == dense + n * n * d  # private table: values counted in params
    assert c.table_id is None and c.table_params == 0
    assert c.active_params == dense + h * m * d
    assert c.flops[0] == 2 * d * h * dk + 2 * h * n * dk + 2 * h * m * d
    assert c.item_bytes == 2 * d
    expected_rows = n * n * (1 - (1 - m / (n * n)) ** (h * np.array([1, 8])))
    np.testing.assert_allclose(c.distinct_items, expected_rows, rtol=1e-12)
    np.testing.assert_allclose(c.weight_bytes_ideal, 2 * (dense + expected_rows * d), rtol=1e-12)
    np.testing.assert_allclose(c.weight_bytes_naive, 2 * (dense + np.array([1, 8]) * h * m * d))
    np.testing.assert_array_equal(c.items_requested, [h * m, 8 * h * m])
    # materialised per token (section 5.2): query, scores 2n, m² candidates, top-m scores (bf16) and
    # int32 indices, each written and read; plus the layer's input and output
    per_token = 2 * (2 * (h * dk + h * 2 * n + h * m * m + h * m) + 4 * h * m) + 2 * 2 * d
    np.testing.assert_allclose(c.act_bytes_naive, per_token * np.array([1, 8]))
    np.testing.assert_allclose(c.act_bytes_ideal, 2 * 2 * d * np.array([1, 8]))


def test_pkm_shared_table_and_batchnorm() -> None:
    layer = PKMConfig(n_keys=64, heads=2, top_k=8, key_dim=32, shared_table="pk", query_batchnorm=True)
    model = model_with(layer, 128, blocks=3)
    c = run(layer, model, points([1]))
    dense = 128 * 2 * 32 + 2 * 32 + 2 * 64 * 32 + 2 * 2 * 32  # + BN weight and bias
    assert c.params == dense
    assert c.table_id == "pk" and c.table_params == 64 * 64 * 128
    assert model.memory_layer_count("pk") == 3


def test_peer_matches_section_7_2() -> None:
    d, n, h, k, dq = 256, 128, 8, 16, 32
    layer = PEERConfig(n_keys=n, heads=h, top_k=k, query_dim=dq)
    c = run(layer, model_with(layer, d), points([1, 3]))
    dense = d * h * 2 * dq + h * 2 * n * dq
    assert c.params == dense + n * n * 2 * d
    assert c.active_params == dense + h * k * 2 * d
    assert c.flops[0] == 4 * d * h * dq + 4 * h * n * dq + 4 * h * k * d
    assert c.item_bytes == 2 * 2 * d  # (u_i, v_i) in bf16
    rows = n * n * (1 - (1 - k / (n * n)) ** (h * np.array([1, 3])))
    np.testing.assert_allclose(c.weight_bytes_ideal, 2 * (dense + rows * 2 * d), rtol=1e-12)


def test_memory_plus_matches_section_6_2() -> None:
    d, n, h, m, dk = 512, 256, 4, 32, 128
    layer = MemoryPlusConfig(n_keys=n, heads=h, top_k=m, key_dim=dk)
    c = run(layer, model_with(layer, d, blocks=2), points([1]))
    dense = d * h * dk + h * dk + h * n * dk + 2 * (d * d + d)
    assert c.params == dense  # the default shared table goes to table_params
    assert c.table_id == "memory" and c.table_params == n * n * d
    assert c.active_params == dense + h * m * d
    assert c.flops[0] == 2 * d * h * dk + 2 * h * n * dk + 2 * h * m * d + 4 * d * d


def test_memory_plus_without_swilu_keeps_only_the_value_projection() -> None:
    # lingua: W_o exists whenever mem_v_dim is given or swilu is on; W_1 only with swilu
    d = 256
    plain = MemoryPlusConfig(n_keys=64, heads=1, top_k=8, key_dim=64, gated=False)
    narrow = MemoryPlusConfig(n_keys=64, heads=1, top_k=8, key_dim=64, gated=False, value_dim=128)
    base = d * 64 + 64 + 64 * 64
    assert run(plain, model_with(plain, d), points([1])).params == base
    assert run(narrow, model_with(narrow, d), points([1])).params == base + 128 * d + d


def test_ultramem_matches_section_8_3() -> None:
    d, knum, dk, r, c_, h, m, dv, e = 1024, 256, 128, 2, 2, 2, 40, 512, 4
    layer = UltraMemConfig(
        knum=knum, key_dim=dk, rank=r, cores=c_, heads=h, top_m=m, value_dim=dv, expansion=e, skip_span=3
    )
    c = run(layer, model_with(layer, d), points([1, 16]))
    side = int(math.sqrt(e)) * knum
    dense = 2 * d * dk + h * 2 * side * dk * r + c_ * h * r * r + e * dv * d
    assert c.params == dense + knum * knum * dv
    assert c.active_params == dense + h * m * dv
    grid = h * m * m * c_ * (2 * r * r + 2 * r)
    assert c.flops[0] == 4 * d * dk + 4 * h * side * dk * r + grid + 2 * h * m * dv + 2 * e * dv * d
    rows = knum**2 * (1 - (1 - m / knum**2) ** (h * np.array([1, 16])))
    np.testing.assert_allclose(c.distinct_items, rows, rtol=1e-12)
    assert c.item_bytes == 2 * dv


def test_ultramem_single_head_and_row_col_cap() -> None:
    d = 128
    one = UltraMemConfig(knum=32, key_dim=16, heads=1, top_m=8, value_dim=32, expansion=1)
    capped = UltraMemConfig(knum=32, key_dim=16, heads=1, top_m=8, row_col_top=4, value_dim=32, expansion=1)
    c1 = run(one, model_with(one, d), points([1]))
    c2 = run(capped, model_with(capped, d), points([1]))
    # one query for one head; the grid shrinks from 8² to 4² cells per core
    assert c1.params == 2 * d * 16 + 2 * 32 * 16 * 2 + 2 * 4 + 32 * d + 32 * 32 * 32
    assert c1.flops[0] - c2.flops[0] == (8 * 8 - 4 * 4) * 2 * (2 * 4 + 2 * 2)


def test_ultramemv2_matches_section_9_3() -> None:
    d, knum, dk, m, dv, dp, r, c_ = 2048, 528, 512, 128, 768, 384, 2, 2
    layer = UltraMemV2Config(knum=knum, key_dim=dk, top_m=m, value_dim=dv, pre_value_dim=dp)
    model = model_with(layer, d, blocks=16)
    c = run(layer, model, points([1]))
    dense = 2 * r * d * dk + 2 * knum * dk * r + c_ * r * r + d * dp + dv * d
    assert c.params == dense
    assert c.table_id == "values" and c.table_params == knum**2 * 16 * (dv + dp)
    assert c.active_params == dense + m * (dv + dp)
    mrc = 128
    flops = (
        (4 * r * d * dk + 4 * r * knum * dk + 2 * c_ * mrc**2 * (r * r + r) + 2 * d * dp + 2 * m * dp)
        + 2 * m * dv
        + 2 * dv * d
    )
    assert c.flops[0] == flops
    # cost-reference 12.2: 15 MB of memory-dense weights vs 0.3 MB of rows per token per layer
    assert 2 * dense / 1e6 == pytest.approx(15.3, abs=0.1)
    assert c.weight_bytes_ideal[0] - 2 * dense == pytest.approx(294_912, rel=1e-9)
    # section 9.3: the Triton kernel writes (c + 1)·m_rc² grid values, 96 KB/token/layer in bf16;
    # we count it written and read
    grid_bytes = (c_ + 1) * mrc**2 * 2
    assert grid_bytes == 96 * 1024
    assert c.act_bytes_naive[0] > 2 * grid_bytes + 2 * 2 * d


def test_ultramemv2_ring_window_and_key_growth() -> None:
    """Section 9.2/15.7: ring sharing widens the keys to n_l = floor(sqrt(s·L_m)·knum) and the window to
    n_l² rows; the table stays knum²·L_m; key-scoring FLOPs grow by sqrt(g)."""
    d, knum, dk = 1152, 964, 524
    base = UltraMemV2Config(knum=knum, key_dim=dk, top_m=94, value_dim=144, pre_value_dim=144)
    ring = base.model_copy(update={"share_ratio": 16 / 24})  # S16-Ring over 24 memory layers
    c0 = run(base, model_with(base, d, blocks=24), points([1]))
    c1 = run(ring, model_with(ring, d, blocks=24), points([1]))
    assert ring.keys_per_side(24) == 3856  # 4 x 964, the paper's S16 key number
    assert c1.table_params == c0.table_params == knum**2 * 24 * 288
    assert c1.flops[0] - c0.flops[0] == 4 * 2 * (3856 - knum) * dk
    # a wider window saturates later: more distinct rows for the same requests, never above it
    big = points([100_000])
    wide = run(ring, model_with(ring, d, blocks=24), big).distinct_items[0]
    narrow = run(base, model_with(base, d, blocks=24), big).distinct_items[0]
    assert narrow < knum**2 < wide < 3856**2


def test_private_ultramemv2_table_goes_to_params() -> None:
    layer = UltraMemV2Config(
        knum=30, key_dim=16, top_m=8, value_dim=32, pre_value_dim=16, shared_table=None, share_ratio=0.5
    )
    c = run(layer, model_with(layer, 64, blocks=4), points([1]))
    assert c.table_id is None and c.table_params == 0
    assert c.params > 30 * 30 * 48  # the private table (no ring: window = knum²) is in params
    assert c.distinct_items[0] == pytest.approx(8.0)


# ------------------------------------------------------------------------------ sharding, dtypes, routing


@pytest.mark.parametrize("kind", sorted(COST))
def test_memory_parallel_sharding(kind: str) -> None:
    """Sections 2.5/6.2: value-dim sharding divides bytes per device by P; every device touches every
    selected row (same distinct count); the index/score all-gather and output reshard appear at P > 1."""
    layer = small_layer(kind)
    model = model_with(layer, 128, blocks=2)
    one, four = run(layer, model, points([1, 64])), run(layer, model, points([1, 64], tp=4))
    np.testing.assert_allclose(four.weight_bytes_ideal, one.weight_bytes_ideal / 4)
    np.testing.assert_allclose(four.weight_bytes_naive, one.weight_bytes_naive / 4)
    np.testing.assert_allclose(four.flops, one.flops / 4)
    np.testing.assert_array_equal(four.distinct_items, one.distinct_items)
    np.testing.assert_array_equal(one.comm_bytes, 0.0)
    assert (four.comm_bytes > 0).all()
    assert four.comm_bytes[1] == pytest.approx(64 * four.comm_bytes[0])  # linear in tokens


def test_memory_plus_comm_by_hand() -> None:
    # Section 6.2: T·H·m·(4 + b_a)·(P-1)/P for indices+scores and T·d·b_a·(P-1)/P for the reshard
    layer = MemoryPlusConfig(n_keys=64, heads=4, top_k=32, key_dim=64)
    c = run(layer, model_with(layer, 256), points([10], tp=8))
    assert c.comm_bytes[0] == pytest.approx(10 * 4 * 32 * 6 * 7 / 8 + 10 * 256 * 2 * 7 / 8)


def test_fp8_weights_halve_row_bytes() -> None:
    layer = small_layer("ultramemv2")
    model = model_with(layer, 128)
    bf16, fp8 = run(layer, model, points([4])), run(layer, model, points([4], dtype="fp8"))
    assert fp8.item_bytes == bf16.item_bytes / 2
    np.testing.assert_allclose(fp8.weight_bytes_ideal, bf16.weight_bytes_ideal / 2)


def test_zipf_routing_lowers_distinct_rows() -> None:
    """Section 2.3: skew lowers E[U] relative to uniform at the same m (concavity)."""
    layer = MemoryPlusConfig(n_keys=128, heads=2, top_k=16, key_dim=64)
    model = model_with(layer, 256)
    uniform = run(layer, model, points([64, 512]))
    zipf = run(layer, model, points([64, 512], routing=RoutingModel(kind="zipf", s=1.0)))
    assert (zipf.distinct_items < uniform.distinct_items).all()
    assert (zipf.weight_bytes_ideal < uniform.weight_bytes_ideal).all()
    np.testing.assert_array_equal(zipf.weight_bytes_naive, uniform.weight_bytes_naive)


def test_prefill_rows_are_capped_by_the_window() -> None:
    """Section 2.7: a long prefill requests more row bytes than the window holds; ideal stays below the
    whole window while naive (one read per request) grows linearly."""
    layer = UltraMemV2Config(knum=64, key_dim=32, top_m=32, value_dim=48, pre_value_dim=16)
    model = model_with(layer, 128, blocks=2)
    c = run(layer, model, points([1, 4], phase="prefill", context=8192))
    window_bytes = 64**2 * 64 * 2
    dense_bytes = c.weight_bytes_ideal[0] - c.distinct_items[0] * c.item_bytes
    assert (c.weight_bytes_ideal - dense_bytes <= window_bytes * (1 + 1e-12)).all()
    assert c.weight_bytes_naive[1] - dense_bytes == pytest.approx(4 * 8192 * 32 * 64 * 2)


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (UltraMemV2Config, {"knum": 64, "key_dim": 32, "top_m": 65, "value_dim": 8, "pre_value_dim": 8}),
        (UltraMemConfig, {"knum": 16, "key_dim": 8, "top_m": 17, "value_dim": 8}),
        (PKMConfig, {"n_keys": 16, "heads": 1, "top_k": 17, "key_dim": 8}),
        (PEERConfig, {"n_keys": 16, "heads": 1, "top_k": 17, "query_dim": 8}),
        (MemoryPlusConfig, {"n_keys": 16, "heads": 1, "top_k": 17, "key_dim": 8}),
    ],
)
def test_top_m_above_keys_per_side_is_rejected(cls: type, kwargs: dict) -> None:
    with pytest.raises(ValidationError):
        cls(**kwargs)


# ------------------------------------------------------------------------------ presets

MEMORY_PRESETS = [
    "ultramemv2-227m-1.2b",
    "ultramemv2-1b-7b",
    "ultramem-227m-1.2b",
    "memory-plus-227m-1.2b",
    "ultramem-1.6b-x12",
    "moe-1.6b-2in34",
    "dense-1.6b",
    "memory-plus-7b",
    "peer-1b",
    "pkm-xlm",
]


@pytest.mark.parametrize("name", MEMORY_PRESETS)
def test_memory_presets_load_with_provenance(name: str) -> None:
    """Every preset loads, says where it came from, and every provenance path names a real field."""
    model = load_model(name)
    assert model.name == name and model.description and model.sources
    assert model.provenance and all(src.source for src in model.provenance.values())
    for path in model.provenance:
        node: object = model
        for part in path.split("."):
            node = node[int(part)] if part.isdigit() else getattr(node, part)  # type: ignore[index]
    pts = points([1, 256], tp=2)
    for block in model.expanded_blocks():
        for layer in block.ffn:
            if layer.kind in COST:
                c = COST[layer.kind](layer, model, pts)
                assert np.isfinite(c.weight_bytes_ideal).all() and c.active_params > 0


# ------------------------------------------------------------------------------ properties


def small_layer(kind: str) -> MemoryConfig:
    return {
        "pkm": PKMConfig(n_keys=64, heads=2, top_k=8, key_dim=32),
        "peer": PEERConfig(n_keys=64, heads=4, top_k=8, query_dim=16),
        "memory_plus": MemoryPlusConfig(n_keys=64, heads=2, top_k=8, key_dim=32),
        "ultramem": UltraMemConfig(knum=32, key_dim=16, top_m=8, value_dim=32),
        "ultramemv2": UltraMemV2Config(knum=48, key_dim=16, top_m=12, value_dim=32, pre_value_dim=16),
    }[kind]


@st.composite
def memory_layers(draw: st.DrawFn) -> MemoryConfig:
    kind = draw(st.sampled_from(sorted(COST)))
    n = draw(st.integers(2, 96))
    m = draw(st.integers(1, min(n, 24)))
    heads = draw(st.integers(1, 4))
    shared = draw(st.sampled_from([None, "t"]))
    if kind == "pkm":
        return PKMConfig(
            n_keys=n, heads=heads, top_k=m, key_dim=2 * draw(st.integers(1, 32)), shared_table=shared
        )
    if kind == "peer":
        return PEERConfig(
            n_keys=n, heads=heads, top_k=m, query_dim=draw(st.integers(1, 32)), shared_table=shared
        )
    if kind == "memory_plus":
        return MemoryPlusConfig(
            n_keys=n,
            heads=heads,
            top_k=m,
            key_dim=draw(st.integers(1, 64)),
            value_dim=draw(st.sampled_from([None, 16, 96])),
            gated=draw(st.booleans()),
            shared_table=shared,
        )
    if kind == "ultramem":
        return UltraMemConfig(
            knum=n,
            key_dim=draw(st.integers(1, 32)),
            rank=draw(st.integers(1, 3)),
            cores=draw(st.integers(1, 3)),
            heads=min(heads, 2),
            top_m=m,
            row_col_top=draw(st.sampled_from([None, 1, m])),
            value_dim=draw(st.integers(1, 64)),
            expansion=draw(st.sampled_from([1, 4, 9])),
        )
    return UltraMemV2Config(
        knum=n,
        key_dim=draw(st.integers(1, 32)),
        heads=heads,
        top_m=m,
        row_col_top=draw(st.sampled_from([None, 1, m])),
        value_dim=draw(st.integers(1, 64)),
        pre_value_dim=draw(st.integers(1, 64)),
        share_ratio=draw(st.sampled_from([None, 0.25, 1.0])),
        shared_table=draw(st.sampled_from([None, "values"])),
    )


@settings(max_examples=60, deadline=None)
@given(
    layer=memory_layers(),
    d=st.integers(8, 256),
    blocks=st.integers(1, 6),
    batch=st.lists(st.integers(1, 50_000), min_size=1, max_size=8, unique=True),
    tp=st.sampled_from([1, 2, 8]),
    phase=st.sampled_from(["decode", "prefill"]),
)
def test_bytes_rows_and_levels_properties(
    layer: MemoryConfig, d: int, blocks: int, batch: list[int], tp: int, phase: str
) -> None:
    if isinstance(layer, UltraMemV2Config) and layer.shared_table is not None:
        ring = layer.window_rows(blocks)  # every block's memory layer shares the table
        if ring < layer.top_m:  # a window too small for the rows a token picks is refused up front
            with pytest.raises(ValidationError, match=f"ring window of {ring} rows"):
                model_with(layer, d, blocks)
            return
    model = model_with(layer, d, blocks)
    pts = points(sorted(batch), tp=tp, phase=phase, context=3)
    c = run(layer, model, pts)
    tokens = pts.tokens
    window = (
        layer.keys_per_side(model.memory_layer_count(layer.shared_table)) ** 2
        if (isinstance(layer, UltraMemV2Config) and layer.shared_table is not None)
        else layer.knum**2
        if isinstance(layer, UltraMemV2Config | UltraMemConfig)
        else layer.rows
    )
    heads, m = layer.heads, getattr(layer, "top_m", None) or layer.top_k
    # distinct rows: never negative, never above min(rows, T·H·m)
    bound = np.minimum(float(window), tokens * heads * m)
    assert (c.distinct_items >= 0).all()
    assert (c.distinct_items <= bound * (1 + 1e-12)).all()
    np.testing.assert_array_equal(c.items_requested, tokens * heads * m)
    # bytes never fall as the batch grows (points are sorted by tokens)
    for series in (
        c.weight_bytes_ideal,
        c.weight_bytes_naive,
        c.weight_bytes_ideal + c.act_bytes_ideal,
        c.weight_bytes_naive + c.act_bytes_naive,
        c.flops,
    ):
        assert (np.diff(series) >= -1e-9 * series[1:]).all()
    # ideal never exceeds naive
    assert (c.weight_bytes_ideal <= c.weight_bytes_naive * (1 + 1e-12)).all()
    assert (c.act_bytes_ideal <= c.act_bytes_naive).all()
    # every field is finite and shaped like the points; comm only under memory parallelism
    for array in (c.flops, c.act_bytes_naive, c.comm_bytes, c.kv_read_bytes, c.kv_write_bytes):
        assert array.shape == tokens.shape and np.isfinite(array).all()
    assert (c.comm_bytes > 0).all() if tp > 1 else (c.comm_bytes == 0).all()
    assert (c.kv_read_bytes == 0).all() and (c.kv_write_bytes == 0).all()
    if heads * m <= window:  # per-token rows are counted as H·m requests, as sections 5.2-9.3 do
        assert 0 < c.active_params <= c.params + c.table_params


def test_a_ring_window_smaller_than_top_m_is_refused() -> None:
    # knum 2, share_ratio 0.25, one layer: n_l = floor(sqrt(0.25 x 1) x 2) = 1, a window of 1 row for 2 picks
    layer = UltraMemV2Config(knum=2, key_dim=1, top_m=2, value_dim=1, pre_value_dim=1, share_ratio=0.25)
    with pytest.raises(ValidationError, match=r"ring window of 1 rows .* smaller than top_m=2"):
        model_with(layer, 8, blocks=1)
    # four layers share it: n_l = floor(sqrt(0.25 x 4) x 2) = 2, 4 rows, enough
    assert model_with(layer, 8, blocks=4).n_layers == 4

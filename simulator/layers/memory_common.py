"""What the five memory-layer families (PKM, PEER, Memory+, UltraMem, UltraMemV2) have in common.

Every memory layer is: a small dense part (query projection, sub-keys, projections) read once per step, a
product-key retrieval that picks m rows per head out of a big table, and a gather of those rows
(cost-reference sections 5-9). A family module describes one layer as a `MemoryShape` (per-token
counts), and `memory_cost` turns it into a `LayerCost` over the sweep points, so the byte model (sections
2.2, 2.5, 2.7) lives here once.

Conventions shared by all five (cost-reference section 1 and the LayerCost docstring):

* FLOPs are matmul FLOPs (2 per multiply-accumulate) plus the candidate-grid term where the section lists
  it (UltraMem/UltraMemV2); top-k selections, softmax and elementwise work are not counted.
* Tensor parallelism (`points.tp` = P) is memory-parallel ("vertical") sharding, sections 2.5 and 6.2: the
  table is split along the value dimension, so every device touches every selected row but reads 1/P of
  it; the dense parts and the FLOPs are split P ways too (tokens are split for the retrieval, whose
  indices and scores are then all-gathered; projections are split like any TP linear).
* act_bytes_ideal is the layer input and output (2·T·d·b_a). act_bytes_naive adds every intermediate the
  reference PyTorch code materialises, each written once and read once (the dense FFN's convention in
  section 3: d + 2·d_ff + d per token).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulator.config import ModelConfig
from simulator.costs import LayerCost, Points

INDEX_BYTES = 4.0  # int32 row indices (sections 5.2, 8.3, 9.3 count indices at 4 bytes)


@dataclass(frozen=True)
class Retrieval:
    """Parameters and per-token matmul FLOPs of the query/key part of one memory layer."""

    query_params: float  # query projection(s) with biases (query/key LayerNorm weights, O(D_k), left out)
    key_params: float  # sub-keys (and Tucker cores)
    flops: float  # per token: query projection + sub-key scores (+ candidate grid)
    query_elements: float  # per token: query values materialised
    score_elements: float  # per token: sub-key score values materialised (all heads, both sides)
    grid_elements: float  # per token: candidate-grid values materialised

    @property
    def intermediates(self) -> float:
        """Activation elements per token the retrieval writes and reads back (query, scores, grid)."""
        return self.query_elements + self.score_elements + self.grid_elements


def product_key_retrieval(
    d_model: int, heads: int, n_keys: int, key_dim: int, top_k: int, *, query_bias: bool
) -> Retrieval:
    """Plain product-key retrieval (PKM section 5.2, Memory+ 6.2, PEER 7.2 with key_dim = 2·d_q).

    Per head: a query of key_dim split in halves, scored against two sets of n sub-keys of key_dim/2, the
    top-m of each side combined into m² candidate sums. Params d·H·d_k (+H·d_k bias) and H·n·d_k;
    FLOPs 2·d·H·d_k + 2·H·n·d_k (the m² additions are not matmul work and are left out, section 5.2).
    """
    query = d_model * heads * key_dim + (heads * key_dim if query_bias else 0)
    keys = heads * n_keys * key_dim
    flops = 2.0 * d_model * heads * key_dim + 2.0 * heads * n_keys * key_dim
    return Retrieval(
        query_params=float(query),
        key_params=float(keys),
        flops=flops,
        query_elements=float(heads * key_dim),
        score_elements=float(heads * 2 * n_keys),
        grid_elements=float(heads * top_k * top_k),
    )


def tucker_retrieval(
    d_model: int,
    *,
    queries: int,
    query_width: int,
    heads: int,
    keys_per_side: int,
    key_dim: int,
    rank: int,
    cores: int,
    m_rc: int,
    grid_planes: int,
) -> Retrieval:
    """TDQKR retrieval of UltraMem (section 8.3) and UltraMemV2 (section 9.3).

    `queries` query vectors of `query_width` (row + column halves together) per token; per head, row and
    column keys of key_dim for each of `rank` Tucker components over `keys_per_side` keys (scored against
    the query: 2 FLOPs per key parameter); `cores` r×r cores per head scoring the m_rc × m_rc candidate
    grid at 2·(r² + r) FLOPs per core and cell: H·m_rc²·c·(2r² + 2r). `grid_planes` is how many m_rc² grids
    per head the reference code writes (c for UltraMem, c + 1 for the UltraMemV2 Triton kernel).
    """
    query = d_model * queries * query_width
    keys = heads * 2 * keys_per_side * key_dim * rank
    core_params = cores * heads * rank * rank
    grid_flops = heads * m_rc * m_rc * cores * (2.0 * rank * rank + 2.0 * rank)
    return Retrieval(
        query_params=float(query),
        key_params=float(keys + core_params),
        flops=2.0 * query + 2.0 * keys + grid_flops,
        query_elements=float(queries * query_width),
        score_elements=float(heads * 2 * keys_per_side * rank),
        grid_elements=float(heads * grid_planes * m_rc * m_rc),
    )


@dataclass(frozen=True)
class MemoryShape:
    """One memory layer reduced to per-token counts; `memory_cost` does the rest.

    dense_params: every layer-private weight that is read once per step whatever T is (query, keys,
    projections). table_rows/row_params: the table the layer reads; window_rows: the rows this layer
    can select from (UltraMemV2 ring windows; otherwise table_rows). heads × top_m rows per token.
    shared_table: the table's id when several layers share it (then its params go to table_params),
    None for a private table (then they are counted in params).
    """

    kind: str
    dense_params: float
    table_rows: int
    window_rows: int
    row_params: int
    heads: int
    top_m: int
    flops_per_token: float  # everything, rows included
    act_elements_per_token: float  # materialised intermediates (b_a each), excluding layer in/out
    index_elements_per_token: float  # materialised int32 indices
    pooled_dim: int  # width of the pooled vector a device holds 1/P of (resharded when P > 1)
    scores_per_request: int = 1  # scores all-gathered with each index (UltraMem: one per core)
    dot_reduce: bool = False  # rows feed a dot product along the sharded dim (PEER, UltraMemV2 pre-values)
    shared_table: str | None = None
    retrieval: Retrieval | None = None  # the query/key part, reported as the layer's routing cost
    notes: list[str] = field(default_factory=list)

    @property
    def table_params(self) -> float:
        return float(self.table_rows) * self.row_params

    @property
    def active_params(self) -> float:
        """Dense parts plus the rows one token reads (sections 5.2, 6.2, 7.2, 8.3, 9.3)."""
        return self.dense_params + self.heads * self.top_m * self.row_params


def memory_parallel_comm(shape: MemoryShape, points: Points) -> np.ndarray:
    """Bytes sent per device for memory-parallel (value-dim) sharding over P = tp devices (section 6.2).

    All-gather of each device's T/P tokens' indices and scores, T·H·m·(4 + s·b_a)·(P-1)/P; a reshard
    (all-gather) of the pooled T × D vector each device holds 1/P of, T·D·b_a·(P-1)/P; and, when rows enter
    a dot product along the sharded dim (PEER's u_i·x, UltraMemV2's ⟨x̃, P_i⟩), a ring all-reduce of the
    T·H·m partial dots, 2·(P-1)/P·T·H·m·b_a. Zero at P = 1.
    """
    p = points.tp
    if p == 1:
        return points.zeros()
    share = (p - 1) / p
    requests = points.tokens * shape.heads * shape.top_m
    comm = requests * (INDEX_BYTES + shape.scores_per_request * points.b_a) * share
    comm = comm + points.tokens * shape.pooled_dim * points.b_a * share
    if shape.dot_reduce:
        comm = comm + 2.0 * share * requests * points.b_a
    return comm


def memory_cost(shape: MemoryShape, model: ModelConfig, points: Points) -> LayerCost:
    """The LayerCost of a memory layer described by `shape` (byte model: sections 2.2, 2.5, 2.7).

    weight_bytes_ideal = dense + E[U]·row (every distinct row read once; E[U] from the workload's routing
    model over the layer's window, H heads of m rows); weight_bytes_naive = dense + T·H·m·row (fused
    lookup kernels read a row per request, section 2.7). Both are per device: / P under value-dim sharding.
    """
    tokens = points.tokens
    tp = points.tp
    distinct = points.routing.distinct(shape.window_rows, shape.top_m, shape.heads, tokens)
    requested = tokens * shape.heads * shape.top_m
    row_bytes = shape.row_params * points.b_w
    routing = (shape.retrieval.query_params + shape.retrieval.key_params) if shape.retrieval else 0.0
    dense_bytes = (shape.dense_params - routing) * points.b_w + routing * points.b_route
    act_io = 2.0 * tokens * model.d_model * points.b_a
    intermediates = shape.act_elements_per_token * points.b_a + shape.index_elements_per_token * INDEX_BYTES
    private_table = shape.shared_table is None
    return LayerCost(
        kind=shape.kind,
        params=shape.dense_params + (shape.table_params if private_table else 0.0),
        active_params=shape.active_params,
        flops=shape.flops_per_token * tokens / tp,
        weight_bytes_ideal=(dense_bytes + distinct * row_bytes) / tp,
        weight_bytes_naive=(dense_bytes + requested * row_bytes) / tp,
        act_bytes_ideal=act_io,
        # written once and read once; the retrieval is token-split and the pooled vectors dim-split over P
        act_bytes_naive=act_io + 2.0 * tokens * intermediates / tp,
        kv_read_bytes=points.zeros(),
        kv_write_bytes=points.zeros(),
        distinct_items=distinct,
        items_requested=requested,
        comm_bytes=memory_parallel_comm(shape, points),
        item_bytes=row_bytes,
        table_id=shape.shared_table,
        table_params=0.0 if private_table else shape.table_params,
        routing_flops=(shape.retrieval.flops * tokens / tp) if shape.retrieval else 0.0,
        routing_weight_bytes=routing * points.b_route / tp,
        routing_params=routing / tp,
        notes=list(shape.notes),
    )

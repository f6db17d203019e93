"""UltraMem (Huang et al., ICLR 2025, arXiv 2411.12364): cost-reference section 8.

TDQKR retrieval (rank-r Tucker keys, c scoring cores), implicit value expansion (E virtual copies of a
physical knum² × D_v table, √E·knum keys per side, pooled per virtual block into E × D_v, then one
E·D_v → d projection), and a skip-layer placement (output added `skip_span` blocks later). The skip span
moves where the output lands, not what the layer reads or computes, so it does not enter the counts.
"""

from __future__ import annotations

import math

from simulator.config import ModelConfig, UltraMemConfig
from simulator.costs import LayerCost, Points
from simulator.layers.memory_common import MemoryShape, memory_cost, tucker_retrieval


def shape(layer: UltraMemConfig, model: ModelConfig) -> MemoryShape:
    """Per-token counts of one UltraMem layer (sections 8.2, 8.3).

    Params: W_q 2·d·D_k per query (one query per pair of heads, so ⌈H/2⌉ queries), keys
    H·2·(√E·knum)·D_k·r, cores c·H·r², W_o E·D_v·d, physical values knum²·D_v (private to the layer).
    FLOPs/token: 4·d·D_k·⌈H/2⌉ + 4·H·√E·knum·D_k·r + H·m_rc²·c·(2r² + 2r) + 2·H·m·D_v + 2·E·D_v·d.
    Virtual rows map uniformly onto physical ones, so distinct rows are over knum² with H·m requests.
    Materialised: query, row/column scores H·2·√E·knum·r, c grids of m_rc², per-core scores and indices
    of the H·m picks, and the E·D_v pooled accumulator.
    """
    d = model.d_model
    h, m, r, c = layer.heads, layer.top_m, layer.rank, layer.cores
    queries = math.ceil(h / 2)  # "share one query between two heads" (section 8.1 bag of tricks)
    retrieval = tucker_retrieval(
        d,
        queries=queries,
        query_width=2 * layer.key_dim,
        heads=h,
        keys_per_side=layer.keys_per_side,
        key_dim=layer.key_dim,
        rank=r,
        cores=c,
        m_rc=layer.m_rc,
        grid_planes=c,
    )
    pooled = layer.expansion * layer.value_dim
    out_proj = pooled * d
    return MemoryShape(
        retrieval=retrieval,
        kind="ultramem",
        dense_params=retrieval.query_params + retrieval.key_params + out_proj,
        table_rows=layer.rows,
        window_rows=layer.rows,
        row_params=layer.value_dim,
        heads=h,
        top_m=m,
        flops_per_token=retrieval.flops + 2.0 * h * m * layer.value_dim + 2.0 * out_proj,
        act_elements_per_token=retrieval.intermediates + h * m * c + pooled,
        index_elements_per_token=h * m,
        pooled_dim=pooled,
        scores_per_request=c,  # MCS: one score per core weights that core's slice of the row
        shared_table=None,
    )


def cost(layer: UltraMemConfig, model: ModelConfig, points: Points) -> LayerCost:
    """Cost of one UltraMem layer per forward step (sections 8.3, 2.2, 2.7); see memory_common for bytes."""
    return memory_cost(shape(layer, model), model, points)

"""UltraMemV2 (Huang, Bao, Min et al., ICLR 2026, arXiv 2508.18756): cost-reference section 9.

A memory layer in every block, in parallel with the FFN. TDQKR retrieval with one query per Tucker rank,
rows of a pre-value P_i (D_p) and a value V_i (D_v): per selected row, score × ⟨W_pre x, P_i⟩ scales V_i;
the pooled D_v vector goes through one W_o. One table of knum²·L_m rows is shared by the model's L_m
memory layers; a layer reads a window of n_ℓ² rows (n_ℓ = knum without ring sharing).
"""

from __future__ import annotations

from simulator.config import ModelConfig, UltraMemV2Config
from simulator.costs import LayerCost, Points
from simulator.layers.memory_common import MemoryShape, memory_cost, tucker_retrieval


def memory_layers(layer: UltraMemV2Config, model: ModelConfig) -> int:
    """L_m, the memory layers sharing this layer's table (1 for a private table)."""
    if layer.shared_table is None:
        return 1
    return max(1, model.memory_layer_count(layer.shared_table))


def shape(layer: UltraMemV2Config, model: ModelConfig) -> MemoryShape:
    """Per-token counts of one UltraMemV2 layer (sections 9.2, 9.3), H heads (the paper uses H = 1).

    Layer-private params: W_q 2·r·d·D_k·H, keys 2·n_ℓ·D_k·r·H, cores c·r²·H, W_pre d·D_p, W_o D_v·d.
    Shared table: knum²·L_m·(D_v + D_p) (private tables: knum²·(D_v + D_p), no ring window).
    FLOPs/token: 4r·d·D_k·H + 4r·n_ℓ·D_k·H + H·2c·m_rc²·(r² + r) + 2d·D_p + 2H·m·D_p + 2H·m·D_v + 2D_v·d.
    Materialised: per-rank queries, scores H·2r·n_ℓ, (c + 1)·m_rc² grid values per head (the Triton
    kernel writes the c core grids and their sum), per-core scores and pre-value dots of the H·m picks,
    indices, x̃ = W_pre x (D_p) and the pooled D_v vector.
    """
    d = model.d_model
    h, m, r, c = layer.heads, layer.top_m, layer.rank, layer.cores
    if layer.shared_table is None:
        # a private table has no ring to share: the window is the whole knum² table
        n_side, table_rows = layer.knum, layer.knum**2
    else:
        l_m = memory_layers(layer, model)
        n_side, table_rows = layer.keys_per_side(l_m), layer.knum**2 * l_m
    retrieval = tucker_retrieval(
        d,
        queries=h,
        query_width=2 * r * layer.key_dim,  # separate row/column queries per Tucker rank
        heads=h,
        keys_per_side=n_side,
        key_dim=layer.key_dim,
        rank=r,
        cores=c,
        m_rc=layer.m_rc,
        grid_planes=c + 1,
    )
    d_p, d_v = layer.pre_value_dim, layer.value_dim
    projections = d * d_p + d_v * d
    row = d_v + d_p
    return MemoryShape(
        retrieval=retrieval,
        kind="ultramemv2",
        dense_params=retrieval.query_params + retrieval.key_params + projections,
        table_rows=table_rows,
        window_rows=n_side**2,
        row_params=row,
        heads=h,
        top_m=m,
        flops_per_token=retrieval.flops + 2.0 * projections + 2.0 * h * m * row,
        act_elements_per_token=retrieval.intermediates + h * m * (c + 1) + d_p + d_v,
        index_elements_per_token=h * m,
        pooled_dim=d_v,
        scores_per_request=c,
        dot_reduce=True,  # ⟨x̃, P_i⟩ over a dim-sharded P_i needs the partial dots summed
        shared_table=layer.shared_table,
    )


def cost(layer: UltraMemV2Config, model: ModelConfig, points: Points) -> LayerCost:
    """Cost of one UltraMemV2 layer per forward step (sections 9.3, 2.2, 2.7); see memory_common for bytes."""
    return memory_cost(shape(layer, model), model, points)

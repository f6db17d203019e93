"""Memory+ (Berges et al. 2024, "Memory Layers at Scale"): cost-reference section 6.2.

PKM retrieval (query with bias, no key norm) into one value table shared by every memory layer, pooled
by an EmbeddingBag over the H·m (index, weight) pairs, then output = W_o(bag ⊙ SiLU(W_1 x)) ("swilu"),
both projections d × D_v with bias. The layer replaces the FFN of the blocks that hold it.
"""

from __future__ import annotations

from simulator.config import MemoryPlusConfig, ModelConfig
from simulator.costs import LayerCost, Points
from simulator.layers.memory_common import MemoryShape, memory_cost, product_key_retrieval


def shape(layer: MemoryPlusConfig, model: ModelConfig) -> MemoryShape:
    """Per-token counts of one Memory+ layer (section 6.2).

    Params: d·H·d_k + H·d_k (query), H·n·d_k (keys), W_1 d·D_v + D_v and W_o D_v·d + d, values n²·D_v.
    FLOPs/token: 2·d·H·d_k + 2·H·n·d_k + 2·H·m·D_v + 2·d·D_v + 2·D_v·d (= ... + 4·d² at D_v = d).
    Without the gate (gated=False) W_1 goes; W_o stays when value_dim is set (the lingua code projects
    whenever mem_v_dim is given) or differs from d. Materialised: query, sub-key scores, candidates, top-m
    scores, indices, and D_v-wide bag, W_1 x, SiLU(W_1 x) and their product.
    """
    d = model.d_model
    d_v = layer.value_dim or d
    h, m = layer.heads, layer.top_k
    retrieval = product_key_retrieval(d, h, layer.n_keys, layer.key_dim, m, query_bias=True)
    has_w1 = layer.gated
    has_wo = layer.gated or layer.value_dim is not None or d_v != d
    projections = (d * d_v + d_v if has_w1 else 0) + (d_v * d + d if has_wo else 0)
    proj_flops = 2.0 * d * d_v * (int(has_w1) + int(has_wo))
    pooled_vectors = 4 if has_w1 else 1  # bag, W_1 x, SiLU(W_1 x), product
    return MemoryShape(
        retrieval=retrieval,
        kind="memory_plus",
        dense_params=retrieval.query_params + retrieval.key_params + projections,
        table_rows=layer.rows,
        window_rows=layer.rows,
        row_params=d_v,
        heads=h,
        top_m=m,
        flops_per_token=retrieval.flops + 2.0 * h * m * d_v + proj_flops,
        act_elements_per_token=retrieval.intermediates + h * m + pooled_vectors * d_v,
        index_elements_per_token=h * m,
        pooled_dim=d_v,
        shared_table=layer.shared_table,
    )


def cost(layer: MemoryPlusConfig, model: ModelConfig, points: Points) -> LayerCost:
    """Cost of one Memory+ layer per forward step (sections 6.2, 2.2, 2.7); see memory_common for bytes."""
    return memory_cost(shape(layer, model), model, points)

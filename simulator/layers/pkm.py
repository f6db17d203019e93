"""Product-key memory (PKM; Lample et al. 2019): cost-reference section 5.

H heads, each scores a query of d_k against two sets of n sub-keys, keeps top-m per side, then top-m of the
m² candidate sums, and takes a softmax-weighted sum of m value rows of D_v from one n² × D_v table (heads
share the table, optionally across layers). The reference (XLM `HashingMemory`) pools with an
EmbeddingBag, so gathered rows are not materialised.
"""

from __future__ import annotations

from simulator.config import ModelConfig, PKMConfig
from simulator.costs import LayerCost, Points
from simulator.layers.memory_common import MemoryShape, memory_cost, product_key_retrieval


def shape(layer: PKMConfig, model: ModelConfig) -> MemoryShape:
    """Per-token counts of one PKM layer (section 5.2).

    Params: W_q d·H·d_k + H·d_k bias (+2·H·d_k query BatchNorm), keys H·n·d_k, values n²·D_v.
    FLOPs/token: 2·d·H·d_k + 2·H·n·d_k + 2·H·m·D_v. Materialised: query H·d_k, sub-key scores H·2n,
    candidates H·m², top-m scores H·m (indices H·m int32). The pooled D_v vector is the layer output.
    """
    d = model.d_model
    d_v = layer.value_dim or d
    h, m = layer.heads, layer.top_k
    retrieval = product_key_retrieval(d, h, layer.n_keys, layer.key_dim, m, query_bias=True)
    dense = retrieval.query_params + retrieval.key_params
    if layer.query_batchnorm:
        dense += 2.0 * h * layer.key_dim  # BN weight and bias (running stats are buffers)
    flops = retrieval.flops + 2.0 * h * m * d_v
    acts = retrieval.intermediates + h * m
    notes: list[str] = []
    if d_v != d:
        # PKM's values are the output (D_v = d in XLM); a narrower table needs a projection back to d
        dense += d_v * d
        flops += 2.0 * d_v * d
        acts += d_v
        notes.append(f"value_dim {d_v} != d_model {d}: output projection D_v x d added")
    return MemoryShape(
        retrieval=retrieval,
        kind="pkm",
        dense_params=dense,
        table_rows=layer.rows,
        window_rows=layer.rows,
        row_params=d_v,
        heads=h,
        top_m=m,
        flops_per_token=flops,
        act_elements_per_token=acts,
        index_elements_per_token=h * m,
        pooled_dim=d_v,
        shared_table=layer.shared_table,
        notes=notes,
    )


def cost(layer: PKMConfig, model: ModelConfig, points: Points) -> LayerCost:
    """Cost of one PKM layer per forward step (sections 5.2, 2.2, 2.7); see memory_common for bytes."""
    return memory_cost(shape(layer, model), model, points)

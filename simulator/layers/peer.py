"""PEER (He 2024, arXiv 2407.04153): a million single-neuron experts: cost-reference section 7.

h heads each retrieve k of N = n² experts by product keys (per-half query dim d_q); expert i is the row
pair (u_i, v_i) ∈ R^d × R^d, e_i(x) = σ(u_i·x)·v_i, weighted by the retrieval scores. The reference
(lucidrains PEER-pytorch) gathers the u and v rows into [T, h, k, d] tensors before the two einsums.
"""

from __future__ import annotations

from simulator.config import ModelConfig, PEERConfig
from simulator.costs import LayerCost, Points
from simulator.layers.memory_common import MemoryShape, memory_cost, product_key_retrieval


def shape(layer: PEERConfig, model: ModelConfig) -> MemoryShape:
    """Per-token counts of one PEER layer (section 7.2).

    Params: query d·h·2·d_q, keys h·2·n·d_q, experts N·2d. FLOPs/token: 4·d·h·d_q + 4·h·n·d_q + 4·h·k·d
    (u_i·x and the v_i sum). Materialised: query h·2d_q, sub-key scores h·2n, candidates h·k², top-k
    scores, indices, u·x and σ(u·x) (h·k each), gathered rows h·k·2d.
    """
    d = model.d_model
    h, k = layer.heads, layer.top_k
    # PEER retrieval is PKM retrieval with a 2·d_q query per head; lucidrains' query Linear has no bias
    retrieval = product_key_retrieval(d, h, layer.n_keys, 2 * layer.query_dim, k, query_bias=False)
    row = 2 * d
    return MemoryShape(
        retrieval=retrieval,
        kind="peer",
        dense_params=retrieval.query_params + retrieval.key_params,
        table_rows=layer.rows,
        window_rows=layer.rows,
        row_params=row,
        heads=h,
        top_m=k,
        flops_per_token=retrieval.flops + 2.0 * h * k * row,
        act_elements_per_token=retrieval.intermediates + 3 * h * k + h * k * row,
        index_elements_per_token=h * k,
        pooled_dim=d,
        dot_reduce=True,  # u_i·x over a dim-sharded u_i needs the partial dots summed
        shared_table=layer.shared_table,
    )


def cost(layer: PEERConfig, model: ModelConfig, points: Points) -> LayerCost:
    """Cost of one PEER layer per forward step (sections 7.2, 2.2, 2.7); see memory_common for bytes."""
    return memory_cost(shape(layer, model), model, points)

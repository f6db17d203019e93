"""Self-attention with a KV cache (MHA, GQA, MQA, MLA): cost-reference section 10.

`points.context` is the KV length each sequence attends over in decode, and the prompt length in
prefill (causal). Norm weights are not counted (they are O(d) and the published totals we check omit
them).
"""

from __future__ import annotations

import numpy as np

from simulator.config import AttentionConfig, ModelConfig
from simulator.costs import LayerCost, Points, allreduce_bytes


def head_dims(attn: AttentionConfig) -> tuple[int, int]:
    """(query/key dim, value dim) per head."""
    if attn.kind == "mla":
        assert attn.qk_nope_head_dim and attn.qk_rope_head_dim and attn.v_head_dim
        return attn.qk_nope_head_dim + attn.qk_rope_head_dim, attn.v_head_dim
    assert attn.head_dim is not None
    return attn.head_dim, attn.head_dim


def projection_params(attn: AttentionConfig, d_model: int) -> float:
    """Weights of the q/k/v/o projections (MLA: the low-rank down/up projections, section 10.2)."""
    qk, v = head_dims(attn)
    h = attn.n_heads
    if attn.kind == "mla":
        assert attn.kv_lora_rank and attn.qk_rope_head_dim and attn.qk_nope_head_dim
        q = d_model * attn.q_lora_rank + attn.q_lora_rank * h * qk if attn.q_lora_rank else d_model * h * qk
        kv_down = d_model * (attn.kv_lora_rank + attn.qk_rope_head_dim)
        kv_up = attn.kv_lora_rank * h * (attn.qk_nope_head_dim + v)
        return float(q + kv_down + kv_up + h * v * d_model)
    kv = attn.kv_heads
    params = d_model * h * qk + 2 * d_model * kv * qk + h * v * d_model
    if attn.qkv_bias:
        params += h * qk + 2 * kv * qk
    if attn.o_bias:
        params += d_model
    return float(params)


def score_flops_per_pair(attn: AttentionConfig, phase: str) -> float:
    """FLOPs of one (query, key) pair for QK^T plus PV, all heads.

    MLA decode runs with the up-projections absorbed (scores against the cached latent), prefill
    without (the latent is expanded to full keys and values), as DeepSeek's kernels do.
    """
    h = attn.n_heads
    if attn.kind == "mla" and phase == "decode":
        assert attn.kv_lora_rank and attn.qk_rope_head_dim
        return 2.0 * h * (attn.kv_lora_rank + attn.qk_rope_head_dim) + 2.0 * h * attn.kv_lora_rank
    qk, v = head_dims(attn)
    return 2.0 * h * (qk + v)


def cost(attn: AttentionConfig, model: ModelConfig, points: Points) -> LayerCost:
    d = model.d_model
    tokens, batch, ctx = points.tokens, points.batch, points.context
    tp = points.tp
    params = projection_params(attn, d)
    kv_elems = attn.kv_elements_per_token
    # KV heads split over tp; when there are fewer KV heads than devices they are replicated
    kv_split = min(tp, attn.kv_heads) if attn.kind != "mla" else 1
    pair = score_flops_per_pair(attn, points.phase)
    qk, v = head_dims(attn)
    h = attn.n_heads

    if points.phase == "decode":
        pairs = tokens * ctx  # every new token attends over the sequence's cached context
        kv_read = batch * ctx * kv_elems * points.b_kv / kv_split
        scores = tokens * h * ctx
    else:
        pairs = batch * ctx * ctx / 2.0  # causal: half the square
        kv_read = batch * ctx * kv_elems * points.b_kv / kv_split  # ideal: each K/V tile read once
        scores = batch * h * ctx * ctx  # an eager kernel materialises the full square
    kv_write = tokens * kv_elems * points.b_kv / kv_split

    weights = points.full(params * points.b_w / tp)
    qkv_elems = h * qk + 2 * (attn.kv_heads * qk if attn.kind != "mla" else kv_elems)
    # unfused path: x read, q/k/v written and read, attention output written and read, y written,
    # and the score matrix written and read twice (scores, then softmax probabilities)
    act_naive = (
        tokens * (d + 2 * qkv_elems + 2 * h * v + d) * points.b_a / tp + 4.0 * scores * points.b_a / tp
    )
    nan = points.full(np.nan)
    return LayerCost(
        kind="attention",
        params=params,
        active_params=params,
        flops=(2.0 * params * tokens + pair * pairs) / tp,
        weight_bytes_ideal=weights,
        weight_bytes_naive=weights.copy(),
        act_bytes_ideal=2.0 * tokens * d * points.b_a,
        act_bytes_naive=act_naive,
        kv_read_bytes=kv_read,
        kv_write_bytes=kv_write,
        distinct_items=nan,
        items_requested=nan.copy(),
        comm_bytes=allreduce_bytes(tokens, d, points.b_a, tp),
    )

"""Self-attention with a KV cache (MHA, GQA, MQA, MLA): cost-reference section 10.

`points.context` is the KV length each sequence attends over in decode (capped by a sliding window;
with chunked attention only the current chunk's keys, context mod chunk), and the prompt length in
prefill (causal), after `points.prefix` entries already cached (0: a fresh prompt; else a later chunk of
a chunked prefill, or a cached prefix, whose keys the new tokens also attend to). Norm weights are not
counted (they are O(d) and the published totals we check omit them).
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
        return float(q + kv_down + kv_up + h * v * d_model + indexer_params(attn, d_model))
    kv = attn.kv_heads
    params = d_model * h * qk + 2 * d_model * kv * qk + h * v * d_model
    if attn.qkv_bias:
        params += h * qk + 2 * kv * qk
    if attn.o_bias:
        params += d_model
    if attn.sinks:  # one logit per head, read with the projections
        params += h
    if attn.output_gate:  # the gate's projection, as wide as the attention output (biased with q)
        params += (d_model + (1 if attn.qkv_bias else 0)) * h * v
    return float(params)


def indexer_params(attn: AttentionConfig, d_model: int) -> float:
    """The lightning indexer's weights (DSA; 0 without): its queries from the query latent (from x
    without one), one key from x, and a weight per index head from x. Its key LayerNorm holds norm
    weights only."""
    if attn.index_n_heads is None or attn.index_head_dim is None:
        return 0.0
    q_in = attn.q_lora_rank or d_model
    heads, dim = attn.index_n_heads, attn.index_head_dim
    return float(q_in * heads * dim + d_model * dim + d_model * heads)


def score_flops_per_pair(attn: AttentionConfig, phase: str) -> float:
    """FLOPs of one (query, key) pair for QK^T plus PV, all heads.

    MLA decode runs with the up-projections absorbed (scores against the cached latent), prefill
    without (the latent is expanded to full keys and values), as DeepSeek's kernels do; with sparse
    attention prefill is absorbed too (DeepSeek-V3.2's sparse kernels gather each query's picked latent
    rows).
    """
    h = attn.n_heads
    if attn.kind == "mla" and (phase == "decode" or attn.index_topk is not None):
        assert attn.kv_lora_rank and attn.qk_rope_head_dim
        return 2.0 * h * (attn.kv_lora_rank + attn.qk_rope_head_dim) + 2.0 * h * attn.kv_lora_rank
    qk, v = head_dims(attn)
    return 2.0 * h * (qk + v)


def device_params(attn: AttentionConfig, d_model: int, tp: int) -> float:
    """Projection weights one tensor-parallel rank holds.

    Heads split over ranks, but MLA's down-projections (they produce the latent every rank needs) are
    replicated, and GQA/MQA K/V heads are replicated when there are fewer of them than ranks.
    """
    params = projection_params(attn, d_model)
    if tp == 1:
        return params
    if attn.kind == "mla":
        assert attn.kv_lora_rank and attn.qk_rope_head_dim
        down = d_model * (attn.kv_lora_rank + attn.qk_rope_head_dim)
        down += d_model * attn.q_lora_rank if attn.q_lora_rank else 0
        down += indexer_params(attn, d_model)  # the indexer runs whole on every rank
        return down + (params - down) / tp
    qk, _ = head_dims(attn)
    kv = 2 * attn.kv_heads * qk * (d_model + (1 if attn.qkv_bias else 0))
    return (params - kv) / tp + kv / min(tp, attn.kv_heads)


def keys_in_reach(attn: AttentionConfig, context: np.ndarray) -> np.ndarray:
    """Cached keys a decode token at position `context` attends over: all of them, the last W of a
    sliding window, or those of its own chunk (the chunk starts at the last multiple of the chunk size)."""
    if attn.sliding_window is not None:
        return np.minimum(context, attn.sliding_window)
    if attn.attention_chunk is not None:
        return np.mod(context, attn.attention_chunk)
    return context


def causal_pairs(attn: AttentionConfig, n: np.ndarray | float) -> np.ndarray:
    """(query, key) pairs of the first `n` positions of one sequence, causal: the sum over positions i of
    the keys i reaches (i; min(i, W) with a sliding window; its own chunk's first i mod C with chunks)."""
    n = np.asarray(n, dtype=np.float64)
    window, chunk = attn.sliding_window, attn.attention_chunk
    if chunk is not None:
        full, rest = np.floor_divide(n, chunk), np.mod(n, chunk)
        return full * chunk * (chunk + 1) / 2.0 + rest * (rest + 1) / 2.0
    if window is None:
        return n * (n + 1) / 2.0
    w = np.minimum(n, window)
    return w * (w + 1) / 2.0 + (n - w) * w


def cached_keys_reached(attn: AttentionConfig, prefix: float) -> float:
    """Of `prefix` cached entries, those a prefill chunk's first token reaches (the later tokens reach no
    earlier ones): all, the last W - 1 with a sliding window, the current chunk's with chunks."""
    if attn.sliding_window is not None:
        return float(min(prefix, attn.sliding_window - 1))
    if attn.attention_chunk is not None:
        return float(prefix % attn.attention_chunk)
    return float(prefix)


def attended_pairs(points: Points, attn: AttentionConfig) -> np.ndarray:
    """(query, key) pairs per step: decode tokens x keys in reach; prefill the causal pairs of positions
    prefix+1 .. prefix+context of every sequence. With sparse attention a query attends over at most
    index_topk of the keys it reaches (which ones does not change the count): as a window of that
    size counts them."""
    ctx = points.context
    if attn.index_topk is not None:
        attn = attn.model_copy(update={"sliding_window": attn.index_topk, "index_topk": None})
    if points.phase == "decode":
        return points.tokens * keys_in_reach(attn, ctx)
    return points.batch * (causal_pairs(attn, points.prefix + ctx) - causal_pairs(attn, points.prefix))


def indexed_pairs(points: Points, attn: AttentionConfig) -> np.ndarray:
    """(query, key) pairs the lightning indexer scores per step: every key each query reaches."""
    return attended_pairs(points, attn.model_copy(update={"index_topk": None}))


def cost(attn: AttentionConfig, model: ModelConfig, points: Points) -> LayerCost:
    d = model.d_model
    tokens, batch, ctx = points.tokens, points.batch, points.context
    tp = points.tp
    params = projection_params(attn, d)
    on_device = device_params(attn, d, tp)
    kv_elems = attn.kv_elements_per_token
    # KV heads split over tp; when there are fewer KV heads than devices they are replicated; MLA's
    # latent is one vector per token that every rank reads
    kv_split = min(tp, attn.kv_heads) if attn.kind != "mla" else 1
    qk, v = head_dims(attn)
    h = attn.n_heads

    pairs = attended_pairs(points, attn)
    entry = kv_elems * points.b_kv / kv_split  # one token's cache entry, per device
    index_key = float(attn.index_key_bytes)  # the indexer's cached key (DSA), whole on every rank
    index_heads = attn.index_n_heads or 0
    kv_cached = None
    if points.phase == "decode":
        reach = keys_in_reach(attn, ctx)
        picked = np.minimum(reach, attn.index_topk) if attn.index_topk is not None else reach
        # only keys within reach are read; with sparse attention every reached token's index key once
        # per sequence, and the picked entries per query (each of a speculative step's queries gathers
        # its own, as DeepSeek's sparse decode kernel does)
        gathers = tokens if attn.index_topk is not None else batch
        kv_read = gathers * picked * entry + batch * reach * index_key
        if attn.index_topk is not None:
            kv_cached = batch * reach * (entry + index_key)
        scores = tokens * (h * picked / tp + index_heads * reach)
    else:
        cached = cached_keys_reached(attn, points.prefix)
        # ideal: each K/V tile read once, the prompt's own and the cached ones its queries reach
        kv_read = batch * (ctx + cached) * (entry + index_key)
        # an eager kernel materialises the whole rectangle (sparse attention: as a mask over it)
        scores = batch * ctx * (ctx + cached) * (h / tp + index_heads)
    kv_write = tokens * (entry + index_key)

    absorbed = points.phase == "decode" or attn.index_topk is not None  # MLA without expanded keys
    if attn.kind != "mla":
        qkv_elems = h * qk + 2 * attn.kv_heads * qk + (h * v if attn.output_gate else 0)
    elif absorbed:  # queries in latent space, the new latent written
        assert attn.kv_lora_rank and attn.qk_rope_head_dim
        qkv_elems = h * (attn.kv_lora_rank + attn.qk_rope_head_dim) + kv_elems
    else:  # prefill expands the latent into full per-head keys and values
        qkv_elems = 2 * h * qk + h * v
    # the indexer's queries, key and head weights (whole on every rank)
    index_elems = index_heads * ((attn.index_head_dim or 0) + 1) + (attn.index_head_dim or 0)
    # unfused path: x read and y written (whole on every rank); per-rank q/k/v and attention output
    # written and read; the score matrix written and read twice (scores, then softmax probabilities)
    act_naive = (
        tokens * 2 * d * points.b_a
        + tokens * ((2 * qkv_elems + 2 * h * v) / tp + 2 * index_elems) * points.b_a
        + 4.0 * scores * points.b_a
    )
    weights = points.full(on_device * points.b_w)
    nan = points.full(np.nan)
    # live at the peak: x, y and the per-rank q/k/v and attention output; SDPA kernels keep the scores
    # on chip, so unlike act_naive no score matrix is held
    act_peak = tokens * (2 * d + (qkv_elems + h * v) / tp + index_elems) * points.b_a
    if attn.kind == "mla" and not absorbed and points.prefix:
        # the cached latents a chunk reaches, expanded into per-head keys and values, are alive too
        act_peak = (
            act_peak + batch * cached_keys_reached(attn, points.prefix) * h * (qk + v) / tp * points.b_a
        )
    flops = 2.0 * on_device * tokens + score_flops_per_pair(attn, points.phase) * pairs / tp
    if attn.index_topk is not None:
        assert attn.index_head_dim is not None
        # per scored key: a dot product per index head, ReLU, and the heads' weighted sum
        flops = flops + 2.0 * index_heads * (attn.index_head_dim + 1) * indexed_pairs(points, attn)
    if attn.kind == "mla" and not absorbed and points.prefix:
        # the cached latents the chunk reaches are expanded into full keys and values too
        assert attn.kv_lora_rank and attn.qk_nope_head_dim
        up = attn.kv_lora_rank * h * (attn.qk_nope_head_dim + v)
        flops = flops + 2.0 * batch * cached_keys_reached(attn, points.prefix) * up / tp
    return LayerCost(
        kind="attention",
        params=params,
        device_params=on_device,
        active_params=params,
        flops=flops,
        weight_bytes_ideal=weights,
        weight_bytes_naive=weights.copy(),
        act_bytes_ideal=2.0 * tokens * d * points.b_a,
        act_bytes_naive=act_naive,
        kv_read_bytes=kv_read,
        kv_write_bytes=kv_write,
        distinct_items=nan,
        items_requested=nan.copy(),
        comm_bytes=allreduce_bytes(tokens, d, points.b_a, tp),
        act_peak_bytes=act_peak,
        kv_cached_bytes=kv_cached,
    )

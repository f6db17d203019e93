"""Token embedding gather and LM head: weights, FLOPs and logits traffic."""

from __future__ import annotations

import numpy as np

from simulator.config import ModelConfig
from simulator.costs import LayerCost, Points


def logit_tokens(points: Points) -> np.ndarray:
    """Positions whose logits a step computes: every decode token; in prefill the last prompt position
    of each sequence (what a serving engine samples from), every position with `logits="all"`, none with
    `logits="none"` (a chunk of a chunked prefill before the prompt's last)."""
    if points.phase == "decode" or points.logits == "all":
        return points.tokens
    if points.logits == "none":
        return points.zeros()
    return points.batch.copy()


def _vocab(model: ModelConfig) -> int:
    assert model.vocab_size is not None, "the config validator requires vocab_size with embeddings"
    return model.vocab_size


def embed_cost(model: ModelConfig, points: Points) -> LayerCost:
    """The token gather, plus the learned position gather and its add where the model has a position
    table (GPT-2): its rows are read like token rows, at most one per position held."""
    d, vocab = model.d_model, _vocab(model)
    tokens = points.tokens
    row = d * points.b_w
    nan = points.full(np.nan)
    # a gather reads the requested rows, never the whole table; repeated ids can share a row
    bytes_ideal = np.minimum(tokens, vocab) * row / points.tp
    bytes_naive = tokens * row / points.tp
    act_naive = tokens * (d * points.b_a + 8.0)  # + int64 token ids
    params = float(vocab * d)
    on_device = params / points.tp
    if model.learned_positions:
        assert model.max_positions is not None, "the config validator requires the table's rows"
        rows = model.max_positions + model.position_offset
        params += float(rows * d)
        # the position table is replicated on every tensor-parallel rank (vLLM's GPT-2), not split
        on_device += float(rows * d)
        # the batch's sequences share positions (one context per point): a decode step reads the rows of
        # its tokens_per_step positions, a prefill those of its prompt's tokens
        steps = points.full(float(points.tokens_per_step))
        positions = steps if points.phase == "decode" else points.context
        bytes_ideal = bytes_ideal + np.minimum(positions, model.max_positions) * row
        bytes_naive = bytes_naive + tokens * row
        # eager: the position gather writes its rows (+ int64 ids); the add reads both, writes the sum
        act_naive = act_naive + tokens * (d * points.b_a + 8.0) + tokens * 3.0 * d * points.b_a
    return LayerCost(
        kind="embedding",
        params=params,
        device_params=on_device,
        active_params=float(d * (2 if model.learned_positions else 1)),
        flops=tokens * float(d) if model.learned_positions else points.zeros(),
        weight_bytes_ideal=bytes_ideal,
        weight_bytes_naive=bytes_naive,
        act_bytes_ideal=tokens * d * points.b_a,
        act_bytes_naive=act_naive,
        kv_read_bytes=points.zeros(),
        kv_write_bytes=points.zeros(),
        distinct_items=nan,
        items_requested=nan.copy(),
        comm_bytes=points.zeros(),
    )


def head_cost(model: ModelConfig, points: Points) -> LayerCost:
    d, vocab = model.d_model, _vocab(model)
    n = logit_tokens(points)
    # a prefill chunk that does not end its prompt runs no LM head at all
    bias = vocab if model.head_bias else 0  # a bias is the head's own even when its weight is tied
    weights = points.full(0.0 if points.logits == "none" else (vocab * d + bias) * points.b_w / points.tp)
    nan = points.full(np.nan)
    return LayerCost(
        kind="head",
        params=float(bias + (0 if model.tie_embeddings else vocab * d)),  # tied: counted with the embedding
        active_params=float(vocab * d + bias),
        flops=2.0 * vocab * d * n / points.tp,
        weight_bytes_ideal=weights,
        weight_bytes_naive=weights.copy(),
        act_bytes_ideal=n * (d + vocab / points.tp) * points.b_a,
        act_bytes_naive=n * (d * points.b_a + vocab / points.tp * (points.b_a + 4.0 + 4.0)),  # fp32 upcast
        kv_read_bytes=points.zeros(),
        kv_write_bytes=points.zeros(),
        distinct_items=nan,
        items_requested=nan.copy(),
        # vocab-parallel head: all-gather of the logits shards
        comm_bytes=n * vocab * points.b_a * (points.tp - 1) / points.tp,
    )

"""Dense FFN (GeLU/ReLU two-matrix or gated SwiGLU/GeGLU three-matrix): cost-reference section 3."""

from __future__ import annotations

import numpy as np

from simulator.config import GATED, DenseFFNConfig, ModelConfig
from simulator.costs import LayerCost, Points, allreduce_bytes


def ffn_params(d_model: int, d_ff: int, activation: str, bias: bool = False) -> float:
    """Weights of one FFN of width d_ff: 3·d·d_ff gated, 2·d·d_ff plain (+ biases)."""
    mats = 3 if activation in GATED else 2
    extra = ((mats - 1) * d_ff + d_model) if bias else 0
    return float(mats * d_model * d_ff + extra)


def hidden_elements(d_ff: int, activation: str) -> int:
    """Hidden activation elements per token of an unfused FFN: h and act(h), or gate, up and their
    product when gated (what it writes and reads back, and what is alive at once)."""
    return 3 * d_ff if activation in GATED else 2 * d_ff


def ffn_naive_act_elements(d_model: int, d_ff: int, activation: str) -> float:
    """Activation elements per token an unfused FFN moves through HBM (section 3 table):
    read x, write/read the hidden (two halves when gated), write y."""
    return float(d_model + hidden_elements(d_ff, activation) + d_model)


def cost(layer: DenseFFNConfig, model: ModelConfig, points: Points) -> LayerCost:
    d = model.d_model
    params = ffn_params(d, layer.d_ff, layer.activation, layer.bias)
    tokens = points.tokens
    weights = points.full(params * points.b_w / points.tp)  # read once per step, whatever T is
    nan = points.full(np.nan)
    # alive at the peak: x and y, plus the per-rank hidden (h and act(h), or gate, up and their product)
    act_peak = tokens * (2 * d + hidden_elements(layer.d_ff, layer.activation) / points.tp) * points.b_a
    return LayerCost(
        kind="dense",
        params=params,
        active_params=params,
        flops=2.0 * params * tokens / points.tp,
        weight_bytes_ideal=weights,
        weight_bytes_naive=weights.copy(),
        act_bytes_ideal=2.0 * tokens * d * points.b_a,
        act_bytes_naive=tokens * ffn_naive_act_elements(d, layer.d_ff, layer.activation) * points.b_a,
        kv_read_bytes=points.zeros(),
        kv_write_bytes=points.zeros(),
        distinct_items=nan,
        items_requested=nan.copy(),
        comm_bytes=allreduce_bytes(tokens, d, points.b_a, points.tp),
        act_peak_bytes=act_peak,
    )

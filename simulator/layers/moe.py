"""Mixture-of-Experts with routed and shared experts and a router: cost-reference section 4.

Weight bytes depend on how many distinct experts the step's tokens touch (section 2); that count comes
from the workload's routing model (uniform, Zipf, or a measured histogram).
"""

from __future__ import annotations

import numpy as np

from simulator.config import GATED, ModelConfig, MoEConfig
from simulator.costs import LayerCost, Points, allreduce_bytes
from simulator.layers.dense import ffn_params
from simulator.routing import expected_max_load


def cost(layer: MoEConfig, model: ModelConfig, points: Points) -> LayerCost:
    d = model.d_model
    tokens = points.tokens
    expert = ffn_params(d, layer.expert_ffn, layer.activation)
    shared = ffn_params(d, layer.shared_ffn, layer.activation) if layer.shared_ffn else 0.0
    router = float(d * layer.n_experts + (layer.n_experts if layer.router_bias else 0))
    params = layer.n_experts * expert + shared + router
    active = layer.top_k * expert + shared + router

    # Per device: dense parts (shared experts, router) split over tp; routed experts split over ep
    # devices (each holds n_experts/ep, so it touches E[U]/ep of them on average) and then over tp.
    ep, tp = points.ep, points.tp
    distinct = points.routing.distinct(layer.n_experts, layer.top_k, 1, tokens)
    dense_bytes = (shared + router) * points.b_w / tp
    ideal_w = dense_bytes + distinct / ep * expert * points.b_w / tp
    naive_w = points.full(dense_bytes + layer.n_experts / ep * expert * points.b_w / tp)
    routed_flops = 2.0 * layer.top_k * expert * tokens / ep / tp
    flops = 2.0 * (shared + router) * tokens / tp + routed_flops

    straggler = None
    if ep > 1:
        mean_load, max_load = expected_max_load(tokens, layer.top_k, layer.n_experts, ep)
        straggler = max_load / np.maximum(mean_load, 1e-30)

    gate_mats = 2 if layer.activation in GATED else 1
    # section 4.2 unfused path per token copy: dispatch copy written+read, expert hidden (gate/up
    # written, activated hidden read), expert output written; per token: x, combine, shared hidden
    per_copy = 2 * d + gate_mats * layer.expert_ffn + layer.expert_ffn + d
    per_token = 2 * d + ((gate_mats + 1) * layer.shared_ffn + d if layer.shared_ffn else 0)
    act_naive = (tokens * layer.top_k / ep * per_copy + tokens * per_token) * points.b_a
    act_naive = act_naive + tokens * layer.n_experts * 4.0  # fp32 router logits
    comm = allreduce_bytes(tokens, d, points.b_a, tp)
    if ep > 1:
        # dispatch and combine all-to-all: a token copy leaves its device with probability 1 - 1/ep
        comm = comm + 2.0 * tokens * layer.top_k * d * points.b_a * (1 - 1 / ep) / ep
    return LayerCost(
        kind="moe",
        params=params,
        active_params=active,
        flops=flops,
        weight_bytes_ideal=ideal_w,
        weight_bytes_naive=naive_w,
        act_bytes_ideal=2.0 * tokens * d * points.b_a,
        act_bytes_naive=act_naive,
        kv_read_bytes=points.zeros(),
        kv_write_bytes=points.zeros(),
        distinct_items=distinct,
        items_requested=tokens * layer.top_k,
        comm_bytes=comm,
        item_bytes=expert * points.b_w,
        straggler=straggler,
    )

"""Mixture-of-Experts with routed and shared experts and a router: cost-reference section 4.

Weight bytes depend on how many distinct experts the step's tokens touch (section 2); that count comes
from the workload's routing model (uniform, Zipf, or a measured histogram). Under expert parallelism the
layer sees the global batch (tokens are dispatched from every data-parallel rank to the expert shards).
"""

from __future__ import annotations

from simulator.config import GATED, ModelConfig, MoEConfig
from simulator.costs import LayerCost, Points, allreduce_bytes
from simulator.layers.dense import ffn_params, hidden_elements
from simulator.routing import expected_max_distinct_per_device, expected_max_load


def cost(layer: MoEConfig, model: ModelConfig, points: Points) -> LayerCost:
    d = model.d_model
    tokens = points.tokens
    expert = ffn_params(d, layer.expert_ffn, layer.activation, layer.expert_bias)
    shared = ffn_params(d, layer.shared_ffn, layer.activation) if layer.shared_ffn else 0.0
    shared += d if layer.shared_gate else 0  # its gate's d-vector, read and multiplied with the shared
    router = float(d * layer.n_experts + (layer.n_experts if layer.router_bias else 0))
    params = layer.n_experts * expert + shared + router
    active = layer.top_k * expert + shared + router

    # Per device. Experts are sharded over ep devices (whole experts), then each split over tp; the
    # shared experts are split over tp and the router is replicated (it is tiny and every rank routes).
    # Weight bytes are those of the busiest device (expected max of distinct experts over the ep shards):
    # in memory-bound decode the step waits for it. At ep = 1 this is E[U] itself. The FLOPs below take the
    # busiest device by token-expert pairs instead; the two maxima may fall on different devices, but each
    # expert a device reads gets at least one pair, so expected_max_load never puts fewer pairs on its
    # busiest device than this puts experts (at one token the two are the same device: pairs = experts).
    ep, tp = points.ep, points.tp
    distinct = points.routing.distinct(layer.n_experts, layer.top_k, 1, tokens)
    per_device = expected_max_distinct_per_device(layer.n_experts, layer.top_k, ep, distinct)
    dense_bytes = shared / tp * points.b_w + router * points.b_route
    ideal_w = dense_bytes + per_device * expert * points.b_w / tp
    naive_w = points.full(dense_bytes + -(-layer.n_experts // ep) * expert * points.b_w / tp)
    # FLOPs and activations of the busiest device: its data-parallel share of the tokens runs the router
    # and shared experts; the expected maximum of token-expert pairs over the ep shards runs routed experts.
    rank_tokens = points.data_parallel_share().tokens
    pairs = tokens * layer.top_k
    if ep > 1:
        _, pairs = expected_max_load(tokens, layer.top_k, layer.n_experts, ep)
    flops = 2.0 * (shared / tp + router) * rank_tokens + 2.0 * expert * pairs / tp

    gate_mats = 2 if layer.activation in GATED else 1
    # section 4.2 unfused path per token copy: dispatch copy written+read, expert hidden (gate/up
    # written, activated hidden read), expert output written; per token: x, combine, shared hidden
    per_copy = 2 * d + gate_mats * layer.expert_ffn + layer.expert_ffn + d
    per_token = 2 * d + ((gate_mats + 1) * layer.shared_ffn + d if layer.shared_ffn else 0)
    act_naive = (pairs * per_copy + rank_tokens * per_token) * points.b_a
    act_naive = act_naive + rank_tokens * layer.n_experts * 4.0  # fp32 router logits
    # alive at once (as a fused MoE kernel's workspace): per token copy the dispatched x, the expert
    # hidden and the expert output; per token x, y, the shared hidden and the fp32 router logits
    hidden = hidden_elements(layer.expert_ffn, layer.activation)
    shared_hidden = hidden_elements(layer.shared_ffn, layer.activation) if layer.shared_ffn else 0
    act_peak = (pairs * (2 * d + hidden / tp) + rank_tokens * (2 * d + shared_hidden / tp)) * points.b_a
    act_peak = act_peak + rank_tokens * layer.n_experts * 4.0
    comm = allreduce_bytes(rank_tokens, d, points.b_a, tp)
    if ep > 1:
        # dispatch and combine all-to-all: each copy of a rank's tokens leaves it with probability 1 - 1/ep
        comm = comm + 2.0 * rank_tokens * layer.top_k * d * points.b_a * (1 - 1 / ep)
    return LayerCost(
        kind="moe",
        params=params,
        active_params=active,
        flops=flops,
        weight_bytes_ideal=ideal_w,
        weight_bytes_naive=naive_w,
        act_bytes_ideal=2.0 * rank_tokens * d * points.b_a,
        act_bytes_naive=act_naive,
        kv_read_bytes=points.zeros(),
        kv_write_bytes=points.zeros(),
        distinct_items=distinct,
        items_requested=tokens * layer.top_k,
        comm_bytes=comm,
        item_bytes=expert * points.b_w,
        device_params=-(-layer.n_experts // ep) * expert / tp + shared / tp + router,
        act_peak_bytes=act_peak,
        routing_flops=2.0 * router * rank_tokens,
        routing_weight_bytes=router * points.b_route,
        routing_params=router,
    )

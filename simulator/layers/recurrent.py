"""Recurrent token mixers: Mamba, Mamba-2, Gated DeltaNet and its Kimi Delta Attention variant
(docs/recurrent-mixers.md).

They stand where attention stands, but each sequence carries a fixed-size state instead of a KV cache
that grows with the context: a decode step reads the whole state and writes it back, whatever the
context; a prefill writes the final state once (and first reads the state a cached prefix left). The
state is reported in the KV columns (it is the cache of these layers), and held once per sequence.

Counted per token:
- the projections (2 FLOPs per weight) and the depthwise causal convolution (2 x channels x d_conv);
- the recurrence, elementwise on the state (decode, and Mamba's sequential prefill scan), or the chunked
  matmul form prefill kernels run (Mamba-2's SSD, Gated DeltaNet's WY form) over chunks of
  min(chunk_size, prompt) tokens, upper triangles of the within-chunk products computed in full, as
  tiled kernels do.
Norm weights (Mamba-2's and Gated DeltaNet's gated RMSNorm, Jamba's dt/B/C norms) are left out, as for
every other family.
"""

from __future__ import annotations

import numpy as np

from simulator.config import (
    DTYPE_BYTES,
    GatedDeltaNetConfig,
    LightningAttentionConfig,
    Mamba2Config,
    MambaConfig,
    ModelConfig,
    RecurrentMixer,
)
from simulator.costs import LayerCost, Points, allreduce_bytes


def projection_params(mixer: RecurrentMixer, d_model: int) -> float:
    """Weights used as matmul operands (2 FLOPs each per token), biases included."""
    d = d_model
    if isinstance(mixer, MambaConfig):
        di, n, r = mixer.d_inner, mixer.d_state, mixer.dt_rank
        params = d * 2 * di + di * (r + 2 * n) + r * di + di * d
        params += di  # dt_proj bias (always present)
        if mixer.proj_bias:
            params += 2 * di + d
        return float(params)
    if isinstance(mixer, Mamba2Config | LightningAttentionConfig):
        out = in_width(mixer)
        return float(d * out + mixer.d_inner * d + ((out + d) if mixer.proj_bias else 0))
    g = mixer
    out = in_width(g)
    total = d * out + g.value_dim * d + ((out + d) if g.proj_bias else 0)
    if g.gate_rank is not None:  # KDA's low-rank decay and output gates: down to the rank, up per channel
        total += 2 * d * g.gate_rank + g.gate_rank * (g.key_dim + g.value_dim)
    return float(total)


def in_width(mixer: RecurrentMixer) -> int:
    """Output width of the input projection(s)."""
    if isinstance(mixer, MambaConfig):
        return 2 * mixer.d_inner  # x and the gate z
    if isinstance(mixer, Mamba2Config):
        return mixer.d_inner + mixer.conv_channels + mixer.n_heads  # z, xBC, dt
    if isinstance(mixer, LightningAttentionConfig):
        return 4 * mixer.d_inner  # q, k, v; the output gate
    if mixer.gate_rank is not None:
        return 2 * mixer.key_dim + mixer.value_dim + mixer.n_v_heads  # KDA: q, k, v; beta
    return 2 * mixer.key_dim + 2 * mixer.value_dim + 2 * mixer.n_v_heads  # q, k, v, z; beta, decay


def elementwise_params(mixer: RecurrentMixer) -> float:
    """Convolution weights and the per-channel or per-head parameters (A, D, dt bias)."""
    conv = mixer.conv_channels * mixer.d_conv + (mixer.conv_channels if mixer.conv_bias else 0)
    if isinstance(mixer, MambaConfig):
        return float(conv + mixer.d_inner * mixer.d_state + mixer.d_inner)  # A_log, D
    if isinstance(mixer, Mamba2Config):
        return float(conv + 3 * mixer.n_heads)  # A_log, D, dt_bias
    if isinstance(mixer, LightningAttentionConfig):
        return 0.0  # its decay slopes are fixed, not weights
    if mixer.gate_rank is not None:
        return float(conv + mixer.n_v_heads + mixer.key_dim)  # KDA: A_log per head, dt_bias per key channel
    return float(conv + 2 * mixer.n_v_heads)  # A_log, dt_bias


def params(mixer: RecurrentMixer, d_model: int) -> float:
    return projection_params(mixer, d_model) + elementwise_params(mixer)


def groups_per_rank(mixer: Mamba2Config, tp: int) -> int:
    """Mamba-2 groups of B and C one tensor-parallel rank holds: its share when the groups divide over the
    ranks, else the one group whole on every rank (vLLM's two cases; `check_parallelism` refuses others)."""
    return mixer.n_groups // tp if mixer.n_groups % tp == 0 else mixer.n_groups


def replicated_projection_params(mixer: RecurrentMixer, d_model: int, tp: int) -> float:
    """Input-projection weights every tensor-parallel rank keeps whole: Mamba-2's B/C columns when one
    group serves the heads of every rank; KDA's two down-projections to the gate rank (vLLM replicates
    them)."""
    if isinstance(mixer, GatedDeltaNetConfig) and mixer.gate_rank is not None and tp > 1:
        return float(2 * d_model * mixer.gate_rank)
    if not isinstance(mixer, Mamba2Config) or tp == 1 or mixer.n_groups % tp == 0:
        return 0.0
    return float(2 * mixer.n_groups * mixer.d_state * (d_model + (1 if mixer.proj_bias else 0)))


def replicated_params(mixer: RecurrentMixer, d_model: int, tp: int) -> float:
    """Weights every tensor-parallel rank keeps whole: those B/C projection columns and their channels of
    the convolution."""
    projections = replicated_projection_params(mixer, d_model, tp)
    if not projections or not isinstance(mixer, Mamba2Config):
        return projections
    channels = 2 * mixer.n_groups * mixer.d_state
    return projections + channels * (mixer.d_conv + (1 if mixer.conv_bias else 0))


def device_params(mixer: RecurrentMixer, d_model: int, tp: int) -> float:
    """Weights one tensor-parallel rank holds: heads (channels) split over ranks."""
    total = params(mixer, d_model)
    shared = replicated_params(mixer, d_model, tp)
    return (total - shared) / tp + shared


def rank_conv_channels(mixer: RecurrentMixer, tp: int = 1) -> float:
    """Convolution channels one tensor-parallel rank runs (and keeps d_conv - 1 inputs of)."""
    if isinstance(mixer, Mamba2Config):
        return mixer.d_inner / tp + 2 * groups_per_rank(mixer, tp) * mixer.d_state
    return mixer.conv_channels / tp


def state_bytes(mixer: RecurrentMixer, b_a: float, tp: int = 1) -> float:
    """Bytes of one sequence's state on one tensor-parallel rank: the recurrent state (in the mixer's
    state dtype, else the model's activation dtype; split by heads) and the convolution's last d_conv - 1
    inputs (activation dtype). vLLM keeps both in the model dtype by default (`mamba_cache_dtype`,
    `mamba_ssm_cache_dtype` "auto"), whatever the KV cache's dtype."""
    b_state = DTYPE_BYTES[mixer.state_dtype] if mixer.state_dtype is not None else b_a
    return mixer.state_elements / tp * b_state + rank_conv_channels(mixer, tp) * (mixer.d_conv - 1) * b_a


def recurrence_flops_per_token(mixer: RecurrentMixer) -> float:
    """One token's step of the recurrence on the state, with its per-channel work.

    Mamba: dA = exp(dt A) (2), dt B x (2), h = dA h + dBx (2), y = C h (2) per state element; Mamba-2: the
    decay is one scalar per head, so the update is 3 and the read-out 2 per element; Gated DeltaNet: decay
    (1), S^T k (2), the delta rank-1 update (2) and S^T q (2) per element.
    """
    if isinstance(mixer, MambaConfig):
        return float(mixer.d_inner * (8 * mixer.d_state + 6))
    if isinstance(mixer, Mamba2Config):
        return float(mixer.d_inner * (5 * mixer.d_state + 8))
    if isinstance(mixer, LightningAttentionConfig):
        # the decay (1), k v^T added (2) and q S (2) per state element; SiLU on q, k, v and the gate
        return float(5 * mixer.state_elements + 4 * 4 * mixer.d_inner)
    # KDA's decay is a vector per head (an exp and its softplus gate per key channel)
    gate = 6 * mixer.key_dim if mixer.gate_rank is not None else 0
    return float(7 * mixer.state_elements + 6 * mixer.value_dim + 4 * mixer.key_dim + gate)


def chunked_flops_per_token(mixer: RecurrentMixer, chunk: np.ndarray, tp: int = 1) -> np.ndarray:
    """Prefill's chunked form per token on one tensor-parallel rank, chunks of `chunk` tokens (Mamba: the
    sequential scan).

    Mamba-2 (SSD): C B^T per group the rank holds (2QN), its product with x per head (2QP), the chunk's
    state B^T x and the read-out C h from the carried state (2NP each). Gated DeltaNet per value head: K K^T
    and Q K^T (2Q dk each), the WY factors W = T K and U = T V (2Q dk, 2Q dv), the triangular solve for T
    (2Q^2/3), W S and Q S and the state update K^T V' (2 dk dv each), and the within-chunk output (2Q dv).
    """
    q = np.asarray(chunk, dtype=np.float64)
    if isinstance(mixer, MambaConfig):
        return np.full_like(q, recurrence_flops_per_token(mixer) / tp)
    if isinstance(mixer, Mamba2Config):
        n, p, h = mixer.d_state, mixer.head_dim, mixer.n_heads
        groups = groups_per_rank(mixer, tp)
        return 2 * q * n * groups + (h * (2 * q * p + 4 * n * p) + mixer.d_inner * 8) / tp
    if isinstance(mixer, LightningAttentionConfig):
        # per head: the block's Q K^T (decay-masked) and its product with V (2Q dh each), Q S from the
        # carried state and K^T V into it (2 dh^2 each)
        dh = mixer.head_dim
        per_head = 4 * q * dh + 4 * dh * dh
        return (mixer.n_heads * per_head + 4 * 4 * mixer.d_inner) / tp
    g: GatedDeltaNetConfig = mixer
    dk, dv = g.head_k_dim, g.head_v_dim
    per_head = 6 * q * dk + 4 * q * dv + 6 * dk * dv + 2 * q * q / 3
    gate = 6 * g.key_dim if g.gate_rank is not None else 0  # KDA's per-channel decay, as in decode
    return (g.n_v_heads * per_head + 6 * g.value_dim + 4 * g.key_dim + gate) / tp


def cost(mixer: RecurrentMixer, model: ModelConfig, points: Points) -> LayerCost:
    d = model.d_model
    tokens, batch, tp = points.tokens, points.batch, points.tp
    total = params(mixer, d)
    on_device = device_params(mixer, d, tp)
    per_sequence = state_bytes(mixer, points.b_a, tp)
    held = batch * per_sequence
    conv = rank_conv_channels(mixer, tp)
    conv_flops = 2.0 * conv * mixer.d_conv
    shared = replicated_projection_params(mixer, d, tp)
    matmul = (projection_params(mixer, d) - shared) / tp + shared

    if points.phase == "decode":
        kv_read = held
        kv_write = held.copy()
        mix = (recurrence_flops_per_token(mixer) / tp + conv_flops) * tokens
        chunk_states = points.zeros()
    else:
        # a prompt shorter than a chunk is one chunk of its own length
        chunk = np.minimum(points.context, getattr(mixer, "chunk_size", 1))
        kv_read = held if points.prefix else points.zeros()
        kv_write = held.copy()
        mix = (chunked_flops_per_token(mixer, chunk, tp) + conv_flops) * tokens
        if isinstance(mixer, MambaConfig):
            chunk_states = points.zeros()
        else:
            # the prefill kernels write each chunk's state to HBM and read it back to pass it on: Mamba-2's
            # SSD kernels and vLLM's lightning kernels in fp32, Gated DeltaNet's in the activation dtype
            chunks = np.ceil(points.context / mixer.chunk_size)
            b_chunk = 4.0 if isinstance(mixer, Mamba2Config | LightningAttentionConfig) else points.b_a
            chunk_states = batch * chunks * mixer.state_elements / tp * b_chunk
    flops = 2.0 * matmul * tokens + mix

    width = in_width(mixer) / tp
    inner = mixer.d_inner / tp
    # unfused: the projections' outputs, the convolution's output and the scan's output each written and
    # read once (Mamba also x_proj's dt/B/C and dt_proj's per-channel step), and the chunk states passed
    # between prefill kernels
    extra = 0.0
    comm = allreduce_bytes(tokens, d, points.b_a, tp)
    if isinstance(mixer, MambaConfig):
        x_proj = mixer.dt_rank + 2 * mixer.d_state
        extra = 2 * x_proj + 2 * inner
        # x_proj is row-parallel: its dt/B/C are summed over the ranks
        comm = comm + allreduce_bytes(tokens, x_proj, points.b_a, tp)
    decay = gate = 0.0
    if isinstance(mixer, GatedDeltaNetConfig) and mixer.gate_rank is not None:
        # KDA: the gates' low-rank outputs (whole on every rank), the output gate, and the per-channel
        # decay, which vLLM's gate kernel writes in fp32
        extra = 4 * mixer.gate_rank + 2 * mixer.value_dim / tp
        decay, gate = tokens * mixer.key_dim * 4.0 / tp, tokens * mixer.value_dim * points.b_a / tp
    act_naive = (
        tokens * (2 * d + 2 * width + 2 * conv + 2 * inner + extra) * points.b_a
        + 2 * chunk_states
        + 2 * decay
    )
    act_peak = tokens * (2 * d + width + inner) * points.b_a + chunk_states + decay + gate
    weights = points.full(on_device * points.b_w)
    nan = points.full(np.nan)
    return LayerCost(
        kind=mixer.kind,
        params=total,
        device_params=on_device,
        active_params=total,
        flops=flops,
        weight_bytes_ideal=weights,
        weight_bytes_naive=weights.copy(),
        act_bytes_ideal=2.0 * tokens * d * points.b_a,
        act_bytes_naive=act_naive,
        kv_read_bytes=kv_read,
        kv_write_bytes=kv_write,
        distinct_items=nan,
        items_requested=nan.copy(),
        comm_bytes=comm,
        act_peak_bytes=act_peak,
        kv_held_bytes=held,
    )

"""The shared vocabulary of the layer cost functions: sweep points in, per-layer cost arrays out.

Every layer family module exposes `cost(layer, model, points) -> LayerCost`: a pure function whose
arrays are indexed like `points` (one entry per (batch, context) point), so a whole sweep is a handful of
numpy expressions instead of one Python call per point.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from simulator.config import DTYPE_BYTES, Workload
from simulator.routing import RoutingModel

Array = np.ndarray


@dataclass(frozen=True)
class Points:
    """The (batch, context) points of a sweep, flattened, with the workload's byte widths."""

    batch: Array  # sequences per step (global, over all expert-parallel ranks)
    context: Array  # decode: KV entries per sequence; prefill: prompt tokens per sequence
    phase: str
    tokens_per_step: int
    logits: str  # prefill: "last", one position per sequence; "all", every position; "none", no head
    b_w: float  # bytes per weight
    b_a: float  # bytes per activation element
    b_kv: float  # bytes per cached KV element
    tp: int
    ep: int
    routing: RoutingModel
    prefix: float = 0.0  # prefill: KV entries per sequence cached before this step's prompt tokens
    # bytes per routing weight (router, retrieval): the workload's default weight dtype even where a layer
    # kind stores its experts or rows in another, as quantised checkpoints keep routers in full precision
    b_route: float = 2.0

    @classmethod
    def grid(cls, workload: Workload, routing: RoutingModel | None = None) -> Points:
        b, s = np.meshgrid(
            np.asarray(workload.batch, dtype=np.float64),
            np.asarray(workload.context, dtype=np.float64),
            indexing="ij",
        )
        return cls(
            batch=b.ravel(),
            context=s.ravel(),
            phase=workload.phase,
            tokens_per_step=workload.tokens_per_step,
            logits=workload.logits,
            b_w=DTYPE_BYTES[workload.weight_dtype],
            b_a=DTYPE_BYTES[workload.activation_dtype],
            b_kv=DTYPE_BYTES[workload.kv_dtype],
            tp=workload.tp,
            ep=workload.ep,
            routing=routing or RoutingModel(kind="uniform"),
            prefix=float(workload.prefix),
            b_route=DTYPE_BYTES[workload.weight_dtype],
        )

    def with_weight_bytes(self, b_w: float) -> Points:
        """The same points with another weight width (a layer kind stored in its own dtype)."""
        return self if b_w == self.b_w else replace(self, b_w=b_w)

    @property
    def size(self) -> int:
        return int(self.batch.size)

    @property
    def tokens(self) -> Array:
        """Tokens in flight in one forward step (T in cost-reference.md)."""
        if self.phase == "decode":
            return self.batch * self.tokens_per_step
        return self.batch * self.context

    def data_parallel_share(self) -> Points:
        """The points as the busiest data-parallel rank sees them.

        With expert parallelism (ep > 1) the layers other than MoE run data-parallel over the ep
        devices, as large MoE models are served (DeepSeek-V3): each rank holds ceil(batch / ep) of the
        sequences, while the MoE layers receive tokens from every rank.
        """
        if self.ep == 1:
            return self
        return replace(self, batch=np.ceil(self.batch / self.ep))

    def zeros(self) -> Array:
        return np.zeros(self.size, dtype=np.float64)

    def full(self, value: float) -> Array:
        return np.full(self.size, float(value), dtype=np.float64)


@dataclass
class LayerCost:
    """Counts for one layer per forward step, per device; arrays broadcast over the sweep points.

    ideal: every needed weight read once, activations on chip except the layer's input and output.
    naive: no reuse (all experts / every requested row read; unfused intermediates round-trip HBM).
    """

    kind: str
    params: float  # parameters private to this layer (a shared table is counted in table_params)
    active_params: float  # parameters used per token (including this layer's share of table rows)
    flops: Array
    weight_bytes_ideal: Array
    weight_bytes_naive: Array
    act_bytes_ideal: Array
    act_bytes_naive: Array
    kv_read_bytes: Array
    kv_write_bytes: Array
    distinct_items: Array  # experts or memory rows touched per step (nan where not sparse)
    items_requested: Array  # token-item selections per step (T*k, T*H*m; nan where not sparse)
    comm_bytes: Array  # bytes sent per device for TP all-reduce / EP all-to-all
    item_bytes: float = float("nan")  # bytes of one expert or memory row
    table_id: str | None = None  # shared value table this layer reads
    table_params: float = 0.0  # parameters of that table (counted once per model)
    device_params: float | None = None  # parameters one device stores (default: params / tp)
    act_peak_bytes: Array | None = None  # see peak_activations
    # the part of flops and weight_bytes_ideal that picks the experts or rows: the MoE router, a memory
    # layer's retrieval (query projection, sub-keys, Tucker cores, candidate scores); 0 for other layers
    routing_flops: Array | float = 0.0
    routing_weight_bytes: Array | float = 0.0
    routing_params: float = 0.0  # routing weights one device stores (in the default weight dtype)
    # the cache the step leaves behind, per device, where it is not what the step read and wrote (a
    # recurrent state is read and rewritten in place: held once); None: see simulate
    kv_held_bytes: Array | None = None
    # decode: the cache the step's sequences hold before it, where the step reads less of it (sparse
    # attention reads only the tokens its indexer picks); None: what it reads
    kv_cached_bytes: Array | None = None
    notes: list[str] = field(default_factory=list)

    def peak_activations(self) -> Array:
        """Activation bytes alive at once at the layer's peak, per device. Unless the family sets
        `act_peak_bytes`: the input, the output and each unfused intermediate once, i.e. the mean of the
        ideal and naive activation bytes (naive writes and reads every intermediate once)."""
        if self.act_peak_bytes is not None:
            return self.act_peak_bytes
        return (self.act_bytes_ideal + self.act_bytes_naive) / 2.0


def split_weights(params: float, degree: int) -> float:
    """Per-device share of weights sharded over `degree` devices."""
    return params / degree


def allreduce_bytes(tokens: Array, d_model: int, b_a: float, tp: int) -> Array:
    """Ring all-reduce of a [T, d] activation: 2(tp-1)/tp of the tensor per device."""
    return 2.0 * (tp - 1) / tp * tokens * d_model * b_a

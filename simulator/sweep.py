"""Sweeps: one model (or several) on one GPU over batch sizes and contexts, as a pandas DataFrame.

Each distinct layer is costed once over all sweep points at once (numpy arrays); repeated blocks are
multiplied, not recomputed. Columns are documented in `COLUMNS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from simulator.config import (
    DTYPE_BYTES,
    MEMORY_KINDS,
    AttentionConfig,
    HardwareConfig,
    LightningAttentionConfig,
    Mamba2Config,
    MambaConfig,
    Mixer,
    ModelConfig,
    Workload,
    describe_weight_dtypes,
    weight_dtype_of,
)
from simulator.costs import LayerCost, Points
from simulator.errors import ConfigError
from simulator.layers import attention, cost_function, embedding, recurrent
from simulator.roofline import roofline
from simulator.routing import RoutingModel

COLUMNS: dict[str, str] = {
    "model": "model name",
    "hardware": "hardware name",
    "phase": "decode or prefill",
    "batch": "sequences per step",
    "context": "decode: KV entries per sequence; prefill: prompt tokens per sequence",
    "prefix": "prefill: KV entries per sequence cached before the prompt tokens (0: a fresh prompt)",
    "tokens": "tokens in flight in one forward step (T)",
    "layer": "layer name (block3.moe, block0.attn, block1.mamba, block2.linear_attn, embed, head) or 'total' "
    "for the whole model",
    "block": "transformer block index (-1 for embed/head/total)",
    "kind": "attention, mamba, mamba2, gated_deltanet, lightning, dense, moe, pkm, peer, memory_plus, "
    "ultramem, ultramemv2, embedding, head, model",
    "params": "parameters stored (shared tables counted once, in the total)",
    "active_params": "parameters used per token",
    "flops": "FLOPs per step (2 per multiply-accumulate) on the busiest device",
    "weight_bytes_ideal": "weights read per step on the busiest device: every needed weight once "
    "(distinct experts/rows; with ep > 1 the expected maximum over the expert shards)",
    "weight_bytes_naive": "weights read per step without reuse (all experts; every requested row)",
    "act_bytes_ideal": "activation bytes: layer input and output only",
    "act_bytes_naive": "activation bytes with unfused intermediates written and read back",
    "kv_read_bytes": "KV-cache bytes read per step (recurrent mixers: their state, the same at any context)",
    "kv_write_bytes": "KV-cache bytes written per step (recurrent mixers: the state written back)",
    "bytes_ideal": "weight + activation + KV bytes, ideal level",
    "bytes_naive": "weight + activation + KV bytes, naive level",
    "distinct_items": "expected distinct experts or memory rows touched per step (sum over layers)",
    "items_requested": "token-item selections per step (T*k for MoE, T*H*m for memory layers)",
    "item_bytes": "bytes of one expert or memory row, whole (sparse layers; NaN for others and totals)",
    "comm_bytes": "bytes sent per device for tensor/expert parallelism",
    "routing_flops": "of flops, the part that picks experts or rows (MoE router; memory-layer query, sub-key "
    "and candidate scoring)",
    "routing_weight_bytes": "of weight_bytes_ideal, the routing weights read (router; query projection, "
    "sub-keys, Tucker cores)",
    "intensity": "FLOPs per ideal byte",
    "t_compute_s": "FLOPs / peak FLOP/s of the compute dtype",
    "t_memory_s": "ideal bytes / (HBM bandwidth x efficiency)",
    "time_s": "roofline time per step: max(t_compute_s, t_memory_s) (+ calibrated fixed time per layer), "
    "summed over layers",
    "time_naive_s": "roofline time with naive bytes",
    "bound": "compute or memory (for totals: the bound of the layers holding most of the time)",
    "act_peak_bytes": "activation bytes alive at once at the layer's peak (input, output, intermediates "
    "once; no attention score matrix); for totals the largest layer's plus the residual stream beside it",
    "memory_bytes": "HBM one device must hold: its weights (shared tables once), the KV cache and the "
    "largest layer's peak activations",
    "fits": "memory_bytes <= the hardware's HBM capacity (totals only)",
    "l2_ratio": "bytes the step (or layer) reads, weights and KV (ideal), over the L2 size: at <= 1 a steady "
    "loop re-reading them each step can be served from L2 and HBM traffic falls below bytes_ideal (ncu, "
    "which flushes caches before each kernel, still sees them)",
    "tp": "tensor-parallel degree",
    "ep": "expert-parallel degree",
    "weight_dtype": "weight dtype (per layer: its kind's; totals: the default and the per-kind ones)",
    "kv_dtype": "KV-cache dtype",
}

_SUMMED = (
    "flops",
    "weight_bytes_ideal",
    "weight_bytes_naive",
    "act_bytes_ideal",
    "act_bytes_naive",
    "kv_read_bytes",
    "kv_write_bytes",
    "comm_bytes",
    "routing_flops",
    "routing_weight_bytes",
)


@dataclass(frozen=True)
class LayerEntry:
    """A layer as it occurs in the model: its cost (computed once) and the blocks it appears in."""

    name: str  # suffix after "block{i}." or the whole name for embed/head
    blocks: tuple[int, ...]  # empty for embed/head
    cost: LayerCost
    weight_dtype: str  # the dtype its weights are stored in


_SUFFIX = {
    "dense": "ffn",
    "moe": "moe",
    "attention": "attn",
    "mamba": "mamba",
    "mamba2": "mamba",
    "gated_deltanet": "linear_attn",
    "lightning": "linear_attn",
}


def layer_suffix(kind: str) -> str:
    """The name of a layer kind after `block{i}.` (every memory-layer family is `memory`); the reference
    modules' ranges carry the same names."""
    return _SUFFIX.get(kind, "memory" if kind in MEMORY_KINDS else kind)


def mixer_cost(mixer: Mixer, model: ModelConfig, points: Points) -> LayerCost:
    """The cost of a block's token mixer: attention or a recurrent mixer."""
    if isinstance(mixer, AttentionConfig):
        return attention.cost(mixer, model, points)
    return recurrent.cost(mixer, model, points)


def mixer_kind(mixer: Mixer) -> str:
    """The layer kind of a token mixer (attention for every attention variant)."""
    return "attention" if isinstance(mixer, AttentionConfig) else mixer.kind


def layer_entries(model: ModelConfig, points: Points, workload: Workload | None = None) -> list[LayerEntry]:
    """Every distinct layer of the model, costed over all points.

    MoE layers see the global batch; the others see the busiest data-parallel rank's share of it
    (they run data-parallel when ep > 1; identical points when ep == 1). A layer kind the workload
    stores in its own weight dtype is costed with that dtype's width.
    """
    wl = workload or Workload()
    entries: list[LayerEntry] = []
    rank = points.data_parallel_share()

    def add(
        name: str, blocks: tuple[int, ...], kind: str, cost: Callable[[Points], LayerCost], at: Points
    ) -> None:
        dtype = weight_dtype_of(wl, kind)
        entries.append(LayerEntry(name, blocks, cost(at.with_weight_bytes(DTYPE_BYTES[dtype])), dtype))

    if model.embeddings:
        add("embed", (), "embedding", lambda p: embedding.embed_cost(model, p), rank)
    first = 0
    for block in model.blocks:
        blocks = tuple(range(first, first + block.repeat))
        first += block.repeat
        for mixer in block.mixers:
            kind = mixer_kind(mixer)
            add(layer_suffix(kind), blocks, kind, lambda p, a=mixer: mixer_cost(a, model, p), rank)
        seen: dict[str, int] = {}
        for layer in block.ffn:
            base = layer_suffix(layer.kind)
            seen[base] = seen.get(base, 0) + 1
            name = base if seen[base] == 1 else f"{base}{seen[base] - 1}"
            cost = cost_function(layer.kind)
            add(
                name,
                blocks,
                layer.kind,
                lambda p, c=cost, lay=layer: c(lay, model, p),
                points if layer.kind == "moe" else rank,
            )
    if model.embeddings:
        add("head", (), "head", lambda p: embedding.head_cost(model, p), rank)
    return entries


def kv_cached(cost: LayerCost, n: int) -> np.ndarray:
    """A decode step's cache before it, per point: what it reads, unless it reads less of it (sparse
    attention)."""
    held = cost.kv_read_bytes if cost.kv_cached_bytes is None else cost.kv_cached_bytes
    return np.broadcast_to(np.asarray(held, dtype=np.float64), (n,))


def cached_kv_bytes(entries: Sequence[LayerEntry], n: int) -> np.ndarray:
    """The KV cache the sequences of `n` decode points hold on a device, all layers: what a request at
    that context keeps (recurrent mixers: their state)."""
    return sum((kv_cached(e.cost, n) * max(len(e.blocks), 1) for e in entries), np.zeros(n))


def sequence_kv_bytes(model: ModelConfig, workload: Workload, contexts: Sequence[int]) -> np.ndarray:
    """KV-cache bytes one sequence holds on a device at each of `contexts` tokens, all layers: what
    a decode step of it at that context finds cached."""
    one = {"phase": "decode", "batch": [1], "context": list(contexts), "prefix": 0, "logits": "last"}
    wl = workload.model_copy(update=one)
    return cached_kv_bytes(layer_entries(model, Points.grid(wl, routing_model(wl)), wl), len(contexts))


def total_params(entries: Sequence[LayerEntry]) -> tuple[float, float]:
    """(stored, active per token) parameters of the model; shared tables counted once."""
    stored = 0.0
    active = 0.0
    tables: dict[str, float] = {}
    for e in entries:
        n = max(len(e.blocks), 1)
        stored += e.cost.params * n
        active += e.cost.active_params * n
        if e.cost.table_id is not None:
            tables[e.cost.table_id] = e.cost.table_params
    return stored + sum(tables.values()), active


def check_parallelism(model: ModelConfig, workload: Workload) -> None:
    """Refuse splits the model cannot have: heads over tp ranks, experts over ep devices (and expert
    parallelism without experts)."""
    if workload.ep > 1 and not any(layer.kind == "moe" for b in model.blocks for layer in b.ffn):
        raise ConfigError(f"--ep {workload.ep}: {model.name} has no MoE layer to split over devices")
    first = 0
    for block in model.blocks:
        for mixer in block.mixers:
            count, what = mixer_split(mixer)
            if count % workload.tp:
                raise ConfigError(f"--tp {workload.tp} does not divide the {count} {what} of block {first}")
            groups = mixer.n_groups if isinstance(mixer, Mamba2Config) else 1
            if groups > 1 and groups % workload.tp:
                # one group is kept whole on every rank; several must split evenly (as vLLM requires)
                raise ConfigError(
                    f"--tp {workload.tp} does not divide the {groups} Mamba-2 groups of block {first}"
                )
        for layer in block.ffn:
            if layer.kind == "moe" and workload.ep > layer.n_experts:
                raise ConfigError(
                    f"--ep {workload.ep} exceeds the {layer.n_experts} experts of block {first}"
                )
        first += block.repeat


def mixer_split(mixer: Mixer) -> tuple[int, str]:
    """What tensor parallelism splits a token mixer along: (how many, their name)."""
    if isinstance(mixer, AttentionConfig):
        return mixer.n_heads, "attention heads"
    if isinstance(mixer, MambaConfig):
        return mixer.d_inner, "Mamba channels"
    if isinstance(mixer, Mamba2Config):
        return mixer.n_heads, "Mamba-2 heads"
    if isinstance(mixer, LightningAttentionConfig):
        return mixer.n_heads, "lightning attention heads"
    return mixer.n_k_heads, "Gated DeltaNet key heads"


def routing_model(workload: Workload) -> RoutingModel:
    spec = workload.routing
    if spec.kind == "uniform":
        return RoutingModel(kind="uniform")
    if spec.kind == "zipf":
        return RoutingModel(kind="zipf", s=spec.s)
    from simulator.routing_io import load_histogram  # only when a measured histogram is asked for

    return RoutingModel(kind="histogram", counts=load_histogram(spec.histogram))


def simulate(
    model: ModelConfig,
    hardware: HardwareConfig,
    workload: Workload,
    per_layer: bool = False,
    efficiency: Mapping[str, float] | None = None,
    routing: RoutingModel | None = None,
    overhead: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """FLOPs, bytes and roofline time per forward step for every (batch, context) of the workload.

    One row per point with the whole model (`layer == "total"`), plus, with `per_layer`, one row per
    layer and point. `efficiency` maps a layer kind to its achieved share of peak HBM bandwidth
    (from `memtraffic simulate --calibration`); kinds not in it use 1.0 (pure roofline). `overhead` maps a
    kind to a fixed time per layer and step (launches, small-kernel tails) fitted with it.
    Columns: see `COLUMNS`.
    """
    check_parallelism(model, workload)
    points = Points.grid(workload, routing or routing_model(workload))
    entries = layer_entries(model, points, workload)
    eff = dict(efficiency or {})
    fixed_time = dict(overhead or {})
    dtype = workload.activation_dtype
    n = points.size

    per_entry: list[dict[str, np.ndarray]] = []
    for e in entries:
        c = e.cost
        # broadcast: a layer may return a scalar where a count does not depend on the point
        row = {k: np.broadcast_to(np.asarray(getattr(c, k), dtype=np.float64), (n,)) for k in _SUMMED}
        row["distinct_items"] = c.distinct_items
        row["items_requested"] = c.items_requested
        row["item_bytes"] = np.full(n, c.item_bytes)
        row["bytes_ideal"] = (
            row["weight_bytes_ideal"] + row["act_bytes_ideal"] + row["kv_read_bytes"] + row["kv_write_bytes"]
        )
        row["bytes_naive"] = (
            row["weight_bytes_naive"] + row["act_bytes_naive"] + row["kv_read_bytes"] + row["kv_write_bytes"]
        )
        resident_params = c.device_params if c.device_params is not None else c.params / workload.tp
        # the cache a step leaves: decode, what it read plus its new entry; prefill, its prompt's entries
        # and the cached ones they reach (its read, which counts both)
        if c.kv_held_bytes is not None:
            kv_resident = np.broadcast_to(np.asarray(c.kv_held_bytes, dtype=np.float64), (n,))
        elif workload.phase == "decode":
            kv_resident = kv_cached(c, n) + row["kv_write_bytes"]
        else:
            kv_resident = np.maximum(row["kv_read_bytes"], row["kv_write_bytes"])
        row["act_peak_bytes"] = np.broadcast_to(np.asarray(c.peak_activations(), dtype=np.float64), (n,))
        # routing weights stay in the default dtype (see Points.b_route)
        weights_held = (resident_params - c.routing_params) * DTYPE_BYTES[e.weight_dtype]
        weights_held += c.routing_params * DTYPE_BYTES[workload.weight_dtype]
        row["memory_bytes"] = weights_held + kv_resident + row["act_peak_bytes"]
        k_eff = eff.get(c.kind, 1.0)
        row.update(roofline(row["flops"], row["bytes_ideal"], hardware, dtype, k_eff))
        row["time_naive_s"] = roofline(row["flops"], row["bytes_naive"], hardware, dtype, k_eff)["time_s"]
        fixed = fixed_time.get(c.kind, 0.0)
        row["time_s"] = row["time_s"] + fixed
        row["time_naive_s"] = row["time_naive_s"] + fixed
        row["l2_ratio"] = (row["weight_bytes_ideal"] + row["kv_read_bytes"]) / hardware.l2_bytes.value
        per_entry.append(row)

    stored, active = total_params(entries)
    base = {
        "model": model.name,
        "hardware": hardware.name,
        "phase": workload.phase,
        "prefix": workload.prefix,
        "tp": workload.tp,
        "ep": workload.ep,
        "weight_dtype": describe_weight_dtypes(workload),
        "kv_dtype": workload.kv_dtype,
    }
    totals = _totals(entries, per_entry, n)
    # the residual stream h (T x d, whole on every rank) stays alive beside the layer working on norm(h)
    residual = points.data_parallel_share().tokens * model.d_model * points.b_a
    totals["act_peak_bytes"] = totals["act_peak_bytes"] + residual
    totals["memory_bytes"] = totals["memory_bytes"] + residual
    # a shared table is stored once per device (sharded along its value dim over tp), in its layers' dtype
    tables = {
        e.cost.table_id: e.cost.table_params * DTYPE_BYTES[e.weight_dtype]
        for e in entries
        if e.cost.table_id is not None
    }
    totals["memory_bytes"] = totals["memory_bytes"] + sum(tables.values()) / workload.tp
    totals["fits"] = totals["memory_bytes"] <= hardware.hbm_capacity.value
    totals["item_bytes"] = np.full(n, np.nan)
    totals["l2_ratio"] = (totals["weight_bytes_ideal"] + totals["kv_read_bytes"]) / hardware.l2_bytes.value
    total_df = pd.DataFrame(
        {
            **base,
            "batch": points.batch.astype(np.int64),
            "context": points.context.astype(np.int64),
            "tokens": points.tokens,
            "layer": "total",
            "block": -1,
            "kind": "model",
            "params": stored,
            "active_params": active,
            **totals,
        }
    )
    if not per_layer:
        return total_df[list(COLUMNS)]
    frames = [_layer_frame(e, row, points, base) for e, row in zip(entries, per_entry, strict=True)]
    layers = pd.concat(frames, ignore_index=True)
    order = {"embed": -2, "head": 10**9}
    layers["_o"] = layers["block"].where(layers["block"] >= 0, layers["layer"].map(order).fillna(-1))
    layers = layers.sort_values(["batch", "context", "_o"], kind="stable").drop(columns="_o")
    out = pd.concat([layers, total_df], ignore_index=True)
    return out[list(COLUMNS)]


def _totals(entries: Sequence[LayerEntry], rows: Sequence[dict[str, np.ndarray]], n: int) -> dict:
    acc = {
        k: np.zeros(n)
        for k in (
            *_SUMMED,
            "memory_bytes",
            "bytes_ideal",
            "bytes_naive",
            "t_compute_s",
            "t_memory_s",
            "time_s",
            "time_naive_s",
        )
    }
    distinct = np.zeros(n)
    requested = np.zeros(n)
    sparse = False
    compute_time = np.zeros(n)
    act_peak = np.zeros(n)
    for e, row in zip(entries, rows, strict=True):
        mult = max(len(e.blocks), 1)
        for k in acc:
            acc[k] += row[k] * mult
        # layers run one after another: weights and KV add up, activations are reused (largest one held)
        acc["memory_bytes"] -= row["act_peak_bytes"] * mult
        act_peak = np.maximum(act_peak, row["act_peak_bytes"])
        if not np.all(np.isnan(row["distinct_items"])):
            sparse = True
            distinct += np.nan_to_num(row["distinct_items"]) * mult
            requested += np.nan_to_num(row["items_requested"]) * mult
        compute_time += np.where(row["t_compute_s"] >= row["t_memory_s"], row["time_s"], 0.0) * mult
    with np.errstate(divide="ignore", invalid="ignore"):
        intensity = acc["flops"] / acc["bytes_ideal"]
    acc["memory_bytes"] += act_peak
    return {
        **acc,
        "act_peak_bytes": act_peak,
        "distinct_items": distinct if sparse else np.full(n, np.nan),
        "items_requested": requested if sparse else np.full(n, np.nan),
        "intensity": intensity,
        "bound": np.where(compute_time * 2 > acc["time_s"], "compute", "memory"),
    }


def _layer_frame(e: LayerEntry, row: dict[str, np.ndarray], points: Points, base: dict) -> pd.DataFrame:
    blocks = e.blocks or (-1,)
    nb = len(blocks)
    n = points.size
    names = [f"block{b}.{e.name}" if b >= 0 else e.name for b in blocks]
    data = {k: np.tile(v, nb) for k, v in row.items()}
    return pd.DataFrame(
        {
            **base,
            "weight_dtype": e.weight_dtype,
            "batch": np.tile(points.batch.astype(np.int64), nb),
            "context": np.tile(points.context.astype(np.int64), nb),
            "tokens": np.tile(points.tokens, nb),
            "layer": np.repeat(names, n),
            "block": np.repeat(np.asarray(blocks, dtype=np.int64), n),
            "kind": e.cost.kind,
            "params": e.cost.params,
            "active_params": e.cost.active_params,
            **data,
            "bound": np.where(data["t_compute_s"] >= data["t_memory_s"], "compute", "memory"),
            "fits": None,  # capacity is a property of the whole model on a device
        }
    )


def compare(
    models: Sequence[ModelConfig],
    hardware: HardwareConfig | Sequence[HardwareConfig],
    workload: Workload,
    per_layer: bool = False,
    efficiency: Mapping[str, float] | None = None,
    overhead: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """`simulate` for several models on one workload, stacked: all on one GPU, or model i on
    hardware[i] (what-if variants from `simulator.loading.load_variants`)."""
    gpus = [hardware] * len(models) if isinstance(hardware, HardwareConfig) else list(hardware)
    if len(gpus) != len(models):
        raise ConfigError(f"compare: {len(models)} models but {len(gpus)} hardware descriptions")
    return pd.concat(
        [
            simulate(m, hw, workload, per_layer=per_layer, efficiency=efficiency, overhead=overhead)
            for m, hw in zip(models, gpus, strict=True)
        ],
        ignore_index=True,
    )

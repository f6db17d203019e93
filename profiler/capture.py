"""The profiled steps of one batch size and the tables made from them.

`capture_steps` runs `steps` steps, each inside a `step{i}` range, under torch.profiler (profiler.session)
and exports the kineto trace. `trace_tables` reads it back (traces.kineto) and attributes it to layers:
on CUDA the kernels through the record_function ranges (traces.attribution); on the CPU, where there are
no kernels, the `layers` table holds the CPU time of those ranges and counts the aten ops inside them.
`record_routing` replays the profiled steps' inputs with the routing recorders on, outside the profiler
(their index copies would otherwise show as kernels of the layers), and `routing_rows` turns the records
into the `routing` table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from profiler.modules import RoutingRecorder, layer_range
from profiler.session import torch_profile
from profiler.target import Target, sync
from traces.attribution import _group_key, attribute, innermost, layer_ranges, layer_table, step_ranges
from traces.counters import counter_tracks
from traces.kineto import inject_events, read_kineto

ROUTING_MAX_ROWS = 2_000_000  # per batch size: routing rows kept (whole steps) before the cap
LAYER_COLUMNS = [
    "batch",
    "step",
    "layer",
    "block",
    "sublayer",
    "kernel_time_ns",
    "n_kernels",
    "first_ts_ns",
    "last_end_ns",
]


def capture_steps(
    target: Target,
    ring: list[Any],
    first: int,
    steps: int,
    trace_json: Path,
    *,
    device: torch.device,
    tick: Callable[[float], None],
) -> None:
    """Profile `steps` steps on ring[first], ring[first + 1], ...; write the kineto trace to `trace_json`."""
    with torch_profile(device, record_shapes=True) as prof:
        for i in range(steps):
            with layer_range(f"step{i}"):
                target.step(ring[(first + i) % len(ring)])
            tick((i + 1) / steps)
        sync(device)
    prof.export_chrome_trace(str(trace_json))


def record_routing(target: Target, ring: list[Any], first: int, steps: int, device: torch.device) -> None:
    """Run the profiled steps' inputs again with the recorders reset and recording: the same routing as
    the profiled steps (decode attends over a fixed cache), without their copies in the profiled trace."""
    for rec in target.recorders.values():
        rec.reset()
        rec.enabled = True
    try:
        for i in range(steps):
            target.step(ring[(first + i) % len(ring)])
        sync(device)
    finally:
        for rec in target.recorders.values():
            rec.enabled = False


@dataclass
class TraceTables:
    kernels: pd.DataFrame | None  # CUDA only
    layers: pd.DataFrame
    kernel_time_ns: float  # per profiled step; NaN on the CPU
    n_kernels: float


def trace_tables(
    trace_json: Path,
    gz: Path,
    batch: int,
    steps: int,
    device: torch.device,
    layer_pattern: str,
    nvml: pd.DataFrame | None = None,
    until_ns: int | None = None,
    peak_Bps: float | None = None,
) -> TraceTables:
    """Gzip the trace into `gz` (removing `trace_json`) and attribute it to layers; `steps` profiled.
    NVML samples given (the steady loop's, which ends at `until_ns`) go into `gz` as counter tracks, on
    the kernels' time axis (Perfetto)."""
    trace = read_kineto(trace_json, with_ops=device.type != "cuda")
    extra = [] if nvml is None else counter_tracks(trace, nvml, peak_Bps, until_ns)
    inject_events(trace_json, gz, extra)
    trace_json.unlink()
    base = trace.base_time_ns or 0
    if device.type != "cuda":
        layers = cpu_layer_table(trace.events, trace.ops, batch, base, layer_pattern)
        return TraceTables(None, layers, float("nan"), float("nan"))
    kernels = attribute(trace.events, layer_pattern, source=f"batch {batch}")
    kernels["ts_ns"] = kernels["ts_ns"] + np.int64(base)
    kernels.insert(0, "batch", np.int64(batch))
    in_steps = kernels[kernels["step"] >= 0]
    return TraceTables(
        kernels, layer_table(kernels), float(in_steps["dur_ns"].sum()) / steps, len(in_steps) / steps
    )


def _shared_group_ids(*pairs: tuple[np.ndarray, np.ndarray]) -> list[np.ndarray]:
    """traces.attribution's (pid, tid) group ids, numbered alike across several (pid, tid) arrays."""
    key = _group_key(np.concatenate([p for p, _ in pairs]), np.concatenate([t for _, t in pairs]))
    bounds = np.cumsum([0] + [len(p) for p, _ in pairs])
    return [key[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def cpu_layer_table(
    events: pd.DataFrame, ops: pd.DataFrame, batch: int, base_ns: int, layer_pattern: str
) -> pd.DataFrame:
    """Per (batch, step, layer): CPU time of the layer's record_function ranges (kernel_time_ns), the aten
    ops started inside them, nested ones included (n_kernels), first start and last end (wall clock)."""
    lr = layer_ranges(events, layer_pattern)
    if lr.empty:
        return pd.DataFrame(columns=LAYER_COLUMNS)
    sr = step_ranges(events)
    l_start = lr["ts_ns"].to_numpy()
    l_end = l_start + lr["dur_ns"].to_numpy()
    lg, sg, og = _shared_group_ids(
        (lr["pid"].to_numpy(), lr["tid"].to_numpy()),
        (sr["pid"].to_numpy(), sr["tid"].to_numpy()),
        (ops["pid"].to_numpy(), ops["tid"].to_numpy()),
    )
    s_start = sr["ts_ns"].to_numpy()
    s_idx = innermost(sg, s_start, s_start + sr["dur_ns"].to_numpy(), lg, l_start)
    step = np.where(s_idx >= 0, sr["step_idx"].to_numpy()[np.maximum(s_idx, 0)], -1)
    op_layer = innermost(lg, l_start, l_end, og, ops["ts_ns"].to_numpy())
    n_ops = np.bincount(op_layer[op_layer >= 0], minlength=len(lr))
    frame = pd.DataFrame(
        {
            "batch": np.int64(batch),
            "step": step.astype(np.int64),
            "layer": lr["name"].to_numpy(),
            "block": lr["block"].to_numpy(),
            "sublayer": lr["sublayer"].to_numpy(),
            "dur": lr["dur_ns"].to_numpy(),
            "n": n_ops,
            "start": l_start + base_ns,
            "end": l_end + base_ns,
        }
    )
    g = frame.groupby(["batch", "step", "layer", "block", "sublayer"], sort=False)
    out = g.agg(
        kernel_time_ns=("dur", "sum"),
        n_kernels=("n", "sum"),
        first_ts_ns=("start", "min"),
        last_end_ns=("end", "max"),
    ).reset_index()
    return out.sort_values(["batch", "step", "first_ts_ns"], kind="stable").reset_index(drop=True)[
        LAYER_COLUMNS
    ]


def routing_rows(
    batch: int, recorders: dict[str, RoutingRecorder], cap: int
) -> tuple[pd.DataFrame, list[str]]:
    """(batch, step, layer, item, count) of the profiled steps, whole steps kept up to `cap` rows."""
    per_step: dict[int, list[pd.DataFrame]] = {}
    for name, rec in recorders.items():
        for step, (items, counts) in enumerate(rec.histograms()):
            per_step.setdefault(step, []).append(
                pd.DataFrame(
                    {
                        "batch": np.int64(batch),
                        "step": np.int32(step),
                        "layer": name,
                        "item": items.astype(np.int64),
                        "count": counts.astype(np.int32),
                    }
                )
            )
    frames: list[pd.DataFrame] = []
    rows = 0
    notes: list[str] = []
    for step in sorted(per_step):
        n = sum(len(f) for f in per_step[step])
        if rows + n > cap:
            if not frames:  # even one step is over the cap: keep its first layers, at least one
                for f in per_step[step]:
                    if frames and rows + len(f) > cap:
                        break
                    frames.append(f)
                    rows += len(f)
                notes.append(
                    f"routing: batch {batch}: kept step 0 of {len(frames)} of {len(per_step[step])} "
                    f"layers ({cap} row cap per batch size)"
                )
            else:
                notes.append(
                    f"routing: batch {batch}: kept {step} of {len(per_step)} profiled steps "
                    f"({cap} row cap per batch size)"
                )
            break
        frames += per_step[step]
        rows += n
    cols = {"batch": "int64", "step": "int32", "layer": "object", "item": "int64", "count": "int32"}
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in cols.items()}), notes
    return pd.concat(frames, ignore_index=True), notes

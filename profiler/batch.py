"""One batch size of a sweep: warm-up, profiled steps (profiler.capture), steady window (profiler.steady).

Every step's input comes from a ring of `input_ring` distinct inputs, so routing changes from step to
step and the L2 cache cannot serve a repeated working set (measured-on-h100.md: a looped sparse layer on
one input showed a tenth of its bytes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from profiler.capture import ROUTING_MAX_ROWS, capture_steps, record_routing, routing_rows, trace_tables
from profiler.errors import one_line
from profiler.graphs import graph_step_us
from profiler.steady import runs_row, sampled_steady_loop
from profiler.target import Target, sync
from simulator.errors import MeasurementUnavailable


@dataclass
class SweepOptions:
    phase: str
    context: int
    steps: int
    warmup: int
    steady_seconds: float
    input_ring: int
    record_routing: bool
    nvml: bool
    nvml_interval_s: float
    device: torch.device
    peak_hbm_Bps: float | None
    tmp: Path
    routing_max_rows: int = ROUTING_MAX_ROWS
    cuda_graphs: bool = False  # also time the steps replayed as CUDA graphs (profiler.graphs)


@dataclass
class BatchResult:
    batch: int
    run: dict[str, Any]  # the meta runs entry
    runs_row: dict[str, Any]
    kernels: pd.DataFrame | None
    layers: pd.DataFrame
    routing: pd.DataFrame | None
    nvml: pd.DataFrame | None
    trace_gz: Path
    notes: list[str] = field(default_factory=list)


def profile_batch(
    target: Target, batch: int, opts: SweepOptions, progress: Callable[[str, float], None] | None = None
) -> BatchResult:
    """Warm-up, profiled steps, steady loop for one batch size."""
    tick = progress or (lambda phase, frac: None)
    dev = opts.device
    target.setup(batch)
    ring = [target.make_input(batch, i) for i in range(opts.input_ring)]
    raw = opts.tmp / f"b{batch}.json"
    notes: list[str] = []
    with torch.no_grad():
        for i in range(opts.warmup):
            target.step(ring[i % len(ring)])
            tick("warm-up", (i + 1) / max(opts.warmup, 1))
        sync(dev)
        capture_steps(
            target,
            ring,
            opts.warmup,
            opts.steps,
            raw,
            device=dev,
            tick=lambda f: tick("profile", f),
        )
        routing = None
        if opts.record_routing and target.recorders:
            record_routing(target, ring, opts.warmup, opts.steps, dev)
            routing, notes = routing_rows(batch, target.recorders, opts.routing_max_rows)
            for rec in target.recorders.values():
                rec.reset()
        window = sampled_steady_loop(
            target,
            ring,
            opts.warmup + opts.steps,
            batch=batch,
            device=dev,
            seconds=opts.steady_seconds,
            min_steps=opts.steps,
            nvml_interval_s=opts.nvml_interval_s if opts.nvml else None,
            notes=notes,
            tick=lambda f: tick("steady", f),
        )
        graph_us = _graph_step_us(target, ring, opts, batch, notes) if opts.cuda_graphs else None
    gz = opts.tmp / f"b{batch}.json.gz"
    tables = trace_tables(
        raw, gz, batch, opts.steps, dev, target.layer_pattern, window.nvml, window.end_ns, opts.peak_hbm_Bps
    )
    row = runs_row(
        batch, window, opts.peak_hbm_Bps, tables.kernel_time_ns, tables.n_kernels, opts.steps, opts.input_ring
    )
    if opts.cuda_graphs:
        row["us_per_step_graph"] = float("nan") if graph_us is None else graph_us
    run = {
        "batch": batch,
        "steps": window.steps,
        "steady_start_ns": window.start_ns,
        "steady_end_ns": window.end_ns,
        "us_per_step": row["us_per_step"],
        "kineto": f"raw/b{batch}.json.gz",
        "complete": True,
        "profiled_steps": opts.steps,
        "warmup": opts.warmup,
        "input_ring": opts.input_ring,
    }
    return BatchResult(batch, run, row, tables.kernels, tables.layers, routing, window.nvml, gz, notes)


def _graph_step_us(
    target: Target, ring: list[Any], opts: SweepOptions, batch: int, notes: list[str]
) -> float | None:
    """The replayed-graph step time, or None with the reason in `notes`. A module found not capturable
    is not tried again at the next batch sizes; any other failure (memory for the graphs' pool at a large
    batch) costs only this batch's graph time, never the sweep."""
    if target.uncapturable is not None:
        return None
    try:
        return graph_step_us(target, ring, opts.warmup, opts.device)
    except MeasurementUnavailable as exc:
        target.uncapturable = str(exc)
        notes.append(f"cuda graphs: {exc} (found at batch {batch}; not tried at later batch sizes)")
    except Exception as exc:  # the graph time is an extra: never stop a measurement for it
        notes.append(f"cuda graphs: batch {batch}: {one_line(exc)}")
    return None

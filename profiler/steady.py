"""The steady-state window of one batch size: a loop of at least `seconds` and `min_steps` steps, timed
on the host with device synchronisation, while an NVML sampler (profiler.nvml) records utilisation, power
and GPM DRAM bandwidth; `runs_row` integrates those samples over the window (traces.timeline).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from profiler.target import Target, sync
from simulator.errors import MemtrafficError

SYNC_EVERY = 8  # steady loop: host sync every 8 steps (as the H100 recordings), and at the end


@dataclass
class SteadyWindow:
    steps: int
    start_ns: int  # wall clock (time.time_ns), as the NVML samples
    end_ns: int
    nvml: pd.DataFrame | None  # the sampler's timeline, None without NVML


def steady_loop(
    target: Target,
    ring: list[Any],
    first: int,
    device: torch.device,
    seconds: float,
    min_steps: int,
    tick: Callable[[float], None],
) -> tuple[int, int, int]:
    """(steps, start ns, end ns) of a loop of >= `seconds` and >= `min_steps` steps from ring[first]."""
    n = 0
    sync(device)
    t0 = time.time_ns()
    while True:
        target.step(ring[(first + n) % len(ring)])
        n += 1
        if device.type != "cuda" or n % SYNC_EVERY == 0:
            sync(device)
            elapsed = (time.time_ns() - t0) / 1e9
            tick(min(elapsed / max(seconds, 1e-9), 1.0))
            if elapsed >= seconds and n >= min_steps:
                break
    sync(device)
    return n, t0, time.time_ns()


def _start_sampler(device: torch.device, interval_s: float, notes: list[str]) -> Any:
    """A started NvmlSampler, or None when it fails to start (noted; the run goes on)."""
    from profiler.nvml import NvmlSampler

    sampler = NvmlSampler(device.index or 0, interval_s, require_gpm=False)
    try:
        return sampler.start()
    except MemtrafficError as exc:
        notes.append(f"nvml: sampler did not start: {exc}")
        return None


def sampled_steady_loop(
    target: Target,
    ring: list[Any],
    first: int,
    *,
    batch: int,
    device: torch.device,
    seconds: float,
    min_steps: int,
    nvml_interval_s: float | None,
    notes: list[str],
    tick: Callable[[float], None],
) -> SteadyWindow:
    """`steady_loop` with the NVML sampler running around it (nvml_interval_s None: no sampler); sampler
    trouble goes into `notes`."""
    sampler = _start_sampler(device, nvml_interval_s, notes) if nvml_interval_s is not None else None
    try:
        steps, t0, t1 = steady_loop(target, ring, first, device, seconds, min_steps, tick)
    finally:
        nvml = sampler.stop() if sampler is not None else None
    if sampler is not None and sampler.errors:
        notes.append(
            f"nvml: batch {batch}: {len(sampler.errors)} sampler error(s), first: {sampler.errors[0]}"
        )
    return SteadyWindow(steps, t0, t1, nvml)


def runs_row(
    batch: int,
    window: SteadyWindow,
    peak: float | None,
    kernel_time_ns: float,
    n_kernels: float,
    trace_steps: int,
    input_ring: int,
) -> dict[str, Any]:
    """One row of the runs table (the importer's columns), NVML/GPM integrated over the steady window."""
    from traces.timeline import run_measurements

    steps, t0, t1 = window.steps, window.start_ns, window.end_ns
    return {
        "batch": batch,
        "steps": steps,
        "us_per_step": (t1 - t0) / steps / 1e3,
        "window_s": (t1 - t0) / 1e9,
        "steady_start_ns": t0,
        "steady_end_ns": t1,
        **run_measurements(window.nvml, t0, t1, steps, peak),
        "kernel_time_ns_per_step": kernel_time_ns,
        "n_kernels_per_step": n_kernels,
        "trace_steps": trace_steps,
        "input_ring": input_ring,
    }

"""NVML samples as counter tracks of a kineto trace, so Perfetto shows bandwidth, utilisation and power
on the same time axis as the kernels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from traces.kineto import DEVICE_CATEGORIES, KinetoTrace, inject_events, read_kineto
from traces.timeline import counter_events


def device_pid(trace: KinetoTrace) -> int:
    """pid of the GPU process in the trace (where kernels are), so counters show under the kernels."""
    ev = trace.events
    dev = ev[ev["cat"].isin(DEVICE_CATEGORIES)]
    return int(dev["pid"].mode().iloc[0]) if len(dev) else 0


def counter_tracks(
    trace: KinetoTrace, timeline: pd.DataFrame, peak_Bps: float | None, until_ns: int | None = None
) -> list[dict[str, Any]]:
    """The timeline's rows as counter events of `trace`: those from its first event to its last, or to
    `until_ns` (wall-clock) when later. A profile samples NVML over the steady loop that follows its
    traced steps, and those rows belong on the same axis. A trace without a base time or events gets
    none (nothing to align them with)."""
    span = trace.span_ns
    if trace.base_time_ns is None or span is None or timeline.empty:
        return []
    hi = span[1] if until_ns is None else max(span[1], until_ns - trace.base_time_ns)
    return counter_events(timeline, trace.base_time_ns, (span[0], hi), device_pid(trace), peak_Bps)


def add_counter_tracks(
    src: Path, dst: Path, timeline: pd.DataFrame, peak_Bps: float | None, until_ns: int | None = None
) -> int:
    """Copy the trace `src` to `dst` (gzipped) with `counter_tracks` inserted; returns how many."""
    return inject_events(src, dst, counter_tracks(read_kineto(src), timeline, peak_Bps, until_ns))

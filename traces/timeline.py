"""NVML / GPM timeline CSV: reading, validation, integration over time windows, counter events.

One row per consecutive sampling window; columns (all required, metric cells may be empty where the
device lacks the metric, e.g. GPM before Hopper):

| column | meaning |
| --- | --- |
| t_start_ns, t_end_ns | window bounds, wall-clock ns (Unix epoch), integers |
| gpm_dram_bw_util_pct | NVML GPM DRAM bandwidth utilisation over the window, % of theoretical peak |
| gpm_sm_util_pct, gpm_tensor_util_pct | NVML GPM SM / tensor-core utilisation, % |
| util_gpu_pct, util_mem_pct | classic nvmlDeviceGetUtilizationRates duty cycles, % (not bandwidth) |
| power_mw | board power, mW |
| energy_mj | cumulative total energy counter, mJ, read at t_end_ns |
| sm_clock_mhz, mem_clock_mhz | clocks, MHz |

Wall-clock ns are ~1.8e18, beyond float64's exact integers, so all time arithmetic stays in int64.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simulator.csvfile import not_csv_reason
from simulator.errors import TraceError

TIME_COLUMNS: tuple[str, ...] = ("t_start_ns", "t_end_ns")
METRIC_COLUMNS: tuple[str, ...] = (
    "gpm_dram_bw_util_pct",
    "gpm_sm_util_pct",
    "gpm_tensor_util_pct",
    "util_gpu_pct",
    "util_mem_pct",
    "power_mw",
    "energy_mj",
    "sm_clock_mhz",
    "mem_clock_mhz",
)
TIMELINE_COLUMNS: tuple[str, ...] = TIME_COLUMNS + METRIC_COLUMNS

# Counter tracks written into traces for Perfetto: (track name, column, scale)
COUNTER_TRACKS: tuple[tuple[str, str, float], ...] = (
    ("GPM DRAM bandwidth (%)", "gpm_dram_bw_util_pct", 1.0),
    ("GPM SM utilization (%)", "gpm_sm_util_pct", 1.0),
    ("GPM tensor utilization (%)", "gpm_tensor_util_pct", 1.0),
    ("GPU power (W)", "power_mw", 1e-3),
)
HBM_TRACK = "HBM bandwidth (GB/s)"
MAX_UTIL_PCT = 105.0

# GPM reports each metric over the interval between two samples (~100 ms, and it lags): a window shorter
# than this is mostly idle time around the steps, so what it integrates is not a measurement of them
GPM_MIN_WINDOW_S = 1.0
# GPM values trail the GPU's activity: on the lent H100 (driver 580.159.04, 2026-11-27) a window read the
# traffic of 0.07 s before it in one run and 0.13 s in another, the same at both edges of copy bursts
# between idle gaps, and integrating a 0.5 s burst's own [t0, t1] found 0.85 of the bytes it copied
# (traces/samples/h100-profiled/checks). A steady window's GPM rate is therefore taken from the rows that
# start at least this long after it starts:
GPM_LAG_S = 0.15
# runs-table columns computed from GPM metrics, left NaN (not measured) for windows under GPM_MIN_WINDOW_S
GPM_RUN_COLUMNS: tuple[str, ...] = (
    "gpm_bytes_per_step",
    "gpm_bw_Bps",
    "mean_dram_util_pct",
    "mean_sm_util_pct",
    "mean_tensor_util_pct",
)


def read_timeline(path: Path | str) -> pd.DataFrame:
    """The timeline rows, sorted by t_start_ns; TraceError (one line) for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"{path}: no such timeline file")
    reason = not_csv_reason(path)
    if reason is not None:
        raise TraceError(f"{path}: not a CSV timeline ({reason})")
    try:
        header = pd.read_csv(path, nrows=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: not a CSV timeline ({str(exc).strip().splitlines()[0]})") from None
    missing = [c for c in TIMELINE_COLUMNS if c not in header.columns]
    if missing:
        raise TraceError(f"{path}: timeline lacks column(s) {', '.join(missing)}")
    try:
        # times as int64: read_csv would turn ~1.8e18 into floats if any cell were odd, so insist
        df = pd.read_csv(
            path, dtype={c: "int64" for c in TIME_COLUMNS} | {c: "float64" for c in METRIC_COLUMNS}
        )
    except (ValueError, pd.errors.ParserError) as exc:
        raise TraceError(f"{path}: unreadable timeline values ({str(exc).strip().splitlines()[0]})") from None
    if df.empty:
        raise TraceError(f"{path}: timeline has no rows")
    bad = int((df["t_end_ns"] <= df["t_start_ns"]).sum())
    if bad:
        raise TraceError(f"{path}: {bad} timeline row(s) end at or before they start")
    for col in (c for c in df.columns if c.endswith("_pct")):
        values = df[col].dropna()
        # a counter may read a hair over 100 %; far outside 0..100 the column is not a utilisation
        outside = values[(values < 0) | (values > MAX_UTIL_PCT)]
        if len(outside):
            raise TraceError(f"{path}: {col} holds values outside 0..100 (e.g. {outside.iloc[0]})")
    for col in ("power_mw", "energy_mj", "sm_clock_mhz", "mem_clock_mhz"):
        if col in df and (df[col].dropna() < 0).any():
            raise TraceError(f"{path}: {col} holds negative values")
    df = df.sort_values("t_start_ns", kind="stable").reset_index(drop=True)
    start, end = df["t_start_ns"].to_numpy(), df["t_end_ns"].to_numpy()
    # windows that overlap by more than half of the shorter one are duplicates, which would count the
    # same traffic twice; a small overlap (windows centred on sample times) is kept
    overlap = np.minimum(end[:-1], end[1:]) - start[1:]
    shorter = np.minimum(end[:-1] - start[:-1], end[1:] - start[1:])
    doubled = int((overlap > 0.5 * shorter).sum())
    if doubled:
        raise TraceError(
            f"{path}: {doubled} timeline window(s) mostly overlap the one before (duplicated rows?)"
        )
    return df


def overlap_ns(timeline: pd.DataFrame, start_ns: int, end_ns: int) -> np.ndarray:
    """Per row, ns of [t_start, t_end) that fall inside [start_ns, end_ns) (int64, >= 0)."""
    a = np.maximum(timeline["t_start_ns"].to_numpy(dtype=np.int64), np.int64(start_ns))
    b = np.minimum(timeline["t_end_ns"].to_numpy(dtype=np.int64), np.int64(end_ns))
    return np.maximum(b - a, 0)


def energy_at(timeline: pd.DataFrame, t_ns: int) -> float:
    """Cumulative energy (mJ) at t_ns, linear between the counter readings (taken at each t_end_ns)."""
    t0 = int(timeline["t_start_ns"].iloc[0])
    x = (timeline["t_end_ns"].to_numpy(dtype=np.int64) - t0).astype(np.float64)
    return float(np.interp(float(t_ns - t0), x, timeline["energy_mj"].to_numpy(dtype=np.float64)))


@dataclass(frozen=True)
class WindowStats:
    """Timeline integrated over one measurement window [start_ns, end_ns)."""

    window_ns: int
    covered_ns: int  # part of the window inside some timeline row
    dram_bytes: float | None  # None without peak or without GPM DRAM values
    mean_dram_util_pct: float | None
    mean_sm_util_pct: float | None
    mean_tensor_util_pct: float | None
    mean_util_mem_pct: float | None
    mean_power_w: float | None
    energy_j: float | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> float | None:
    ok = ~np.isnan(values) & (weights > 0)
    if not ok.any():
        return None
    return float(np.sum(values[ok] * weights[ok]) / np.sum(weights[ok]))


def integrate(timeline: pd.DataFrame, start_ns: int, end_ns: int, peak_Bps: float | None) -> WindowStats:
    """bytes = Σ rows util/100 × peak × overlap_s; means are overlap-weighted; energy from the counter."""
    ov = overlap_ns(timeline, start_ns, end_ns)
    covered = int(ov.sum())
    seconds = ov.astype(np.float64) / 1e9
    util = timeline["gpm_dram_bw_util_pct"].to_numpy(dtype=np.float64)
    has_util = not np.isnan(util[ov > 0]).all() if covered else False
    dram_bytes = None
    if peak_Bps is not None and has_util:
        dram_bytes = float(np.sum(np.nan_to_num(util) / 100.0 * peak_Bps * seconds))
    energy = timeline["energy_mj"].to_numpy(dtype=np.float64)
    energy_j = None
    if covered and not np.isnan(energy).any():
        energy_j = (energy_at(timeline, end_ns) - energy_at(timeline, start_ns)) / 1e3

    def mean(col: str, scale: float = 1.0) -> float | None:
        m = _weighted_mean(timeline[col].to_numpy(dtype=np.float64), seconds)
        return None if m is None else m * scale

    return WindowStats(
        window_ns=int(end_ns - start_ns),
        covered_ns=covered,
        dram_bytes=dram_bytes,
        mean_dram_util_pct=mean("gpm_dram_bw_util_pct"),
        mean_sm_util_pct=mean("gpm_sm_util_pct"),
        mean_tensor_util_pct=mean("gpm_tensor_util_pct"),
        mean_util_mem_pct=mean("util_mem_pct"),
        mean_power_w=mean("power_mw", 1e-3),
        energy_j=energy_j,
    )


@dataclass(frozen=True)
class SteadyGPM:
    """GPM utilisations of a steady window, from the rows that report only its own activity."""

    dram_util_pct: float | None
    sm_util_pct: float | None
    tensor_util_pct: float | None


def gpm_steady(timeline: pd.DataFrame, start_ns: int, end_ns: int, lag_s: float = GPM_LAG_S) -> SteadyGPM:
    """Mean GPM utilisations over the rows [a, b) with a >= start + lag and b <= end + lag: with values
    trailing by `lag_s`, those report the window's own activity and nothing before or after it. The
    means are time-weighted; the steps run at one rate throughout a steady window, so the mean rate
    times its length is its traffic (`gpm_steady_bytes`), where an integral over [start, end) would miss
    what the lag pushes past the end (0.13 of a 1 s copy burst on the H100)."""
    lag = np.int64(round(lag_s * 1e9))
    a = timeline["t_start_ns"].to_numpy(dtype=np.int64)
    b = timeline["t_end_ns"].to_numpy(dtype=np.int64)
    inside = (a >= np.int64(start_ns) + lag) & (b <= np.int64(end_ns) + lag)
    seconds = np.where(inside, (b - a).astype(np.float64) / 1e9, 0.0)

    def mean(col: str) -> float | None:
        return _weighted_mean(timeline[col].to_numpy(dtype=np.float64), seconds)

    return SteadyGPM(
        dram_util_pct=mean("gpm_dram_bw_util_pct"),
        sm_util_pct=mean("gpm_sm_util_pct"),
        tensor_util_pct=mean("gpm_tensor_util_pct"),
    )


def gpm_steady_bytes(
    timeline: pd.DataFrame, peak_Bps: float, start_ns: int, end_ns: int, lag_s: float = GPM_LAG_S
) -> float | None:
    """DRAM bytes of a steady window [start_ns, end_ns): its lag-aware GPM rate (`gpm_steady`) times its
    length; None when no row reports only the window (shorter than the lag and one row)."""
    util = gpm_steady(timeline, start_ns, end_ns, lag_s).dram_util_pct
    if util is None:
        return None
    return util / 100.0 * peak_Bps * (end_ns - start_ns) / 1e9


RUN_MEASUREMENT_COLUMNS: tuple[str, ...] = (
    "gpm_bytes_per_step",
    "gpm_bw_Bps",
    "mean_dram_util_pct",
    "energy_j_per_step",
    "mean_power_w",
    "mean_sm_util_pct",
    "mean_tensor_util_pct",
    "mean_util_mem_pct",
    "nvml_coverage",
)


def run_measurements(
    timeline: pd.DataFrame | None, start_ns: int, end_ns: int, steps: int, peak_Bps: float | None
) -> dict[str, float]:
    """The runs-table columns a timeline gives for one steady window of `steps` steps (NaN where it
    gives nothing): GPM bytes, bandwidth and utilisations from the lag-aware rows (`gpm_steady`), energy
    per step, mean power and memory duty cycle over the window itself, coverage."""
    out = dict.fromkeys(RUN_MEASUREMENT_COLUMNS, float("nan"))
    if timeline is None or timeline.empty:
        return out
    st = integrate(timeline, start_ns, end_ns, peak_Bps)
    gpm = gpm_steady(timeline, start_ns, end_ns)

    def val(v: float | None) -> float:
        return float("nan") if v is None else float(v)

    out.update(
        mean_dram_util_pct=val(gpm.dram_util_pct),
        mean_power_w=val(st.mean_power_w),
        mean_sm_util_pct=val(gpm.sm_util_pct),
        mean_tensor_util_pct=val(gpm.tensor_util_pct),
        mean_util_mem_pct=val(st.mean_util_mem_pct),
        nvml_coverage=st.covered_ns / st.window_ns if st.window_ns else float("nan"),
        energy_j_per_step=val(None if st.energy_j is None else st.energy_j / steps),
    )
    if peak_Bps is not None and gpm.dram_util_pct is not None:
        out["gpm_bw_Bps"] = gpm.dram_util_pct / 100.0 * peak_Bps
        out["gpm_bytes_per_step"] = out["gpm_bw_Bps"] * (end_ns - start_ns) / 1e9 / steps
    return out


def counter_events(
    timeline: pd.DataFrame,
    base_time_ns: int,
    span_ns: tuple[int, int],
    pid: int | str,
    peak_Bps: float | None = None,
) -> list[dict[str, Any]]:
    """Chrome-trace counter events ("ph": "C") for the rows overlapping the trace span.

    ``span_ns`` is in the trace's own ns base; each row gives one event per track at the later of its
    start and the span start, with ts in the trace's µs base, so every event lies inside the span.
    """
    lo, hi = span_ns
    t_start = timeline["t_start_ns"].to_numpy(dtype=np.int64) - np.int64(base_time_ns)
    t_end = timeline["t_end_ns"].to_numpy(dtype=np.int64) - np.int64(base_time_ns)
    rows = np.flatnonzero((t_end > lo) & (t_start < hi))
    tracks = list(COUNTER_TRACKS)
    if peak_Bps is not None:
        tracks.append((HBM_TRACK, "gpm_dram_bw_util_pct", peak_Bps / 100.0 / 1e9))
    out: list[dict[str, Any]] = []
    for r in rows.tolist():
        ts_ns = max(int(t_start[r]), lo)
        ts_us = ts_ns // 1000 + (ts_ns % 1000) / 1000.0  # exact to the ns in the µs base
        for name, col, scale in tracks:
            v = float(timeline[col].iat[r])
            if np.isnan(v):
                continue
            out.append({"ph": "C", "name": name, "pid": pid, "ts": ts_us, "args": {"value": v * scale}})
    return out

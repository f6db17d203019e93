"""HBM bandwidth over a recording (NVML GPM samples), each run's steady loop shaded and labelled, and a
strip of the profiled layers' time windows. Bundles recorded in one session share one chart."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from reports.figures.style import Chart, layout
from reports.tables import si

if TYPE_CHECKING:
    from traces.bundle import Bundle

MAX_LAYER_WINDOWS = 1500  # more shapes make the page sluggish: then one window per profiled step
_SUBLAYER_COLORS: dict[str, str] = {
    "attn": "#54a24b",
    "moe": "#e45756",
    "memory": "#b279a2",
    "ffn": "#4c78a8",
}
Session = tuple[int, int, int]  # first sample start, last sample end, samples: one recording session


def _nvml_key(nvml: pd.DataFrame) -> Session:
    return int(nvml["t_start_ns"].iloc[0]), int(nvml["t_end_ns"].iloc[-1]), len(nvml)


def _sessions(
    bundles: Sequence[Bundle], names: Sequence[str]
) -> tuple[dict[Session, list[tuple[Bundle, str]]], dict[Session, pd.DataFrame]]:
    """Bundles with a GPM timeline, grouped by recording session, and each session's timeline."""
    groups: dict[Session, list[tuple[Bundle, str]]] = {}
    tables: dict[Session, pd.DataFrame] = {}
    for b, name in zip(bundles, names, strict=True):
        nvml = b.table("nvml")
        if nvml is None or nvml.empty or "gpm_dram_bw_util_pct" not in nvml:
            continue
        nvml = nvml.sort_values("t_start_ns").reset_index(drop=True)
        key = _nvml_key(nvml)
        groups.setdefault(key, []).append((b, name))
        tables[key] = nvml
    return groups, tables


def _seconds_since(ns: Any, t0: int) -> Any:
    return (np.asarray(ns, dtype=np.int64) - t0) / 1e9  # int64 first: wall-clock ns are ~1.8e18


def _window(x0: Any, x1: Any, y1: float, color: str, opacity: float, **extra: Any) -> dict[str, Any]:
    """A shaded time window from the bottom of the plot to `y1` (a fraction of its height)."""
    return {
        "type": "rect",
        "xref": "x",
        "yref": "paper",
        "x0": x0,
        "x1": x1,
        "y0": 0,
        "y1": y1,
        "fillcolor": color,
        "opacity": opacity,
        "line": {"width": 0},
        **extra,
    }


def _bandwidth_line(nvml: pd.DataFrame, t0: int, peak: float) -> go.Scatter:
    """GPM DRAM utilisation x peak bandwidth, a step per sample window."""
    bw = nvml["gpm_dram_bw_util_pct"].to_numpy(dtype=np.float64) / 100.0 * peak
    x = np.append(_seconds_since(nvml["t_start_ns"], t0), _seconds_since(nvml["t_end_ns"].iloc[-1], t0))
    return go.Scatter(
        x=x,
        y=np.append(bw, bw[-1]),
        mode="lines",
        line={"shape": "hv", "color": "#222", "width": 1.5},
        name="HBM bandwidth (GPM)",
        hovertemplate="t %{x:.2f} s<br>%{y:.3s}B/s<extra></extra>",
    )


def _steady_loops(
    runs: pd.DataFrame | None, name: str, color: str, t0: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A shaded window and a label per run's steady loop."""
    shapes: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    if runs is None or not {"steady_start_ns", "steady_end_ns"} <= set(runs.columns):
        return shapes, annotations
    for r in runs.itertuples():
        x0, x1 = _seconds_since(r.steady_start_ns, t0), _seconds_since(r.steady_end_ns, t0)
        shapes.append(_window(x0, x1, 1, color, 0.15, layer="below"))
        gbps = getattr(r, "gpm_bw_Bps", np.nan)
        annotations.append(
            {
                "x": (x0 + x1) / 2,
                "y": 1.0,
                "xref": "x",
                "yref": "paper",
                "text": f"{name} b{r.batch}",
                "showarrow": False,
                "textangle": -90,
                "yanchor": "top",
                "font": {"size": 10, "color": color},
                "hovertext": f"{name}, batch {r.batch}: steady loop of {r.steps} steps, "
                f"{si(gbps, 'B/s')} mean",
            }
        )
    return shapes, annotations


def _layer_windows(layers: pd.DataFrame | None) -> pd.DataFrame:
    """Time windows of the profiled layers (sublayer, first_ts_ns, last_end_ns); per step when too many."""
    cols = ["sublayer", "first_ts_ns", "last_end_ns"]
    if layers is None or not {"first_ts_ns", "last_end_ns"} <= set(layers.columns):
        return pd.DataFrame(columns=cols)
    if "sublayer" not in layers:
        layers = layers.assign(sublayer="layer")
    if len(layers) <= MAX_LAYER_WINDOWS:
        return layers[cols]
    g = layers.groupby(["batch", "step"], sort=False).agg(
        first_ts_ns=("first_ts_ns", "min"), last_end_ns=("last_end_ns", "max")
    )
    return g.reset_index().assign(sublayer="step")[cols]


def _layer_strip(layers: pd.DataFrame | None, t0: int, kinds_seen: set[str]) -> list[dict[str, Any]]:
    """The bottom strip: a window per profiled layer, coloured by sublayer (one legend entry each)."""
    shapes = []
    for r in _layer_windows(layers).itertuples():
        kind = str(getattr(r, "sublayer", "layer"))
        first = kind not in kinds_seen
        kinds_seen.add(kind)
        shapes.append(
            _window(
                _seconds_since(r.first_ts_ns, t0),
                _seconds_since(r.last_end_ns, t0),
                0.06,
                _SUBLAYER_COLORS.get(kind, "#999"),
                0.9,
                name=f"profiled {kind} kernels",
                showlegend=first,
                legendgroup=f"layer-{kind}",
            )
        )
    return shapes


def timeline_charts(bundles: Sequence[Bundle], names: Sequence[str], colors: dict[str, str]) -> list[Chart]:
    """GPM HBM bandwidth (GB/s) vs time, each run's steady window and profiled layer windows shaded.

    Bundles recorded in one session carry the same timeline: they share one chart.
    """
    groups, tables = _sessions(bundles, names)
    charts = []
    for i, (key, members) in enumerate(groups.items()):
        t0 = key[0]
        peak = float(members[0][0].meta.get("device", {}).get("peak_hbm_Bps") or np.nan)
        fig = go.Figure(_bandwidth_line(tables[key], t0, peak))
        shapes, annotations = [], []
        kinds_seen: set[str] = set()
        for b, name in members:
            runs_shapes, runs_labels = _steady_loops(b.table("runs"), name, colors.get(name, "#888"), t0)
            shapes += runs_shapes
            annotations += runs_labels
            shapes += _layer_strip(b.table("layers"), t0, kinds_seen)
        when = pd.Timestamp(t0, unit="ns", tz="UTC").strftime("%Y-%m-%d %H:%M:%S UTC")
        layout(
            fig,
            "HBM bandwidth over the recording (NVML GPM, ~100 ms windows)",
            f"time since {when} (s)",
            "HBM bandwidth (B/s)",
            shapes=shapes,
            annotations=annotations,
            height=480,
        )
        fig.update_yaxes(tickformat="~s", ticksuffix="B/s", rangemode="tozero")
        who = ", ".join(n for _, n in members)
        charts.append(
            Chart(
                id=f"chart-timeline-{i}",
                title=f"Bandwidth timeline ({who})",
                figure=fig,
                caption="Shaded: each run's steady loop (model, batch size). Bottom strip: layer windows "
                "of the profiled steps (zoom in: they last microseconds).",
            )
        )
    return charts

"""Plotly figures of simulation tables, trace bundles and validations (computing stays in validation.py).

Every builder is a pure function of DataFrames returning `Chart`s (a figure with a stable div id) or an
empty list when its data is absent; html.py lays them out. Bytes, bandwidth and time axes use SI prefixes
(d3 "~s" format, decimal units as HBM bandwidths are quoted).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from reports.tables import seconds, si
from simulator.config import MEMORY_KINDS, HardwareConfig

if TYPE_CHECKING:
    from reports.validation import ValidationResult
    from traces.bundle import Bundle

PALETTE: tuple[str, ...] = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
)
# layer groups drawn per model: the whole step, attention, and the FFN-position families
GROUP_DASH: dict[str, str] = {
    "total": "solid",
    "attention": "dot",
    "dense": "dash",
    "moe": "dashdot",
    "memory": "longdash",
    "embedding": "longdashdot",
    "head": "longdashdot",
}
KIND_SYMBOL: dict[str, str] = {
    "attention": "circle",
    "dense": "square",
    "moe": "diamond",
    "memory": "star",
    "embedding": "triangle-up",
    "head": "triangle-down",
    "total": "x",
}
LEVEL_SYMBOL: dict[str, str] = {"ideal": "circle", "naive": "square", "eager": "diamond"}
BYTE_PARTS: tuple[tuple[str, str, str], ...] = (
    ("weight_bytes_ideal", "weights", "#4c78a8"),
    ("act_bytes_ideal", "activations", "#f58518"),
    ("kv_read_bytes", "KV read", "#54a24b"),
    ("kv_write_bytes", "KV write", "#e45756"),
)
STEP_CAPTION = (
    "Lines: predicted (thick: whole step; dotted: attention; dash-dot: MoE; long dash: memory layers; "
    "dash: dense FFN)."
)
BASE_LAYOUT: dict[str, Any] = {
    "template": "plotly_white",
    "height": 460,
    "margin": {"l": 70, "r": 20, "t": 60, "b": 60},
    "legend": {"font": {"size": 11}},
    "hoverlabel": {"font": {"size": 12}},
}


@dataclass(frozen=True)
class Chart:
    """One figure of the report: `id` names its div; `caption` is one sentence under it."""

    id: str
    title: str
    figure: go.Figure
    caption: str = ""


def group_of(kind: str) -> str:
    """Layer kind -> drawn group (all memory-layer families share one group)."""
    return "memory" if kind in MEMORY_KINDS else kind


def model_colors(names: Iterable[str]) -> dict[str, str]:
    """A fixed colour per model, in order of first appearance, used by every chart."""
    out: dict[str, str] = {}
    for n in names:
        if n not in out:
            out[n] = PALETTE[len(out) % len(PALETTE)]
    return out


def _layout(fig: go.Figure, title: str, x: str, y: str, **extra: Any) -> go.Figure:
    fig.update_layout(**{**BASE_LAYOUT, **extra}, title={"text": title, "x": 0.01})
    fig.update_xaxes(title_text=x)
    fig.update_yaxes(title_text=y)
    return fig


_PREFIXES: tuple[tuple[float, str], ...] = (
    (1e15, "P"),
    (1e12, "T"),
    (1e9, "G"),
    (1e6, "M"),
    (1e3, "k"),
    (1.0, ""),
    (1e-3, "m"),
    (1e-6, "µ"),
    (1e-9, "n"),
    (1e-12, "p"),
)


def si_label(value: float, unit: str = "") -> str:
    """100 MB, 2 ms, 500 µs, 10k: decimal SI prefixes for tick labels (plain numbers below 1 without unit)."""
    if not unit and abs(value) < 1:
        return f"{value:g}"
    for factor, prefix in _PREFIXES:
        if abs(value) >= factor * 0.9999:
            return f"{value / factor:g} {prefix}{unit}".strip() if unit else f"{value / factor:g}{prefix}"
    return f"{value:g} {unit}".strip()


def log_ticks(lo: float, hi: float, unit: str = "") -> tuple[list[float], list[str]]:
    """Tick values and SI labels for a log axis over [lo, hi]: 1-2-5 per decade, fewer on wide ranges.

    Plotly's own log ticks label every minor step (1, 2, ... 9) and drop the unit suffix on some of them.
    """
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo <= 0 or hi <= lo:
        return [], []
    e0, e1 = int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi)))
    decades = e1 - e0
    steps = (1, 2, 5) if decades <= 4 else (1,)
    every = max(1, decades // 8)  # at most ~8 decade labels
    vals = [m * 10.0**e for e in range(e0, e1 + 1) if (e - e0) % every == 0 for m in steps]
    vals = [v for v in vals if lo * 0.999 <= v <= hi * 1.001]
    return vals, [si_label(v, unit) for v in vals]


def _trace_values(fig: go.Figure, axis: str) -> np.ndarray:
    parts = []
    for tr in fig.data:
        values = getattr(tr, axis, None)
        if values is None:
            continue
        arr = pd.to_numeric(pd.Series(np.asarray(values, dtype=object)), errors="coerce").to_numpy(
            dtype=float
        )
        parts.append(arr[np.isfinite(arr) & (arr > 0)])
    return np.concatenate(parts) if parts else np.empty(0)


def _log_axes(
    fig: go.Figure, x_unit: str | None = "", y_unit: str | None = "", x_ticks: Sequence[float] | None = None
) -> None:
    """Log-log axes with SI tick labels computed from the figure's data (x_ticks: explicit x ticks)."""
    for axis, unit, update in (("x", x_unit, fig.update_xaxes), ("y", y_unit, fig.update_yaxes)):
        update(type="log", showgrid=True)
        v = _trace_values(fig, axis)
        if axis == "x" and x_ticks is not None:
            update(tickvals=list(x_ticks), ticktext=[f"{t:g}" for t in x_ticks])
        elif v.size and unit is not None:
            vals, text = log_ticks(float(v.min()), float(v.max()), unit)
            if len(vals) >= 2:
                update(tickvals=vals, ticktext=text)


def _contexts_label(df: pd.DataFrame, ctx: int) -> str:
    return f", ctx {ctx}" if df["context"].nunique() > 1 else ""


def _grouped(sim: pd.DataFrame) -> pd.DataFrame:
    """Per (model, context, batch, group): summed counts and time; the whole step as group 'total'."""
    layers = sim[sim["layer"] != "total"].assign(group=lambda d: d["kind"].map(group_of))
    cols = [
        "bytes_ideal",
        "bytes_naive",
        "weight_bytes_ideal",
        "act_bytes_ideal",
        "kv_read_bytes",
        "kv_write_bytes",
        "flops",
        "time_s",
        "time_naive_s",
        "t_compute_s",
        "t_memory_s",
    ]
    keys = ["model", "context", "batch", "group"]
    g = layers.groupby(keys, sort=False)[cols].sum().reset_index()
    g["bound"] = np.where(g["t_compute_s"] >= g["t_memory_s"], "compute", "memory")
    total = sim[sim["layer"] == "total"].assign(group="total")[[*keys, *cols, "bound"]]
    return pd.concat([total, g], ignore_index=True)


def _hover_bytes(r: pd.Series) -> str:
    return (
        f"<b>{r['model']}</b> · {r['group']}<br>batch {r['batch']}, context {r['context']}<br>"
        f"ideal {si(r['bytes_ideal'])} (naive {si(r['bytes_naive'])})<br>"
        f"weights {si(r['weight_bytes_ideal'])} · act {si(r['act_bytes_ideal'])} · "
        f"KV read {si(r['kv_read_bytes'])} · KV write {si(r['kv_write_bytes'])}<br>"
        f"roofline {seconds(r['time_s'])}, {r['bound']}-bound"
    )


# ------------------------------------------------------------------------------------------ per step


def step_charts(
    sim: pd.DataFrame, colors: dict[str, str], validations: Sequence[ValidationResult] = ()
) -> list[Chart]:
    """Bytes and time per step vs batch size, one line per model and layer group, log-log (a totals-only
    table draws the whole-step lines)."""
    if sim is None or sim.empty:
        return []
    g = _grouped(sim)
    g["hover"] = g.apply(_hover_bytes, axis=1)
    charts = []
    for what, col, unit, ylabel in (
        ("bytes", "bytes_ideal", "B", "HBM bytes per step (ideal)"),
        ("time", "time_s", "s", "roofline time per step"),
    ):
        fig = go.Figure()
        for (model, ctx, group), d in g.groupby(["model", "context", "group"], sort=False):
            d = d.sort_values("batch")
            fig.add_trace(
                go.Scatter(
                    x=d["batch"],
                    y=d[col],
                    mode="lines+markers",
                    name=f"{model} · {group}{_contexts_label(g, ctx)}",
                    legendgroup=str(model),
                    line={
                        "color": colors.get(model),
                        "dash": GROUP_DASH.get(group, "solid"),
                        "width": 3 if group == "total" else 1.8,
                    },
                    marker={"symbol": KIND_SYMBOL.get(group, "circle"), "size": 7},
                    hovertext=d["hover"],
                    hoverinfo="text",
                )
            )
        for v in validations:
            s = v.steps.sort_values("batch")
            meas = (
                [("meas_bytes_gpm", "measured (GPM)")]
                if what == "bytes"
                else [("meas_step_s", "measured step"), ("meas_kernel_s", "measured kernel sum")]
            )
            for mcol, label in meas:
                if s[mcol].notna().any():
                    fig.add_trace(
                        go.Scatter(
                            x=s["batch"],
                            y=s[mcol],
                            mode="markers",
                            name=f"{v.model} · {label}",
                            legendgroup=v.model,
                            marker={
                                "color": colors.get(v.model),
                                "size": 11,
                                "symbol": "circle-open" if "kernel" not in mcol else "x-thin-open",
                                "line": {"width": 2},
                            },
                            hovertext=[
                                f"<b>{v.model}</b> {label}<br>batch {b}<br>"
                                f"{si(y) if unit == 'B' else seconds(y)}"
                                for b, y in zip(s["batch"], s[mcol], strict=True)
                            ],
                            hoverinfo="text",
                        )
                    )
        title = f"{ylabel[0].upper()}{ylabel[1:]} vs batch size"
        _layout(fig, title, "batch size (sequences per step)", f"{ylabel} ({unit})")
        _log_axes(fig, None, unit, x_ticks=sorted(g["batch"].unique()))
        charts.append(
            Chart(
                id=f"chart-step-{what}",
                title=f"{'Bytes' if what == 'bytes' else 'Time'} per step vs batch size",
                figure=fig,
                caption=STEP_CAPTION + (" Hollow markers: measured." if validations else ""),
            )
        )
    return charts


# ------------------------------------------------------------------------------------------ roofline


def roofline_chart(
    sim: pd.DataFrame | None,
    hardware: Sequence[HardwareConfig],
    colors: dict[str, str],
    validations: Sequence[ValidationResult] = (),
    dtype: str = "bf16",
) -> list[Chart]:
    """Intensity (FLOP/byte) vs FLOP/s: every layer x batch, predicted (hollow) and achieved (filled)."""
    rows = []
    if sim is not None and not sim.empty:
        rows.append(sim[(sim["layer"] != "total") & (sim["bytes_ideal"] > 0) & (sim["flops"] > 0)])
    pred = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    if pred.empty and not validations:
        return []
    fig = go.Figure()
    xs = [1e-2, 1e4]
    if not pred.empty:
        pred = pred.assign(
            group=pred["kind"].map(group_of),
            x=pred["flops"] / pred["bytes_ideal"],
            y=pred["flops"] / pred["time_s"],
        )
        xs = [float(pred["x"].min()) / 3, float(pred["x"].max()) * 3]
        for (model, group), d in pred.groupby(["model", "group"], sort=False):
            fig.add_trace(
                go.Scatter(
                    x=d["x"],
                    y=d["y"],
                    mode="markers",
                    name=f"{model} · {group} (predicted)",
                    legendgroup=str(model),
                    marker={
                        "color": colors.get(model),
                        "symbol": f"{KIND_SYMBOL.get(group, 'circle')}-open",
                        "size": 9,
                        "line": {"width": 1.5},
                    },
                    hovertext=[
                        f"<b>{model}</b> {r.layer} ({r.kind})<br>batch {r.batch}<br>"
                        f"intensity {r.x:.3g} FLOP/B<br>attainable {si(r.y, 'FLOP/s')}<br>{r.bound}-bound"
                        for r in d.itertuples()
                    ],
                    hoverinfo="text",
                )
            )
    for v in validations:
        d = v.layers.dropna(subset=["kind", "meas_kernel_s"])
        d = d[(d["flops"] > 0) & (d["pred_bytes_ideal"] > 0)]
        if d.empty:
            continue
        d = d.assign(
            group=d["kind"].map(group_of),
            x=d["flops"] / d["pred_bytes_ideal"],
            y=d["flops"] / d["meas_kernel_s"],
        )
        for group, dg in d.groupby("group", sort=False):
            fig.add_trace(
                go.Scatter(
                    x=dg["x"],
                    y=dg["y"],
                    mode="markers",
                    name=f"{v.model} · {group} (achieved)",
                    legendgroup=v.model,
                    marker={
                        "color": colors.get(v.model),
                        "symbol": KIND_SYMBOL.get(str(group), "circle"),
                        "size": 9,
                    },
                    hovertext=[
                        f"<b>{v.model}</b> {r.layer} ({r.kind})<br>batch {r.batch}<br>"
                        f"intensity {r.x:.3g} FLOP/B<br>achieved {si(r.y, 'FLOP/s')} "
                        f"(kernel time {seconds(r.meas_kernel_s)})<br>"
                        f"achieved bandwidth {si(r.achieved_bw_Bps, 'B/s')}"
                        for r in dg.itertuples()
                    ],
                    hoverinfo="text",
                )
            )
        xs = [min(xs[0], float(d["x"].min()) / 3), max(xs[1], float(d["x"].max()) * 3)]
    for i, hw in enumerate(hardware):
        x = np.logspace(np.log10(max(xs[0], 1e-3)), np.log10(max(xs[1], 1e3)), 200)
        peak = hw.flops_for(dtype)
        bw = hw.hbm_bandwidth.value
        fig.add_trace(
            go.Scatter(
                x=x,
                y=np.minimum(peak, bw * x),
                mode="lines",
                name=f"roof {hw.name} ({dtype})",
                line={"color": "#333", "width": 2, "dash": "solid" if i == 0 else "dot"},
                hovertemplate=f"{hw.name}: {si(bw, 'B/s')}, {si(peak, 'FLOP/s')}<extra></extra>",
            )
        )
    _layout(
        fig, "Roofline: every layer and batch size", "arithmetic intensity (FLOP per ideal byte)", "FLOP/s"
    )
    _log_axes(fig, "", "FLOP/s")
    return [
        Chart(
            id="chart-roofline",
            title="Roofline",
            figure=fig,
            caption="Hollow: attainable (predicted roofline time); filled: achieved with the measured "
            "kernel time. Lines: memory roof (HBM bandwidth x intensity) up to the compute roof.",
        )
    ]


# ------------------------------------------------------------------------------------------ per layer


def layer_bytes_charts(sim: pd.DataFrame | None, batches: Sequence[int] | None = None) -> list[Chart]:
    """Per model: stacked ideal bytes per layer (weights, activations, KV read/write), batch dropdown."""
    if sim is None or sim.empty or not (sim["layer"] != "total").any():
        return []
    charts = []
    for i, (model, d) in enumerate(sim[sim["layer"] != "total"].groupby("model", sort=False)):
        ctx = int(d["context"].iloc[0])
        d = d[d["context"] == ctx]
        bs = [b for b in sorted(d["batch"].unique()) if batches is None or b in batches] or sorted(
            d["batch"].unique()
        )
        fig = go.Figure()
        for j, b in enumerate(bs):
            db = d[d["batch"] == b]
            for col, label, color in BYTE_PARTS:
                fig.add_trace(
                    go.Bar(
                        x=db["layer"],
                        y=db[col],
                        name=label,
                        marker_color=color,
                        visible=j == 0,
                        legendgroup=label,
                        showlegend=True,
                        hovertext=[
                            f"<b>{model}</b> {r.layer} ({r.kind})<br>batch {b}<br>"
                            f"{label}: {si(getattr(r, col))}"
                            f"<br>layer total {si(r.bytes_ideal)} (naive {si(r.bytes_naive)})"
                            for r in db.itertuples()
                        ],
                        hoverinfo="text",
                    )
                )
        n = len(BYTE_PARTS)
        buttons = [
            {
                "label": f"batch {b}",
                "method": "update",
                "args": [
                    {"visible": [k // n == j for k in range(n * len(bs))]},
                    {"title.text": f"{model}: ideal bytes per layer, batch {b}, context {ctx}"},
                ],
            }
            for j, b in enumerate(bs)
        ]
        _layout(
            fig,
            f"{model}: ideal bytes per layer, batch {bs[0]}, context {ctx}",
            "layer",
            "bytes per step (B)",
            barmode="stack",
            margin={**BASE_LAYOUT["margin"], "t": 100},
            updatemenus=[
                {
                    "buttons": buttons,
                    "direction": "down",
                    "x": 0.0,
                    "xanchor": "left",
                    "y": 1.02,
                    "yanchor": "bottom",
                    "showactive": True,
                }
            ],
        )
        fig.update_yaxes(tickformat="~s", ticksuffix="B")
        charts.append(
            Chart(
                id=f"chart-layer-bytes-{i}",
                title=f"Bytes per layer: {model}",
                figure=fig,
                caption="Choose the batch size in the menu above the plot.",
            )
        )
    return charts


# ------------------------------------------------------------------------------------------ timeline


def _nvml_key(nvml: pd.DataFrame) -> tuple[int, int, int]:
    return int(nvml["t_start_ns"].iloc[0]), int(nvml["t_end_ns"].iloc[-1]), len(nvml)


def timeline_charts(bundles: Sequence[Bundle], names: Sequence[str], colors: dict[str, str]) -> list[Chart]:
    """GPM HBM bandwidth (GB/s) vs time, each run's steady window and profiled layer windows shaded.

    Bundles recorded in one session carry the same timeline: they share one chart.
    """
    groups: dict[tuple[int, int, int], list[tuple[Bundle, str]]] = {}
    tables: dict[tuple[int, int, int], pd.DataFrame] = {}
    for b, name in zip(bundles, names, strict=True):
        nvml = b.table("nvml")
        if nvml is None or nvml.empty or "gpm_dram_bw_util_pct" not in nvml:
            continue
        nvml = nvml.sort_values("t_start_ns").reset_index(drop=True)
        key = _nvml_key(nvml)
        groups.setdefault(key, []).append((b, name))
        tables[key] = nvml
    charts = []
    for i, (key, members) in enumerate(groups.items()):
        nvml = tables[key]
        t0 = key[0]
        peak = float(members[0][0].meta.get("device", {}).get("peak_hbm_Bps") or np.nan)

        def rel(ns: Any, t0: int = t0) -> Any:
            return (np.asarray(ns, dtype=np.int64) - t0) / 1e9  # int64 first: wall-clock ns are ~1.8e18

        bw = nvml["gpm_dram_bw_util_pct"].to_numpy(dtype=np.float64) / 100.0 * peak
        x = np.append(rel(nvml["t_start_ns"]), rel(nvml["t_end_ns"].iloc[-1]))
        y = np.append(bw, bw[-1])
        fig = go.Figure(
            go.Scatter(
                x=x,
                y=y,
                mode="lines",
                line={"shape": "hv", "color": "#222", "width": 1.5},
                name="HBM bandwidth (GPM)",
                hovertemplate="t %{x:.2f} s<br>%{y:.3s}B/s<extra></extra>",
            )
        )
        shapes, annotations = [], []
        kinds_seen: set[str] = set()
        for b, name in members:
            color = colors.get(name, "#888")
            runs = b.table("runs")
            if runs is not None and {"steady_start_ns", "steady_end_ns"} <= set(runs.columns):
                for r in runs.itertuples():
                    x0, x1 = rel(r.steady_start_ns), rel(r.steady_end_ns)
                    shapes.append(
                        {
                            "type": "rect",
                            "xref": "x",
                            "yref": "paper",
                            "x0": x0,
                            "x1": x1,
                            "y0": 0,
                            "y1": 1,
                            "fillcolor": color,
                            "opacity": 0.15,
                            "line": {"width": 0},
                            "layer": "below",
                        }
                    )
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
            for r in _layer_windows(b.table("layers")).itertuples():
                kind = str(getattr(r, "sublayer", "layer"))
                first = kind not in kinds_seen
                kinds_seen.add(kind)
                shapes.append(
                    {
                        "type": "rect",
                        "xref": "x",
                        "yref": "paper",
                        "x0": rel(r.first_ts_ns),
                        "x1": rel(r.last_end_ns),
                        "y0": 0,
                        "y1": 0.06,
                        "line": {"width": 0},
                        "fillcolor": _SUBLAYER_COLORS.get(kind, "#999"),
                        "opacity": 0.9,
                        "name": f"profiled {kind} kernels",
                        "showlegend": first,
                        "legendgroup": f"layer-{kind}",
                    }
                )
        when = pd.Timestamp(t0, unit="ns", tz="UTC").strftime("%Y-%m-%d %H:%M:%S UTC")
        _layout(
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


MAX_LAYER_WINDOWS = 1500  # more shapes make the page sluggish: then one window per profiled step


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


_SUBLAYER_COLORS: dict[str, str] = {
    "attn": "#54a24b",
    "moe": "#e45756",
    "memory": "#b279a2",
    "ffn": "#4c78a8",
}


# ------------------------------------------------------------------------------------------ validation


def _band(fig: go.Figure, lo: float, hi: float, unit: str) -> None:
    """y = x and the +-25 % band around it, over [lo, hi]."""
    x = np.logspace(np.log10(lo), np.log10(hi), 50)
    fig.add_trace(
        go.Scatter(x=x, y=0.75 * x, mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip")
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=1.25 * x,
            mode="lines",
            line={"width": 0},
            fill="tonexty",
            fillcolor="rgba(120,120,120,0.15)",
            name="±25 %",
            hoverinfo="skip",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=x,
            mode="lines",
            line={"color": "#555", "dash": "dash", "width": 1},
            name="predicted = measured",
            hoverinfo="skip",
        )
    )


def _span(values: Sequence[pd.Series]) -> tuple[float, float] | None:
    if not values:
        return None
    v = pd.concat([pd.to_numeric(s, errors="coerce") for s in values], ignore_index=True).to_numpy(
        dtype=float
    )
    v = v[np.isfinite(v) & (v > 0)]
    return (float(v.min()) / 2, float(v.max()) * 2) if v.size else None


def pred_vs_meas_charts(validations: Sequence[ValidationResult], colors: dict[str, str]) -> list[Chart]:
    """Predicted vs measured bytes per step (every level vs GPM), and roofline vs kernel time per layer."""
    charts = []
    fig = go.Figure()
    spans = []
    for v in validations:
        s = v.steps.dropna(subset=["meas_bytes_gpm"])
        for level in ("ideal", "naive", "eager"):
            col = f"pred_bytes_{level}"
            if col not in s or s[col].isna().all():
                continue
            spans += [s["meas_bytes_gpm"], s[col]]
            fig.add_trace(
                go.Scatter(
                    x=s["meas_bytes_gpm"],
                    y=s[col],
                    mode="markers+text" if level == "ideal" else "markers",
                    name=f"{v.model} · {level}",
                    legendgroup=v.model,
                    text=[f"b{b}" for b in s["batch"]],
                    textposition="top center",
                    textfont={"size": 9, "color": colors.get(v.model)},
                    marker={
                        "color": colors.get(v.model),
                        "symbol": LEVEL_SYMBOL[level],
                        "size": 10,
                        "opacity": 1.0 if level == "ideal" else 0.6,
                    },
                    hovertext=[
                        f"<b>{v.model}</b> batch {r.batch}<br>{level}: {si(getattr(r, col))}<br>"
                        f"measured (GPM): {si(r.meas_bytes_gpm)}<br>"
                        f"error {getattr(r, f'err_{level}_pct'):+.1f} %"
                        for r in s.itertuples()
                    ],
                    hoverinfo="text",
                )
            )
    span = _span(spans)
    if span:
        _band(fig, *span, "B")
        _layout(
            fig,
            "Predicted vs measured bytes per step",
            "measured HBM bytes per step (NVML GPM)",
            "predicted bytes per step",
        )
        _log_axes(fig, "B", "B")
        charts.append(
            Chart(
                id="chart-pred-meas-bytes",
                title="Predicted vs measured bytes per step",
                figure=fig,
                caption="Markers: prediction levels (circle ideal, square naive, diamond eager); "
                "band: ±25 % of the measurement.",
            )
        )
    fig = go.Figure()
    spans = []
    for v in validations:
        d = v.layers.dropna(subset=["kind", "meas_kernel_s", "pred_time_s"])
        if d.empty:
            continue
        d = d.assign(group=d["kind"].map(group_of))
        spans += [d["meas_kernel_s"], d["pred_time_s"]]
        for group, dg in d.groupby("group", sort=False):
            fig.add_trace(
                go.Scatter(
                    x=dg["meas_kernel_s"],
                    y=dg["pred_time_s"],
                    mode="markers",
                    name=f"{v.model} · {group}",
                    legendgroup=v.model,
                    marker={
                        "color": colors.get(v.model),
                        "symbol": KIND_SYMBOL.get(str(group), "circle"),
                        "size": 9,
                    },
                    hovertext=[
                        f"<b>{v.model}</b> {r.layer}, batch {r.batch}<br>"
                        f"roofline {seconds(r.pred_time_s)}<br>"
                        f"kernels {seconds(r.meas_kernel_s)}<br>error {r.err_time_pct:+.1f} %"
                        for r in dg.itertuples()
                    ],
                    hoverinfo="text",
                )
            )
    span = _span(spans)
    if span:
        _band(fig, *span, "s")
        _layout(
            fig,
            "Per-layer time: roofline vs measured kernel time",
            "measured kernel time per step (s)",
            "predicted roofline time (s)",
        )
        _log_axes(fig, "s", "s")
        charts.append(
            Chart(
                id="chart-pred-meas-time",
                title="Predicted vs measured time per layer",
                figure=fig,
                caption="Points below the band: kernels slower than the roofline (launch overhead, "
                "small kernels, unfused ops).",
            )
        )
    return charts


def distinct_chart(
    sim: pd.DataFrame | None, colors: dict[str, str], validations: Sequence[ValidationResult] = ()
) -> list[Chart]:
    """Distinct experts / memory rows per step and layer vs batch: formula (lines), measured (markers)."""
    if sim is None or sim.empty:
        return []
    sparse = sim[(sim["layer"] != "total") & sim["distinct_items"].notna()]
    if sparse.empty:
        return []
    fig = go.Figure()
    per = (
        sparse.groupby(["model", "context", "kind", "batch"], sort=False)[
            ["distinct_items", "items_requested"]
        ]
        .mean()
        .reset_index()
    )
    for (model, ctx, kind), d in per.groupby(["model", "context", "kind"], sort=False):
        d = d.sort_values("batch")
        label = f"{model} · {kind}{_contexts_label(per, ctx)}"
        fig.add_trace(
            go.Scatter(
                x=d["batch"],
                y=d["distinct_items"],
                mode="lines",
                name=f"{label} formula",
                legendgroup=str(model),
                line={"color": colors.get(model), "dash": GROUP_DASH.get(group_of(kind), "solid")},
                hovertemplate=f"{label}<br>batch %{{x}}<br>expected distinct %{{y:.4s}}<extra></extra>",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=d["batch"],
                y=d["items_requested"],
                mode="lines",
                name=f"{label} requested (T·k)",
                legendgroup=str(model),
                line={"color": colors.get(model), "dash": "dot", "width": 1},
                opacity=0.5,
                hovertemplate=f"{label}<br>batch %{{x}}<br>selections %{{y:.4s}}<extra></extra>",
            )
        )
    for v in validations:
        r = v.routing.dropna(subset=["meas_distinct"])
        if r.empty:
            continue
        m = (
            r.groupby(["kind", "batch"])[["meas_distinct", "meas_distinct_min", "meas_distinct_max"]]
            .agg({"meas_distinct": "mean", "meas_distinct_min": "min", "meas_distinct_max": "max"})
            .reset_index()
        )
        for kind, d in m.groupby("kind"):
            fig.add_trace(
                go.Scatter(
                    x=d["batch"],
                    y=d["meas_distinct"],
                    mode="markers",
                    name=f"{v.model} · {kind} measured",
                    legendgroup=v.model,
                    marker={
                        "color": colors.get(v.model),
                        "size": 10,
                        "symbol": "circle-open",
                        "line": {"width": 2},
                    },
                    error_y={
                        "type": "data",
                        "symmetric": False,
                        "array": d["meas_distinct_max"] - d["meas_distinct"],
                        "arrayminus": d["meas_distinct"] - d["meas_distinct_min"],
                    },
                    hovertemplate=f"{v.model} {kind} measured<br>batch %{{x}}<br>"
                    "distinct %{y:.4s}<extra></extra>",
                )
            )
    _layout(
        fig,
        "Distinct experts / memory rows touched per layer and step",
        "batch size (sequences per step)",
        "distinct items per layer",
    )
    _log_axes(fig, None, "", x_ticks=sorted(per["batch"].unique()))
    note = (
        ""
        if any(v.routing["meas_distinct"].notna().any() for v in validations)
        else (" No measured routing in the given bundles.")
    )
    return [
        Chart(
            id="chart-distinct",
            title="Distinct experts / rows vs batch size",
            figure=fig,
            caption="Lines: expected distinct items (formula); dotted: selections T·k (no reuse)." + note,
        )
    ]

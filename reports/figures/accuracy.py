"""Predicted against measured, on log-log axes around the line predicted = measured with a ±25 % band:
bytes per step (every prediction level vs NVML GPM) and per-layer roofline vs kernel time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from reports.figures.marks import group_points, points
from reports.figures.style import LEVEL_SYMBOL, Chart, layout, log_axes, with_groups
from reports.tables import seconds, si

if TYPE_CHECKING:
    from reports.validation import ValidationResult


def _band(fig: go.Figure, lo: float, hi: float) -> None:
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


def _identity_chart(
    chart: Chart, spans: Sequence[pd.Series], unit: str, title: str, x: str, y: str
) -> list[Chart]:
    """`chart` with the band over the values' span, its layout and log axes in `unit`; [] without values."""
    span = _span(spans)
    if not span:
        return []
    fig = chart.figure
    _band(fig, *span)
    layout(fig, title, x, y)
    log_axes(fig, unit, unit)
    return [chart]


def _bytes_chart(validations: Sequence[ValidationResult], colors: dict[str, str]) -> list[Chart]:
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
                points(
                    s["meas_bytes_gpm"],
                    s[col],
                    f"{v.model} · {level}",
                    v.model,
                    {
                        "color": colors.get(v.model),
                        "symbol": LEVEL_SYMBOL[level],
                        "size": 10,
                        "opacity": 1.0 if level == "ideal" else 0.6,
                    },
                    [
                        f"<b>{v.model}</b> batch {r.batch}<br>{level}: {si(getattr(r, col))}<br>"
                        f"measured (GPM): {si(r.meas_bytes_gpm)}<br>"
                        f"error {getattr(r, f'err_{level}_pct'):+.1f} %"
                        for r in s.itertuples()
                    ],
                    mode="markers+text" if level == "ideal" else "markers",
                    text=[f"b{b}" for b in s["batch"]],
                    textposition="top center",
                    textfont={"size": 9, "color": colors.get(v.model)},
                )
            )
    chart = Chart(
        id="chart-pred-meas-bytes",
        title="Predicted vs measured bytes per step",
        figure=fig,
        caption="Markers: prediction levels (circle ideal, square naive, diamond eager); "
        "band: ±25 % of the measurement.",
    )
    return _identity_chart(
        chart,
        spans,
        "B",
        "Predicted vs measured bytes per step",
        "measured HBM bytes per step (NVML GPM)",
        "predicted bytes per step",
    )


def _time_text(model: str, r: Any) -> str:
    return (
        f"<b>{model}</b> {r.layer}, batch {r.batch}<br>"
        f"roofline {seconds(r.pred_time_s)}<br>"
        f"kernels {seconds(r.meas_kernel_s)}<br>error {r.err_time_pct:+.1f} %"
    )


def _eager_time_text(model: str, r: Any) -> str:
    return (
        f"<b>{model}</b> {r.layer}, batch {r.batch}<br>"
        f"op-level: {r.pred_kernels_eager:.0f} kernels, {seconds(r.pred_time_eager_s)}<br>"
        f"kernels {seconds(r.meas_kernel_s)}<br>error {r.err_time_eager_pct:+.1f} %"
    )


def _time_chart(validations: Sequence[ValidationResult], colors: dict[str, str]) -> list[Chart]:
    fig = go.Figure()
    spans = []
    for v in validations:
        d = v.layers.dropna(subset=["kind", "meas_kernel_s", "pred_time_s"])
        if d.empty:
            continue
        d = with_groups(d)
        spans += [d["meas_kernel_s"], d["pred_time_s"]]
        group_points(fig, d, "meas_kernel_s", "pred_time_s", v.model, colors.get(v.model), _time_text)
        if "pred_time_eager_s" in d and d["pred_time_eager_s"].notna().any():
            e = d.dropna(subset=["pred_time_eager_s"])
            spans.append(e["pred_time_eager_s"])
            group_points(
                fig,
                e,
                "meas_kernel_s",
                "pred_time_eager_s",
                v.model,
                colors.get(v.model),
                _eager_time_text,
                suffix=" (op-level)",
                hollow=True,
            )
    chart = Chart(
        id="chart-pred-meas-time",
        title="Predicted vs measured time per layer",
        figure=fig,
        caption="Filled: the layer's roofline; hollow: the op-level estimate (each kernel the reference "
        "module launches: a fixed cost plus its roofline). Points below the band: kernels slower than "
        "predicted (launch overhead, small kernels, unfused ops).",
    )
    return _identity_chart(
        chart,
        spans,
        "s",
        "Per-layer time: roofline and op-level estimate vs measured kernel time",
        "measured kernel time per step (s)",
        "predicted time (s)",
    )


def pred_vs_meas_charts(validations: Sequence[ValidationResult], colors: dict[str, str]) -> list[Chart]:
    """Predicted vs measured bytes per step (every level vs GPM), and roofline vs kernel time per layer."""
    return _bytes_chart(validations, colors) + _time_chart(validations, colors)

"""The roofline: arithmetic intensity vs FLOP/s of every layer and batch size, predicted (hollow) and
achieved with the measured kernel time (filled), under each hardware's memory and compute roofs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from reports.figures.marks import group_points, kind_marker, points
from reports.figures.style import Chart, layout, log_axes, with_groups
from reports.tables import seconds, si
from simulator.config import HardwareConfig

if TYPE_CHECKING:
    from reports.validation import ValidationResult


def _placed(df: pd.DataFrame, bytes_col: str, time_col: str) -> pd.DataFrame:
    """Layer rows with their group, x = intensity (FLOP per byte) and y = FLOP/s."""
    return with_groups(df).assign(x=df["flops"] / df[bytes_col], y=df["flops"] / df[time_col])


def _widen(xs: list[float], x: pd.Series) -> list[float]:
    """The roofs' x range, widened to 3x beyond the points' intensities."""
    return [min(xs[0], float(x.min()) / 3), max(xs[1], float(x.max()) * 3)]


def _attainable_text(model: str, r: Any) -> str:
    return (
        f"<b>{model}</b> {r.layer} ({r.kind})<br>batch {r.batch}<br>"
        f"intensity {r.x:.3g} FLOP/B<br>attainable {si(r.y, 'FLOP/s')}<br>{r.bound}-bound"
    )


def _achieved_text(model: str, r: Any) -> str:
    return (
        f"<b>{model}</b> {r.layer} ({r.kind})<br>batch {r.batch}<br>"
        f"intensity {r.x:.3g} FLOP/B<br>achieved {si(r.y, 'FLOP/s')} "
        f"(kernel time {seconds(r.meas_kernel_s)})<br>"
        f"achieved bandwidth {si(r.achieved_bw_Bps, 'B/s')}"
    )


def _roof(fig: go.Figure, hw: HardwareConfig, dtype: str, xs: list[float], first: bool) -> None:
    x = np.logspace(np.log10(max(xs[0], 1e-3)), np.log10(max(xs[1], 1e3)), 200)
    peak = hw.flops_for(dtype)
    bw = hw.hbm_bandwidth.value
    fig.add_trace(
        go.Scatter(
            x=x,
            y=np.minimum(peak, bw * x),
            mode="lines",
            name=f"roof {hw.name} ({dtype})",
            line={"color": "#333", "width": 2, "dash": "solid" if first else "dot"},
            hovertemplate=f"{hw.name}: {si(bw, 'B/s')}, {si(peak, 'FLOP/s')}<extra></extra>",
        )
    )


def roofline_chart(
    sim: pd.DataFrame | None,
    hardware: Sequence[HardwareConfig],
    colors: dict[str, str],
    validations: Sequence[ValidationResult] = (),
    dtype: str = "bf16",
) -> list[Chart]:
    """Intensity (FLOP/byte) vs FLOP/s: every layer x batch, predicted (hollow) and achieved (filled)."""
    pred = pd.DataFrame()
    if sim is not None and not sim.empty:
        pred = sim[(sim["layer"] != "total") & (sim["bytes_ideal"] > 0) & (sim["flops"] > 0)]
        pred = pred.reset_index(drop=True)
    if pred.empty and not validations:
        return []
    fig = go.Figure()
    xs = [1e-2, 1e4]
    if not pred.empty:
        pred = _placed(pred, "bytes_ideal", "time_s")
        xs = [float(pred["x"].min()) / 3, float(pred["x"].max()) * 3]
        for (model, group), d in pred.groupby(["model", "group"], sort=False):
            fig.add_trace(
                points(
                    d["x"],
                    d["y"],
                    f"{model} · {group} (predicted)",
                    str(model),
                    kind_marker(colors.get(model), group, hollow=True),
                    [_attainable_text(model, r) for r in d.itertuples()],
                )
            )
    for v in validations:
        d = v.layers.dropna(subset=["kind", "meas_kernel_s"])
        d = d[(d["flops"] > 0) & (d["pred_bytes_ideal"] > 0)]
        if d.empty:
            continue
        d = _placed(d, "pred_bytes_ideal", "meas_kernel_s")
        group_points(fig, d, "x", "y", v.model, colors.get(v.model), _achieved_text, " (achieved)")
        xs = _widen(xs, d["x"])
    for i, hw in enumerate(hardware):
        _roof(fig, hw, dtype, xs, i == 0)
    layout(
        fig, "Roofline: every layer and batch size", "arithmetic intensity (FLOP per ideal byte)", "FLOP/s"
    )
    log_axes(fig, "", "FLOP/s")
    return [
        Chart(
            id="chart-roofline",
            title="Roofline",
            figure=fig,
            caption="Hollow: attainable (predicted roofline time); filled: achieved with the measured "
            "kernel time. Lines: memory roof (HBM bandwidth x intensity) up to the compute roof.",
        )
    ]

"""Bytes and roofline time per step vs batch size: one line per model and layer group, measured steps as
hollow markers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from reports.figures.marks import measured_marker, points
from reports.figures.style import GROUP_DASH, KIND_SYMBOL, Chart, batch_axes, contexts_label, with_groups
from reports.tables import seconds, si

if TYPE_CHECKING:
    from reports.validation import ValidationResult

STEP_CAPTION = (
    "Lines: predicted (thick: whole step; dotted: attention; dash-dot: MoE; long dash: memory layers; "
    "dash: dense FFN; dash-dot-dot: recurrent mixers, Mamba or Gated DeltaNet)."
)
_SUMMED = [
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


def _grouped(sim: pd.DataFrame) -> pd.DataFrame:
    """Per (model, context, batch, group): summed counts and time; the whole step as group 'total'."""
    layers = with_groups(sim[sim["layer"] != "total"])
    keys = ["model", "context", "batch", "group"]
    g = layers.groupby(keys, sort=False)[_SUMMED].sum().reset_index()
    g["bound"] = np.where(g["t_compute_s"] >= g["t_memory_s"], "compute", "memory")
    total = sim[sim["layer"] == "total"].assign(group="total")[[*keys, *_SUMMED, "bound"]]
    return pd.concat([total, g], ignore_index=True)


def _hover_bytes(r: pd.Series) -> str:
    return (
        f"<b>{r['model']}</b> · {r['group']}<br>batch {r['batch']}, context {r['context']}<br>"
        f"ideal {si(r['bytes_ideal'])} (naive {si(r['bytes_naive'])})<br>"
        f"weights {si(r['weight_bytes_ideal'])} · act {si(r['act_bytes_ideal'])} · "
        f"KV read {si(r['kv_read_bytes'])} · KV write {si(r['kv_write_bytes'])}<br>"
        f"roofline {seconds(r['time_s'])}, {r['bound']}-bound"
    )


def _predicted_lines(fig: go.Figure, g: pd.DataFrame, col: str, colors: dict[str, str]) -> None:
    """A line per model, context and layer group (dash by group, thick for the whole step)."""
    for (model, ctx, group), d in g.groupby(["model", "context", "group"], sort=False):
        d = d.sort_values("batch")
        fig.add_trace(
            points(
                d["batch"],
                d[col],
                f"{model} · {group}{contexts_label(g, ctx)}",
                str(model),
                {"symbol": KIND_SYMBOL.get(group, "circle"), "size": 7},
                d["hover"],
                mode="lines+markers",
                line={
                    "color": colors.get(model),
                    "dash": GROUP_DASH.get(group, "solid"),
                    "width": 3 if group == "total" else 1.8,
                },
            )
        )


def _measured_markers(
    fig: go.Figure, what: str, unit: str, colors: dict[str, str], validations: Sequence[ValidationResult]
) -> None:
    """Hollow markers: GPM bytes per step, or the measured step time (eager, and replayed as CUDA graphs
    where profiled so) and kernel-time sum."""
    meas = (
        [("meas_bytes_gpm", "measured (GPM)")]
        if what == "bytes"
        else [
            ("meas_step_s", "measured step"),
            ("meas_graph_step_s", "measured step (CUDA graph)"),
            ("meas_kernel_s", "measured kernel sum"),
        ]
    )
    symbols = {"meas_kernel_s": "x-thin-open", "meas_graph_step_s": "diamond-open"}
    for v in validations:
        s = v.steps.sort_values("batch")
        for mcol, label in meas:
            if mcol in s and s[mcol].notna().any():
                symbol = symbols.get(mcol, "circle-open")
                fig.add_trace(
                    points(
                        s["batch"],
                        s[mcol],
                        f"{v.model} · {label}",
                        v.model,
                        measured_marker(colors.get(v.model), 11, symbol),
                        [
                            f"<b>{v.model}</b> {label}<br>batch {b}<br>{si(y) if unit == 'B' else seconds(y)}"
                            for b, y in zip(s["batch"], s[mcol], strict=True)
                        ],
                    )
                )


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
        ("bytes", "bytes_ideal", "B", "ideal HBM bytes per step"),
        ("time", "time_s", "s", "roofline time per step"),
    ):
        fig = go.Figure()
        _predicted_lines(fig, g, col, colors)
        _measured_markers(fig, what, unit, colors, validations)
        batch_axes(
            fig, f"{ylabel[0].upper()}{ylabel[1:]} vs batch size", f"{ylabel} ({unit})", unit, g["batch"]
        )
        charts.append(
            Chart(
                id=f"chart-step-{what}",
                title=f"{'Bytes' if what == 'bytes' else 'Time'} per step vs batch size",
                figure=fig,
                caption=STEP_CAPTION + (" Hollow markers: measured." if validations else ""),
            )
        )
    return charts

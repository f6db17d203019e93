"""Distinct experts / memory rows touched per layer and step vs batch size: the expected-distinct formula
and the selections T·k (lines), and measured routing (markers with min-max bars)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd
import plotly.graph_objects as go

from reports.figures.marks import measured_marker, points
from reports.figures.style import GROUP_DASH, Chart, batch_axes, contexts_label, group_of

if TYPE_CHECKING:
    from reports.validation import ValidationResult


def _line(
    d: pd.DataFrame, col: str, name: str, label: str, model: str, what: str, **extra: object
) -> go.Scatter:
    """A line over batch sizes, in the legend group of `model`; hover: "{label}, batch, {what} value"."""
    return go.Scatter(
        x=d["batch"],
        y=d[col],
        mode="lines",
        name=name,
        legendgroup=model,
        hovertemplate=f"{label}<br>batch %{{x}}<br>{what} %{{y:.4s}}<extra></extra>",
        **extra,
    )


def _formula_lines(fig: go.Figure, per: pd.DataFrame, colors: dict[str, str]) -> None:
    """Per model, context and layer kind: expected distinct items, and all selections (dotted)."""
    for (model, ctx, kind), d in per.groupby(["model", "context", "kind"], sort=False):
        d = d.sort_values("batch")
        label = f"{model} · {kind}{contexts_label(per, ctx)}"
        color = colors.get(model)
        dash = GROUP_DASH.get(group_of(kind), "solid")
        fig.add_trace(
            _line(
                d,
                "distinct_items",
                f"{label} formula",
                label,
                str(model),
                "expected distinct",
                line={"color": color, "dash": dash},
            )
        )
        fig.add_trace(
            _line(
                d,
                "items_requested",
                f"{label} requested (T·k)",
                label,
                str(model),
                "selections",
                line={"color": color, "dash": "dot", "width": 1},
                opacity=0.5,
            )
        )


def _measured(fig: go.Figure, v: ValidationResult, colors: dict[str, str]) -> None:
    r = v.routing.dropna(subset=["meas_distinct"])
    if r.empty:
        return
    m = (
        r.groupby(["kind", "batch"])[["meas_distinct", "meas_distinct_min", "meas_distinct_max"]]
        .agg({"meas_distinct": "mean", "meas_distinct_min": "min", "meas_distinct_max": "max"})
        .reset_index()
    )
    for kind, d in m.groupby("kind"):
        fig.add_trace(
            points(
                d["batch"],
                d["meas_distinct"],
                f"{v.model} · {kind} measured",
                v.model,
                measured_marker(colors.get(v.model), 10),
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
    _formula_lines(fig, per, colors)
    for v in validations:
        _measured(fig, v, colors)
    batch_axes(
        fig,
        "Distinct experts / memory rows touched per layer and step",
        "distinct items per layer",
        "",
        per["batch"],
    )
    measured = any(v.routing["meas_distinct"].notna().any() for v in validations)
    return [
        Chart(
            id="chart-distinct",
            title="Distinct experts / rows vs batch size",
            figure=fig,
            caption="Lines: expected distinct items (formula); dotted: selections T·k (no reuse)."
            + ("" if measured else " No measured routing in the given bundles."),
        )
    ]


def routing_cost_chart(sim: pd.DataFrame | None, colors: dict[str, str]) -> list[Chart]:
    """Per model, the weight bytes a step reads in its sparse layers, split into what picks the experts or
    rows (routers, retrieval: solid) and the rest (dashed: the experts or rows, shared experts, a memory
    layer's value projections), vs batch size."""
    if sim is None or sim.empty or "routing_weight_bytes" not in sim:
        return []
    sparse = sim[(sim["layer"] != "total") & sim["distinct_items"].notna()]
    if sparse.empty:
        return []
    per = (
        sparse.assign(payload=sparse["weight_bytes_ideal"] - sparse["routing_weight_bytes"])
        .groupby(["model", "context", "batch"], sort=False)[["routing_weight_bytes", "payload"]]
        .sum()
        .reset_index()
    )
    fig = go.Figure()
    for (model, ctx), d in per.groupby(["model", "context"], sort=False):
        d = d.sort_values("batch")
        label = f"{model}{contexts_label(per, ctx)}"
        for col, what, dash in (
            ("routing_weight_bytes", "routing", "solid"),
            ("payload", "the rest", "dash"),
        ):
            fig.add_trace(
                _line(
                    d,
                    col,
                    f"{label} · {what}",
                    f"{label} · {what}",
                    str(model),
                    "bytes per step",
                    line={"color": colors.get(model), "dash": dash},
                )  # fmt: skip
            )
    batch_axes(fig, "Weight bytes per step of the sparse layers: routing vs the rest", "bytes", "B",
               per["batch"])  # fmt: skip
    return [
        Chart(
            id="chart-routing-cost",
            title="Routing vs the rest of the sparse layers, bytes per step",
            figure=fig,
            caption="Solid: what picks the experts or rows (MoE routers; memory-layer query projections, "
            "sub-keys and cores), read once a step whatever the batch; dashed: the rest of the sparse "
            "layers' weight reads (experts or rows, shared experts, memory-layer value projections).",
        )
    ]

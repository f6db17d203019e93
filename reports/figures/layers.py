"""Ideal bytes per layer of each model, stacked by what moves them (weights, activations, KV read and
write), one batch size at a time (a dropdown picks it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from reports.figures.style import BASE_LAYOUT, Chart, layout
from reports.tables import si

BYTE_PARTS: tuple[tuple[str, str, str], ...] = (
    ("weight_bytes_ideal", "weights", "#4c78a8"),
    ("act_bytes_ideal", "activations", "#f58518"),
    ("kv_read_bytes", "KV read", "#54a24b"),
    ("kv_write_bytes", "KV write", "#e45756"),
)


def _bars(model: str, b: int, db: pd.DataFrame, visible: bool) -> list[go.Bar]:
    """One bar trace per byte part: the layers of one batch size."""
    return [
        go.Bar(
            x=db["layer"],
            y=db[col],
            name=label,
            marker_color=color,
            visible=visible,
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
        for col, label, color in BYTE_PARTS
    ]


def _batch_menu(model: str, ctx: int, bs: list[int]) -> dict[str, Any]:
    """A dropdown that shows one batch size's bars and retitles the chart."""
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
    return {
        "buttons": buttons,
        "direction": "down",
        "x": 0.0,
        "xanchor": "left",
        "y": 1.02,
        "yanchor": "bottom",
        "showactive": True,
    }


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
            fig.add_traces(_bars(model, b, d[d["batch"] == b], j == 0))
        layout(
            fig,
            f"{model}: ideal bytes per layer, batch {bs[0]}, context {ctx}",
            "layer",
            "bytes per step (B)",
            barmode="stack",
            margin={**BASE_LAYOUT["margin"], "t": 100},
            updatemenus=[_batch_menu(model, ctx, bs)],
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

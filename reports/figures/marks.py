"""Trace builders shared by the chart families: markers of one model with a hover text per point, the
marker of a layer group (filled: achieved or measured, hollow: predicted), and hollow measured markers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from reports.figures.style import KIND_SYMBOL


def points(
    x: Any, y: Any, name: str, model: str, marker: dict[str, Any], hover: Any = None, **extra: Any
) -> go.Scatter:
    """Markers (`mode` in `extra` overrides) in the legend group of `model`; `hover`: a text per point."""
    if hover is not None:
        extra = {"hovertext": hover, "hoverinfo": "text", **extra}
    return go.Scatter(**{"mode": "markers", **extra}, x=x, y=y, name=name, legendgroup=model, marker=marker)


def kind_marker(color: str | None, group: Any, hollow: bool = False) -> dict[str, Any]:
    """The layer group's symbol, size 9; hollow (open symbol, thin outline) for predicted points."""
    symbol = KIND_SYMBOL.get(str(group), "circle")
    if hollow:
        return {"color": color, "symbol": f"{symbol}-open", "size": 9, "line": {"width": 1.5}}
    return {"color": color, "symbol": symbol, "size": 9}


def measured_marker(color: str | None, size: int, symbol: str = "circle-open") -> dict[str, Any]:
    """A hollow marker with a thick outline: a measured value."""
    return {"color": color, "size": size, "symbol": symbol, "line": {"width": 2}}


def group_points(
    fig: go.Figure,
    d: pd.DataFrame,
    x: str,
    y: str,
    model: str,
    color: str | None,
    hover: Callable[[str, Any], str],
    suffix: str = "",
    hollow: bool = False,
) -> None:
    """One trace of filled (or `hollow`) markers per layer group of `d` (its `group` column),
    "model · group{suffix}"; `hover(model, row)` gives each point's text (rows from `itertuples`)."""
    for group, dg in d.groupby("group", sort=False):
        fig.add_trace(
            points(
                dg[x],
                dg[y],
                f"{model} · {group}{suffix}",
                model,
                kind_marker(color, group, hollow),
                [hover(model, r) for r in dg.itertuples()],
            )
        )

"""The look shared by every chart: colours, line dashes and marker symbols per model and layer group, the
page-wide layout, and log axes with SI tick labels."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from simulator.config import MEMORY_KINDS, RECURRENT_KINDS

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
# layer groups drawn per model: the whole step, the token mixers, and the FFN-position families
GROUP_DASH: dict[str, str] = {
    "total": "solid",
    "attention": "dot",
    "recurrent": "6px,2px,1px,2px",
    "dense": "dash",
    "moe": "dashdot",
    "memory": "longdash",
    "embedding": "longdashdot",
    "head": "longdashdot",
}
KIND_SYMBOL: dict[str, str] = {
    "attention": "circle",
    "recurrent": "hexagon",
    "dense": "square",
    "moe": "diamond",
    "memory": "star",
    "embedding": "triangle-up",
    "head": "triangle-down",
    "total": "x",
}
LEVEL_SYMBOL: dict[str, str] = {"ideal": "circle", "naive": "square", "eager": "diamond"}
BASE_LAYOUT: dict[str, Any] = {
    "template": "plotly_white",
    "height": 460,
    "margin": {"l": 70, "r": 20, "t": 60, "b": 60},
    "legend": {"font": {"size": 11}},
    "hoverlabel": {"font": {"size": 12}},
}
BATCH_AXIS = "batch size (sequences per step)"


@dataclass(frozen=True)
class Chart:
    """One figure of the report: `id` names its div; `caption` is one sentence under it."""

    id: str
    title: str
    figure: go.Figure
    caption: str = ""


def group_of(kind: str) -> str:
    """Layer kind -> drawn group (all memory-layer families share one group, and so do the recurrent
    token mixers)."""
    if kind in RECURRENT_KINDS:
        return "recurrent"
    return "memory" if kind in MEMORY_KINDS else kind


def with_groups(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with a `group` column: the drawn group of each row's layer kind."""
    return df.assign(group=df["kind"].map(group_of))


def model_colors(names: Iterable[str]) -> dict[str, str]:
    """A fixed colour per model, in order of first appearance, used by every chart."""
    out: dict[str, str] = {}
    for n in names:
        if n not in out:
            out[n] = PALETTE[len(out) % len(PALETTE)]
    return out


def contexts_label(df: pd.DataFrame, ctx: int) -> str:
    """ ", ctx N" in a trace name, only when the frame holds several contexts."""
    return f", ctx {ctx}" if df["context"].nunique() > 1 else ""


def layout(fig: go.Figure, title: str, x: str, y: str, **extra: Any) -> go.Figure:
    """The page-wide layout, a title and axis titles (`extra` overrides layout keys)."""
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


def log_axes(
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


def batch_axes(fig: go.Figure, title: str, y_title: str, y_unit: str, batches: pd.Series) -> None:
    """Layout of a chart against batch size: log-log, one x tick per batch size drawn."""
    layout(fig, title, BATCH_AXIS, y_title)
    log_axes(fig, None, y_unit, x_ticks=sorted(batches.unique()))

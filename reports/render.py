"""A ValidationResult in the terminal: its notes, then rich tables per step, per layer, of the routing
(when measured) and the summary per layer kind. Missing values print as "-"."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from reports.tables import seconds, si
from reports.validation import LEVELS, ROUTED

if TYPE_CHECKING:
    from reports.validation import ValidationResult

# (header, column of the frame, cell format); columns the frame lacks are left out
Column = tuple[str, str, Callable[[Any], str]]
LEFT = {"layer", "kind", "metric", "bound"}  # headers of left-aligned columns


def pct(v: float) -> str:
    return f"{v:+.1f} %" if np.isfinite(v) else "-"


def abs_pct(v: float) -> str:
    return f"{v:.1f} %"


def share(v: float) -> str:
    return f"{v * 100:.0f} %"


def bandwidth(v: float) -> str:
    return si(v, "B/s")


KEYS: list[Column] = [("batch", "batch", str), ("layer", "layer", str), ("kind", "kind", str)]
ROOFLINE: Column = ("roofl.", "pred_time_s", seconds)
KERNELS: Column = ("kern.", "meas_kernel_s", seconds)
ACHIEVED: list[Column] = [("BW", "achieved_bw_Bps", bandwidth), ("of peak", "bw_share_of_peak", share)]

LAYER_COLUMNS: list[Column] = [
    *KEYS,
    ("ideal", "pred_bytes_ideal", si),
    ("naive", "pred_bytes_naive", si),
    ("eager", "pred_bytes_eager", si),
    ("ncu", "meas_bytes_ncu", si),
    ("err ideal/ncu", "err_ideal_ncu_pct", pct),
    ROOFLINE,
    ("eager t", "pred_time_eager_s", seconds),
    KERNELS,
    ("err time", "err_time_pct", pct),
    ("err eager t", "err_time_eager_pct", pct),
    *ACHIEVED,
]
ROUTING_COLUMNS: list[Column] = [
    *KEYS,
    ("measured", "meas_distinct", lambda v: f"{v:.1f}"),
    ("formula", "pred_distinct", lambda v: f"{v:.1f}"),
    ("err", "err_distinct_pct", pct),
]
SUMMARY_COLUMNS: list[Column] = [
    ("kind", "kind", str),
    ("metric", "metric", str),
    ("n", "n", str),
    ("median |err|", "median_abs_err_pct", abs_pct),
    ("MAPE", "mape_pct", abs_pct),
    ("median err", "median_err_pct", pct),
]


def step_columns(levels: Sequence[str]) -> list[Column]:
    """Per-step columns for the prediction levels present."""
    return [
        KEYS[0],
        ("pred ideal", "pred_bytes_ideal", si),  # naive/eager bytes are in the written tables
        ("GPM", "meas_bytes_gpm", si),
        ("ncu", "meas_bytes_ncu", si),
        *[(f"err {lv}", f"err_{lv}_pct", pct) for lv in levels],
        ROOFLINE,
        ("step", "meas_step_s", seconds),
        ("graph step", "meas_graph_step_s", seconds),
        ("eager kern.", "pred_kernel_eager_s", seconds),
        KERNELS,
        ("err t/step", "err_time_step_pct", pct),
        ("err t/kern", "err_time_kernel_pct", pct),
        ("err eager/kern", "err_time_eager_kernel_pct", pct),
        *ACHIEVED,
    ]


def _finite_or_text(v: Any) -> bool:
    if isinstance(v, str):
        return True
    try:
        return bool(np.isfinite(float(v)))
    except (TypeError, ValueError):
        return False


def rich_table(title: str, df: pd.DataFrame, cols: Sequence[Column]) -> Table:
    """One rich table of `df`'s rows in the given columns; a column with no value at all (no ncu pass,
    no GPM on a CPU run) is left out, so the table stays readable."""
    cols = [c for c in cols if c[1] in df and df[c[1]].map(_finite_or_text).any()]
    t = Table(title=title, title_justify="left")
    for head, _, _ in cols:
        t.add_column(head, justify="left" if head in LEFT else "right", no_wrap=True, overflow="fold")
    for _, r in df.iterrows():
        t.add_row(*[fmt(r[c]) if _finite_or_text(r[c]) else "-" for _, c, fmt in cols])
    return t


def render_validation(result: ValidationResult, console: Console | None = None) -> None:
    """Print the header, notes and tables of a validation."""
    con = console or Console()
    con.print(f"[bold]validation of {result.model}[/bold] against {result.source}")
    for note in result.notes:
        con.print(f"  - {note}")
    levels = [lv for lv in (*LEVELS, ROUTED) if f"err_{lv}_pct" in result.steps]
    tables = [
        ("per step (errors: (pred - meas) / meas; bytes vs NVML GPM)", result.steps, step_columns(levels)),
        (
            "per layer (achieved = predicted ideal bytes / measured kernel time, TraceLens style)",
            result.layers,
            LAYER_COLUMNS,
        ),
    ]
    if result.routing["meas_distinct"].notna().any():
        tables.append(("distinct experts / memory rows per step", result.routing, ROUTING_COLUMNS))
    tables.append(("summary per layer kind", result.summary, SUMMARY_COLUMNS))
    for title, df, cols in tables:
        print_table(con, rich_table(title, df, cols))


def print_table(console: Console, table: Table) -> None:
    """Print `table` without cutting a cell: at its natural width into a file, a pipe or a CI log (which
    have no width of their own), else folded into the terminal's width."""
    if console.is_terminal:
        console.print(table)
        return
    # a table does not expand: given all the room it wants, it takes its natural width and no more
    width = console.width
    console.width = 100_000
    try:
        console.print(table)
    finally:
        console.width = width

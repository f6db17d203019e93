"""The HTML of the report page: its shell (CSS, plotly.js and the drawing script inline, no network), the
header (how it was made, prediction levels, measurements, notes), chart cards, and validation tables.

The page records how it drew (reports/assets/errors.js and draw.js): `document.body.dataset.chartsDrawn`
counts charts whose SVG exists, and `document.body.dataset.jsErrors` collects `window.onerror` messages
(JSON list). Harmless in production, and what the headless-browser test reads back.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import shlex
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.io as pio
from plotly.offline import get_plotlyjs

from reports.figures import Chart
from reports.tables import seconds, si

if TYPE_CHECKING:
    from reports.validation import ValidationResult
    from traces.bundle import Bundle

PLOTLY_CONFIG: dict[str, Any] = {"responsive": True, "displaylogo": False, "scrollZoom": False}

LEVELS_TEXT = (
    (
        "ideal",
        "every weight that must be read is read once per step (distinct experts / memory rows from the "
        "expected-distinct-items formula); activations stay on chip except layer inputs and outputs.",
    ),
    (
        "naive",
        "no reuse: MoE kernels read all experts, memory-layer gathers read every requested row, unfused "
        "intermediates are written and read back.",
    ),
    (
        "eager",
        "what this exact PyTorch module does, op by op, counted from its real ops (profiler op counter "
        "on meta tensors).",
    ),
    (
        "ideal_routed",
        "ideal, with each sparse layer's distinct experts / rows as the run measured them instead of the "
        "formula's expectation (shown when the run recorded routing): its error is the byte model's alone.",
    ),
)


def chart_card(chart: Chart) -> str:
    spec = pio.to_json({"data": chart.figure.data, "layout": chart.figure.layout}, validate=False)
    spec = spec.replace("</", "<\\/")  # never close the script element from inside the JSON
    caption = f'<p class="caption">{html.escape(chart.caption)}</p>' if chart.caption else ""
    return (
        f'<div class="card"><div class="chart" id="{chart.id}" data-title="{html.escape(chart.title)}"></div>'
        f'{caption}<script type="application/json" id="{chart.id}-data">{spec}</script></div>'
    )


def _recorded_when(bundle: Bundle) -> str | None:
    """UTC date and time of the first steady run, from the runs table's wall-clock ns."""
    runs = bundle.table("runs")
    if runs is None or "steady_start_ns" not in runs or runs["steady_start_ns"].isna().all():
        return None
    ns = int(runs["steady_start_ns"].min())
    if ns < 10**17:  # not a wall-clock time
        return None
    return pd.Timestamp(ns, unit="ns", tz="UTC").strftime("%Y-%m-%d %H:%M UTC")


def header(
    title: str,
    command: str | None,
    bundles: Sequence[Bundle],
    names: Sequence[str],
    validations: Sequence[ValidationResult],
    notes: list[str],
) -> str:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")  # noqa: UP017 (py3.10)
    cmd = command if command is not None else shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">Made {now} by <code>{html.escape(cmd)}</code></p>',
        '<div class="card"><b>Prediction levels</b><dl class="levels">',
    ]
    parts += [f"<dt>{lv}</dt><dd>{html.escape(text)}</dd>" for lv, text in LEVELS_TEXT]
    parts.append("</dl></div>")
    if bundles:
        parts.append('<div class="card"><b>Measurements</b><ul class="meta">')
        for b, name in zip(bundles, names, strict=True):
            dev = b.meta.get("device") or {}
            wl = b.meta.get("workload") or {}
            when = _recorded_when(b)
            peak = dev.get("peak_hbm_Bps")
            line = (
                f"<b>{html.escape(name)}</b>: {html.escape(str(dev.get('name') or 'unknown device'))}"
                f"{', recorded ' + when if when else ''}; {html.escape(str(wl.get('phase')))}, context "
                f"{html.escape(str(wl.get('context')))}, {html.escape(str(wl.get('dtype')))}; "
                f"HBM peak {si(float(peak), 'B/s') if peak else 'not recorded'}; bundle "
                f"<code>{html.escape(str(getattr(b, 'path', '')))}</code> "
                f"({html.escape(str(b.meta.get('source')))} "
                f"{html.escape(str(b.meta.get('created_utc', '')))})"
            )
            missing = b.meta.get("missing") or []
            if missing:
                line += "<br><span class='note'>not measured: " + html.escape("; ".join(missing)) + "</span>"
            parts.append(f"<li>{line}</li>")
        parts.append("</ul></div>")
    else:
        parts.append('<p class="note">Simulation only: no measurements were given.</p>')
    items = [html.escape(n) for n in notes]
    for v in validations:
        kept = [n for n in v.notes if not n.startswith("not measured")]  # already listed per bundle
        if kept:
            items.append(f"<b>{html.escape(v.model)}</b>: " + "; ".join(html.escape(n) for n in kept))
    if items:
        parts.append('<ul class="meta">' + "".join(f"<li>{i}</li>" for i in items) + "</ul>")
    return "\n".join(parts)


def _fmt(value: Any, kind: str) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return html.escape(str(value))
    if not np.isfinite(v):
        return "–"
    return {
        "B": si(v),
        "s": seconds(v),
        "pct": f"{v:+.1f} %",
        "abs": f"{v:.1f} %",
        "n": f"{v:g}",
        "Bps": si(v, "B/s"),
    }[kind]


def _table(df: pd.DataFrame, cols: list[tuple[str, str, str]]) -> str:
    cols = [c for c in cols if c[1] in df]
    head = "".join(f'<th class="{"l" if k == "text" else ""}">{html.escape(h)}</th>' for h, _, k in cols)
    rows = []
    for _, r in df.iterrows():
        cells = "".join(
            f'<td class="l">{html.escape(str(r[c]))}</td>' if k == "text" else f"<td>{_fmt(r[c], k)}</td>"
            for _, c, k in cols
        )
        rows.append(f"<tr>{cells}</tr>")
    return f'<table class="data"><tr>{head}</tr>{"".join(rows)}</table>'


# (header, column, cell kind: text, n, B, s, pct, abs, Bps); columns a frame lacks are left out
STEP_COLUMNS: list[tuple[str, str, str]] = [
    ("batch", "batch", "n"),
    ("ideal", "pred_bytes_ideal", "B"),
    ("naive", "pred_bytes_naive", "B"),
    ("eager", "pred_bytes_eager", "B"),
    ("ideal, measured routing", "pred_bytes_ideal_routed", "B"),
    ("GPM", "meas_bytes_gpm", "B"),
    ("ncu", "meas_bytes_ncu", "B"),
    ("err ideal", "err_ideal_pct", "pct"),
    ("err naive", "err_naive_pct", "pct"),
    ("err eager", "err_eager_pct", "pct"),
    ("err routed", "err_ideal_routed_pct", "pct"),
    ("roofline", "pred_time_s", "s"),
    ("step", "meas_step_s", "s"),
    ("graph step", "meas_graph_step_s", "s"),
    ("op-level kernels", "pred_kernel_eager_s", "s"),
    ("kernels", "meas_kernel_s", "s"),
    ("achieved", "achieved_bw_Bps", "Bps"),
]
SUMMARY_COLUMNS: list[tuple[str, str, str]] = [
    ("kind", "kind", "text"),
    ("metric", "metric", "text"),
    ("n", "n", "n"),
    ("median |err|", "median_abs_err_pct", "abs"),
    ("MAPE", "mape_pct", "abs"),
    ("median err", "median_err_pct", "pct"),
]


def validation_tables(validations: Sequence[ValidationResult]) -> str:
    """Per validation, a card with its per-step table and its summary per layer kind."""
    out = []
    for v in validations:
        out.append(
            f'<div class="card"><b>{html.escape(v.model)}</b>: per step (errors (pred − meas) / meas; '
            "bytes vs NVML GPM)"
        )
        out.append(_table(v.steps, STEP_COLUMNS))
        out.append("Summary per layer kind")
        out.append(_table(v.summary, SUMMARY_COLUMNS))
        out.append("</div>")
    return "\n".join(out)


def asset(name: str) -> str:
    """A file of reports/assets (CSS and the page's small scripts), inlined into the page."""
    return (resources.files("reports") / "assets" / name).read_text(encoding="utf-8")


def page(title: str, body: str) -> str:
    # plotly.js goes inline exactly once (what include_plotlyjs=True does per figure): no CDN, no network
    config = json.dumps(PLOTLY_CONFIG)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{asset('report.css')}</style></head>\n"
        f'<body data-js-errors="" data-charts-drawn="0"><script>{asset("errors.js")}</script>\n'
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n'
        f"<main>\n{body}\n</main>\n"
        f'<script type="application/json" id="plotly-config">{config}</script>\n'
        f"<script>{asset('draw.js')}</script>\n</body></html>\n"
    )

"""One self-contained HTML report: plotly.js inline (once), every figure's data as JSON, no network.

The page records how it drew (reports/assets/errors.js and draw.js): `document.body.dataset.chartsDrawn`
counts charts whose SVG exists, and `document.body.dataset.jsErrors` collects `window.onerror` messages
(JSON list). Harmless in production, and what the headless-browser test reads back.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.io as pio
from plotly.offline import get_plotlyjs

from reports import figures
from reports.figures import Chart
from reports.tables import seconds, si
from simulator.config import HardwareConfig
from simulator.errors import ConfigError, MemtrafficError

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
)


# ------------------------------------------------------------------------------------------ building


def build_report(
    sim: pd.DataFrame | None,
    bundles: Sequence[Bundle],
    validations: Sequence[ValidationResult],
    title: str,
    *,
    command: str | None = None,
    hardware: Sequence[HardwareConfig] | None = None,
    batches: Sequence[int] | None = None,
) -> str:
    """The report as one HTML string.

    `sim` is a per-layer `simulate`/`compare` frame (None: the validations' predictions are drawn);
    `bundles` give the bandwidth timeline and the measurement header; `validations` the predicted-vs-
    measured charts. `command` defaults to this process's command line; `hardware` (for the roofline)
    to the validations' hardware, else the presets named in `sim`; `batches` limits the per-layer charts.
    """
    validations = list(validations)
    bundles = list(bundles)
    # validated models are drawn from their predictions, beside any simulated ones
    known = set(sim["model"]) if sim is not None else set()
    extra = [v.prediction for v in validations if v.model not in known]
    if extra:
        sim = pd.concat([sim, *extra] if sim is not None else extra, ignore_index=True)
    if sim is not None and sim.empty:
        sim = None
    names = _bundle_model_names(bundles, validations)
    colors = figures.model_colors(
        [*(sim["model"].unique() if sim is not None else []), *(v.model for v in validations), *names]
    )
    hw = list(hardware) if hardware else _hardware_for(sim, validations)
    notes: list[str] = []
    if sim is not None and not (sim["layer"] != "total").any():
        notes.append(
            "the simulation table has totals only (run simulate with per_layer=True for layer charts)"
        )

    sections: list[tuple[str, str, list[Chart], str]] = [
        (
            "step",
            "Bytes and time per step vs batch size",
            figures.step_charts(sim, colors, validations),
            "no per-layer simulation table and no validation: nothing to draw per step",
        ),
        (
            "roofline",
            "Roofline",
            figures.roofline_chart(sim, hw, colors, validations),
            "no layers with FLOPs and bytes to place on a roofline",
        ),
        (
            "layers",
            "Bytes per layer",
            figures.layer_bytes_charts(sim, batches),
            "no per-layer simulation table",
        ),
        (
            "timeline",
            "HBM bandwidth timeline",
            figures.timeline_charts(bundles, names, colors),
            "no bundle with an NVML/GPM timeline was given",
        ),
        (
            "validation",
            "Predicted vs measured",
            figures.pred_vs_meas_charts(validations, colors),
            "no run folder was given, so there is nothing measured to compare with",
        ),
        (
            "routing",
            "Distinct experts and memory rows",
            figures.distinct_chart(sim, colors, validations),
            "no MoE or memory layers in the simulated models",
        ),
    ]
    if not hw:
        notes.append("roofline drawn without hardware roof lines: no hardware description was found")
    body = [_header(title, command, bundles, names, validations, notes)]
    for key, heading, charts, empty_note in sections:
        body.append(f'<section id="sec-{key}"><h2>{html.escape(heading)}</h2>')
        if not charts:
            body.append(f'<p class="note">Omitted: {html.escape(empty_note)}.</p>')
        for chart in charts:
            body.append(_chart_html(chart))
        if key == "validation" and validations:
            body.append(_validation_tables(validations))
        body.append("</section>")
    return _page(title, "\n".join(body))


def report_run(
    models: Sequence[str | Path],
    run_dirs: Sequence[str | Path],
    output: str | Path,
    *,
    batches: Sequence[int] | None = None,
    context: int | None = None,
    hardware: str | Path = "h100-sxm",
    title: str | None = None,
    command: str | None = None,
) -> Path:
    """`memtraffic report [MODEL...] [--batch ...] [RUN_DIR...] --output report.html` in one call.

    Models (preset names or files) are simulated per layer on `hardware` at `batches` (default: the
    bundles' batch sizes, else 1..256 in powers of 4) and `context` (default: the bundles' context, else
    2048); every run folder is read and validated against its own recorded model and device.
    """
    from reports.validation import open_bundle, validate
    from simulator.config import Workload
    from simulator.loading import load_hardware, load_model
    from simulator.sweep import compare

    bundles = [open_bundle(Path(d)) for d in run_dirs]
    validations = [validate(b) for b in bundles]
    sim = None
    if models:
        run_batches = sorted({int(b) for v in validations for b in v.steps["batch"]})
        run_ctx = sorted({int(c) for v in validations for c in v.prediction["context"].unique()})
        wl = Workload(
            batch=list(batches or run_batches or [1, 4, 16, 64, 256]),
            context=[context or (run_ctx[0] if len(run_ctx) == 1 else 2048)],
        )
        sim = compare([load_model(m) for m in models], load_hardware(hardware), wl, per_layer=True)
    names = [str(m) for m in models] + [str(d) for d in run_dirs]
    text = build_report(
        sim,
        bundles,
        validations,
        title or "memtraffic: " + ", ".join(names),
        command=command,
        batches=batches,
    )
    return write_report(output, text)


def _bundle_model_names(bundles: Sequence[Bundle], validations: Sequence[ValidationResult]) -> list[str]:
    """Each bundle's model as shown: its validation's model (same colour), else the recorded name."""
    by_source = {v.source: v.model for v in validations}
    out = []
    for b in bundles:
        path = str(getattr(b, "path", ""))
        out.append(by_source.get(path) or str((b.meta.get("model") or {}).get("name") or path))
    return out


def _hardware_for(sim: pd.DataFrame | None, validations: Sequence[ValidationResult]) -> list[HardwareConfig]:
    found: dict[str, HardwareConfig] = {v.hardware.name: v.hardware for v in validations}
    if sim is not None:
        for name in sim["hardware"].unique():
            if name in found:
                continue
            try:
                from simulator.loading import load_hardware

                found[name] = load_hardware(str(name))
            except (MemtrafficError, ImportError):
                continue  # a hardware file given by path: the roofline goes without its roof
    return list(found.values())


def _chart_html(chart: Chart) -> str:
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


def _header(
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


def _validation_tables(validations: Sequence[ValidationResult]) -> str:
    out = []
    for v in validations:
        out.append(
            f'<div class="card"><b>{html.escape(v.model)}</b>: per step (errors (pred − meas) / meas; '
            "bytes vs NVML GPM)"
        )
        out.append(
            _table(
                v.steps,
                [
                    ("batch", "batch", "n"),
                    ("ideal", "pred_bytes_ideal", "B"),
                    ("naive", "pred_bytes_naive", "B"),
                    ("eager", "pred_bytes_eager", "B"),
                    ("GPM", "meas_bytes_gpm", "B"),
                    ("ncu", "meas_bytes_ncu", "B"),
                    ("err ideal", "err_ideal_pct", "pct"),
                    ("err naive", "err_naive_pct", "pct"),
                    ("err eager", "err_eager_pct", "pct"),
                    ("roofline", "pred_time_s", "s"),
                    ("step", "meas_step_s", "s"),
                    ("kernels", "meas_kernel_s", "s"),
                    ("achieved", "achieved_bw_Bps", "Bps"),
                ],
            )
        )
        out.append("Summary per layer kind")
        out.append(
            _table(
                v.summary,
                [
                    ("kind", "kind", "text"),
                    ("metric", "metric", "text"),
                    ("n", "n", "n"),
                    ("median |err|", "median_abs_err_pct", "abs"),
                    ("MAPE", "mape_pct", "abs"),
                    ("median err", "median_err_pct", "pct"),
                ],
            )
        )
        out.append("</div>")
    return "\n".join(out)


def asset(name: str) -> str:
    """A file of reports/assets (CSS and the page's small scripts), inlined into the page."""
    return (resources.files("reports") / "assets" / name).read_text(encoding="utf-8")


def _page(title: str, body: str) -> str:
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


def write_report(path: str | Path, text: str) -> Path:
    """Write the report atomically (temp file in the same folder, then os.replace); returns the path."""
    path = Path(path)
    if not path.parent.exists():
        raise ConfigError(f"--output {path}: folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is meant to be shared
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"--output {path}: cannot write ({exc.strerror or exc})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path

"""One self-contained HTML report: plotly.js inline (once), every figure's data as JSON, no network.

`build_report` draws the chart families of reports.figures into sections, `reports.page` writes the page
around them, and `write_report` writes it atomically; `report_run` is `memtraffic report` in one call.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from reports import figures
from reports.page import chart_card, header, page, validation_tables
from simulator.atomic import require_folder, write_text_atomic
from simulator.config import HardwareConfig, ModelConfig, Workload, describe_validation_error
from simulator.errors import ConfigError, MemtrafficError

if TYPE_CHECKING:
    from reports.validation import ValidationResult
    from simulator.request_trace import RequestTrace
    from traces.bundle import Bundle

# section key -> (heading, why it is empty when nothing could be drawn)
SECTIONS: dict[str, tuple[str, str]] = {
    "step": (
        "Bytes and time per step vs batch size",
        "no per-layer simulation table and no validation: nothing to draw per step",
    ),
    "request": (
        "One request: latency and throughput",
        "no request was costed (`memtraffic report MODEL...` costs one for each model it names)",
    ),
    "roofline": ("Roofline", "no layers with FLOPs and bytes to place on a roofline"),
    "layers": ("Bytes per layer", "no per-layer simulation table"),
    "timeline": ("HBM bandwidth timeline", "no bundle with an NVML/GPM timeline was given"),
    "validation": (
        "Predicted vs measured",
        "no run folder was given, so there is nothing measured to compare with",
    ),
    "routing": (
        "Routing: distinct experts and memory rows, and what picking them reads",
        "no MoE or memory layers in the simulated models",
    ),
}


def build_report(
    sim: pd.DataFrame | None,
    bundles: Sequence[Bundle],
    validations: Sequence[ValidationResult],
    title: str,
    *,
    command: str | None = None,
    hardware: Sequence[HardwareConfig] | None = None,
    batches: Sequence[int] | None = None,
    request: pd.DataFrame | None = None,
    serving: pd.DataFrame | None = None,
    traffic: pd.DataFrame | None = None,
    replay: pd.DataFrame | None = None,
) -> str:
    """The report as one HTML string.

    `sim` is a per-layer `simulate`/`compare` frame (None: the validations' predictions are drawn);
    `bundles` give the bandwidth timeline and the measurement header; `validations` the predicted-vs-
    measured charts. `command` defaults to this process's command line; `hardware` (for the roofline)
    to the validations' hardware, else the presets named in `sim`; `batches` limits the per-layer charts;
    `request` is a `simulator.request` frame (one request's latency and throughput per model and batch);
    `serving` a `simulator.serving` frame (continuous batching, drawn beside it); `traffic` a
    `simulator.traffic` frame (latency against the arrival rate); `replay` one of a recorded trace at
    several speeds (`simulator.traffic.trace_states` rows).
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
        [
            *(sim["model"].unique() if sim is not None else []),
            *(request["model"].unique() if request is not None else []),
            *(v.model for v in validations),
            *names,
        ]
    )
    hw = list(hardware) if hardware else _hardware_for(sim, validations)
    notes: list[str] = []
    if sim is not None and not (sim["layer"] != "total").any():
        notes.append(
            "the simulation table has totals only (run simulate with per_layer=True for layer charts)"
        )

    charts = {
        "step": figures.step_charts(sim, colors, validations),
        "request": figures.request_charts(request, colors, serving)
        + figures.load_charts(traffic, colors)
        + figures.trace_charts(replay, colors),
        "roofline": figures.roofline_chart(sim, hw, colors, validations),
        "layers": figures.layer_bytes_charts(sim, batches),
        "timeline": figures.timeline_charts(bundles, names, colors),
        "validation": figures.pred_vs_meas_charts(validations, colors),
        "routing": figures.distinct_chart(sim, colors, validations) + figures.routing_cost_chart(sim, colors),
    }
    if not hw:
        notes.append("roofline drawn without hardware roof lines: no hardware description was found")
    body = [header(title, command, bundles, names, validations, notes)]
    for key, (heading, empty_note) in SECTIONS.items():
        body.append(f'<section id="sec-{key}"><h2>{html.escape(heading)}</h2>')
        if not charts[key]:
            body.append(f'<p class="note">Omitted: {html.escape(empty_note)}.</p>')
        for chart in charts[key]:
            body.append(chart_card(chart))
        if key == "validation" and validations:
            body.append(validation_tables(validations))
        body.append("</section>")
    return page(title, "\n".join(body))


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
    vary: Sequence[str] = (),
    generate: int = 256,
    prefill_chunk: int | None = None,
    scenario: Mapping[str, Any] | None = None,
    warn: Callable[[str], None] | None = None,
    requests_file: str | Path | None = None,
    trace_speeds: Sequence[float] = (1.0,),
    allocation: str = "reserved",
) -> Path:
    """`memtraffic report [MODEL...] [--batch ...] [RUN_DIR...] --output report.html` in one call.

    Models (preset names or files) are simulated per layer on `hardware` at `batches` (default: the
    bundles' batch sizes, else 1..256 in powers of 4) and `context` (default: the bundles' context, else
    2048); every run folder is read and validated against its own recorded model and device (on
    `hardware` when no preset matches the recorded device). What-if variants as in `compare`:
    `hardware` may name several GPUs ("h100-sxm,b200") and `vary` holds "KEY=A,B" items. The models also
    get one request each (`simulator.request`): a prompt of `context` tokens, `generate` tokens out,
    prefilled `prefill_chunk` tokens a step (None: in one step). `scenario`: further Workload fields of the
    simulated models (weight_dtype, weight_dtypes, kv_dtype, tp, ep, routing). `warn` receives one line
    for each model whose request reaches past its maximum positions (costed anyway).
    """
    from reports.measured import open_bundle
    from reports.model_match import device_preset
    from reports.validation import validate
    from simulator.config import Workload, positions_warning
    from simulator.loading import hardware_names, load_hardware, load_model, load_variants
    from simulator.request import check_request, request_latencies
    from simulator.sweep import compare

    gpus = hardware_names(hardware) or ["h100-sxm"]
    hardware = gpus[0]  # validations of runs on a device no preset names are predicted on the first
    bundles = [open_bundle(Path(d)) for d in run_dirs]
    # a run on a device no preset names (a CPU run, say) is predicted on `hardware`
    validations = [
        validate(
            b,
            hardware=None
            if device_preset((b.meta.get("device") or {}).get("name"))
            else load_hardware(hardware),
        )
        for b in bundles
    ]
    from simulator.request_trace import load_request_trace
    from simulator.traffic import Engine

    Engine(1, 1, allocation)  # an unknown allocation refused before anything is costed
    sim = request = serving = traffic = replay = None
    trace = None
    if requests_file is not None:
        if not models:
            raise ConfigError("--requests-file without a model: the trace is replayed on the models named")
        trace = [load_request_trace(requests_file, speed) for speed in trace_speeds]
    if models:
        run_batches = sorted({int(b) for v in validations for b in v.steps["batch"]})
        run_ctx = sorted({int(c) for v in validations for c in v.prediction["context"].unique()})
        try:
            wl = Workload(
                batch=list(batches or run_batches or [1, 4, 16, 64, 256]),
                context=[context if context is not None else (run_ctx[0] if len(run_ctx) == 1 else 2048)],
                **dict(scenario or {}),
            )
        except ValidationError as exc:  # --batch / --context as the user gave them
            raise ConfigError(" ".join(describe_validation_error(exc, "report workload").split())) from None
        check_request(wl.context[0], generate)
        if vary or len(gpus) > 1:
            variants = load_variants([str(m) for m in models], gpus, (), vary)
            cfgs, on = [m for m, _ in variants], [hw for _, hw in variants]
        else:
            cfgs = [load_model(m) for m in models]
            on = [load_hardware(hardware)] * len(cfgs)
        asked = [(wl.context[0] + generate - 1, f"--context {wl.context[0]} --generate {generate}")]
        if trace:
            longest = int((trace[0].prompt + trace[0].generate).max()) - 1
            asked.append((longest, f"the longest request of {Path(requests_file).name}"))
        for cfg in {c.name: c for c in cfgs}.values():
            for positions, what in asked:
                line = positions_warning(cfg, positions, what)
                if line and warn is not None:
                    warn(line)
        sim = compare(cfgs, on, wl, per_layer=True)
        request = request_latencies(cfgs, on, wl, wl.context[0], generate, prefill_chunk=prefill_chunk)
        serving = _steady_states(cfgs, on, wl, generate)
        traffic = _under_load(cfgs, on, wl, generate, serving, warn, allocation)
        replay = _on_trace(cfgs, on, wl, trace, warn, allocation) if trace else None
    names = [str(m) for m in models] + [str(d) for d in run_dirs]
    text = build_report(
        sim,
        bundles,
        validations,
        title or "memtraffic: " + ", ".join(names),
        command=command,
        batches=batches,
        request=request,
        serving=serving,
        traffic=traffic,
        replay=replay,
    )
    return write_report(output, text)


def _steady_states(
    cfgs: Sequence[ModelConfig], on: Sequence[HardwareConfig], wl: Workload, generate: int
) -> pd.DataFrame | None:
    """Continuous batching at the report's batch sizes as concurrencies, each GPU's default token
    budget a step (`simulator.serving.default_token_budget`); None with one token generated (no decode
    step keeps a sequence decoding)."""
    from simulator.serving import serving_states

    if generate < 2:
        return None
    return serving_states(list(cfgs), list(on), wl, wl.context[0], generate)


# requests a rate for the report's load chart: enough for p99 of the measured 90 %, quick to run
LOAD_REQUESTS = 600


def load_rates(steady: pd.DataFrame, most: int = 8) -> list[float]:
    """Arrival rates for the load chart, the same for every model so that they compare at equal load: the
    request rates of the steady states that keep up and fit (one per model and concurrency; at most
    `most`, spread over their range), and a third beyond the fastest, where queues start to grow."""
    ok = steady[steady["tpot_s"].notna() & steady["keeps_up"].astype(bool) & steady["fits"].astype(bool)]
    rates = sorted({float(f"{r:.2g}") for r in ok["requests_per_s"] if r > 0})  # 2 digits: no near twins
    if len(rates) > most - 1:
        rates = [rates[int(i)] for i in np.unique(np.linspace(0, len(rates) - 1, most - 1).round())]
    return [*rates, float(f"{rates[-1] * 4 / 3:.2g}")] if rates else []


def _under_load(
    cfgs: Sequence[ModelConfig],
    on: Sequence[HardwareConfig],
    wl: Workload,
    generate: int,
    serving: pd.DataFrame | None,
    warn: Callable[[str], None] | None,
    allocation: str = "reserved",
) -> pd.DataFrame | None:
    """Each model's engine under Poisson arrivals at the `load_rates` of the steady states (prompt: the
    report's context); None without them or with expert parallelism (its ranks' queues are not modelled).
    A model the engine cannot run (no room for one request) is left out with a warning."""
    from simulator.serving import default_token_budget
    from simulator.traffic import Engine, simulate_traffic

    if serving is None or wl.ep > 1:
        return None
    rates = load_rates(serving)
    if not rates:
        return None
    frames = []
    for cfg, hw in zip(cfgs, on, strict=True):
        try:
            engine = Engine(default_token_budget(hw), allocation=allocation)
            frames.append(
                simulate_traffic(cfg, hw, wl, wl.context[0], generate, rates, engine, requests=LOAD_REQUESTS)
            )
        except ConfigError as exc:
            if warn is not None:
                warn(f"latency under load left out: {exc}")
    return pd.concat(frames, ignore_index=True) if frames else None


def _on_trace(
    cfgs: Sequence[ModelConfig],
    on: Sequence[HardwareConfig],
    wl: Workload,
    traces: Sequence[RequestTrace],
    warn: Callable[[str], None] | None,
    allocation: str = "reserved",
) -> pd.DataFrame | None:
    """Each model's engine on a recorded trace at each of its speeds (prefix caching on, as `serve`
    runs it); None with expert parallelism. A model the engine cannot run is left out with a warning."""
    from simulator.traffic import trace_states

    if wl.ep > 1:
        if warn is not None:
            warn("the trace replay left out: --ep ranks would each run their own queue")
        return None
    frames = []
    for cfg, hw in zip(cfgs, on, strict=True):
        try:
            for requests in traces:
                frames.append(
                    trace_states([cfg], [hw], wl, requests, speed=requests.speed, allocation=allocation)
                )
        except ConfigError as exc:
            if warn is not None:
                warn(f"the trace replay of {cfg.name} left out: {exc}")
    return pd.concat(frames, ignore_index=True) if frames else None


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


def write_report(path: str | Path, text: str) -> Path:
    """Write the report atomically (temp file in the same folder, then os.replace); returns the path."""
    path = Path(path)
    require_folder(path, f"--output {path}")
    # mode 0644: mkstemp makes 0600, and a report is meant to be shared
    return write_text_atomic(path, text, mode=0o644, label=f"--output {path}")

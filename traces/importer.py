"""Import existing kineto traces (+ an optional NVML/GPM timeline and runs file) into one bundle.

One bundle holds one model: each trace is one batch size. The measurement window of a batch size is
the steady-state loop named in the runs file, else the span of the trace's own step ranges.

What the bundle cannot say is listed under ``missing`` (the CLI prints each as "not measured: ..."):
GPM values of windows under 1 s are left NaN there, and when `validate` would lack the model, dtype,
phase or context, one entry names the flags to import again with. The dtype alone is inferred from the
trace when its matmul and attention ops all take one floating type (`infer_dtype`); phase and context are
never guessed.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simulator.config import BUNDLE_DTYPES
from simulator.errors import MemtrafficError, TraceError
from traces.attribution import (
    DEFAULT_LAYER_PATTERN,
    DEFAULT_STEP_PATTERN,
    attribute,
    layer_ranges,
    layer_table,
    step_ranges,
)
from traces.bundle import check_bundle_destination, write_bundle
from traces.counters import counter_tracks
from traces.kineto import (
    KinetoTrace,
    TruncatedTraceError,
    inject_events,
    read_kineto,
)
from traces.timeline import (
    GPM_MIN_WINDOW_S,
    GPM_RUN_COLUMNS,
    read_timeline,
    run_measurements,
)

_BATCH_IN_NAME = re.compile(r"_b(\d+)(?=[._-]|$)")
_RUN_KEYS = ("kineto", "batch", "steady_start_ns", "steady_end_ns", "steps")


@dataclass(frozen=True)
class RunSpec:
    """One entry of a runs file."""

    kineto: Path
    batch: int
    steady_start_ns: int
    steady_end_ns: int
    steps: int
    us_per_step: float | None
    model: str | None


@dataclass(frozen=True)
class RunsFile:
    path: Path
    runs: list[RunSpec]
    peak_hbm_Bps: float | None
    doc: dict[str, Any]

    def find(self, trace: Path) -> RunSpec | None:
        """The entry whose kineto path is this trace (same file, else same file name)."""
        resolved = trace.resolve()
        for r in self.runs:
            if r.kineto.resolve() == resolved:
                return r
        same_name = [r for r in self.runs if r.kineto.name == trace.name]
        return same_name[0] if len(same_name) == 1 else None


def read_runs_file(path: Path) -> RunsFile:
    """Parse and validate a runs file: {"runs": [{kineto, batch, steady_start_ns, ...}], "peak_hbm_Bps"?}."""
    if not path.is_file():
        raise TraceError(f"{path}: no such runs file")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise TraceError(f"{path}: runs file is not JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("runs"), list):
        raise TraceError(f"{path}: runs file has no 'runs' list")
    runs = []
    for i, r in enumerate(doc["runs"]):
        if not isinstance(r, dict):
            raise TraceError(f"{path}: runs[{i}] is not an object")
        missing = [k for k in _RUN_KEYS if k not in r]
        if missing:
            raise TraceError(f"{path}: runs[{i}] lacks {', '.join(missing)}")
        try:
            spec = RunSpec(
                kineto=path.parent / str(r["kineto"]),
                batch=int(r["batch"]),
                steady_start_ns=int(r["steady_start_ns"]),
                steady_end_ns=int(r["steady_end_ns"]),
                steps=int(r["steps"]),
                us_per_step=float(r["us_per_step"]) if r.get("us_per_step") is not None else None,
                model=str(r["model"]) if r.get("model") is not None else None,
            )
        except (TypeError, ValueError) as exc:
            raise TraceError(f"{path}: runs[{i}] has a bad value ({exc})") from None
        if spec.steady_end_ns <= spec.steady_start_ns or spec.steps <= 0:
            raise TraceError(f"{path}: runs[{i}] has an empty window or no steps")
        if spec.batch < 1:
            raise TraceError(f"{path}: runs[{i}] has batch {spec.batch}; a batch size is at least 1")
        runs.append(spec)
    peak = doc.get("peak_hbm_Bps")
    return RunsFile(path=path, runs=runs, peak_hbm_Bps=peak_bandwidth(peak, f"{path}: peak_hbm_Bps"), doc=doc)


def _check_workload(workload: dict[str, Any], source: str) -> None:
    """The recorded phase, context and dtype, from the runs file or --phase/--context/--dtype: each absent
    or one the simulator can predict with; anything else is refused before a bundle is written."""
    phase, context, dtype = workload.get("phase"), workload.get("context"), workload.get("dtype")
    if phase is not None and phase not in ("decode", "prefill"):
        raise TraceError(f"{source}: phase {phase!r} is neither decode nor prefill")
    if context is not None and (isinstance(context, bool) or not isinstance(context, int) or context < 1):
        raise TraceError(f"{source}: context {context!r} is not a length of at least 1")
    if dtype is not None and str(dtype).removeprefix("torch.") not in BUNDLE_DTYPES:
        known = ", ".join(sorted(BUNDLE_DTYPES))
        raise TraceError(f"{source}: dtype {dtype!r} is not one of {known}")


def peak_bandwidth(value: Any, what: str) -> float | None:
    """A peak HBM bandwidth in bytes/s: None when not given, else a finite positive number."""
    if value is None:
        return None
    try:
        peak = float(value)
    except (TypeError, ValueError):
        raise TraceError(f"{what} must be a number of bytes/s, got {value!r}") from None
    if not (math.isfinite(peak) and peak > 0):
        raise TraceError(f"{what} must be a finite number of bytes/s above 0, got {value!r}")
    return peak


def _batch_from_ops(trace: KinetoTrace, layer_pattern: str | None) -> int | None:
    """First dim of the first recorded input of the ops inside the first layer range (by time)."""
    layers = layer_ranges(trace.events, layer_pattern)
    if layers.empty or trace.ops.empty:
        return None
    first = layers.iloc[0]
    ops = trace.ops
    inside = ops[
        (ops["pid"] == first["pid"])
        & (ops["tid"] == first["tid"])
        & (ops["ts_ns"] >= first["ts_ns"])
        & (ops["ts_ns"] < first["ts_ns"] + first["dur_ns"])
        & (ops["first_dim"] >= 0)
    ].sort_values("ts_ns")
    return int(inside["first_dim"].iloc[0]) if len(inside) else None


@dataclass
class _Imported:
    """One trace after reading and attribution (times wall-clock ns)."""

    path: Path
    trace: KinetoTrace
    batch: int
    kernels: pd.DataFrame
    run: dict[str, Any]
    base_ns: int
    batch_source: str


def _import_one(
    path: Path,
    batch: int | None,
    spec: RunSpec | None,
    layer_pattern: str | None,
    step_pattern: str | None,
    need_wall_clock: bool,
    allow_truncated: bool = False,
) -> _Imported:
    batch_source = "argument" if batch is not None else ""
    if batch is None and spec is not None:
        batch, batch_source = spec.batch, "runs file"
    if batch is None and (m := _BATCH_IN_NAME.search(path.name)):
        batch, batch_source = int(m.group(1)), "file name"
    trace = read_kineto(path, with_ops=batch is None, allow_truncated=allow_truncated)
    if batch is None:
        batch = _batch_from_ops(trace, layer_pattern)
        batch_source = "input dims of the first layer's first op"
        if batch is None:
            raise TraceError(
                f"{path}: batch size unknown (no batch=, no _b<N> in the name, no recorded input dims)"
            )
    if trace.base_time_ns is None and need_wall_clock:
        raise TraceError(
            f"{path}: trace has no baseTimeNanoseconds, so it cannot be aligned with the timeline"
        )
    base = trace.base_time_ns or 0
    kernels = attribute(trace.events, layer_pattern, step_pattern, source=str(path))
    kernels["ts_ns"] = kernels["ts_ns"] + np.int64(base)
    kernels.insert(0, "batch", np.int64(batch))

    steps = step_ranges(trace.events, step_pattern)
    n_trace_steps = int(steps["step_idx"].nunique()) if len(steps) else 0
    if spec is not None:
        run = {
            "batch": batch,
            "steps": spec.steps,
            "steady_start_ns": spec.steady_start_ns,
            "steady_end_ns": spec.steady_end_ns,
            "us_per_step": spec.us_per_step
            if spec.us_per_step is not None
            else (spec.steady_end_ns - spec.steady_start_ns) / spec.steps / 1e3,
            "window": "runs file",
        }
    else:
        if len(steps):
            a = int(steps["ts_ns"].min()) + base
            b = int((steps["ts_ns"] + steps["dur_ns"]).max()) + base
        else:  # no step ranges: the device activity span counts as one step
            a = int(kernels["ts_ns"].min())
            b = int((kernels["ts_ns"] + kernels["dur_ns"]).max())
        n = max(n_trace_steps, 1)
        run = {
            "batch": batch,
            "steps": n,
            "steady_start_ns": a,
            "steady_end_ns": b,
            "us_per_step": (b - a) / n / 1e3,
            "window": "trace steps",
        }
    run["trace_steps"] = n_trace_steps
    return _Imported(path, trace, batch, kernels, run, base, batch_source)


def _run_row(
    imp: _Imported, timeline: pd.DataFrame | None, peak: float | None, nvml_name: str
) -> dict[str, Any]:
    r = imp.run
    a, b, steps = r["steady_start_ns"], r["steady_end_ns"], r["steps"]
    k = imp.kernels
    in_steps = k[k["step"] >= 0]
    n_trace_steps = max(r["trace_steps"], 1)
    measured = run_measurements(timeline, a, b, steps, peak)
    if timeline is not None and measured["nvml_coverage"] == 0:
        t0, t1 = int(timeline["t_start_ns"].iloc[0]), int(timeline["t_end_ns"].iloc[-1])
        raise TraceError(
            f"{nvml_name}: timeline [{t0}, {t1}) ns has no time overlap with the window "
            f"[{a}, {b}) ns of {imp.path.name} (batch {imp.batch})"
        )
    return {
        "batch": imp.batch,
        "steps": steps,
        "us_per_step": float(r["us_per_step"]),
        "window_s": (b - a) / 1e9,
        "steady_start_ns": a,
        "steady_end_ns": b,
        **measured,
        # no step range matched: the per-step kernel time is unknown, not zero
        "kernel_time_ns_per_step": float(in_steps["dur_ns"].sum()) / n_trace_steps
        if r["trace_steps"]
        else np.nan,
        "n_kernels_per_step": float(len(in_steps)) / n_trace_steps if r["trace_steps"] else np.nan,
        "trace_steps": r["trace_steps"],
    }


def _model_config(doc: dict[str, Any] | None, model: str | None) -> dict[str, Any] | None:
    """The runs file's ``models`` entry for the model, merged over ``models.common`` (meta.json layout)."""
    if doc is None or model is None or not isinstance(doc.get("models"), dict):
        return None
    models = doc["models"]
    if not isinstance(models.get(model), dict):
        return None
    common = models.get("common") if isinstance(models.get("common"), dict) else {}
    return {**common, **models[model]}


def _resolve_traces(
    traces: list[Path], runs: RunsFile | None, model: str | None
) -> list[tuple[Path, RunSpec | None]]:
    if not traces:
        if runs is None:
            raise TraceError("no kineto traces given (and no runs file to take them from)")
        chosen = [r for r in runs.runs if model is None or r.model == model]
        if not chosen:
            raise TraceError(f"{runs.path}: no runs for model {model!r}")
        return [(r.kineto, r) for r in chosen]
    out = []
    for t in traces:
        t = Path(t)
        spec = runs.find(t) if runs is not None else None
        if runs is not None and spec is None:
            raise TraceError(f"{t}: not listed in runs file {runs.path}")
        out.append((t, spec))
    return out


def import_traces(
    traces: list[Path],
    output: Path,
    nvml: Path | None = None,
    runs: Path | None = None,
    model: str | None = None,
    layer_pattern: str | None = None,
    step_pattern: str | None = None,
    peak_hbm_Bps: float | None = None,
    batch: list[int] | None = None,
    model_config: dict[str, Any] | None = None,
    workload: dict[str, Any] | None = None,
    replace: bool = False,
) -> Path:
    """Import kineto traces (one per batch size, one model) into a bundle at ``output``; returns it.

    ``model_config`` is the memtraffic model (a ``ModelConfig`` as a dict) the traces were recorded
    from; it becomes the bundle's model, so ``validate`` predicts the same shapes. What the runs file
    says of the model is kept under ``extra.recorded_model``. ``workload`` (phase, context, dtype) fills
    or overrides what the runs file says of the run, so a bundle without a runs file can be validated.

    ``traces`` may be empty when ``runs`` lists them (then every run, or every run of ``model``).
    ``batch`` gives the batch sizes in the order of ``traces``. Without ``peak_hbm_Bps`` here or in the
    runs file, GPM bytes are not computed and the bundle says so under ``missing``; nor are they for a
    window under ``GPM_MIN_WINDOW_S`` (NaN, not measured). Without a dtype from the runs file or
    ``workload``, it is inferred from the trace when `infer_dtype` finds it beyond doubt. What `validate`
    will still lack (model, dtype, phase, context) is the last ``missing`` entry, naming the flags that
    give it (`validate_needs`). A bundle already at ``output`` is replaced only with ``replace``.
    """
    check_bundle_destination(output, replace)  # a bundle already there is kept unless asked to replace it
    runs_file = read_runs_file(Path(runs)) if runs is not None else None
    todo = _resolve_traces(list(traces), runs_file, model)
    if batch is not None and len(batch) != len(todo):
        raise TraceError(f"--batch gives {len(batch)} sizes for {len(todo)} traces")
    models = sorted({s.model for _, s in todo if s is not None and s.model is not None})
    if model is None and len(models) > 1:
        raise TraceError(
            f"traces of several models ({', '.join(models)}): import one model per bundle (--runs-model)"
        )
    model_name = model if model is not None else (models[0] if models else None)

    peak, peak_source = peak_bandwidth(peak_hbm_Bps, "--peak-hbm-bps"), "argument"
    if peak is None and runs_file is not None and runs_file.peak_hbm_Bps is not None:
        peak, peak_source = runs_file.peak_hbm_Bps, f"runs file {runs_file.path.name}"
    # A bad timeline or a cut-off trace still ends in a TraceError, but only after what could be read
    # is written as a partial bundle: a user's measurements are never thrown away.
    problems: list[str] = []
    timeline = None
    if nvml is not None:
        try:
            timeline = read_timeline(Path(nvml))
        except TraceError as exc:
            problems.append(str(exc))
    nvml_name = Path(nvml).name if nvml is not None else ""

    imported: list[_Imported] = []
    for i, (path, spec) in enumerate(todo):
        b = batch[i] if batch is not None else None
        try:
            imported.append(_import_one(path, b, spec, layer_pattern, step_pattern, timeline is not None))
        except TruncatedTraceError as exc:
            problems.append(str(exc))
            try:  # keep the events before the cut when they still hold attributable kernels
                imported.append(
                    _import_one(
                        path, b, spec, layer_pattern, step_pattern, timeline is not None, allow_truncated=True
                    )
                )
            except TraceError:
                continue
        except TraceError as exc:  # a foreign or missing file: the other traces are still imported
            problems.append(str(exc))
    if not imported:
        raise TraceError(problems[0])
    seen: dict[int, Path] = {}
    for imp in imported:
        if imp.batch in seen:
            raise TraceError(f"{imp.path}: batch {imp.batch} already imported from {seen[imp.batch].name}")
        seen[imp.batch] = imp.path
    imported.sort(key=lambda x: x.batch)

    kernels = pd.concat([x.kernels for x in imported], ignore_index=True)
    tables: dict[str, pd.DataFrame] = {
        "kernels": kernels,
        "layers": layer_table(kernels),
        "runs": pd.DataFrame([_salvaged_run_row(x, timeline, peak, nvml_name, problems) for x in imported]),
    }
    if timeline is not None:
        tables["nvml"] = timeline

    meta = _meta(
        imported, runs_file, model_name, timeline, nvml_name, peak, peak_source, layer_pattern, step_pattern
    )
    meta["workload"].update({k: v for k, v in (workload or {}).items() if v is not None})
    _check_workload(
        meta["workload"], runs_file.path.name if runs_file is not None else "--phase/--context/--dtype"
    )
    runs_table = tables["runs"]
    short = runs_table["window_s"] < GPM_MIN_WINDOW_S
    if timeline is not None and short.any():
        # not a measurement of the steps: left NaN, so nothing downstream computes an error from it
        runs_table.loc[short, [c for c in GPM_RUN_COLUMNS if c in runs_table]] = np.nan
        meta["missing"].append(
            "gpm: measurement window under 1 s for batch "
            + ", ".join(str(b) for b in runs_table.loc[short, "batch"])
            + " (GPM refreshes every ~100 ms and lags), so no GPM bytes or utilisation are recorded for it; "
            "give a runs file with steady windows of 1 s or more"
        )
    if model_config is not None:
        meta["extra"]["recorded_model"] = meta["model"]
        meta["model"] = {"name": model_config.get("name"), "config": model_config}
    if meta["workload"].get("dtype") is None:
        inferred = infer_dtype([x.path for x in imported if not x.trace.truncated])
        if inferred is not None:
            meta["workload"]["dtype"], meta["provenance"]["workload.dtype"] = inferred
    if problems:
        meta["partial"] = True
        meta["missing"].extend(problems)
        for run, imp in zip(meta["runs"], imported, strict=True):
            run["complete"] = run["complete"] and not imp.trace.truncated
    meta["measured"]["gpm"] = bool(tables["runs"]["gpm_bytes_per_step"].notna().any())
    for r in tables["runs"].itertuples():
        if r.nvml_coverage < 0.999:  # NaN (no timeline) compares False
            meta["missing"].append(
                f"nvml: the timeline covers {r.nvml_coverage:.1%} of batch {r.batch}'s window; "
                "bytes, power and energy are for the covered part only"
            )
    needs = validate_needs(meta)
    if needs is not None:  # last, so it is the import's last line
        meta["missing"].append(needs)
    with tempfile.TemporaryDirectory(prefix="memtraffic-import-") as tmpdir:
        raw: dict[str, Path] = {}
        for run, imp in zip(meta["runs"], imported, strict=True):
            if imp.trace.truncated:  # its events are in the tables; a cut file is no raw trace to keep
                run["kineto"] = None
                continue
            name = imp.path.name if imp.path.name.endswith(".gz") else imp.path.name + ".gz"
            if name in raw:  # same file name from two folders
                name = f"b{imp.batch}_{name}"
            dst = Path(tmpdir) / name
            extra = counter_tracks(imp.trace, timeline, peak) if timeline is not None else []
            inject_events(imp.path, dst, extra)
            raw[name] = dst
            run["kineto"] = f"raw/{name}"
        written = write_bundle(Path(output), meta, tables, raw)
    if problems:
        more = f" (+{len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise TraceError(f"{problems[0]}{more}; what could be read is saved in {written} (partial)")
    return written


# --- what validate will need ---------------------------------------------------------------------------

# flag to pass for each thing a bundle must record for validate to predict it
NEEDED_FLAGS: dict[str, str] = {
    "model": "--model MODEL",
    "dtype": "--dtype bfloat16|float16|float32",
    "phase": "--phase decode|prefill",
    "context": "--context N",
}


def join_words(words: list[str]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def missing_for_validate(meta: dict[str, Any]) -> list[str]:
    """Of model, dtype, phase and context, those a bundle's meta lacks and validate needs: a model with
    no config (neither --model nor a runs-file description), workload fields recorded as None."""
    model = meta.get("model") or {}
    out = [] if isinstance(model.get("config"), dict) and model["config"] else ["model"]
    workload = meta.get("workload") or {}
    return out + [k for k in ("dtype", "phase", "context") if k in workload and workload[k] is None]


def validate_needs(meta: dict[str, Any]) -> str | None:
    """One `missing` entry naming what validate will lack and the flags that give it, or None."""
    lacking = missing_for_validate(meta)
    if not lacking:
        return None
    flags = " ".join(NEEDED_FLAGS[k] for k in lacking)
    also = ", or pass --model MODEL to validate" if lacking == ["model"] else ""
    return (
        f"workload: the bundle records no {join_words(lacking)}, which validate needs; "
        f"import again with {flags}{also}"
    )


# --- the dtype, from the op input types the trace recorded ---------------------------------------------

# ops whose tensor inputs are the weights, activations and KV cache that the bytes are counted in
_DTYPE_OPS = re.compile(r"^aten::\w*(mm|matmul|linear|attention)\w*$")
# kineto's names of the floating types a bundle records (torch's, as BUNDLE_DTYPES spells them)
_KINETO_FLOATS: dict[str, str] = {"c10::BFloat16": "bfloat16", "c10::Half": "float16", "float": "float32"}
# argument kinds that are not tensors
_NOT_TENSORS = {"", "Scalar", "ScalarList", "TensorList", "GenericList", "None"}
# index, mask and sequence-length inputs of attention ops: not what is read as KV
_ATTENTION_INDEX_TYPES = {"bool", "long int", "int"}
# a type seen anywhere in the trace that says weights or cache are stored in some narrower form
_QUANTISED = re.compile(r"Float8|Float4|qint|quint|signed char|unsigned char|Bits")


def _op_input_types(path: Path) -> Counter[tuple[str, tuple[str, ...]]]:
    """(op name, its "Input type" list) of every cpu_op event of a trace that recorded them, counted.
    Empty when the trace did not record shapes (record_shapes=False) or cannot be read."""
    try:
        ops = read_kineto(path, with_ops=True, allow_truncated=True).ops
    except MemtrafficError:
        return Counter()
    recorded = ops[ops["input_types"].astype(str) != ""]
    pairs = zip(recorded["name"].astype(str), recorded["input_types"].astype(str), strict=True)
    return Counter((name, tuple(types.split("|"))) for name, types in pairs)


def infer_dtype(paths: list[Path]) -> tuple[str, str] | None:
    """(dtype, provenance) when a trace shows it beyond doubt, else None.

    Read from one trace (the smallest; one bundle is one model): every tensor input of every matmul,
    linear and attention op must be of one floating type (bfloat16, float16 or float32), and no op in
    the trace may take an 8-bit, 4-bit or quantised tensor. Autocast (fp32 weights cast before the
    matmul), weight-only quantisation, an fp8 KV cache or mixed types all fail one of these, and then
    nothing is inferred: the dtype is the weights' storage type, which a cast would hide.
    """
    if not paths:
        return None
    path = min(paths, key=lambda p: p.stat().st_size)
    ops = _op_input_types(path)
    seen: set[str] = set()
    n = 0
    for (name, types), count in ops.items():
        if any(_QUANTISED.search(t) for t in types):
            return None
        if not _DTYPE_OPS.match(name):
            continue
        attention = "attention" in name
        for t in types:
            if t in _NOT_TENSORS or (attention and t in _ATTENTION_INDEX_TYPES):
                continue
            if t not in _KINETO_FLOATS:
                return None
            seen.add(t)
        n += count
    if len(seen) != 1 or n == 0:
        return None
    (kineto_type,) = seen
    dtype = _KINETO_FLOATS[kineto_type]
    return dtype, (
        f"inferred from {path.name}: all {n} matmul/linear/attention ops take {kineto_type} tensors "
        "and no op takes a quantised one"
    )


def _salvaged_run_row(
    imp: _Imported, timeline: pd.DataFrame | None, peak: float | None, nvml_name: str, problems: list[str]
) -> dict[str, Any]:
    """The run's row; a window the timeline does not cover is recorded as a problem, not fatal."""
    try:
        return _run_row(imp, timeline, peak, nvml_name)
    except TraceError as exc:
        problems.append(str(exc))
        return _run_row(imp, None, peak, nvml_name)


def _meta(
    imported: list[_Imported],
    runs_file: RunsFile | None,
    model_name: str | None,
    timeline: pd.DataFrame | None,
    nvml_name: str,
    peak: float | None,
    peak_source: str,
    layer_pattern: str | None,
    step_pattern: str | None,
) -> dict[str, Any]:
    doc = runs_file.doc if runs_file is not None else None
    trace_names = ", ".join(x.path.name for x in imported)
    runs_name = runs_file.path.name if runs_file is not None else None
    device_name = next((x.trace.device_name for x in imported if x.trace.device_name), None)
    if device_name is None and doc is not None and isinstance(doc.get("device"), str):
        device_name = doc["device"]
    workload: dict[str, Any] = {"phase": None, "context": None, "dtype": None}
    if doc is not None:
        for k in ("phase", "context", "dtype", "input_ring", "torch"):
            if k in doc:
                workload[k] = doc[k]
    missing: list[str] = []
    if timeline is None:
        missing.append("nvml: no NVML/GPM timeline given, so no bandwidth, power or energy")
    elif peak is None:
        missing.append("gpm: no peak_hbm_Bps (argument or runs file), so GPM bytes were not computed")
    elif timeline["gpm_dram_bw_util_pct"].isna().all():
        missing.append("gpm: the timeline has no GPM DRAM bandwidth values")
    for x in imported:
        if not x.run["trace_steps"]:
            missing.append(
                f"kernels: {x.path.name} has no range matching the step pattern, so its kernels are not "
                "split into steps and no kernel time per step is known (--step-pattern)"
            )
        if x.trace.n_malformed:
            missing.append(
                f"kernels: {x.trace.n_malformed} event(s) of {x.path.name} dropped (no numeric ts, or a "
                "negative duration); its kernel times lack them"
            )
    no_base = [x.path.name for x in imported if x.trace.base_time_ns is None]
    if no_base:
        missing.append(
            f"kernels.ts_ns: {', '.join(no_base)} had no baseTimeNanoseconds; their times are trace-relative"
        )
    missing += [
        "ncu: no Nsight Compute per-kernel DRAM bytes in an import",
        "routing: kineto traces do not record routing",
        "opcount: op-level counts come from the profiler, not from traces",
    ]
    provenance: dict[str, str] = {
        "kernels": f"imported from {trace_names}",
        "layers": f"derived from kernels (imported from {trace_names})",
        "runs.kernel_time_ns_per_step": f"imported from {trace_names}",
    }
    if runs_name is not None:
        provenance["runs.steps"] = f"imported from {runs_name}"
        provenance["runs.steady_start_ns"] = f"imported from {runs_name}"
        provenance["runs.us_per_step"] = f"imported from {runs_name}"
    else:
        provenance["runs.steps"] = f"imported from {trace_names} (step ranges)"
    if timeline is not None:
        provenance["nvml"] = f"imported from {nvml_name}"
        for col in (
            "gpm_bytes_per_step",
            "gpm_bw_Bps",
            "mean_dram_util_pct",
            "energy_j_per_step",
            "mean_power_w",
        ):
            provenance[f"runs.{col}"] = f"imported from {nvml_name}"
    runs_meta = [
        {
            "batch": x.batch,
            "steps": x.run["steps"],
            "steady_start_ns": x.run["steady_start_ns"],
            "steady_end_ns": x.run["steady_end_ns"],
            "us_per_step": x.run["us_per_step"],
            "kineto": "",
            "complete": True,
            "window": x.run["window"],
            "batch_source": x.batch_source,
            "source_file": x.path.name,
        }
        for x in imported
    ]
    return {
        "source": "imported",
        "partial": False,
        "model": {"name": model_name, "config": _model_config(doc, model_name)},
        "device": {
            "name": device_name,
            "peak_hbm_Bps": peak,
            "peak_source": peak_source if peak is not None else None,
        },
        "workload": workload,
        "runs": runs_meta,
        "measured": {
            "kernels": True,
            "nvml": timeline is not None,
            "gpm": False,
            "ncu": False,
            "routing": False,
            "opcount": False,
        },
        "missing": missing,
        "provenance": provenance,
        "extra": {
            "layer_pattern": layer_pattern or DEFAULT_LAYER_PATTERN,
            "step_pattern": step_pattern or DEFAULT_STEP_PATTERN,
            "runs_file": runs_name,
            "nvml_file": nvml_name or None,
            "kernel_time": "sum of device activity durations (kernel, gpu_memcpy, gpu_memset); "
            "runs.kernel_time_ns_per_step is over the trace's own (profiled) steps, not the steady loop",
            "energy": "cumulative energy_mj counter, linear between readings at each window's t_end_ns",
        },
    }

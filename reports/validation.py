"""Join a trace bundle with the simulator's prediction of the same model, workload and GPU.

`validate(bundle)` gives four tables (pandas DataFrames):
- `steps`: per batch size, predicted bytes per step (ideal, naive, eager) beside measured bytes (NVML GPM
  integrated over the steady loop; Nsight Compute sum where present), roofline time beside the measured
  step time and the kernel-time sum, achieved bandwidth and signed % errors (pred - meas) / meas.
- `layers`: per layer and batch size, predicted bytes and roofline time beside the measured kernel time;
  achieved bandwidth = predicted ideal bytes / measured kernel time (TraceLens' "achieved TB/s").
- `routing`: distinct experts / memory rows per step, measured (routing table) beside the formula.
- `summary`: per layer kind and metric, median absolute % error and MAPE.

What goes in: `reports.model_match` picks the model, hardware and workload, `reports.measured` reads the
bundle's measurements, `reports.eager` counts the eager level; `reports.render` prints the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from reports.eager import eager_bytes
from reports.measured import (
    bundle_batches,
    bundle_label,
    measured_layers,
    measured_routing,
    measured_steps,
    open_bundle,
    short_gpm_windows,
)
from reports.model_match import (
    UnknownModelError,
    bundle_workload,
    missing_message,
    resolve_hardware,
    resolve_model,
    workload_gaps,
)
from simulator.atomic import require_folder, write_frame_atomic
from simulator.config import HardwareConfig, ModelConfig
from simulator.errors import ConfigError, TraceError
from traces.timeline import GPM_MIN_WINDOW_S

if TYPE_CHECKING:
    from rich.console import Console

    from traces.bundle import Bundle

LEVELS: tuple[str, ...] = ("ideal", "naive", "eager")
# the ideal level with each sparse layer's measured distinct items in place of the formula's expectation:
# added when the bundle recorded routing, it separates the byte model's error from the routing model's
ROUTED = "ideal_routed"
TABLES: tuple[str, ...] = ("steps", "layers", "routing", "summary")


# ------------------------------------------------------------------------------------------ result


@dataclass
class ValidationResult:
    """Predicted beside measured, for one bundle. Errors are signed: (pred - meas) / meas x 100."""

    model: str
    hardware: HardwareConfig  # the preset, with HBM bandwidth taken from the bundle when it has one
    source: str  # the bundle's path (or its meta.source)
    meta: dict[str, Any]  # the bundle's meta, for report headers
    prediction: pd.DataFrame  # simulate(..., per_layer=True) for the bundle's workload
    steps: pd.DataFrame
    layers: pd.DataFrame
    routing: pd.DataFrame
    summary: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    @property
    def peak_Bps(self) -> float:
        return self.hardware.hbm_bandwidth.value

    def tables(self) -> dict[str, pd.DataFrame]:
        return {name: getattr(self, name) for name in TABLES}

    def to_files(self, dest: str | Path, fmt: str | None = None) -> list[Path]:
        """Write the tables, each file atomically (temp file in the same folder, then os.replace).

        A folder (existing, or a path without suffix) gets steps/layers/routing/summary.{fmt}; a file
        path (`x.parquet`, `x.csv`) gets one table stacking all four, told apart by a `table` column.
        `fmt` defaults to the file's suffix, else parquet.
        """
        dest = Path(dest)
        as_dir = dest.is_dir() or (not dest.suffix and not dest.exists())
        fmt = (fmt or (dest.suffix.lstrip(".") if not as_dir else "") or "parquet").lower()
        if fmt not in {"parquet", "csv"}:
            raise ConfigError(f"--format {fmt}: validation tables are written as parquet or csv")
        require_folder(dest, f"--output {dest}")
        if as_dir:
            dest.mkdir(exist_ok=True)
            return [_write(df, dest / f"{name}.{fmt}", fmt) for name, df in self.tables().items()]
        stacked = pd.concat(
            [df.assign(table=name) for name, df in self.tables().items() if not df.empty], ignore_index=True
        )
        stacked = stacked[["table", *[c for c in stacked.columns if c != "table"]]]
        return [_write(stacked, dest, fmt)]

    def render(self, console: Console | None = None) -> None:
        """Print the tables with rich."""
        from reports.render import render_validation  # rich tables; render imports this module

        render_validation(self, console)


def _write(df: pd.DataFrame, path: Path, fmt: str) -> Path:
    # object columns mixing str and NaN are fine for pyarrow; mixed numbers/str are not in our tables
    return write_frame_atomic(df, path, fmt, label=f"--output {path}")


# ------------------------------------------------------------------------------------------ joining


def pct_error(pred: pd.Series | np.ndarray, meas: pd.Series | np.ndarray) -> np.ndarray:
    """Signed % error (pred - meas) / meas x 100; NaN where meas is missing or not positive."""
    p = np.asarray(pred, dtype=np.float64)
    m = np.asarray(meas, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(m > 0, (p - m) / m * 100.0, np.nan)


def validate(
    bundle: Bundle | str | Path,
    model: ModelConfig | None = None,
    hardware: HardwareConfig | None = None,
    levels: Sequence[str] = LEVELS,
) -> ValidationResult:
    """Predicted beside measured for every batch size and layer the bundle recorded.

    `model` defaults to the bundle's recorded config; a model named by the user must have the bundle's
    shapes (TraceError otherwise). `hardware` defaults to the preset of the bundle's device; the bundle's
    measured HBM peak replaces the preset's bandwidth either way.
    """
    from simulator.sweep import simulate  # the simulator pulls numba-backed routing: import when needed

    unknown = set(levels) - set(LEVELS)
    if unknown:
        raise ConfigError(f"levels: unknown {', '.join(sorted(unknown))} (choose from {', '.join(LEVELS)})")
    bundle = open_bundle(bundle)
    gaps = workload_gaps(bundle)
    try:
        cfg, how = resolve_model(bundle, model)
    except UnknownModelError:
        if gaps:  # a re-import is needed anyway: name everything it should give at once
            raise TraceError(missing_message(bundle, ["model", *gaps])) from None
        raise
    if gaps:
        raise TraceError(missing_message(bundle, gaps))
    hw, notes = resolve_hardware(bundle, hardware)
    if how:
        notes.insert(0, how)
    batches = bundle_batches(bundle)
    workload = bundle_workload(bundle, batches)
    pred = simulate(cfg, hw, workload, per_layer=True)
    meas_routing = measured_routing(bundle)
    if meas_routing is not None and "ideal" in levels:
        pred = _with_routed_ideal(pred, meas_routing, workload.tp)
        levels = (*levels, ROUTED)
    notes.append(
        f"workload: {workload.phase}, context {workload.context[0]}, {workload.weight_dtype}, "
        f"batch {', '.join(map(str, batches))}"
    )
    dtype_source = str((bundle.meta.get("provenance") or {}).get("workload.dtype") or "")
    if dtype_source.startswith("inferred"):
        notes.append(f"workload.dtype {workload.weight_dtype}: {dtype_source}")

    eager = None
    if "eager" in levels:
        eager, how = eager_bytes(cfg, batches, workload, hw)
        if how:
            notes.append(how)
    if bundle.meta.get("partial"):
        notes.append("the bundle is partial: some runs or tables are missing")
    for name in bundle.meta.get("missing") or []:
        notes.append(f"not measured: {name}")

    peak = hw.hbm_bandwidth.value
    layers = _join_layers(pred, measured_layers(bundle), eager, peak, levels)
    steps = _join_steps(pred, measured_steps(bundle), eager, peak, levels)
    routing = _join_routing(pred, meas_routing)
    for df in (steps, layers, routing):
        df.insert(0, "model", cfg.name)
    if steps["meas_bytes_ncu"].notna().any():
        ncu_meta = (bundle.meta.get("extra") or {}).get("ncu") or {}
        notes.append(
            f"ncu: DRAM bytes per kernel, cache mode {ncu_meta.get('cache_mode', 'unknown')} (cold-L2 reads; "
            "writes that fit in L2 may not reach DRAM inside the kernel)"
        )
    in_l2 = steps.loc[steps["pred_l2_ratio"] <= 1.0, "batch"]
    if not in_l2.empty and steps["meas_bytes_gpm"].notna().any():
        notes.append(
            f"batch {', '.join(map(str, in_l2))}: the step reads no more than the "
            f"{hw.l2_bytes.value / 1e6:.0f} MB L2 holds, so the steady loop GPM measures can hit L2 "
            "and read less from HBM than predicted"
        )
    summary = _summary(steps, layers, routing, levels)
    unmatched = sorted(set(layers.loc[layers["kind"].isna(), "layer"]))
    if unmatched:
        notes.append(f"measured layers with no predicted counterpart: {', '.join(unmatched)}")
    notes += _gaps_notes(bundle, steps, layers, summary, hw)
    return ValidationResult(
        model=cfg.name,
        hardware=hw,
        source=bundle_label(bundle),
        meta=dict(bundle.meta),
        prediction=pred,
        steps=steps,
        layers=layers,
        routing=routing,
        summary=summary,
        notes=notes,
    )


def _gaps_notes(
    bundle: Bundle, steps: pd.DataFrame, layers: pd.DataFrame, summary: pd.DataFrame, hw: HardwareConfig
) -> list[str]:
    """What the tables cannot show, said in words: GPM values dropped for a short window, no measured
    bytes, no kernel times, CPU range times in the kernel columns, nothing to compare at all."""
    notes: list[str] = []
    missing = [str(m) for m in bundle.meta.get("missing") or []]
    short = short_gpm_windows(bundle)
    if short and not any(m.startswith("gpm: measurement window under") for m in missing):
        windows = ", ".join(f"batch {b} {s:.3g} s" for b, s in short.items())
        notes.append(
            f"gpm: steady window under {GPM_MIN_WINDOW_S:g} s ({windows}): GPM refreshes every ~100 ms and "
            "lags, so its bytes are not a measurement of the steps and are left out of the errors"
        )
    if steps["meas_bytes_gpm"].isna().all() and steps["meas_bytes_ncu"].isna().all():
        notes.append(
            "bytes: the bundle holds no measured bytes (no GPM over a window of 1 s or more, no ncu pass; "
            "see the not-measured lines), so the predicted bytes have no error beside them"
        )
    measured_kernels = (bundle.meta.get("measured") or {}).get("kernels")
    if "meas_kernel_s" not in layers or layers["meas_kernel_s"].isna().all():
        notes.append(
            "kernels: the bundle holds no kernel time per layer and step (no kernels, or none inside a step "
            "range), so per layer only the prediction is shown"
        )
    elif measured_kernels is False:
        device = (bundle.meta.get("device") or {}).get("name") or "a device without kernels"
        notes.append(
            f"kernels: a run on {device} recorded no GPU kernels: the kernel-time columns hold the time of "
            f"each layer's range on it, compared with the roofline of {hw.name}"
        )
    if summary.empty:
        notes.append("summary: nothing in the bundle was measured that a prediction can be compared with")
    return notes


def validate_run(
    run_dir: str | Path,
    model: str | Path | ModelConfig | None = None,
    output: str | Path | None = None,
    fmt: str | None = None,
    console: Console | None = None,
    hardware: str | Path | HardwareConfig | None = None,
) -> ValidationResult:
    """`memtraffic validate RUN_DIR [--model M] [--output FILE] [--format parquet|csv]` in one call:
    validate, print the tables, write them when asked. `model` is a preset name, a file or a config."""
    cfg = model
    if isinstance(model, str | Path):
        from simulator.loading import load_model

        cfg = load_model(model)
    hw = hardware
    if isinstance(hardware, str | Path):
        from simulator.loading import load_hardware

        hw = load_hardware(hardware)
    if fmt is not None and output is None:
        raise ConfigError(f"--format {fmt} needs --output")
    result = validate(run_dir, model=cfg, hardware=hw)  # type: ignore[arg-type]
    result.render(console)
    if output is not None:
        written = result.to_files(output, fmt)
        if console is not None:
            console.print("wrote " + ", ".join(str(w) for w in written))
    return result


_PRED_LAYER_COLS = [
    "batch",
    "layer",
    "block",
    "kind",
    "flops",
    "weight_bytes_ideal",
    "act_bytes_ideal",
    "kv_read_bytes",
    "kv_write_bytes",
    "bytes_ideal",
    "bytes_naive",
    "intensity",
    "time_s",
    "time_naive_s",
    "bound",
]


def _join_layers(
    pred: pd.DataFrame, meas: pd.DataFrame, eager: pd.DataFrame | None, peak: float, levels: Sequence[str]
) -> pd.DataFrame:
    cols = [*_PRED_LAYER_COLS, *(["bytes_ideal_routed"] if "bytes_ideal_routed" in pred else [])]
    p = pred.loc[pred["layer"] != "total", cols].rename(
        columns={
            "bytes_ideal": "pred_bytes_ideal",
            "bytes_ideal_routed": "pred_bytes_ideal_routed",
            "bytes_naive": "pred_bytes_naive",
            "time_s": "pred_time_s",
            "time_naive_s": "pred_time_naive_s",
        }
    )
    df = p.merge(meas, on=["batch", "layer"], how="outer", sort=False)
    if eager is not None and "eager" in levels:
        df = df.merge(eager, on=["batch", "layer"], how="left")
    df = _order(df)
    if "meas_kernel_s" not in df:
        df["meas_kernel_s"] = np.nan
    df["err_time_pct"] = pct_error(df["pred_time_s"], df["meas_kernel_s"])
    if "pred_time_eager_s" in df:
        df["err_time_eager_pct"] = pct_error(df["pred_time_eager_s"], df["meas_kernel_s"])
    # TraceLens' achieved bandwidth: analytic (predicted ideal) bytes over the measured kernel time
    _achieved(df, "pred_bytes_ideal", "meas_kernel_s", peak)
    if "meas_bytes_ncu" in df:
        for level in levels:
            if f"pred_bytes_{level}" in df:
                df[f"err_{level}_ncu_pct"] = pct_error(df[f"pred_bytes_{level}"], df["meas_bytes_ncu"])
    return df.reset_index(drop=True)


def _with_routed_ideal(pred: pd.DataFrame, meas: pd.DataFrame, tp: int) -> pd.DataFrame:
    """`pred` plus bytes_ideal_routed: each sparse layer's ideal bytes with its measured distinct items
    (mean over the recorded steps) in place of the formula's expectation, item_bytes / tp apiece; layers
    without a measurement keep the formula; totals are the sum over layers."""
    df = pred.merge(meas[["batch", "layer", "meas_distinct"]], on=["batch", "layer"], how="left")
    delta = (df["meas_distinct"] - df["distinct_items"]) * df["item_bytes"] / tp
    df["bytes_ideal_routed"] = df["bytes_ideal"] + delta.where(np.isfinite(delta), 0.0)
    layers = df["layer"] != "total"
    per_batch = df.loc[layers].groupby("batch")["bytes_ideal_routed"].sum()
    df.loc[~layers, "bytes_ideal_routed"] = df.loc[~layers, "batch"].map(per_batch)
    return df.drop(columns="meas_distinct")


def _order(df: pd.DataFrame) -> pd.DataFrame:
    """Batch, then model order: embed, blocks in order, head; unmatched names last."""
    block = (
        pd.to_numeric(df["block"], errors="coerce") if "block" in df else pd.Series(np.nan, index=df.index)
    )
    from_name = df["layer"].str.extract(r"^block(\d+)\.", expand=False).astype(float)
    key = block.where(block >= 0, from_name)
    key = key.where(df["layer"] != "embed", -1.0).where(df["layer"] != "head", 1e9).fillna(2e9)
    return df.assign(_k=key.to_numpy()).sort_values(["batch", "_k"], kind="stable").drop(columns="_k")


def _join_steps(
    pred: pd.DataFrame, meas: pd.DataFrame, eager: pd.DataFrame | None, peak: float, levels: Sequence[str]
) -> pd.DataFrame:
    tot = pred.loc[pred["layer"] == "total"].set_index("batch")
    df = meas.set_index("batch")
    for level in ("ideal", "naive", ROUTED):
        if level in levels:
            df[f"pred_bytes_{level}"] = tot[f"bytes_{level}"]
    if "eager" in levels:
        df["pred_bytes_eager"] = (
            eager.groupby("batch")["pred_bytes_eager"].sum() if eager is not None else np.nan
        )
        if eager is not None and "pred_time_eager_s" in eager:
            df["pred_kernel_eager_s"] = eager.groupby("batch")["pred_time_eager_s"].sum()
    df["pred_time_s"] = tot["time_s"]
    df["pred_time_naive_s"] = tot["time_naive_s"]
    df["flops"] = tot["flops"]
    df["bound"] = tot["bound"]
    # <= 1: the step's reads fit in L2, so GPM (a steady loop) may see fewer bytes than ideal
    df["pred_l2_ratio"] = tot["l2_ratio"]
    for c in ("meas_bytes_gpm", "meas_bytes_ncu", "meas_kernel_s", "us_per_step"):
        if c not in df:
            df[c] = np.nan
    df["meas_step_s"] = df["us_per_step"] * 1e-6
    if "us_per_step_graph" in df:  # profiled with --cuda-graphs: the step without launch overheads
        df["meas_graph_step_s"] = df["us_per_step_graph"] * 1e-6
        df["err_time_graph_pct"] = pct_error(df["pred_time_s"], df["meas_graph_step_s"])
    for level in levels:
        df[f"err_{level}_pct"] = pct_error(df[f"pred_bytes_{level}"], df["meas_bytes_gpm"])
        df[f"err_{level}_ncu_pct"] = pct_error(df[f"pred_bytes_{level}"], df["meas_bytes_ncu"])
    df["err_time_step_pct"] = pct_error(df["pred_time_s"], df["meas_step_s"])
    df["err_time_kernel_pct"] = pct_error(df["pred_time_s"], df["meas_kernel_s"])
    if "pred_kernel_eager_s" in df:
        df["err_time_eager_kernel_pct"] = pct_error(df["pred_kernel_eager_s"], df["meas_kernel_s"])
    _achieved(df, "meas_bytes_gpm", "meas_step_s", peak)
    return df.reset_index()


def _achieved(df: pd.DataFrame, bytes_col: str, time_col: str, peak: float) -> None:
    """achieved_bw_Bps = bytes / time, and bw_share_of_peak, its share of the peak HBM bandwidth."""
    with np.errstate(divide="ignore", invalid="ignore"):
        df["achieved_bw_Bps"] = df[bytes_col] / df[time_col]
    df["bw_share_of_peak"] = df["achieved_bw_Bps"] / peak


def _join_routing(pred: pd.DataFrame, meas: pd.DataFrame | None) -> pd.DataFrame:
    p = pred.loc[
        (pred["layer"] != "total") & pred["distinct_items"].notna(),
        ["batch", "layer", "kind", "distinct_items", "items_requested"],
    ]
    p = p.rename(columns={"distinct_items": "pred_distinct", "items_requested": "pred_requested"})
    if meas is None:
        cols = ["meas_distinct", "meas_distinct_min", "meas_distinct_max", "meas_requested", "n_steps"]
        df = p.assign(**{c: np.nan for c in cols})
    else:
        df = p.merge(meas, on=["batch", "layer"], how="outer")
    df["err_distinct_pct"] = pct_error(df["pred_distinct"], df["meas_distinct"])
    return _order(df).reset_index(drop=True)


def _summary(
    steps: pd.DataFrame, layers: pd.DataFrame, routing: pd.DataFrame, levels: Sequence[str]
) -> pd.DataFrame:
    """Median |error| and MAPE per layer kind and metric (only metrics with measured data)."""
    rows: list[dict[str, Any]] = []

    def add(kind: str, metric: str, errors: pd.Series) -> None:
        e = pd.to_numeric(errors, errors="coerce").to_numpy(dtype=np.float64)
        e = e[np.isfinite(e)]
        if e.size:
            rows.append(
                {
                    "kind": kind,
                    "metric": metric,
                    "n": int(e.size),
                    "median_abs_err_pct": float(np.median(np.abs(e))),
                    "mape_pct": float(np.mean(np.abs(e))),
                    "median_err_pct": float(np.median(e)),
                }
            )

    for level in levels:
        add("step", f"bytes_{level} vs GPM", steps[f"err_{level}_pct"])
        add("step", f"bytes_{level} vs ncu", steps[f"err_{level}_ncu_pct"])
    add("step", "time vs step time", steps["err_time_step_pct"])
    add("step", "time vs kernel sum", steps["err_time_kernel_pct"])
    if "err_time_eager_kernel_pct" in steps:
        add("step", "eager time vs kernel sum", steps["err_time_eager_kernel_pct"])
    if "err_time_graph_pct" in steps:
        add("step", "time vs CUDA-graph step", steps["err_time_graph_pct"])
    for kind, g in layers.dropna(subset=["kind"]).groupby("kind", sort=False):
        add(str(kind), "time vs kernel time", g["err_time_pct"])
        if "err_time_eager_pct" in g:
            add(str(kind), "eager time vs kernel time", g["err_time_eager_pct"])
        for level in levels:
            if f"err_{level}_ncu_pct" in g:
                add(str(kind), f"bytes_{level} vs ncu", g[f"err_{level}_ncu_pct"])
    for kind, g in routing.dropna(subset=["kind"]).groupby("kind", sort=False):
        add(str(kind), "distinct items", g["err_distinct_pct"])
    cols = ["kind", "metric", "n", "median_abs_err_pct", "mape_pct", "median_err_pct"]
    return pd.DataFrame(rows, columns=cols)

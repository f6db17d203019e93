"""Per layer kind, a fitted time model from a validation, saved and loaded as JSON.

Each layer of a kind is modelled as measured kernel time = overhead + predicted ideal bytes /
(peak HBM bandwidth x efficiency): a least-squares line through its (bytes, time) points over batch
sizes, so a fixed cost that does not scale with bytes (kernel launches, small-kernel tails) is not
mistaken for low bandwidth. Only the points the roofline calls memory-bound enter the fit (a kind with
none keeps all): a compute-bound GEMM's time is no measure of bandwidth. When the bytes do not vary
enough to fit a line (one batch size, or time not growing with bytes) the kind gets the median achieved
share of peak and no overhead. Efficiency is clipped to (0, 1.5]; above 1 means the layer moved fewer
bytes than predicted (L2 reuse), not that HBM ran faster than peak. `simulate(..., efficiency=cal,
overhead=cal.overhead_s)` applies both; the whole-step value ("step", from the kernel-time sum per
step) is informational.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from simulator.atomic import require_folder, write_text_atomic
from simulator.errors import ConfigError

if TYPE_CHECKING:
    from reports.validation import ValidationResult
    from simulator.config import HardwareConfig
    from traces.bundle import Bundle

CALIBRATION_FORMAT = "memtraffic-calibration"
CALIBRATION_VERSION = 2  # 2 added overhead_s; version 1 files (efficiency only) still load
CALIBRATION_FILE = "calibration.json"  # looked up inside a run folder
STEP_KEY = "step"
MAX_EFFICIENCY = 1.5


def _median_clipped(values: pd.Series) -> float | None:
    v = values.to_numpy(dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return None
    return float(min(np.median(v), MAX_EFFICIENCY))


class Calibration(dict[str, float]):
    """Efficiency per layer kind (the dict itself), the fitted fixed time per kind (`overhead_s`) and the
    hardware preset it was fitted on (`hardware`; None in files written before it was recorded)."""

    def __init__(
        self,
        efficiency: dict[str, float],
        overhead_s: dict[str, float] | None = None,
        hardware: str | None = None,
    ) -> None:
        super().__init__(efficiency)
        self.overhead_s: dict[str, float] = dict(overhead_s or {})
        self.hardware = hardware


def calibration_warnings(cal: Calibration, label: str, hardware: list[str], kinds: set[str]) -> list[str]:
    """What a user applying `cal` to `hardware` and models with these layer `kinds` should know: a fit
    made on another GPU is applied as it is (its efficiencies and fixed times belong to the GPU and the
    software stack it was measured on), and kinds without a fit stay at the plain roofline."""
    out = []
    others = sorted(set(hardware) - {cal.hardware}) if cal.hardware else []
    if others:
        out.append(f"{label} was fitted on {cal.hardware}; applied as it is to {', '.join(others)}")
    unfitted = sorted(kinds - set(cal))
    if unfitted:
        out.append(
            f"{label} has no fit for {', '.join(unfitted)} layers (fitted: "
            f"{', '.join(k for k in cal if k != STEP_KEY)}): plain roofline for them"
        )
    return out


def fit_kind(bytes_: np.ndarray, seconds: np.ndarray, peak_Bps: float) -> tuple[float, float] | None:
    """(efficiency, overhead_s) of one kind from its (predicted bytes, measured seconds) points."""
    ok = np.isfinite(bytes_) & np.isfinite(seconds) & (bytes_ > 0) & (seconds > 0)
    x, t = bytes_[ok], seconds[ok]
    if x.size == 0:
        return None
    ratio = x / t
    proportional = np.ptp(ratio) <= 1e-9 * np.median(ratio)  # no fixed cost: the ratio is the answer
    if not proportional and np.unique(x).size >= 2 and np.ptp(x) > 0.05 * x.max():
        slope, intercept = np.polyfit(x, t, 1)
        if intercept < 0:  # a negative fixed cost is no cost: refit through the origin
            slope, intercept = float(x @ t / (x @ x)), 0.0
        if slope > 0:
            return min(1.0 / (slope * peak_Bps), MAX_EFFICIENCY), float(intercept)
    median = _median_clipped(pd.Series(ratio / peak_Bps))
    return None if median is None else (median, 0.0)


def calibration_from_layers(layers: pd.DataFrame, peak_Bps: float) -> Calibration:
    """Fit every kind from per-layer rows (kind, pred_bytes_ideal, meas_kernel_s) over batch sizes."""
    df = layers.dropna(subset=["kind", "pred_bytes_ideal", "meas_kernel_s"])
    if "bound" in df:
        # a bandwidth efficiency comes from the points bandwidth limits: a compute-bound GEMM's time
        # (a dense FFN at thousands of tokens) is no measure of it. A kind with none keeps them all.
        memory = df["bound"] == "memory"
        df = df[memory | ~df["kind"].isin(df.loc[memory, "kind"].unique())]
    eff: dict[str, float] = {}
    overhead: dict[str, float] = {}
    for kind, g in df.groupby("kind", sort=False):
        fitted = fit_kind(
            g["pred_bytes_ideal"].to_numpy(np.float64), g["meas_kernel_s"].to_numpy(np.float64), peak_Bps
        )
        if fitted is not None:
            eff[str(kind)], overhead[str(kind)] = fitted
    return Calibration(eff, overhead)


def efficiency_from_layers(layers: pd.DataFrame, peak_Bps: float) -> dict[str, float]:
    """The efficiencies of `calibration_from_layers`, as a plain dict."""
    return dict(calibration_from_layers(layers, peak_Bps))


def fit_efficiency(result: ValidationResult) -> Calibration:
    """The calibration of a validation: per layer kind, plus "step" (whole step: predicted ideal bytes /
    kernel-time sum, median over batch sizes; no overhead)."""
    cal = calibration_from_layers(result.layers, result.peak_Bps)
    cal.hardware = result.hardware.name
    steps = result.steps
    if {"pred_bytes_ideal", "meas_kernel_s"} <= set(steps.columns):
        with np.errstate(divide="ignore", invalid="ignore"):
            per_batch = steps["pred_bytes_ideal"] / steps["meas_kernel_s"] / result.peak_Bps
        value = _median_clipped(per_batch)
        if value is not None:
            cal[STEP_KEY] = value
    return cal


# ------------------------------------------------------------------------------------------ files


def save_calibration(path: str | Path, eff: dict[str, float], provenance: dict[str, Any]) -> Path:
    """Write the efficiencies and where they came from as JSON, atomically; returns the path."""
    path = Path(path)
    if path.is_dir():
        path = path / CALIBRATION_FILE
    require_folder(path, str(path))
    doc = {
        "format": CALIBRATION_FORMAT,
        "version": CALIBRATION_VERSION,
        "created_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),  # noqa: UP017 (py3.10)
        "efficiency": _checked(eff, str(path)),
        "overhead_s": dict(getattr(eff, "overhead_s", {})),
        "hardware": getattr(eff, "hardware", None),
        "provenance": provenance,
    }
    return write_text_atomic(path, json.dumps(doc, indent=1, sort_keys=False, default=str) + "\n")


def load_calibration(
    path_or_bundle: str | Path | Bundle, hardware: HardwareConfig | None = None
) -> Calibration:
    """Efficiencies from a calibration JSON file, a folder holding calibration.json, or a trace bundle
    (object or folder without calibration.json: validated and fitted on the spot; `hardware` as in
    `validate`). Every failure is one ConfigError/TraceError line."""
    if not isinstance(path_or_bundle, str | Path):
        return _fit_bundle(path_or_bundle, hardware)
    path = Path(path_or_bundle)
    if path.is_dir():
        if (path / CALIBRATION_FILE).is_file():
            path = path / CALIBRATION_FILE
        elif (path / "bundle.json").is_file():
            from traces.bundle import read_bundle

            return _fit_bundle(read_bundle(path), hardware)
        else:
            raise ConfigError(f"--calibration {path}: holds neither {CALIBRATION_FILE} nor a trace bundle")
    if not path.is_file():
        raise ConfigError(f"--calibration {path}: no such file or folder")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(
            f"--calibration {path}: not a calibration JSON ({str(exc).splitlines()[0]})"
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != CALIBRATION_FORMAT:
        raise ConfigError(f"--calibration {path}: not a memtraffic calibration file")
    if doc.get("version") not in (1, CALIBRATION_VERSION):
        raise ConfigError(
            f"--calibration {path}: calibration version {doc.get('version')!r}, this memtraffic reads "
            f"1 and {CALIBRATION_VERSION}"
        )
    overhead = doc.get("overhead_s") or {}
    if not isinstance(overhead, dict) or not all(
        isinstance(v, int | float) and math.isfinite(v) and v >= 0 for v in overhead.values()
    ):
        raise ConfigError(f"--calibration {path}: overhead_s must map layer kinds to seconds >= 0")
    hardware = doc.get("hardware")
    return Calibration(
        _checked(doc.get("efficiency"), str(path)),
        {str(k): float(v) for k, v in overhead.items()},
        hardware if isinstance(hardware, str) else None,
    )


def _fit_bundle(bundle: Bundle, hardware: HardwareConfig | None) -> Calibration:
    from reports.validation import validate

    return fit_efficiency(validate(bundle, hardware=hardware, levels=("ideal", "naive")))


def _checked(eff: Any, where: str) -> dict[str, float]:
    if not isinstance(eff, dict) or not eff:
        raise ConfigError(f"--calibration {where}: no efficiency values")
    out: dict[str, float] = {}
    for kind, value in eff.items():
        v = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
        if not (math.isfinite(v) and 0 < v <= MAX_EFFICIENCY):
            raise ConfigError(f"--calibration {where}: efficiency of {kind!r} is {value!r}, not in (0, 1.5]")
        out[str(kind)] = v
    return out

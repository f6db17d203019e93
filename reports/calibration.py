"""Achieved-bandwidth efficiency per layer kind, fitted from a validation, saved and loaded as JSON.

efficiency(kind) = median over batch sizes of (predicted ideal bytes of the kind's layers / their measured
kernel time) / peak HBM bandwidth, clipped to (0, 1.5]. `simulate(..., efficiency=load_calibration(x))`
then divides each layer's ideal bytes by (bandwidth x efficiency of its kind). A value above 1 means the
layer moved fewer bytes than predicted (L2 reuse, a tighter kernel), not that HBM ran faster than peak.
The whole-step value ("step") uses the kernel-time sum per step; it is informational: `simulate` looks
up layer kinds only.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from reports.atomic import require_folder, write_text_atomic
from simulator.errors import ConfigError

if TYPE_CHECKING:
    from reports.validation import ValidationResult
    from simulator.config import HardwareConfig
    from traces.bundle import Bundle

CALIBRATION_FORMAT = "memtraffic-calibration"
CALIBRATION_VERSION = 1
CALIBRATION_FILE = "calibration.json"  # looked up inside a run folder
STEP_KEY = "step"
MAX_EFFICIENCY = 1.5


def efficiency_table(layers: pd.DataFrame, peak_Bps: float) -> pd.DataFrame:
    """Per (kind, batch): summed predicted ideal bytes over summed kernel time, and its share of peak."""
    df = layers.dropna(subset=["kind", "pred_bytes_ideal", "meas_kernel_s"])
    df = df[df["meas_kernel_s"] > 0]
    g = df.groupby(["kind", "batch"], sort=False)[["pred_bytes_ideal", "meas_kernel_s"]].sum().reset_index()
    g["achieved_bw_Bps"] = g["pred_bytes_ideal"] / g["meas_kernel_s"]
    g["efficiency"] = g["achieved_bw_Bps"] / peak_Bps
    return g


def _median_clipped(values: pd.Series) -> float | None:
    v = values.to_numpy(dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return None
    return float(min(np.median(v), MAX_EFFICIENCY))


def efficiency_from_layers(layers: pd.DataFrame, peak_Bps: float) -> dict[str, float]:
    """Per layer kind: median over batch sizes of the achieved share of peak, clipped to (0, 1.5]."""
    table = efficiency_table(layers, peak_Bps)
    out: dict[str, float] = {}
    for kind, g in table.groupby("kind", sort=False):
        value = _median_clipped(g["efficiency"])
        if value is not None:
            out[str(kind)] = value
    return out


def fit_efficiency(result: ValidationResult) -> dict[str, float]:
    """Efficiency per layer kind, plus "step" (whole step: predicted ideal bytes / kernel-time sum)."""
    eff = efficiency_from_layers(result.layers, result.peak_Bps)
    steps = result.steps
    if {"pred_bytes_ideal", "meas_kernel_s"} <= set(steps.columns):
        with np.errstate(divide="ignore", invalid="ignore"):
            per_batch = steps["pred_bytes_ideal"] / steps["meas_kernel_s"] / result.peak_Bps
        value = _median_clipped(per_batch)
        if value is not None:
            eff[STEP_KEY] = value
    return eff


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
        "provenance": provenance,
    }
    return write_text_atomic(path, json.dumps(doc, indent=1, sort_keys=False, default=str) + "\n")


def load_calibration(
    path_or_bundle: str | Path | Bundle, hardware: HardwareConfig | None = None
) -> dict[str, float]:
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
    if doc.get("version") != CALIBRATION_VERSION:
        raise ConfigError(
            f"--calibration {path}: calibration version {doc.get('version')!r}, this memtraffic reads "
            f"{CALIBRATION_VERSION}"
        )
    return _checked(doc.get("efficiency"), str(path))


def _fit_bundle(bundle: Bundle, hardware: HardwareConfig | None) -> dict[str, float]:
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

"""Leave-one-batch-out check of the calibrated time model on the committed H100 recordings.

For each sample bundle and each batch size: fit the per-kind calibration (efficiency + fixed time) on the
other batch sizes, simulate the held-out one, and print the median signed error of per-layer time
against the measured kernel time, beside the uncalibrated roofline's.

With --transfer, the calibration is fitted on every batch of some bundles instead and applied to
another bundle's model (its own recorded config): whether a per-kind fit carries over to other shapes.

Run from the repository root:
    python scripts/calibration_holdout.py
    python scripts/calibration_holdout.py --transfer traces/samples/h100-profiled/moe \
        traces/samples/h100-profiled/umv2 --to traces/samples/h100-profiled/zoo
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from reports.calibration import calibration_from_layers
from reports.validation import ValidationResult, validate
from simulator.config import ModelConfig, Workload
from simulator.loading import load_model
from simulator.sweep import simulate
from traces import read_bundle

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = {"moe": "h100-sample-moe", "umv2": "h100-sample-umv2"}


def _errors(res: ValidationResult, model: ModelConfig, batch: int, cal, label: str) -> list[dict]:
    """Median signed % error per kind at one batch of `res`, `model` simulated with calibration `cal`,
    beside the uncalibrated roofline's."""
    wl = Workload(batch=[batch], context=[int(res.prediction["context"].iloc[0])])
    sim = simulate(model, res.hardware, wl, per_layer=True, efficiency=cal, overhead=cal.overhead_s)
    meas = res.layers[res.layers["batch"] == batch][["layer", "meas_kernel_s", "pred_time_s"]]
    m = meas.merge(sim[["layer", "kind", "time_s"]], on="layer")
    m["calibrated"] = (m["time_s"] - m["meas_kernel_s"]) / m["meas_kernel_s"] * 100
    m["roofline"] = (m["pred_time_s"] - m["meas_kernel_s"]) / m["meas_kernel_s"] * 100
    return [
        {
            "model": label,
            "batch": batch,
            "kind": kind,
            "fitted": kind in cal,
            "calibrated_err_pct": g["calibrated"].median(),
            "roofline_err_pct": g["roofline"].median(),
        }
        for kind, g in m.groupby("kind")
    ]


def holdout_errors(bundle: str, preset: str) -> pd.DataFrame:
    """Median signed % error per (held-out batch, kind), calibrated on the other batches, and not."""
    res = validate(ROOT / "traces" / "samples" / "bundles" / bundle, levels=("ideal",))
    model = load_model(preset)
    rows = []
    for batch in sorted(res.layers["batch"].unique()):
        cal = calibration_from_layers(res.layers[res.layers["batch"] != batch], res.peak_Bps)
        rows += _errors(res, model, int(batch), cal, preset)
    return pd.DataFrame(rows).rename(columns={"batch": "held_out_batch"})


def transfer_errors(fit: list[Path], target: Path) -> pd.DataFrame:
    """Calibration fitted on every batch of the `fit` bundles, applied to `target`'s recorded model."""
    fitted = [validate(path, levels=("ideal",)) for path in fit]
    cal = calibration_from_layers(pd.concat([r.layers for r in fitted]), fitted[0].peak_Bps)
    res = validate(target, levels=("ideal",))
    model = ModelConfig.model_validate(read_bundle(target).meta["model"]["config"])
    rows = []
    for batch in sorted(res.layers["batch"].unique()):
        rows += _errors(res, model, int(batch), cal, model.name)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--transfer", type=Path, nargs="+", help="bundles to fit on (every batch)")
    p.add_argument("--to", type=Path, help="the bundle to apply the fit to (with --transfer)")
    a = p.parse_args(argv)
    if (a.transfer is None) != (a.to is None):
        p.error("--transfer and --to go together")
    if a.transfer:
        table = transfer_errors(a.transfer, a.to)
    else:
        table = pd.concat([holdout_errors(b, s) for b, s in SAMPLES.items()], ignore_index=True)
    with pd.option_context("display.width", 120, "display.float_format", "{:+.1f}".format):
        print(table.to_string(index=False))


if __name__ == "__main__":
    main()

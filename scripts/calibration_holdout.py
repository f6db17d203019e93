"""Leave-one-batch-out check of the calibrated time model on the committed H100 recordings.

For each sample bundle and each batch size: fit the per-kind calibration (efficiency + fixed time) on the
other batch sizes, simulate the held-out one, and print the median signed error of per-layer time
against the measured kernel time, beside the uncalibrated roofline's.

Run from the repository root:  python scripts/calibration_holdout.py
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from reports.calibration import calibration_from_layers
from reports.validation import validate
from simulator.config import Workload
from simulator.loading import load_model
from simulator.sweep import simulate

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = {"moe": "h100-sample-moe", "umv2": "h100-sample-umv2"}


def holdout_errors(bundle: str, preset: str) -> pd.DataFrame:
    """Median signed % error per (held-out batch, kind), calibrated and not."""
    res = validate(ROOT / "traces" / "samples" / "bundles" / bundle, levels=("ideal",))
    model = load_model(preset)
    rows = []
    for batch in sorted(res.layers["batch"].unique()):
        cal = calibration_from_layers(res.layers[res.layers["batch"] != batch], res.peak_Bps)
        wl = Workload(batch=[int(batch)], context=[int(res.prediction["context"].iloc[0])])
        sim = simulate(model, res.hardware, wl, per_layer=True, efficiency=cal, overhead=cal.overhead_s)
        meas = res.layers[res.layers["batch"] == batch][["layer", "meas_kernel_s", "pred_time_s"]]
        m = meas.merge(sim[["layer", "kind", "time_s"]], on="layer")
        m["calibrated"] = (m["time_s"] - m["meas_kernel_s"]) / m["meas_kernel_s"] * 100
        m["roofline"] = (m["pred_time_s"] - m["meas_kernel_s"]) / m["meas_kernel_s"] * 100
        for kind, g in m.groupby("kind"):
            rows.append(
                {
                    "model": preset,
                    "held_out_batch": int(batch),
                    "kind": kind,
                    "calibrated_err_pct": g["calibrated"].median(),
                    "roofline_err_pct": g["roofline"].median(),
                }
            )
    return pd.DataFrame(rows)


def main() -> None:
    table = pd.concat([holdout_errors(b, p) for b, p in SAMPLES.items()], ignore_index=True)
    with pd.option_context("display.width", 120, "display.float_format", "{:+.1f}".format):
        print(table.to_string(index=False))


if __name__ == "__main__":
    main()

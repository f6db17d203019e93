"""The calibrated time model (per kind: fixed time + bytes / (peak x efficiency)) predicts a batch size it
was not fitted on, on the real H100 recordings; the uncalibrated roofline does not."""

from __future__ import annotations

import pytest

from scripts.calibration_holdout import holdout_errors


@pytest.mark.parametrize(("bundle", "preset"), [("moe", "h100-sample-moe"), ("umv2", "h100-sample-umv2")])
def test_leave_one_batch_out(bundle: str, preset: str) -> None:
    table = holdout_errors(bundle, preset)
    assert set(table["held_out_batch"]) == {1, 8, 64, 256}
    # every layer kind, every held-out batch size: within 35 % of the measured kernel time
    assert (table["calibrated_err_pct"].abs() < 35).all(), table
    # the pure roofline misses these eager, launch-bound layers by far more
    assert (table["roofline_err_pct"] < -20).all(), table
    assert table["calibrated_err_pct"].abs().median() < 10


def test_fit_recovers_a_known_fixed_time_and_efficiency() -> None:
    import numpy as np

    from reports.calibration import fit_kind

    peak = 3.35e12
    x = np.array([1e6, 4e6, 3e7, 1e8])
    t = 20e-6 + x / (0.4 * peak)  # 20 us of launches + 40 % of peak bandwidth
    eff, fixed = fit_kind(x, t, peak)
    assert eff == pytest.approx(0.4, rel=1e-9)
    assert fixed == pytest.approx(20e-6, rel=1e-9)

"""profiler.nvml: the real failure path on a GPU-less machine; the sampler driven by a scripted backend."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pynvml
import pytest

from profiler.nvml import (
    COLUMNS,
    GPM_METRICS,
    MIN_GPM_WINDOW_S,
    NvmlSampler,
    device_info,
    dram_bytes,
    nvml_status,
    peak_hbm_bps,
)
from simulator.errors import MeasurementUnavailable

RECORDING = Path("/work/shared/data/h100-decode-2026-11-26")
H100_PEAK = 5120 / 8 * 2619e6 * 2  # 3.35232e12 B/s


class FakeBackend:
    """Scripted NVML: window i (1-based) reads DRAM 10*i %, SM 50 %, tensor metric unsupported (NaN)."""

    def __init__(
        self,
        gpm: bool = True,
        fail_start: Exception | None = None,
        fail_power: bool = False,
        fail_gpm_window: int | None = None,
    ) -> None:
        self.gpm = gpm
        self.fail_start = fail_start
        self.fail_power = fail_power
        self.fail_gpm_window = fail_gpm_window
        self.gets = 0
        self.allocated: list[dict[str, int]] = []
        self.freed: list[dict[str, int]] = []
        self.pairs: list[tuple[int, int]] = []
        self.closed = False

    def device_facts(self) -> dict[str, Any]:
        return {
            "name": "Fake H100",
            "driver": "580.159.04",
            "bus_width_bits": 5120,
            "max_mem_clock_mhz": 2619,
            "power_limit_mw": 700_000,
            "gpm_supported": self.gpm,
        }

    def gpm_alloc(self) -> dict[str, int]:
        sample = {"n": -1}
        self.allocated.append(sample)
        return sample

    def gpm_get(self, sample: dict[str, int]) -> None:
        if self.fail_start is not None:
            raise self.fail_start
        self.gets += 1
        if self.fail_gpm_window is not None and self.gets == self.fail_gpm_window + 1:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)
        sample["n"] = self.gets

    def gpm_metrics(self, start: dict[str, int], end: dict[str, int], ids: list[int]) -> list[float]:
        self.pairs.append((start["n"], end["n"]))
        window = end["n"] - 1
        scripted = {10: 10.0 * window, 2: 50.0, 5: math.nan}
        return [scripted[i] for i in ids]

    def gpm_free(self, sample: dict[str, int]) -> None:
        self.freed.append(sample)

    def utilization(self) -> tuple[int, int]:
        return 37, 100

    def power_mw(self) -> int:
        if self.fail_power:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return 548_000

    def energy_mj(self) -> int:
        return 2_840_513 + 1000 * self.gets

    def clocks_mhz(self) -> tuple[int, int]:
        return 1980, 2619

    def close(self) -> None:
        self.closed = True


def _run(backend: FakeBackend, seconds: float = 0.35, **kwargs: Any) -> tuple[NvmlSampler, pd.DataFrame]:
    sampler = NvmlSampler(backend=backend, **kwargs)
    with sampler:
        time.sleep(seconds)
    return sampler, sampler.to_dataframe()


# ----------------------------------------------------------------------------------------- this machine
def test_real_failure_path_without_gpu() -> None:
    ok, reason = nvml_status()
    if ok:
        pytest.skip(f"NVML works here: {reason}")
    assert reason and "\n" not in reason
    assert "NVML" in reason or "driver" in reason
    with pytest.raises(MeasurementUnavailable) as info:
        device_info()
    assert str(info.value) and "\n" not in str(info.value)
    with pytest.raises(MeasurementUnavailable):
        NvmlSampler().start()


# ----------------------------------------------------------------------------------------- formulas
def test_peak_formula_and_device_info() -> None:
    peak, how = peak_hbm_bps(5120, 2619)
    assert peak == pytest.approx(3.35232e12, rel=1e-12) and peak == H100_PEAK
    assert "5120/8" in how and "2619" in how and "x 2" in how
    info = device_info(backend=FakeBackend())
    assert info["peak_hbm_Bps"] == pytest.approx(3.35232e12, rel=1e-12)
    assert info["peak_hbm_derivation"] == how
    assert info["gpm_supported"] is True and info["power_limit_mw"] == 700_000
    assert {"name", "driver", "bus_width_bits", "max_mem_clock_mhz"} <= set(info)


def test_metric_ids_are_pynvml_constants() -> None:
    assert GPM_METRICS == {
        pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: "gpm_dram_bw_util_pct",
        pynvml.NVML_GPM_METRIC_SM_UTIL: "gpm_sm_util_pct",
        pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: "gpm_tensor_util_pct",
    }


def test_interval_clamped_to_gpm_refresh() -> None:
    assert NvmlSampler(interval_s=0.01, backend=FakeBackend()).interval_s == MIN_GPM_WINDOW_S
    assert NvmlSampler(interval_s=0.5, backend=FakeBackend()).interval_s == 0.5


# ----------------------------------------------------------------------------------------- the sampler
def test_windows_contiguous_schema_and_units() -> None:
    backend = FakeBackend()
    sampler, df = _run(backend)
    assert list(df.columns) == list(COLUMNS)
    if RECORDING.exists():  # the same schema as the real H100 recording
        assert list(pd.read_csv(RECORDING / "nvml_timeline.csv", nrows=1).columns) == list(COLUMNS)
    assert 2 <= len(df) <= 8 and not sampler.errors
    # Contiguous windows, none shorter than GPM's 100 ms refresh, including the last one closed by stop().
    assert (df["t_start_ns"].iloc[1:].to_numpy() == df["t_end_ns"].iloc[:-1].to_numpy()).all()
    assert ((df["t_end_ns"] - df["t_start_ns"]) >= MIN_GPM_WINDOW_S * 1e9).all()
    assert df["t_start_ns"].iloc[0] > 1.7e18  # wall clock in ns, not seconds or monotonic time
    # Each window's end sample is the next window's start sample: no gaps, no extra samples.
    assert backend.pairs == [(i, i + 1) for i in range(1, len(df) + 1)]
    assert len(backend.allocated) == 2
    assert sorted(map(id, backend.freed)) == sorted(map(id, backend.allocated))
    assert not backend.closed  # a backend passed in belongs to the caller
    # Values pass through in their units: percent, mW, mJ (cumulative), MHz.
    assert df["gpm_dram_bw_util_pct"].tolist() == [10.0 * i for i in range(1, len(df) + 1)]
    assert (df["gpm_sm_util_pct"] == 50.0).all()
    assert df["gpm_tensor_util_pct"].isna().all()  # unsupported metric: NaN, not a crash
    assert (df["util_gpu_pct"] == 37).all() and (df["util_mem_pct"] == 100).all()
    assert (df["power_mw"] == 548_000).all() and df["energy_mj"].is_monotonic_increasing
    assert (df["sm_clock_mhz"] == 1980).all() and (df["mem_clock_mhz"] == 2619).all()


def test_no_gpm_device() -> None:
    with pytest.raises(MeasurementUnavailable, match="GPM"):
        NvmlSampler(backend=FakeBackend(gpm=False)).start()
    sampler, df = _run(FakeBackend(gpm=False), seconds=0.25, require_gpm=False)
    assert len(df) >= 2 and not sampler.errors
    assert df[list(GPM_METRICS.values())].isna().all().all()
    assert (df["power_mw"] == 548_000).all()


def test_no_permission_raises_at_start_and_frees_samples() -> None:
    backend = FakeBackend(fail_start=pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION))
    with pytest.raises(MeasurementUnavailable, match="NO_PERMISSION") as info:
        NvmlSampler(backend=backend).start()
    assert "\n" not in str(info.value)
    assert len(backend.freed) == len(backend.allocated) == 2


def test_thread_errors_are_recorded_not_raised() -> None:
    backend = FakeBackend(fail_power=True, fail_gpm_window=2)
    sampler, df = _run(backend, seconds=0.6)
    assert len(df) >= 4
    assert df["power_mw"].isna().all()
    assert any("power_mw" in e for e in sampler.errors) and any("GPM" in e for e in sampler.errors)
    dram = df["gpm_dram_bw_util_pct"]
    assert dram.iloc[0] == 10.0 and dram.iloc[1:3].isna().all() and dram.iloc[3:].notna().all()
    assert (df["t_start_ns"].iloc[1:].to_numpy() == df["t_end_ns"].iloc[:-1].to_numpy()).all()


# ----------------------------------------------------------------------------------------- integration
def test_dram_bytes_integrates_overlap() -> None:
    df = pd.DataFrame(
        {
            "t_start_ns": [0, 100_000_000, 200_000_000],
            "t_end_ns": [100_000_000, 200_000_000, 300_000_000],
            "gpm_dram_bw_util_pct": [50.0, 100.0, math.nan],
        }
    )
    assert dram_bytes(df, H100_PEAK) == pytest.approx(0.5 * H100_PEAK * 0.1 + H100_PEAK * 0.1)
    # Only the half of window 1 and a quarter of window 2 that overlap [50 ms, 125 ms].
    assert dram_bytes(df, H100_PEAK, 50_000_000, 125_000_000) == pytest.approx(
        0.5 * H100_PEAK * 0.05 + H100_PEAK * 0.025
    )


@pytest.mark.skipif(not RECORDING.exists(), reason="shared H100 recording not present")
def test_dram_bytes_on_real_recording() -> None:
    meta = json.loads((RECORDING / "meta.json").read_text())
    run = next(r for r in meta["runs"] if r["model"] == "moe" and r["batch"] == 1)
    timeline = pd.read_csv(RECORDING / "nvml_timeline.csv")
    per_step = dram_bytes(timeline, meta["peak_hbm_Bps"], run["steady_start_ns"], run["steady_end_ns"])
    per_step /= run["steps"]
    assert 80e6 < per_step < 120e6  # the recording's README: about 99 MB per step

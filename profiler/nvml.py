"""Background NVML sampler: GPM DRAM bandwidth, SM and tensor utilisation, duty cycle, power, energy, clocks.

One row per contiguous window (the end of one window is the start of the next). GPM metrics are rates over
the window, computed by NVML from the GPM samples taken at both ends; the classic counters are read once, at
the window's end. Measured facts this design relies on: shared/docs/measured-on-h100.md.

The sampler talks to NVML through a small backend (`NvmlBackend`), so tests can script it without a GPU.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

import pandas as pd

from simulator.errors import MeasurementUnavailable
from traces.timeline import TIMELINE_COLUMNS

__all__ = [
    "COLUMNS",
    "GPM_METRICS",
    "MIN_GPM_WINDOW_S",
    "NvmlBackend",
    "NvmlSampler",
    "PynvmlBackend",
    "device_info",
    "dram_bytes",
    "nvml_status",
    "peak_hbm_bps",
]

# Exactly the columns of the real recording (shared/data/h100-decode-2026-11-26/nvml_timeline.csv): the
# timeline format traces.timeline reads.
COLUMNS: tuple[str, ...] = TIMELINE_COLUMNS

# GPM metric ids (pynvml NVML_GPM_METRIC_*; fixed by the NVML ABI) -> our column.
GPM_METRICS: dict[int, str] = {
    10: "gpm_dram_bw_util_pct",  # NVML_GPM_METRIC_DRAM_BW_UTIL: % of theoretical DRAM bandwidth
    2: "gpm_sm_util_pct",  # NVML_GPM_METRIC_SM_UTIL
    5: "gpm_tensor_util_pct",  # NVML_GPM_METRIC_ANY_TENSOR_UTIL
}

# NVML refreshes GPM internally about every 100 ms: shorter windows read ~0 (a 50 ms window read 0 for
# every metric on the H100), so no window may be shorter than this.
MIN_GPM_WINDOW_S = 0.1

_NAN = float("nan")


def peak_hbm_bps(bus_width_bits: int, max_mem_clock_mhz: float) -> tuple[float, str]:
    """Theoretical DRAM bandwidth in B/s and how it was derived (double data rate: 2 transfers a clock)."""
    peak = bus_width_bits / 8 * max_mem_clock_mhz * 1e6 * 2
    return peak, f"{bus_width_bits}/8 B x {max_mem_clock_mhz:g}e6 /s x 2 (DDR) = {peak:.6g} B/s"


# ----------------------------------------------------------------------------------------- backend
class NvmlBackend(Protocol):
    """What the sampler needs from NVML; every call may raise (the sampler records it, never re-raises)."""

    def device_facts(self) -> dict[str, Any]:
        """name, driver, bus_width_bits, max_mem_clock_mhz, power_limit_mw, gpm_supported."""
        ...

    def gpm_alloc(self) -> Any: ...
    def gpm_get(self, sample: Any) -> None: ...
    def gpm_metrics(self, start: Any, end: Any, metric_ids: Sequence[int]) -> list[float]:
        """One value per id; NaN for a metric whose own nvmlReturn is not success."""
        ...

    def gpm_free(self, sample: Any) -> None: ...
    def utilization(self) -> tuple[int, int]:
        """(gpu %, memory %): duty cycles, not bandwidth."""
        ...

    def power_mw(self) -> int: ...
    def energy_mj(self) -> int: ...
    def clocks_mhz(self) -> tuple[int, int]:
        """(SM clock, memory clock)."""
        ...

    def close(self) -> None: ...


def _nvml_reason(exc: BaseException) -> str:
    """One line naming what is missing, for MeasurementUnavailable and nvml_status."""
    if isinstance(exc, ImportError):
        return "NVML unavailable: the nvidia-ml-py package (pynvml) is not installed"
    try:
        import pynvml
    except ImportError:
        return f"NVML unavailable: {type(exc).__name__}: {exc}".replace("\n", " ")
    value = getattr(exc, "value", None)
    if value == pynvml.NVML_ERROR_LIBRARY_NOT_FOUND:
        return "NVML unavailable: libnvidia-ml.so.1 not found (no NVIDIA driver on this machine)"
    if value == pynvml.NVML_ERROR_DRIVER_NOT_LOADED:
        return "NVML unavailable: the NVIDIA driver is not loaded (no GPU here?)"
    if value == pynvml.NVML_ERROR_NO_PERMISSION:
        return "NVML unavailable: NVML_ERROR_NO_PERMISSION (GPM counters need root or CAP_SYS_ADMIN)"
    if value == pynvml.NVML_ERROR_INVALID_ARGUMENT:
        return "NVML unavailable: no GPU with that index"
    return f"NVML unavailable: {type(exc).__name__}: {exc}".replace("\n", " ")


class PynvmlBackend:
    """The real backend, over nvidia-ml-py. Construction raises MeasurementUnavailable with one line."""

    def __init__(self, device_index: int = 0) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as exc:
            raise MeasurementUnavailable(_nvml_reason(exc)) from None
        self._nvml = pynvml
        try:
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        except pynvml.NVMLError as exc:
            pynvml.nvmlShutdown()
            raise MeasurementUnavailable(_nvml_reason(exc)) from None
        self._metrics_get: Any = None  # the c_nvmlGpmMetricsGet_t, reused: it is ~20 kB

    def device_facts(self) -> dict[str, Any]:
        nv, h = self._nvml, self._handle
        try:
            gpm = bool(nv.nvmlGpmQueryDeviceSupport(h).isSupportedDevice)
        except nv.NVMLError:  # pre-Hopper drivers or devices: no GPM
            gpm = False
        name = nv.nvmlDeviceGetName(h)
        driver = nv.nvmlSystemGetDriverVersion()
        return {
            "name": name.decode() if isinstance(name, bytes) else str(name),
            "driver": driver.decode() if isinstance(driver, bytes) else str(driver),
            "bus_width_bits": int(nv.nvmlDeviceGetMemoryBusWidth(h)),
            "max_mem_clock_mhz": int(nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_MEM)),
            "power_limit_mw": int(nv.nvmlDeviceGetEnforcedPowerLimit(h)),
            "gpm_supported": gpm,
        }

    def gpm_alloc(self) -> Any:
        return self._nvml.nvmlGpmSampleAlloc()

    def gpm_get(self, sample: Any) -> None:
        self._nvml.nvmlGpmSampleGet(self._handle, sample)

    def gpm_metrics(self, start: Any, end: Any, metric_ids: Sequence[int]) -> list[float]:
        nv = self._nvml
        if self._metrics_get is None:
            self._metrics_get = nv.c_nvmlGpmMetricsGet_t()
        mg = self._metrics_get
        mg.version = nv.NVML_GPM_METRICS_GET_VERSION
        mg.numMetrics = len(metric_ids)
        mg.sample1, mg.sample2 = start, end
        for i, metric_id in enumerate(metric_ids):
            mg.metrics[i].metricId = metric_id
        nv.nvmlGpmMetricsGet(mg)
        return [
            float(mg.metrics[i].value) if mg.metrics[i].nvmlReturn == nv.NVML_SUCCESS else _NAN
            for i in range(len(metric_ids))
        ]

    def gpm_free(self, sample: Any) -> None:
        self._nvml.nvmlGpmSampleFree(sample)

    def utilization(self) -> tuple[int, int]:
        u = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
        return int(u.gpu), int(u.memory)

    def power_mw(self) -> int:
        return int(self._nvml.nvmlDeviceGetPowerUsage(self._handle))

    def energy_mj(self) -> int:
        return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))

    def clocks_mhz(self) -> tuple[int, int]:
        nv, h = self._nvml, self._handle
        sm = nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)
        mem = nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)
        return int(sm), int(mem)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # shutting down twice or after a lost GPU is no error
            self._nvml.nvmlShutdown()


# ----------------------------------------------------------------------------------------- public helpers
def device_info(device_index: int = 0, backend: NvmlBackend | None = None) -> dict[str, Any]:
    """Device facts plus theoretical HBM bandwidth; raises MeasurementUnavailable (one line) without NVML."""
    own = backend is None
    be: NvmlBackend = PynvmlBackend(device_index) if backend is None else backend
    try:
        try:
            facts = be.device_facts()
        except Exception as exc:
            raise MeasurementUnavailable(_nvml_reason(exc)) from None
    finally:
        if own:
            be.close()
    peak, derivation = peak_hbm_bps(facts["bus_width_bits"], facts["max_mem_clock_mhz"])
    return {"device_index": device_index, **facts, "peak_hbm_Bps": peak, "peak_hbm_derivation": derivation}


def nvml_status(device_index: int = 0, require_gpm: bool = True) -> tuple[bool, str]:
    """(usable, one-line reason) without raising: lets a run record what it could not measure."""
    try:
        info = device_info(device_index)
    except MeasurementUnavailable as exc:
        return False, str(exc)
    if require_gpm and not info["gpm_supported"]:
        return False, f"NVML GPM not supported on {info['name']} (Hopper or newer needed): no DRAM bandwidth"
    gpm = "GPM supported" if info["gpm_supported"] else "no GPM (duty cycle, power, clocks only)"
    return True, f"NVML ok: {info['name']}, driver {info['driver']}, {gpm}"


def dram_bytes(
    timeline: pd.DataFrame, peak_hbm_Bps: float, t0_ns: int | None = None, t1_ns: int | None = None
) -> float:
    """DRAM bytes moved in [t0_ns, t1_ns]: sum of util/100 x peak x (overlap of each window, seconds).

    Windows with NaN GPM bandwidth contribute nothing; check for them before trusting the sum.
    """
    start = timeline["t_start_ns"].astype("int64")
    end = timeline["t_end_ns"].astype("int64")
    lo = start.clip(lower=t0_ns) if t0_ns is not None else start
    hi = end.clip(upper=t1_ns) if t1_ns is not None else end
    overlap_s = (hi - lo).clip(lower=0) / 1e9
    return float((timeline["gpm_dram_bw_util_pct"] / 100 * peak_hbm_Bps * overlap_s).sum(skipna=True))


# ----------------------------------------------------------------------------------------- sampler
class NvmlSampler:
    """Samples NVML on a daemon thread into contiguous windows of `interval_s` (>= 0.1 s).

    Use as a context manager or with start()/stop(); `stop()` (and `to_dataframe()`) return the rows as a
    DataFrame with `COLUMNS`. start() raises MeasurementUnavailable when NVML, the GPU, GPM (with
    `require_gpm`) or the permission is missing; afterwards nothing raises: errors in the thread go to
    `errors` and the affected values are NaN.
    """

    def __init__(
        self,
        device_index: int = 0,
        interval_s: float = 0.1,
        *,
        backend: NvmlBackend | None = None,
        require_gpm: bool = True,
    ) -> None:
        self.device_index = device_index
        self.requested_interval_s = interval_s
        self.interval_s = max(float(interval_s), MIN_GPM_WINDOW_S)  # GPM reads ~0 below 100 ms
        self.require_gpm = require_gpm
        self.errors: list[str] = []
        self.info: dict[str, Any] = {}
        self._backend = backend
        self._own_backend = backend is None
        self._gpm = False
        self._samples: list[Any] = []
        self._rows: dict[str, list[Any]] = {c: [] for c in COLUMNS}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def __enter__(self) -> NvmlSampler:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> NvmlSampler:
        if self._thread is not None:
            raise RuntimeError("NvmlSampler already started")
        self._rows = {c: [] for c in COLUMNS}  # a restarted sampler starts a new recording
        self.errors = []
        if self._backend is None:
            self._backend = PynvmlBackend(self.device_index)
        be = self._backend
        try:
            try:
                self.info = be.device_facts()
            except Exception as exc:
                raise MeasurementUnavailable(_nvml_reason(exc)) from None
            self._gpm = bool(self.info.get("gpm_supported"))
            if self.require_gpm and not self._gpm:
                name = self.info.get("name", "this GPU")
                raise MeasurementUnavailable(f"NVML GPM not supported on {name}: no DRAM bandwidth signal")
            t0 = time.time_ns()
            if self._gpm:
                # The first sample is taken here, not in the thread, so a permission error reaches the caller.
                try:
                    self._samples = []
                    for _ in range(2):  # one at a time, so _release frees whatever was allocated
                        self._samples.append(be.gpm_alloc())
                    t0 = self._gpm_get(self._samples[0])
                except Exception as exc:
                    raise MeasurementUnavailable(_nvml_reason(exc)) from None
        except BaseException:
            self._release()
            raise
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(t0,), name="nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> pd.DataFrame:
        """Close the current window (waiting for it to reach 0.1 s), stop the thread, return the rows."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._release()
        return self.to_dataframe()

    def _release(self) -> None:
        be = self._backend
        if be is None:
            return
        for sample in self._samples:
            try:
                be.gpm_free(sample)
            except Exception as exc:
                self.errors.append(f"gpm_free: {exc}")
        self._samples = []
        if self._own_backend:
            be.close()
            self._backend = None

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame({c: self._rows[c] for c in COLUMNS}, columns=list(COLUMNS))

    # -- the thread: NVML calls and list appends only, so it cannot slow the run
    def _gpm_get(self, sample: Any) -> int:
        """Take a GPM sample; its time is the middle of the call (wall clock, ns)."""
        before = time.time_ns()
        self._backend.gpm_get(sample)  # type: ignore[union-attr]
        return (before + time.time_ns()) // 2

    def _run(self, t_start: int) -> None:
        try:
            self._loop(t_start)
        except BaseException as exc:  # never let anything escape into the interpreter's thread hook
            self.errors.append(f"sampler thread stopped: {type(exc).__name__}: {exc}")

    def _loop(self, t_start: int) -> None:
        be = self._backend
        assert be is not None
        interval_ns = int(self.interval_s * 1e9)
        min_ns = int(MIN_GPM_WINDOW_S * 1e9)
        ids = list(GPM_METRICS)
        start_ok = self._gpm  # whether samples[0] holds a good sample taken at t_start
        deadline = t_start + interval_ns
        while True:
            stopping = self._stop.wait(max(0, deadline - time.time_ns()) / 1e9)
            short = t_start + min_ns - time.time_ns()
            if short > 0:  # stop() came early, or the wait returned early: keep the window >= 100 ms
                time.sleep(short / 1e9)
            gpm = [_NAN] * len(ids)
            t_end = None
            if self._gpm:
                try:
                    t_end = self._gpm_get(self._samples[1])
                    if start_ok:
                        gpm = be.gpm_metrics(self._samples[0], self._samples[1], ids)
                    start_ok = True
                except Exception as exc:
                    start_ok = False  # the next window has no valid start sample: NaN there too
                    self.errors.append(f"{time.time_ns()}: GPM: {exc}")
                # The end sample of this window is the start of the next: swap, no alloc/free per window.
                self._samples.reverse()
            if t_end is None:
                t_end = time.time_ns()
            self._append(be, t_start, t_end, gpm)
            if stopping or self._stop.is_set():
                return
            t_start = t_end
            deadline += interval_ns
            if deadline < t_end:  # fell behind (a slow NVML call): restart the grid, windows stay contiguous
                deadline = t_end + interval_ns

    def _append(self, be: NvmlBackend, t_start: int, t_end: int, gpm: list[float]) -> None:
        rows = self._rows
        rows["t_start_ns"].append(t_start)
        rows["t_end_ns"].append(t_end)
        for column, value in zip(GPM_METRICS.values(), gpm, strict=True):
            rows[column].append(value)
        readings: list[tuple[tuple[str, ...], Any]] = [
            (("util_gpu_pct", "util_mem_pct"), be.utilization),
            (("power_mw",), be.power_mw),
            (("energy_mj",), be.energy_mj),
            (("sm_clock_mhz", "mem_clock_mhz"), be.clocks_mhz),
        ]
        for columns, read in readings:
            try:
                value = read()
                values = value if isinstance(value, tuple) else (value,)
            except Exception as exc:
                self.errors.append(f"{t_end}: {columns[0]}: {exc}")
                values = (None,) * len(columns)  # NaN in the DataFrame
            for column, v in zip(columns, values, strict=True):
                rows[column].append(v)

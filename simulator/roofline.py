"""Roofline time, bound and arithmetic intensity from counts and a hardware description."""

from __future__ import annotations

import numpy as np

from simulator.config import HardwareConfig


def roofline(
    flops: np.ndarray,
    bytes_moved: np.ndarray,
    hardware: HardwareConfig,
    compute_dtype: str,
    bandwidth_efficiency: float | np.ndarray = 1.0,
) -> dict[str, np.ndarray]:
    """t = max(FLOPs / peak, bytes / (bandwidth x efficiency)) per point.

    `bandwidth_efficiency` is the achieved share of peak HBM bandwidth (1.0 = pure roofline; a fitted
    per-layer-kind value after calibration).
    """
    peak = hardware.flops_for(compute_dtype)
    bw = hardware.hbm_bandwidth.value * np.asarray(bandwidth_efficiency, dtype=np.float64)
    t_compute = flops / peak
    t_memory = bytes_moved / bw
    with np.errstate(divide="ignore", invalid="ignore"):
        intensity = np.where(bytes_moved > 0, flops / np.where(bytes_moved > 0, bytes_moved, 1.0), np.inf)
    return {
        "intensity": intensity,
        "t_compute_s": t_compute,
        "t_memory_s": t_memory,
        "time_s": np.maximum(t_compute, t_memory),
    }


def ridge_point(hardware: HardwareConfig, compute_dtype: str) -> float:
    """FLOP/byte where compute and memory time are equal."""
    return hardware.flops_for(compute_dtype) / hardware.hbm_bandwidth.value


def kernel_seconds(
    flops: np.ndarray, bytes_moved: np.ndarray, hardware: HardwareConfig, compute_dtype: str
) -> np.ndarray:
    """Estimated duration of each kernel of an op-level count: the hardware's fixed cost per kernel
    (`kernel_floor_s`, 0 when the preset has none) plus its roofline time at the sustained bandwidth
    (`sustained_bandwidth_fraction` of peak, when known). Small-batch steps are hundreds of such short
    kernels, whose fixed costs, not bytes / bandwidth, set the time."""
    floor = hardware.kernel_floor_s.value if hardware.kernel_floor_s is not None else 0.0
    share = hardware.sustained_bandwidth_fraction
    bw = hardware.hbm_bandwidth.value * (share.value if share is not None else 1.0)
    flops = np.asarray(flops, dtype=np.float64)
    bytes_moved = np.asarray(bytes_moved, dtype=np.float64)
    return floor + np.maximum(flops / hardware.flops_for(compute_dtype), bytes_moved / bw)

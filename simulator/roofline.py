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

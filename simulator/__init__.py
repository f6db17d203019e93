"""The analytic model: FLOPs, HBM bytes and roofline time per layer, from configs alone (no torch)."""

from __future__ import annotations

from typing import Any

__all__ = ["COLUMNS", "HardwareConfig", "ModelConfig", "Workload", "compare", "simulate"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import simulator.errors` stays cheap for the profiler and trace readers.
    if name in {"COLUMNS", "compare", "simulate"}:
        from simulator import sweep

        return getattr(sweep, name)
    if name in {"HardwareConfig", "ModelConfig", "Workload"}:
        from simulator import config

        return getattr(config, name)
    raise AttributeError(name)

"""Runs real PyTorch code and measures it: reference modules, op counts, torch.profiler sweeps, NVML, ncu.

Imports are lazy so that `import profiler.nvml` (or ncu) does not pull in torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ReferenceModel", "count_model", "profile", "profile_model", "summarize_layers"]


def __getattr__(name: str) -> Any:
    if name == "ReferenceModel":
        from profiler.modules import ReferenceModel

        return ReferenceModel
    if name in {"count_model", "summarize_layers"}:
        from profiler import count

        return getattr(count, name)
    if name in {"profile", "profile_model"}:
        from profiler import run

        return getattr(run, name)
    raise AttributeError(name)

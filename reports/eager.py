"""The eager prediction level: bytes per layer that the reference PyTorch module moves, op by op.

`profiler.count` runs the module on meta tensors; torch is imported only here, only when installed, and
any failure of the counter becomes a note (reports must work without torch).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

import pandas as pd

from reports.measured import layer_names
from simulator.config import HardwareConfig, ModelConfig, Workload
from simulator.errors import MemtrafficError, TraceError


def eager_bytes(
    model: ModelConfig, batches: Sequence[int], workload: Workload, hardware: HardwareConfig | None = None
) -> tuple[pd.DataFrame | None, str | None]:
    """Op-level bytes per (batch, layer) from profiler.count on meta tensors (or None) and a note; on
    `hardware`, also the kernels it launches and their estimated time (pred_kernels_eager,
    pred_time_eager_s: a fixed cost per kernel plus its roofline time).

    torch is imported only here, and only when installed: reports must work without it.
    """
    if importlib.util.find_spec("torch") is None:
        return None, "eager level skipped: torch is not installed (pip install memtraffic[profile])"
    try:
        from profiler.count import count_model, launches_kernel, with_kernel_time
    except Exception as exc:  # the profiler is optional for reports
        return None, f"eager level skipped: profiler.count unavailable ({str(exc).splitlines()[0]})"
    frames = []
    context = workload.context[0]
    routing = ""
    try:
        for b in batches:
            counts = _as_frame(count_model(model, b, context, workload.phase, workload.activation_dtype))
            routing = str(counts.attrs.get("routing", ""))
            if hardware is not None:
                counts = with_kernel_time(counts, hardware).assign(kernel=launches_kernel(counts))
            frames.append(_eager_per_layer(counts).assign(batch=int(b)))
    except MemtrafficError as exc:
        return None, f"eager level skipped: {str(exc).splitlines()[0]}"
    except Exception as exc:  # an op the counter does not know must not sink the whole validation
        return (
            None,
            f"eager level skipped: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
        )
    how = (
        f"eager level: profiler.count on meta tensors ({routing})"
        if routing
        else "eager level: profiler.count"
    )
    return pd.concat(frames, ignore_index=True), how


def _as_frame(counts: Any) -> pd.DataFrame:
    if isinstance(counts, pd.DataFrame):
        return counts
    for attr in ("layers", "per_layer", "frame", "table"):
        value = getattr(counts, attr, None)
        if isinstance(value, pd.DataFrame):
            return value
    return pd.DataFrame(counts)


def _eager_per_layer(counts: pd.DataFrame) -> pd.DataFrame:
    """Reduce count_model's rows to bytes per layer named like the simulator's layers."""
    df = counts.copy()
    if "bytes" not in df:
        read = next((c for c in ("bytes_read", "read_bytes") if c in df), None)
        write = next((c for c in ("bytes_written", "write_bytes") if c in df), None)
        if read is None or write is None:
            raise TraceError(f"profiler.count returned no bytes columns ({', '.join(map(str, df.columns))})")
        df["bytes"] = df[read].fillna(0) + df[write].fillna(0)
    name = next((c for c in ("layer", "module") if c in df), None)
    if name is None:
        raise TraceError("profiler.count returned no layer column")
    df = df.rename(columns={name: "layer"})
    df["layer"] = layer_names(df)
    df = df[df["layer"] != "total"]
    per_layer = df.groupby("layer", sort=False)
    out = per_layer["bytes"].sum().rename("pred_bytes_eager").to_frame()
    if "kernel_s" in df:
        out["pred_kernels_eager"] = per_layer["kernel"].sum()
        out["pred_time_eager_s"] = per_layer["kernel_s"].sum()
    return out.reset_index()

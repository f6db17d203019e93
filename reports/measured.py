"""What a trace bundle measured, as tables keyed like the simulator's: per batch size, and per layer.

- `measured_steps`: per batch, the steady-loop step time, NVML GPM bytes per step, the kernel-time sum
  per profiled step and the Nsight Compute DRAM bytes per step. GPM values of a steady window under
  `GPM_MIN_WINDOW_S` are NaN (not measured), whatever the bundle holds (`short_gpm_windows`).
- `measured_layers`: per (batch, layer), kernel time, kernels and ncu bytes per profiled step.
- `measured_routing`: per (batch, layer), distinct experts / memory rows and selections per step.

Layers are named like the simulator's ("block3.moe"); values per step are means over profiled steps.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from simulator.errors import TraceError
from traces.timeline import GPM_MIN_WINDOW_S

if TYPE_CHECKING:
    from traces.bundle import Bundle


def open_bundle(bundle: Bundle | str | Path) -> Bundle:
    """A Bundle as given, or read from a path (the reader's TraceError passes through unchanged)."""
    if isinstance(bundle, str | Path):
        from traces.bundle import read_bundle

        return read_bundle(Path(bundle))  # its one-line TraceErrors (missing, foreign, old) pass through
    return bundle


def bundle_label(bundle: Bundle) -> str:
    path = getattr(bundle, "path", None)
    return str(path) if path is not None else str(bundle.meta.get("source") or "<bundle>")


def bundle_table(bundle: Bundle, name: str) -> pd.DataFrame | None:
    """One of the bundle's tables, or None when the bundle lacks it (a corrupt table raises TraceError)."""
    df = bundle.table(name)
    if df is None or len(df) == 0:
        return None
    return df


def bundle_batches(bundle: Bundle) -> list[int]:
    runs = bundle_table(bundle, "runs")
    if runs is not None and "batch" in runs:
        values: Iterable[Any] = runs["batch"]
    else:
        values = [r.get("batch") for r in bundle.meta.get("runs") or [] if isinstance(r, dict)]
    batches = sorted({int(b) for b in values if b is not None})
    if not batches:
        raise TraceError(f"bundle {bundle_label(bundle)} records no runs (no batch sizes)")
    return batches


def _per_step_mean(df: pd.DataFrame, keys: list[str], value: str) -> pd.Series:
    """Sum `value` per (keys, step), then the mean over steps (profiled steps may differ slightly).

    Rows outside every step range (step -1: warm-up, setup) are left out.
    """
    if "step" not in df:
        return df.groupby(keys)[value].sum()
    df = df[df["step"] >= 0]
    return df.groupby([*keys, "step"])[value].sum().groupby(level=keys).mean()


def layer_names(df: pd.DataFrame) -> pd.Series:
    """Simulator-style layer names ("block3.moe") from a bundle table's layer/block columns."""
    layer = df["layer"].astype(str)
    if "block" in df and not layer.str.startswith("block").any():
        block = pd.to_numeric(df["block"], errors="coerce")
        return pd.Series(
            np.where(block >= 0, "block" + block.fillna(-1).astype(int).astype(str) + "." + layer, layer),
            index=df.index,
        )
    return layer


_GPM_STEP_COLUMNS = ("meas_bytes_gpm", "gpm_bw_Bps", "mean_dram_util_pct")


def _window_seconds(runs: pd.DataFrame) -> pd.Series:
    """Per batch, the steady window in seconds (window_s, else its bounds; NaN where neither is there)."""
    r = runs.drop_duplicates("batch").set_index("batch")
    if "window_s" in r:
        return pd.to_numeric(r["window_s"], errors="coerce")
    if {"steady_start_ns", "steady_end_ns"} <= set(r.columns):
        return (r["steady_end_ns"].astype("int64") - r["steady_start_ns"].astype("int64")) / 1e9
    return pd.Series(np.nan, index=r.index)


def short_gpm_windows(bundle: Bundle) -> dict[int, float]:
    """Batch -> steady window (s) of the runs whose window is too short for GPM and that still hold a
    GPM value (bundles imported before such values were left out): `measured_steps` drops it."""
    runs = bundle_table(bundle, "runs")
    if runs is None or "gpm_bytes_per_step" not in runs:
        return {}
    seconds = _window_seconds(runs)
    gpm = runs.drop_duplicates("batch").set_index("batch")["gpm_bytes_per_step"]
    short = seconds[(seconds < GPM_MIN_WINDOW_S) & pd.to_numeric(gpm, errors="coerce").notna()]
    return {int(b): float(s) for b, s in short.items()}


def measured_steps(bundle: Bundle) -> pd.DataFrame:
    """Per batch: steady-loop step time, GPM bytes, kernel-time sum per profiled step, ncu bytes."""
    runs = bundle_table(bundle, "runs")
    out = pd.DataFrame({"batch": bundle_batches(bundle)}).set_index("batch")
    if runs is not None:
        r = runs.drop_duplicates("batch").set_index("batch")
        for src, dst in (
            ("steps", "steps"),
            ("us_per_step", "us_per_step"),
            ("us_per_step_graph", "us_per_step_graph"),
            ("gpm_bytes_per_step", "meas_bytes_gpm"),
            ("gpm_bw_Bps", "gpm_bw_Bps"),
            ("mean_dram_util_pct", "mean_dram_util_pct"),
            ("energy_j_per_step", "energy_j_per_step"),
        ):
            if src in r:
                out[dst] = pd.to_numeric(r[src], errors="coerce")
        # a GPM value of a window under GPM_MIN_WINDOW_S is no measurement of the steps
        short = list(short_gpm_windows(bundle))
        for col in (c for c in _GPM_STEP_COLUMNS if c in out):
            out.loc[out.index.isin(short), col] = np.nan
    kernels = bundle_table(bundle, "kernels")
    layers = bundle_table(bundle, "layers")
    if kernels is not None and "dur_ns" in kernels:
        out["meas_kernel_s"] = _per_step_mean(kernels, ["batch"], "dur_ns") * 1e-9
    elif layers is not None:
        out["meas_kernel_s"] = _per_step_mean(layers, ["batch"], "kernel_time_ns") * 1e-9
    ncu = bundle_table(bundle, "ncu")
    if ncu is not None:
        ncu = ncu.assign(_b=ncu["dram_bytes_read"].fillna(0) + ncu["dram_bytes_write"].fillna(0))
        out["meas_bytes_ncu"] = _per_step_mean(ncu, ["batch"], "_b")
    return out.reset_index()


def measured_layers(bundle: Bundle) -> pd.DataFrame:
    """Per (batch, layer): mean kernel time per profiled step, kernels per step, ncu bytes per step."""
    cols = ["batch", "layer"]
    layers = bundle_table(bundle, "layers")
    parts: list[pd.DataFrame] = []
    if layers is not None:
        df = layers.assign(layer=layer_names(layers))
        t = _per_step_mean(df, cols, "kernel_time_ns") * 1e-9
        parts.append(t.rename("meas_kernel_s").to_frame())
        if "n_kernels" in df:
            parts.append(_per_step_mean(df, cols, "n_kernels").rename("n_kernels").to_frame())
    ncu = bundle_table(bundle, "ncu")
    if ncu is not None and "layer" in ncu:
        df = ncu.assign(layer=layer_names(ncu))
        parts.append(_per_step_mean(df, cols, "dram_bytes_read").rename("ncu_bytes_read").to_frame())
        parts.append(_per_step_mean(df, cols, "dram_bytes_write").rename("ncu_bytes_write").to_frame())
    if not parts:
        return pd.DataFrame(columns=cols)
    out = pd.concat(parts, axis=1).reset_index()
    if "ncu_bytes_read" in out:
        out["meas_bytes_ncu"] = out["ncu_bytes_read"].fillna(0) + out["ncu_bytes_write"].fillna(0)
    return out


def measured_routing(bundle: Bundle) -> pd.DataFrame | None:
    """Per (batch, layer): distinct items and selections per step, over the recorded steps."""
    routing = bundle_table(bundle, "routing")
    if routing is None:
        return None
    df = routing.assign(layer=layer_names(routing))
    df = df[df["count"] > 0]
    step = "step" if "step" in df else None
    keys = ["batch", "layer", *([step] if step else [])]
    per = df.groupby(keys).agg(distinct=("item", "nunique"), requested=("count", "sum")).reset_index()
    return (
        per.groupby(["batch", "layer"])
        .agg(
            meas_distinct=("distinct", "mean"),
            meas_distinct_min=("distinct", "min"),
            meas_distinct_max=("distinct", "max"),
            meas_requested=("requested", "mean"),
            n_steps=("distinct", "size"),
        )
        .reset_index()
    )

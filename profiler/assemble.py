"""The bundle of a sweep (traces.bundle): its meta (model, device, workload, provenance, what was not
measured) and its tables, rewritten after every batch size with partial=True so that an interrupt or a
crash keeps every finished batch size readable.
"""

from __future__ import annotations

import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from profiler.batch import BatchResult
from profiler.errors import one_line
from profiler.steady import SYNC_EVERY
from profiler.target import Target
from traces.bundle import write_bundle


class Sweep:
    """Accumulates finished batch sizes and rewrites the bundle after each."""

    def __init__(self, output: Path, target: Target, meta: dict[str, Any]) -> None:
        self.output = output
        self.target = target
        self.meta = meta
        self.results: list[BatchResult] = []
        self.extra_tables: dict[str, pd.DataFrame] = {}
        self.notes: list[str] = []

    def add(self, result: BatchResult) -> None:
        self.results.append(result)
        self.notes += result.notes

    def tables(self) -> dict[str, pd.DataFrame]:
        res = self.results
        out: dict[str, pd.DataFrame] = {}
        if res:
            out["runs"] = pd.DataFrame([r.runs_row for r in res])
            out["layers"] = pd.concat([r.layers for r in res], ignore_index=True)
            kernels = [r.kernels for r in res if r.kernels is not None]
            if kernels:
                out["kernels"] = pd.concat(kernels, ignore_index=True)
            routing = [r.routing for r in res if r.routing is not None]
            if routing:
                out["routing"] = pd.concat(routing, ignore_index=True)
            nvml = [r.nvml for r in res if r.nvml is not None and not r.nvml.empty]
            if nvml:
                out["nvml"] = pd.concat(nvml, ignore_index=True)
        out.update(self.extra_tables)
        return out

    def write(self, partial: bool, missing: list[str]) -> Path:
        tables = self.tables()
        meta = dict(self.meta)
        meta["partial"] = partial
        meta["runs"] = [r.run for r in self.results]
        meta["missing"] = list(dict.fromkeys(missing + self.notes))
        meta["extra"] = {
            **meta.get("extra", {}),
            "routing_layers": {
                n: {"items": r.n_items, "per_token": r.per_token} for n, r in self.target.recorders.items()
            },
        }
        meta["measured"] = {
            **meta.get("measured", {}),
            "kernels": "kernels" in tables,
            "nvml": "nvml" in tables,
            "routing": "routing" in tables,
            "ncu": "ncu" in tables,
            "opcount": "opcount" in tables,
            "gpm": bool("runs" in tables and tables["runs"]["gpm_bytes_per_step"].notna().any()),
        }
        raw = {r.trace_gz.name: r.trace_gz for r in self.results}
        return write_bundle(self.output, meta, tables, raw)

    def write_partial(self, missing: list[str], why: str, batch: int | None) -> None:
        """The bundle of the finished batch sizes, marked stopped (why, during which batch)."""
        at = f" during batch {batch}" if batch is not None else ""
        self.meta.setdefault("extra", {})["stopped"] = f"{why}{at}"
        done = [r.batch for r in self.results]
        try:
            self.write(partial=True, missing=missing + [f"runs: sweep stopped{at} ({why}); finished: {done}"])
        except Exception as exc:  # the last good bundle (written after the previous batch) stays in place
            print(f"memtraffic: could not rewrite the partial bundle: {one_line(exc)}", file=sys.stderr)


def sweep_meta(
    target: Target,
    dev: torch.device,
    dev_meta: dict[str, Any],
    *,
    phase: str,
    context: int,
    dtype: str,
    input_ring: int,
    kv_mode: str,
) -> dict[str, Any]:
    """bundle.json of a profiled sweep, less what each write adds (runs, missing, measured, partial)."""
    return {
        "source": "profiled",
        "model": {"name": target.name, "config": target.config},
        "device": dev_meta,
        "workload": {
            "phase": phase,
            "context": context,
            "dtype": dtype,
            "input_ring": input_ring,
            "kv_mode": kv_mode,
            "tokens_per_step": 1 if phase == "decode" else context,
        },
        "provenance": _provenance(target, dev),
        "extra": {
            "inputs": (
                f"each step takes the next of a ring of {input_ring} distinct inputs, so routing "
                "changes every step and L2 does not flatter repeated inputs"
            ),
            "layer_pattern": target.layer_pattern,
            "layer_names": target.layer_names,
            "layers_time": "kernel time (CUDA)"
            if dev.type == "cuda"
            else "CPU time of record_function ranges; n_kernels counts aten ops inside (nested included)",
            "steady_sync": f"host sync every {SYNC_EVERY} steps and at the end"
            if dev.type == "cuda"
            else "every step",
            "notes": target.notes,
        },
    }


def device_meta(dev: torch.device) -> tuple[dict[str, Any], list[str], bool]:
    """(device meta, missing lines, NVML usable)."""
    missing: list[str] = []
    if dev.type != "cuda":
        name = platform.processor() or platform.machine() or "cpu"
        missing += [
            "kernels: no CUDA device (CPU run): no kernel timeline; the layers table holds CPU time of the "
            "record_function ranges",
            "gpm: no GPU, so no DRAM bandwidth (NVML GPM)",
            "nvml: no GPU, so no NVML utilisation, power or energy",
        ]
        cpu = {"name": f"CPU ({name})", "peak_hbm_Bps": None, "peak_source": None, "type": "cpu"}
        return cpu, missing, False
    props = torch.cuda.get_device_properties(dev)
    meta: dict[str, Any] = {
        "name": torch.cuda.get_device_name(dev),
        "peak_hbm_Bps": None,
        "peak_source": None,
        "type": "cuda",
        # what CUDA reports, to check a hardware preset's capacity, L2 and SM count against
        "memory_bytes": getattr(props, "total_memory", None),
        "l2_bytes": getattr(props, "L2_cache_size", None),
        "sm_count": getattr(props, "multi_processor_count", None),
    }
    try:
        from profiler.nvml import device_info, nvml_status

        ok, reason = nvml_status(dev.index or 0, require_gpm=False)
    except ImportError as exc:  # nvml module or pynvml missing
        ok, reason = False, f"NVML unavailable: {one_line(exc)}"
    if not ok:
        missing += [f"nvml: {reason}", f"gpm: {reason}"]
        return meta, missing, False
    info = device_info(dev.index or 0)
    meta.update(
        peak_hbm_Bps=info["peak_hbm_Bps"],
        peak_source=f"NVML: {info['peak_hbm_derivation']}",
        nvml_name=info["name"],
        driver=info["driver"],
        gpm_supported=info["gpm_supported"],
    )
    if not info["gpm_supported"]:
        missing.append(f"gpm: NVML GPM not supported on {info['name']} (Hopper or newer): no DRAM bandwidth")
    return meta, missing, True


def _provenance(target: Target, dev: torch.device) -> dict[str, Any]:
    return {
        "tool": "memtraffic profile",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "command": " ".join(sys.argv),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "module": "profiler.modules.ReferenceModel" if target.config is not None else target.name,
        "device": str(dev),
    }

"""The optional Nsight Compute pass, after the sweep: the target is rebuilt from its spec in a child
process (`python -m profiler.run --ncu-child SPEC`) that ncu runs (profiler.ncu builds the command and
parses its CSV); each of `steps` steps per batch size runs inside NVTX ranges measure/batch{B}/step{i},
and the parsed kernels, with their batch and step, become the bundle's `ncu` table.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch

from profiler.modules import layer_range
from profiler.target import Target, resolve_device, sync, target_from_spec
from simulator.errors import MeasurementUnavailable, MemtrafficError

if TYPE_CHECKING:
    from profiler.assemble import Sweep

NCU_RANGE = "measure"
_STACK = re.compile(r"(?:^|/)batch(?P<batch>\d+)/step(?P<step>\d+)(?:/|$)")


def ncu_pass(
    sweep: Sweep,
    target: Target,
    batches: Sequence[int],
    steps: int,
    timeout_s: float,
    dev: torch.device,
    tmp: Path,
) -> list[str]:
    """Re-run the target under ncu for `steps` steps per batch; store the `ncu` table. Returns missing.

    One ncu process per batch size, each given an equal share of `timeout_s`: a batch that runs out of
    time or fails costs only its own rows (named in the returned missing list).
    """
    if dev.type != "cuda":
        return ["ncu: needs a CUDA device"]
    if target.spec is None:
        return ["ncu: a module passed in-process cannot be rebuilt in a child process (give a factory spec)"]
    from profiler.ncu import CACHE_MODE, ncu_available, run_ncu

    ok, reason = ncu_available()
    if not ok:
        return [f"ncu: {reason}"]
    spec = tmp / "ncu-spec.json"
    spec.write_text(json.dumps({**target.spec, "device": str(dev)}))
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    share = timeout_s / max(len(batches), 1)
    frames, missing, measured = [], [], []
    cache_mode = CACHE_MODE
    for b in batches:
        argv = [sys.executable, "-m", "profiler.run", "--ncu-child", str(spec), "--batches", str(b)]
        argv += ["--steps", str(steps)]
        try:
            df = run_ncu(argv, NCU_RANGE, log_file=tmp / f"ncu-b{b}.csv", timeout_s=share, env=env, cwd=root)
        except MeasurementUnavailable as exc:  # no ncu or no counter permission: no batch will do better
            return [str(exc) if str(exc).startswith("ncu") else f"ncu: {exc}"]
        except MemtrafficError as exc:
            missing.append(f"ncu: batch {b}: {exc}")
            continue
        parsed = df["nvtx_stack"].str.extract(_STACK)
        df.insert(0, "batch", pd.to_numeric(parsed["batch"]).fillna(-1).astype("int64"))
        df.insert(1, "step", pd.to_numeric(parsed["step"]).fillna(-1).astype("int64"))
        cache_mode = df.attrs.get("cache_mode", cache_mode)
        frames.append(pd.DataFrame(df))
        measured.append(b)
    if not frames:
        return missing
    sweep.extra_tables["ncu"] = pd.concat(frames, ignore_index=True)
    sweep.meta["extra"]["ncu"] = {
        "cache_mode": cache_mode,
        "ncu": reason,
        "steps_per_batch": steps,
        "batches": measured,
        "note": "ncu flushes caches before each kernel: cold-L2 reads; writes that "
        "fit in L2 may not show as DRAM writes",
    }
    return missing


def ncu_child(spec_path: Path, batches: Sequence[int], steps: int, warmup: int) -> None:
    """Run under ncu: for each batch, `steps` steps inside NVTX measure/batch{B}/step{i}."""
    spec = json.loads(spec_path.read_text())
    dev = resolve_device(spec.get("device"))
    target = target_from_spec(spec, dev)
    with torch.no_grad():
        for b in batches:
            target.setup(b)
            ring = [target.make_input(b, i) for i in range(warmup + steps)]
            for i in range(warmup):
                target.step(ring[i])
            sync(dev)
            torch.cuda.nvtx.range_push(NCU_RANGE)
            torch.cuda.nvtx.range_push(f"batch{b}")
            for i in range(steps):
                with layer_range(f"step{i}"):
                    target.step(ring[warmup + i])
            sync(dev)
            torch.cuda.nvtx.range_pop()
            torch.cuda.nvtx.range_pop()

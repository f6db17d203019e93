"""Batch-size sweeps under torch.profiler -> a trace bundle (traces.bundle).

For each batch size (profiler.batch): warm up, profile `steps` steps (each inside a `step{i}` range) with
torch.profiler (profiler.capture), then run a steady-state loop of at least `steady_seconds` and `steps`
steps while an NVML sampler runs, when NVML is there (profiler.steady). Kernels (GPU) are attributed to
layers through the record_function ranges; on a CPU run the `layers` table holds the CPU time of those
ranges instead. The bundle (profiler.assemble) is rewritten after every batch size with partial=True, so
an interrupt or a crash keeps every finished batch size readable; `profile_model` then raises
ProfileInterrupted / ProfileFailed (MemtrafficError: the CLI prints one line and exits 2). What could not
be measured goes into the bundle's `missing` with the reason. An optional Nsight Compute pass follows
the sweep (profiler.ncu_pass).

This module holds the orchestration and the entry points: `profile` (what `memtraffic profile` calls),
`profile_model` and `python -m profiler.run` (with the ncu pass's child mode).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn as nn

from profiler import userfactory
from profiler.assemble import Sweep, device_meta, sweep_meta
from profiler.batch import BatchResult, SweepOptions, profile_batch
from profiler.capture import ROUTING_MAX_ROWS
from profiler.errors import ProfileFailed, ProfileInterrupted, one_line
from profiler.modules.common import torch_dtype
from profiler.ncu_pass import NCU_RANGE, ncu_child, ncu_pass
from profiler.progress import progress_bar
from profiler.target import (
    REFERENCE_LAYER_PATTERN,
    Target,
    factory_target,
    module_target,
    reference_target,
    resolve_device,
)
from simulator.config import ModelConfig
from simulator.errors import MemtrafficError
from traces.bundle import check_bundle_destination

# an ncu pass given less than this is skipped: starting ncu and the profiled child alone takes ~10 s
NCU_MIN_SECONDS = 20.0

__all__ = [
    "NCU_RANGE",
    "REFERENCE_LAYER_PATTERN",
    "ROUTING_MAX_ROWS",
    "BatchResult",
    "ProfileFailed",
    "ProfileInterrupted",
    "SweepOptions",
    "Target",
    "factory_target",
    "main",
    "module_target",
    "profile",
    "profile_batch",
    "profile_model",
    "reference_target",
    "resolve_device",
]


def profile_model(
    model_cfg: ModelConfig | None,
    batches: Sequence[int],
    phase: str = "decode",
    context: int = 2048,
    steps: int = 3,
    warmup: int = 3,
    output: Path | str = "profile-bundle",
    device: str | torch.device | None = None,
    dtype: str = "bf16",
    steady_seconds: float = 1.0,
    input_ring: int = 16,
    ncu: bool = False,
    record_routing: bool = True,
    progress: bool = True,
    module: nn.Module | None = None,
    input_factory: Callable[[int, int], Any] | None = None,
    *,
    kv_mode: str = "fixed",
    seed: int = 0,
    nvml_interval_s: float = 0.1,
    ncu_batches: Sequence[int] | None = None,
    ncu_steps: int = 2,
    ncu_timeout_s: float = 900.0,
    ncu_deadline: float | None = None,
    opcount: bool = True,
    routing_max_rows: int = ROUTING_MAX_ROWS,
    cuda_graphs: bool = False,
    target: Target | None = None,
    on_batch_done: Callable[[int, Path], None] | None = None,
    replace: bool = False,
) -> Path:
    """Profile the reference model of `model_cfg` (or `module` with `input_factory(batch, ring_index)`,
    or a prepared `target`) at each batch size; write the bundle at `output` and return its path.
    `ncu_deadline` (a time.monotonic() value) cuts the ncu pass to what is left before it.

    Raises ProfileInterrupted (Ctrl-C) or ProfileFailed (any other error) after writing a partial bundle
    of the finished batch sizes; both are MemtrafficError with a one-line message.
    """
    if not batches:
        raise MemtrafficError("no batch sizes to profile")
    if steps < 1 or warmup < 0 or input_ring < 1:
        raise MemtrafficError("steps must be >= 1, warmup >= 0 and input_ring >= 1")
    if not (math.isfinite(steady_seconds) and steady_seconds >= 0):
        raise MemtrafficError(f"steady time must be a finite number of seconds >= 0, got {steady_seconds}")
    if not (math.isfinite(nvml_interval_s) and nvml_interval_s > 0):
        raise MemtrafficError(f"the NVML sampling interval must be > 0 s, got {nvml_interval_s}")
    check_bundle_destination(output, replace)  # before anything is measured, not after the first batch
    dev = resolve_device(device)
    torch_dtype(dtype)  # fail early on fp8/int formats
    if dtype == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
    output = Path(output)
    if target is None:
        if module is not None:
            if input_factory is None:
                raise MemtrafficError("a module needs an input_factory(batch, ring_index)")
            target = module_target(module.to(dev), input_factory)
        elif model_cfg is not None:
            target = reference_target(model_cfg, phase, context, dev, dtype, kv_mode, seed)
        else:
            raise MemtrafficError("profile_model needs a model config, a module or a target")

    dev_meta, missing, nvml_ok = device_meta(dev)
    if not record_routing:
        missing.append("routing: not recorded (record_routing=False)")
    elif not target.recorders:
        missing.append("routing: the module has no routing recorders (no MoE or memory layer)")
    if not ncu:
        missing.append("ncu: not requested (--ncu)")
    if cuda_graphs and dev.type != "cuda":
        missing.append("cuda graphs: need a CUDA device")
        cuda_graphs = False
    elif not cuda_graphs:
        missing.append("cuda graphs: not requested (--cuda-graphs)")
    meta = sweep_meta(
        target,
        dev,
        dev_meta,
        phase=phase,
        context=context,
        dtype=dtype,
        input_ring=input_ring,
        kv_mode=kv_mode,
    )
    sweep = Sweep(output, target, meta)
    if opcount and model_cfg is not None and target.config is not None:
        try:
            sweep.extra_tables["opcount"] = _opcount_table(model_cfg, batches, context, phase, dtype, kv_mode)
        except Exception as exc:  # counting is a bonus: never stop a measurement for it
            missing.append(f"opcount: counting on meta tensors failed: {one_line(exc)}")
    elif opcount:
        missing.append("opcount: op-level counts need a reference model config (not a user module)")
    with tempfile.TemporaryDirectory(prefix="memtraffic-profile-") as tmpdir:
        opts = SweepOptions(
            phase,
            context,
            steps,
            warmup,
            steady_seconds,
            input_ring,
            record_routing,
            nvml_ok,
            nvml_interval_s,
            dev,
            dev_meta.get("peak_hbm_Bps"),
            Path(tmpdir),
            routing_max_rows,
            cuda_graphs,
        )
        current = None
        try:
            with progress_bar(progress) as new_task:
                for b in batches:
                    current = b
                    sweep.add(profile_batch(target, int(b), opts, new_task(int(b))))
                    sweep.write(partial=True, missing=missing)
                    if on_batch_done is not None:
                        on_batch_done(int(b), output)
            current = None
            # a caller with a time limit of its own (gpu_checks) gives the pass only what is left of it
            ncu_s = (
                ncu_timeout_s if ncu_deadline is None else min(ncu_timeout_s, ncu_deadline - time.monotonic())
            )
            if ncu and ncu_s < NCU_MIN_SECONDS:
                missing.append(f"ncu: skipped, {max(ncu_s, 0):.0f} s left before the run's deadline")
            elif ncu:
                try:
                    missing += ncu_pass(
                        sweep, target, ncu_batches or batches, ncu_steps, ncu_s, dev, Path(tmpdir)
                    )
                except Exception as exc:  # the sweep is complete: a failed ncu pass only goes to missing
                    missing.append(f"ncu: the second pass failed: {one_line(exc)}")
            return sweep.write(partial=False, missing=missing)
        except KeyboardInterrupt:
            sweep.write_partial(missing, "interrupted (KeyboardInterrupt)", current)
            raise ProfileInterrupted(
                f"profile interrupted: {len(sweep.results)} of {len(batches)} batch sizes finished; "
                f"partial bundle at {output}"
            ) from None
        except Exception as exc:
            sweep.write_partial(missing, one_line(exc), current)
            where = f"at batch {current}" if current is not None else "after the sweep"
            raise ProfileFailed(
                f"profile failed {where}: {one_line(exc)}; partial bundle with {len(sweep.results)} of "
                f"{len(batches)} batch sizes at {output}"
            ) from exc


def _opcount_table(
    cfg: ModelConfig, batches: Sequence[int], context: int, phase: str, dtype: str, kv_mode: str
) -> pd.DataFrame:
    """profiler.count's per-layer eager counts on meta tensors, one block of rows per batch size."""
    from profiler.count import count_sweep

    return count_sweep(cfg, list(batches), context, phase, dtype, "meta", kv_mode)


def profile(
    model: str,
    batches: Sequence[int],
    output: Path | str,
    *,
    overrides: Sequence[str] = (),
    input_shape: str | None = None,
    **kwargs: Any,
) -> Path:
    """What `memtraffic profile MODEL` calls: MODEL is a preset name, a model file, an HF config.json (via
    simulator.loading.load_model) or `path/to/file.py:factory` (then `input_shape` is required).
    `kwargs` are profile_model's options."""
    if not userfactory.is_factory_spec(model) and input_shape is not None:
        raise MemtrafficError(
            f"--input-shape is for a path/to/file.py:factory module; {model} builds its own inputs"
        )
    if userfactory.is_factory_spec(model):
        if input_shape is None:
            raise MemtrafficError(f"{model}: a module factory needs --input-shape (e.g. B,1,1024)")
        # before the user's module is built and run once; profile_model checks a config's run itself
        check_bundle_destination(output, bool(kwargs.get("replace", False)))
        dev = resolve_device(kwargs.get("device"))
        target = factory_target(model, input_shape, dev, kwargs.get("dtype", "bf16"), kwargs.get("seed", 0))
        return profile_model(None, batches, output=output, target=target, **{**kwargs, "device": dev})
    from simulator.loading import load_model

    return profile_model(load_model(model, overrides), batches, output=output, **kwargs)


def _batches(text: str) -> list[int]:
    return [int(b) for b in text.split(",") if b.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m profiler.run MODEL --batches 1,4,16 -o OUT` (and the ncu child mode)."""
    p = argparse.ArgumentParser(prog="python -m profiler.run", description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", help="preset, model file, HF config.json or path/to/file.py:factory")
    p.add_argument("--batches", type=_batches, default=[1])
    p.add_argument("-o", "--output", type=Path, default=Path("profile-bundle"))
    p.add_argument("--phase", default="decode", choices=["decode", "prefill"])
    p.add_argument("--context", type=int, default=2048)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--steady-seconds", type=float, default=1.0)
    p.add_argument("--input-ring", type=int, default=16)
    p.add_argument("--input-shape", default=None)
    p.add_argument("--kv-mode", default="fixed", choices=["fixed", "append"])
    p.add_argument("--ncu", action="store_true")
    p.add_argument("--no-routing", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--replace", action="store_true", help="overwrite a bundle already at --output")
    p.add_argument("--ncu-child", type=Path, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.ncu_child is not None:
        ncu_child(a.ncu_child, a.batches, a.steps, warmup=1)
        return 0
    if a.model is None:
        p.error("MODEL is required")
    try:
        path = profile(
            a.model,
            a.batches,
            a.output,
            input_shape=a.input_shape,
            phase=a.phase,
            context=a.context,
            steps=a.steps,
            warmup=a.warmup,
            device=a.device,
            dtype=a.dtype,
            steady_seconds=a.steady_seconds,
            input_ring=a.input_ring,
            kv_mode=a.kv_mode,
            ncu=a.ncu,
            record_routing=not a.no_routing,
            progress=not a.no_progress,
            replace=a.replace,
        )
    except MemtrafficError as exc:
        print(f"memtraffic: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the sweep started: nothing was written
        print("memtraffic: interrupted before any batch size was profiled", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

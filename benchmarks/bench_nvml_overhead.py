"""Does the NVML sampler slow the run it measures? Times a bf16 matmul loop without, with, and again
without the sampler and prints the step time of each and the ratio.

    python benchmarks/bench_nvml_overhead.py [--size 4096] [--matmuls 16] [--steps 200] [--interval 0.1]

Without a CUDA GPU it prints one line saying so and exits 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

try:
    import profiler.nvml  # noqa: F401  (installed, or run from the repository root with -m)
except ImportError:  # run as a script from anywhere: the repository root is two levels up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _step_times(step: Callable[[], None], steps: int, sync: Callable[[], None]) -> list[float]:
    """Seconds per step, each step synchronised so queued GPU work is inside its own timing."""
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="square matrix side")
    parser.add_argument("--matmuls", type=int, default=16, help="matmuls per step")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per phase")
    parser.add_argument("--interval", type=float, default=0.1, help="sampler window, seconds (>= 0.1)")
    args = parser.parse_args(argv)

    try:
        import torch
    except ImportError:
        print("bench_nvml_overhead: torch is not installed; nothing to measure")
        return 0
    if not torch.cuda.is_available():
        print("bench_nvml_overhead: no CUDA GPU on this machine; nothing to measure")
        return 0

    from profiler.nvml import NvmlSampler, nvml_status
    from simulator.errors import MeasurementUnavailable

    ok, reason = nvml_status(require_gpm=False)
    if not ok:
        print(f"bench_nvml_overhead: {reason}")
        return 0
    gpm_ok, _ = nvml_status(require_gpm=True)

    a = torch.randn(args.size, args.size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(args.size, args.size, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(a)

    def step() -> None:
        for _ in range(args.matmuls):
            torch.matmul(a, b, out=out)

    sync = torch.cuda.synchronize
    _step_times(step, 20, sync)  # warm-up: cuBLAS heuristics, clocks

    base1 = statistics.median(_step_times(step, args.steps, sync))
    try:
        with NvmlSampler(interval_s=args.interval, require_gpm=gpm_ok) as sampler:
            sampled = statistics.median(_step_times(step, args.steps, sync))
    except MeasurementUnavailable as exc:
        print(f"bench_nvml_overhead: {exc}")
        return 0
    base2 = statistics.median(_step_times(step, args.steps, sync))
    base = (base1 + base2) / 2
    timeline = sampler.to_dataframe()

    flops = 2 * args.size**3 * args.matmuls
    print(f"device: {torch.cuda.get_device_name()}  ({reason})")
    print(f"workload: {args.matmuls} x bf16 matmul {args.size}^3 per step, median of {args.steps} steps")
    print(
        f"without sampler: {base1 * 1e3:.3f} ms/step, again after: {base2 * 1e3:.3f} ms/step "
        f"({flops / base / 1e12:.0f} TFLOP/s)"
    )
    print(
        f"with sampler:    {sampled * 1e3:.3f} ms/step ({len(timeline)} windows of {sampler.interval_s} s, "
        f"GPM {'on' if gpm_ok else 'off'}, {len(sampler.errors)} sampler errors)"
    )
    print(f"ratio with/without: {sampled / base:.4f}")
    if gpm_ok and len(timeline):
        mean = timeline[["gpm_dram_bw_util_pct", "gpm_sm_util_pct", "gpm_tensor_util_pct"]].mean()
        print(
            f"GPM over the sampled phase: DRAM {mean.iloc[0]:.1f} %, SM {mean.iloc[1]:.1f} %, "
            f"tensor {mean.iloc[2]:.1f} %"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

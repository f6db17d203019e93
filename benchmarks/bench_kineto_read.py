"""Benchmark: stream-read a synthetic kineto trace of >= 1,000,000 events and attribute its kernels.

    python benchmarks/bench_kineto_read.py [--events 1000000] [--gzip] [--keep PATH]

The generator writes the trace event by event (only one sublayer's events are held at a time), with
the mix torch.profiler produces: step and layer user_annotation ranges, cpu_op events with recorded
shapes, cudaLaunchKernel launches, kernels (and a few memcpys) with matching correlation ids, ac2g
flow pairs, and GPU-side annotation ranges. Prints events/s and peak RSS for each phase.
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from traces.attribution import attribute  # noqa: E402
from traces.kineto import read_kineto  # noqa: E402

BASE_NS = 1_790_857_026_000_000_000
EVENTS_PER_OP = 5  # cpu_op, launch, kernel, flow start, flow end
KERNEL_NAMES = (
    "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>>",
    "nvjet_sm90_tst_64x8_64x16_4x1_v_bz_NNT",
    "void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_16x16_128x2_tn_align8>",
    "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float, true>",
    "void at::native::index_elementwise_kernel<128, 4>",
)
OP_NAMES = ("aten::add", "aten::mm", "aten::addmm", "aten::rms_norm", "aten::index")
SUBLAYERS = ("attn", "moe")


def peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _Writer:
    """Writes traceEvents items with commas, counting them."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.n = 0

    def event(self, e: dict[str, Any]) -> None:
        self.out.write(("," if self.n else "") + json.dumps(e, separators=(",", ":")))
        self.n += 1


def generate(path: Path, target_events: int, use_gzip: bool) -> int:
    """Write a trace with at least ``target_events`` traceEvents; returns the exact count."""
    ops_per_sublayer = 64
    blocks = 32
    per_step = blocks * len(SUBLAYERS) * (ops_per_sublayer * EVENTS_PER_OP + 2) + 2
    steps = max(1, -(-target_events // per_step))
    opener = gzip.open if use_gzip else open
    pid, tid, gpid, gtid = 4242, 4242, 0, 7
    corr = 1
    t = 1_000_000.0  # µs, cpu clock
    g = t  # µs, gpu clock (kernels run later than their launches)
    with opener(path, "wt") as out:
        out.write('{"schemaVersion":1,"deviceProperties":[{"id":0,"name":"Synthetic GPU"}],')
        out.write(f'"baseTimeNanoseconds":{BASE_NS},"traceEvents":[')
        w = _Writer(out)
        for s in range(steps):
            step_start = t
            step_events: list[dict[str, Any]] = []  # only the step's two ranges wait for the end
            for b in range(blocks):
                for sub in SUBLAYERS:
                    layer_start, gpu_start = t, g
                    body: list[dict[str, Any]] = []
                    for k in range(ops_per_sublayer):
                        i = (b + k) % len(KERNEL_NAMES)
                        body.append(
                            {
                                "ph": "X",
                                "cat": "cpu_op",
                                "name": OP_NAMES[i],
                                "pid": pid,
                                "tid": tid,
                                "ts": round(t, 3),
                                "dur": 6.5,
                                "args": {
                                    "External id": corr,
                                    "Input Dims": [[8, 1024], [1024, 1024]],
                                    "Input type": ["c10::BFloat16", "c10::BFloat16"],
                                },
                            }
                        )
                        body.append(
                            {
                                "ph": "X",
                                "cat": "cuda_runtime",
                                "name": "cudaLaunchKernel",
                                "pid": pid,
                                "tid": tid,
                                "ts": round(t + 1.0, 3),
                                "dur": 4.0,
                                "args": {"External id": corr, "cbid": 211, "correlation": corr},
                            }
                        )
                        g = max(g, t + 6.0)
                        cat = "gpu_memcpy" if k == ops_per_sublayer - 1 else "kernel"
                        body.append(
                            {
                                "ph": "X",
                                "cat": cat,
                                "name": KERNEL_NAMES[i]
                                if cat == "kernel"
                                else "Memcpy DtoD (Device -> Device)",
                                "pid": gpid,
                                "tid": gtid,
                                "ts": round(g, 3),
                                "dur": 3.2,
                                "args": {
                                    "External id": corr,
                                    "device": 0,
                                    "stream": 7,
                                    "correlation": corr,
                                    "grid": [128, 1, 1],
                                    "block": [256, 1, 1],
                                },
                            }
                        )
                        body.append(
                            {
                                "ph": "s",
                                "id": corr,
                                "pid": pid,
                                "tid": tid,
                                "ts": round(t + 1.0, 3),
                                "cat": "ac2g",
                                "name": "ac2g",
                            }
                        )
                        body.append(
                            {
                                "ph": "f",
                                "id": corr,
                                "pid": gpid,
                                "tid": gtid,
                                "ts": round(g, 3),
                                "cat": "ac2g",
                                "name": "ac2g",
                                "bp": "e",
                            }
                        )
                        corr += 1
                        t += 7.0
                        g += 3.5
                    name = f"block{b}.{sub}"
                    w.event(
                        {
                            "ph": "X",
                            "cat": "user_annotation",
                            "name": name,
                            "pid": pid,
                            "tid": tid,
                            "ts": round(layer_start, 3),
                            "dur": round(t - layer_start, 3),
                            "args": {},
                        }
                    )
                    w.event(
                        {
                            "ph": "X",
                            "cat": "gpu_user_annotation",
                            "name": name,
                            "pid": gpid,
                            "tid": gtid,
                            "ts": round(gpu_start, 3),
                            "dur": round(g - gpu_start, 3),
                            "args": {},
                        }
                    )
                    for e in body:
                        w.event(e)
                    t += 2.0
            step_events.append(
                {
                    "ph": "X",
                    "cat": "user_annotation",
                    "name": f"step{s}",
                    "pid": pid,
                    "tid": tid,
                    "ts": round(step_start, 3),
                    "dur": round(t - step_start, 3),
                }
            )
            step_events.append(
                {
                    "ph": "X",
                    "cat": "gpu_user_annotation",
                    "name": f"step{s}",
                    "pid": gpid,
                    "tid": gtid,
                    "ts": round(step_start, 3),
                    "dur": round(g - step_start, 3),
                }
            )
            for e in step_events:
                w.event(e)
            t += 10.0
        out.write('],"traceName":"synthetic"}')
    return w.n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--gzip", action="store_true", help="write and read a .json.gz trace")
    ap.add_argument("--keep", type=Path, default=None, help="write the trace here and keep it")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / ("synthetic.json.gz" if args.gzip else "synthetic.json")
        t0 = time.perf_counter()
        n = generate(path, args.events, args.gzip)
        t1 = time.perf_counter()
        size_mb = path.stat().st_size / 1e6
        print(
            f"generated {n:,} events, {size_mb:.1f} MB on disk, in {t1 - t0:.1f} s; "
            f"peak RSS {peak_rss_mb():.0f} MB"
        )

        t0 = time.perf_counter()
        trace = read_kineto(path)
        t1 = time.perf_counter()
        print(
            f"read:      {trace.n_events:,} events in {t1 - t0:.2f} s = {trace.n_events / (t1 - t0):,.0f} "
            f"events/s ({len(trace.events):,} kept); peak RSS {peak_rss_mb():.0f} MB"
        )

        t0 = time.perf_counter()
        kernels = attribute(trace.events)
        t1 = time.perf_counter()
        attributed = int(kernels["layer"].notna().sum())
        print(
            f"attribute: {len(kernels):,} device activities in {t1 - t0:.2f} s = "
            f"{len(kernels) / (t1 - t0):,.0f} /s ({attributed:,} in layers, "
            f"{kernels['step'].nunique()} steps); peak RSS {peak_rss_mb():.0f} MB"
        )


if __name__ == "__main__":
    main()

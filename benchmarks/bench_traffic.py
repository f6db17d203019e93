"""Speed of the request-level serving simulation (`serve --rate`, simulator/traffic.py).

Simulates N requests (20,000 by default; prompt 2048, generate 256) of OLMoE-1B-7B on the H100 SXM
preset at a light, a busy and an overloaded rate, and prints, per rate, the wall time and the requests
simulated per second (the step tables built once per model, and timed apart). Not a test: numbers depend
on the machine and its load.

With --allocation paged, the engine allocates KV as tokens are computed and preempts (`serve
--allocation paged`); the preemptions are printed too.

With --shared-prefix N, every prompt begins with the same N tokens and the engine caches prompt blocks
(`serve --shared-prefix`): the block pool's cost shows beside the run without it.

With --requests-file TRACE (any layout `serve --requests-file` reads), replays that trace instead, at each
of --speeds, and prints the same numbers.

With --long-prompt N, replays 39 short requests (seeded) and one of N prompt tokens, and prints the wall
time and the process's peak memory: the decode table's size when one request is far longer than the rest.

Run:  python benchmarks/bench_traffic.py [--requests N] [--model NAME] [--hardware HW] [--weight-dtype D]
      [--rates 1,20,60] [--shared-prefix N] [--allocation paged] [--requests-file TRACE --speeds 1,4]
      [--long-prompt N]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import numpy as np

from simulator.config import Workload
from simulator.loading import load_hardware, load_model
from simulator.paged_engine import run_paged_engine
from simulator.prefix_cache import VLLM_BLOCK_TOKENS, SharedPrefixBlocks
from simulator.request_trace import RequestTrace, load_request_trace
from simulator.traffic import (
    Engine,
    StepCoster,
    Trace,
    arrival_times,
    block_kv_bytes,
    engine_memory,
    run_engine,
    simulate_trace,
    summarize,
    token_kv_bytes,
)


def bench_trace(args: argparse.Namespace) -> None:
    """Replay --requests-file at each of --speeds: the whole `simulate_trace` (tables, KV per request,
    capacity and the run) timed together."""
    model, hardware = load_model(args.model), load_hardware(args.hardware)
    workload = Workload(weight_dtype=args.weight_dtype)
    heads = ("speed", 7), ("requests", 9), ("steps", 10), ("wall s", 7), ("requests/s simulated", 21)
    print(" ".join(f"{h:>{w}s}" for h, w in heads), "saturated")
    for speed in (float(x) for x in args.speeds.split(",")):
        requests = load_request_trace(args.requests_file, speed, args.requests)
        traces: list[Trace] = []
        start = time.perf_counter()
        row = simulate_trace(model, hardware, workload, requests, Engine(8192), keep_traces=traces).iloc[0]
        wall = time.perf_counter() - start
        print(
            f"{speed:7g} {len(requests):9,d} {traces[0].total_steps:10,d} {wall:7.2f} "
            f"{len(requests) / wall:21,.0f} {row['saturated']!s:>9s}"
        )


def bench_long_prompt(args: argparse.Namespace) -> None:
    """39 short requests and one of --long-prompt tokens: `simulate_trace` timed, and the peak memory."""
    rng = np.random.default_rng(9)
    arrival = np.cumsum(rng.exponential(0.5, 40))
    prompt = np.r_[rng.integers(1, 2000, 39), args.long_prompt]
    generate = np.r_[rng.integers(1, 300, 39), 9]
    requests = RequestTrace(arrival - arrival[0], prompt, generate, "memtraffic", "long-prompt")
    model, hardware = load_model(args.model), load_hardware(args.hardware)
    start = time.perf_counter()
    simulate_trace(model, hardware, Workload(weight_dtype=args.weight_dtype), requests, Engine(8192))
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(
        f"one request of {args.long_prompt:,} prompt tokens among 39 short: {wall:.2f} s, "
        f"peak {peak:,.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--model", default="olmoe-1b-7b")
    parser.add_argument("--hardware", default="h100-sxm")
    parser.add_argument("--weight-dtype", default="bf16")
    parser.add_argument("--rates", default="1,20,60", help="requests per second, comma-separated")
    parser.add_argument("--shared-prefix", type=int, default=0, help="prompt tokens all requests share")
    parser.add_argument("--requests-file", default=None, help="a request trace to replay instead")
    parser.add_argument("--speeds", default="1", help="with --requests-file: --trace-speed values")
    parser.add_argument("--allocation", default="reserved", choices=("reserved", "paged"))
    parser.add_argument("--long-prompt", type=int, default=0, help="one request of this many prompt tokens")
    args = parser.parse_args()
    if args.long_prompt:
        bench_long_prompt(args)
        return
    if args.requests_file is not None:
        print(
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {args.model} on "
            f"{args.hardware}, weights {args.weight_dtype}; replaying {args.requests_file}"
        )
        bench_trace(args)
        return
    model, hardware = load_model(args.model), load_hardware(args.hardware)
    workload = Workload(weight_dtype=args.weight_dtype)
    prompt, generate, engine = 2048, 256, Engine(8192)

    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    print(f"{cpu}; {args.model} on {args.hardware}, weights {args.weight_dtype}")
    start = time.perf_counter()
    resident, per_request = engine_memory(model, hardware, workload, prompt, generate, engine.token_budget)
    seq_limit = min(engine.max_seqs, int((hardware.hbm_capacity.value - resident) // per_request))
    coster = StepCoster(model, hardware, workload, prompt, prompt, prompt + generate - 2, engine.token_budget)
    caching: dict = {}
    if args.shared_prefix or args.allocation == "paged":  # admission by bytes
        room = int(hardware.hbm_capacity.value - resident)
        caching = {"reserve": np.full(args.requests, int(np.ceil(per_request))), "room": room}
        seq_limit = engine.max_seqs
    if args.shared_prefix:
        blocks = SharedPrefixBlocks(VLLM_BLOCK_TOKENS, args.requests, prompt, args.shared_prefix)
        block_bytes = block_kv_bytes(model, workload, VLLM_BLOCK_TOKENS, prompt + generate)
        caching |= {"blocks": blocks, "block_bytes": block_bytes}
        print(
            f"prefix caching: {args.shared_prefix} of {prompt} prompt tokens shared, "
            f"{VLLM_BLOCK_TOKENS}-token blocks"
        )
    run = run_engine
    if args.allocation == "paged":
        caching["token_bytes"] = token_kv_bytes(model, workload, prompt + generate)
        run = run_paged_engine
        print("paged KV allocation with preemption by recompute")
    print(f"tables (decode contexts, weights by step size, memory): {time.perf_counter() - start:.2f} s")
    heads = ("rate/s", 7), ("requests", 9), ("steps", 10), ("wall s", 7), ("requests/s simulated", 21)
    print(" ".join(f"{h:>{w}s}" for h, w in heads), "saturated", "preemptions")
    for rate in (float(r) for r in args.rates.split(",")):
        arrival = arrival_times(rate, args.requests, "poisson", 0)
        start = time.perf_counter()
        trace = run(coster, arrival, generate, engine.token_budget, seq_limit, **caching)
        wall = time.perf_counter() - start
        saturated = summarize(trace, generate)["saturated"]
        print(
            f"{rate:7g} {args.requests:9,d} {trace.total_steps:10,d} {wall:7.2f} "
            f"{args.requests / wall:21,.0f} {saturated!s:>9s} {trace.preemptions:11,d}"
        )


if __name__ == "__main__":
    main()

"""Speed of distinct_from_probs: the numba kernel against the numpy fallback, in one run.

N = 10^6 items x 64 token counts by default, on three workloads: a Zipf law (s = 1, k = 8) over a
geometric grid of T, the same over a power-of-two grid, and the kernel's worst case (uniform pi = k/N with
every T near N/k, so every item and token count needs an exponential). Prints, per backend, items per
second (each item evaluated at all token counts) and the ratio; the first numba call (compile, or load
from numba's cache) is timed separately. Not a test: numbers depend on the machine and its load.

Run:  python benchmarks/bench_routing.py [--items N] [--counts M] [--repeat R]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from simulator.routing import distinct_from_probs, numba_available, zipf_probs


def best_seconds(
    probs: np.ndarray, tokens: np.ndarray, backend: str, repeat: int
) -> tuple[float, np.ndarray]:
    best, result = float("inf"), np.empty(0)
    for _ in range(repeat):
        start = time.perf_counter()
        result = distinct_from_probs(probs, tokens, backend=backend)  # type: ignore[arg-type]
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--counts", type=int, default=64, help="token counts per call")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per case; the best is kept")
    args = parser.parse_args()
    n, m, k = args.items, args.counts, 8

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; N = {n:,} items x {m} T")
    if not numba_available():
        print("numba is not importable: only the numpy fallback can run")
        return
    start = time.perf_counter()
    distinct_from_probs([0.5], [1.0], backend="numba")
    print(f"first numba call (compile or cache load): {time.perf_counter() - start:.2f} s")

    zipf = zipf_probs(n, k, 1.0)
    cases = [
        ("zipf s=1, T geometric 1..1e6", zipf, np.geomspace(1.0, 1e6, m)),
        ("zipf s=1, T = 2^0..2^(M-1)", zipf, 2.0 ** np.arange(m)),
        ("uniform, T in [0.1, 4] N/k (worst)", np.full(n, k / n), np.geomspace(0.1, 4.0, m) * n / k),
    ]
    print(f"{'case':38s} {'numba items/s':>14s} {'numpy items/s':>14s} {'ratio':>7s} {'max rel diff':>12s}")
    for name, probs, tokens in cases:
        fast, a = best_seconds(probs, tokens, "numba", args.repeat)
        slow, b = best_seconds(probs, tokens, "numpy", args.repeat)
        diff = float(np.max(np.abs(a - b) / np.maximum(b, 1e-300)))
        print(f"{name:38s} {n / fast:14.3g} {n / slow:14.3g} {slow / fast:7.1f} {diff:12.1e}")


if __name__ == "__main__":
    main()

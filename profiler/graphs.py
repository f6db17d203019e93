"""Step time with the launches taken out: the steps captured as CUDA graphs and replayed.

Eager decode at small batch is mostly kernel launches (measured-on-h100.md: a product-key layer took
560 us per step eager, 80 us as a replayed graph), so the eager step time says little about what the
layer costs a serving engine that replays graphs. This captures `graphs` steps on distinct ring inputs
(so replays do not re-read one routing's working set from L2) into graphs that share one memory pool,
replays them in turn and times the replays. A module that syncs with the host inside its forward (the
reference MoE moves its per-expert counts to the host) cannot be captured: that is reported, not hidden.
Replays repeat the captured steps exactly (an append-mode KV cache writes the same positions again).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from profiler.target import Target
from simulator.errors import MeasurementUnavailable


def graph_step_us(
    target: Target, ring: list[Any], first: int, device: torch.device, replays: int = 50, graphs: int = 4
) -> float:
    """Microseconds per step of `replays` graph replays (captured on ring[first], ring[first + 1], ...).

    Raises MeasurementUnavailable with the reason when there is no CUDA device or capture fails.
    """
    if device.type != "cuda":
        raise MeasurementUnavailable("CUDA graphs need a CUDA device")
    inputs = [ring[(first + i) % len(ring)] for i in range(max(1, min(graphs, len(ring))))]
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
        for x in inputs:
            target.step(x)
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    captured: list[torch.cuda.CUDAGraph] = []
    try:
        for x in inputs:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=captured[0].pool() if captured else None):
                target.step(x)
            captured.append(graph)
    except Exception as exc:  # host syncs, CPU-side work in forward: the module is not capturable
        torch.cuda.synchronize(device)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MeasurementUnavailable(f"not capturable as a CUDA graph ({first_line})") from None
    for graph in captured:  # one untimed round
        graph.replay()
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for i in range(replays):
        captured[i % len(captured)].replay()
    torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / replays * 1e6

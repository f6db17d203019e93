"""Step time with the launches taken out: the steps captured as CUDA graphs and replayed.

Eager decode at small batch is mostly kernel launches (measured-on-h100.md: a product-key layer took
560 us per step eager, 80 us as a replayed graph), so the eager step time says little about what the
layer costs a serving engine that replays graphs. This captures `graphs` steps on distinct ring inputs
(so replays do not re-read one routing's working set from L2) into graphs that share one memory pool,
replays them in turn and times the replays. A module that syncs with the host inside its forward (the
reference MoE moves its per-expert counts to the host) cannot be captured: one eager step under
torch's sync debug mode finds that before any capture starts (a sync during capture would spoil the
capture and, in some torch versions, the allocator), and it is reported, not hidden.
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

    Raises MeasurementUnavailable with the reason when there is no CUDA device, the forward syncs with
    the host, or capture fails.
    """
    if device.type != "cuda":
        raise MeasurementUnavailable("CUDA graphs need a CUDA device")
    inputs = [ring[(first + i) % len(ring)] for i in range(max(1, min(graphs, len(ring))))]
    caller = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(caller)
    with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
        _step_without_host_sync(target, inputs[0])
        for x in inputs:
            target.step(x)
    caller.wait_stream(side)
    torch.cuda.synchronize(device)
    captured: list[torch.cuda.CUDAGraph] = []
    try:
        for x in inputs:
            graph = torch.cuda.CUDAGraph()
            pool = captured[0].pool() if captured else None
            with torch.cuda.graph(graph, pool=pool, stream=side):
                target.step(x)
            captured.append(graph)
    except Exception as exc:  # CPU-side work the sync check cannot see: the module is not capturable
        torch.cuda.set_stream(caller)  # a failed capture can skip restoring the caller's stream
        captured.clear()
        raise MeasurementUnavailable(f"not capturable as a CUDA graph ({_root_cause(exc)})") from None
    for graph in captured:  # one untimed round
        graph.replay()
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for i in range(replays):
        captured[i % len(captured)].replay()
    torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / replays * 1e6


def _step_without_host_sync(target: Target, x: Any) -> None:
    """One eager step with host syncs turned into errors: MeasurementUnavailable if the forward syncs."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        target.step(x)
    except RuntimeError as exc:
        raise MeasurementUnavailable(
            f"not capturable: the forward syncs with the host ({_root_cause(exc)})"
        ) from None
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def _root_cause(exc: BaseException) -> str:
    """The first error of a chain (capture_end's own error hides the op that spoiled the capture), with
    the innermost frame that raised it."""
    while exc.__context__ is not None and exc.__cause__ is None and not exc.__suppress_context__:
        exc = exc.__context__
    text = str(exc).strip().splitlines()
    where = ""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        where = f" at {tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}"
    return (text[0] if text else type(exc).__name__) + where

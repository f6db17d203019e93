"""torch.profiler as memtraffic opens it: the activities for the device, kineto's log lines silenced.

At its default log level kineto prints `USDT:... SyncActivityProfilerHandler.cpp] profiler_start` and
`profiler_stop` to stderr on every start and stop. Its levels are VERBOSE 0, INFO 1, WARNING 2, STAGE 3,
ERROR 4 and USDT 5, so only a level above 5 hides those lines (and kineto's own errors with them).
libkineto reads KINETO_LOG_LEVEL once, when the process first starts a profiler. `quiet_kineto` sets it
around our own profiler sessions only and restores the environment after; the level read at that first
start then holds for the rest of the process, and if another profiler started first, its level stands.
A KINETO_LOG_LEVEL set by the user is left as it is: 4 brings kineto's errors back, USDT lines included.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

KINETO_LOG_LEVEL = "KINETO_LOG_LEVEL"
QUIET_LEVEL = "6"  # above USDT (5), kineto's highest severity


@contextlib.contextmanager
def quiet_kineto() -> Iterator[None]:
    """KINETO_LOG_LEVEL=6 inside the block (unless already set), the environment as it was after."""
    if KINETO_LOG_LEVEL in os.environ:
        yield
        return
    os.environ[KINETO_LOG_LEVEL] = QUIET_LEVEL
    try:
        yield
    finally:
        os.environ.pop(KINETO_LOG_LEVEL, None)


@contextlib.contextmanager
def torch_profile(device: torch.device, **kwargs: Any) -> Iterator[torch.profiler.profile]:
    """torch.profiler.profile over the CPU, and CUDA on a CUDA device, with kineto kept quiet."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with quiet_kineto(), torch.profiler.profile(activities=activities, **kwargs) as prof:
        yield prof

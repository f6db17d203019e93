"""The fixed cost of a GPU kernel, measured from recorded bundles: the median duration of PyTorch's
elementwise kernels at batch 1, where each moves only a few kB, so their time is launch ramp and tail.

    python scripts/kernel_floor.py traces/samples/bundles/moe traces/samples/bundles/umv2

This is where the `kernel_floor_s` of a hardware preset comes from (see simulator/presets/hardware).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from traces.bundle import read_bundle  # noqa: E402


def elementwise_batch1_durations(paths: list[str]) -> tuple[np.ndarray, str]:
    frames, devices = [], set()
    for path in paths:
        bundle = read_bundle(path)
        devices.add(str((bundle.meta.get("device") or {}).get("name", "unknown device")))
        kernels = bundle.table("kernels")
        smallest = kernels["batch"].min()
        frames.append(
            kernels[(kernels["batch"] == smallest) & kernels["kernel"].str.contains("elementwise_kernel")]
        )
    durations = pd.concat(frames)["dur_ns"].to_numpy(dtype=np.float64) * 1e-9
    return durations, ", ".join(sorted(devices))


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python scripts/kernel_floor.py BUNDLE [BUNDLE...]")
    durations, device = elementwise_batch1_durations(sys.argv[1:])
    if durations.size == 0:
        sys.exit("no elementwise kernels at the smallest batch size in these bundles")
    p25, p50, p75 = np.percentile(durations, [25, 50, 75]) * 1e6
    print(f"{device}: {durations.size} elementwise kernels at the smallest batch size")
    print(f"duration p25 {p25:.2f} us, median {p50:.2f} us, p75 {p75:.2f} us")


if __name__ == "__main__":
    main()

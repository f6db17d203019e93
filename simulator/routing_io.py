"""Reading a measured routing histogram (item, count) for the simulator's popularity model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from simulator.errors import ConfigError


def load_histogram(path: str | Path | None) -> np.ndarray:
    """Selection counts per item, indexed by item id, from a CSV or Parquet table with `item` and
    `count` columns (other columns, such as batch or layer, are summed over). A profiled run directory
    stands for its routing table (routing.parquet)."""
    if path is None:
        raise ConfigError("routing.histogram: a histogram file is required for kind 'histogram'")
    p = Path(path)
    if p.is_dir():
        if not (p / "routing.parquet").is_file():
            raise ConfigError(f"routing.histogram: {p} is a folder without a routing table (routing.parquet)")
        p = p / "routing.parquet"
    if not p.is_file():
        raise ConfigError(f"routing.histogram: no such file: {p}")
    try:
        df = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)
    except Exception as exc:  # pandas raises many types for unreadable files
        raise ConfigError(f"routing.histogram: cannot read {p}: {exc}".splitlines()[0]) from None
    missing = {"item", "count"} - set(df.columns)
    if missing:
        raise ConfigError(f"routing.histogram: {p} lacks column(s) {', '.join(sorted(missing))}")
    if df.empty or df["count"].sum() <= 0:
        raise ConfigError(f"routing.histogram: {p} has no selections (no rows, or all counts zero)")
    if (df["item"] < 0).any() or (df["count"] < 0).any():
        raise ConfigError(f"routing.histogram: {p} has negative item ids or counts")
    counts = df.groupby("item")["count"].sum()
    out = np.zeros(int(counts.index.max()) + 1)
    out[counts.index.to_numpy(dtype=np.int64)] = counts.to_numpy(dtype=np.float64)
    return out

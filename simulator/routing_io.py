"""Reading a measured routing histogram (item, count) for the simulator's popularity model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from simulator.csvfile import not_csv_reason
from simulator.errors import ConfigError

MAX_ITEMS = 2**31  # experts or memory rows of one layer: far beyond any table, and a histogram this long fits


def load_histogram(path: str | Path | None) -> np.ndarray:
    """Selection counts per item from a CSV or Parquet table with `item` and `count` columns (other
    columns, such as batch or step, are summed over). A profiled run directory stands for its routing
    table (routing.parquet).

    With one layer (or no `layer` column) the counts are indexed by item id. With several layers they are
    the layers' popularity profiles averaged rank by rank (each layer's counts sorted, as shares of its
    selections, averaged, scaled to the mean selections per layer): the expected number of distinct items
    depends on the popularity values alone, not on which id holds them, and adding counts of unrelated
    experts of different layers by id would flatten each layer's skew."""
    if path is None:
        raise ConfigError("routing.histogram: a histogram file is required for kind 'histogram'")
    p = Path(path)
    if p.is_dir():
        if not (p / "routing.parquet").is_file():
            raise ConfigError(f"routing.histogram: {p} is a folder without a routing table (routing.parquet)")
        p = p / "routing.parquet"
    if not p.is_file():
        raise ConfigError(f"routing.histogram: no such file: {p}")
    reason = None if p.suffix == ".parquet" else not_csv_reason(p)
    if reason is not None:
        raise ConfigError(
            f"routing.histogram: {p} is {reason}; expected a CSV or Parquet table (item, count)"
        )
    try:
        df = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)
    except Exception as exc:  # pandas raises many types for unreadable files
        raise ConfigError(f"routing.histogram: cannot read {p}: {exc}".splitlines()[0]) from None
    missing = {"item", "count"} - set(df.columns)
    if missing:
        raise ConfigError(f"routing.histogram: {p} lacks column(s) {', '.join(sorted(missing))}")
    for col in ("item", "count"):
        values = pd.to_numeric(df[col], errors="coerce")
        bad = ~np.isfinite(values.to_numpy(dtype=np.float64))
        if bad.any():
            raise ConfigError(
                f"routing.histogram: {p}: column {col!r} holds a non-number ({df[col][bad].iloc[0]!r})"
            )
        df[col] = values
    if (df["item"] != np.floor(df["item"])).any():
        raise ConfigError(f"routing.histogram: {p}: item ids must be integers")
    if (df["item"] < 0).any() or (df["count"] < 0).any():
        raise ConfigError(f"routing.histogram: {p} has negative item ids or counts")
    if df.empty or df["count"].sum() <= 0:
        raise ConfigError(f"routing.histogram: {p} has no selections (no rows, or all counts zero)")
    if df["item"].max() >= MAX_ITEMS:
        raise ConfigError(
            f"routing.histogram: {p}: item id {int(df['item'].max())} is beyond any layer's items "
            f"(ids run below {MAX_ITEMS:,})"
        )
    if "layer" in df and df["layer"].nunique() > 1:
        return _rank_averaged(df)
    counts = df.groupby("item")["count"].sum()
    out = np.zeros(int(counts.index.max()) + 1)
    out[counts.index.to_numpy(dtype=np.int64)] = counts.to_numpy(dtype=np.float64)
    return out


def _rank_averaged(df: pd.DataFrame) -> np.ndarray:
    """Per layer, counts by item sorted in decreasing order as shares of the layer's selections; the
    shares averaged rank by rank (a layer with fewer selected items adds zeros) and scaled to the mean
    number of selections per layer."""
    per_layer = df.groupby(["layer", "item"])["count"].sum()
    profiles = [np.sort(g.to_numpy(dtype=np.float64))[::-1] for _, g in per_layer.groupby(level="layer")]
    width = max(p.size for p in profiles)
    shares = np.zeros((len(profiles), width))
    for i, p in enumerate(profiles):
        shares[i, : p.size] = p / p.sum()
    mean_selections = float(np.mean([p.sum() for p in profiles]))
    return shares.mean(axis=0) * mean_selections

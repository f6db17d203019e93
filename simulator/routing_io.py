"""Reading a measured routing histogram (item, count) for the simulator's popularity model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from simulator.csvfile import not_csv_reason
from simulator.errors import ConfigError

MAX_ITEMS = 2**31  # experts or memory rows of one layer: far beyond any table, and a histogram this long fits


class Histogram(np.ndarray):
    """Selection counts per item (a float64 array) that remember where they were read from.

    `source` is the file; `layer_items`, for counts averaged over several layers, is the fewest items with
    a nonzero count in any one layer (None for one layer, where the counts themselves tell). The
    simulator's RoutingModel picks both up, so that a histogram refused by a layer (fewer items ever
    chosen than the layer's top-k) is named in the error.
    """

    source: str | None
    layer_items: int | None

    def __new__(cls, counts: np.ndarray, source: str, layer_items: int | None = None) -> Histogram:
        histogram = np.asarray(counts, dtype=np.float64).view(cls)
        histogram.source = source
        histogram.layer_items = layer_items
        return histogram

    def __array_finalize__(self, obj: object) -> None:
        self.source = getattr(obj, "source", None)
        self.layer_items = getattr(obj, "layer_items", None)


def load_histogram(path: str | Path | None) -> Histogram:
    """Selection counts per item from a CSV or Parquet table with `item` and `count` columns (other
    columns, such as batch or step, are summed over). A profiled run directory stands for its routing
    table (routing.parquet).

    With one layer (or no `layer` column) the counts are indexed by item id. With several layers they are
    the layers' popularity profiles averaged rank by rank (each layer's counts sorted, as shares of its
    selections, averaged, scaled to the mean selections per layer): the expected number of distinct items
    depends on the popularity values alone, not on which id holds them, and adding counts of unrelated
    experts of different layers by id would flatten each layer's skew. The average has as many items with a
    nonzero count as the widest layer, so the fewest of any one layer is kept beside it (`layer_items`):
    a top-k layer needs at least k (see Histogram)."""
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
        profile, layer_items = _rank_averaged(df)
        return Histogram(profile, str(p), layer_items)
    counts = df.groupby("item")["count"].sum()
    out = np.zeros(int(counts.index.max()) + 1)
    out[counts.index.to_numpy(dtype=np.int64)] = counts.to_numpy(dtype=np.float64)
    return Histogram(out, str(p))


def _rank_averaged(df: pd.DataFrame) -> tuple[np.ndarray, int]:
    """Per layer, counts by item sorted in decreasing order as shares of the layer's selections; the
    shares averaged rank by rank (a layer with fewer selected items adds zeros) and scaled to the mean
    number of selections per layer. Also returns the fewest items with a nonzero count in one layer.

    The probabilities are water-filled from the average (simulator.routing.probs_from_histogram), not per
    layer, and that loses nothing: a layer recorded under top-k routing has every share <= 1/k (no token
    chooses an item twice), so its average does too and pi = k * share needs no cap; shares above 1/k (a
    histogram written by hand, or recorded with a smaller k) are capped and redistributed after averaging.
    A layer without selections has no profile and is left out."""
    per_layer = df.groupby(["layer", "item"])["count"].sum()
    profiles = [np.sort(g.to_numpy(dtype=np.float64))[::-1] for _, g in per_layer.groupby(level="layer")]
    profiles = [p for p in profiles if p.sum() > 0]  # a layer without selections has no profile to average
    width = max(p.size for p in profiles)
    shares = np.zeros((len(profiles), width))
    for i, p in enumerate(profiles):
        shares[i, : p.size] = p / p.sum()
    mean_selections = float(np.mean([p.sum() for p in profiles]))
    layer_items = min(int(np.count_nonzero(p)) for p in profiles)
    return shares.mean(axis=0) * mean_selections, layer_items

"""A recorded stream of requests to replay through the serving engine (`serve --requests-file`).

Each request has an arrival time, a prompt length and an output length. Four layouts are recognised
by their column (or JSON key) names, case-insensitively and whatever the other columns:

| layout | file | arrival | prompt tokens | output tokens |
| --- | --- | --- | --- | --- |
| memtraffic | CSV or Parquet | `arrival_s` (seconds) | `prompt` | `generate` |
| Azure LLM inference traces | CSV | `TIMESTAMP` (a date and time) | `ContextTokens` | `GeneratedTokens` |
| BurstGPT | CSV | `Timestamp` (seconds) | `Request tokens` | `Response tokens` |
| Mooncake | JSON lines | `timestamp` (milliseconds) | `input_length` | `output_length` |

A Mooncake trace also names each prompt's blocks of 512 tokens (`hash_ids`: two requests share a block
where they share the whole prompt up to its end), which the engine's prefix cache reads
(simulator/prefix_cache.py); a request whose `hash_ids` is missing or is not a list of whole numbers is
refused.

Arrivals are counted from the earliest request; requests are sorted by arrival (stable, so requests
arriving together keep the file's order). A request with no output tokens (BurstGPT logs a failed
request so) generates nothing to serve: it is left out and counted in `RequestTrace.dropped`.
Everything else that is wrong is refused with one `ConfigError` naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from simulator.errors import ConfigError
from simulator.prefix_cache import MOONCAKE_BLOCK_TOKENS, ListedBlocks


@dataclass(frozen=True)
class TraceLayout:
    """Where a layout keeps arrival and sizes (lower-case column names) and the arrival's unit."""

    name: str
    arrival: str
    prompt: str
    generate: str
    seconds_per_unit: float | None  # None: the arrival column holds dates and times
    blocks: str | None = None  # the column naming each prompt's blocks, where the layout has one
    block_tokens: int = 0


MAX_TOKENS = 1 << 40  # beyond any model's positions; larger values would overflow the integer cast
# a replay factor beyond these puts arrivals so far apart (or close) that step times vanish beside them
MIN_SPEED, MAX_SPEED = 1e-6, 1e6

LAYOUTS = (
    TraceLayout("memtraffic", "arrival_s", "prompt", "generate", 1.0),
    TraceLayout("azure", "timestamp", "contexttokens", "generatedtokens", None),
    TraceLayout("burstgpt", "timestamp", "request tokens", "response tokens", 1.0),
    TraceLayout(
        "mooncake", "timestamp", "input_length", "output_length", 1e-3, "hash_ids", MOONCAKE_BLOCK_TOKENS
    ),
)


@dataclass(frozen=True)
class RequestTrace:
    """Requests sorted by arrival: seconds from the first (float64), prompt and output tokens (int64)."""

    arrival: np.ndarray
    prompt: np.ndarray
    generate: np.ndarray
    layout: str
    path: str
    dropped: int = 0  # requests with no output tokens, left out
    blocks: ListedBlocks | None = None  # each prompt's full blocks, where the trace names them
    speed: float = 1.0  # the arrivals as recorded, divided by this (--trace-speed)

    def __len__(self) -> int:
        return len(self.arrival)

    @property
    def mean_rate(self) -> float:
        """Requests per second over the trace's span (NaN where they all arrive at once)."""
        span = float(self.arrival[-1] - self.arrival[0]) if len(self) else 0.0
        return (len(self) - 1) / span if span > 0 else float("nan")


def _read_jsonl(path: Path) -> pd.DataFrame:
    """One JSON object a line; a line that does not parse (a truncated download) is refused by number."""
    rows = []
    with path.open(encoding="utf-8-sig") as f:  # a byte-order mark is no part of the first object
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}: line {number} is not a whole JSON object ({e.msg})") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}: line {number} is not a JSON object")
            rows.append(row)
    return pd.DataFrame(rows)


def _read_frame(path: Path) -> pd.DataFrame:
    """The file as a table, by its suffix: .parquet, .jsonl/.json, anything else CSV."""
    if not path.exists():
        raise ConfigError(f"--requests-file {path}: no such file")
    if not path.is_file():
        raise ConfigError(f"--requests-file {path}: not a file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".jsonl", ".json"):
            return _read_jsonl(path)
        return pd.read_csv(path, skipinitialspace=True)
    except ConfigError:
        raise
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path}: not a readable table ({first})") from None


def _layout(path: Path, columns: list[str]) -> tuple[TraceLayout, dict[str, str]]:
    """The first layout whose three columns the file has, and lower-case name -> the file's name."""
    names = {str(c).strip().lower(): str(c) for c in columns}
    for layout in LAYOUTS:
        if {layout.arrival, layout.prompt, layout.generate} <= names.keys():
            return layout, names
    wanted = "; ".join(f"{x.arrival}, {x.prompt}, {x.generate} ({x.name})" for x in LAYOUTS)
    have = ", ".join(map(str, columns)) or "none"
    raise ConfigError(f"{path}: no request columns found (it has {have}); expected one of: {wanted}")


def _row(frame: pd.DataFrame, i: int, jsonl: bool) -> str:
    """How a user finds row i: its line in the file (the header is line 1 of a CSV)."""
    return f"line {i + 1}" if jsonl else f"row {i + 1}"


def _tokens(path: Path, frame: pd.DataFrame, column: str, jsonl: bool) -> np.ndarray:
    """A token column as whole non-negative numbers, or the first bad value refused."""
    raw = frame[column]
    # true/false are no token counts, though Python counts them as 1 and 0
    flags = raw.map(lambda v: isinstance(v, bool | np.bool_)).to_numpy(dtype=bool)
    values = pd.to_numeric(raw.mask(flags), errors="coerce").astype(np.float64)
    for bad, why in (
        (values.isna() | ~np.isfinite(values), "is not a number"),
        (values < 0, "is negative"),
        (values.notna() & (values != np.floor(values)), "is not a whole number of tokens"),
        (values > MAX_TOKENS, f"is more than {MAX_TOKENS:,} tokens"),
    ):
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            shown = raw.iloc[i].item() if hasattr(raw.iloc[i], "item") else raw.iloc[i]
            raise ConfigError(f"{path}: {column} {shown!r} at {_row(frame, i, jsonl)} {why}")
    return values.to_numpy(dtype=np.float64).astype(np.int64)


def _arrivals(path: Path, frame: pd.DataFrame, column: str, layout: TraceLayout, jsonl: bool) -> np.ndarray:
    """Arrival seconds, not yet shifted to the first request."""
    raw = frame[column]
    if layout.seconds_per_unit is None:
        # dates like 2023-11-16 18:17:03.979 (or with 7 fractional digits): seconds since the epoch
        stamps = pd.to_datetime(raw.astype(str), format="ISO8601", errors="coerce", utc=True)
        bad = stamps.isna().to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ConfigError(
                f"{path}: {column} {raw.iloc[i]!r} at {_row(frame, i, jsonl)} is not a date and time"
            )
        nanos = stamps.dt.tz_localize(None).to_numpy().astype("datetime64[ns]").astype(np.int64)
        return (nanos - nanos.min()) / 1e9
    if pd.api.types.is_timedelta64_dtype(raw):
        return raw.dt.total_seconds().to_numpy(dtype=np.float64)
    if pd.api.types.is_datetime64_any_dtype(raw) or pd.api.types.is_bool_dtype(raw):
        # a date column where the layout counts seconds (or ms) would be read as its raw ticks
        raise ConfigError(
            f"{path}: {column} holds {raw.dtype} values where the {layout.name} layout counts seconds"
        )
    values = pd.to_numeric(raw, errors="coerce")
    bad = (values.isna() | ~np.isfinite(values.astype(np.float64))).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ConfigError(f"{path}: {column} {str(raw.iloc[i])!r} at {_row(frame, i, jsonl)} is not a time")
    return values.to_numpy(dtype=np.float64) * layout.seconds_per_unit


HASH_RANGE = (-(1 << 63), 1 << 63)  # block hashes are kept as 64-bit integers


def _block_lists(path: Path, frame: pd.DataFrame, column: str, jsonl: bool) -> list[list[int]]:
    """Each request's block hashes, or the first list that is not one refused: whole numbers of 64 bits,
    none twice (a block's hash covers the whole prefix up to it, so one prompt cannot repeat one)."""
    lists = []
    low, high = HASH_RANGE
    for i, value in enumerate(frame[column].tolist()):
        where = f"{path}: {column} at {_row(frame, i, jsonl)}"
        ok = isinstance(value, list) and all(isinstance(h, int) and not isinstance(h, bool) for h in value)
        if not ok:
            raise ConfigError(f"{where} is not a list of block hashes")
        if any(not low <= h < high for h in value):
            raise ConfigError(f"{where} has a hash outside 64-bit integers")
        if len(set(value)) < len(value):
            raise ConfigError(f"{where} names a block twice: a hash stands for the whole prefix up to it")
        lists.append(value)
    return lists


def load_request_trace(path: str | Path, speed: float = 1.0, requests: int | None = None) -> RequestTrace:
    """The requests of `path` (module docstring), arrivals divided by `speed` (2: the same requests in
    half the time, twice the rate), the first `requests` of them by arrival where given."""
    path = Path(path)
    if not (MIN_SPEED <= speed <= MAX_SPEED):
        raise ConfigError(
            f"--trace-speed {speed}: a factor from {MIN_SPEED:g} to {MAX_SPEED:g} (2 replays the trace twice "
            "as fast)"
        )
    if requests is not None and requests < 1:
        raise ConfigError(f"--trace-requests {requests}: at least one request")
    frame = _read_frame(path)
    if frame.empty:
        raise ConfigError(f"{path}: no requests in the file")
    jsonl = path.suffix.lower() in (".jsonl", ".json")
    layout, names = _layout(path, list(frame.columns))
    arrival = _arrivals(path, frame, names[layout.arrival], layout, jsonl)
    prompt = _tokens(path, frame, names[layout.prompt], jsonl)
    generate = _tokens(path, frame, names[layout.generate], jsonl)
    # in arrival order; the first `requests` of them where asked; then the failed ones (nothing generated,
    # BurstGPT's failures) left out and counted, before a prompt of no tokens is refused
    order = np.argsort(arrival, kind="stable")[:requests]
    served = order[generate[order] > 0]
    if not served.size:
        raise ConfigError(f"{path}: every request has 0 {names[layout.generate]}: nothing to generate")
    empty = served[prompt[served] == 0]
    if empty.size:
        raise ConfigError(
            f"{path}: {names[layout.prompt]} 0 at {_row(frame, int(empty[0]), jsonl)}: a request needs a "
            "prompt token"
        )
    blocks = None
    if layout.blocks is not None and layout.blocks in names:
        lists = _block_lists(path, frame, names[layout.blocks], jsonl)
        blocks = ListedBlocks.from_lists(layout.block_tokens, [lists[i] for i in served], prompt[served])
    arrival, prompt, generate = arrival[served], prompt[served], generate[served]
    arrival = (arrival - arrival[0]) / speed
    dropped = int(order.size - served.size)
    return RequestTrace(arrival, prompt, generate, layout.name, str(path), dropped, blocks, speed)

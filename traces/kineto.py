"""Streaming reader of kineto (torch.profiler Chrome-trace) JSON, plain or gzipped.

The trace is tokenised by ijson's C backend (yajl2_c) chunk by chunk and events are assembled one at a
time, so memory grows with the events we keep (annotations, launches and device activities, stored as
numpy columns), never with the whole JSON text.
Times stay in the trace's own base: ``ts_ns`` is ``ts`` (µs) converted to integer ns; the wall-clock time
of an event is ``base_time_ns + ts_ns``.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import ijson
import numpy as np
import pandas as pd

from simulator.errors import TraceError

# Categories kept by the reader; everything else (cpu_op, flows, python_function...) is skipped.
ANNOTATION = "user_annotation"
GPU_ANNOTATION = "gpu_user_annotation"
DEVICE_CATEGORIES: tuple[str, ...] = ("kernel", "gpu_memcpy", "gpu_memset")
LAUNCH_CATEGORIES: tuple[str, ...] = ("cuda_runtime", "cuda_driver")
KEPT_CATEGORIES: tuple[str, ...] = (ANNOTATION, GPU_ANNOTATION, *DEVICE_CATEGORIES, *LAUNCH_CATEGORIES)

EVENT_COLUMNS: tuple[str, ...] = ("cat", "name", "pid", "tid", "ts_ns", "dur_ns", "correlation", "stream")
# input_types: the op's "Input type" list joined by "|" ("" when the trace recorded no shapes)
OP_COLUMNS: tuple[str, ...] = ("name", "pid", "tid", "ts_ns", "dur_ns", "first_dim", "input_types")

_CHUNK = 256 * 1024
_FLUSH_EVERY = 65536
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class KinetoTrace:
    """The kept events of one kineto trace as DataFrames (times in ns of the trace's own base)."""

    path: Path
    base_time_ns: int | None
    events: pd.DataFrame  # EVENT_COLUMNS; correlation / stream are -1 where absent
    ops: pd.DataFrame  # OP_COLUMNS for cpu_op events, only filled when read with with_ops=True
    device_properties: list[dict[str, Any]] = field(default_factory=list)
    n_events: int = 0  # every traceEvents item seen
    n_complete: int = 0  # of which complete ("ph": "X") events
    n_malformed: int = 0  # kernel/runtime/range events dropped: no numeric ts, or a negative duration
    truncated: bool = False

    @property
    def span_ns(self) -> tuple[int, int] | None:
        """[first start, last end) of the kept events, in the trace's ns base."""
        if self.events.empty:
            return None
        ts = self.events["ts_ns"].to_numpy()
        return int(ts.min()), int((ts + self.events["dur_ns"].to_numpy()).max())

    @property
    def device_name(self) -> str | None:
        if self.device_properties and isinstance(self.device_properties[0], dict):
            name = self.device_properties[0].get("name")
            return str(name) if name is not None else None
        return None


class TruncatedTraceError(TraceError):
    """The trace ends early; ``partial`` holds the events read before the cut, so nothing is lost."""

    def __init__(self, message: str, partial: KinetoTrace) -> None:
        super().__init__(message)
        self.partial = partial


class CutGzipError(Exception):
    """The gzip stream ends before its end-of-stream marker, or its data is corrupt."""


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as probe:
        return probe.read(2) == _GZIP_MAGIC


def _gunzip(raw: IO[bytes]) -> Iterator[bytes]:
    """Decompress with zlib, member by member: a cut file still yields every byte that can be
    decompressed (GzipFile.read would drop the last partial block together with the error).
    Output pieces are capped at _CHUNK * 4 bytes, whatever the compression ratio."""
    dec = zlib.decompressobj(wbits=31)
    for block in iter(lambda: raw.read(_CHUNK), b""):
        while block:
            if dec.eof:  # the previous member is complete; gzip allows another one to follow
                if not block.strip(b"\0"):
                    break
                dec = zlib.decompressobj(wbits=31)
            try:
                out = dec.decompress(block, _CHUNK * 4)
            except zlib.error as exc:
                raise CutGzipError(f"gzip data is corrupt ({exc})") from None
            if out:
                yield out
            block = dec.unused_data if dec.eof else dec.unconsumed_tail
    if not dec.eof:
        raise CutGzipError("gzip stream is truncated")


def byte_chunks(path: Path) -> Iterator[bytes]:
    """The (decompressed) bytes of a plain or gzipped file, recognised by its magic bytes."""
    gz = _is_gzip(path)
    with open(path, "rb") as raw:
        if gz:
            yield from _gunzip(raw)
        else:
            yield from iter(lambda: raw.read(_CHUNK), b"")


def us_to_ns(ts_us: np.ndarray) -> np.ndarray:
    """µs floats -> int64 ns. Whole µs and the fraction are converted apart so that ts of ~5e12 µs
    (3 decimals in the file) come back exact; ts * 1000 in one float would be off by up to 1 ns."""
    whole = np.floor(ts_us)
    return whole.astype(np.int64) * 1000 + np.rint((ts_us - whole) * 1000.0).astype(np.int64)


class _Columns:
    """Python lists flushed into numpy chunks every _FLUSH_EVERY rows (bounds list overhead)."""

    def __init__(self, names: tuple[str, ...], floats: tuple[str, ...]) -> None:
        self.names = names
        self.floats = set(floats)
        self.rows: dict[str, list[Any]] = {n: [] for n in names}
        self.chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}

    def flush(self) -> None:
        for n, values in self.rows.items():
            if values:
                dtype = np.float64 if n in self.floats else np.int64
                self.chunks[n].append(np.asarray(values, dtype=dtype))
                values.clear()

    def arrays(self) -> dict[str, np.ndarray]:
        self.flush()
        out = {}
        for n in self.names:
            dtype = np.float64 if n in self.floats else np.int64
            parts = self.chunks[n]
            out[n] = np.concatenate(parts) if parts else np.empty(0, dtype=dtype)
        return out


class _Interner:
    """Maps strings (names, categories, non-integer pids) to small integer codes."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.values: list[str] = []

    def __call__(self, value: Any) -> int:
        key = value if isinstance(value, str) else str(value)
        code = self.codes.get(key)
        if code is None:
            code = self.codes[key] = len(self.values)
            self.values.append(key)
        return code

    def categorical(self, codes: np.ndarray) -> pd.Categorical:
        return pd.Categorical.from_codes(codes, categories=pd.Index(self.values, dtype=object))


class _Collector:
    """Receives traceEvents items one by one and keeps the ones we need as columns."""

    def __init__(self, with_ops: bool) -> None:
        self.with_ops = with_ops
        self.keep = set(KEPT_CATEGORIES)
        self.names = _Interner()
        self.cats = _Interner()
        self.pid_names = _Interner()  # non-integer pids/tids get negative ids: -(code + 1)
        self.ev = _Columns(("cat", "name", "pid", "tid", "ts", "dur", "correlation", "stream"), ("ts", "dur"))
        self.op = _Columns(("name", "pid", "tid", "ts", "dur", "first_dim", "types"), ("ts", "dur"))
        self.types = _Interner()
        self.n_events = 0
        self.n_complete = 0
        self.n_kept = 0
        self.n_malformed = 0

    def _id(self, value: Any) -> int:
        if isinstance(value, int):
            return value
        return -(self.pid_names(value) + 1)

    def add(self, e: dict[str, Any]) -> None:
        """One flat event record from _TokenWalker: top-level fields plus correlation, stream, @dim."""
        self.n_events += 1
        if e.get("ph") != "X":
            return
        self.n_complete += 1
        cat = e.get("cat")
        ts = e.get("ts")
        dur = e.get("dur")
        if not isinstance(ts, (int, float)) or (isinstance(dur, (int, float)) and dur < 0):
            if cat in self.keep:  # a kept kind of event that cannot be placed in time: counted, not kept
                self.n_malformed += 1
            return
        if cat in self.keep:
            rows = self.ev.rows
            rows["cat"].append(self.cats(cat))
            rows["name"].append(self.names(e.get("name", "")))
            rows["pid"].append(self._id(e.get("pid", 0)))
            rows["tid"].append(self._id(e.get("tid", 0)))
            rows["ts"].append(ts)
            dur = e.get("dur")
            rows["dur"].append(dur if isinstance(dur, (int, float)) else 0.0)
            corr = e.get("correlation", -1)
            rows["correlation"].append(corr if isinstance(corr, int) else -1)
            stream = e.get("stream", -1)
            rows["stream"].append(stream if isinstance(stream, int) else -1)
            self.n_kept += 1
            if self.n_kept % _FLUSH_EVERY == 0:
                self.ev.flush()
        elif self.with_ops and cat == "cpu_op":
            rows = self.op.rows
            rows["name"].append(self.names(e.get("name", "")))
            rows["pid"].append(self._id(e.get("pid", 0)))
            rows["tid"].append(self._id(e.get("tid", 0)))
            rows["ts"].append(ts)
            dur = e.get("dur")
            rows["dur"].append(dur if isinstance(dur, (int, float)) else 0.0)
            dim = e.get("@dim", -1)
            rows["first_dim"].append(dim if isinstance(dim, int) else -1)
            rows["types"].append(self.types("|".join(e.get("@types", ()))))
            if len(rows["ts"]) >= _FLUSH_EVERY:
                self.op.flush()

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        a = self.ev.arrays()
        events = pd.DataFrame(
            {
                "cat": self.cats.categorical(a["cat"]),
                "name": self.names.categorical(a["name"]),
                "pid": a["pid"],
                "tid": a["tid"],
                "ts_ns": us_to_ns(a["ts"]),
                "dur_ns": np.rint(a["dur"] * 1000.0).astype(np.int64),
                "correlation": a["correlation"],
                "stream": a["stream"],
            }
        )
        o = self.op.arrays()
        ops = pd.DataFrame(
            {
                "name": self.names.categorical(o["name"]),
                "pid": o["pid"],
                "tid": o["tid"],
                "ts_ns": us_to_ns(o["ts"]),
                "dur_ns": np.rint(o["dur"] * 1000.0).astype(np.int64),
                "first_dim": o["first_dim"],
                "input_types": self.types.categorical(o["types"]),
            }
        )
        return events, ops


class _TokenWalker:
    """Turns ijson's basic_parse tokens into flat event records for _Collector.

    Why not ijson.items("traceEvents.item"): it builds a JSON-path prefix string for every token, which
    costs as much as the parse itself and builds all of each event's args; a depth counter does neither.
    Depths: 1 top-level object, 2 traceEvents array, 3 an event, 4 its args, 5 the Input type list and
    the Input Dims list, 6 one input's dims.
    """

    def __init__(self, col: _Collector) -> None:
        self.col = col
        self.depth = 0
        self.top_key: str | None = None
        self.in_events = False
        self.ekey: str | None = None
        self.akey: str | None = None
        self.cur: dict[str, Any] | None = None
        self.base: Any = None
        self.props: Any = None
        self.builder: ijson.ObjectBuilder | None = None

    def feed(self, tokens: list[tuple[str, Any]]) -> None:
        depth, top_key, in_events = self.depth, self.top_key, self.in_events
        ekey, akey, cur, builder = self.ekey, self.akey, self.cur, self.builder
        add = self.col.add
        with_types = self.col.with_ops  # op input types are kept only with the ops
        for ev, val in tokens:
            if builder is not None:  # inside deviceProperties: let ijson build the small value
                builder.event(ev, val)
                if ev in ("start_map", "start_array"):
                    depth += 1
                elif ev in ("end_map", "end_array"):
                    depth -= 1
                    if depth == 1:
                        self.props, builder = builder.value, None
            elif ev == "map_key":
                if depth == 3:
                    ekey = val
                elif depth == 4:
                    akey = val
                elif depth == 1:
                    top_key = val
            elif ev == "start_map":
                depth += 1
                if depth == 3 and in_events:
                    cur = {}
                elif depth == 4:
                    akey = None
            elif ev == "end_map":
                if depth == 3 and cur is not None:
                    add(cur)
                    cur = None
                depth -= 1
            elif ev == "start_array":
                if depth == 1:
                    in_events = top_key == "traceEvents"
                    if top_key == "deviceProperties":
                        builder = ijson.ObjectBuilder()
                        builder.event(ev, val)
                depth += 1
            elif ev == "end_array":
                depth -= 1
                if depth == 1:
                    in_events = False
            elif cur is not None:  # a scalar inside an event
                if depth == 3:
                    cur[ekey] = val  # type: ignore[index]
                elif depth == 4:
                    if ekey == "args" and (akey == "correlation" or akey == "stream"):
                        cur[akey] = val
                elif depth == 6 and akey == "Input Dims" and "@dim" not in cur:
                    cur["@dim"] = val  # first dim of the first non-empty input
                elif with_types and depth == 5 and akey == "Input type" and ekey == "args":
                    cur.setdefault("@types", []).append(val if isinstance(val, str) else "")
            elif depth == 1 and top_key == "baseTimeNanoseconds":
                self.base = val
        self.depth, self.top_key, self.in_events = depth, top_key, in_events
        self.ekey, self.akey, self.cur, self.builder = ekey, akey, cur, builder


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def read_kineto(path: Path | str, with_ops: bool = False, allow_truncated: bool = False) -> KinetoTrace:
    """Read the kept categories of a kineto trace.

    Raises TraceError (one line naming the file) for a missing file, non-JSON input, or JSON that is not
    a kineto trace; TruncatedTraceError (a TraceError carrying the partial trace) when the gzip stream or
    the JSON ends early, unless ``allow_truncated`` asks for the partial trace back with truncated=True.
    """
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"{path}: no such kineto trace file")
    col = _Collector(with_ops)
    walker = _TokenWalker(col)
    sink = ijson.sendable_list()
    coro = ijson.basic_parse_coro(sink, use_float=True)
    problem: str | None = None

    def drain() -> None:
        walker.feed(sink)
        del sink[:]

    n_bytes = 0
    try:
        for chunk in byte_chunks(path):
            n_bytes += len(chunk)
            coro.send(chunk)
            drain()
        if n_bytes == 0:
            raise TraceError(f"{path}: empty file, not a kineto trace")
        coro.close()
        drain()
    except CutGzipError as exc:
        drain()
        problem = str(exc)
    except ijson.IncompleteJSONError as exc:
        drain()
        if "premature EOF" not in str(exc):
            raise TraceError(f"{path}: not valid JSON ({_first_line(exc)})") from None
        problem = "JSON ends early"
    except ijson.JSONError as exc:
        raise TraceError(f"{path}: not valid JSON ({_first_line(exc)})") from None
    except OSError as exc:
        raise TraceError(f"{path}: cannot read ({exc})") from None

    base = walker.base
    props = walker.props
    events, ops = col.frames()
    trace = KinetoTrace(
        path=path,
        base_time_ns=int(base) if isinstance(base, (int, float)) else None,
        events=events,
        ops=ops,
        device_properties=props if isinstance(props, list) else [],
        n_events=col.n_events,
        n_complete=col.n_complete,
        n_malformed=col.n_malformed,
        truncated=problem is not None,
    )
    if problem is not None:
        if col.n_events == 0:
            raise TruncatedTraceError(f"{path}: {problem} before any event was read", trace)
        if not allow_truncated:
            raise TruncatedTraceError(
                f"{path}: {problem} after {col.n_events} events were read "
                f"({col.n_complete} complete, {len(events)} kept); re-record or re-copy the file",
                trace,
            )
        return trace
    if col.n_complete == 0:
        what = (
            "no traceEvents" if col.n_events == 0 else f"{col.n_events} traceEvents but none complete (ph X)"
        )
        raise TraceError(f"{path}: not a kineto trace ({what})")
    return trace


# ---------------------------------------------------------------------------------------------------
# Writing a copy of a trace with extra events (NVML counters) injected, streaming.


class _TopLevelKeyFinder:
    """Finds the byte offset just after the '[' that opens a given top-level key's array.

    A tiny JSON scanner (strings, escapes, depth) run only over the bytes before that key, which in
    kineto files is a small header; the rest of the file is copied without being looked at.
    """

    def __init__(self, key: str) -> None:
        self.key = key.encode()
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.current = bytearray()
        self.last_string: bytes | None = None
        self.after_colon_key: bytes | None = None

    def scan(self, data: bytes, start: int) -> int | None:
        """Returns the index in ``data`` right after the array's '[', or None if not in this data."""
        i = start
        n = len(data)
        while i < n:
            c = data[i]
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif c == 0x5C:  # backslash
                    self.escape = True
                elif c == 0x22:  # closing quote
                    self.in_string = False
                    self.last_string = bytes(self.current) if self.depth == 1 else None
                else:
                    if self.depth == 1:
                        self.current.append(c)
            elif c == 0x22:
                self.in_string = True
                self.current.clear()
                self.after_colon_key = None
            elif c == 0x3A:  # ':' after a key at depth 1
                self.after_colon_key = self.last_string if self.depth == 1 else None
            elif c in (0x20, 0x0A, 0x0D, 0x09):
                pass
            else:
                if c == 0x5B and self.depth == 1 and self.after_colon_key == self.key:
                    return i + 1
                self.after_colon_key = None
                if c in (0x7B, 0x5B):  # { [
                    self.depth += 1
                elif c in (0x7D, 0x5D):
                    self.depth -= 1
            i += 1
        return None


def _copy_with_insert(
    chunks: Iterator[bytes], out: IO[bytes], finder: _TopLevelKeyFinder, text: bytes
) -> bool:
    """Stream ``chunks`` to ``out``, writing ``text`` right after the array's '['. True if it was found."""
    found = False
    pending: bytes | None = None  # bytes after '[' held until we know whether the array is empty
    for chunk in chunks:
        if pending is not None:
            pending += chunk
        elif found:
            out.write(chunk)
            continue
        else:
            at = finder.scan(chunk, 0)
            if at is None:
                out.write(chunk)
                continue
            found = True
            out.write(chunk[:at])
            out.write(text)
            pending = chunk[at:]
            if not text:
                out.write(pending)
                pending = None
                continue
        stripped = pending.lstrip()
        if stripped:
            # a comma joins our events to the original ones, unless the array was empty
            out.write(b"" if stripped[:1] == b"]" else b",")
            out.write(pending)
            pending = None
    if pending is not None:
        out.write(pending)
    return found


def inject_events(src: Path, dst: Path, extra_events: list[dict[str, Any]], key: str = "traceEvents") -> int:
    """Copy ``src`` (plain or gzipped JSON) to ``dst`` (gzipped), with ``extra_events`` inserted at
    the start of the top-level ``key`` array; the rest of the file is streamed through unchanged.

    Returns the number of events inserted. The gzip header carries no timestamp (reproducible).
    """
    text = ",".join(json.dumps(e, separators=(",", ":")) for e in extra_events).encode()
    try:
        with (
            open(dst, "wb") as raw_out,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw_out, mtime=0) as out,
        ):
            found = _copy_with_insert(byte_chunks(src), out, _TopLevelKeyFinder(key), text)
    except (CutGzipError, OSError) as exc:
        raise TraceError(f"{src}: cannot copy trace ({exc})") from None
    if not found:
        raise TraceError(f"{src}: no top-level '{key}' array to inject events into")
    return len(extra_events)


def write_gzip_copy(src: Path, dst: Path) -> None:
    """Copy plain or gzipped data to a gzipped file, streaming (no timestamp in the gzip header)."""
    try:
        with (
            open(dst, "wb") as raw_out,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw_out, mtime=0) as out,
        ):
            for chunk in byte_chunks(src):
                out.write(chunk)
    except (CutGzipError, OSError) as exc:
        raise TraceError(f"{src}: cannot copy trace ({exc})") from None

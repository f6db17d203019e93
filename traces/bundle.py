"""The trace bundle: a versioned directory of bundle.json, parquet tables and raw traces.

Writers build the whole bundle in a hidden sibling directory and swap it into place, so a reader sees
either the old bundle or the new one, never a half-written one (the profiler rewrites its bundle after
every batch size with partial=True).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from simulator.errors import TraceError
from traces.kineto import write_gzip_copy

BUNDLE_FORMAT = "memtraffic-bundle"
BUNDLE_VERSION = 1
META_FILE = "bundle.json"
RAW_DIR = "raw"
KNOWN_TABLES: tuple[str, ...] = ("kernels", "layers", "runs", "nvml", "routing", "ncu", "opcount")
MEASURED_KEYS: tuple[str, ...] = ("kernels", "nvml", "gpm", "ncu", "routing", "opcount")
_TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_RAW_NAME = re.compile(r"^[\w.+-]+$")
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class Bundle:
    """A bundle on disk: its meta (bundle.json) and lazily loaded tables."""

    path: Path
    meta: dict[str, Any]
    table_files: dict[str, Path] = field(default_factory=dict)
    _cache: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    @property
    def tables(self) -> list[str]:
        return sorted(self.table_files)

    def table(self, name: str) -> pd.DataFrame | None:
        """The named table, or None if the bundle has none; TraceError if its file is corrupt or lacks
        a column its readers need (a table of another name copied over it, say)."""
        if name not in self.table_files:
            return None
        if name not in self._cache:
            f = self.table_files[name]
            try:
                df = pq.read_table(f).to_pandas()
            except (pa.ArrowException, OSError) as exc:
                raise TraceError(f"{f}: corrupt parquet table ({_one_line(exc)})") from None
            lacking = [c for c in REQUIRED_COLUMNS.get(name, ()) if c not in df.columns]
            if lacking and len(df):
                raise TraceError(f"{f}: the {name} table lacks column(s) {', '.join(lacking)}")
            self._cache[name] = df
        return self._cache[name].copy()

    @property
    def kernels(self) -> pd.DataFrame | None:
        return self.table("kernels")

    @property
    def layers(self) -> pd.DataFrame | None:
        return self.table("layers")

    @property
    def runs(self) -> pd.DataFrame | None:
        return self.table("runs")

    @property
    def nvml(self) -> pd.DataFrame | None:
        return self.table("nvml")

    @property
    def routing(self) -> pd.DataFrame | None:
        return self.table("routing")

    @property
    def ncu(self) -> pd.DataFrame | None:
        return self.table("ncu")

    @property
    def opcount(self) -> pd.DataFrame | None:
        return self.table("opcount")

    @property
    def partial(self) -> bool:
        return bool(self.meta.get("partial", False))

    @property
    def raw_traces(self) -> list[Path]:
        """The raw/*.json.gz traces (with NVML counters injected when a timeline was imported)."""
        raw = self.path / RAW_DIR
        return sorted(raw.glob("*.json.gz")) if raw.is_dir() else []


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _now_utc() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def complete_meta(meta: dict[str, Any], tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """bundle.json content: the caller's meta over defaults; format and version always ours.

    ``measured`` flags the caller leaves out are derived from which tables are present.
    """
    runs = tables.get("runs")
    gpm = bool(
        runs is not None and "gpm_bytes_per_step" in runs.columns and runs["gpm_bytes_per_step"].notna().any()
    )
    derived = {
        "kernels": "kernels" in tables,
        "nvml": "nvml" in tables,
        "gpm": gpm,
        "ncu": "ncu" in tables,
        "routing": "routing" in tables,
        "opcount": "opcount" in tables,
    }
    out: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "created_utc": meta.get("created_utc") or _now_utc(),
        "source": meta.get("source", "profiled"),
        "partial": bool(meta.get("partial", False)),
        "model": {"name": None, "config": None, **(meta.get("model") or {})},
        "device": {"name": None, "peak_hbm_Bps": None, "peak_source": None, **(meta.get("device") or {})},
        "workload": {"phase": None, "context": None, "dtype": None, **(meta.get("workload") or {})},
        "runs": list(meta.get("runs") or []),
        "measured": {**derived, **(meta.get("measured") or {})},
        "missing": list(meta.get("missing") or []),
        "provenance": dict(meta.get("provenance") or {}),
        "extra": dict(meta.get("extra") or {}),
    }
    if out["source"] not in ("imported", "profiled"):
        raise TraceError(f"bundle source must be 'imported' or 'profiled', not {out['source']!r}")
    unknown = sorted(set(meta) - set(out))
    if unknown:
        raise TraceError(f"bundle meta has unknown key(s) {', '.join(unknown)}; put free data under 'extra'")
    return out


def _write_table(df: pd.DataFrame, dest: Path, name: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TraceError(f"bundle table {name!r} is a {type(df).__name__}, not a pandas DataFrame")
    try:
        # zstd: a third to a half of snappy's bytes on routing and kernel tables
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), dest, compression="zstd")
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise TraceError(f"cannot write bundle table {name!r} ({_one_line(exc)})") from None


def _write_raw(name: str, src: Path | bytes, raw_dir: Path) -> None:
    """raw/<name>.json.gz: gzipped files are copied, plain JSON is gzipped on the way (streaming)."""
    base = name[: -len(".gz")] if name.endswith(".gz") else name
    if not _RAW_NAME.match(base) or base in (".", ".."):
        raise TraceError(f"raw trace name {name!r} must be a plain file name")
    dest = raw_dir / f"{base}.gz"
    if isinstance(src, bytes):
        if src[:2] == _GZIP_MAGIC:
            dest.write_bytes(src)
        else:
            tmp = raw_dir / f".{base}.plain"
            tmp.write_bytes(src)
            write_gzip_copy(tmp, dest)
            tmp.unlink()
        return
    src = Path(src)
    if not src.is_file():
        raise TraceError(f"{src}: no such raw trace file")
    with open(src, "rb") as probe:
        gz = probe.read(2) == _GZIP_MAGIC
    if gz:
        shutil.copyfile(src, dest)
    else:
        write_gzip_copy(src, dest)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_bundle_dir(path: Path) -> bool:
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == BUNDLE_FORMAT


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def write_bundle(
    path: Path | str,
    meta: dict[str, Any],
    tables: dict[str, pd.DataFrame],
    raw_traces: dict[str, Path | bytes] | None = None,
) -> Path:
    """Write a bundle to ``path`` atomically, replacing a bundle already there; returns the path.

    Everything goes to a hidden sibling first; the old bundle is swapped out only once the new one is
    complete, so a failing write leaves it intact. A directory at ``path`` that is not a bundle (and not
    empty) is never replaced.
    """
    path = Path(path).absolute()
    _refuse_non_bundle(path)
    for name in tables:
        if not _TABLE_NAME.match(name):
            raise TraceError(f"bundle table name {name!r} must be lower-case letters, digits and '_'")
    full_meta = complete_meta(meta, tables)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        for name, df in tables.items():
            _write_table(df, tmp / f"{name}.parquet", name)
        if raw_traces:
            (tmp / RAW_DIR).mkdir()
            for name, src in raw_traces.items():
                _write_raw(name, src, tmp / RAW_DIR)
        try:
            text = json.dumps(full_meta, indent=1, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TraceError(f"bundle meta is not plain JSON ({_one_line(exc)})") from None
        with open(tmp / META_FILE, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)
    return path


# columns the readers of each known table rely on (reports.measured, reports.figures); others are optional
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "kernels": ("batch", "layer", "dur_ns"),
    "layers": ("batch", "layer", "kernel_time_ns"),
    "runs": ("batch",),
    "nvml": ("t_start_ns", "t_end_ns"),
    "routing": ("batch", "layer", "item", "count"),
    "ncu": ("batch", "dram_bytes_read", "dram_bytes_write"),
}


def _refuse_non_bundle(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise TraceError(f"{path}: exists and is not a directory; refusing to replace it with a bundle")
    if path.is_dir() and any(path.iterdir()) and not _is_bundle_dir(path):
        raise TraceError(f"{path}: exists and is not a memtraffic bundle; refusing to replace it")


def check_bundle_destination(path: Path | str, replace: bool = False) -> Path:
    """Refuse, before anything is measured, a bundle path `write_bundle` could not write: a file or a
    foreign folder there, or a place where no folder can be created (read-only, /proc, no permission);
    and, unless `replace`, a bundle already there (its measurements would be lost). Probed by creating
    and removing a hidden folder where the bundle's temporary copy would go."""
    path = Path(path).absolute()
    _refuse_non_bundle(path)
    if not replace and path.is_dir() and _is_bundle_dir(path):
        raise TraceError(
            f"{path}: already holds a bundle; pass --replace to overwrite it, or choose another output"
        )
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise TraceError(f"{path}: {parent} is not a folder")
    probe = parent / f".{path.name}.probe-{uuid.uuid4().hex[:12]}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise TraceError(f"{path}: cannot write a bundle under {parent} ({exc.strerror or exc})") from None
    return path


def _swap_into_place(tmp: Path, path: Path) -> None:
    if not path.exists():
        os.rename(tmp, path)
        return
    if _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old bundle
        return
    # fallback without an atomic exchange: a brief moment with no bundle at path, never a mixed one
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:12]}"
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except OSError:
        os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_bundle(path: Path | str) -> Bundle:
    """Open a bundle directory (or its bundle.json); TraceError with one line for anything wrong."""
    path = Path(path)
    if path.is_file() and path.name == META_FILE:
        path = path.parent
    if not path.exists():
        raise TraceError(f"{path}: no such bundle directory")
    if not path.is_dir():
        raise TraceError(f"{path}: not a bundle directory")
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise TraceError(f"{path}: not a memtraffic bundle (no {META_FILE})")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise TraceError(f"{meta_file}: unreadable bundle metadata ({_one_line(exc)})") from None
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise TraceError(f"{meta_file}: not a memtraffic bundle (format {fmt!r}, expected {BUNDLE_FORMAT!r})")
    version = meta.get("version")
    if version != BUNDLE_VERSION:
        if isinstance(version, int) and version < BUNDLE_VERSION:
            hint = "older than"
            fix = "re-import or re-profile it"
        elif isinstance(version, int):
            hint = "newer than"
            fix = "upgrade memtraffic"
        else:
            hint, fix = "not comparable with", "the file is damaged"
        raise TraceError(
            f"{meta_file}: bundle format version {version!r} is {hint} version {BUNDLE_VERSION} "
            f"that this memtraffic reads; {fix}"
        )
    missing = [k for k in ("runs", "measured", "device", "model") if k not in meta]
    if missing:
        raise TraceError(f"{meta_file}: bundle metadata lacks key(s) {', '.join(missing)}")
    table_files: dict[str, Path] = {}
    for f in sorted(path.glob("*.parquet")):
        try:
            pq.read_metadata(f)  # footer check: catches truncated files at open time
        except (pa.ArrowException, OSError) as exc:
            raise TraceError(f"{f}: truncated or corrupt parquet table ({_one_line(exc)})") from None
        table_files[f.stem] = f
    measured = meta.get("measured") if isinstance(meta.get("measured"), dict) else {}
    expected = [t for flag, tables in _TABLES_OF_FLAG.items() if measured.get(flag) for t in tables]
    if meta.get("runs"):
        expected.append("runs")
    lost = [t for t in expected if t not in table_files]
    if lost:
        files = ", ".join(f"{t}.parquet" for t in lost)
        raise TraceError(f"{path}: the bundle records {files} but the file(s) are gone; re-copy the bundle")
    return Bundle(path=path, meta=meta, table_files=table_files)


# the tables a bundle holds when its metadata says a thing was measured
_TABLES_OF_FLAG: dict[str, tuple[str, ...]] = {
    "kernels": ("kernels",),
    "nvml": ("nvml",),
    "ncu": ("ncu",),
    "routing": ("routing",),
    "opcount": ("opcount",),
}

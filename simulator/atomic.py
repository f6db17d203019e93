"""Atomic file writes: every file the reports write (HTML, CSV, JSON, Parquet, calibration JSON)
and the Hub config cache.

The content goes to a temp file in the destination's folder (`.NAME.XXXX.tmp`), is fsynced, then
`os.replace`d onto the destination: a reader sees the old file or the whole new one, never a part, and
a failed write leaves no temp file behind.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from simulator.errors import ConfigError

# DataFrame -> file (or buffer), per format
FRAME_WRITERS: dict[str, Callable[[pd.DataFrame, Any], None]] = {
    "csv": lambda df, dest: df.to_csv(dest, index=False),
    "json": lambda df, dest: df.to_json(dest, orient="records", indent=1, double_precision=15),
    "parquet": lambda df, dest: df.to_parquet(dest, index=False),
}


def require_folder(path: Path, label: str) -> None:
    """ConfigError "{label}: folder F does not exist" unless the folder `path` goes into exists."""
    if not path.parent.exists():
        raise ConfigError(f"{label}: folder {path.parent} does not exist")


def write_atomic(
    path: str | Path, write: Callable[[str], None], *, mode: int | None = None, label: str | None = None
) -> Path:
    """`write(tmp)` fills a temp file next to `path`, which then replaces `path`; returns the path.

    `mode`: permissions of the result (default: 0666 less the umask, as a plain `open` would give, so
    reports and tables can be shared). An OSError becomes the ConfigError "{label or path}: cannot write
    (reason)". A symlink is written through; a device, FIFO or socket (/dev/stdout, a pipe) is written
    into directly, never replaced by a regular file; a folder is refused.
    """
    path = Path(path)
    what = label or str(path)
    fd = stream_fd(path)
    if fd is not None:  # /dev/stdout and kin: the caller's own stream, maybe a pipe or a `>>` file
        return _write_to_fd(fd, write, what, path)
    if not path.name or path.is_dir():
        raise ConfigError(f"{what}: is a folder, not a file")
    try:
        target = os.stat(path)  # follows links: what a write to `path` would reach
    except FileNotFoundError:
        target = None
    except OSError as exc:  # a link loop, a dangling /proc fd, no permission
        raise _cannot_write(what, exc) from None
    if target is not None and not stat.S_ISREG(target.st_mode):
        # a device, FIFO, socket or pipe (/dev/null, /dev/stdout into `| cat`): stream into it through the
        # name given, never replace it
        try:
            write(str(path))
        except OSError as exc:
            raise _cannot_write(what, exc) from None
        return path
    if target is not None and path.is_symlink():  # written through: the link stays, its file changes
        path = Path(os.path.realpath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:  # no such folder, read-only, /proc: name the destination, not a temp file
        raise ConfigError(f"{what}: cannot write in {path.parent} ({exc.strerror or exc})") from None
    os.close(fd)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode if mode is not None else 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        raise _cannot_write(what, exc) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _cannot_write(what: str, exc: OSError) -> ConfigError:
    return ConfigError(f"{what}: cannot write ({exc.strerror or exc})")


def stream_fd(path: str | Path) -> int | None:
    """The descriptor behind /dev/stdout, /dev/stderr, /dev/fd/N or /proc/self/fd/N (our own), else None.
    Reopening such a name would truncate a `>>` file or fail on a pipe; writing to the descriptor does
    neither."""
    text = os.fspath(path)
    named = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}
    if text in named:
        return named[text]
    for prefix in ("/dev/fd/", "/proc/self/fd/", f"/proc/{os.getpid()}/fd/"):
        if text.startswith(prefix) and text[len(prefix) :].isdigit():
            return int(text[len(prefix) :])
    return None


def _write_to_fd(fd: int, write: Callable[[str], None], what: str, path: Path) -> Path:
    """`write` into a private temp file, then its bytes onto the open descriptor `fd` as they are."""
    tmp_fd, tmp = tempfile.mkstemp(prefix=".memtraffic-out.", suffix=".tmp")
    os.close(tmp_fd)
    try:
        write(tmp)
        with open(tmp, "rb") as src:
            while chunk := src.read(1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
    except OSError as exc:
        raise _cannot_write(what, exc) from None
    finally:
        os.unlink(tmp)
    return path


def _umask() -> int:
    current = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(current)
    return current


def write_text_atomic(
    path: str | Path, text: str, *, mode: int | None = None, label: str | None = None
) -> Path:
    """UTF-8 text, written atomically (see `write_atomic`)."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return write_atomic(path, write, mode=mode, label=label)


def write_frame_atomic(df: pd.DataFrame, path: str | Path, fmt: str, *, label: str | None = None) -> Path:
    """A DataFrame as csv, json (records) or parquet, without its index, written atomically."""
    writer = FRAME_WRITERS[fmt]
    return write_atomic(path, lambda tmp: writer(df, tmp), label=label)

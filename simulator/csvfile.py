"""A cheap look at a file before pandas parses it as CSV: read_csv takes minutes over a large gzipped
JSON trace given where a CSV belongs, and then fails with a parser message that names neither."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

SNIFF_BYTES = 64 * 1024


def not_csv_reason(path: Path) -> str | None:
    """Why `path` is plainly not a CSV table (JSON, binary), or None when it may be one. Gzipped files
    are looked at decompressed, as pandas would read them."""
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
        if head[:2] == b"\x1f\x8b":
            with gzip.open(path, "rb") as g:
                head = g.read(SNIFF_BYTES)
    except (OSError, EOFError, zlib.error) as exc:
        return f"unreadable ({exc})"
    if b"\x00" in head:
        return "a binary file, not CSV text"
    start = head.lstrip()[:1]
    if start in (b"{", b"["):
        return "JSON, not CSV"
    return None

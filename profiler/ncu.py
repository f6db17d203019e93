"""Optional Nsight Compute pass: DRAM bytes, L2 bytes and duration of every kernel, attributed to layers.

ncu replays each kernel inside an NVTX push/pop range and prints one CSV row per (kernel, metric). With
`--nvtx` the CSV carries the push/pop stack of each kernel in a column whose header contains
"Push/Pop_Range" (the fifth column in ncu 2025.3), e.g. `7  "<default domain>:measure:none:..."  "..."`:
thread id, then one quoted entry per open range, outermost first. The columns vary by version, so the
parser finds them by header name.

Cache mode: ncu flushes all caches before each replayed kernel by default, so reads are cold-L2 reads and
writes that fit in L2 may never show up as DRAM writes of that kernel. The result records this
(`df.attrs["cache_mode"] == "flush-all"`); compare predicted reads and writes separately.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from profiler.child import run_group
from simulator.errors import MeasurementUnavailable, TraceError

__all__ = [
    "CACHE_MODE",
    "COLUMNS",
    "DEFAULT_LAYER_REGEX",
    "DEFAULT_METRICS",
    "layer_totals",
    "ncu_available",
    "ncu_command",
    "parse_ncu_csv",
    "run_ncu",
]

DEFAULT_METRICS: tuple[str, ...] = (
    "dram__bytes_read.sum",
    "dram__bytes_write.sum",
    "gpu__time_duration.sum",
    "lts__t_bytes.sum",
)
# ncu metric -> (our column, unit family). Values are converted to bytes and nanoseconds.
_METRIC_COLUMNS: dict[str, tuple[str, str]] = {
    "dram__bytes_read.sum": ("dram_bytes_read", "bytes"),
    "dram__bytes_write.sum": ("dram_bytes_write", "bytes"),
    "gpu__time_duration.sum": ("duration_ns", "time"),
    "lts__t_bytes.sum": ("l2_bytes", "bytes"),
}
COLUMNS: tuple[str, ...] = (
    "kernel_id",
    "kernel",
    "nvtx_stack",
    "layer",
    "dram_bytes_read",
    "dram_bytes_write",
    "duration_ns",
    "l2_bytes",
)
CACHE_MODE = "flush-all"  # ncu's default --cache-control all
DEFAULT_LAYER_REGEX = r"^block\d+\.[A-Za-z_]\w*$"  # block3.moe, block0.attn, block12.memory

# ncu's unit names (decimal prefixes) -> factor to bytes / nanoseconds.
_UNITS: dict[str, dict[str, float]] = {
    "bytes": {
        "byte": 1,
        "b": 1,
        "kbyte": 1e3,
        "kb": 1e3,
        "mbyte": 1e6,
        "mb": 1e6,
        "gbyte": 1e9,
        "gb": 1e9,
        "tbyte": 1e12,
        "tb": 1e12,
    },
    "time": {
        "nsecond": 1,
        "ns": 1,
        "usecond": 1e3,
        "us": 1e3,
        "msecond": 1e6,
        "ms": 1e6,
        "second": 1e9,
        "s": 1e9,
    },
}
_REQUIRED = ("ID", "Kernel Name", "Metric Name", "Metric Unit", "Metric Value")
_HEADER_START = '"ID",'
_PERMISSION_MARK = "ERR_NVGPUCTRPERM"


# ----------------------------------------------------------------------------------------- the command
def ncu_available(ncu: str = "ncu") -> tuple[bool, str]:
    """(usable, one-line reason or version): ncu on PATH and answering --version."""
    path = shutil.which(ncu)
    if path is None:
        return False, f"{ncu} (Nsight Compute CLI) not found on PATH"
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{path} --version failed: {exc}".replace("\n", " ")
    lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    if proc.returncode != 0:
        return False, f"{path} --version exited {proc.returncode}: {lines[-1] if lines else 'no output'}"
    return True, f"{path}: {lines[-1] if lines else 'version unknown'}"


def ncu_command(
    python_argv: Sequence[str],
    nvtx_include: str,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    log_file: str | os.PathLike[str],
    ncu: str = "ncu",
) -> list[str]:
    """The ncu command line that profiles `python_argv` (the full argv, interpreter first).

    Only kernels inside the push/pop NVTX range `nvtx_include` are profiled: the trailing "/" that
    selects push/pop ranges is added when missing. Clocks are left alone (`--clock-control none`) so the
    kernels run as they do unprofiled.
    """
    if not python_argv:
        raise ValueError("python_argv is empty")
    include = nvtx_include if nvtx_include.endswith("/") else nvtx_include + "/"
    return [
        ncu,
        "--nvtx",
        "--nvtx-include",
        include,
        "--metrics",
        ",".join(metrics),
        "--csv",
        "--print-units",
        "base",
        "--clock-control",
        "none",
        "--log-file",
        os.fspath(log_file),
        *python_argv,
    ]


def run_ncu(
    python_argv: Sequence[str],
    nvtx_include: str,
    *,
    log_file: str | os.PathLike[str],
    metrics: Sequence[str] = DEFAULT_METRICS,
    layer_regex: str = DEFAULT_LAYER_REGEX,
    ncu: str = "ncu",
    timeout_s: float | None = None,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Run the program under ncu and parse its CSV.

    Raises MeasurementUnavailable when ncu is missing or has no counter permission (ERR_NVGPUCTRPERM), and
    TraceError when ncu fails or writes no usable CSV.
    """
    ok, reason = ncu_available(ncu)
    if not ok:
        raise MeasurementUnavailable(reason)
    log = Path(log_file)
    with contextlib.suppress(FileNotFoundError):
        log.unlink()  # never parse a previous run's CSV
    cmd = ncu_command(python_argv, nvtx_include, metrics, log_file=log, ncu=ncu)
    try:
        proc = run_group(cmd, timeout_s, capture_output=True, text=True, env=env, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise TraceError(f"ncu did not finish within {timeout_s} s: {' '.join(cmd)}") from None
    logged = log.read_text(errors="replace") if log.exists() else ""
    output = "\n".join((proc.stdout, proc.stderr, logged))
    if _PERMISSION_MARK in output:
        raise MeasurementUnavailable(
            "ncu: no permission for GPU performance counters (ERR_NVGPUCTRPERM): run as root or set "
            "NVreg_RestrictProfilingToAdminUsers=0"
        )
    if proc.returncode != 0 or not logged:
        raise TraceError(
            f"ncu exited {proc.returncode} and wrote {'no' if not logged else 'a'} CSV: "
            f"{_last_message(output)}"
        )
    df = parse_ncu_csv(log, layer_regex=layer_regex)
    df.attrs["command"] = cmd
    df.attrs["ncu"] = reason
    return df


def _last_message(text: str) -> str:
    """The most telling line of ncu's output: the last ==ERROR==, else the last non-empty line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("==ERROR==")]
    return (errors or lines or ["no output"])[-1]


# ----------------------------------------------------------------------------------------- parsing
def _nvtx_ranges(cell: str, fields: list[str]) -> list[str]:
    """Range names of one push/pop stack cell, outermost first.

    `fields` is the entry layout from the column header ("thread Domain:Push/Pop_Range:PL_Type:...") ->
    [Domain, Push/Pop_Range, ...]. `7  "<default domain>:measure:none:..."  "<default domain>:block3.moe:..."`
    -> [measure, block3.moe]. Cells without quoted entries (other ncu versions) fall back to ':' / '/'
    separated names after the thread id.
    """
    entries = re.findall(r'"([^"]*)"', cell)
    if entries:
        at = fields.index("Push/Pop_Range") if "Push/Pop_Range" in fields else min(1, len(fields) - 1)
        names = []
        for entry in entries:
            parts = entry.split(":")
            if len(parts) <= at:
                names.append(parts[0])
                continue
            extra = max(0, len(parts) - len(fields))  # a range name with ':' in it spans several parts
            names.append(":".join(parts[at : at + 1 + extra]))
        return [n for n in names if n]
    body = re.sub(r"^\s*\d+[\s:]+", "", cell.strip())  # drop the thread id
    return [n for n in re.split(r"[:/\s]+", body) if n and n.lower() != "none"]


def _number(text: str, unit: str, family: str, where: str) -> float:
    text = text.strip().replace(",", "")  # ncu prints thousands separators: "1,048,576"
    if text in ("", "n/a", "N/A"):
        return float("nan")
    factors = _UNITS[family]
    factor = factors.get(unit.strip().lower())
    if factor is None:
        raise TraceError(f"{where}: unknown {family} unit {unit!r}")
    try:
        return float(text) * factor
    except ValueError:
        raise TraceError(f"{where}: metric value {text!r} is not a number") from None


def parse_ncu_csv(
    path: str | os.PathLike[str], layer_regex: str = DEFAULT_LAYER_REGEX, cache_mode: str = CACHE_MODE
) -> pd.DataFrame:
    """One row per kernel: `COLUMNS`, bytes in bytes and durations in ns; `attrs["cache_mode"]` set.

    `layer` is the innermost NVTX range matching `layer_regex` ("" when none). Raises TraceError (one line)
    when the header or a required column is missing, or the file is truncated.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise TraceError(f"{path}: cannot read ncu CSV: {exc.strerror}") from None
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.startswith(_HEADER_START)), None)
    if start is None:
        raise TraceError(
            f"{path}: no ncu CSV header (line starting {_HEADER_START!r}); ncu said: {_last_message(text)}"
        )
    if not text.endswith("\n"):
        raise TraceError(f"{path}: truncated ncu CSV (no newline at the end of the last row)")
    body = [ln for ln in lines[start:] if ln.strip() and not ln.startswith("==")]  # ==PROF== / ==WARNING==
    rows = list(csv.reader(body))
    header = rows[0]
    missing = [h for h in _REQUIRED if h not in header]
    if missing:
        raise TraceError(f"{path}: ncu CSV lacks column(s) {', '.join(repr(m) for m in missing)}")
    col = {name: i for i, name in enumerate(header)}
    nvtx_col = next((i for i, h in enumerate(header) if "Push/Pop_Range" in h), None)
    nvtx_fields = header[nvtx_col].split(" ", 1)[-1].split(":") if nvtx_col is not None else []
    pid_col = col.get("Process ID")
    layer_re = re.compile(layer_regex)

    kernels: dict[tuple[str, str], dict[str, object]] = {}
    metric_sets: dict[tuple[str, str], set[str]] = {}
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise TraceError(
                f"{path}: truncated or malformed ncu CSV: row {n} has {len(row)} fields, "
                f"the header {len(header)}"
            )
        key = (row[pid_col] if pid_col is not None else "", row[col["ID"]])
        kernel = kernels.get(key)
        if kernel is None:
            ranges = _nvtx_ranges(row[nvtx_col], nvtx_fields) if nvtx_col is not None else []
            layer = next((r for r in reversed(ranges) if layer_re.search(r)), "")
            try:
                kernel_id = int(row[col["ID"]].replace(",", ""))
            except ValueError:
                raise TraceError(f"{path}: row {n}: kernel ID {row[col['ID']]!r} is not an integer") from None
            kernel = {
                "kernel_id": kernel_id,
                "kernel": row[col["Kernel Name"]],
                "nvtx_stack": "/".join(ranges),
                "layer": layer,
            }
            kernel.update({c: float("nan") for c, _ in _METRIC_COLUMNS.values()})
            kernels[key] = kernel
            metric_sets[key] = set()
        metric = row[col["Metric Name"]]
        metric_sets[key].add(metric)
        target = _METRIC_COLUMNS.get(metric)
        if target is not None:
            column, family = target
            kernel[column] = _number(
                row[col["Metric Value"]], row[col["Metric Unit"]], family, f"{path}: row {n} ({metric})"
            )
    every = set().union(*metric_sets.values()) if metric_sets else set()
    short = [key for key, seen in metric_sets.items() if seen != every]
    if short:
        key = short[-1]
        raise TraceError(
            f"{path}: truncated ncu CSV: kernel ID {key[1]} has {len(metric_sets[key])} of "
            f"{len(every)} metrics"
        )
    df = pd.DataFrame(list(kernels.values()), columns=list(COLUMNS))
    df["kernel_id"] = df["kernel_id"].astype("int64")
    df.attrs["cache_mode"] = cache_mode
    df.attrs["source"] = str(path)
    return df


def layer_totals(df: pd.DataFrame) -> pd.DataFrame:
    """Per layer (first-seen order; "" = outside any layer range): kernels and summed bytes / time."""
    metrics = [c for c, _ in _METRIC_COLUMNS.values()]
    out = (
        df.groupby("layer", sort=False)
        .agg(kernels=("kernel_id", "size"), **{c: (c, "sum") for c in metrics})
        .reset_index()
    )
    out["dram_bytes"] = out["dram_bytes_read"] + out["dram_bytes_write"]
    out.attrs = dict(df.attrs)
    return out

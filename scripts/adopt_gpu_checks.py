"""Turn what scripts/gpu_checks.sh brought back from a lent GPU into committed sample data.

    python scripts/adopt_gpu_checks.py FILES_AT [FILES_AT ...] [--dest traces/samples/h100-profiled]

Each FILES_AT is a folder the device tool copied $OUT into (gpu-checks.tar.gz, or its .partNN pieces),
one per device call, in the order they ran. The profiled bundles (moe-bundle, umv2-bundle, graphs-*,
zoo*) are read back (a bundle that does not read is refused with one line, exit 2) and written to
DEST/{moe,umv2,graphs-*,zoo*}:
- their runs' NVML columns are recomputed from their own NVML table by this checkout's estimator
  (traces.timeline.run_measurements), so bundles profiled before an estimator change agree with later ones;
- their raw kineto traces keep every event but the CPU-side aten ops (`cpu_op`), which are two thirds of
  the bytes and which nothing here reads from a profiled bundle (`--keep-cpu-ops` keeps them), and get
  the steady loops' NVML samples as counter tracks where they lack them (profiles made before `profile`
  added them).
Each call's check results (device facts, parity, GPM calibration and its timeline, NVML overhead, stage
summary) go to DEST/checks/runN/, and DEST/README.md records how all of it was made: the commands, this
checkout's commit and the device each call reported.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulator.errors import MemtrafficError  # noqa: E402
from traces.bundle import Bundle, read_bundle, write_bundle  # noqa: E402
from traces.counters import add_counter_tracks  # noqa: E402
from traces.timeline import RUN_MEASUREMENT_COLUMNS, run_measurements  # noqa: E402

BUNDLES = {
    "moe-bundle": "moe",
    "umv2-bundle": "umv2",
    "graphs-umv2-bundle": "graphs-umv2",
    "graphs-moe-bundle": "graphs-moe",
    "zoo-bundle": "zoo",
    "zoo_prefill-bundle": "zoo-prefill",
    "zoo_b16-bundle": "zoo-b16",
    "graphs8-umv2-bundle": "graphs8-umv2",
}
CHECK_FILES = (
    "summary.json",
    "device.json",
    "parity.json",
    "gpm_calibration.json",
    "gpm_calibration_timeline.csv",
    "nvml_overhead.txt",
    *(f"{name.removesuffix('-bundle')}-summary.txt" for name in BUNDLES),
)
COMMANDS = """\
bash scripts/gpu_wheels.sh                          # on the CPU machine: .whl/ for the GPU image
device run: command "bash scripts/gpu_checks.sh [--stages ...]", carry [".whl"], timeout_s 600
python scripts/adopt_gpu_checks.py FILES_AT [FILES_AT ...] --dest {dest}"""


class AdoptError(MemtrafficError):
    """What was brought back cannot be adopted (named in one line)."""


def archive_bytes(files_at: Path) -> bytes:
    """The archive, rejoined from its parts when the device tool brought it back split."""
    whole = files_at / "gpu-checks.tar.gz"
    if whole.is_file():
        return whole.read_bytes()
    parts = sorted(files_at.glob("gpu-checks.tar.gz.part*"))
    if not parts:
        raise AdoptError(f"{files_at}: no gpu-checks.tar.gz (or .partNN pieces) in it")
    return b"".join(p.read_bytes() for p in parts)


def extract(data: bytes, into: Path) -> Path:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise AdoptError(f"gpu-checks archive is unreadable ({exc}): a part missing or cut off?") from None
    work = into / "gpu-checks"
    if not work.is_dir():
        raise AdoptError("gpu-checks archive holds no gpu-checks/ folder")
    return work


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
        ).stdout
    except OSError:
        return "unknown (no git)"
    return head.strip() + (" (with uncommitted changes)" if dirty.strip() else "")


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def slim_trace(gz: bytes) -> bytes:
    """A gzipped kineto trace without its `cpu_op` events (every other event kept as it was)."""
    trace = json.loads(gzip.decompress(gz))
    trace["traceEvents"] = [e for e in trace.get("traceEvents", []) if e.get("cat") != "cpu_op"]
    return gzip.compress(json.dumps(trace, separators=(",", ":")).encode(), compresslevel=9, mtime=0)


def _with_counters(name: str, gz: bytes, nvml: pd.DataFrame, peak: float | None, until_ns: int) -> bytes:
    """The trace with the NVML rows from its first event to `until_ns` as counter tracks, unless it
    has them already (profiles made since they are added at profile time, imported bundles)."""
    if any(e.get("ph") == "C" for e in json.loads(gzip.decompress(gz)).get("traceEvents", [])):
        return gz
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / name, Path(tmp) / f"counters-{name}"
        src.write_bytes(gz)
        add_counter_tracks(src, dst, nvml, peak, until_ns)
        return dst.read_bytes()


def rewrite_bundle(src: Bundle, target: Path, keep_cpu_ops: bool) -> None:
    """`src` written to `target` (atomically) with its runs' NVML columns recomputed, the steady loops'
    NVML samples as counter tracks of its raw traces, and those slimmed unless `keep_cpu_ops`."""
    tables = {name: src.table(name) for name in src.tables}
    runs, nvml = tables.get("runs"), tables.get("nvml")
    peak = src.meta["device"].get("peak_hbm_Bps")
    raw = {p.name: p.read_bytes() for p in src.raw_traces}
    if not keep_cpu_ops:
        raw = {name: slim_trace(data) for name, data in raw.items()}
    if runs is not None and nvml is not None and not nvml.empty:
        fresh = [
            run_measurements(nvml, int(r.steady_start_ns), int(r.steady_end_ns), int(r.steps), peak)
            for r in runs.itertuples()
        ]
        for col in RUN_MEASUREMENT_COLUMNS:
            runs[col] = [f[col] for f in fresh]
        for run in src.meta["runs"]:
            name = Path(run.get("kineto") or "").name
            if name in raw:
                raw[name] = _with_counters(name, raw[name], nvml, peak, int(run["steady_end_ns"]))
    meta = {k: v for k, v in src.meta.items() if k not in ("format", "version")}
    meta["extra"] = {
        **meta.get("extra", {}),
        "adopted": "runs' NVML columns recomputed by traces.timeline.run_measurements; NVML counter tracks"
        + (" in raw/" if keep_cpu_ops else " in raw/, its cpu_op events dropped"),
    }
    write_bundle(target, meta, tables, {name.removesuffix(".gz"): data for name, data in raw.items()})


def adopt(calls: list[Path], dest: Path, keep_cpu_ops: bool = False) -> list[str]:
    """Write the bundles and check results of each device call (in order) into `dest`; returns the
    README's lines."""
    lines = ["# Profiled on a lent GPU by scripts/gpu_checks.sh", "", "Made with:", "```"]
    shown = dest.resolve().relative_to(ROOT) if dest.resolve().is_relative_to(ROOT) else dest
    lines += [*COMMANDS.format(dest=shown).splitlines(), "```", "", f"Adopted at checkout: {_commit()}"]
    with tempfile.TemporaryDirectory() as tmp:
        works = [extract(archive_bytes(at), Path(tmp) / f"run{i}") for i, at in enumerate(calls, 1)]
        found = {name: work / name for work in works for name in BUNDLES if (work / name).is_dir()}
        if not found:
            raise AdoptError(f"no profiled bundle in the archive (looked for {', '.join(BUNDLES)})")
        bundles = {name: read_bundle(path) for name, path in found.items()}  # refuse before writing
        dest.mkdir(parents=True, exist_ok=True)
        for i, work in enumerate(works, 1):
            lines += ["", f"## Call {i}"]
            device_file = work / "device.json"
            if device_file.is_file():
                device = json.loads(device_file.read_text())
                got = {k: device.get(k, "?") for k in ("name", "torch", "cuda")}
                lines.append(f"Device: {got['name']}, torch {got['torch']}, CUDA {got['cuda']}")
            for name in (n for n, path in found.items() if path.parent == work):
                b, target = bundles[name], dest / BUNDLES[name]
                rewrite_bundle(b, target, keep_cpu_ops)
                runs = b.meta.get("runs", [])
                lines.append(
                    f"- `{BUNDLES[name]}/`: {b.meta['model']['name']} ({b.meta['workload']['phase']}), "
                    f"batches {[r['batch'] for r in runs]}, partial={b.partial}, "
                    f"{_size(target) / 1e6:.1f} MB; not measured: "
                    f"{'; '.join(b.meta.get('missing', [])) or 'nothing'}"
                )
            checks = dest / "checks" / f"run{i}"
            checks.mkdir(parents=True, exist_ok=True)
            for f in CHECK_FILES:
                if (work / f).is_file():
                    shutil.copy2(work / f, checks / f)
            summary_file = work / "summary.json"
            if summary_file.is_file():
                summary = json.loads(summary_file.read_text())
                stages = summary.get("stages", {})
                lines += [f"Started {summary.get('started_utc', '?')}; check results in `checks/run{i}/`."]
                lines += ["", "| stage | rc | seconds |", "| --- | --- | --- |"]
                lines += [f"| {n} | {s.get('rc')} | {s.get('seconds')} |" for n, s in stages.items()]
    readme = dest / "README.md"
    tmp_readme = readme.with_suffix(".md.tmp")
    tmp_readme.write_text("\n".join(lines) + "\n")
    tmp_readme.replace(readme)
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "files_at",
        type=Path,
        nargs="+",
        help="folders holding gpu-checks.tar.gz (or its parts), in run order",
    )
    p.add_argument("--dest", type=Path, default=ROOT / "traces" / "samples" / "h100-profiled")
    p.add_argument("--keep-cpu-ops", action="store_true", help="keep the cpu_op events of the raw traces")
    a = p.parse_args(argv)
    try:
        lines = adopt(a.files_at, a.dest, a.keep_cpu_ops)
    except MemtrafficError as exc:
        print(f"adopt_gpu_checks: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    total = _size(a.dest)
    print(
        f"\n{a.dest}: {total / 1e6:.1f} MB in all" + (" (over the few MB to commit)" if total > 8e6 else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Turn what scripts/gpu_checks.sh brought back from a lent GPU into committed sample data.

    python scripts/adopt_gpu_checks.py FILES_AT [--dest traces/samples/h100-profiled]

FILES_AT is the folder the device tool copied $OUT into (gpu-checks.tar.gz, or its .partNN pieces). The
profiled bundles (moe-bundle, umv2-bundle, graphs-*-bundle) are read back (a bundle that does not read
is refused with one line, exit 2), copied to DEST/{moe,umv2,graphs-*}, the check results (device
facts, parity, GPM calibration, NVML overhead, stage summary) to DEST/checks/, and DEST/README.md
records how they were made: the commands, this checkout's commit and the device the run reported.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulator.errors import MemtrafficError  # noqa: E402
from traces.bundle import read_bundle  # noqa: E402

BUNDLES = {
    "moe-bundle": "moe",
    "umv2-bundle": "umv2",
    "graphs-umv2-bundle": "graphs-umv2",
    "graphs-moe-bundle": "graphs-moe",
}
CHECK_FILES = (
    "summary.json",
    "device.json",
    "parity.json",
    "gpm_calibration.json",
    "nvml_overhead.txt",
    "moe-summary.txt",
    "umv2-summary.txt",
    "graphs-umv2-summary.txt",
    "graphs-moe-summary.txt",
)
COMMANDS = """\
bash scripts/gpu_wheels.sh                          # on the CPU machine: .whl/ for the GPU image
device run: command "bash scripts/gpu_checks.sh", carry [".whl"], timeout_s 600
python scripts/adopt_gpu_checks.py FILES_AT --dest {dest}"""


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


def adopt(files_at: Path, dest: Path) -> list[str]:
    """Copy the bundles and check results into `dest`; returns the README's lines."""
    with tempfile.TemporaryDirectory() as tmp:
        work = extract(archive_bytes(files_at), Path(tmp))
        found = {name: work / name for name in BUNDLES if (work / name).is_dir()}
        if not found:
            raise AdoptError(f"no profiled bundle in the archive (looked for {', '.join(BUNDLES)})")
        bundles = {name: read_bundle(path) for name, path in found.items()}  # refuse before copying
        dest.mkdir(parents=True, exist_ok=True)
        lines = ["# Profiled on a lent GPU by scripts/gpu_checks.sh", "", "Made with:", "```"]
        lines += [*COMMANDS.format(dest=dest).splitlines(), "```", "", f"Checkout: {_commit()}", ""]
        device_file = work / "device.json"
        if device_file.is_file():
            device = json.loads(device_file.read_text())
            got = {k: device.get(k, "?") for k in ("name", "torch", "cuda")}
            lines.append(f"Device: {got['name']}, torch {got['torch']}, CUDA {got['cuda']}")
        for name, b in bundles.items():
            target = dest / BUNDLES[name]
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(found[name], target)
            runs = b.meta.get("runs", [])
            lines.append(
                f"- `{BUNDLES[name]}/`: {b.meta['model']['name']}, batches "
                f"{[r['batch'] for r in runs]}, partial={b.partial}, {_size(target) / 1e6:.1f} MB; "
                f"not measured: {'; '.join(b.meta.get('missing', [])) or 'nothing'}"
            )
        checks = dest / "checks"
        checks.mkdir(exist_ok=True)
        for f in CHECK_FILES:
            if (work / f).is_file():
                shutil.copy2(work / f, checks / f)
        summary_file = work / "summary.json"
        if summary_file.is_file():
            stages = json.loads(summary_file.read_text()).get("stages", {})
            lines += ["", "| stage | rc | seconds |", "| --- | --- | --- |"]
            lines += [f"| {n} | {s.get('rc')} | {s.get('seconds')} |" for n, s in stages.items()]
    readme = dest / "README.md"
    tmp_readme = readme.with_suffix(".md.tmp")
    tmp_readme.write_text("\n".join(lines) + "\n")
    tmp_readme.replace(readme)
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files_at", type=Path, help="folder holding gpu-checks.tar.gz (or its parts)")
    p.add_argument("--dest", type=Path, default=ROOT / "traces" / "samples" / "h100-profiled")
    a = p.parse_args(argv)
    try:
        lines = adopt(a.files_at, a.dest)
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

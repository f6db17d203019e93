"""scripts/gpu_checks.py on the CPU: stages run as killable children, results are packed after every
stage (a command cut off later keeps them), a stage over its budget is stopped and recorded."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

from scripts import gpu_checks


def test_orchestrate_packs_every_stage_and_records_a_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stages = dict(gpu_checks.STAGES)
    stages["device"] = (0.5, "too short to even import torch")  # stopped by its budget
    monkeypatch.setattr(gpu_checks, "STAGES", stages)
    out, work = tmp_path / "out", tmp_path / "work"
    rc = gpu_checks.orchestrate(out, work, ["device", "nvml"])
    assert rc == 1  # not every stage succeeded
    summary = json.loads((work / "summary.json").read_text())
    assert summary["stages"]["device"]["rc"] == "timeout" and summary["stages"]["nvml"]["rc"] == 0
    assert [p.name for p in out.iterdir()] == ["gpu-checks.tar.gz"]
    with tarfile.open(out / "gpu-checks.tar.gz") as tar:
        names = set(tar.getnames())
        packed = json.loads(tar.extractfile("gpu-checks/summary.json").read())  # type: ignore[union-attr]
    assert {"gpu-checks/nvml_overhead.txt", "gpu-checks/device.log"} <= names
    assert set(packed["stages"]) == {"device", "nvml"}


def test_large_results_come_back_in_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "blob.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB that gzip cannot shrink much
    (work / "noise.bin").write_bytes(os.urandom(3 * 2**20))
    monkeypatch.setattr(gpu_checks, "PART_BYTES", 2**20)
    parts = gpu_checks.pack(work, tmp_path / "out")
    assert len(parts) >= 3 and all(p.stat().st_size <= 2**20 for p in parts)
    joined = tmp_path / "joined.tar.gz"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(joined) as tar:
        assert set(tar.getnames()) >= {"gpu-checks/blob.bin", "gpu-checks/noise.bin"}
    # packing again replaces the parts instead of mixing two packings
    (work / "noise.bin").unlink()
    again = gpu_checks.pack(work, tmp_path / "out")
    assert sorted((tmp_path / "out").iterdir()) == sorted(again)

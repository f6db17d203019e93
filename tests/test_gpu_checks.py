"""scripts/gpu_checks.py on the CPU: stages run as killable children, results are packed after every
stage (a command cut off later keeps them), a stage over its budget is stopped and recorded."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from scripts import gpu_checks
from traces.bundle import read_bundle, write_bundle


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


def test_adopt_copies_readable_bundles_and_records_the_commands(tmp_path: Path) -> None:
    from scripts import adopt_gpu_checks

    sample = read_bundle("traces/samples/bundles/moe")  # a real bundle as stand-in
    work = tmp_path / "work"
    work.mkdir()
    # as profiled by an older estimator: adoption recomputes the runs' GPM columns from the NVML table
    tables = {name: sample.table(name) for name in sample.tables}
    tables["runs"] = tables["runs"].assign(gpm_bytes_per_step=1.0)
    raw = {p.name.removesuffix(".gz"): p for p in sample.raw_traces}
    meta = {k: v for k, v in sample.meta.items() if k not in ("format", "version")}
    write_bundle(work / "moe-bundle", meta, tables, raw)
    (work / "device.json").write_text(json.dumps({"name": "NVIDIA H100 80GB HBM3", "torch": "2.11.0"}))
    (work / "summary.json").write_text(json.dumps({"stages": {"moe": {"rc": 0, "seconds": 150.2}}}))
    files_at = tmp_path / "files"
    gpu_checks.pack(work, files_at)
    dest = tmp_path / "samples"
    assert adopt_gpu_checks.main([str(files_at), "--dest", str(dest)]) == 0
    adopted = read_bundle(dest / "moe")
    assert adopted.meta["runs"] == sample.meta["runs"]
    assert adopted.runs["gpm_bytes_per_step"].to_numpy() == pytest.approx(
        sample.runs["gpm_bytes_per_step"].to_numpy()
    )
    for trace, original in zip(adopted.raw_traces, sample.raw_traces, strict=True):
        events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
        before = json.loads(gzip.decompress(original.read_bytes()))["traceEvents"]
        assert events == [e for e in before if e.get("cat") != "cpu_op"] and 1000 < len(events) < len(before)
    readme = (dest / "README.md").read_text()
    assert "bash scripts/gpu_checks.sh" in readme and "NVIDIA H100 80GB HBM3" in readme
    assert "| moe | 0 | 150.2 |" in readme and (dest / "checks" / "run1" / "device.json").is_file()


def test_adopt_refuses_a_cut_archive_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from scripts import adopt_gpu_checks

    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(Path("traces/samples/bundles/umv2"), work / "umv2-bundle")
    files_at = tmp_path / "files"
    (archive,) = gpu_checks.pack(work, files_at)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    assert adopt_gpu_checks.main([str(files_at), "--dest", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unreadable" in err
    assert not (tmp_path / "d").exists()


def test_a_stage_gets_only_what_is_left_of_the_run(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    # 20 s of the run left after the packing reserve: enough for no 15 s stage after a 10 s one
    limit = gpu_checks.PACK_SECONDS + 20
    rc = gpu_checks.orchestrate(out, work, ["device", "nvml"], limit_s=limit)
    stages = json.loads((work / "summary.json").read_text())["stages"]
    assert stages["device"]["rc"] in (0, "timeout") and stages["device"]["seconds"] <= 21
    left = 20 - stages["device"]["seconds"]
    if left < gpu_checks.MIN_STAGE_SECONDS:  # a slow machine: the skip is recorded in the bundle
        assert stages["nvml"]["rc"] == "skipped" and rc == 1
    assert [p.name for p in out.iterdir()] == ["gpu-checks.tar.gz"]  # no packing.tmp left behind


@pytest.mark.parametrize(
    "mixer", ["gated_deltanet", "kda", "lightning", "mamba2", "gqa", "mla_sparse", "gqa+mamba2"]
)
@pytest.mark.parametrize("phase", ["decode", "prefill"])
def test_parity_copy_starts_from_the_same_state(mixer: str, phase: str) -> None:
    # the GPU parity stage compares a CPU step with a copy's step; run here with the copy on the CPU too,
    # the two must agree exactly, also where a decode step updates a recurrent state in place
    import torch

    from profiler.modules import ReferenceModel
    from simulator.config import BlockConfig, DenseFFNConfig, ModelConfig

    mixers = {
        "gated_deltanet": {
            "kind": "gated_deltanet",
            "n_k_heads": 2,
            "n_v_heads": 4,
            "head_k_dim": 8,
            "head_v_dim": 8,
            "chunk_size": 8,
        },
        "mamba2": {
            "kind": "mamba2",
            "n_heads": 4,
            "head_dim": 8,
            "d_state": 8,
            "n_groups": 2,
            "chunk_size": 8,
        },
        "gqa": {"kind": "gqa", "n_heads": 4, "n_kv_heads": 2, "head_dim": 8},
        "kda": {
            "kind": "gated_deltanet",
            "n_k_heads": 4,
            "n_v_heads": 4,
            "head_k_dim": 8,
            "head_v_dim": 8,
            "chunk_size": 8,
            "gate_rank": 8,
        },
        "lightning": {"kind": "lightning", "n_heads": 4, "head_dim": 8, "chunk_size": 8},
        "mla_sparse": {
            "kind": "mla",
            "n_heads": 4,
            "q_lora_rank": 16,
            "kv_lora_rank": 16,
            "qk_nope_head_dim": 8,
            "qk_rope_head_dim": 4,
            "v_head_dim": 8,
            "index_topk": 8,
            "index_n_heads": 2,
            "index_head_dim": 8,
        },
    }
    # a mixer beside attention (Falcon-H1): both caches are copied
    slots = {"attention": mixers["gqa"], "parallel_mixer": mixers["mamba2"]} if "+" in mixer else None
    block = BlockConfig.model_validate({"repeat": 2, **(slots or {"attention": mixers[mixer]})})
    block = block.model_copy(update={"ffn": [DenseFFNConfig(d_ff=64)]})
    cfg = ModelConfig(name=mixer, d_model=32, vocab_size=50, blocks=[block])
    torch.manual_seed(0)
    cpu = ReferenceModel(cfg, phase=phase)
    cpu.setup_cache(3, 16)
    ids = cpu.make_input(3, 16)
    with torch.no_grad():
        want, got = gpu_checks.parity_outputs(cpu, ids, "cpu", 16)
    assert torch.equal(want, got)


def test_a_stage_with_no_time_left_is_recorded_as_skipped_in_the_bundle(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    rc = gpu_checks.orchestrate(out, work, ["device"], limit_s=gpu_checks.PACK_SECONDS + 1)
    stages = json.loads((work / "summary.json").read_text())["stages"]
    assert stages["device"]["rc"] == "skipped" and rc == 1
    assert [p.name for p in out.iterdir()] == ["gpu-checks.tar.gz"]


@pytest.mark.parametrize(
    ("bundle", "config"),
    [
        ("moe", lambda: gpu_checks.moe_config()),
        ("umv2", lambda: gpu_checks.umv2_config()),
        ("zoo", lambda: gpu_checks.zoo_config("decode")),
        ("zoo-prefill", lambda: gpu_checks.zoo_config("prefill")),
    ],
)
def test_the_committed_h100_bundles_hold_the_configs_this_script_builds(bundle: str, config) -> None:
    """A change to a stage's model would leave the committed measurements describing another model."""
    recorded = read_bundle(Path("traces/samples/h100-profiled") / bundle).meta["model"]["config"]
    assert recorded == config().model_dump(mode="json")

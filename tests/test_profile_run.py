"""profile_model on the CPU: bundles of small MoE / UltraMemV2 models, interrupts, crashes, user modules."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import profiler.run as run
from profiler.assemble import Sweep
from profiler.capture import routing_rows
from profiler.modules import RoutingRecorder
from profiler.ncu_pass import ncu_pass
from profiler.run import ProfileFailed, ProfileInterrupted, profile, profile_model
from simulator.config import (
    AttentionConfig,
    BlockConfig,
    DenseFFNConfig,
    ModelConfig,
    MoEConfig,
    UltraMemV2Config,
)
from traces.bundle import read_bundle

BATCHES = [1, 4, 16]
FAST = {
    "phase": "decode",
    "context": 32,
    "steps": 2,
    "warmup": 1,
    "dtype": "fp32",
    "steady_seconds": 0.2,
    "input_ring": 4,
    "progress": False,
}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # tiny ops on a busy 2-core machine: OpenMP threads only add barrier waits
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def moe_model() -> ModelConfig:
    attn = AttentionConfig(kind="gqa", n_heads=4, n_kv_heads=2, head_dim=16)
    moe = MoEConfig(n_experts=8, top_k=2, expert_ffn=32, n_shared_experts=1, shared_ffn=32)
    return ModelConfig(
        name="tiny-moe", d_model=64, vocab_size=97, blocks=[BlockConfig(repeat=2, attention=attn, ffn=[moe])]
    )


def umv2_model() -> ModelConfig:
    attn = AttentionConfig(kind="mha", n_heads=4, head_dim=32)
    mem = UltraMemV2Config(knum=12, key_dim=16, top_m=8, row_col_top=6, value_dim=64, pre_value_dim=32)
    return ModelConfig(
        name="tiny-umv2",
        d_model=128,
        vocab_size=97,
        embeddings=False,
        blocks=[
            BlockConfig(repeat=2, attention=attn, parallel_ffn=True, ffn=[DenseFFNConfig(d_ff=128), mem])
        ],
    )


@pytest.mark.parametrize("make", [moe_model, umv2_model], ids=["moe", "umv2"])
def test_sweep_writes_a_complete_bundle(make, tmp_path: Path) -> None:
    cfg = make()
    out = profile_model(cfg, BATCHES, output=tmp_path / "bundle", **FAST)
    b = read_bundle(out)
    meta = b.meta
    assert meta["source"] == "profiled" and meta["partial"] is False
    assert meta["model"]["name"] == cfg.name and meta["model"]["config"]["d_model"] == cfg.d_model
    assert [r["batch"] for r in meta["runs"]] == BATCHES and all(r["complete"] for r in meta["runs"])
    assert all(r["steps"] >= FAST["steps"] for r in meta["runs"])
    assert meta["workload"] == {
        "phase": "decode",
        "context": 32,
        "dtype": "fp32",
        "input_ring": 4,
        "kv_mode": "fixed",
        "tokens_per_step": 1,
    }
    assert "ring of 4 distinct inputs" in meta["extra"]["inputs"]
    missing = " ".join(meta["missing"]).lower()
    assert "gpu" in missing and "nvml" in missing and "ncu" in missing
    assert meta["measured"]["kernels"] is False and meta["measured"]["routing"] is True

    runs = b.runs
    assert list(runs["batch"]) == BATCHES and (runs["us_per_step"] > 0).all()
    assert (runs["window_s"] >= FAST["steady_seconds"]).all()
    assert len(b.raw_traces) == 3

    # every blockN.xxx name, for every batch and profiled step, with CPU time and ops inside
    layers = b.layers
    names = {
        f"block{i}.{s}"
        for i in range(2)
        for s in (("attn", "moe") if cfg.name == "tiny-moe" else ("attn", "ffn", "memory"))
    }
    for (batch, step), g in layers.groupby(["batch", "step"]):
        assert names <= set(g["layer"]), (batch, step)
        assert batch in BATCHES and step in (0, 1)
    assert (layers["kernel_time_ns"] > 0).all() and (layers["n_kernels"] > 0).all()
    if cfg.embeddings:
        assert {"embed", "head"} <= set(layers["layer"])

    # routing: per (batch, step, layer) the distinct items stay within min(N, T*k)
    routing = b.routing
    info = meta["extra"]["routing_layers"]
    assert set(routing["layer"]) == set(info)
    for (batch, _step, layer), g in routing.groupby(["batch", "step", "layer"]):
        n_items, per_token = info[layer]["items"], info[layer]["per_token"]
        assert g["item"].is_unique and len(g) <= min(n_items, batch * per_token)
        assert g["count"].sum() == batch * per_token  # every selection counted once
        assert g["item"].between(0, n_items - 1).all()
    stepped = set(zip(routing["batch"], routing["step"], strict=True))
    assert stepped == {(b_, s) for b_ in BATCHES for s in (0, 1)}

    ops = b.opcount  # eager op counts on meta tensors, per batch size
    assert set(ops["batch"]) == set(BATCHES) and names <= set(ops["layer"])


@pytest.mark.parametrize("make", [moe_model, umv2_model], ids=["moe", "umv2"])
def test_routing_records_stay_out_of_the_profiled_steps(make, tmp_path: Path) -> None:
    """The recorders' index copies run outside the profiled steps: the profiled trace holds exactly the
    ops of the same run (same seed) without recorders."""

    def op_counts(record: bool) -> Counter[str]:
        torch.manual_seed(0)
        out = profile_model(make(), [4], output=tmp_path / str(record), record_routing=record, **FAST)
        bundle = read_bundle(out)
        assert (bundle.routing is not None) is record
        with gzip.open(bundle.raw_traces[0], "rt") as f:
            return Counter(e.get("name") for e in json.load(f)["traceEvents"] if e.get("cat") == "cpu_op")

    recorded, plain = op_counts(True), op_counts(False)
    assert recorded == plain and recorded["aten::linear"] > 0


def test_interrupt_keeps_finished_batches(tmp_path: Path) -> None:
    def stop_after_second(batch: int, path: Path) -> None:
        if batch == BATCHES[1]:
            raise KeyboardInterrupt

    with pytest.raises(ProfileInterrupted, match="2 of 3 batch sizes finished") as err:
        profile_model(moe_model(), BATCHES, output=tmp_path / "b", on_batch_done=stop_after_second, **FAST)
    assert "\n" not in str(err.value)
    b = read_bundle(tmp_path / "b")
    assert b.partial is True
    assert [r["batch"] for r in b.meta["runs"]] == BATCHES[:2]
    assert list(b.runs["batch"]) == BATCHES[:2] and len(b.raw_traces) == 2
    assert "interrupted" in b.meta["extra"]["stopped"]


def test_crash_mid_sweep_keeps_finished_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = run.profile_batch

    def failing(target, batch, opts, progress=None):
        if batch == BATCHES[2]:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(target, batch, opts, progress)

    monkeypatch.setattr(run, "profile_batch", failing)
    with pytest.raises(ProfileFailed, match=r"at batch 16: RuntimeError: CUDA out of memory"):
        profile_model(moe_model(), BATCHES, output=tmp_path / "b", **{**FAST, "steady_seconds": 0.05})
    b = read_bundle(tmp_path / "b")
    assert b.partial and [r["batch"] for r in b.meta["runs"]] == BATCHES[:2]
    assert any("sweep stopped during batch 16" in m for m in b.meta["missing"])


def test_cli_entry_exits_2_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model_file = tmp_path / "tiny.yaml"
    model_file.write_text(yaml.safe_dump(moe_model().model_dump(mode="json")))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "profile_batch", interrupted)
    rc = run.main(
        [
            str(model_file),
            "--batches",
            "1,4",
            "-o",
            str(tmp_path / "b"),
            "--context",
            "16",
            "--dtype",
            "fp32",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "interrupted" in err[0]
    assert read_bundle(tmp_path / "b").partial  # readable, with no finished batch size
    assert read_bundle(tmp_path / "b").meta["runs"] == []


def test_user_module_factory_with_hooked_layer_names(tmp_path: Path) -> None:
    src = tmp_path / "mymodel.py"
    src.write_text(
        textwrap.dedent("""
        import torch.nn as nn

        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.attn = nn.Linear(32, 32)
                self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))

            def forward(self, x):
                return x + self.mlp(x + self.attn(x))

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.layers = nn.ModuleList([Block() for _ in range(3)])

            def forward(self, x):
                for layer in self.layers:
                    x = layer(x)
                return x

        def build():
            return Net()
    """)
    )
    out = profile(f"{src}:build", [1, 8], tmp_path / "b", input_shape="B,1,32", **FAST)
    b = read_bundle(out)
    assert b.meta["model"]["name"] == "mymodel" and not b.partial
    layers = b.layers
    assert {f"layers.{i}.{s}" for i in range(3) for s in ("attn", "mlp")} == set(layers["layer"])
    assert set(layers["block"]) == {0, 1, 2} and set(layers["sublayer"]) == {"attn", "mlp"}
    missing = " ".join(b.meta["missing"])
    assert "no routing recorders" in missing and "opcount" in missing


def test_factory_needs_an_input_shape(tmp_path: Path) -> None:
    from simulator.errors import MemtrafficError

    with pytest.raises(MemtrafficError, match="--input-shape"):
        profile(f"{tmp_path}/x.py:build", [1], tmp_path / "b")


SAMPLES = Path(__file__).resolve().parents[1] / "traces" / "samples" / "h100-decode-2026-11-26" / "kineto"


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="recorded H100 sample traces not present")
def test_reference_layer_pattern_attributes_recorded_h100_kernels() -> None:
    # the GPU path of profile_batch, on a real H100 trace whose ranges the reference model reproduces
    from traces.attribution import attribute, layer_table
    from traces.kineto import read_kineto

    trace = read_kineto(SAMPLES / "umv2_decode_b8.json.gz")
    kernels = attribute(trace.events, run.REFERENCE_LAYER_PATTERN)
    kernels.insert(0, "batch", 8)
    named = kernels[kernels["layer"].notna()]
    assert set(named["layer"]) == {f"block{i}.{s}" for i in range(4) for s in ("attn", "ffn", "memory")}
    assert set(named["step"]) == {0, 1, 2}
    layers = layer_table(kernels)
    assert len(layers) == 3 * 12 and (layers["kernel_time_ns"] > 0).all()


def test_routing_cap_keeps_whole_steps_then_layers() -> None:
    def recorder(n_items: int, steps: list[list[int]]) -> RoutingRecorder:
        rec = RoutingRecorder(n_items)
        rec.enabled = True
        for idx in steps:
            rec.record(torch.tensor(idx).view(-1, 1))
        return rec

    recs = {
        "block0.memory": recorder(100, [[1, 2, 3], [4, 5, 6]]),
        "block1.memory": recorder(100, [[7, 8, 9], [1, 1, 1]]),
    }
    full, notes = routing_rows(2, recs, cap=100)
    assert len(full) == 3 + 3 + 3 + 1 and not notes
    assert full.loc[(full["step"] == 1) & (full["layer"] == "block1.memory"), "count"].tolist() == [3]
    one_step, notes = routing_rows(2, recs, cap=7)
    assert set(one_step["step"]) == {0} and len(one_step) == 6 and "kept 1 of 2 profiled steps" in notes[0]
    one_layer, notes = routing_rows(2, recs, cap=4)
    assert set(one_layer["layer"]) == {"block0.memory"} and len(one_layer) == 3
    assert "1 of 2 layers" in notes[0]


def test_ncu_pass_one_process_per_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the GPU-only second pass, with ncu itself replaced: one child per batch size, each given an equal
    # share of the time; a batch that fails costs only its own rows
    import pandas as pd

    import profiler.ncu as ncu
    from simulator.errors import TraceError

    calls: list[dict] = []

    def fake_run_ncu(argv, nvtx_include, *, log_file, timeout_s, env, cwd):
        batch = int(argv[argv.index("--batches") + 1])
        calls.append({"argv": argv, "include": nvtx_include, "timeout": timeout_s, "batch": batch})
        if batch == 16:
            raise TraceError("ncu did not finish within 20.0 s")
        df = pd.DataFrame(
            {
                "kernel_id": [0, 1],
                "kernel": ["gemm", "topk"],
                "nvtx_stack": [
                    f"measure/batch{batch}/step0/block0.attn",
                    f"measure/batch{batch}/step1/block0.moe",
                ],
                "layer": ["block0.attn", "block0.moe"],
                "dram_bytes_read": [1e6, 2e3],
                "dram_bytes_write": [1e3, 1e2],
                "duration_ns": [5e3, 1e3],
                "l2_bytes": [2e6, 4e3],
            }
        )
        df.attrs["cache_mode"] = "flush-all"
        return df

    monkeypatch.setattr(ncu, "ncu_available", lambda: (True, "ncu 2025.3.1"))
    monkeypatch.setattr(ncu, "run_ncu", fake_run_ncu)
    target = run.reference_target(moe_model(), "decode", 16, torch.device("cpu"), "fp32")
    sweep = Sweep(tmp_path / "b", target, {"extra": {}})
    missing = ncu_pass(sweep, target, [1, 4, 16], 2, 60.0, torch.device("cuda"), tmp_path)
    assert [c["batch"] for c in calls] == [1, 4, 16] and all(c["timeout"] == 20.0 for c in calls)
    assert all(c["include"] == run.NCU_RANGE and "--ncu-child" in c["argv"] for c in calls)
    assert missing == ["ncu: batch 16: ncu did not finish within 20.0 s"]
    table = sweep.extra_tables["ncu"]
    assert table[["batch", "step"]].values.tolist() == [[1, 0], [1, 1], [4, 0], [4, 1]]
    assert sweep.meta["extra"]["ncu"]["batches"] == [1, 4]
    assert sweep.meta["extra"]["ncu"]["cache_mode"] == "flush-all"

    # no counter permission: the first batch says so and the others are not tried
    calls.clear()

    def no_permission(argv, *a, **k):
        calls.append(argv)
        raise ncu.MeasurementUnavailable("ncu: no permission for GPU performance counters")

    monkeypatch.setattr(ncu, "run_ncu", no_permission)
    missing = ncu_pass(
        Sweep(tmp_path / "c", target, {"extra": {}}), target, [1, 4], 1, 60.0, torch.device("cuda"), tmp_path
    )
    assert len(calls) == 1 and missing == ["ncu: no permission for GPU performance counters"]


def profile_once(tmp_path: Path, **options: Any) -> Path:
    """A one-batch CPU profile of the small MoE model: no op count, a short steady state."""
    fast = {**FAST, "steady_seconds": 0.05}
    return profile_model(moe_model(), [2], output=tmp_path / "b", opcount=False, **fast, **options)


def test_ncu_requested_on_cpu_is_recorded_missing(tmp_path: Path) -> None:
    out = profile_once(tmp_path, ncu=True)
    missing = read_bundle(out).meta["missing"]
    assert "ncu: needs a CUDA device" in missing and "ncu: not requested (--ncu)" not in missing


def test_ncu_pass_past_the_callers_deadline_is_skipped_and_recorded(tmp_path: Path) -> None:
    out = profile_once(tmp_path, ncu=True, ncu_deadline=time.monotonic())
    bundle = read_bundle(out)
    assert not bundle.partial  # the sweep itself is complete
    assert "ncu: skipped, 0 s left before the run's deadline" in bundle.meta["missing"]


def test_cuda_graphs_requested_on_cpu_are_recorded_missing(tmp_path: Path) -> None:
    from profiler.graphs import graph_step_us
    from simulator.errors import MeasurementUnavailable

    out = profile_once(tmp_path, cuda_graphs=True)
    b = read_bundle(out)
    assert "cuda graphs: need a CUDA device" in b.meta["missing"]
    assert "us_per_step_graph" not in b.runs
    target = run.reference_target(moe_model(), "decode", 16, torch.device("cpu"), "fp32")
    with pytest.raises(MeasurementUnavailable, match="need a CUDA device"):
        graph_step_us(target, [target.make_input(1, 0)], 0, torch.device("cpu"))


def test_kineto_log_lines_silenced_only_around_our_profiling() -> None:
    # libkineto reads KINETO_LOG_LEVEL when a process first starts a profiler: check in a fresh one
    code = (
        "import os, torch\n"
        "from profiler.session import torch_profile\n"
        "with torch_profile(torch.device('cpu'), record_shapes=True):\n"
        "    torch.ones(2) + 1\n"
        "assert 'KINETO_LOG_LEVEL' not in os.environ\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "profiler_start" not in proc.stderr and "profiler_stop" not in proc.stderr


def test_graph_refusal_is_remembered_and_other_failures_cost_one_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import profiler.batch as batch_mod
    from profiler.graphs import _root_cause
    from simulator.errors import MeasurementUnavailable

    target = run.reference_target(moe_model(), "decode", 16, torch.device("cpu"), "fp32")
    opts = batch_mod.SweepOptions(
        "decode", 16, 1, 1, 0.1, 2, False, False, 0.1, torch.device("cpu"), None, Path("."), cuda_graphs=True
    )
    tries: list[int] = []

    def refuse(t, ring, first, device):
        tries.append(first)
        raise MeasurementUnavailable("not capturable: the forward syncs with the host (x at moe.py:97)")

    monkeypatch.setattr(batch_mod, "graph_step_us", refuse)
    notes: list[str] = []
    assert batch_mod._graph_step_us(target, [], opts, 1, notes) is None
    assert batch_mod._graph_step_us(target, [], opts, 16, notes) is None
    assert len(tries) == 1 and len(notes) == 1 and "found at batch 1" in notes[0]

    fresh = run.reference_target(moe_model(), "decode", 16, torch.device("cpu"), "fp32")
    monkeypatch.setattr(batch_mod, "graph_step_us", lambda *a: (_ for _ in ()).throw(MemoryError()))
    notes = []
    assert batch_mod._graph_step_us(fresh, [], opts, 4096, notes) is None
    assert notes == ["cuda graphs: batch 4096: MemoryError"] and fresh.uncapturable is None
    monkeypatch.setattr(batch_mod, "graph_step_us", lambda *a: 81.5)
    assert batch_mod._graph_step_us(fresh, [], opts, 1, notes) == 81.5

    # the error that spoiled a capture, not capture_end's own, is the one reported
    try:
        try:
            raise RuntimeError("operation not permitted when stream is capturing")
        except RuntimeError:
            raise RuntimeError("operation failed due to a previous error during capture") from None
    except RuntimeError as exc:
        chained = exc
    assert _root_cause(chained).startswith("operation failed")  # `from None`: no context to follow
    try:
        try:
            raise ValueError("CPU tensor copy during capture")
        except ValueError:
            raise RuntimeError("capture invalidated")  # noqa: B904 (the implicit context is the point)
    except RuntimeError as exc:
        assert _root_cause(exc).startswith("CPU tensor copy during capture at test_profile_run.py:")


def test_the_steady_loops_nvml_samples_become_counter_tracks_of_the_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """profile_batch with NVML (a scripted sampler: the CPU has none) writes the steady loop's samples
    into the raw trace as counter events after its traced steps, none past the loop's end."""
    import pandas as pd

    import profiler.batch as batch_mod
    import profiler.steady as steady
    from traces.timeline import TIMELINE_COLUMNS

    t0 = time.time_ns() - 10**9
    starts = [t0 + i * 10**8 for i in range(200)]  # 20 s of 100 ms windows around the run
    timeline = pd.DataFrame({c: [0.0] * len(starts) for c in TIMELINE_COLUMNS})
    timeline["t_start_ns"], timeline["t_end_ns"] = starts, [s + 10**8 for s in starts]
    timeline["gpm_dram_bw_util_pct"] = [float(i % 50) for i in range(len(starts))]

    class ScriptedSampler:
        errors: list[str] = []

        def stop(self) -> pd.DataFrame:
            return timeline

    monkeypatch.setattr(steady, "_start_sampler", lambda device, interval, notes: ScriptedSampler())
    target = run.reference_target(moe_model(), "decode", 16, torch.device("cpu"), "fp32")
    opts = batch_mod.SweepOptions(
        "decode", 16, 2, 1, 0.2, 2, False, True, 0.1, torch.device("cpu"), 3.35e12, tmp_path
    )
    result = batch_mod.profile_batch(target, 2, opts)
    trace = json.loads(gzip.decompress(result.trace_gz.read_bytes()))
    base = trace["baseTimeNanoseconds"]
    dram = [e for e in trace["traceEvents"] if e.get("ph") == "C" and e["name"] == "GPM DRAM bandwidth (%)"]
    first = min(e["ts"] for e in trace["traceEvents"] if e.get("ph") == "X") * 1000 + base
    end = result.run["steady_end_ns"]
    # every window from the first traced event to the steady loop's end, each once, with its value
    want = timeline[(timeline["t_end_ns"] > first) & (timeline["t_start_ns"] < end)]
    assert len(dram) == len(want) >= 2
    assert [e["args"]["value"] for e in dram] == want["gpm_dram_bw_util_pct"].tolist()
    assert max(e["ts"] for e in dram) * 1000 + base < end

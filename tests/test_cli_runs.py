"""The measuring side of the command line (import, validate, report, profile, count) as a user runs it:
real processes on the committed H100 recordings and on small CPU runs; bad input gives one line, exit 2."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.test_cli import ROOT, assert_one_line_error, run

SAMPLES = ROOT / "traces" / "samples" / "h100-decode-2026-11-26"
MOE_BUNDLE = ROOT / "traces" / "samples" / "bundles" / "moe"


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("import") / "moe"
    proc = run(
        "import", "--runs", str(SAMPLES / "meta.json"), "--runs-model", "moe", "--nvml",
        str(SAMPLES / "nvml_timeline.csv"), "--model", "h100-sample-moe", "-o", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # GPM bytes per step at batch 1: the recording's README integrates the window itself (99 MB), which
    # misses what the lag carries past its end; the lag-aware rate gives 101 MB (tests/test_import.py)
    assert "101 MB" in proc.stdout
    return out


def test_import_then_validate_prints_errors_per_batch(imported: Path, tmp_path: Path) -> None:
    proc = run("validate", str(imported), "-o", str(tmp_path / "val"), "-f", "csv")
    assert proc.returncode == 0, proc.stderr
    steps = pd.read_csv(tmp_path / "val" / "steps.csv")
    assert list(steps["batch"]) == [1, 8, 64, 256]
    # the signed error is recomputed here from the two byte columns it is made of
    err = (steps["pred_bytes_ideal"] - steps["meas_bytes_gpm"]) / steps["meas_bytes_gpm"] * 100
    assert steps["err_ideal_pct"].to_numpy() == pytest.approx(err.to_numpy())
    assert (steps["err_ideal_pct"].abs() < 10).all()
    layers = pd.read_csv(tmp_path / "val" / "layers.csv")
    assert {"block0.attn", "block3.moe"} <= set(layers["layer"])


def test_report_from_bundle_and_model(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    proc = run("report", "olmoe-1b-7b", str(MOE_BUNDLE), "--batch", "1:64", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    html = out.read_text()
    assert "<script src=" not in html.replace('<script src="data:', "")  # nothing fetched from a network
    assert "h100-sample-moe" in html and "olmoe-1b-7b" in html


def test_import_truncated_trace(tmp_path: Path) -> None:
    raw = (SAMPLES / "kineto" / "moe_decode_b8.json.gz").read_bytes()
    cut = tmp_path / "cut_b8.json.gz"
    cut.write_bytes(raw[: len(raw) // 2])
    assert_one_line_error(run("import", str(cut), "-o", str(tmp_path / "out")), "cut_b8.json.gz")
    assert not (tmp_path / "out").exists()


def test_import_foreign_json(tmp_path: Path) -> None:
    foreign = tmp_path / "notes_b1.json"
    foreign.write_text(json.dumps({"hello": [1, 2, 3]}))
    assert_one_line_error(run("import", str(foreign), "-o", str(tmp_path / "out")), "notes_b1.json")


def test_import_timeline_missing_columns_and_no_overlap(tmp_path: Path) -> None:
    timeline = pd.read_csv(SAMPLES / "nvml_timeline.csv")
    partial = tmp_path / "partial.csv"
    timeline.drop(columns=["gpm_dram_bw_util_pct"]).to_csv(partial, index=False)
    trace = SAMPLES / "kineto" / "moe_decode_b1.json.gz"
    assert_one_line_error(
        run("import", str(trace), "--nvml", str(partial), "-o", str(tmp_path / "a")), "gpm_dram_bw_util_pct"
    )
    shifted = tmp_path / "shifted.csv"
    later = timeline.copy()
    later[["t_start_ns", "t_end_ns"]] += 10**15  # eleven days later
    later.to_csv(shifted, index=False)
    line = assert_one_line_error(
        run("import", str(trace), "--nvml", str(shifted), "-o", str(tmp_path / "b")), "overlap"
    )
    # the kernels were readable, so they are kept: a partial bundle that says what is missing
    assert "partial" in line
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert meta["partial"] is True and any("overlap" in m for m in meta["missing"])
    assert len(pd.read_parquet(tmp_path / "b" / "kernels.parquet")) > 0


def test_import_keeps_the_good_traces_when_one_is_cut(tmp_path: Path) -> None:
    good = SAMPLES / "kineto" / "umv2_decode_b1.json.gz"
    raw = (SAMPLES / "kineto" / "umv2_decode_b8.json.gz").read_bytes()
    cut = tmp_path / "umv2_decode_b8.json.gz"
    cut.write_bytes(raw[: len(raw) // 3])
    line = assert_one_line_error(run("import", str(good), str(cut), "-o", str(tmp_path / "out")), "truncated")
    assert "partial" in line
    meta = json.loads((tmp_path / "out" / "bundle.json").read_text())
    assert meta["partial"] is True and [r["batch"] for r in meta["runs"]] == [1]


def test_validate_bad_bundles(tmp_path: Path) -> None:
    assert_one_line_error(run("validate", str(tmp_path / "nowhere")), "nowhere")
    assert_one_line_error(run("validate", str(MOE_BUNDLE), "--model", "olmoe-1b-7b"), "olmoe-1b-7b")
    old = tmp_path / "old"
    shutil.copytree(MOE_BUNDLE, old)
    meta = json.loads((old / "bundle.json").read_text())
    meta["version"] = 0
    (old / "bundle.json").write_text(json.dumps(meta))
    assert_one_line_error(run("validate", str(old)), "version")


def test_profile_on_cpu_writes_a_bundle_that_validates(tmp_path: Path) -> None:
    model = tmp_path / "tiny.yaml"
    model.write_text(
        "name: tiny-moe\nd_model: 64\nembeddings: false\nblocks:\n  - repeat: 2\n"
        "    attention: {kind: gqa, n_heads: 4, n_kv_heads: 2, head_dim: 16}\n"
        "    ffn: [{kind: moe, n_experts: 8, top_k: 2, expert_ffn: 32}]\n"
    )
    out = tmp_path / "run"
    proc = run(
        "profile", str(model), "--batch", "1,4", "--context", "32", "--steps", "2", "--warmup", "1",
        "--steady-seconds", "0.1", "--dtype", "fp32", "-o", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "not measured" in proc.stdout  # no GPU here: the bundle says what it lacks
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["partial"] is False and [r["batch"] for r in meta["runs"]] == [1, 4]
    routing = pd.read_parquet(out / "routing.parquet")
    assert routing["item"].max() < 8


def test_profile_factory_needs_input_shape(tmp_path: Path) -> None:
    factory = tmp_path / "mine.py"
    factory.write_text("import torch\n\ndef build():\n    return torch.nn.Linear(8, 8)\n")
    assert_one_line_error(run("profile", f"{factory}:build", "-o", str(tmp_path / "o")), "input-shape")


def test_count_on_meta_tensors_csv() -> None:
    proc = run("count", "h100-sample-moe", "--batch", "1,8", "--context", "256", "-f", "csv")
    assert proc.returncode == 0, proc.stderr
    from io import StringIO

    df = pd.read_csv(StringIO(proc.stdout))
    assert {"block0.attn", "block3.moe"} <= set(df["layer"])
    # a gather-aware count: the MoE layer at batch 1 reads its top-4 experts, not all 32
    moe = df[(df["layer"] == "block0.moe") & (df["batch"] == 1)].iloc[0]
    expert = 3 * 1024 * 768 * 2
    assert 4 * expert <= moe["bytes_read"] < 8 * expert
    # each batch size ends with a total row: its layers summed, the peak the largest layer peak
    for b, d in df.groupby("batch"):
        layers, total = d[d["layer"] != "total"], d[d["layer"] == "total"].iloc[0]
        for col in ("n_ops", "n_kernels", "flops", "bytes_read", "bytes_written", "kernel_time_s"):
            assert total[col] == pytest.approx(layers[col].sum()), (b, col)
        assert total["peak_live_bytes"] == layers["peak_live_bytes"].max()


def test_count_per_op_covers_every_batch_size() -> None:
    from io import StringIO

    both = run("count", "h100-sample-moe", "--batch", "1,8", "--context", "256", "--per-op", "-f", "csv")
    assert both.returncode == 0, both.stderr
    ops = pd.read_csv(StringIO(both.stdout))
    summary = run("count", "h100-sample-moe", "-b", "1,8", "-c", "256", "-f", "csv")
    layers = pd.read_csv(StringIO(summary.stdout))
    per_batch = layers[layers["layer"] == "total"].set_index("batch")
    # the op rows of each batch size add up to that batch size's step
    assert sorted(ops["batch"].unique()) == [1, 8]
    assert ops.groupby("batch").size().to_dict() == per_batch["n_ops"].to_dict()
    assert ops.groupby("batch")["bytes_read"].sum().to_dict() == per_batch["bytes_read"].to_dict()


def test_raw_trace_in_bundle_carries_counter_events() -> None:
    raw = sorted((MOE_BUNDLE / "raw").glob("*.json.gz"))[0]
    events = json.loads(gzip.decompress(raw.read_bytes()))["traceEvents"]
    assert any(e.get("ph") == "C" and "GPM" in e.get("name", "") for e in events)


def test_cpu_run_validates_on_a_named_hardware(tmp_path: Path) -> None:
    out = tmp_path / "cpu"
    proc = run(
        "profile", "h100-sample-moe", "-b", "1", "-c", "64", "--steps", "1", "--warmup", "1",
        "--steady-seconds", "0.1", "--dtype", "fp32", "-o", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert_one_line_error(run("validate", str(out)), "--hardware")
    proc = run("validate", str(out), "--hardware", "h100-sxm")
    assert proc.returncode == 0, proc.stderr


def test_import_without_runs_file_takes_the_workload_from_options(tmp_path: Path) -> None:
    out = tmp_path / "norun"
    trace = SAMPLES / "kineto" / "umv2_decode_b8.json.gz"
    proc = run(
        "import", str(trace), "--model", "h100-sample-umv2", "--context", "1024", "--dtype", "bfloat16",
        "--phase", "decode", "-o", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["workload"]["context"] == 1024 and meta["runs"][0]["batch"] == 8  # batch from the name
    assert run("validate", str(out)).returncode == 0


def test_empty_routing_histogram(tmp_path: Path) -> None:
    hist = tmp_path / "h.csv"
    hist.write_text("item,count\n")
    assert_one_line_error(run("simulate", "olmoe-1b-7b", "--routing", f"histogram:{hist}"), "no selections")


FACTORIES = """
import sys
import torch

def boom():
    raise RuntimeError("boom from factory")

def quits():
    sys.exit(3)

def linear():
    return torch.nn.Sequential(torch.nn.Linear(16, 16))
"""


@pytest.mark.parametrize(
    ("factory", "shape", "needles"),
    [
        ("boom", "B,16", ("the factory failed", "RuntimeError: boom from factory")),
        ("quits", "B,16", ("the factory failed", "SystemExit: 3")),
        ("linear", "B,17", ("forward failed on a batch-1 input (1, 17)", "mat1 and mat2")),
    ],
)
def test_profile_user_module_failures_are_one_line(
    tmp_path: Path, factory: str, shape: str, needles: tuple[str, ...]
) -> None:
    (tmp_path / "f.py").write_text(FACTORIES)
    proc = run(
        "profile",
        f"{tmp_path / 'f.py'}:{factory}",
        "--input-shape",
        shape,
        "--batch",
        "1",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--output",
        str(tmp_path / "out"),
    )
    assert_one_line_error(proc, *needles)
    assert not (tmp_path / "out").exists()


def test_profile_refuses_an_unwritable_output_before_measuring(tmp_path: Path) -> None:
    # a file, a foreign folder and a place no folder can be made: refused up front, no batch measured
    (tmp_path / "file.csv").write_text("x\n")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine\n")
    cases = [
        (tmp_path / "file.csv", "exists and is not a directory"),
        (tmp_path / "foreign", "exists and is not a memtraffic bundle"),
        (Path("/proc/memtraffic-out"), "cannot write a bundle under /proc"),
    ]
    for out, needle in cases:
        proc = run(
            "profile",
            "h100-sample-moe",
            "--batch",
            "1",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--context",
            "16",
            "--output",
            str(out),
        )
        line = assert_one_line_error(proc, needle)
        assert "partial bundle" not in line and "failed at batch" not in line
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine\n"
    assert_one_line_error(
        run(
            "profile",
            "h100-sample-moe",
            "--batch",
            "1",
            "--steady-seconds",
            "nan",
            "--output",
            str(tmp_path / "p"),
        ),
        "steady time must be a finite number",
    )


def test_bad_values_in_files_are_one_line(tmp_path: Path) -> None:
    cfg = json.loads((ROOT / "tests" / "data" / "hf" / "Mixtral-8x7B.json").read_text())
    for change, needle in (
        ({"num_attention_heads": 0}, "'num_attention_heads' must be at least 1"),
        ({"hidden_size": float("nan")}, "'hidden_size' must be an integer"),
        ({"hidden_size": 1e30}, "less than or equal to 1099511627776"),
    ):
        f = tmp_path / "config.json"
        f.write_text(json.dumps({**cfg, **change}))
        assert_one_line_error(run("simulate", str(f)), needle)
    for body, needle in (
        ("item,count\nabc,3\n", "column 'item' holds a non-number"),
        ("item,count\n1,abc\n", "column 'count' holds a non-number"),
        ("item,count\n1000000000000,3\n", "beyond any layer's items"),
    ):
        h = tmp_path / "hist.csv"
        h.write_text(body)
        assert_one_line_error(run("simulate", "olmoe-1b-7b", "--routing", f"histogram:{h}"), needle)
    assert_one_line_error(
        run("report", "olmoe-1b-7b", "--context", "-1", "-o", str(tmp_path / "r.html")), "context.0"
    )
    # a bundle whose layers table was overwritten by another table
    bundle = tmp_path / "bundle"
    shutil.copytree(ROOT / "traces" / "samples" / "bundles" / "moe", bundle)
    shutil.copy(bundle / "runs.parquet", bundle / "layers.parquet")
    assert_one_line_error(run("validate", str(bundle)), "the layers table lacks column(s) layer")


def test_import_refuses_a_peak_that_is_not_a_bandwidth(tmp_path: Path) -> None:
    runs = json.loads((SAMPLES / "meta.json").read_text())
    for peak, needle in (('"abc"', "must be a number of bytes/s"), ("1e999", "finite number of bytes/s")):
        f = tmp_path / "runs.json"  # 1e999 reads as infinity
        f.write_text(json.dumps({**runs, "peak_hbm_Bps": "PEAK"}).replace('"PEAK"', peak))
        proc = run("import", "--runs", str(f), "--runs-model", "moe", "--output", str(tmp_path / "b"))
        assert_one_line_error(proc, "peak_hbm_Bps", needle)
    assert_one_line_error(
        run("import", "--runs", str(SAMPLES / "meta.json"), "--runs-model", "moe", "--peak-hbm-bps", "-1",
            "--output", str(tmp_path / "b")),
        "--peak-hbm-bps must be a finite number of bytes/s above 0",
    )  # fmt: skip


def test_ctrl_c_ends_with_one_line_and_exit_2(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "profile", "h100-sample-moe", "--batch", "1,2,4,8",
         "--steps", "3", "--warmup", "1", "--output", str(tmp_path / "run")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(3.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0], err


def test_a_bundle_missing_a_table_it_records_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(ROOT / "traces" / "samples" / "bundles" / "moe", bundle)
    (bundle / "kernels.parquet").unlink()
    assert_one_line_error(run("validate", str(bundle)), "records kernels.parquet but the file(s) are gone")


def test_outputs_write_through_links_and_into_devices(tmp_path: Path) -> None:
    target = tmp_path / "real.csv"
    target.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    assert run("simulate", "olmoe-1b-7b", "--batch", "1", "-f", "csv", "-o", str(link)).returncode == 0
    assert link.is_symlink() and target.read_text().startswith("model,hardware")
    assert run("simulate", "olmoe-1b-7b", "--batch", "1", "-f", "csv", "-o", "/dev/null").returncode == 0
    assert Path("/dev/null").is_char_device()
    assert_one_line_error(run("simulate", "olmoe-1b-7b", "-f", "csv", "-o", str(tmp_path)), "is a folder")
    assert_one_line_error(
        run("simulate", "olmoe-1b-7b", "-f", "csv", "-o", "/proc/memtraffic.csv"), "/proc/memtraffic.csv"
    )


def test_import_keeps_the_good_trace_beside_a_foreign_file(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"foo": 1}')
    out = tmp_path / "bundle"
    proc = run("import", str(SAMPLES / "kineto" / "moe_decode_b1.json.gz"), str(foreign), "--batch", "1,8",
               "--context", "1024", "--dtype", "bfloat16", "-o", str(out))  # fmt: skip
    assert_one_line_error(proc, "foreign.json: not a kineto trace", "(partial)")
    from traces.bundle import read_bundle

    b = read_bundle(out)
    assert b.partial and b.table("runs")["batch"].tolist() == [1]
    assert any("foreign.json" in m for m in b.meta["missing"])


def test_a_bundle_is_replaced_only_when_asked(tmp_path: Path) -> None:
    trace = str(SAMPLES / "kineto" / "moe_decode_b1.json.gz")
    out = tmp_path / "bundle"
    args = ("import", trace, "--batch", "1", "--context", "1024", "--dtype", "bfloat16", "-o", str(out))
    assert run(*args).returncode == 0
    before = (out / "bundle.json").read_text()
    assert_one_line_error(run(*args), "already holds a bundle", "--replace")
    assert (out / "bundle.json").read_text() == before  # untouched
    assert run(*args, "--replace").returncode == 0


def test_output_to_dev_stdout_into_a_pipe_and_an_appended_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    cmd = [sys.executable, str(ROOT / "cli.py"), "simulate", "olmoe-1b-7b", "--batch", "1", "-f", "csv"]
    piped = subprocess.run([*cmd, "-o", "/dev/stdout"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.splitlines()[0].startswith("model,hardware") and len(piped.stdout.splitlines()) == 2
    log = tmp_path / "log.txt"
    log.write_text("previous line\n")
    with open(log, "a") as out:  # `>> log.txt`: what was there stays
        done = subprocess.run([*cmd, "-o", "/dev/stdout"], stdout=out, stderr=subprocess.PIPE, cwd=ROOT,
                              timeout=120)  # fmt: skip
    assert done.returncode == 0
    lines = log.read_text().splitlines()
    assert lines[0] == "previous line" and lines[1].startswith("model,hardware") and len(lines) == 3


def test_demo_runs_the_main_job_on_the_embedded_data(tmp_path: Path) -> None:
    """`memtraffic demo`, the README's main job: every table and the report from the committed H100 data."""
    out = tmp_path / "demo"
    proc = run("demo", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    html = (out / "report.html").read_text()
    assert "olmoe-like-d2048-8L" in html and "umv2-like-d2048-8L" in html and "h100-sample-moe" in html
    for name in ("moe", "umv2", "h100-moe", "h100-umv2"):
        steps = pd.read_csv(out / f"validation-{name}" / "steps.csv")
        # batch 1 reads the weights once: the ideal level against the GPU's own GPM bytes
        assert abs(steps.set_index("batch").loc[1, "err_ideal_pct"]) < 5, name
    profiled = pd.read_csv(out / "validation-h100-moe" / "steps.csv")
    assert list(profiled["batch"]) == [1, 4, 16, 64, 256, 1024, 4096]

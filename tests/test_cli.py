"""The command line as a user runs it: real processes, exit codes and what they print."""

from __future__ import annotations

import json
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_compare_prints_weight_bytes_and_ratio_per_batch() -> None:
    proc = run("compare", "olmoe-1b-7b", "ultramemv2-1b-7b", "--batch", "1:4096", "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(StringIO(proc.stdout))
    assert list(df["batch"]) == [2**i for i in range(13)]
    ratio = df["weight ratio olmoe-1b-7b/ultramemv2-1b-7b"]
    expected = df["olmoe-1b-7b weight_bytes"] / df["ultramemv2-1b-7b weight_bytes"]
    assert ratio.to_numpy() == pytest.approx(expected.to_numpy())
    # at batch 1 both read about the same weights; the MoE saturates at all experts by batch ~64
    assert ratio.iloc[0] == pytest.approx(1.0, abs=0.1)
    assert ratio[df["batch"] == 64].iloc[0] > 3


def test_simulate_per_layer_json_and_parquet(tmp_path: Path) -> None:
    proc = run("simulate", "mixtral-8x7b", "--batch", "1,8", "--context", "1024", "--per-layer", "-f", "json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {r["layer"] for r in rows} >= {"block0.attn", "block31.moe", "total"}
    out = tmp_path / "sim.parquet"
    proc = run("simulate", "llama-3.1-8b", "--phase", "prefill", "-f", "parquet", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert set(pd.read_parquet(out)["phase"]) == {"prefill"}


def test_set_override_changes_top_k() -> None:
    base = run("simulate", "olmoe-1b-7b", "--batch", "4", "-f", "csv")
    more = run("simulate", "olmoe-1b-7b", "--batch", "4", "--set", "top_k=16", "-f", "csv")
    assert base.returncode == more.returncode == 0
    a, b = pd.read_csv(StringIO(base.stdout)).iloc[0], pd.read_csv(StringIO(more.stdout)).iloc[0]
    assert b["flops"] > a["flops"] and b["weight_bytes_ideal"] > a["weight_bytes_ideal"]


def test_bad_input_top_k_above_experts() -> None:
    assert_one_line_error(run("simulate", "olmoe-1b-7b", "--set", "top_k=100"), "top_k", "n_experts")


def test_bad_input_negative_size() -> None:
    assert_one_line_error(run("simulate", "olmoe-1b-7b", "--batch", "-4"), "batch")
    assert_one_line_error(run("simulate", "olmoe-1b-7b", "--set", "d_model=-5"), "d_model")


def test_bad_input_unknown_preset_suggests_names() -> None:
    line = assert_one_line_error(run("simulate", "olmoe-1b-8b"), "olmoe-1b-8b")
    assert "olmoe-1b-7b" in line


def test_bad_input_malformed_json_and_yaml(tmp_path: Path) -> None:
    bad_json = tmp_path / "model.json"
    bad_json.write_text('{"name": "x", "d_model": 12,, }')
    assert_one_line_error(run("simulate", str(bad_json)), "model.json")
    bad_yaml = tmp_path / "model.yaml"
    bad_yaml.write_text("name: x\nblocks: [\n  - {repeat: 2\n")
    assert_one_line_error(run("simulate", str(bad_yaml)), "model.yaml")


def test_bad_input_unsupported_hf_architecture(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(
        json.dumps({"model_type": "zamba2", "architectures": ["Zamba2ForCausalLM"], "hidden_size": 768})
    )
    assert_one_line_error(run("simulate", str(cfg)), "zamba2")


def test_bad_input_workload_and_format() -> None:
    assert_one_line_error(run("simulate", "olmoe-1b-7b", "--phase", "train"), "phase")
    assert_one_line_error(run("simulate", "olmoe-1b-7b", "--format", "xml"), "format")
    assert_one_line_error(run("compare", "olmoe-1b-7b"), "two")
    assert_one_line_error(run("simulate", "olmoe-1b-7b", "--hardware", "h900"), "h900")


def test_weight_dtype_per_layer_kind() -> None:
    proc = run(
        "simulate",
        "olmoe-1b-7b",
        "--batch",
        "1",
        "--per-layer",
        "--weight-dtype",
        "bf16,moe=mxfp4",
        "--format",
        "csv",
    )
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(StringIO(proc.stdout)).set_index("layer")
    assert df.loc["block0.moe", "weight_dtype"] == "mxfp4" and df.loc["block0.attn", "weight_dtype"] == "bf16"
    assert df.loc["total", "weight_dtype"] == "bf16, moe=mxfp4"
    assert_one_line_error(
        run("simulate", "olmoe-1b-7b", "--weight-dtype", "bf16,fp8"), "more than one default"
    )
    assert_one_line_error(
        run("simulate", "olmoe-1b-7b", "--weight-dtype", "bf16,experts=fp8"), "--weight-dtype experts:"
    )
    assert_one_line_error(
        run("simulate", "olmoe-1b-7b", "--weight-dtype", "moe=fp3"), "--weight-dtype", "fp8"
    )


def test_presets_lists_models_and_hardware() -> None:
    proc = run("presets")
    assert proc.returncode == 0
    for name in ("olmoe-1b-7b", "ultramemv2-1b-7b", "deepseek-v3", "h100-sxm", "b200"):
        assert name in proc.stdout


def test_simulate_table_says_which_steps_fit_in_l2(tmp_path: Path) -> None:
    # 2 blocks of d 512: about 8.9 MB of weights, under the H100's 50 MB L2 at batch 1, but not with the
    # KV cache of 256 sequences of 2048 tokens (1 GB)
    model = tmp_path / "tiny.yaml"
    model.write_text(
        "name: tiny\nd_model: 512\nvocab_size: 1000\ntie_embeddings: true\nblocks:\n"
        "  - repeat: 2\n    attention: {kind: mha, n_heads: 8, head_dim: 64}\n"
        "    ffn: [{kind: dense, d_ff: 2048}]\n"
    )
    proc = run("simulate", str(model), "--batch", "1,256")
    assert proc.returncode == 0, proc.stderr
    caption = " ".join(proc.stdout.split()).split("batch 1 context 2048", 1)
    assert len(caption) == 2 and "served from L2" in caption[1], proc.stdout
    assert "batch 256 context" not in caption[1]


def test_compare_what_if_variants_of_one_model() -> None:
    proc = run("compare", "olmoe-1b-7b", "--vary", "top_k=4,8", "--batch", "1,64", "-f", "csv")
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(StringIO(proc.stdout)).set_index("batch")
    # the top_k=8 variant is the preset itself
    plain = pd.read_csv(StringIO(run("simulate", "olmoe-1b-7b", "--batch", "1,64", "-f", "csv").stdout))
    assert df["olmoe-1b-7b top_k=8 weight_bytes"].to_numpy() == pytest.approx(plain["weight_bytes_ideal"])
    # batch 1: 4 of 64 experts (3 x 2048 x 1024 bf16 each) per layer x 16 layers fewer than top-8
    saved = 16 * 4 * 3 * 2048 * 1024 * 2
    diff = df.loc[1, "olmoe-1b-7b top_k=8 weight_bytes"] - df.loc[1, "olmoe-1b-7b top_k=4 weight_bytes"]
    assert diff == pytest.approx(saved, rel=1e-12)


def test_compare_one_model_on_two_gpus() -> None:
    import yaml

    proc = run("compare", "olmoe-1b-7b", "--hardware", "h100-sxm,b200", "--batch", "1", "-f", "csv")
    assert proc.returncode == 0, proc.stderr
    row = pd.read_csv(StringIO(proc.stdout)).iloc[0]
    assert row["olmoe-1b-7b @h100-sxm bytes"] == row["olmoe-1b-7b @b200 bytes"]
    # memory-bound at batch 1: the time ratio is the ratio of the datasheet bandwidths
    bw = {
        n: yaml.safe_load((ROOT / "simulator" / "presets" / "hardware" / f"{n}.yaml").read_text())[
            "hbm_bandwidth"
        ]["value"]
        for n in ("h100-sxm", "b200")
    }
    ratio = row["time ratio olmoe-1b-7b @h100-sxm/olmoe-1b-7b @b200"]
    assert ratio == pytest.approx(float(bw["b200"]) / float(bw["h100-sxm"]), rel=1e-9)


def test_compare_refuses_indistinguishable_variants() -> None:
    assert_one_line_error(run("compare", "olmoe-1b-7b", "olmoe-1b-7b"), "appear twice", "--vary")
    assert_one_line_error(run("compare", "olmoe-1b-7b"), "at least two variants")
    assert_one_line_error(run("compare", "olmoe-1b-7b", "--vary", "top_k"), "--vary 'top_k'")


def test_calibration_names_its_gpu_and_warns_where_it_does_not_fit(tmp_path: Path) -> None:
    cal = tmp_path / "cal.json"
    bundle = ROOT / "traces" / "samples" / "bundles" / "umv2"
    fit = run("validate", str(bundle), "--save-calibration", str(cal))
    assert fit.returncode == 0, fit.stderr
    assert json.loads(cal.read_text())["hardware"] == "h100-sxm"  # the preset the H100 recording matched
    same = run("simulate", "h100-sample-umv2", "--calibration", str(cal), "-b", "1")
    assert same.returncode == 0 and "warning" not in same.stderr, same.stderr
    assert f"calibrated by {cal}" in " ".join(same.stdout.split())  # the title says so
    other = run("simulate", "h100-sample-umv2", "--calibration", str(cal), "-b", "1", "-H", "b200")
    assert other.returncode == 0, other.stderr
    assert "fitted on h100-sxm; applied as it is to b200" in other.stderr
    # the MoE sample has layer kinds the UltraMemV2-like recording never measured
    moe = run("simulate", "h100-sample-moe", "--calibration", str(cal), "-b", "1")
    assert moe.returncode == 0, moe.stderr
    assert "no fit for moe layers" in moe.stderr and "fitted on" not in moe.stderr


def test_compare_marks_steps_that_do_not_fit() -> None:
    proc = run("compare", "olmoe-1b-7b", "ultramemv2-1b-7b", "-b", "64,256", "-f", "csv")
    assert proc.returncode == 0, proc.stderr
    cmp = pd.read_csv(StringIO(proc.stdout)).set_index("batch")
    # OLMoE at batch 256, context 2048: the KV cache alone is 2 x 16 layers x 16 heads x 128 x 2 B per
    # token x 256 x 2048 tokens = 68.7 GB, with 13.8 GB of weights: over the H100's 80 GB
    kv = 2 * 16 * 16 * 128 * 2 * 256 * 2048
    assert kv + 13.8e9 > 80e9
    assert cmp.loc[64, "olmoe-1b-7b fits"] and not cmp.loc[256, "olmoe-1b-7b fits"]
    assert cmp.loc[256, "olmoe-1b-7b memory_bytes"] > kv
    table = run("compare", "olmoe-1b-7b", "ultramemv2-1b-7b", "-b", "64,256")
    text = " ".join(table.stdout.split())
    assert "olmoe-1b-7b from batch 256" in text and " * " in text


def test_weight_dtype_takes_the_layer_names_short_forms() -> None:
    def weights(spec: str) -> pd.Series:
        args = ("-b", "8", "--per-layer", "-f", "csv", "--weight-dtype", spec)
        proc = run("simulate", "ultramemv2-1b-7b", *args)
        assert proc.returncode == 0, proc.stderr
        return pd.read_csv(StringIO(proc.stdout)).set_index("layer")["weight_bytes_ideal"]

    short, full = weights("bf16,attn=fp8,memory=int4"), weights("bf16,attention=fp8,ultramemv2=int4")
    pd.testing.assert_series_equal(short, full)
    plain = weights("bf16")
    # fp8 halves the attention weights; int4 quarters the memory layer's rows and projections while its
    # retrieval (query 2048 x 4 x 512, sub-keys 2 x 528 x 512 x 2, cores 8: bf16) stays; the FFN keeps bf16
    retrieval = (2048 * 4 * 512 + 2 * 528 * 512 * 2 + 8) * 2
    assert short["block0.attn"] == pytest.approx(plain["block0.attn"] / 2)
    assert short["block0.memory"] == pytest.approx((plain["block0.memory"] - retrieval) / 4 + retrieval)
    assert short["block0.ffn"] == plain["block0.ffn"]


def test_ranges_end_where_asked_and_logits_all_is_prefill_only() -> None:
    proc = run("simulate", "olmoe-1b-7b", "-b", "3:24", "-f", "csv")
    assert list(pd.read_csv(StringIO(proc.stdout))["batch"]) == [3, 6, 12, 24]
    assert_one_line_error(run("simulate", "olmoe-1b-7b", "-b", "1:5"), "end the range at 4 or 8")
    assert_one_line_error(run("simulate", "olmoe-1b-7b", "--logits", "all"), "prefill")
    assert run("simulate", "olmoe-1b-7b", "--phase", "prefill", "--logits", "all", "-c", "16").returncode == 0


def test_compare_of_many_variants_is_one_row_per_variant() -> None:
    proc = run("compare", "olmoe-1b-7b", "--vary", "top_k=2,4,8,16", "-b", "1")
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if "top_k=" in line and "│" in line]
    assert len(rows) == 4  # one per variant, not one wide row
    # batch 1 by hand, per layer x 16: attention 4 x 2048^2 x 2 B = 33.6 MB, an expert 3 x 2048 x 1024 x 2 B
    # = 12.6 MB; plus the LM head 50304 x 2048 x 2 B = 206 MB: top-2 / top-8 weights
    att, expert, head = 16 * 4 * 2048**2 * 2, 16 * 3 * 2048 * 1024 * 2, 50304 * 2048 * 2
    expected = (att + 2 * expert + head) / (att + 8 * expert + head)
    top8 = next(r for r in rows if r.split("│")[2].strip().endswith("top_k=8"))
    cells = [c.strip() for c in top8.split("│")]
    assert "4 variants" in proc.stdout and "first/this" in proc.stdout
    assert float(cells[-3].removesuffix("x")) == pytest.approx(expected, abs=0.006)


def test_errors_name_the_flag_and_files_take_their_suffix(tmp_path: Path) -> None:
    assert_one_line_error(run("simulate", "olmoe-1b-7b", "--tp", "0"), "--tp:")
    assert_one_line_error(run("latency", "olmoe-1b-7b", "--prompt", str(2**41)), "--prompt 2199023255552")
    # a .json name gets JSON without --format; a --format that contradicts the name is refused
    out = tmp_path / "x.json"
    assert run("simulate", "olmoe-1b-7b", "-b", "1", "-o", str(out)).returncode == 0
    assert json.loads(out.read_text())[0]["model"] == "olmoe-1b-7b"
    assert_one_line_error(
        run("simulate", "olmoe-1b-7b", "-b", "1", "-f", "parquet", "-o", str(tmp_path / "x.csv")), "rename"
    )
    assert not (tmp_path / "x.csv").exists()


def test_past_the_models_max_positions_warns_and_still_costs() -> None:
    # OLMoE-1B-7B's config.json sets max_position_embeddings 4096; a decode step at context c holds c + 1
    at_limit = run("simulate", "olmoe-1b-7b", "--batch", "1", "--context", "4095", "-f", "csv")
    assert at_limit.returncode == 0 and "warning" not in at_limit.stderr, at_limit.stderr
    past = run("simulate", "olmoe-1b-7b", "--batch", "1", "--context", "4096", "-f", "csv")
    assert past.returncode == 0, past.stderr
    assert "olmoe-1b-7b: --context 4096 needs 4097 positions, past the 4096" in past.stderr
    assert pd.read_csv(StringIO(past.stdout))["context"].tolist() == [4096]  # costed as asked
    # prefill: the cached prefix and the prompt together
    chunk = run(
        "simulate", "olmoe-1b-7b", "--phase", "prefill", "--prefix", "4000", "--context", "97", "-f", "csv"
    )
    assert "--prefix 4000 --context 97 needs 4097 positions" in chunk.stderr
    # a request's last decode step feeds position prompt + generate - 1; a model that states no limit
    # (the UltraMemV2 preset) gets no warning
    fits = run("latency", "olmoe-1b-7b", "ultramemv2-1b-7b", "-p", "4000", "-g", "97", "-b", "1", "-f", "csv")
    assert fits.returncode == 0 and "warning" not in fits.stderr, fits.stderr
    over = run("latency", "olmoe-1b-7b", "ultramemv2-1b-7b", "-p", "4000", "-g", "98", "-b", "1", "-f", "csv")
    assert over.returncode == 0, over.stderr
    assert [line for line in over.stderr.splitlines() if line.strip()] == [
        "memtraffic: warning: olmoe-1b-7b: --prompt 4000 --generate 98 needs 4097 positions, past the 4096 "
        "it is set up for (max_position_embeddings); costed as asked"
    ]


def test_report_warns_past_the_models_max_positions(tmp_path: Path) -> None:
    # the report's request: a prompt of --context tokens, then --generate tokens out
    args = ("report", "olmoe-1b-7b", "-b", "1", "-o")
    fits = run(*args, str(tmp_path / "a.html"), "--context", "4000", "--generate", "97")
    assert fits.returncode == 0 and "warning" not in fits.stderr, fits.stderr
    over = run(*args, str(tmp_path / "b.html"), "--context", "4000", "--generate", "98")
    assert over.returncode == 0 and (tmp_path / "b.html").is_file(), over.stderr
    assert "olmoe-1b-7b: --context 4000 --generate 98 needs 4097 positions, past the 4096" in over.stderr


def test_serve_prints_the_steady_state_and_finds_the_largest_concurrency() -> None:
    proc = run("serve", "olmoe-1b-7b", "ultramemv2-1b-7b", "-n", "1,64", "-f", "csv")
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(StringIO(proc.stdout))
    assert list(zip(df["model"], df["concurrency"], strict=True)) == [
        ("olmoe-1b-7b", 1),
        ("olmoe-1b-7b", 64),
        ("ultramemv2-1b-7b", 1),
        ("ultramemv2-1b-7b", 64),
    ]
    # 64 sequences over 255 decode steps each: a 2048-token prompt on 64/255 of the steps
    assert df.loc[1, "prefill_share"] == pytest.approx(64 / 255)
    assert (df["mixed_step_s"] > df["decode_step_s"]).all()
    target = run("serve", "olmoe-1b-7b", "ultramemv2-1b-7b", "--tpot", "5ms", "-f", "csv")
    assert target.returncode == 0, target.stderr
    best = pd.read_csv(StringIO(target.stdout))
    assert list(best["limit"]) == ["tpot", "tpot"] and (best["tpot_s"] <= 5e-3).all()
    assert (best["concurrency"] >= 1).all()


@pytest.mark.parametrize(
    "args,needles",
    [
        (("-n", "64", "--tpot", "5ms"), ("--concurrency and --tpot",)),
        (("-n", "0"), ("--concurrency: sizes must be positive",)),
        (("-n", "1:5"), ("--concurrency 1:5",)),
        (("-n", "64", "--token-budget", "1"), ("--token-budget 1",)),
        (
            (
                "-g",
                "1",
            ),
            ("--generate 1",),
        ),
        (
            (
                "--tpot",
                "fast",
            ),
            ("--tpot",),
        ),
    ],
)
def test_serve_bad_input_is_one_line(args: tuple[str, ...], needles: tuple[str, ...]) -> None:
    assert_one_line_error(run("serve", "olmoe-1b-7b", *args), *needles)


def test_serve_with_expert_parallelism_is_per_rank() -> None:
    one = pd.read_csv(StringIO(run("serve", "olmoe-1b-7b", "-n", "16", "-f", "csv").stdout)).iloc[0]
    four = run("serve", "olmoe-1b-7b", "-n", "64", "--ep", "4", "-f", "csv")
    assert four.returncode == 0, four.stderr
    r = pd.read_csv(StringIO(four.stdout)).iloc[0]
    # 64 sequences over 4 ranks: each rank's 16 bring its prompts as one rank of 16 would
    assert r["ep"] == 4 and r["prefill_share"] == pytest.approx(one["prefill_share"])
    assert r["tokens_per_s"] == pytest.approx(64 * 256 / 255 / r["tpot_s"])

"""Validation (predicted beside measured) and calibration, on the recorded samples or a tiny bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reports.calibration import fit_efficiency, load_calibration, save_calibration
from reports.validation import ValidationResult, pct_error, validate
from simulator.config import HardwareConfig, ModelConfig
from simulator.errors import ConfigError, TraceError
from traces.bundle import read_bundle, write_bundle

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "traces" / "samples" / "bundles"
DEVICE = "NVIDIA H100 80GB HBM3"
PEAK = 3.352e12
T0 = 1_795_702_254_000_000_000  # wall-clock ns, like the recordings

TINY_MODEL = {
    "name": "tiny-moe",
    "d_model": 64,
    "vocab_size": 128,
    "embeddings": False,
    "blocks": [
        {
            "repeat": 2,
            "attention": {"kind": "gqa", "n_heads": 4, "n_kv_heads": 2, "head_dim": 16},
            "ffn": [{"kind": "moe", "n_experts": 8, "top_k": 2, "expert_ffn": 32}],
        }
    ],
}
TINY_HW = {
    "name": "tiny-gpu",
    "peak_flops": {"bf16": {"value": 1e15, "tag": "user"}},
    "hbm_bandwidth": {"value": 3.0e12, "tag": "user"},
    "hbm_capacity": {"value": 8e10, "tag": "user"},
    "l2_bytes": {"value": 5e7, "tag": "user"},
}


def tiny_hardware() -> HardwareConfig:
    return HardwareConfig.model_validate(TINY_HW)


def make_tiny_bundle(
    path: Path,
    model: dict | None = None,
    batches: tuple[int, ...] = (1, 8),
    kernel_time_ns=None,
    steps: int = 2,
    graph_us_per_step: float | None = None,
) -> Path:
    """A small but complete bundle: runs, kernels, layers, nvml, routing; one kernel per layer and step.

    `kernel_time_ns(batch, layer) -> ns` sets each layer's kernel time (default: a fixed guess).
    """
    from traces.attribution import layer_table

    model = model or TINY_MODEL
    cfg = ModelConfig.model_validate(model)
    blocks = cfg.n_layers
    rng = np.random.default_rng(0)
    runs, kernels, routing, nvml = [], [], [], []
    t = T0
    for b in batches:
        start = t
        for step in range(steps):
            for blk in range(blocks):
                for sub in ("attn", "moe"):
                    layer = f"block{blk}.{sub}"
                    # float durations keep a synthetic kernel time exact (recorded ones are whole ns)
                    dur = kernel_time_ns(b, layer) if kernel_time_ns else 20_000 + 100 * b
                    kernels.append(
                        {
                            "batch": b,
                            "step": step,
                            "layer": layer,
                            "block": blk,
                            "sublayer": sub,
                            "kernel": f"k_{sub}",
                            "ts_ns": t,
                            "dur_ns": dur,
                            "correlation": len(kernels),
                            "stream": 7,
                            "category": "kernel",
                        }
                    )
                    t += int(dur) + 1_000
                    if sub == "moe":
                        for _ in range(b):
                            for item in rng.choice(8, size=2, replace=False):
                                routing.append(
                                    {"batch": b, "step": step, "layer": layer, "item": int(item), "count": 1}
                                )
        steady_start, steady_end = t, t + 1_000_000_000
        n_steady = 100
        for w in range(10):
            nvml.append(
                {
                    "t_start_ns": steady_start + w * 100_000_000,
                    "t_end_ns": steady_start + (w + 1) * 100_000_000,
                    "gpm_dram_bw_util_pct": 1.0 + b / 10,
                    "gpm_sm_util_pct": 5.0,
                    "gpm_tensor_util_pct": 1.0,
                    "util_gpu_pct": 50.0,
                    "util_mem_pct": 10.0,
                    "power_mw": 100_000.0,
                    "energy_mj": 1e6 + w,
                    "sm_clock_mhz": 1980.0,
                    "mem_clock_mhz": 2619.0,
                }
            )
        gpm_bytes = (1.0 + b / 10) / 100 * PEAK * 1.0 / n_steady
        runs.append(
            {
                "batch": b,
                "steps": n_steady,
                "us_per_step": 1e6 / n_steady,
                "window_s": 1.0,
                "gpm_bytes_per_step": gpm_bytes,
                "gpm_bw_Bps": gpm_bytes * n_steady,
                "mean_dram_util_pct": 1.0 + b / 10,
                "energy_j_per_step": 0.01,
                "steady_start_ns": steady_start,
                "steady_end_ns": steady_end,
                "profile_start_ns": start,
                **({"us_per_step_graph": graph_us_per_step} if graph_us_per_step is not None else {}),
            }
        )
        t = steady_end + 100_000_000
    # ncu: one kernel per layer and step (cold-L2 DRAM bytes), as profiler.run's ncu pass records them
    ncu = [
        {
            "batch": k["batch"],
            "step": k["step"],
            "kernel_id": i,
            "kernel": k["kernel"],
            "nvtx_stack": f"measure/batch{k['batch']}/step{k['step']}/{k['layer']}",
            "layer": k["layer"],
            "dram_bytes_read": 40_000.0 * (1 + k["block"]),
            "dram_bytes_write": 4_000.0,
            "duration_ns": float(k["dur_ns"]),
            "l2_bytes": 50_000.0,
        }
        for i, k in enumerate(kernels)
    ]
    # routing counts aggregated per (batch, step, layer, item), as the profiler records them
    rt = pd.DataFrame(routing).groupby(["batch", "step", "layer", "item"], as_index=False)["count"].sum()
    kt = pd.DataFrame(kernels)
    meta = {
        "source": "profiled",
        "model": {"name": cfg.name, "config": model},
        "device": {"name": DEVICE, "peak_hbm_Bps": PEAK, "peak_source": "test"},
        "workload": {"phase": "decode", "context": 256, "dtype": "bfloat16"},
        "runs": [{"batch": b} for b in batches],
        "provenance": {"note": "synthetic test bundle"},
        "extra": {"ncu": {"cache_mode": "flush-all", "steps_per_batch": steps}},
    }
    tables = {
        "runs": pd.DataFrame(runs),
        "kernels": kt,
        "layers": layer_table(kt),
        "nvml": pd.DataFrame(nvml),
        "routing": rt,
        "ncu": pd.DataFrame(ncu),
    }
    return write_bundle(path, meta, tables)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny")


def sample_bundles() -> list[Path]:
    return [SAMPLES / n for n in ("moe", "umv2") if (SAMPLES / n / "bundle.json").is_file()]


def _validate_any(path: Path) -> ValidationResult:
    if path.name == "tiny":
        return validate(read_bundle(path), hardware=tiny_hardware())
    return validate(read_bundle(path))


def _bundles(tiny: Path) -> list[Path]:
    """The recorded samples where present (no routing table: imports lack it), and always the tiny one."""
    return [*sample_bundles(), tiny]


# ------------------------------------------------------------------------------------------ validate


def test_validate_rows_and_errors(tiny: Path) -> None:
    for path in _bundles(tiny):
        res = _validate_any(path)
        meta_batches = sorted(int(b) for b in read_bundle(path).table("runs")["batch"])
        assert sorted(res.steps["batch"]) == meta_batches
        # whole step: bytes at every level, measured GPM bytes, finite signed errors recomputed by hand
        for level in ("ideal", "naive"):
            err = res.steps[f"err_{level}_pct"].to_numpy()
            assert np.isfinite(err).all(), (path, level)
            by_hand = (
                (res.steps[f"pred_bytes_{level}"] - res.steps["meas_bytes_gpm"])
                / res.steps["meas_bytes_gpm"]
                * 100
            )
            np.testing.assert_allclose(err, by_hand.to_numpy(), rtol=1e-12)
        assert np.isfinite(res.steps["err_time_step_pct"]).all()
        assert np.isfinite(res.steps["err_time_kernel_pct"]).all()
        share = res.steps["bw_share_of_peak"]
        np.testing.assert_allclose(
            share, res.steps["meas_bytes_gpm"] / res.steps["meas_step_s"] / res.peak_Bps
        )
        # per layer and batch: every predicted layer has a measured kernel time and a finite error
        lay = res.layers
        assert set(lay["batch"]) == set(meta_batches)
        matched = lay.dropna(subset=["kind", "meas_kernel_s"])
        assert len(matched) >= 2 * len(meta_batches)
        assert np.isfinite(matched["err_time_pct"]).all()
        by_hand = (matched["pred_time_s"] - matched["meas_kernel_s"]) / matched["meas_kernel_s"] * 100
        np.testing.assert_allclose(matched["err_time_pct"], by_hand, rtol=1e-12)
        np.testing.assert_allclose(
            matched["achieved_bw_Bps"], matched["pred_bytes_ideal"] / matched["meas_kernel_s"]
        )
        # routing: measured distinct items beside the formula, for every sparse layer
        rt = res.routing.dropna(subset=["meas_distinct"])
        if read_bundle(path).table("routing") is not None:
            assert len(rt) == len(res.routing) > 0
            assert np.isfinite(rt["pred_distinct"]).all() and np.isfinite(rt["err_distinct_pct"]).all()
            assert (rt["meas_distinct"] <= rt["meas_requested"]).all()
        else:
            assert rt.empty and res.routing["pred_distinct"].notna().all()
        assert {"median_abs_err_pct", "mape_pct"} <= set(res.summary.columns)
        assert (res.summary["mape_pct"] >= res.summary["median_abs_err_pct"] * 0).all()
        assert res.summary["n"].min() >= 1


def test_ncu_bytes_per_layer_and_step(tiny: Path) -> None:
    res = validate(read_bundle(tiny), hardware=tiny_hardware())
    lay = res.layers.set_index(["batch", "layer"])
    # per step: the mean over profiled steps of the per-layer kernel sums
    assert lay.loc[(1, "block1.moe"), "meas_bytes_ncu"] == pytest.approx(2 * 40_000 + 4_000)
    by_hand = (lay["pred_bytes_ideal"] - lay["meas_bytes_ncu"]) / lay["meas_bytes_ncu"] * 100
    np.testing.assert_allclose(lay["err_ideal_ncu_pct"], by_hand)
    steps = res.steps.set_index("batch")
    assert steps.loc[1, "meas_bytes_ncu"] == pytest.approx(lay.xs(1)["meas_bytes_ncu"].sum())
    assert np.isfinite(res.steps["err_ideal_ncu_pct"]).all()
    assert any(n.startswith("ncu: DRAM bytes per kernel, cache mode flush-all") for n in res.notes)
    assert {"bytes_ideal vs ncu"} <= set(res.summary.loc[res.summary["kind"] == "moe", "metric"])


def test_bandwidth_override_is_stated(tiny: Path) -> None:
    res = validate(read_bundle(tiny), hardware=tiny_hardware())
    assert res.hardware.hbm_bandwidth.value == PEAK
    assert res.hardware.hbm_bandwidth.tag == "measured"
    assert any("peak_hbm_Bps" in n for n in res.notes)


def test_device_preset_mapping(tiny: Path) -> None:
    try:
        from simulator.loading import load_hardware

        load_hardware("h100-sxm")
    except Exception as exc:  # the preset lands with the presets work
        pytest.skip(f"h100-sxm preset not available yet ({exc})")
    res = validate(read_bundle(tiny))
    assert res.hardware.name.lower().startswith("h100")
    assert res.peak_Bps == PEAK


def test_pct_error_signs() -> None:
    np.testing.assert_allclose(pct_error(np.array([110.0, 90.0]), np.array([100.0, 100.0])), [10.0, -10.0])
    assert np.isnan(pct_error(np.array([1.0]), np.array([0.0]))).all()


def test_named_model_must_match_bundle(tiny: Path) -> None:
    other = json.loads(json.dumps(TINY_MODEL))
    other["name"] = "other-moe"
    other["blocks"][0]["ffn"][0]["n_experts"] = 16
    with pytest.raises(TraceError) as exc:
        validate(read_bundle(tiny), model=ModelConfig.model_validate(other), hardware=tiny_hardware())
    msg = str(exc.value)
    assert "\n" not in msg and "records model tiny-moe, not other-moe" in msg
    # the same shapes under another name (a preset of the recorded model) are accepted
    alias = dict(TINY_MODEL, name="tiny-moe-preset")
    res = validate(read_bundle(tiny), model=ModelConfig.model_validate(alias), hardware=tiny_hardware())
    assert res.model == "tiny-moe-preset"


def test_sample_bundle_against_the_other_preset() -> None:
    """A preset of the other recorded model is refused, the matching one accepted."""
    if not sample_bundles():
        pytest.skip("sample bundles not present")
    from simulator.loading import load_model

    recorded = read_bundle(SAMPLES / "moe").meta["model"]["name"]
    with pytest.raises(TraceError) as exc:
        validate(SAMPLES / "moe", model=load_model("h100-sample-umv2"), levels=("ideal",))
    assert str(exc.value) == f"bundle {SAMPLES / 'moe'} records model {recorded}, not h100-sample-umv2"
    res = validate(SAMPLES / "umv2", model=load_model("h100-sample-umv2"), levels=("ideal",))
    assert res.model == "h100-sample-umv2"


def test_foreign_model_description_finds_its_preset() -> None:
    """An import may record the recording's own model description (not our schema): the preset whose
    shape numbers match it is chosen, and the other sample preset is not."""
    from reports.model_match import _foreign_fingerprint, _matches_foreign, _presets_matching
    from simulator.loading import load_model

    meta_file = ROOT / "traces" / "samples" / "h100-decode-2026-11-26" / "meta.json"
    models = json.loads(meta_file.read_text())["models"]
    moe = _foreign_fingerprint({**models["common"], **models["moe"]})
    umv2 = _foreign_fingerprint({**models["common"], **models["umv2"]})
    assert [m.name for m in _presets_matching(moe, "moe")][:1] == ["h100-sample-moe"]
    assert [m.name for m in _presets_matching(umv2, "umv2")][:1] == ["h100-sample-umv2"]
    assert not _matches_foreign(load_model("h100-sample-umv2"), moe)
    assert not _matches_foreign(load_model("h100-sample-moe"), umv2)


def test_validate_run_writes_tables(tiny: Path, tmp_path: Path) -> None:
    from rich.console import Console

    from reports.validation import validate_run

    console = Console(record=True, width=220)
    res = validate_run(tiny, output=tmp_path / "v.parquet", console=console)
    assert (tmp_path / "v.parquet").is_file() and "wrote" in console.export_text()
    assert res.hardware.name == "h100-sxm"  # the device's preset, its bandwidth from the bundle
    assert res.peak_Bps == PEAK


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(TraceError) as exc:
        validate(tmp_path / "nope")
    assert "nope" in str(exc.value) and "\n" not in str(exc.value)


def test_older_version_message_passes_through(tmp_path: Path) -> None:
    path = make_tiny_bundle(tmp_path / "old", batches=(1,))
    meta_file = path / "bundle.json"
    meta = json.loads(meta_file.read_text())
    meta["version"] = 0
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(TraceError) as direct:
        read_bundle(path)
    with pytest.raises(TraceError) as exc:
        validate(path, hardware=tiny_hardware())
    assert str(exc.value) == str(direct.value)
    assert "version" in str(exc.value) and "\n" not in str(exc.value)


def test_unknown_device_needs_hardware(tmp_path: Path) -> None:
    path = make_tiny_bundle(tmp_path / "dev", batches=(1,))
    meta = json.loads((path / "bundle.json").read_text())
    meta["device"]["name"] = "Some Future GPU"
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError) as exc:
        validate(path)
    assert "Some Future GPU" in str(exc.value) and "\n" not in str(exc.value)


def test_to_files_and_render(tiny: Path, tmp_path: Path) -> None:
    res = validate(read_bundle(tiny), hardware=tiny_hardware())
    written = res.to_files(tmp_path / "out", "parquet")
    assert sorted(p.name for p in written) == [
        "layers.parquet",
        "routing.parquet",
        "steps.parquet",
        "summary.parquet",
    ]
    back = pd.read_parquet(tmp_path / "out" / "steps.parquet")
    np.testing.assert_allclose(back["err_ideal_pct"], res.steps["err_ideal_pct"])
    (single,) = res.to_files(tmp_path / "all.csv")
    stacked = pd.read_csv(single)
    assert set(stacked["table"]) == {"steps", "layers", "routing", "summary"}
    assert not list(tmp_path.glob(".*.tmp"))  # no temp files left behind
    with pytest.raises(ConfigError):
        res.to_files(tmp_path / "x.json")

    from rich.console import Console

    console = Console(record=True, width=200)
    res.render(console)
    text = console.export_text()
    assert "per layer" in text and "block1.moe" in text and "summary" in text


# ------------------------------------------------------------------------------------------ calibration


def test_calibration_half_of_peak(tmp_path: Path) -> None:
    """Kernel time = predicted ideal bytes / (0.5 x peak) for every layer gives efficiency 0.5."""
    cfg = ModelConfig.model_validate(TINY_MODEL)
    first = validate(make_tiny_bundle(tmp_path / "probe", batches=(1, 8, 64)), hardware=tiny_hardware())
    pred = first.layers.set_index(["batch", "layer"])["pred_bytes_ideal"]

    def kt(batch: int, layer: str) -> float:
        return float(pred[(batch, layer)] / (0.5 * PEAK) * 1e9)

    path = make_tiny_bundle(tmp_path / "half", batches=(1, 8, 64), kernel_time_ns=kt)
    res = validate(path, model=cfg, hardware=tiny_hardware())
    eff = fit_efficiency(res)
    assert set(eff) >= {"attention", "moe", "step"}
    for kind in ("attention", "moe", "step"):
        assert eff[kind] == pytest.approx(0.5, rel=1e-12), kind

    out = save_calibration(tmp_path / "cal.json", eff, {"bundle": str(path)})
    assert load_calibration(out) == eff
    assert load_calibration(tmp_path / "cal.json") == eff
    # a bundle (or its folder) is calibrated on the fly
    assert load_calibration(read_bundle(path), hardware=tiny_hardware()) == pytest.approx(eff)


def test_calibration_exact_on_synthetic_frame() -> None:
    """Exactly 0.5 when the measured time is the predicted bytes over half the peak (no ns rounding)."""
    from reports.calibration import efficiency_from_layers

    layers = pd.DataFrame(
        {
            "batch": [1, 1, 8, 8],
            "kind": ["attention", "moe", "attention", "moe"],
            "pred_bytes_ideal": [1e6, 3e7, 2e6, 9e7],
        }
    )
    layers["meas_kernel_s"] = layers["pred_bytes_ideal"] / (0.5 * PEAK)
    eff = efficiency_from_layers(layers, PEAK)
    assert eff == {"attention": 0.5, "moe": 0.5}


def test_calibration_clips_and_rejects(tmp_path: Path) -> None:
    from reports.calibration import efficiency_from_layers

    layers = pd.DataFrame(
        {
            "batch": [1, 1],
            "kind": ["moe", "attention"],
            "pred_bytes_ideal": [1e9, 1e6],
            "meas_kernel_s": [1e-6, np.nan],
        }
    )
    assert efficiency_from_layers(layers, PEAK) == {"moe": 1.5}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError) as exc:
        load_calibration(bad)
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError):
        load_calibration(tmp_path / "missing.json")


def test_cuda_graph_step_time_beside_the_eager_one(tmp_path: Path) -> None:
    # a run profiled with --cuda-graphs: the replayed-graph step time is validated beside the eager one
    path = make_tiny_bundle(tmp_path / "graphs", graph_us_per_step=2500.0)
    res = validate(path, hardware=tiny_hardware())
    steps = res.steps
    np.testing.assert_allclose(steps["meas_graph_step_s"], 2.5e-3)
    by_hand = (steps["pred_time_s"] - 2.5e-3) / 2.5e-3 * 100
    np.testing.assert_allclose(steps["err_time_graph_pct"], by_hand, rtol=1e-12)
    row = res.summary[res.summary["metric"] == "time vs CUDA-graph step"]
    assert len(row) == 1 and row["n"].iloc[0] == len(steps)

    import plotly.graph_objects as go

    from reports.figures.steps import _measured_markers

    fig = go.Figure()
    _measured_markers(fig, "time", "s", {}, [res])
    assert "tiny-moe · measured step (CUDA graph)" in {t.name for t in fig.data}
    # a run without the column has neither
    plain = validate(make_tiny_bundle(tmp_path / "plain"), hardware=tiny_hardware())
    assert "meas_graph_step_s" not in plain.steps
    assert not (plain.summary["metric"] == "time vs CUDA-graph step").any()


def test_ideal_with_measured_routing(tiny: Path) -> None:
    # the tiny bundle's routing: per step, each token picks 2 of 8 experts at random. The routed ideal
    # level swaps the formula's expected distinct experts for the mean measured count, per layer and
    # batch, at one SwiGLU expert's bytes apiece (3 x 64 x 32 weights in bf16)
    res = validate(tiny, hardware=tiny_hardware())
    routing = read_bundle(tiny).table("routing")
    distinct = (
        routing.groupby(["batch", "layer", "step"])["item"].nunique().groupby(["batch", "layer"]).mean()
    )
    expert_bytes = 3 * 64 * 32 * 2
    lay = res.layers.set_index(["batch", "layer"])
    pred = res.prediction.set_index(["batch", "layer"])
    for (batch, layer), measured in distinct.items():
        formula = pred.loc[(batch, layer), "distinct_items"]
        want = pred.loc[(batch, layer), "bytes_ideal"] + (measured - formula) * expert_bytes
        assert lay.loc[(batch, layer), "pred_bytes_ideal_routed"] == pytest.approx(want, rel=1e-12)
    attn = lay.loc[(8, "block0.attn")]
    assert attn["pred_bytes_ideal_routed"] == attn["pred_bytes_ideal"]  # no routing, no change
    steps = res.steps.set_index("batch")
    per_batch = res.layers.groupby("batch")["pred_bytes_ideal_routed"].sum()
    np.testing.assert_allclose(steps["pred_bytes_ideal_routed"], per_batch.loc[steps.index], rtol=1e-12)
    assert np.isfinite(steps["err_ideal_routed_pct"]).all()
    assert (res.summary["metric"] == "bytes_ideal_routed vs GPM").any()
    # a bundle without routing has no routed level
    sample = SAMPLES / "moe"
    assert "pred_bytes_ideal_routed" not in _validate_any(sample).steps


def test_steps_that_fit_in_l2_are_named(tiny: Path) -> None:
    # the tiny model reads under 1 MB a step (weights and KV), far under the tiny GPU's 50 MB L2; the
    # recorded H100 samples were sized so that every step reads more than the H100's 50 MB L2
    res = _validate_any(tiny)
    assert (res.steps["pred_l2_ratio"] < 0.05).all()
    assert any(n.startswith("batch 1, 8:") and "L2" in n for n in res.notes), res.notes
    for path in sample_bundles():
        res = _validate_any(path)
        assert (res.steps["pred_l2_ratio"] > 1).all(), path
        assert not any("L2 holds" in n for n in res.notes), res.notes


def test_eager_kernel_time_beats_the_roofline_on_the_recorded_h100_runs() -> None:
    # the recorded H100 decode steps are hundreds of short kernels: the op-level estimate (a measured
    # 1.5 us floor per kernel plus each kernel's roofline) must land closer to the measured kernel times
    # than the layer roofline for every kind, and to the per-step kernel sums
    bundles = sample_bundles()
    if not bundles:
        pytest.skip("recorded samples not present")
    for path in bundles:
        res = _validate_any(path)
        s = res.summary.set_index(["kind", "metric"])["median_abs_err_pct"]
        kinds = {k for k, _ in s.index if k != "step"}
        assert kinds, path
        for kind in kinds:
            assert s[(kind, "eager time vs kernel time")] < s[(kind, "time vs kernel time")], (path, kind)
        assert s[("step", "eager time vs kernel sum")] < s[("step", "time vs kernel sum")]
        n = res.layers.dropna(subset=["pred_kernels_eager"])
        assert (n["pred_kernels_eager"] > 0).all()


# ------------------------------------------------------------------------------- what a bundle lacks


def _variant(src: Path, dst: Path, meta=None, tables=None) -> Path:
    """A copy of bundle `src` at `dst` with `meta(dict)` and `tables(dict)` applied in place."""
    b = read_bundle(src)
    m = json.loads(json.dumps(b.meta))
    t = {name: b.table(name) for name in b.tables}
    if meta is not None:
        meta(m)
    if tables is not None:
        tables(t)
        gone = {
            "kernels": "kernels",
            "nvml": "nvml",
            "ncu": "ncu",
            "routing": "routing",
            "opcount": "opcount",
        }
        for flag, name in gone.items():  # a table taken out is no longer measured
            if name not in t:
                m["measured"][flag] = False
    return write_bundle(dst, m, t)


def _workload_none(m: dict) -> None:
    m["workload"] = {"phase": None, "context": None, "dtype": None}


def test_validate_names_everything_missing_in_one_message(tiny: Path, tmp_path: Path) -> None:
    no_workload = _variant(tiny, tmp_path / "w", meta=_workload_none)
    with pytest.raises(TraceError) as exc:
        validate(no_workload, hardware=tiny_hardware())
    assert str(exc.value) == (
        f"bundle {no_workload} records no dtype, phase or context; "
        "re-import it with --dtype bfloat16|float16|float32 --phase decode|prefill --context N"
    )
    # a model named on validate fills the model, not the workload
    with pytest.raises(TraceError, match="records no dtype, phase or context"):
        validate(no_workload, model=ModelConfig.model_validate(TINY_MODEL), hardware=tiny_hardware())

    def no_model(m: dict) -> None:
        _workload_none(m)
        m["model"] = {"name": None, "config": None}
        m["workload"]["dtype"] = "bfloat16"

    bare = _variant(tiny, tmp_path / "bare", meta=no_model)
    with pytest.raises(TraceError) as exc:
        validate(bare, hardware=tiny_hardware())
    assert str(exc.value) == (
        f"bundle {bare} records no model, phase or context; "
        "re-import it with --model MODEL --phase decode|prefill --context N"
    )


def test_no_model_says_what_to_pass_not_none(tiny: Path, tmp_path: Path) -> None:
    nameless = _variant(tiny, tmp_path / "n", meta=lambda m: m.update(model={"name": None, "config": None}))
    with pytest.raises(TraceError) as exc:
        validate(nameless, hardware=tiny_hardware())
    msg = str(exc.value)
    assert msg == (
        f"bundle {nameless} records no model; name it with --model MODEL "
        "(a preset, model file or HF config.json), on validate or on import"
    )
    assert "None" not in msg
    # named it works: the model given on validate is used
    res = validate(nameless, model=ModelConfig.model_validate(TINY_MODEL), hardware=tiny_hardware())
    assert res.model == "tiny-moe"
    # a description of a model no preset has (this one names experts, heads, width and depth)
    foreign = {"blocks": 3, "d_model": 96, "attention": {"heads": 6}, "ffn": {"kind": "moe", "experts": 5}}
    odd = _variant(
        tiny, tmp_path / "o", meta=lambda m: m.update(model={"name": "mystery", "config": foreign})
    )
    with pytest.raises(TraceError) as exc:
        validate(odd, hardware=tiny_hardware())
    assert str(exc.value) == (
        f"bundle {odd} records model 'mystery' in a form no preset matches; name it with --model MODEL "
        "(a preset, model file or HF config.json), on validate or on import"
    )


def test_gpm_of_a_short_window_is_not_a_measurement(tmp_path: Path) -> None:
    """A bundle (imported before such values were left out) holding GPM bytes of a 50 ms window for one
    batch: validate shows them as not measured, computes no error from them and leaves them out of the
    summary; the other batch, with a 1 s window, is compared as before."""

    def short(t: dict) -> None:
        t["runs"].loc[t["runs"]["batch"] == 8, "window_s"] = 0.05

    full = make_tiny_bundle(tmp_path / "full")
    path = _variant(full, tmp_path / "short", tables=short)
    assert read_bundle(path).table("runs").set_index("batch").loc[8, "gpm_bytes_per_step"] > 0
    res = validate(path, hardware=tiny_hardware())
    steps = res.steps.set_index("batch")
    assert np.isnan(steps.loc[8, "meas_bytes_gpm"]) and np.isnan(steps.loc[8, "err_ideal_pct"])
    assert np.isnan(steps.loc[8, "bw_share_of_peak"])
    before = validate(full, hardware=tiny_hardware()).steps.set_index("batch")
    assert steps.loc[1, "err_ideal_pct"] == before.loc[1, "err_ideal_pct"]
    row = res.summary[res.summary["metric"] == "bytes_ideal vs GPM"]
    assert row["n"].tolist() == [1] and row["median_err_pct"].iloc[0] == pytest.approx(
        before.loc[1, "err_ideal_pct"]
    )
    assert any(n.startswith("gpm: steady window under 1 s (batch 8 0.05 s)") for n in res.notes), res.notes


def test_imported_trace_window_gpm_stays_out_of_the_errors(tmp_path: Path) -> None:
    """The review's case: one trace, a timeline and a peak, no runs file. The header says GPM was not
    measured, so no GPM bytes, error or summary row may come from it (before: 239 MB and +89 %)."""
    from traces import import_traces

    data = ROOT / "traces" / "samples" / "h100-decode-2026-11-26"
    out = import_traces(
        [data / "kineto" / "moe_decode_b8.json.gz"],
        tmp_path / "b",
        nvml=data / "nvml_timeline.csv",
        peak_hbm_Bps=PEAK,
        workload={"phase": "decode", "context": 1024, "dtype": "bfloat16"},
    )
    from simulator.loading import load_model

    res = validate(out, model=load_model("h100-sample-moe"), levels=("ideal", "naive"))
    assert any(n.startswith("not measured: gpm: measurement window under 1 s for batch 8") for n in res.notes)
    assert res.steps[["meas_bytes_gpm", "err_ideal_pct", "err_naive_pct"]].isna().all(axis=None)
    assert not res.summary["metric"].str.contains("GPM").any()
    assert any(n.startswith("bytes: the bundle holds no measured bytes") for n in res.notes)
    # the time side is still measured and compared
    assert np.isfinite(res.steps["err_time_kernel_pct"]).all()


def test_hardware_of_another_gpu_is_refused(tiny: Path, tmp_path: Path) -> None:
    from simulator.loading import load_hardware

    with pytest.raises(ConfigError) as exc:
        validate(tiny, hardware=load_hardware("b200"))
    assert str(exc.value) == (
        f"--hardware b200: the run was recorded on {DEVICE} (preset h100-sxm); validating it against "
        "another GPU's numbers mixes devices (leave --hardware out, or give a file describing this GPU)"
    )
    # an exact NVML name is certain: the PCIe H100 is another device than this SXM one
    with pytest.raises(ConfigError, match="--hardware h100-pcie: the run was recorded on"):
        validate(tiny, hardware=load_hardware("h100-pcie"))
    # the device's own preset, and a description of the user's own (any name no preset has), are taken
    same = validate(tiny, hardware=load_hardware("h100-sxm"))
    assert same.hardware.name == "h100-sxm"
    own = validate(tiny, hardware=tiny_hardware())
    assert any(n.startswith("hardware: tiny-gpu (not a preset) taken to describe device") for n in own.notes)
    # a user file that keeps another preset's name claims to be that GPU
    b200_copy = load_hardware("b200").model_copy(update={"l2_bytes": tiny_hardware().l2_bytes})
    with pytest.raises(ConfigError, match="--hardware b200"):
        validate(tiny, hardware=b200_copy)

    def device(name: str):
        return lambda m: m["device"].update(name=name)

    # a name matched only by pattern ("H100 NVL" reads as h100-sxm): another H100 preset is a correction
    nvl = _variant(tiny, tmp_path / "nvl", meta=device("NVIDIA H100 NVL"))
    res = validate(nvl, hardware=load_hardware("h100-pcie"))
    assert any(
        "preset h100-pcie for device NVIDIA H100 NVL (its name alone suggests h100-sxm)" in n
        for n in res.notes
    )
    with pytest.raises(ConfigError, match="--hardware b200"):
        validate(nvl, hardware=load_hardware("b200"))
    # a device no preset matches (a CPU run) takes any hardware
    cpu = _variant(tiny, tmp_path / "cpu", meta=device("CPU (x86_64)"))
    assert validate(cpu, hardware=load_hardware("b200")).hardware.name == "b200"


def test_hardware_of_another_gpu_is_one_line_on_the_command_line() -> None:
    from tests.test_cli import assert_one_line_error, run

    assert_one_line_error(
        run("validate", str(SAMPLES / "moe"), "--hardware", "b200"),
        "--hardware b200: the run was recorded on NVIDIA H100 80GB HBM3 (preset h100-sxm)",
    )


def test_what_a_bundle_lacks_is_said_not_left_as_empty_columns(tiny: Path, tmp_path: Path) -> None:
    # no GPM and no ncu at all: the bytes have nothing to be compared with
    def no_bytes(t: dict) -> None:
        for name in ("nvml", "ncu"):
            t.pop(name)
        t["runs"] = t["runs"].drop(columns=["gpm_bytes_per_step", "gpm_bw_Bps", "mean_dram_util_pct"])

    res = validate(_variant(tiny, tmp_path / "nobytes", tables=no_bytes), hardware=tiny_hardware())
    assert any(n.startswith("bytes: the bundle holds no measured bytes") for n in res.notes)
    assert not res.summary["metric"].str.contains("GPM|ncu").any()

    # a CPU run: no GPU kernels, its layer ranges' CPU time in the kernel columns
    def cpu_run(m: dict) -> None:
        m["device"] = {"name": "CPU (x86_64)", "peak_hbm_Bps": None, "type": "cpu"}
        m["measured"]["kernels"] = False

    res = validate(
        _variant(tiny, tmp_path / "cpu", meta=cpu_run, tables=lambda t: t.pop("kernels")),
        hardware=tiny_hardware(),
    )
    assert any(
        n.startswith("kernels: a run on CPU (x86_64) recorded no GPU kernels") and n.endswith("tiny-gpu")
        for n in res.notes
    ), res.notes

    # nothing measured at all but the runs: predictions only, and the notes say so
    def runs_only(t: dict) -> None:
        for name in [n for n in t if n != "runs"]:
            t.pop(name)
        t["runs"] = t["runs"][["batch", "steps"]]

    res = validate(_variant(tiny, tmp_path / "bare", tables=runs_only), hardware=tiny_hardware())
    assert res.summary.empty and res.layers["meas_kernel_s"].isna().all()
    for start in (
        "bytes: the bundle holds no measured bytes",
        "kernels: the bundle holds no kernel time per layer",
        "summary: nothing",
    ):
        assert any(n.startswith(start) for n in res.notes), (start, res.notes)
    from rich.console import Console

    console = Console(record=True, width=400)
    res.render(console)
    assert "summary: nothing in the bundle was measured" in console.export_text()

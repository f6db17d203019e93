"""The HTML report: self-contained (plotly.js inline, no network), one div per chart, valid trace data."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from plotly.offline import get_plotlyjs

from reports.html import build_report, write_report
from reports.validation import validate
from simulator.config import Workload
from simulator.errors import ConfigError
from simulator.loading import load_hardware, load_model
from simulator.request import request_latencies
from simulator.sweep import compare
from tests.test_validation import make_tiny_bundle, sample_bundles, tiny_hardware
from traces.bundle import read_bundle

SIM_CHARTS = {
    "chart-step-bytes",
    "chart-step-time",
    "chart-roofline",
    "chart-layer-bytes-0",
    "chart-layer-bytes-1",
    "chart-distinct",
    "chart-routing-cost",
    "chart-request-latency",
    "chart-request-tradeoff",
}
MEASURED_CHARTS = {"chart-timeline-0", "chart-pred-meas-bytes", "chart-pred-meas-time"}
CHART_DIV = re.compile(r'<div class="chart" id="([^"]+)"')


def chart_specs(text: str) -> dict[str, dict]:
    """Chart id -> the figure JSON embedded for it."""
    out = {}
    for cid in CHART_DIV.findall(text):
        m = re.search(
            rf'<script type="application/json" id="{re.escape(cid)}-data">(.*?)</script>', text, re.S
        )
        assert m, f"no data for {cid}"
        out[cid] = json.loads(m.group(1))
    return out


def values(v: object) -> np.ndarray:
    """Trace coordinates as plotly writes them: a list, or a typed array {dtype, bdata} (plotly >= 6)."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).astype(float)
    return np.asarray(v, dtype=object)


def check_traces(spec: dict, cid: str) -> None:
    data = spec["data"]
    assert isinstance(data, list) and data, cid
    assert isinstance(spec["layout"], dict) and spec["layout"].get("title"), cid
    for tr in data:
        assert tr.get("type") in {"scatter", "bar"}, (cid, tr.get("type"))
        x, y = values(tr["x"]), values(tr["y"])
        assert len(x) == len(y) > 0, (cid, tr.get("name"))
        if tr["type"] == "scatter":
            ys = y.astype(float)
            assert np.isfinite(ys).any(), (cid, tr.get("name"))


def assert_self_contained(text: str) -> None:
    srcs = re.findall(r"<script[^>]*\bsrc\s*=", text, re.I)
    assert not srcs, "a script is loaded from a URL"
    assert not re.search(r"<link[^>]+href=[\"']https?://", text, re.I)
    assert text.count(get_plotlyjs()) == 1, "plotly.js must be inline exactly once"
    # the only cdn.plot.ly mention is the default topojson URL inside plotly.js itself (unused: no maps)
    assert text.count("cdn.plot.ly") == get_plotlyjs().count("cdn.plot.ly")


@pytest.fixture(scope="module")
def sim():
    hw = load_hardware("h100-sxm")
    models = [load_model("olmoe-1b-7b"), load_model("ultramemv2-1b-7b")]
    return compare(models, hw, Workload(batch=[1, 4, 16, 64, 256], context=[2048]), per_layer=True)


@pytest.fixture(scope="module")
def request_frame():
    hw = load_hardware("h100-sxm")
    models = [load_model("olmoe-1b-7b"), load_model("ultramemv2-1b-7b")]
    return request_latencies(models, [hw, hw], Workload(batch=[1, 4, 16, 64, 256]), 2048, 128)


def test_report_from_simulation_alone(sim, request_frame, tmp_path: Path) -> None:
    text = build_report(
        sim,
        [],
        [],
        "Sparse layers on H100",
        command="memtraffic report olmoe-1b-7b ultramemv2-1b-7b",
        request=request_frame,
    )
    assert_self_contained(text)
    specs = chart_specs(text)
    assert set(specs) == SIM_CHARTS
    for cid, spec in specs.items():
        check_traces(spec, cid)
    assert "memtraffic report olmoe-1b-7b ultramemv2-1b-7b" in text
    for level in ("ideal", "naive", "eager"):
        assert f"<dt>{level}</dt>" in text
    assert "Simulation only" in text
    assert text.count("Omitted:") == 2  # timeline and predicted-vs-measured
    # MoE and memory layers are separate traces in the per-step charts
    names = [tr["name"] for tr in specs["chart-step-bytes"]["data"]]
    assert any("olmoe" in n and "moe" in n.split("·")[-1] for n in names)
    assert any("ultramemv2" in n and "memory" in n for n in names)
    # the roofline has the hardware's roof and a point per layer and batch
    roof = specs["chart-roofline"]["data"]
    assert any(tr["name"].startswith("roof h100") for tr in roof)
    n_points = sum(len(values(tr["x"])) for tr in roof if "(predicted)" in tr["name"])
    assert n_points == int(((sim["layer"] != "total") & (sim["flops"] > 0)).sum())
    # the request trade-off: per model, tokens/s against TPOT, one point per batch size, from the frame
    for tr in specs["chart-request-tradeoff"]["data"]:
        d = request_frame[request_frame["model"] == tr["name"]].sort_values("batch")
        assert np.allclose(values(tr["x"]).astype(float), d["tpot_s"])
        assert np.allclose(values(tr["y"]).astype(float), d["tokens_per_s"])
        assert list(tr["text"]) == [str(b) for b in d["batch"]]
    # routing vs the rest: the routing line is the sparse layers' routing bytes summed per step
    routing = sim[(sim["layer"] != "total") & sim["distinct_items"].notna()]
    for tr in specs["chart-routing-cost"]["data"]:
        model, what = tr["name"].split(" · ")
        d = routing[routing["model"] == model].groupby("batch")
        want = d["routing_weight_bytes"].sum() if what == "routing" else (
            d["weight_bytes_ideal"].sum() - d["routing_weight_bytes"].sum())  # fmt: skip
        assert np.allclose(values(tr["y"]).astype(float), want.to_numpy())
    latency = {tr["name"] for tr in specs["chart-request-latency"]["data"]}
    assert "ultramemv2-1b-7b · time to first token" in latency
    out = write_report(tmp_path / "report.html", text)
    assert out.read_text(encoding="utf-8") == text
    assert not list(tmp_path.glob(".*.tmp"))


def test_report_totals_only_and_empty(sim) -> None:
    totals = sim[sim["layer"] == "total"]
    text = build_report(totals, [], [], "totals", command="x")
    assert "totals only" in text
    specs = chart_specs(text)
    assert set(specs) == {"chart-step-bytes", "chart-step-time"}  # whole-step lines only, no request
    assert all(tr["name"].endswith("· total") for tr in specs["chart-step-bytes"]["data"])
    assert_self_contained(text)
    empty = build_report(None, [], [], "nothing", command="x")
    assert not CHART_DIV.findall(empty) and empty.count("Omitted:") == 7


def _measured(tmp_path: Path) -> tuple[list, list]:
    paths = sample_bundles()
    if paths:
        bundles = [read_bundle(p) for p in paths]
        return bundles, [validate(b) for b in bundles]
    b = read_bundle(make_tiny_bundle(tmp_path / "tiny"))
    return [b], [validate(b, hardware=tiny_hardware())]


def test_report_from_bundles(tmp_path: Path) -> None:
    bundles, validations = _measured(tmp_path)
    text = build_report(
        None, bundles, validations, "H100 samples", command="memtraffic report RUN --output r.html"
    )
    assert_self_contained(text)
    specs = chart_specs(text)
    assert set(specs) >= MEASURED_CHARTS
    assert {"chart-step-bytes", "chart-step-time", "chart-roofline", "chart-distinct"} <= set(specs)
    for cid, spec in specs.items():
        check_traces(spec, cid)
    device = bundles[0].meta["device"]["name"]
    assert device in text and "recorded " in text
    # the timeline: GB/s line plus a shaded, labelled steady window per run of every bundle
    layout = specs["chart-timeline-0"]["layout"]
    runs = sum(len(b.table("runs")) for b in bundles)
    labels = [a["text"] for a in layout["annotations"]]
    assert len(labels) == runs and all(re.search(r" b\d+$", t) for t in labels)
    assert len(layout["shapes"]) > runs  # plus the profiled layer windows
    # predicted vs measured: y = x and the +-25 % band
    names = [tr.get("name") for tr in specs["chart-pred-meas-bytes"]["data"]]
    assert "±25 %" in names and "predicted = measured" in names
    # the validation tables
    assert "per step (errors (pred − meas) / meas" in text


def test_write_report_needs_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        write_report(tmp_path / "no" / "r.html", "<html></html>")
    assert "\n" not in str(exc.value)


def test_report_run_models_and_runs(tmp_path: Path) -> None:
    from reports.html import report_run

    run = make_tiny_bundle(tmp_path / "tiny")
    out = report_run(["olmoe-1b-7b"], [run], tmp_path / "r.html", command="memtraffic report olmoe-1b-7b RUN")
    text = out.read_text(encoding="utf-8")
    specs = chart_specs(text)
    assert {"chart-timeline-0", "chart-pred-meas-bytes", "chart-layer-bytes-0", "chart-layer-bytes-1"} <= set(
        specs
    )
    names = {tr["name"] for tr in specs["chart-step-bytes"]["data"]}
    assert any(n.startswith("olmoe-1b-7b") for n in names) and any(n.startswith("tiny-moe") for n in names)


def test_report_of_what_if_variants(tmp_path: Path) -> None:
    # one model, two top-k values, two GPUs: four simulated variants, each a named line in the figures
    from reports.html import report_run

    out = report_run(["olmoe-1b-7b"], [], tmp_path / "r.html", batches=[1, 64], hardware="h100-sxm,b200",
                     vary=["top_k=4,8"])  # fmt: skip
    text = out.read_text()
    for name in ("top_k=4 @h100-sxm", "top_k=8 @h100-sxm", "top_k=4 @b200", "top_k=8 @b200"):
        assert f"olmoe-1b-7b {name}" in text
    # each variant also gets its request: four lines on the throughput trade-off, and four dotted ones of
    # continuous batching at 1 and 64 sequences decoding
    tradeoff = chart_specs(text)["chart-request-tradeoff"]["data"]
    steady = [tr for tr in tradeoff if tr["name"].endswith(" · continuous")]
    assert len(tradeoff) == 8 and len(steady) == 4 and all(len(values(tr["x"])) == 2 for tr in tradeoff)
    for tr in steady:
        # N sequences decoding yield N tokens a step, plus the first tokens of the N / 255 prompts done
        tpot, rate = values(tr["x"]).astype(float), values(tr["y"]).astype(float)
        assert np.allclose(rate, np.array([1, 64]) * 256 / 255 / tpot) and tr["line"]["dash"] == "dot"
    with pytest.raises(ConfigError, match="at least two variants"):
        report_run(["olmoe-1b-7b"], [], tmp_path / "s.html", vary=["top_k=4"])


def test_report_simulates_the_scenario_it_is_given(tmp_path: Path) -> None:
    from reports.html import report_run

    def held(**scenario) -> float:
        out = report_run(["olmoe-1b-7b"], [], tmp_path / "r.html", batches=[1], scenario=scenario)
        spec = chart_specs(out.read_text())["chart-request-latency"]
        text = spec["data"][0]["hovertext"][0]
        return float(re.search(r"HBM held ([\d.]+) GB", text).group(1))

    # OLMoE's 64 x 16 experts of 3 x 2048 x 1024 go from 2 bytes a weight to MXFP4's 0.53: 12.9 GB less
    experts = 64 * 16 * 3 * 2048 * 1024
    saved = held() - held(weight_dtypes={"moe": "mxfp4"})
    assert saved == pytest.approx(experts * (2 - 4.25 / 8) / 1e9, abs=0.15)


def test_report_draws_latency_under_load(tmp_path: Path) -> None:
    from reports.html import LOAD_REQUESTS, report_run
    from simulator.loading import load_hardware, load_model
    from simulator.serving import serving_states
    from simulator.traffic import Engine, simulate_traffic

    models = ["olmoe-1b-7b", "ultramemv2-1b-7b"]
    out = report_run(models, [], tmp_path / "r.html", batches=[1, 16, 64])
    traces = chart_specs(out.read_text())["chart-load-latency"]["data"]
    # the rates: each model's steady states at 1, 16 and 64 sequences (requests/s, two digits), the same
    # for both models, and a third beyond the fastest
    cfgs, h100 = [load_model(m) for m in models], load_hardware("h100-sxm")
    wl = Workload(batch=[1, 16, 64], context=[2048])
    steady = serving_states(cfgs, [h100, h100], wl, 2048, 256)
    rates = sorted({float(f"{r:.2g}") for r in steady["requests_per_s"]})
    rates.append(float(f"{rates[-1] * 4 / 3:.2g}"))
    assert len(traces) == 6  # per model: TPOT p50, TTFT p50, TTFT p99
    for tr in traces:
        assert list(values(tr["x"]).astype(float)) == rates
    # each TTFT p99 line is the engine's own result at those rates (seeded: the same stream)
    got = {tr["name"]: values(tr["y"]).astype(float) for tr in traces}
    for cfg in cfgs:
        want = simulate_traffic(cfg, h100, wl, 2048, 256, rates, Engine(8192), requests=LOAD_REQUESTS)
        assert np.allclose(got[f"{cfg.name} · TTFT p99"], want["ttft_p99_s"])
    # expert parallelism: the ranks' own queues are not modelled, so no load chart
    ep = report_run(["olmoe-1b-7b"], [], tmp_path / "e.html", batches=[8], scenario={"ep": 2})
    assert "chart-load-latency" not in chart_specs(ep.read_text())


MOONCAKE_SAMPLE = Path(__file__).resolve().parents[1] / "traces" / "samples" / "mooncake-2024" / "head.jsonl"


def test_report_draws_a_recorded_trace_replayed(tmp_path: Path) -> None:
    from reports.html import report_run
    from simulator.request_trace import load_request_trace
    from simulator.traffic import Engine, simulate_trace

    out = report_run(
        ["olmoe-1b-7b"],
        [],
        tmp_path / "r.html",
        batches=[1, 16],
        requests_file=MOONCAKE_SAMPLE,
        trace_speeds=[1.0, 3.0],
    )
    traces = chart_specs(out.read_text())["chart-trace-latency"]["data"]
    assert len(traces) == 3  # TPOT p50, TTFT p50, TTFT p99
    # x: the trace's mean rate, 189 gaps over 1,206.104 - 1,178.625 s, at 1x and 3x
    mean = 189 / (1206.104 - 1178.625)
    for tr in traces:
        assert values(tr["x"]).astype(float) == pytest.approx([mean, 3 * mean])
    # y: the engine's own result on the trace, prefix caching on
    got = {tr["name"]: values(tr["y"]).astype(float) for tr in traces}
    olmoe, h100 = load_model("olmoe-1b-7b"), load_hardware("h100-sxm")
    want = [
        simulate_trace(olmoe, h100, Workload(), load_request_trace(MOONCAKE_SAMPLE, s), Engine(8192))
        for s in (1.0, 3.0)
    ]
    assert got["olmoe-1b-7b · TTFT p99"] == pytest.approx([w["ttft_p99_s"].iloc[0] for w in want])
    assert want[0]["prefix_caching"].iloc[0] == "512-token blocks"


def test_report_trace_mistakes_are_one_line(tmp_path: Path) -> None:
    from tests.test_cli import assert_one_line_error, run

    out = str(tmp_path / "r.html")
    missing = run("report", "olmoe-1b-7b", "--requests-file", str(tmp_path / "none.csv"), "-o", out)
    assert_one_line_error(missing, "no such file")
    speeds = run(
        "report", "olmoe-1b-7b", "--requests-file", str(MOONCAKE_SAMPLE), "--trace-speeds", "0", "-o", out
    )
    assert_one_line_error(speeds, "--trace-speeds 0")
    assert not Path(out).exists()

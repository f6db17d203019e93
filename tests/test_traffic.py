"""The request-level serving simulation (simulator/traffic.py) against independent sources: the
step-by-step `mixed_step`, `simulate` for a request alone, Little's law, the steady-state model, and a
schedule traced by hand."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simulator.config import Workload
from simulator.errors import ConfigError
from simulator.loading import load_hardware, load_model
from simulator.request import PrefillStep
from simulator.serving import mixed_step, serving_steady_state
from simulator.sweep import simulate
from simulator.traffic import Engine, StepCoster, Trace, run_engine, simulate_traffic
from tests.test_cli import assert_one_line_error, run

H100 = load_hardware("h100-sxm")
ROOT = Path(__file__).resolve().parents[1]
GEMMA3 = str(ROOT / "tests" / "data" / "hf" / "Gemma-3-1B.json")  # 5 sliding-window layers to 1 full


def traced(
    model, rate: float, prompt: int, generate: int, engine: Engine, **options
) -> tuple[pd.Series, Trace]:
    traces: list[Trace] = []
    df = simulate_traffic(
        model, H100, Workload(), prompt, generate, [rate], engine, keep_traces=traces, **options
    )
    return df.iloc[0], traces[0]


@pytest.mark.parametrize(
    "name,workload,calibrated",
    [
        ("olmoe-1b-7b", Workload(), False),
        ("olmoe-1b-7b", Workload(tp=2), True),
        ("ultramemv2-1b-7b", Workload(), False),
        (GEMMA3, Workload(), False),
        ("qwen3-next-80b-a3b", Workload(), False),
    ],
)
def test_fast_step_time_is_mixed_step(name: str, workload: Workload, calibrated: bool) -> None:
    model = load_model(name)
    prompt, generate = 3000, 400
    costs = (
        {"efficiency": {"attention": 0.7, "moe": 0.5}, "overhead": {"attention": 2e-6}} if calibrated else {}
    )
    coster = StepCoster(model, H100, workload, prompt, prompt, prompt + generate - 2, 8192, **costs)
    rng = np.random.default_rng(7)
    for _ in range(6):
        n = int(rng.integers(1, 40))
        contexts = sorted(
            int(c) for c in rng.choice(np.arange(prompt, prompt + generate - 1), n, replace=False)
        )
        pieces = []
        for _ in range(int(rng.integers(0, 3))):
            prefix = int(rng.choice([0, int(rng.integers(1, prompt - 1))]))
            tokens = int(rng.integers(1, prompt - prefix + 1))
            pieces.append((tokens, prefix))
        as_steps = tuple(
            (PrefillStep(1, 1, t, p, "last" if t + p == prompt else "none", 0), 1.0) for t, p in pieces
        )
        expected = mixed_step(model, H100, workload, n, contexts, as_steps, **costs).time_s
        assert coster.step_time(contexts, pieces) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("name", ["olmoe-1b-7b", "ultramemv2-1b-7b", GEMMA3, "qwen3-next-80b-a3b"])
def test_decode_costs_add_up_per_sequence(name: str) -> None:
    # the tables hold one sequence's decode costs: n sequences at one context must cost n times that,
    # layer by layer (the weights aside, which the tables take at the step's token count)
    model = load_model(name)
    one = simulate(model, H100, Workload(batch=[1], context=[777, 5000]), per_layer=True)
    many = simulate(model, H100, Workload(batch=[37], context=[777, 5000]), per_layer=True)
    for col in ("flops", "act_bytes_ideal", "kv_read_bytes", "kv_write_bytes"):
        assert many[col].to_numpy() == pytest.approx(37 * one[col].to_numpy(), rel=1e-12)


@pytest.mark.parametrize("prompt,budget", [(512, 8192), (600, 256)])  # whole, and in three chunks
def test_a_request_alone_costs_its_own_steps(prompt: int, budget: int) -> None:
    model = load_model("olmoe-1b-7b")
    generate = 24
    # one request every 100 s: none overlaps another
    row, trace = traced(model, 0.01, prompt, generate, Engine(budget), requests=20, arrivals="even")
    ttft = 0.0
    for start in range(0, prompt, budget):
        tokens = min(budget, prompt - start)
        logits = "last" if start + tokens == prompt else "none"
        wl = Workload(phase="prefill", batch=[1], context=[tokens], prefix=start, logits=logits)
        ttft += simulate(model, H100, wl)["time_s"].iloc[0]
    decode = simulate(model, H100, Workload(batch=[1], context=list(range(prompt, prompt + generate - 1))))
    tpot = decode["time_s"].mean()
    assert trace.first_token - trace.arrival == pytest.approx(np.full(20, ttft), rel=1e-9)
    got_tpot = (trace.finish - trace.first_token) / (generate - 1)
    assert got_tpot == pytest.approx(np.full(20, tpot), rel=1e-9)
    assert row["max_queue"] <= 1 and row["mean_decoding"] <= 1 and not row["saturated"]


def test_littles_law_holds_on_the_trace() -> None:
    row, trace = traced(load_model("olmoe-1b-7b"), 20.0, 1024, 64, Engine(8192), requests=3000)
    measured = slice(300, None)
    time_in_system = float(np.mean((trace.finish - trace.arrival)[measured]))
    assert row["mean_queue"] > 0.01  # a queue forms now and then: it is part of the check
    assert row["mean_in_system"] == pytest.approx(row["requests_per_s"] * time_in_system, rel=0.02)


def test_even_arrivals_reproduce_the_steady_state() -> None:
    # at lambda = N / (G - 1) requests a step, in requests/s through the steady state's TPOT, the engine
    # should keep N sequences decoding at the same mean step. The steady state stands for the engine's
    # steps by their mean (within 2 % in tests/test_serving.py) and its decode spread is even where
    # the engine's is not quite; 3 % leaves room for both
    model = load_model("olmoe-1b-7b")
    n, prompt, generate = 64, 2048, 256
    steady = serving_steady_state(model, H100, Workload(batch=[n]), prompt, generate, 8192).iloc[0]
    rate = n / (generate - 1) / steady["tpot_s"]
    row, _ = traced(model, rate, prompt, generate, Engine(8192), requests=2000, arrivals="even")
    assert row["mean_decoding"] == pytest.approx(n, rel=0.03)
    assert row["mean_step_s"] == pytest.approx(steady["tpot_s"], rel=0.03)
    assert row["requests_per_s"] == pytest.approx(rate, rel=0.03) and not row["saturated"]


def waiting_at(trace: Trace, t: float) -> int:
    return int(np.count_nonzero((trace.arrival <= t) & (trace.admitted > t)))


def test_overload_is_saturated_and_its_queue_grows() -> None:
    model = load_model("olmoe-1b-7b")
    engine = Engine(8192)
    # capacity: at most 256 sequences of 63 decode steps at >= the decode step of 256: well under 400/s
    over, trace = traced(model, 400.0, 1024, 64, engine, requests=3000)
    assert over["saturated"] and over["queue_growth"] > 0.2
    middle, end = (trace.t0 + trace.t1) / 2, trace.t1
    assert waiting_at(trace, end) > waiting_at(trace, middle) + 300
    assert over["requests_per_s"] < 0.8 * 400
    under, _ = traced(model, 0.3 * over["requests_per_s"], 1024, 64, engine, requests=3000)
    assert not under["saturated"] and abs(under["queue_growth"]) < 0.01


def test_two_requests_traced_by_hand() -> None:
    # OLMoE, prompts of 4 tokens, 3 generated, a budget of 4 tokens a step, both arriving at 0:
    #   step 0: A's whole prompt (4 tokens); A's first token at its end
    #   step 1: A decodes at context 4; B is admitted with the 3 tokens left: (3, prefix 0)
    #   step 2: A decodes at context 5 (its third and last token: A finishes); B's last token (1, prefix 3):
    #           B's first token
    #   step 3: B decodes at context 4; step 4: B at context 5, and finishes
    model, wl, prompt = load_model("olmoe-1b-7b"), Workload(), 4
    coster = StepCoster(model, H100, wl, prompt, prompt, prompt + 1, 4)
    trace = run_engine(coster, np.array([0.0, 0.0]), 3, 4, 2)

    def prefill(tokens: int, prefix: int, logits: str) -> tuple:
        return ((PrefillStep(1, 1, tokens, prefix, logits, 0), 1.0),)

    d0 = simulate(model, H100, Workload(phase="prefill", batch=[1], context=[4]))["time_s"].iloc[0]
    d1 = mixed_step(model, H100, wl, 1, [4], prefill(3, 0, "none")).time_s
    d2 = mixed_step(model, H100, wl, 1, [5], prefill(1, 3, "last")).time_s
    d3, d4 = simulate(model, H100, Workload(batch=[1], context=[4, 5]))["time_s"]
    assert trace.admitted == pytest.approx([0.0, d0], rel=1e-12)
    assert trace.first_token == pytest.approx([d0, d0 + d1 + d2], rel=1e-9)
    assert trace.finish == pytest.approx([d0 + d1 + d2, d0 + d1 + d2 + d3 + d4], rel=1e-9)
    assert trace.total_steps == 5


def test_traffic_rejects_what_it_cannot_run() -> None:
    model = load_model("olmoe-1b-7b")
    for kwargs, needle in [
        ({"rates": [0.0]}, "--rate 0"),
        ({"requests": 5}, "--requests 5"),
        ({"arrivals": "bursty"}, "--arrivals bursty"),
        ({"prompt": 1_000_000}, "does not fit"),
        ({"engine": Engine(128, 256)}, "--token-budget 128"),
    ]:
        args = {
            "rates": [1.0],
            "requests": 100,
            "arrivals": "poisson",
            "prompt": 2048,
            "engine": Engine(8192),
        }
        args |= kwargs
        with pytest.raises(ConfigError, match=needle):
            simulate_traffic(
                model,
                H100,
                Workload(),
                args["prompt"],
                64,
                args["rates"],
                args["engine"],
                requests=args["requests"],
                arrivals=args["arrivals"],
            )
    with pytest.raises(ConfigError, match="--ep 2"):
        simulate_traffic(model, H100, Workload(ep=2), 2048, 64, [1.0], Engine(8192))
    # 80 B parameters in bf16 (160 GB) leave no room at all on an 80 GB H100
    with pytest.raises(ConfigError, match=r"budget 8192 tokens \(1\d\d GB\) exceed h100-sxm"):
        simulate_traffic(load_model("qwen3-next-80b-a3b"), H100, Workload(), 2048, 64, [1.0], Engine(8192))


def test_serve_rate_on_the_command_line() -> None:
    proc = run("serve", "olmoe-1b-7b", "ultramemv2-1b-7b", "--rate", "1,4", "--requests", "200", "-f", "csv")
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(StringIO(proc.stdout))
    assert list(df["model"]) == ["olmoe-1b-7b"] * 2 + ["ultramemv2-1b-7b"] * 2
    assert list(df["rate"]) == [1.0, 4.0] * 2 and set(df["requests"]) == {200}
    assert (df["ttft_p99_s"] >= df["ttft_p50_s"]).all() and not df["saturated"].any()
    table = run("serve", "olmoe-1b-7b", "--rate", "2", "--requests", "50", "--arrivals", "even")
    assert table.returncode == 0, table.stderr
    assert "TTFT p99" in table.stdout and "keeps up" in table.stdout


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--rate", "0"], ["--rate 0"]),
        (["--rate", "-2"], ["--rate -2"]),
        (["--rate", "fast"], ["--rate"]),
        (["--rate", "1", "--requests", "5"], ["--requests 5"]),
        (["--rate", "1", "--arrivals", "bursty"], ["--arrivals bursty"]),
        # a context the model is set up for, whose cache alone outgrows the GPU: no warning, one error
        (["--rate", "1", "-p", "2000000", "-g", "100", "--set", "max_positions=4000000"], ["does not fit"]),
        (["--rate", "1", "--concurrency", "8"], ["--rate", "--concurrency"]),
        (["--rate", "1", "--tpot", "5ms"], ["--rate", "--tpot"]),
        (["--rate", "1", "--ep", "2"], ["--ep 2"]),
    ],
)
def test_serve_rate_bad_input_is_one_line(args: list[str], needles: list[str]) -> None:
    assert_one_line_error(run("serve", "olmoe-1b-7b", *args), *needles)


def test_a_short_run_beyond_capacity_is_saturated() -> None:
    # 600 requests at 43/s end before OLMoE's queue starts to grow (its engine is still filling up to the
    # 215 requests memory allows), but 43/s is beyond what 215 sequences decoding can serve in the steady
    # state, so the run is flagged all the same; 20/s is well within it
    model = load_model("olmoe-1b-7b")
    df = simulate_traffic(model, H100, Workload(), 2048, 256, [20.0, 43.0], Engine(8192), requests=600)
    seq_limit = int(df["seq_limit"].iloc[0])
    steady = serving_steady_state(model, H100, Workload(batch=[seq_limit]), 2048, 256, 8192).iloc[0]
    assert bool(steady["keeps_up"]) and df["capacity_rps"].iloc[0] >= steady["requests_per_s"]
    assert 20.0 < df["capacity_rps"].iloc[0] < 43.0
    assert df["queue_growth"].iloc[1] < 0.05  # the queue alone would not tell
    assert df["saturated"].tolist() == [False, True]


def test_seed_and_request_bounds() -> None:
    model = load_model("olmoe-1b-7b")
    with pytest.raises(ConfigError, match="--seed -1"):
        simulate_traffic(model, H100, Workload(), 2048, 64, [1.0], Engine(8192), seed=-1)
    with pytest.raises(ConfigError, match="--requests 100000000000"):
        simulate_traffic(model, H100, Workload(), 2048, 64, [1.0], Engine(8192), requests=10**11)


def test_gamma_arrivals_have_the_rate_and_burstiness_asked() -> None:
    from simulator.traffic import arrival_times

    # gamma gaps of mean 1/rate and coefficient of variation CV (200,000 draws: within 1 %)
    for cv in (0.5, 2.0, 4.0):
        gaps = np.diff(arrival_times(20.0, 200_000, f"gamma:{cv}", 1))
        assert gaps.mean() == pytest.approx(1 / 20.0, rel=0.01)
        assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.02)
    # CV 1 is the Poisson stream itself: numpy draws a gamma of shape 1 as the exponential it is
    assert np.array_equal(arrival_times(5.0, 1000, "gamma:1", 3), arrival_times(5.0, 1000, "poisson", 3))


def test_bursty_arrivals_lengthen_the_tails() -> None:
    model = load_model("olmoe-1b-7b")
    rows = [
        simulate_traffic(model, H100, Workload(), 2048, 256, [24.0], Engine(8192), arrivals=a).iloc[0]
        for a in ("poisson", "gamma:3")
    ]
    # the same mean rate, in bursts: more queued at once and a longer TTFT p99
    assert rows[1]["max_queue"] > rows[0]["max_queue"]
    assert rows[1]["ttft_p99_s"] > 2 * rows[0]["ttft_p99_s"]
    for bad in ("gamma", "gamma:0", "gamma:abc", "gamma:2_0", "gamma:30", "gammaray:2", "bursty"):
        assert_one_line_error(run("serve", "olmoe-1b-7b", "--rate", "4", "--arrivals", bad), "--arrivals")

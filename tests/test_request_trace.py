"""Replaying a recorded request trace (`serve --requests-file`): the trace layouts and their refusals
(simulator/request_trace.py), and the engine with per-request prompt and output lengths
(simulator/traffic.py) against the fixed-size engine, a schedule traced by hand, Little's law and a
slow step-by-step reference engine."""

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
from simulator.request_trace import RequestTrace, load_request_trace
from simulator.serving import mixed_step
from simulator.sweep import simulate
from simulator.traffic import Engine, StepCoster, Trace, decode_contexts, run_engine, simulate_trace
from tests.test_cli import assert_one_line_error, run

H100 = load_hardware("h100-sxm")
ROOT = Path(__file__).resolve().parents[1]
GEMMA3 = str(ROOT / "tests" / "data" / "hf" / "Gemma-3-1B.json")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def azure(tmp_path: Path) -> Path:
    # dates as the Azure traces write them, out of order; 7 fractional digits as in the 2024 traces
    text = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
    text += (
        "2023-11-16 18:15:47.5000000,300,20\n2023-11-16 18:15:46.000,4808,10\n2023-11-16 18:15:46.25,12,1\n"
    )
    return write(tmp_path, "AzureLLMInferenceTrace_conv.csv", text)


def test_each_layout_is_recognised(tmp_path: Path, azure: Path) -> None:
    trace = load_request_trace(azure)
    assert trace.layout == "azure"
    assert trace.arrival == pytest.approx([0.0, 0.25, 1.5])
    assert trace.prompt.tolist() == [4808, 12, 300] and trace.generate.tolist() == [10, 1, 20]
    burst = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
    burst += "5,ChatGPT,472,18,490,Conversation log\n45,GPT-4,1087,0,1087,API log\n"
    burst += "118,ChatGPT,417,276,693,API log\n"
    trace = load_request_trace(write(tmp_path, "burst.csv", burst))
    assert trace.layout == "burstgpt" and trace.dropped == 1  # the failed request: 0 response tokens
    assert trace.arrival.tolist() == [0.0, 113.0] and trace.prompt.tolist() == [472, 417]
    moon = '{"timestamp": 0, "input_length": 6755, "output_length": 500, "hash_ids": [0, 1]}\n'
    moon += '{"timestamp": 3052, "input_length": 2287, "output_length": 316, "hash_ids": [0, 2]}\n'
    trace = load_request_trace(write(tmp_path, "mooncake_trace.jsonl", moon))
    assert trace.layout == "mooncake" and trace.arrival.tolist() == [0.0, 3.052]
    assert trace.generate.tolist() == [500, 316]
    ours = pd.DataFrame({"Arrival_S": [1.0, 2.0, 4.0], "prompt": [10, 20, 30], "generate": [3, 2, 1]})
    ours.to_parquet(tmp_path / "ours.parquet")
    trace = load_request_trace(tmp_path / "ours.parquet", speed=2.0, requests=2)
    assert trace.layout == "memtraffic" and trace.arrival.tolist() == [0.0, 0.5]
    assert trace.prompt.tolist() == [10, 20] and trace.mean_rate == pytest.approx(2.0)


@pytest.mark.parametrize(
    "name,text,needle",
    [
        ("a.csv", "time,in,out\n1,2,3\n", "no request columns found"),
        ("a.csv", "arrival_s,prompt,generate\n0,abc,3\n", "'abc' at row 1 is not a number"),
        ("a.csv", "arrival_s,prompt,generate\n0,5,3\n1,5,-3\n", "-3 at row 2 is negative"),
        ("a.csv", "arrival_s,prompt,generate\n0,5.5,3\n", "not a whole number"),
        ("a.csv", "arrival_s,prompt,generate\n0,0,3\n", "needs a prompt token"),
        ("a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,5,3\n", "not a date and time"),
        ("a.csv", "arrival_s,prompt,generate\nsoon,5,3\n", "not a time"),
        ("a.csv", "", "no requests"),
        ("a.csv", "arrival_s,prompt,generate\n", "no requests"),
        (
            "a.jsonl",
            '{"timestamp": 0, "input_length": 5, "output_length": 3}\n{"timestamp": 9, "inp',
            "line 2",
        ),
        ("a.csv", "arrival_s,prompt,generate\n0,5,0\n", "nothing to generate"),
        ("a.csv", "arrival_s,prompt,generate\n0,inf,3\n", "inf at row 1 is not a number"),
        ("a.csv", "arrival_s,prompt,generate\n0,100000000000000000000000,3\n", "is more than"),
        (
            "a.jsonl",
            '{"timestamp": 0, "input_length": true, "output_length": 3}\n',
            "True at line 1 is not a",
        ),
    ],
)
def test_bad_traces_are_refused_naming_the_file(tmp_path: Path, name: str, text: str, needle: str) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError, match=needle) as info:
        load_request_trace(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_bad_options_and_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_request_trace("/nonexistent/trace.csv")
    with pytest.raises(ConfigError, match="not a file"):
        load_request_trace(tmp_path)
    with pytest.raises(ConfigError, match="--trace-speed 1e-300"):
        load_request_trace("/nonexistent/trace.csv", speed=1e-300)
    # a date column where our layout counts seconds would be read as raw ticks: refused; a timedelta is
    # taken in seconds
    stamps = pd.date_range("2024-01-01", periods=3, freq="s")
    frame = pd.DataFrame({"arrival_s": stamps, "prompt": [5, 6, 7], "generate": [1, 2, 3]})
    frame.to_parquet(tmp_path / "dates.parquet")
    with pytest.raises(ConfigError, match="holds datetime64"):
        load_request_trace(tmp_path / "dates.parquet")
    frame.assign(arrival_s=pd.to_timedelta([0.0, 1.5, 3.0], unit="s")).to_parquet(tmp_path / "td.parquet")
    assert load_request_trace(tmp_path / "td.parquet").arrival.tolist() == [0.0, 1.5, 3.0]


def test_burstgpt_failures_are_counted_within_the_requests_taken(tmp_path: Path) -> None:
    # failed requests (0 response tokens) are left out and counted among the first N taken; a failure
    # with 0 request tokens is dropped, not refused
    rows = ["Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"]
    sizes = [(5, 3), (0, 0), (7, 0), (4, 2), (6, 1), (9, 0)]
    rows += [f"{i},ChatGPT,{p},{g},{p + g},Conversation log" for i, (p, g) in enumerate(sizes)]
    path = write(tmp_path, "b.csv", "\n".join(rows) + "\n")
    first4 = load_request_trace(path, requests=4)
    assert (first4.dropped, first4.prompt.tolist()) == (2, [5, 4])
    whole = load_request_trace(path)
    assert (whole.dropped, whole.prompt.tolist()) == (3, [5, 4, 6])
    with pytest.raises(ConfigError, match="--trace-speed 0"):
        load_request_trace("/nonexistent/trace.csv", speed=0.0)
    with pytest.raises(ConfigError, match="--trace-requests 0"):
        load_request_trace("/nonexistent/trace.csv", requests=0)


def test_one_size_for_all_is_the_fixed_size_engine() -> None:
    model, prompt, generate, budget = load_model("olmoe-1b-7b"), 1500, 80, 2048
    coster = StepCoster(model, H100, Workload(), prompt, prompt, prompt + generate - 2, budget)
    arrival = np.sort(np.random.default_rng(3).uniform(0, 3, 600))
    arrival -= arrival[0]
    fixed = run_engine(coster, arrival, generate, budget, 40)
    # the same cap as a byte budget: each request reserves 1 "byte" of a room of 40
    n = len(arrival)
    general = run_engine(
        coster,
        arrival,
        np.full(n, generate),
        budget,
        256,
        prompt=np.full(n, prompt),
        reserve=np.ones(n, dtype=np.int64),
        room=40,
    )
    for name in ("admitted", "first_token", "finish"):
        assert np.array_equal(getattr(general, name), getattr(fixed, name)), name
    assert general.total_steps == fixed.total_steps and fixed.most_running == 40


def test_two_requests_of_different_sizes_traced_by_hand() -> None:
    # OLMoE, a budget of 4 tokens a step, both arriving at 0: A has prompt 3 and generates 3, B prompt 5
    # and generates 2
    #   step 0: A's prompt (3 tokens, its first token); B admitted with 1 token (1, prefix 0)
    #   step 1: A decodes at context 3; B's next 3 tokens (3, prefix 1)
    #   step 2: A decodes at context 4 (its last: A finishes); B's last token (1, prefix 4): B's first
    #   step 3: B decodes at context 5 and finishes
    model, wl = load_model("olmoe-1b-7b"), Workload()
    coster = StepCoster(model, H100, wl, 3, 3, 5, 4)
    trace = run_engine(coster, np.array([0.0, 0.0]), np.array([3, 2]), 4, 2, prompt=np.array([3, 5]))

    def steps(*pieces: tuple[int, int, str]) -> tuple:
        return tuple((PrefillStep(1, 1, t, p, logits, 0), 1.0) for t, p, logits in pieces)

    # no decode sequence in step 0, which mixed_step does not cost: StepCoster's sum of the two pieces
    # (tests/test_traffic.py checks it against mixed_step where there are decode sequences)
    d0 = coster.step_time([], [(3, 0, True), (1, 0, False)])
    d1 = mixed_step(model, H100, wl, 1, [3], steps((3, 1, "none"))).time_s
    d2 = mixed_step(model, H100, wl, 1, [4], steps((1, 4, "last"))).time_s
    d3 = simulate(model, H100, Workload(batch=[1], context=[5]))["time_s"].iloc[0]
    assert trace.admitted.tolist() == [0.0, 0.0]
    assert trace.first_token == pytest.approx([d0, d0 + d1 + d2], rel=1e-9)
    assert trace.finish == pytest.approx([d0 + d1 + d2, d0 + d1 + d2 + d3], rel=1e-9)
    assert trace.total_steps == 4


def random_trace(seed: int, n: int, rate: float, longest: int = 3000) -> RequestTrace:
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1 / rate, n))
    prompt = rng.integers(1, longest, n)
    generate = rng.integers(1, 300, n)
    return RequestTrace(arrival - arrival[0], prompt, generate, "memtraffic", "random")


def test_littles_law_holds_on_a_replayed_trace() -> None:
    traces: list[Trace] = []
    requests = random_trace(5, 3000, 25.0)
    row = simulate_trace(
        load_model("olmoe-1b-7b"), H100, Workload(), requests, Engine(8192), keep_traces=traces
    )
    row, trace = row.iloc[0], traces[0]
    time_in_system = float(np.mean((trace.finish - trace.arrival)[300:]))
    assert row["mean_in_system"] == pytest.approx(row["requests_per_s"] * time_in_system, rel=0.03)
    assert row["rate"] == pytest.approx(requests.mean_rate) and not row["saturated"]


def reference_engine(
    coster: StepCoster,
    requests: RequestTrace,
    budget: int,
    max_seqs: int,
    reserve: np.ndarray,
    room: int,
    blocks: list[list[int]] | None = None,
    block: tuple[int, int] = (16, 0),
) -> tuple[np.ndarray, np.ndarray]:
    """The engine one step at a time, every step costed by `step_time`: (first token, finish) times.
    With `blocks` (each request's full prompt blocks; `block` their tokens and bytes), prefix caching as
    simulator/prefix_cache.py describes it, kept in plain lists: users per block in use, and the free
    blocks oldest first."""
    n = len(requests)
    first, finish = np.full(n, np.nan), np.full(n, np.nan)
    cached = {}  # id -> prompt tokens cached, while prefilling
    decoding = {}  # id -> (context, decode steps left)
    t, head, held = 0.0, 0, 0
    blocks = blocks if blocks is not None else [[] for _ in range(n)]
    tokens_per_block, block_bytes = block
    own = [max(int(r) - len(b) * block_bytes, 0) for r, b in zip(reserve, blocks, strict=True)]
    users: dict[int, int] = {}
    free: list[int] = []

    def release(rid: int) -> int:
        gone = 0
        for h in blocks[rid][::-1]:
            users[h] -= 1
            if users[h] == 0:
                del users[h]
                free.append(h)
                gone += block_bytes
        return own[rid] + gone

    while np.isnan(finish).any():
        arrived = int(np.searchsorted(requests.arrival, t, side="right"))
        if not cached and not decoding and head == arrived:
            t = float(requests.arrival[arrived])
            continue
        left = budget - len(decoding)
        pieces, ends = [], []
        for rid in list(cached):
            take = min(int(requests.prompt[rid]) - cached[rid], left)
            if take > 0:
                last = cached[rid] + take == requests.prompt[rid]
                pieces.append((take, cached[rid], last))
                cached[rid] += take
                left -= take
                ends += [rid] if last else []
        while left > 0 and head < arrived and len(cached) + len(decoding) < max_seqs:
            mine = blocks[head]
            need = own[head] + block_bytes * len([h for h in mine if h not in users])
            if held + need > room:
                break
            hit = 0
            most = min(len(mine), (int(requests.prompt[head]) - 1) // tokens_per_block)
            while hit < most and (mine[hit] in users or mine[hit] in free):
                hit += 1
            for h in mine:
                if h in free:
                    free.remove(h)
                users[h] = users.get(h, 0) + 1
            held += need
            while free and len(free) * block_bytes > room - held:
                free.pop(0)
            hit *= tokens_per_block
            take = min(int(requests.prompt[head]) - hit, left)
            pieces.append((take, hit, hit + take == requests.prompt[head]))
            cached[head], left = hit + take, left - take
            ends += [head] if hit + take == requests.prompt[head] else []
            head += 1
        t += coster.step_time([c for c, _ in decoding.values()], pieces)
        for rid in list(decoding):
            context, steps = decoding[rid]
            decoding[rid] = (context + 1, steps - 1)
            if steps == 1:
                finish[rid], held = t, held - release(rid)
                del decoding[rid]
        for rid in ends:
            del cached[rid]
            first[rid] = t
            if requests.generate[rid] == 1:
                finish[rid], held = t, held - release(rid)
            else:
                decoding[rid] = (int(requests.prompt[rid]), int(requests.generate[rid]) - 1)
    return first, finish


def binding_room(requests: RequestTrace) -> tuple[np.ndarray, int]:
    """Reservations of one "byte" a token of P + G, and a room that binds: about six requests' worth."""
    reserve = (requests.prompt + requests.generate).astype(np.int64)
    room = int(6 * reserve.mean())
    return np.minimum(reserve, room), room


@pytest.mark.parametrize("name", ["olmoe-1b-7b", "ultramemv2-1b-7b", GEMMA3])
def test_the_engine_agrees_with_a_step_by_step_reference(name: str) -> None:
    model, budget, max_seqs = load_model(name), 1024, 16
    for seed, rate in ((1, 5.0), (2, 60.0)):  # a quiet engine, and one with a queue
        requests = random_trace(seed, 150, rate, longest=2500)
        last = int((requests.prompt + requests.generate).max())
        coster = StepCoster(model, H100, Workload(), 1, 1, last, budget)
        reserve, room = binding_room(requests)
        trace = run_engine(
            coster,
            requests.arrival,
            requests.generate,
            budget,
            max_seqs,
            prompt=requests.prompt,
            reserve=reserve,
            room=room,
        )
        first, finish = reference_engine(coster, requests, budget, max_seqs, reserve, room)
        assert trace.first_token == pytest.approx(first, rel=1e-9)
        assert trace.finish == pytest.approx(finish, rel=1e-9)


def test_a_request_too_large_for_memory_is_refused(tmp_path: Path) -> None:
    requests = random_trace(4, 20, 1.0)
    big = RequestTrace(
        requests.arrival, np.r_[requests.prompt[:-1], 900_000], requests.generate, "memtraffic", "x"
    )
    with pytest.raises(ConfigError, match="request 20 by arrival .* does not fit"):
        simulate_trace(load_model("olmoe-1b-7b"), H100, Workload(), big, Engine(8192))


def test_serve_requests_file_on_the_command_line(tmp_path: Path) -> None:
    requests = random_trace(6, 200, 10.0)
    path = tmp_path / "trace.csv"
    pd.DataFrame(
        {"arrival_s": requests.arrival, "prompt": requests.prompt, "generate": requests.generate}
    ).to_csv(path, index=False)
    proc = run(
        "serve",
        "olmoe-1b-7b",
        "ultramemv2-1b-7b",
        "--requests-file",
        str(path),
        "--trace-speed",
        "2",
        "-f",
        "csv",
    )
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(StringIO(proc.stdout))
    assert list(df["model"]) == ["olmoe-1b-7b", "ultramemv2-1b-7b"]
    assert df["rate"].to_numpy() == pytest.approx(2 * requests.mean_rate)
    assert (df["requests"] == 200).all() and (df["ttft_per_token_p99_s"] >= df["ttft_per_token_p50_s"]).all()
    table = run("serve", "olmoe-1b-7b", "--requests-file", str(path), "--trace-requests", "50")
    assert table.returncode == 0, table.stderr
    assert "TTFT/token p50" in table.stdout and "50 requests of trace.csv" in table.stdout


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--rate", "1"], ["--requests-file and --rate"]),
        (["--prompt", "100"], ["--requests-file and --prompt"]),
        (["--generate", "100"], ["--requests-file and --generate"]),
        (["--concurrency", "8"], ["--requests-file and --concurrency"]),
        (["--tpot", "5ms"], ["--requests-file and --tpot"]),
        (["--ep", "2"], ["--ep 2 with --requests-file"]),
        (["--trace-speed", "-1"], ["--trace-speed -1"]),
        (["--trace-requests", "5"], ["5 requests"]),
    ],
)
def test_serve_requests_file_bad_options_are_one_line(
    tmp_path: Path, args: list[str], needles: list[str]
) -> None:
    path = tmp_path / "trace.csv"
    rows = "".join(f"{i * 0.1},{100 + i},{10 + i}\n" for i in range(30))
    path.write_text("arrival_s,prompt,generate\n" + rows)
    assert_one_line_error(run("serve", "olmoe-1b-7b", "--requests-file", str(path), *args), *needles)


def test_serve_bad_trace_files_are_one_line(tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 3}\n{"time')
    assert_one_line_error(run("serve", "olmoe-1b-7b", "--requests-file", str(bad)), str(bad), "line 2")
    missing = write(tmp_path, "cols.csv", "a,b\n1,2\n")
    assert_one_line_error(run("serve", "olmoe-1b-7b", "--requests-file", str(missing)), "no request columns")


AZURE_SAMPLE = ROOT / "traces" / "samples" / "azure-llm-code-2023" / "head.csv"


def test_the_recorded_azure_sample_reads_as_recorded() -> None:
    # the first 439 requests of the Azure 2023 code trace: 18:17:03.9799600 to 18:20:52.1691350, 943,170
    # context and 10,881 generated tokens (summed from the file by hand, independently of the reader)
    trace = load_request_trace(AZURE_SAMPLE)
    assert trace.layout == "azure" and len(trace) == 439
    assert trace.arrival[0] == 0.0 and trace.arrival[-1] == pytest.approx(228.189175, abs=1e-6)
    assert int(trace.prompt.sum()) == 943_170 and int(trace.generate.sum()) == 10_881
    assert (trace.prompt[0], trace.generate[0], trace.prompt[-1], trace.generate[-1]) == (4808, 10, 1469, 10)
    # at the recorded pace an H100 keeps up with it
    df = simulate_trace(load_model("olmoe-1b-7b"), load_hardware("h100-sxm"), Workload(), trace, Engine(8192))
    assert not df["saturated"].iloc[0]


def test_decode_contexts_are_the_stretches_requests_reach() -> None:
    # prompts 10, 12, 30 generating 4, 1, 3: contexts 10 .. 12 and 30 .. 31 (the second never decodes)
    first, last, reached = decode_contexts(np.array([10, 12, 30]), np.array([4, 1, 3]))
    assert (first, last, reached.tolist()) == (10, 31, [10, 11, 12, 30, 31])
    assert decode_contexts(np.array([5, 9]), np.array([1, 1]))[2].tolist() == [1]


def test_a_compact_decode_table_costs_as_the_dense_one() -> None:
    model, budget = load_model("olmoe-1b-7b"), 2048
    requests = random_trace(8, 60, 30.0)
    first, last, reached = decode_contexts(requests.prompt, requests.generate)
    assert len(reached) < last - first + 1  # the stretches leave gaps
    dense = StepCoster(model, H100, Workload(), 1, first, last, budget)
    compact = StepCoster(model, H100, Workload(), 1, first, last, budget, contexts=reached)
    runs = [
        run_engine(c, requests.arrival, requests.generate, budget, 64, prompt=requests.prompt)
        for c in (dense, compact)
    ]
    for name in ("admitted", "first_token", "finish"):
        assert np.array_equal(getattr(runs[0], name), getattr(runs[1], name)), name
    assert compact.decode_flops.shape[0] == len(reached)


def test_one_very_long_request_tabulates_only_its_own_decode_steps() -> None:
    # a 300,000-token prompt among short ones: its 8 decode contexts are tabulated, not the 300,000
    # between the short prompts and it (a dense table took gigabytes)
    requests = random_trace(9, 40, 2.0, longest=2000)
    prompt = np.r_[requests.prompt[:-1], 300_000]
    generate = np.r_[requests.generate[:-1], 9]
    long = RequestTrace(requests.arrival, prompt, generate, "memtraffic", "long")
    traces: list[Trace] = []
    simulate_trace(load_model("olmoe-1b-7b"), H100, Workload(), long, Engine(8192), keep_traces=traces)
    reached = decode_contexts(prompt, generate)[2]
    assert reached.size <= int(generate.sum()) and np.isfinite(traces[0].finish).all()

"""Prefix caching in the request-level engine (simulator/prefix_cache.py, `serve --shared-prefix`, a
Mooncake trace's hash_ids): the block pool worked by hand, a schedule traced by hand, a step-by-step
reference engine with a cache of its own, and the recorded Mooncake sample's hits against a brute-force
count."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simulator.config import Workload
from simulator.errors import ConfigError
from simulator.loading import load_hardware, load_model
from simulator.prefix_cache import ListedBlocks, PrefixCache, SharedPrefixBlocks, prefix_cacheable
from simulator.request import PrefillStep
from simulator.request_trace import RequestTrace, load_request_trace
from simulator.serving import mixed_step
from simulator.sweep import simulate
from simulator.traffic import (
    Engine,
    StepCoster,
    block_kv_bytes,
    run_engine,
    simulate_trace,
    simulate_traffic,
)
from tests.test_cli import assert_one_line_error, run
from tests.test_request_trace import binding_room, random_trace, reference_engine

H100 = load_hardware("h100-sxm")
ROOT = Path(__file__).resolve().parents[1]
MOONCAKE_SAMPLE = ROOT / "traces" / "samples" / "mooncake-2024" / "head.jsonl"


def test_the_block_pool_worked_by_hand() -> None:
    cache = PrefixCache(block_tokens=4, block_bytes=10)
    assert cache.hit_tokens([1, 2, 3], prompt=13) == 0
    cache.take([1, 2, 3])
    assert cache.held_bytes == 30 and cache.new_bytes([1, 2, 9]) == 10  # only block 9 is new
    # prompt 12 has (12 - 1) // 4 = 2 blocks it may find (its last token is always computed)
    assert cache.hit_tokens([1, 2, 9], prompt=12) == 8
    assert cache.hit_tokens([1, 2], prompt=8) == 4  # a prompt of whole blocks recomputes its last one
    assert cache.hit_tokens([5, 1, 2], prompt=13) == 0  # a prefix is found from its first block on
    cache.take([1, 2, 9])
    assert cache.give_back([1, 2, 3]) == 10  # 1 and 2 are still in use
    assert cache.give_back([1, 2, 9]) == 30
    # freed tail first: 3, then 9, 2, 1, so the prefix blocks are evicted last
    assert list(cache.free) == [3, 9, 2, 1] and cache.held_bytes == 0 and cache.free_bytes == 40
    cache.evict_to(25)
    assert list(cache.free) == [2, 1]
    assert cache.hit_tokens([1, 2, 3], prompt=13) == 8  # block 3 is gone, 1 and 2 are found


def test_shared_prefix_blocks() -> None:
    blocks = SharedPrefixBlocks(16, requests=3, prompt=100, shared_tokens=40)
    # 100 // 16 = 6 full blocks each, 40 // 16 = 2 shared
    assert blocks.of(0) == [0, 1, 2, 3, 4, 5]
    assert blocks.of(1) == [0, 1, 6, 7, 8, 9] and blocks.of(2) == [0, 1, 10, 11, 12, 13]
    assert blocks.counts().tolist() == [6, 6, 6] and len(blocks) == 3
    listed = ListedBlocks.from_lists(512, [[7, 8, 9], [7, 4]], np.array([1100, 1024]))
    assert listed.of(0) == [7, 8] and listed.of(1) == [7, 4]  # 1100 tokens: two full blocks of 512


def test_a_shared_prefix_traced_by_hand() -> None:
    # OLMoE, two requests of prompt 40 and 2 output tokens, all of 32 tokens (two blocks of 16) shared;
    # B arrives just after A's first step starts
    #   step 0: A's prompt (40, prefix 0): A's first token
    #   step 1: A decodes at context 40 (its last: A finishes); B admitted, finds A's two blocks: its
    #           prompt from token 32 (8, prefix 32): B's first token
    #   step 2: B decodes at context 40 and finishes
    model, wl = load_model("olmoe-1b-7b"), Workload()
    coster = StepCoster(model, H100, wl, 40, 40, 41, 64)
    blocks = SharedPrefixBlocks(16, requests=2, prompt=40, shared_tokens=32)
    # reservations in made-up bytes: 1000 a request, 300 a block; a shared block is held once
    trace = run_engine(
        coster,
        np.array([0.0, 1e-9]),
        2,
        64,
        8,
        prompt=np.array([40, 40]),
        reserve=np.array([1000, 1000]),
        room=10_000,
        blocks=blocks,
        block_bytes=300,
    )
    d0 = simulate(model, H100, Workload(phase="prefill", batch=[1], context=[40]))["time_s"].iloc[0]
    d1 = mixed_step(model, H100, wl, 1, [40], ((PrefillStep(1, 1, 8, 32, "last", 0), 1.0),)).time_s
    d2 = simulate(model, H100, Workload(batch=[1], context=[40]))["time_s"].iloc[0]
    assert trace.cached.tolist() == [0, 32]
    assert trace.first_token == pytest.approx([d0, d0 + d1], rel=1e-9)
    assert trace.finish == pytest.approx([d0 + d1, d0 + d1 + d2], rel=1e-9)
    # in step 1 both run: each its own 1000 - 2 x 300, and the two blocks once
    assert trace.most_reserved == 400 + 400 + 600


def families_trace(seed: int, n: int, rate: float, block: int) -> tuple[RequestTrace, list[list[int]]]:
    """Requests whose prompts begin with one of five prefixes (a block or more each) and go on with
    blocks of their own, as conversations and agents sharing system prompts do."""
    requests = random_trace(seed, n, rate, longest=2500)
    rng = np.random.default_rng(seed + 100)
    families = [list(range(f * 1000, f * 1000 + int(rng.integers(1, 30)))) for f in range(5)]
    lists, fresh = [], 10**6
    for p in requests.prompt:
        full = int(p) // block
        mine = families[int(rng.integers(0, 5))][:full]
        lists.append(mine + list(range(fresh, fresh + full - len(mine))))
        fresh += full
    return requests, lists


@pytest.mark.parametrize("name", ["olmoe-1b-7b", "ultramemv2-1b-7b"])
def test_caching_agrees_with_a_step_by_step_reference(name: str) -> None:
    model, budget, max_seqs, block = load_model(name), 1024, 16, 64
    for seed, rate in ((1, 5.0), (2, 60.0)):
        requests, lists = families_trace(seed, 150, rate, block)
        coster = StepCoster(
            model, H100, Workload(), 1, 1, int((requests.prompt + requests.generate).max()), budget
        )
        # one "byte" a token, so a block holds 64; a room of about six requests, so blocks are evicted
        reserve, room = binding_room(requests)
        blocks = ListedBlocks.from_lists(block, lists, requests.prompt)
        kwargs = {"prompt": requests.prompt, "reserve": reserve, "room": room}
        trace = run_engine(
            coster,
            requests.arrival,
            requests.generate,
            budget,
            max_seqs,
            **kwargs,
            blocks=blocks,
            block_bytes=block,
        )
        first, finish = reference_engine(
            coster,
            requests,
            budget,
            max_seqs,
            reserve,
            room,
            [blocks.of(i) for i in range(150)],
            (block, block),
        )
        assert trace.first_token == pytest.approx(first, rel=1e-9)
        assert trace.finish == pytest.approx(finish, rel=1e-9)
        # the cache did something, and the same engine without it differs
        assert trace.cached.sum() > 0
        plain = run_engine(coster, requests.arrival, requests.generate, budget, max_seqs, **kwargs)
        assert not np.allclose(plain.first_token, trace.first_token)


def test_prompts_with_nothing_shared_cost_as_without_caching() -> None:
    model, budget = load_model("olmoe-1b-7b"), 2048
    requests = random_trace(7, 300, 20.0)
    coster = StepCoster(
        model, H100, Workload(), 1, 1, int((requests.prompt + requests.generate).max()), budget
    )
    counts = requests.prompt // 16
    starts = np.concatenate([[0], np.cumsum(counts)])
    unique = ListedBlocks(16, np.arange(int(counts.sum())), starts)  # every block its own
    reserve = (requests.prompt + requests.generate).astype(np.int64) * 16
    kwargs = {"prompt": requests.prompt, "reserve": reserve, "room": int(reserve.sum())}
    plain = run_engine(coster, requests.arrival, requests.generate, budget, 256, **kwargs)
    cached = run_engine(
        coster, requests.arrival, requests.generate, budget, 256, **kwargs, blocks=unique, block_bytes=256
    )
    assert cached.cached.sum() == 0
    for name in ("admitted", "first_token", "finish"):
        assert np.array_equal(getattr(cached, name), getattr(plain, name)), name


def test_the_mooncake_sample_reads_as_recorded() -> None:
    # 190 requests from 1,178,625 ms to 1,206,104 ms; 1,414,408 input and 35,028 output tokens; every line
    # lists ceil(input / 512) block hashes (counted from the file apart from the reader)
    trace = load_request_trace(MOONCAKE_SAMPLE)
    assert trace.layout == "mooncake" and len(trace) == 190
    assert trace.arrival[-1] == pytest.approx(1206.104 - 1178.625)
    assert int(trace.prompt.sum()) == 1_414_408 and int(trace.generate.sum()) == 35_028
    assert trace.blocks is not None and trace.blocks.block_tokens == 512
    assert trace.blocks.counts().tolist() == (trace.prompt // 512).tolist()
    assert trace.blocks.of(5) == list(range(46, 58))  # line 6: 6,264 tokens, twelve full blocks 46 .. 57


def brute_force_hits(trace: RequestTrace) -> np.ndarray:
    """Prompt tokens each request finds with a cache that forgets nothing: its leading full blocks that
    an earlier request's prompt had, at most up to its last token."""
    seen: set[int] = set()
    hits = []
    for i in range(len(trace)):
        mine = trace.blocks.of(i)
        most = min(len(mine), (int(trace.prompt[i]) - 1) // 512)
        n = 0
        while n < most and mine[n] in seen:
            n += 1
        hits.append(n * 512)
        seen.update(mine)
    return np.array(hits)


def test_mooncake_hits_equal_a_brute_force_count() -> None:
    trace = load_request_trace(MOONCAKE_SAMPLE)
    model = load_model("olmoe-1b-7b")
    last = int((trace.prompt + trace.generate).max())
    coster = StepCoster(model, H100, Workload(), 1, int(trace.prompt.min()), last, 8192)
    n = len(trace)
    # memory without limit: admission in arrival order, nothing evicted
    run = run_engine(
        coster,
        trace.arrival,
        trace.generate,
        8192,
        256,
        prompt=trace.prompt,
        reserve=np.ones(n, dtype=np.int64),
        room=10**15,
        blocks=trace.blocks,
        block_bytes=1,
    )
    hits = brute_force_hits(trace)
    assert np.array_equal(run.cached, hits)
    # 38.0 % of the prompt tokens (a script over the raw JSON lines, traces/samples/mooncake-2024/README.md)
    assert hits.sum() / trace.prompt.sum() == pytest.approx(0.3805, abs=5e-4)
    # on an H100 the cache is finite: olmoe's KV of these prompts is far beyond its memory, so it finds less
    row = simulate_trace(model, H100, Workload(), trace, Engine(8192)).iloc[0]
    assert row["prefix_caching"] == "512-token blocks"
    measured = slice(int(np.ceil(0.1 * n)), n)
    assert 0 < row["cached_prompt_share"] <= hits[measured].sum() / trace.prompt[measured].sum()


def test_a_shared_system_prompt_on_the_rate_engine() -> None:
    model = load_model("olmoe-1b-7b")
    engine, common = Engine(8192), {"requests": 300, "seed": 3}
    with_cache = simulate_traffic(
        model, H100, Workload(), 2048, 64, [8.0], engine, shared_prefix=1536, **common
    )
    without = simulate_traffic(
        model, H100, Workload(), 2048, 64, [8.0], engine, shared_prefix=1536, caching=False, **common
    )
    row, base = with_cache.iloc[0], without.iloc[0]
    # every measured request finds the 1536 tokens (96 blocks of 16) the first one cached: 1536 / 2048
    assert row["cached_prompt_share"] == 0.75 and row["prefix_caching"] == "16-token blocks"
    assert base["cached_prompt_share"] == 0 and base["prefix_caching"] == "off"
    assert row["ttft_p50_s"] < base["ttft_p50_s"]
    assert row["memory_bytes"] < base["memory_bytes"]  # the shared blocks held once


def test_recurrent_models_run_without_prefix_caching() -> None:
    assert prefix_cacheable(load_model("olmoe-1b-7b"))
    mamba = load_model("falcon-mamba-7b")
    assert not prefix_cacheable(mamba) and not prefix_cacheable(load_model("qwen3-next-80b-a3b"))
    df = simulate_traffic(
        mamba, H100, Workload(), 1024, 16, [2.0], Engine(8192), requests=50, shared_prefix=512
    )
    assert df["prefix_caching"].iloc[0] == "off: recurrent state" and df["cached_prompt_share"].iloc[0] == 0


def test_serve_shared_prefix_on_the_command_line() -> None:
    args = ("serve", "olmoe-1b-7b", "--rate", "4", "--requests", "100", "--generate", "32", "-f", "csv")
    proc = run(*args, "--shared-prefix", "1024")
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(StringIO(proc.stdout))
    assert df["shared_prefix"].iloc[0] == 1024 and df["cached_prompt_share"].iloc[0] == 0.5
    proc = run(*args, "--shared-prefix", "1024", "--no-prefix-caching")
    assert proc.returncode == 0, proc.stderr
    assert pd.read_csv(StringIO(proc.stdout))["prefix_caching"].iloc[0] == "off"
    table = run("serve", "olmoe-1b-7b", "--rate", "4", "--requests", "100", "--shared-prefix", "1024")
    assert table.returncode == 0 and "prompt cached" in table.stdout


def test_serve_shared_prefix_mistakes_are_one_line() -> None:
    assert_one_line_error(
        run("serve", "olmoe-1b-7b", "--rate", "4", "--shared-prefix", "5000"), "--shared-prefix 5000"
    )
    assert_one_line_error(run("serve", "olmoe-1b-7b", "--shared-prefix", "64"), "without --rate")
    proc = run("serve", "olmoe-1b-7b", "--requests-file", str(MOONCAKE_SAMPLE), "--shared-prefix", "64")
    assert_one_line_error(proc, "--shared-prefix")


def test_a_mooncake_line_without_block_hashes_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(
        '{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]}\n'
        '{"timestamp": 9, "input_length": 600, "output_length": 5, "hash_ids": "0,1"}\n'
    )
    proc = run("serve", "olmoe-1b-7b", "--requests-file", str(path))
    assert_one_line_error(proc, "hash_ids at line 2 is not a list of block hashes")


def test_a_block_holds_the_kv_of_the_layers_that_grow() -> None:
    # OLMoE: 16 layers of 16 KV heads of 128, bf16, K and V: 16 x 2 x 16 x 128 x 2 bytes a token
    assert block_kv_bytes(load_model("olmoe-1b-7b"), Workload(), 16, 20_000) == 16 * 2 * 16 * 128 * 2 * 16
    # Gemma-3-1B: 26 layers of one KV head of 256, every sixth global, the others a window of 512. Past
    # the window only the 4 global layers grow; below it all 26 do
    gemma = load_model(str(ROOT / "tests" / "data" / "hf" / "Gemma-3-1B.json"))
    per_layer = 2 * 1 * 256 * 2 * 16
    assert block_kv_bytes(gemma, Workload(), 16, 20_000) == 4 * per_layer
    assert block_kv_bytes(gemma, Workload(), 16, 300) == 26 * per_layer


def test_an_engine_that_cannot_admit_anything_says_so() -> None:
    model = load_model("olmoe-1b-7b")
    coster = StepCoster(model, H100, Workload(), 64, 64, 70, 128)
    # a block list naming block 5 twice (the trace reader refuses it) needs 2 x 60 bytes in a room of 100
    twice = ListedBlocks(32, np.array([5, 5, 6, 6]), np.array([0, 2, 4]))
    with pytest.raises(ConfigError, match="request 1 by arrival: its KV cache does not fit"):
        run_engine(
            coster,
            np.zeros(2),
            4,
            128,
            8,
            prompt=np.array([64, 64]),
            reserve=np.array([100, 100]),
            room=100,
            blocks=twice,
            block_bytes=60,
        )


def test_a_few_cached_tokens_do_not_hide_saturation() -> None:
    # 16 of 2048 prompt tokens shared: the engine's capacity hardly moves (37 requests/s without the
    # cache, tests/test_traffic.py), so 45 requests/s saturates it however short the run
    model = load_model("olmoe-1b-7b")
    row = simulate_traffic(
        model, H100, Workload(), 2048, 256, [45.0], Engine(8192), requests=300, shared_prefix=16
    ).iloc[0]
    assert 0 < row["cached_prompt_share"] < 0.01 and row["saturated"]


def test_bad_block_hashes_and_a_stray_caching_flag_are_one_line(tmp_path: Path) -> None:
    line = '{{"timestamp": 0, "input_length": 4000, "output_length": 5, "hash_ids": {}}}\n'
    for hashes, needle in (
        ("[1, 2, 1]", "names a block twice"),
        ("[18446744073709551615]", "outside 64-bit integers"),
    ):
        path = tmp_path / "m.jsonl"
        path.write_text(line.format(hashes))
        assert_one_line_error(run("serve", "olmoe-1b-7b", "--requests-file", str(path)), needle)
    proc = run("serve", "olmoe-1b-7b", "--no-prefix-caching")
    assert_one_line_error(proc, "--no-prefix-caching without --rate or --requests-file")

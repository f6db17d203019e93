"""The engine with paged KV allocation and preemption by recompute (simulator/paged_engine.py,
`serve --allocation paged`): a preemption traced by hand, the reserved engine where memory never
binds, and a slow step-by-step reference engine of its own on random traces."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from simulator.config import Workload
from simulator.loading import load_hardware, load_model
from simulator.paged_engine import run_paged_engine
from simulator.request_trace import RequestTrace
from simulator.traffic import Engine, StepCoster, run_engine, simulate_traffic, token_kv_bytes
from tests.test_request_trace import random_trace

H100 = load_hardware("h100-sxm")


def test_a_preemption_traced_by_hand() -> None:
    # OLMoE, two requests of prompt 4 generating 6, both at 0; one "byte" a token, a room of 12
    #   step 0: both prompts (4 + 4 held): both first tokens
    #   steps 1, 2: both decode (contexts 4, then 5): 12 held
    #   step 3: two more tokens do not fit: B, admitted last, is preempted (6 tokens freed; it generated
    #           3); A decodes alone at contexts 6, 7, 8 (steps 3 to 5) and finishes: nothing held
    #   step 6: B admitted again, its prompt now 4 + 3 = 7 tokens: one more token; steps 7, 8 decode
    #           at contexts 7, 8: B finishes with its 6 tokens
    model = load_model("olmoe-1b-7b")
    coster = StepCoster(model, H100, Workload(), 4, 4, 8, 64)
    trace = run_paged_engine(
        coster, np.zeros(2), 6, 64, 8, reserve=np.array([10, 10]), room=12, token_bytes=1
    )
    d = [
        coster.step_time([], [(4, 0, True), (4, 0, True)]),
        coster.step_time([4, 4], []),
        coster.step_time([5, 5], []),
        coster.step_time([6], []),
        coster.step_time([7], []),
        coster.step_time([8], []),
        coster.step_time([], [(7, 0, True)]),
        coster.step_time([7], []),
        coster.step_time([8], []),
    ]
    ends = np.cumsum(d)
    assert trace.preemptions == 1
    assert trace.first_token == pytest.approx([ends[0], ends[0]], rel=1e-12)
    assert trace.finish == pytest.approx([ends[5], ends[8]], rel=1e-12)
    assert trace.most_reserved == 12


def test_where_memory_never_binds_paged_is_reserved() -> None:
    model, budget = load_model("olmoe-1b-7b"), 2048
    requests = random_trace(11, 300, 20.0)
    coster = StepCoster(
        model, H100, Workload(), 1, 1, int((requests.prompt + requests.generate).max()), budget
    )
    reserve = (requests.prompt + requests.generate).astype(np.int64)
    room = int(reserve.sum())
    kwargs = {"prompt": requests.prompt, "reserve": reserve, "room": room}
    reserved = run_engine(coster, requests.arrival, requests.generate, budget, 64, **kwargs)
    paged = run_paged_engine(coster, requests.arrival, requests.generate, budget, 64, token_bytes=1, **kwargs)
    assert paged.preemptions == 0
    for name in ("admitted", "first_token", "finish"):
        assert np.array_equal(getattr(paged, name), getattr(reserved, name)), name


def paged_reference(
    coster: StepCoster, requests: RequestTrace, budget: int, max_seqs: int, room: int, block: int = 0
) -> tuple[np.ndarray, np.ndarray, int]:
    """The paged engine one step at a time, each request holding one "byte" a token it has computed:
    (first token, finish, preemptions). Running requests are dicts in the order admitted. `block`: a
    preempted request leaves its full blocks of that many tokens in a free list (oldest first), found
    again on its return unless evicted to keep the list within the memory left."""
    n = len(requests)
    first, finish = np.full(n, np.nan), np.full(n, np.nan)
    prompt = requests.prompt.astype(int).tolist()
    todo = requests.generate.astype(int).tolist()  # tokens to generate from its next admission
    running: list[dict] = []
    queue: deque[int] = deque()
    t, head, held, preemptions = 0.0, 0, 0, 0
    free: list[tuple[int, int]] = []  # (request, block), the first evicted first

    def evict(most: int) -> None:
        while free and len(free) * block > most:
            free.pop(0)

    def preempt(r: dict) -> None:
        nonlocal held, preemptions
        running.remove(r)
        held -= r["tokens"]
        if block:
            for j in reversed(range(r["tokens"] // block)):
                if (r["id"], j) in free:
                    free.remove((r["id"], j))
                free.append((r["id"], j))
        if r["decoding"]:
            prompt[r["id"]] = r["tokens"] + 1  # its prompt and all it generated
            todo[r["id"]] = r["left"]
        queue.appendleft(r["id"])
        preemptions += 1

    while np.isnan(finish).any():
        arrived = int(np.searchsorted(requests.arrival, t, side="right"))
        if not running and not queue and head == arrived:
            t = float(requests.arrival[arrived])
            continue
        before = preemptions
        while held + sum(r["decoding"] for r in running) > room:
            preempt(running[-1])
        decoders = [r for r in running if r["decoding"]]
        left, growth, pieces, ends = budget - len(decoders), len(decoders), [], []
        for r in [r for r in running if not r["decoding"]]:
            if r not in running:
                continue
            take = min(prompt[r["id"]] - r["tokens"], left)
            if take <= 0:
                continue
            while held + growth + take > room and running[-1] is not r:
                if running[-1]["decoding"]:
                    decoders.remove(running[-1])
                    growth, left = growth - 1, left + 1
                preempt(running[-1])
            if held + growth + take > room:
                preempt(r)
                continue
            pieces.append((take, r["tokens"], r["tokens"] + take == prompt[r["id"]]))
            r["tokens"] += take
            growth, left = growth + take, left - take
            ends += [r] if r["tokens"] == prompt[r["id"]] else []
        while preemptions == before and left > 0 and len(running) < max_seqs and (queue or head < arrived):
            rid = queue[0] if queue else head
            found = 0
            while block and (found + 1) * block <= prompt[rid] - 1 and (rid, found) in free:
                found += 1
            hit = found * block
            take = min(prompt[rid] - hit, left)
            if held + growth + hit + take > room:
                break
            if queue:
                queue.popleft()
            else:
                head += 1
            for j in range(found):
                free.remove((rid, j))
            r = {"id": rid, "tokens": hit + take, "decoding": False, "left": 0}
            running.append(r)
            pieces.append((take, hit, hit + take == prompt[rid]))
            growth, left = growth + hit + take, left - take
            evict(room - held - growth)
            ends += [r] if hit + take == prompt[rid] else []
        t += coster.step_time([r["tokens"] for r in decoders], pieces)
        held += growth
        evict(room - held)
        for r in decoders:
            r["tokens"] += 1
            r["left"] -= 1
        for r in ends:
            if np.isnan(first[r["id"]]):
                first[r["id"]] = t
            r["decoding"], r["left"] = True, todo[r["id"]] - 1
        for r in [r for r in running if r["decoding"] and r["left"] == 0]:
            finish[r["id"]] = t
            held -= r["tokens"]
            running.remove(r)
    return first, finish, preemptions


@pytest.mark.parametrize("name,block", [("olmoe-1b-7b", 0), ("ultramemv2-1b-7b", 0), ("olmoe-1b-7b", 64)])
def test_the_paged_engine_agrees_with_a_step_by_step_reference(name: str, block: int) -> None:
    # block 64: a preempted request's blocks stay cached for its recompute (prefix caching on)
    model, budget, max_seqs = load_model(name), 1024, 16
    for seed, rate in ((3, 5.0), (4, 60.0)):
        requests = random_trace(seed, 150, rate, longest=2500)
        last = int((requests.prompt + requests.generate).max()) + 300  # recomputed prompts are longer
        coster = StepCoster(model, H100, Workload(), 1, 1, last, budget)
        reserve = (requests.prompt + requests.generate).astype(np.int64)
        room = int(max(3 * reserve.mean(), reserve.max()))  # binds: requests are preempted
        trace = run_paged_engine(
            coster,
            requests.arrival,
            requests.generate,
            budget,
            max_seqs,
            prompt=requests.prompt,
            reserve=reserve,
            room=room,
            token_bytes=1,
            recompute_blocks=(block, block) if block else None,
        )
        first, finish, preemptions = paged_reference(coster, requests, budget, max_seqs, room, block)
        assert trace.preemptions == preemptions
        assert trace.first_token == pytest.approx(first, rel=1e-9)
        assert trace.finish == pytest.approx(finish, rel=1e-9)
        assert trace.most_reserved <= room
        if rate > 10:
            assert preemptions > 0


def test_paged_serving_on_the_rate_engine_and_a_trace() -> None:
    model = load_model("olmoe-1b-7b")
    # OLMoE's token: 16 layers x K and V x 16 heads x 128 x 2 bytes
    assert token_kv_bytes(model, Workload(), 4096) == 16 * 2 * 16 * 128 * 2
    light = [
        simulate_traffic(model, H100, Workload(), 2048, 64, [4.0], Engine(8192, 256, a), requests=200)
        for a in ("reserved", "paged")
    ]
    for col in ("ttft_p50_s", "tpot_p50_s", "e2e_p99_s"):
        assert light[0][col].iloc[0] == light[1][col].iloc[0], col  # memory never binds at 4/s
    assert light[1]["allocation"].iloc[0] == "paged" and light[1]["preemptions"].iloc[0] == 0
    heavy = simulate_traffic(
        model, H100, Workload(), 2048, 256, [40.0], Engine(8192, 256, "paged"), requests=800
    )
    assert heavy["preemptions"].iloc[0] > 0
    assert heavy["memory_bytes"].iloc[0] <= H100.hbm_capacity.value


def test_paged_with_prefix_caching_where_memory_never_binds_is_reserved() -> None:
    from simulator.prefix_cache import SharedPrefixBlocks

    model, budget = load_model("olmoe-1b-7b"), 2048
    requests = random_trace(12, 200, 15.0)
    prompt = np.full(200, 1200)
    coster = StepCoster(model, H100, Workload(), 1200, 1, 1200 + 300, budget)
    blocks = SharedPrefixBlocks(16, 200, 1200, 800)
    reserve = (prompt + requests.generate).astype(np.int64)
    kwargs = {
        "prompt": prompt,
        "reserve": reserve,
        "room": int(reserve.sum()),
        "blocks": blocks,
        "block_bytes": 16,
    }
    reserved = run_engine(coster, requests.arrival, requests.generate, budget, 64, **kwargs)
    paged = run_paged_engine(coster, requests.arrival, requests.generate, budget, 64, token_bytes=1, **kwargs)
    assert paged.cached[20:].min() == 800 and paged.preemptions == 0
    for name in ("admitted", "first_token", "finish", "cached"):
        assert np.array_equal(getattr(paged, name), getattr(reserved, name)), name


def test_serve_allocation_on_the_command_line() -> None:
    from io import StringIO

    import pandas as pd

    from tests.test_cli import assert_one_line_error, run

    proc = run(
        "serve", "olmoe-1b-7b", "--rate", "40", "--requests", "400", "--allocation", "paged", "-f", "csv"
    )
    assert proc.returncode == 0, proc.stderr
    row = pd.read_csv(StringIO(proc.stdout)).iloc[0]
    assert row["allocation"] == "paged" and row["preemptions"] >= 0
    table = run("serve", "olmoe-1b-7b", "--rate", "4", "--requests", "100", "--allocation", "paged")
    assert table.returncode == 0 and "preempted" in table.stdout
    assert_one_line_error(
        run("serve", "olmoe-1b-7b", "--rate", "4", "--allocation", "lazy"), "--allocation lazy"
    )
    assert_one_line_error(run("serve", "olmoe-1b-7b", "--allocation", "paged"), "without --rate")


def test_a_prompt_preempted_half_computed_keeps_only_its_computed_blocks() -> None:
    from simulator.prefix_cache import ListedBlocks

    # A: prompt 16 (block 1), generating 3; B: prompt 64 (blocks 10..13), generating 2; a budget of 17
    # tokens a step and room for both prompts' blocks and one token more. B computes 17 prompt tokens,
    # is preempted when A's next token does not fit, and on its return finds only block 10 (the one
    # whole block it had computed): it computes 64 - 16 more, not 64 - 48
    model = load_model("olmoe-1b-7b")
    coster = StepCoster(model, H100, Workload(), 64, 1, 200, 17)
    pieces: list[tuple] = []
    cost = coster.step_time
    coster.step_time = lambda contexts, step: pieces.extend(step) or cost(contexts, step)  # type: ignore[method-assign]
    prompt = np.array([16, 64])
    blocks = ListedBlocks.from_lists(16, [[1], [10, 11, 12, 13]], prompt)
    trace = run_paged_engine(
        coster,
        np.zeros(2),
        np.array([3, 2]),
        17,
        4,
        reserve=prompt + np.array([3, 2]),
        room=16 + 64 + 1,
        token_bytes=1,
        prompt=prompt,
        blocks=blocks,
        block_bytes=16,
    )
    assert trace.preemptions == 1
    computed_by_b = sum(p[0] for p in pieces) - 16  # every prompt piece but A's
    assert computed_by_b == 17 + (64 - 16)
    assert len(trace.requeued) == 1 and trace.requeued[0] < trace.readmitted[0]


def test_a_preempted_request_waiting_again_counts_in_the_queue() -> None:
    from simulator.traffic import new_trace, summarize

    # ten requests at 0 .. 9 s, each admitted as it arrives; one preempted at 3 s and admitted again at
    # 5 s: within the measured window [1 s, 9 s] the queue holds one request for 2 of its 8 s
    trace = new_trace(np.arange(10.0))
    trace.admitted[:] = trace.arrival
    trace.first_token[:] = trace.arrival + 0.1
    trace.finish[:] = trace.arrival + 0.5
    trace.requeued, trace.readmitted = [3.0], [5.0]
    stats = summarize(trace, 4, 100)
    assert stats["mean_queue"] == pytest.approx(2 / 8) and stats["max_queue"] == 1


def test_decode_stretches_cost_as_single_steps_with_blocks_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    # random traces with shared prefixes and preempted requests' own blocks cached: the vectorised
    # decode-only stretches give exactly what stepping one step at a time gives (evictions during a
    # stretch can make the queue's head fit; the engine then steps singly)
    import simulator.paged_engine as paged
    from simulator.prefix_cache import ListedBlocks

    coster = StepCoster(load_model("olmoe-1b-7b"), H100, Workload(), 1, 1, 2000, 512)
    stretch = paged._decode_run
    preemptions = 0
    for seed in [*range(80), 435]:  # 435: an eviction makes the head fit once the budget cuts its chunk
        rng = np.random.default_rng(seed)
        n, block = int(rng.integers(3, 30)), int(rng.choice([4, 8, 16]))
        prompt, generate = rng.integers(1, 120, n), rng.integers(1, 60, n)
        arrival = np.sort(rng.exponential(0.005, n).cumsum())
        families = [list(range(f * 100, f * 100 + 8)) for f in range(3)]
        lists = []
        for i in range(n):
            full = int(prompt[i]) // block
            shared = families[int(rng.integers(0, 3))][: int(rng.integers(0, full + 1))]
            lists.append(shared + [10**6 + 1000 * i + j for j in range(full - len(shared))])
        reserve = (prompt + generate).astype(np.int64)
        kwargs = {
            "prompt": prompt,
            "reserve": reserve,
            "room": int(reserve.max() * rng.uniform(1.0, 2.5)) + block,
            "token_bytes": 1,
            "blocks": ListedBlocks.from_lists(block, lists, prompt),
            "block_bytes": block,
            "recompute_blocks": (block, block) if rng.random() < 0.5 else None,
        }
        budget, max_seqs = int(rng.integers(8, 128)), int(rng.integers(1, 8))
        runs = []
        for single in (False, True):
            monkeypatch.setattr(
                paged,
                "_decode_run",
                (lambda c, t, o, s, most, *a: stretch(c, t, o, s, 1, *a)) if single else stretch,
            )
            runs.append(run_paged_engine(coster, arrival - arrival[0], generate, budget, max_seqs, **kwargs))
        assert runs[0].preemptions == runs[1].preemptions, seed
        assert runs[0].finish == pytest.approx(runs[1].finish, rel=1e-12), seed  # sums in another order
        preemptions += runs[0].preemptions
    assert preemptions > 100

"""Continuous batching in steady state (simulator.serving): the step mix against a brute-force engine
loop, and each mixed step against separate `simulate` runs of its parts."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from simulator.config import Workload
from simulator.errors import ConfigError
from simulator.loading import load_hardware, load_model
from simulator.request import PrefillStep
from simulator.serving import (
    default_token_budget,
    largest_concurrency,
    mixed_step,
    prefill_share,
    serving_steady_state,
    steady_schedule,
)
from simulator.sweep import simulate

H100 = load_hardware("h100-sxm")


def engine_loop(concurrency: int, prompt: int, generate: int, budget: int, steps: int) -> tuple[list, float]:
    """A serving engine run step by step, as vLLM schedules with chunked prefill: requests arrive evenly
    at concurrency / (generate - 1) a step; each step the budget left beside the nominal decode tokens
    goes to the waiting prompts first come first served, a prompt split where the budget ends. Returns
    each step's prompt pieces ((tokens, tokens cached before them, whether they end the prompt), ...)
    and the mean number of sequences decoding."""
    rate = concurrency / (generate - 1)
    left = budget - concurrency
    arrived = 0.0
    waiting: list[int] = []  # prompt tokens still to prefill, per waiting request
    decoding: list[int] = []  # decode steps left, per sequence
    trace = []
    population = 0
    for _ in range(steps):
        before = int(arrived)
        arrived += rate
        waiting += [prompt] * (int(arrived) - before)
        decoding = [d - 1 for d in decoding if d > 1]  # this step's decode tokens
        population += len(decoding)
        room, pieces = left, []
        while waiting and room:
            take = min(room, waiting[0])
            pieces.append((take, prompt - waiting[0], take == waiting[0]))
            waiting[0] -= take
            room -= take
            if waiting[0] == 0:
                waiting.pop(0)
                decoding.append(generate - 1)
        trace.append(tuple(pieces))
    return trace, population / steps


def as_pieces(step: tuple) -> tuple:
    """An engine step's pieces as `mixed_step` takes them."""
    return tuple(
        (PrefillStep(1, 1, tokens, cached, "last" if ends else "none", 0), 1.0)
        for tokens, cached, ends in step
    )


@pytest.mark.parametrize(
    "concurrency,prompt,generate,budget",
    [
        (64, 2048, 256, 8192),  # a prompt alone every ~4 steps
        (8, 8000, 256, 2048),  # a prompt alone, in 4 chunks
        (512, 2048, 256, 8192),  # ~2 whole prompts a step: steps of 2 and, now and then, of 3
        (300, 2048, 256, 8192),  # ~1.2 whole prompts a step
    ],
)
def test_step_mix_matches_a_brute_force_engine(
    concurrency: int, prompt: int, generate: int, budget: int
) -> None:
    steps = 200_000
    trace, mean_decoding = engine_loop(concurrency, prompt, generate, budget, steps)
    seen = Counter(tuple((t, c) for t, c, _ in step) for step in trace if step)
    kinds = steady_schedule(concurrency, prompt, generate, budget)
    assert not kinds[0].pieces and prefill_share(kinds) <= 1
    expected: dict[tuple, float] = {}
    for k in kinds[1:]:
        # a kind of g whole prompts is g pieces (tokens, 0) in the engine's steps
        key = tuple((st.tokens, st.prefix) for st, times in k.pieces for _ in range(int(times)))
        expected[key] = expected.get(key, 0.0) + k.share
    assert set(seen) == {key for key, share in expected.items() if share > 0}
    for key, share in expected.items():
        assert seen[key] / steps == pytest.approx(share, abs=2e-4)
    assert kinds[0].share == pytest.approx(1 - seen.total() / steps, abs=5e-4)
    # Little's law: the sequences decoding on average are the concurrency the schedule was built for
    assert mean_decoding == pytest.approx(concurrency, rel=0.01)


@pytest.mark.parametrize(
    "concurrency,prompt,generate,budget",
    [
        (32, 4097, 64, 4128),  # overlapping prompts: full steps and one-token slivers, alternating
        (96, 2000, 65, 3896),  # 1.5 prompts a step, 1.9 fit: steps of 3800 and of 2200 tokens, alternating
        (15, 20_000, 41, 8207),  # long prompts in 3 chunks, each arriving before the last is done
    ],
)
def test_packed_steps_cost_what_the_engine_runs(
    concurrency: int, prompt: int, generate: int, budget: int
) -> None:
    # overlapping prompts share steps; the schedule's full steps of c tokens stand for them. Against
    # the engine's own steps, each costed as it is: the same prompt tokens a step, and the mean step
    # time within 2 %
    model = load_model("olmoe-1b-7b")
    trace, _ = engine_loop(concurrency, prompt, generate, budget, 20_000)
    trace = trace[2_000:]  # past the first arrivals
    kinds = steady_schedule(concurrency, prompt, generate, budget)
    assert len(kinds) == 2 and prefill_share(kinds) <= 1  # packed, and keeping up
    rate = concurrency / (generate - 1)
    run_tokens = sum(t for step in trace for t, _, _ in step) / len(trace)
    assert run_tokens == pytest.approx(rate * prompt, rel=0.01)
    packed = kinds[1]
    per_step = packed.share * sum(times * st.tokens for st, times in packed.pieces)
    assert per_step == pytest.approx(rate * prompt, rel=1e-9)
    contexts = list(range(prompt, prompt + generate - 1))
    counts = Counter(trace)
    engine = sum(
        n * mixed_step(model, H100, Workload(), concurrency, contexts, as_pieces(step)).time_s
        for step, n in counts.items()
    ) / len(trace)
    schedule = sum(
        k.share * mixed_step(model, H100, Workload(), concurrency, contexts, k.pieces).time_s for k in kinds
    )
    assert schedule == pytest.approx(engine, rel=0.02)


def test_the_engine_keeps_up_while_the_budget_holds_the_prompts() -> None:
    # 100 sequences, 33 tokens each: ~3.1 prompts of 512 a step need 1,600 tokens; 1,024 are left
    behind = steady_schedule(100, 512, 33, 1124)
    assert prefill_share(behind) > 1
    trace, _ = engine_loop(100, 512, 33, 1124, 20_000)
    assert all(sum(t for t, _, _ in step) == 1024 for step in trace[100:])  # every step full, queue grows
    # with room for 1,700 prompt tokens a step it keeps up
    assert prefill_share(steady_schedule(100, 512, 33, 1800)) <= 1


def test_decode_alone_equals_simulate_at_the_mean_context() -> None:
    # full attention: a step's KV read and FLOPs are linear in each sequence's context, so sequences
    # spread evenly over 1000..1200 cost what all of them at 1100 would
    model = load_model("llama-3.1-8b")
    contexts = list(range(1000, 1201))
    step = mixed_step(model, H100, Workload(), 32, contexts)
    ref = simulate(model, H100, Workload(batch=[32], context=[1100])).iloc[0]
    assert step.time_s == pytest.approx(ref["time_s"], rel=1e-9)
    assert step.flops == pytest.approx(ref["flops"], rel=1e-9)
    assert step.bytes_ideal == pytest.approx(ref["bytes_ideal"], rel=1e-9)
    assert step.kv_bytes == pytest.approx(ref["kv_read_bytes"] + ref["kv_write_bytes"], rel=1e-9)
    assert step.act_peak_bytes == pytest.approx(ref["act_peak_bytes"], rel=1e-9)


def test_a_dense_mixed_step_reads_its_weights_once() -> None:
    model = load_model("llama-3.1-8b")
    chunk = PrefillStep(1, 1, 1536, 512, "none", 0)
    step = mixed_step(model, H100, Workload(), 16, [3000], ((chunk, 1.0),))
    decode = simulate(model, H100, Workload(batch=[16], context=[3000])).iloc[0]
    prefill = simulate(
        model, H100, Workload(phase="prefill", batch=[1], context=[1536], prefix=512, logits="none")
    ).iloc[0]
    assert step.flops == pytest.approx(decode["flops"] + prefill["flops"], rel=1e-9)
    # a dense model's weights are read once for all 1552 tokens; only the embedding rows gathered grow
    # with the tokens: the prompt's 1536 rows of 4096 bf16 values come on top of the decode part's
    prompt_rows = 1536 * 4096 * 2
    assert step.weight_bytes == pytest.approx(decode["weight_bytes_ideal"] + prompt_rows, rel=1e-9)
    assert step.bytes_ideal == pytest.approx(
        decode["bytes_ideal"] + prefill["bytes_ideal"] - (prefill["weight_bytes_ideal"] - prompt_rows),
        rel=1e-9,
    )
    # the prefill's KV: its 1536 new entries written and the 512 + 1536 entries its causal chunk reads
    assert step.kv_bytes == pytest.approx(
        decode["kv_read_bytes"]
        + decode["kv_write_bytes"]
        + prefill["kv_read_bytes"]
        + prefill["kv_write_bytes"],
        rel=1e-9,
    )


def test_a_moe_mixed_step_reads_the_experts_of_all_its_tokens() -> None:
    # OLMoE: 64 experts, top-8, per layer. 4 decode tokens and a 12-token prompt touch the experts
    # 16 tokens touch, 64 (1 - (56/64)^16) per layer, not the experts of 4 plus those of 12
    model = load_model("olmoe-1b-7b")
    step = mixed_step(model, H100, Workload(), 4, [100], ((PrefillStep(1, 1, 12, 0, "last", 0), 1.0),))
    whole = simulate(model, H100, Workload(batch=[16], context=[1]), per_layer=True)
    moe = whole[whole["kind"] == "moe"]
    expert_bytes = moe["item_bytes"].iloc[0]
    distinct = 64 * (1 - (56 / 64) ** 16)
    assert moe["distinct_items"].iloc[0] == pytest.approx(distinct, rel=1e-9)
    total = whole[whole["layer"] == "total"].iloc[0]
    assert step.weight_bytes == pytest.approx(total["weight_bytes_ideal"], rel=1e-9)
    apart = sum(
        simulate(model, H100, wl)["weight_bytes_ideal"].iloc[0]
        for wl in (Workload(batch=[4], context=[100]), Workload(phase="prefill", batch=[1], context=[12]))
    )
    assert apart - step.weight_bytes > 16 * 0.5 * expert_bytes  # reading twice would cost far more


def test_steady_state_bookkeeping() -> None:
    model = load_model("olmoe-1b-7b")
    df = serving_steady_state(model, H100, Workload(batch=[1, 64]), 2048, 256, 8192).set_index("concurrency")
    for n in (1, 64):
        r = df.loc[n]
        kinds = steady_schedule(n, 2048, 256, 8192)
        # the mean step: decode alone on 1 - phi of the steps, with a whole prompt on phi
        phi = n / 255
        assert r["prefill_share"] == pytest.approx(phi)
        assert r["tpot_s"] == pytest.approx((1 - phi) * r["decode_step_s"] + phi * r["mixed_step_s"])
        assert kinds[1].in_flight == 1 and r["ttft_s"] == pytest.approx(r["mixed_step_s"])
        # tokens a step: n decode tokens and the first tokens of n / 255 prefilled prompts
        assert r["tokens_per_s"] == pytest.approx(n * 256 / 255 / r["tpot_s"])
        assert r["requests_per_s"] * 256 == pytest.approx(r["tokens_per_s"])
    # the KV cache of 64 sequences, spread over contexts 2048..2301, lies in what is held
    kv_entry = 16 * 2 * 16 * 128 * 2  # OLMoE: 16 layers, K and V, 16 heads x 128, bf16
    assert df.loc[64, "memory_bytes"] - df.loc[1, "memory_bytes"] > 63 * (2048 + 126.5) * kv_entry


def test_largest_concurrency_is_the_edge() -> None:
    model = load_model("ultramemv2-1b-7b")
    best = largest_concurrency(model, H100, Workload(), 2048, 256, 8192, 5e-3).iloc[0]
    n = int(best["concurrency"])
    assert best["limit"] == "tpot" and best["tpot_s"] <= 5e-3
    above = serving_steady_state(model, H100, Workload(batch=[n + 1]), 2048, 256, 8192).iloc[0]
    assert above["tpot_s"] > 5e-3
    tight = largest_concurrency(model, H100, Workload(), 2048, 256, 8192, 1e-4).iloc[0]
    assert tight["concurrency"] == 0 and math.isnan(tight["tpot_s"]) and tight["limit"] == "tpot"


@pytest.mark.parametrize(
    "args,needle",
    [
        ((64, 2048, 1, 8192), "--generate 1"),
        ((8192, 2048, 256, 8192), "--token-budget 8192"),
        ((0, 2048, 256, 8192), "--concurrency 0"),
    ],
)
def test_impossible_serving_is_a_config_error(args: tuple[int, int, int, int], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("-", r"\-")):
        steady_schedule(*args)


def test_a_concurrency_the_budget_cannot_feed_has_no_times() -> None:
    r = serving_steady_state(load_model("olmoe-1b-7b"), H100, Workload(batch=[1024]), 2048, 256, 2048).iloc[0]
    assert not r["keeps_up"] and r["prefill_share"] > 1
    assert np.isnan(r["tpot_s"]) and np.isnan(r["tokens_per_s"])


def test_token_budget_defaults_as_vllm_chooses_them() -> None:
    # vLLM's API server: max_num_batched_tokens 8192 on GPUs of 70 GiB and more except A100s, else 2048
    budgets = {
        name: default_token_budget(load_hardware(name))
        for name in ("h100-sxm", "h200", "a100-sxm-80gb", "l40s")
    }
    assert budgets == {"h100-sxm": 8192, "h200": 8192, "a100-sxm-80gb": 2048, "l40s": 2048}


def test_a_concurrency_that_fills_the_budget_is_behind_not_an_error() -> None:
    df = serving_steady_state(load_model("olmoe-1b-7b"), H100, Workload(batch=[8, 2048]), 2048, 256, 2048)
    full = df.set_index("concurrency").loc[2048]
    assert not full["keeps_up"] and np.isinf(full["prefill_share"]) and np.isnan(full["tpot_s"])
    alone = simulate(load_model("olmoe-1b-7b"), H100, Workload(batch=[2048], context=[2048 + 127]))
    assert full["decode_step_s"] == pytest.approx(alone["time_s"].iloc[0], rel=1e-9)  # mean context 2175


def test_no_concurrency_meeting_the_target_shows_no_measure_of_one() -> None:
    row = largest_concurrency(load_model("olmoe-1b-7b"), H100, Workload(), 2048, 256, 8192, 1e-6).iloc[0]
    assert row["concurrency"] == 0 and row["limit"] == "tpot"
    measures = ["tpot_s", "ttft_s", "prefill_share", "tokens_per_s", "bytes_per_token", "memory_bytes"]
    assert row[measures].isna().all()


def test_a_prompt_beyond_any_context_is_refused() -> None:
    with pytest.raises(ConfigError, match="--prompt 16777217: more than"):
        steady_schedule(8, 2**24 + 1, 256, 8192)


def test_expert_parallel_ranks_each_schedule_their_own_share() -> None:
    # DeepSeek-V2-Lite over 4 ranks: 32 sequences are 8 a rank; each rank takes its own prompts in its
    # own budget, in phase with the others, so the steady state's step mix is a rank's of 8 sequences
    model = load_model("deepseek-v2-lite")
    ep4 = Workload(ep=4)
    df = serving_steady_state(model, H100, ep4.model_copy(update={"batch": [32]}), 1000, 202, 8192).iloc[0]
    assert df["prefill_share"] == pytest.approx(prefill_share(steady_schedule(8, 1000, 202, 8192)))
    # decode alone: the global step of 32 sequences at contexts 1000..1200, as simulate costs it per device
    # (MLA reads its latent cache linearly in the context, so the spread costs what context 1100 does)
    alone = simulate(model, H100, Workload(ep=4, batch=[32], context=[1100])).iloc[0]
    assert df["decode_step_s"] == pytest.approx(alone["time_s"], rel=1e-9)
    # a mixed step: a 1000-token prompt on each of the 4 ranks beside the 32 decode tokens; the MoE
    # layers read the experts of all 4032 tokens, as a decode step of 4032 tokens over 4 ranks does
    on_every_rank = ((PrefillStep(1, 4, 1000, 0, "last", 0), 1.0),)
    step = mixed_step(model, H100, ep4, 32, list(range(1000, 1201)), on_every_rank)
    whole = simulate(model, H100, Workload(ep=4, batch=[4032], context=[1])).iloc[0]
    assert step.weight_bytes == pytest.approx(whole["weight_bytes_ideal"], rel=1e-9)

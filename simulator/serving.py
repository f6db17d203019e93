"""Continuous batching in steady state: a serving engine that keeps `concurrency` sequences decoding and
fills each step's leftover token budget with the prompts of the requests that replace them.

A request brings P prompt tokens and leaves after G generated tokens (the first by its prefill, then
G - 1 decode steps). With N sequences decoding, one step advances each by a token, so requests finish,
and new ones must start, at lambda = N / (G - 1) per step (Little's law), bringing lambda * P prompt
tokens a step. As vLLM's scheduler does with chunked prefill, a step's budget (max_num_batched_tokens)
goes to the N decode tokens first, and the c = budget - N left to prompts: k = floor(c / P) whole prompts
a step when a prompt fits, else one prompt in chunks of c, each after the ones cached (`prefill_steps`).
A share phi of the steps carries such a prefill and 1 - phi decodes alone; the engine keeps up only
while phi <= 1 (else limit "budget": prompts arrive faster than the leftover budget takes them).

The decode sequences are spread evenly over the contexts P .. P + G - 2 (one finishes each 1 / lambda
steps). A mixed step is costed per layer: FLOPs, activation and KV bytes of its decode part (averaged
over that spread) and of its prefill part add up, while the weights are read once, for all the step's
tokens together (a MoE layer's distinct experts, a memory layer's distinct rows, at N + prefill tokens).
Each layer's roofline (calibrated where asked) then gives the step's time. TPOT is the mean step time
(every decoding sequence gets one token a step); TTFT is the time of the steps that carry a request's own
prefill, with no wait in a queue. Arrival bursts, queueing delay, preemption and expert parallelism are
not modelled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from simulator.config import DTYPE_BYTES, HardwareConfig, ModelConfig, Workload, describe_weight_dtypes
from simulator.costs import LayerCost, Points
from simulator.errors import ConfigError
from simulator.request import PrefillStep, check_request, prefill_steps
from simulator.roofline import roofline
from simulator.sweep import check_parallelism, layer_entries, routing_model, simulate

SERVING_COLUMNS: dict[str, str] = {
    "model": "model name",
    "hardware": "hardware name",
    "concurrency": "sequences decoding at once (N)",
    "prompt": "prompt tokens per request (P)",
    "generate": "tokens generated per request (G; the first by its prefill)",
    "token_budget": "tokens a step may carry (decode tokens first, prompts in what is left)",
    "tpot_s": "time per output token: the mean step time",
    "decode_step_s": "time of a step that carries no prefill",
    "mixed_step_s": "mean time of a step that carries a prefill (NaN when the budget leaves none)",
    "ttft_s": "time to first token: the steps that carry a request's own prefill, no queueing",
    "prefill_share": "share of the steps that carry a prefill (phi; above 1 the engine cannot keep up)",
    "keeps_up": "prefill_share <= 1: the budget left beside the decode tokens takes the prompts as they come",
    "requests_per_s": "requests finished per second",
    "tokens_per_s": "tokens generated per second, all sequences",
    "bytes_per_step": "HBM bytes of the mean step (ideal level)",
    "weight_bytes_per_step": "weight bytes of the mean step: distinct experts / rows for all its tokens",
    "bytes_per_token": "HBM bytes per generated token (mean step bytes over the tokens a step yields)",
    "kv_share": "KV-cache share of the mean step's bytes",
    "routing_share": "share of the mean step's bytes that routing reads (routers, memory-layer retrieval)",
    "memory_bytes": "HBM held: weights, the decoding sequences' KV cache, the prompts being prefilled, and "
    "the largest step's activations",
    "fits": "memory_bytes within the GPU's capacity",
    "tp": "tensor-parallel degree",
    "weight_dtype": "weight dtype (per layer kind where they differ)",
    "kv_dtype": "KV-cache dtype",
}

# LayerCost arrays that add up over a step's decode and prefill parts (weights do not: read once)
_ADDITIVE = ("flops", "act_bytes_ideal", "kv_read_bytes", "kv_write_bytes", "routing_flops")
# LayerCost arrays of the weights, taken at the step's whole token count
_WEIGHTS = ("weight_bytes_ideal", "routing_weight_bytes")


@dataclass(frozen=True)
class StepKind:
    """A kind of step in the steady state: `share` of all steps; `prefill` None for decode alone."""

    share: float
    prefill: PrefillStep | None


def steady_schedule(concurrency: int, prompt: int, generate: int, budget: int) -> list[StepKind]:
    """The kinds of step a steady engine runs and their shares of all steps, decode alone first.

    Requests arrive at lambda = concurrency / (generate - 1) per step, evenly. When a prompt fits in the
    budget left beside the decode tokens, a step takes the whole prompts waiting, up to as many as fit:
    m = clamp(lambda, 1, fit) per prefill step on average (steps of floor(m) and of ceil(m) prompts), on a
    share lambda / m of the steps. Otherwise each prompt is chunked (`prefill_steps`), each chunk on a
    share lambda. The shares sum to 1 while the engine keeps up; beyond that the decode-alone share is
    negative (`prefill_share` above 1)."""
    check_request(prompt, generate)
    if generate < 2:
        raise ConfigError("--generate 1: a request with no decode step keeps no sequence decoding")
    if concurrency < 1:
        raise ConfigError(f"--concurrency {concurrency}: at least one sequence decodes")
    left = budget - concurrency
    if left < 1:
        raise ConfigError(
            f"--token-budget {budget}: leaves no token for prompts beside {concurrency} decoding sequences"
        )
    per_step = concurrency / (generate - 1)  # requests finishing, and arriving, per step
    if left >= prompt:
        m = min(max(per_step, 1.0), left // prompt)  # prompts per prefill step, on average
        low = int(np.floor(m))
        frac = m - low  # the share of prefill steps that carry one prompt more
        split = [(low, 1.0 - frac), (low + 1, frac)] if frac > 1e-12 else [(low, 1.0)]
        kinds = [
            StepKind(per_step / m * part, PrefillStep(1, group, prompt, 0, "last", 0))
            for group, part in split
        ]
    else:
        kinds = [StepKind(per_step * st.count, st) for st in prefill_steps(1, prompt, left)]
    return [StepKind(1.0 - sum(k.share for k in kinds), None), *kinds]


def prefill_share(kinds: list[StepKind]) -> float:
    """Share of the steps that carry a prefill (above 1: prompts arrive faster than they are taken)."""
    return float(sum(k.share for k in kinds if k.prefill is not None))


@dataclass(frozen=True)
class StepCost:
    """One step's totals over the model's layers, per device."""

    time_s: float
    flops: float
    bytes_ideal: float
    weight_bytes: float
    kv_bytes: float
    routing_weight_bytes: float
    act_peak_bytes: float


def _entries(model: ModelConfig, workload: Workload) -> list:
    return layer_entries(model, Points.grid(workload, routing_model(workload)), workload)


def _mean(cost: LayerCost, name: str) -> float:
    return float(np.mean(np.asarray(getattr(cost, name), dtype=np.float64)))


def mixed_step(
    model: ModelConfig,
    hardware: HardwareConfig,
    workload: Workload,
    concurrency: int,
    contexts: list[int],
    prefill: PrefillStep | None,
    *,
    efficiency: Mapping[str, float] | None = None,
    overhead: Mapping[str, float] | None = None,
) -> StepCost:
    """A step of `concurrency` decode tokens, the sequences spread evenly over `contexts`, plus the
    prompt tokens of `prefill` (None: decode alone), costed per layer (module docstring)."""
    base = {"tokens_per_step": 1, "prefix": 0, "logits": "last"}
    decode = _entries(
        model,
        workload.model_copy(update={**base, "phase": "decode", "batch": [concurrency], "context": contexts}),
    )
    parts = [decode]
    tokens = concurrency
    if prefill is not None:
        step = {
            "phase": "prefill",
            "batch": [prefill.batch],
            "context": [prefill.tokens],
            "prefix": prefill.prefix,
            "logits": prefill.logits,
            "tokens_per_step": 1,
        }
        parts.append(_entries(model, workload.model_copy(update=step)))
        tokens += prefill.batch * prefill.tokens
    # the weights of every layer at the step's whole token count (a decode step of that many tokens)
    whole = _entries(
        model, workload.model_copy(update={**base, "phase": "decode", "batch": [tokens], "context": [1]})
    )
    eff, fixed = dict(efficiency or {}), dict(overhead or {})
    time = flops = traffic = weights = kv = routing = act_peak = 0.0
    for i, w in enumerate(whole):
        layers = max(len(w.blocks), 1)
        summed = {name: sum(_mean(part[i].cost, name) for part in parts) for name in _ADDITIVE}
        weight, route = (_mean(w.cost, name) for name in _WEIGHTS)
        layer_kv = summed["kv_read_bytes"] + summed["kv_write_bytes"]
        layer_bytes = weight + summed["act_bytes_ideal"] + layer_kv
        t = roofline(
            np.array([summed["flops"]]),
            np.array([layer_bytes]),
            hardware,
            workload.activation_dtype,
            eff.get(w.cost.kind, 1.0),
        )["time_s"][0]
        time += (float(t) + fixed.get(w.cost.kind, 0.0)) * layers
        flops += summed["flops"] * layers
        traffic += layer_bytes * layers
        weights += weight * layers
        kv += layer_kv * layers
        routing += route * layers
        # the decode and prompt tokens' activations sit side by side in the layer (the prompt's own
        # peak: an MLA prefill expands its latent to full keys and values)
        layer_peak = sum(float(np.mean(part[i].cost.peak_activations())) for part in parts)
        act_peak = max(act_peak, layer_peak)
    residual = tokens * model.d_model * DTYPE_BYTES[workload.activation_dtype]
    return StepCost(time, flops, traffic, weights, kv, routing, act_peak + residual)


def serving_steady_state(
    model: ModelConfig,
    hardware: HardwareConfig,
    workload: Workload,
    prompt: int,
    generate: int,
    token_budget: int,
    *,
    efficiency: Mapping[str, float] | None = None,
    overhead: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Per concurrency (the workload's batch sizes): the steady state of continuous batching (module
    docstring). The workload's phase and contexts are ignored; its dtypes, tp and routing apply. A
    concurrency the budget cannot feed (`keeps_up` false) has NaN times. Columns: `SERVING_COLUMNS`."""
    check_request(prompt, generate)
    if workload.ep > 1:
        raise ConfigError("--ep: expert-parallel serving is not modelled in the steady state (use `latency`)")
    check_parallelism(model, workload)
    contexts = list(range(prompt, prompt + generate - 1))
    # one whole prompt's KV cache: what a decode step at that context reads
    one = workload.model_copy(update={"phase": "decode", "batch": [1], "context": [prompt], "prefix": 0})
    kv_per_prompt = float(simulate(model, hardware, one)["kv_read_bytes"].iloc[0])
    costs = {"efficiency": efficiency, "overhead": overhead}
    rows = []
    for n in sorted(set(workload.batch)):
        kinds = steady_schedule(n, prompt, generate, token_budget)
        steps = [(k, mixed_step(model, hardware, workload, n, contexts, k.prefill, **costs)) for k in kinds]
        mixed = steps[1:]
        phi = prefill_share(kinds)
        keeps_up = phi <= 1.0 + 1e-12
        per_step = n / (generate - 1)  # requests finishing (and starting) per step

        def mean(field: str, steps: list[tuple[StepKind, StepCost]] = steps, ok: bool = keeps_up) -> float:
            return sum(k.share * getattr(c, field) for k, c in steps) if ok else np.nan

        tpot = mean("time_s")
        tokens_per_step = n + per_step  # the decode tokens and the first tokens of the prefills done
        step_bytes = mean("bytes_ideal")
        # the prompts in flight: the group of a whole-prompt step, or the one prompt being chunked
        prefilling = max(k.prefill.batch for k, _ in mixed if k.prefill is not None)
        spread = workload.model_copy(
            update={"phase": "decode", "batch": [n], "context": contexts, "prefix": 0}
        )
        held = float(simulate(model, hardware, spread, **costs)["memory_bytes"].mean())
        largest_step = max(c.act_peak_bytes for _, c in steps)
        held += prefilling * kv_per_prompt + largest_step - steps[0][1].act_peak_bytes
        mixed_share = sum(k.share for k, _ in mixed)
        rows.append(
            {
                "model": model.name,
                "hardware": hardware.name,
                "concurrency": n,
                "prompt": prompt,
                "generate": generate,
                "token_budget": token_budget,
                "tpot_s": tpot,
                "decode_step_s": steps[0][1].time_s,
                "mixed_step_s": sum(k.share * c.time_s for k, c in mixed) / mixed_share,
                # per request: each of its chunks once, or the step its group shares (weighted by the
                # prompts each kind of step carries)
                "ttft_s": sum(k.share * k.prefill.batch * c.time_s for k, c in mixed if k.prefill) / per_step,
                "prefill_share": phi,
                "keeps_up": keeps_up,
                "requests_per_s": per_step / tpot,
                "tokens_per_s": tokens_per_step / tpot,
                "bytes_per_step": step_bytes,
                "weight_bytes_per_step": mean("weight_bytes"),
                "bytes_per_token": step_bytes / tokens_per_step,
                "kv_share": mean("kv_bytes") / step_bytes,
                "routing_share": mean("routing_weight_bytes") / step_bytes,
                "memory_bytes": held,
                "fits": held <= hardware.hbm_capacity.value,
                "tp": workload.tp,
                "weight_dtype": describe_weight_dtypes(workload),
                "kv_dtype": workload.kv_dtype,
            }
        )
    return pd.DataFrame(rows)[list(SERVING_COLUMNS)]


def largest_concurrency(
    model: ModelConfig,
    hardware: HardwareConfig,
    workload: Workload,
    prompt: int,
    generate: int,
    token_budget: int,
    tpot_s: float,
    *,
    efficiency: Mapping[str, float] | None = None,
    overhead: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """The largest concurrency whose steady state keeps up, meets TPOT <= `tpot_s` and fits: one row
    with `limit` ("tpot", "budget" (the prompts outrun the budget left), "memory", or "none" when the
    budget itself is reached first), `concurrency` 0 with NaN times when one sequence already misses.
    Step time, prefill share and memory all grow with the concurrency, so the search is a bisection."""
    if not (tpot_s > 0 and np.isfinite(tpot_s)):
        raise ConfigError(f"--tpot {tpot_s}: a latency target is a positive time")
    costs = {"efficiency": efficiency, "overhead": overhead}

    def at(n: int) -> pd.Series:
        wl = workload.model_copy(update={"batch": [n]})
        return serving_steady_state(model, hardware, wl, prompt, generate, token_budget, **costs).iloc[0]

    def misses(r: pd.Series) -> str | None:
        if not r["keeps_up"]:
            return "budget"
        if r["tpot_s"] > tpot_s:
            return "tpot"
        return None if r["fits"] else "memory"

    # every decode token needs a place in the budget beside at least one prompt token
    most = token_budget - 1
    if most < 1:
        raise ConfigError(f"--token-budget {token_budget}: leaves no token for prompts")
    first = at(1)
    if misses(first) is not None:
        row = first.copy()
        row[[c for c in SERVING_COLUMNS if c.endswith("_s") or c.endswith("per_s")]] = np.nan
        row["concurrency"], row["limit"] = 0, misses(first)
        return pd.DataFrame([row])
    good, good_row, bad, limit = 1, first, None, "none"
    while bad is None and good < most:  # double until one misses, then bisect
        trial = min(good * 2, most)
        r = at(trial)
        if misses(r) is None:
            good, good_row = trial, r
        else:
            bad, limit = trial, misses(r)
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        r = at(mid)
        if misses(r) is None:
            good, good_row = mid, r
        else:
            bad, limit = mid, misses(r)
    row = good_row.copy()
    row["limit"] = limit
    return pd.DataFrame([row])


def serving_states(
    models: list[ModelConfig],
    hardware: list[HardwareConfig],
    workload: Workload,
    prompt: int,
    generate: int,
    token_budget: int,
    *,
    efficiency: Mapping[str, float] | None = None,
    overhead: Mapping[str, float] | None = None,
    tpot_s: float | None = None,
) -> pd.DataFrame:
    """`serving_steady_state` of model i on hardware[i], stacked; with `tpot_s`, each model's
    `largest_concurrency` instead."""
    if len(models) != len(hardware):
        raise ConfigError(f"{len(models)} models but {len(hardware)} hardware descriptions")
    costs = {"efficiency": efficiency, "overhead": overhead}
    frames = [
        serving_steady_state(m, hw, workload, prompt, generate, token_budget, **costs)
        if tpot_s is None
        else largest_concurrency(m, hw, workload, prompt, generate, token_budget, tpot_s, **costs)
        for m, hw in zip(models, hardware, strict=True)
    ]
    return pd.concat(frames, ignore_index=True)

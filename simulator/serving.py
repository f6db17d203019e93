"""Continuous batching in steady state: a serving engine that keeps `concurrency` sequences decoding and
fills each step's leftover token budget with the prompts of the requests that replace them.

A request brings P prompt tokens and leaves after G generated tokens (the first by its prefill, then
G - 1 decode steps). With N sequences decoding, one step advances each by a token, so requests finish,
and new ones must start, at lambda = N / (G - 1) per step (Little's law), bringing lambda * P prompt
tokens a step. A step's budget (vLLM's max_num_batched_tokens) goes to the N decode tokens first; the
c = budget - N left takes the prompts waiting, first come first served, splitting a prompt where the
budget ends. The engine keeps up while lambda * P <= c (`keeps_up`). Requests arrive evenly, so the
steps follow one of three patterns (`steady_schedule`), each checked against a step-by-step engine:
- a prompt alone: the next arrives after this one is prefilled (in one step, or in chunks of c after
  the part cached), so each step with prompt tokens carries one prompt's whole or one chunk;
- whole prompts together: more than one arrives a step and they fit, so steps carry floor or ceil of
  lambda whole prompts, every step;
- packed: prompts overlap and the budget is what binds. With a prompt arriving every step (lambda >= 1)
  every step carries lambda * P prompt tokens on average (the engine's steps alternate fuller and
  emptier ones around it); with longer prompts arriving less often, full steps of c prompt tokens
  (pieces of consecutive prompts, costed as c / P of one prompt's chunks) run on lambda * P / c of the
  steps, and the rest decode alone or carry a sliver the decode part outweighs.

The decode sequences are spread evenly over the contexts P .. P + G - 2 (one finishes each 1 / lambda
steps). A mixed step is costed per layer: FLOPs, activation and KV bytes of its decode part (averaged
over that spread) and of its prompt pieces add up, while the weights are read once, for all the step's
tokens together (a MoE layer's distinct experts, a memory layer's distinct rows, at N + prompt tokens).
Each layer's roofline (calibrated where asked) then gives the step's time: one roofline over both parts,
as one variable-length attention kernel runs decode and prompt queries side by side; an engine that
runs them as separate kernels takes up to the sum of the two. TPOT is the mean step time (every decoding
sequence gets one token a step); TTFT is the time of the steps that carry a request's own prompt, with
no wait in a queue. With expert parallelism (ep > 1) each data-parallel rank runs this schedule on its own
share of the sequences and its own budget, in phase with the others (their MoE layers see every rank's
tokens). Arrival bursts, queueing delay and preemption are not modelled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from simulator.config import DTYPE_BYTES, HardwareConfig, ModelConfig, Workload, describe_weight_dtypes
from simulator.costs import LayerCost, Points
from simulator.errors import ConfigError
from simulator.request import (
    PrefillStep,
    check_request,
    largest_passing,
    prefill_steps,
    prefill_workload,
    prompt_kv_bytes,
)
from simulator.roofline import roofline
from simulator.sweep import LayerEntry, check_parallelism, layer_entries, routing_model, simulate

SERVING_COLUMNS: dict[str, str] = {
    "model": "model name",
    "hardware": "hardware name",
    "concurrency": "sequences decoding at once (N)",
    "prompt": "prompt tokens per request (P)",
    "generate": "tokens generated per request (G; the first by its prefill)",
    "token_budget": "tokens a step may carry (decode tokens first, prompts in what is left)",
    "tpot_s": "time per output token: the mean step time",
    "decode_step_s": "time of a step that carries no prefill",
    "mixed_step_s": "mean time of a step that carries prompt tokens",
    "ttft_s": "time to first token: the steps that carry a request's own prefill, no queueing",
    "prefill_share": "share of the steps that carry prompt tokens (above 1: the prompts need more steps "
    "than there are; inf when the decode tokens fill the budget)",
    "keeps_up": "prefill_share <= 1: the budget left beside the decode tokens takes the prompts as they come",
    "requests_per_s": "requests finished per second",
    "tokens_per_s": "tokens generated per second, all sequences",
    "bytes_per_step": "HBM bytes of the mean step (ideal level)",
    "weight_bytes_per_step": "weight bytes of the mean step: distinct experts / rows for all its tokens",
    "bytes_per_token": "HBM bytes per generated token on one device: its mean step bytes over the tokens its "
    "sequences yield a step",
    "kv_share": "KV-cache share of the mean step's bytes",
    "routing_share": "share of the mean step's bytes that routing reads (routers, memory-layer retrieval)",
    "memory_bytes": "HBM held: weights, the decoding sequences' KV cache, the prompts being prefilled, and "
    "the largest step's activations",
    "fits": "memory_bytes within the GPU's capacity",
    "tp": "tensor-parallel degree",
    "ep": "expert-parallel degree: the other layers data-parallel over ep ranks, each with its own "
    "sequences, budget and prompts (concurrency and tokens/s are global; bytes and HBM per device)",
    "weight_dtype": "weight dtype (per layer kind where they differ)",
    "kv_dtype": "KV-cache dtype",
}

# the columns that say which steady state a row is, not what it costs
_IDENTITY = ("model", "hardware", "concurrency", "prompt", "generate", "token_budget", "tp", "ep")
_IDENTITY += ("weight_dtype", "kv_dtype")


def default_token_budget(hardware: HardwareConfig) -> int:
    """vLLM's max_num_batched_tokens default for its API server: 8192 on GPUs of 70 GB and more except
    A100s, 2048 on the others (vllm/engine/arg_utils.py, chosen by device memory and name)."""
    big = hardware.hbm_capacity.value >= 70 * 2**30 and "a100" not in hardware.name.lower()
    return 8192 if big else 2048


# LayerCost arrays that add up over a step's decode and prefill parts (weights do not: read once)
_ADDITIVE = ("flops", "act_bytes_ideal", "kv_read_bytes", "kv_write_bytes", "routing_flops")
# LayerCost arrays of the weights, taken at the step's whole token count
_WEIGHTS = ("weight_bytes_ideal", "routing_weight_bytes")


# a step's prompt tokens: pieces of prompts, each a PrefillStep and how many of it the step carries
Pieces = tuple[tuple[PrefillStep, float], ...]


@dataclass(frozen=True)
class StepKind:
    """A kind of step in the steady state: `share` of all steps; its prompt `pieces` (none: decode
    alone); `ttft_steps`: how many of this kind a request's own prefill takes, on average; `in_flight`:
    the prompts it holds partly or wholly prefilled."""

    share: float
    pieces: Pieces = ()
    ttft_steps: float = 0.0
    in_flight: int = 0  # prompts whose KV cache such a step is building


def steady_schedule(concurrency: int, prompt: int, generate: int, budget: int) -> list[StepKind]:
    """The kinds of step a steady engine runs and their shares of all steps, decode alone first (the
    three patterns of the module docstring). The shares sum to 1 while the engine keeps up; beyond it
    the decode-alone share is negative (`prefill_share` above 1)."""
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
    chunks = prefill_steps(1, prompt, min(left, prompt))  # one prompt alone: whole, or in chunks of c
    fit = left // prompt
    if per_step * len(chunks) <= 1.0:  # a prompt alone: each of its steps on a share lambda
        kinds = [StepKind(per_step, ((st, 1.0),), 1.0, 1) for st in chunks]
    elif 1.0 < per_step <= fit:  # whole prompts together, floor or ceil of lambda a step
        low = int(np.floor(per_step))
        frac = per_step - low  # the share of steps that carry one prompt more
        split = [(low, 1.0 - frac), (low + 1, frac)] if frac > 1e-12 else [(low, 1.0)]
        whole = chunks[0]
        # a request is in a step of g prompts with probability g * share / lambda
        kinds = [StepKind(part, ((whole, float(g)),), g * part / per_step, g) for g, part in split]
    elif per_step >= 1.0 and per_step * prompt <= left:  # packed, a prompt arriving every step
        kinds = [StepKind(1.0, ((chunks[0], per_step),), 1.0, int(np.ceil(per_step)) + 1)]
    else:  # packed: full steps of c prompt tokens, c / P of one prompt's chunks each (behind: above 1)
        pieces = tuple((st, left / prompt) for st in chunks)
        steps = float(max(1, -(-prompt // left)))
        kinds = [StepKind(per_step * prompt / left, pieces, steps, -(-left // prompt) + 1)]
    return [StepKind(1.0 - sum(k.share for k in kinds)), *kinds]


def prefill_share(kinds: list[StepKind]) -> float:
    """Share of the steps that carry prompt tokens (above 1: prompts arrive faster than taken)."""
    return float(sum(k.share for k in kinds if k.pieces))


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


def _entries(model: ModelConfig, workload: Workload) -> list[LayerEntry]:
    return layer_entries(model, Points.grid(workload, routing_model(workload)), workload)


def _decode_part(
    model: ModelConfig, workload: Workload, concurrency: int, contexts: list[int]
) -> list[LayerEntry]:
    """Every layer's cost for `concurrency` decode tokens, one point per context of `contexts`."""
    step = {"phase": "decode", "batch": [concurrency], "context": contexts, "prefix": 0, "logits": "last"}
    return _entries(model, workload.model_copy(update={**step, "tokens_per_step": 1}))


def _mean(cost: LayerCost, name: str) -> float:
    return float(np.mean(np.asarray(getattr(cost, name), dtype=np.float64)))


def mixed_step(
    model: ModelConfig,
    hardware: HardwareConfig,
    workload: Workload,
    concurrency: int,
    contexts: list[int],
    pieces: Pieces = (),
    *,
    efficiency: Mapping[str, float] | None = None,
    overhead: Mapping[str, float] | None = None,
) -> StepCost:
    """A step of `concurrency` decode tokens, the sequences spread evenly over `contexts`, plus the
    prompt `pieces` (none: decode alone), costed per layer (module docstring)."""
    parts = [(_decode_part(model, workload, concurrency, contexts), 1.0)]
    prompt_tokens = 0.0
    for piece, times in pieces:
        parts.append((_entries(model, prefill_workload(workload, piece)), times))
        prompt_tokens += times * piece.batch * piece.tokens
    tokens = concurrency + round(prompt_tokens)
    # the weights of every layer at the step's whole token count (a decode step of that many tokens)
    whole = _decode_part(model, workload, tokens, [1])
    eff, fixed = dict(efficiency or {}), dict(overhead or {})
    time = flops = traffic = weights = kv = routing = act_peak = 0.0
    for i, w in enumerate(whole):
        layers = max(len(w.blocks), 1)
        summed = {name: sum(n * _mean(part[i].cost, name) for part, n in parts) for name in _ADDITIVE}
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
        layer_peak = sum(n * float(np.mean(part[i].cost.peak_activations())) for part, n in parts)
        act_peak = max(act_peak, layer_peak)
    residual = tokens * model.d_model * DTYPE_BYTES[workload.activation_dtype]
    return StepCost(time, flops, traffic, weights, kv, routing, act_peak + residual)


def _on_every_rank(pieces: Pieces, ep: int) -> Pieces:
    """One rank's prompt pieces as the global step holds them: each on all ep data-parallel ranks."""
    if ep == 1:
        return pieces
    return tuple((replace(piece, batch=piece.batch * ep), times) for piece, times in pieces)


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
    concurrency the budget cannot feed (`keeps_up` false) has no TPOT, throughput or bytes (NaN); its
    decode step, mixed step and TTFT are still given. Columns: `SERVING_COLUMNS`."""
    check_request(prompt, generate)
    if token_budget < 2:
        raise ConfigError(f"--token-budget {token_budget}: a step carries a decode token and a prompt token")
    check_parallelism(model, workload)
    contexts = list(range(prompt, prompt + generate - 1))
    ep = workload.ep
    kv_per_prompt = prompt_kv_bytes(model, workload, prompt)
    costs = {"efficiency": efficiency, "overhead": overhead}
    rows = []
    for n in sorted(set(workload.batch)):
        identity = {"model": model.name, "hardware": hardware.name, "concurrency": n, "prompt": prompt}
        identity |= {"generate": generate, "token_budget": token_budget, "tp": workload.tp, "ep": ep}
        identity |= {"weight_dtype": describe_weight_dtypes(workload), "kv_dtype": workload.kv_dtype}
        rank = -(-n // ep)  # the busiest data-parallel rank's sequences
        if rank >= token_budget:  # no room for a prompt token: behind, whatever the arrivals
            alone = mixed_step(model, hardware, workload, n, contexts, **costs)
            rows.append(
                {**identity, "decode_step_s": alone.time_s, "prefill_share": np.inf, "keeps_up": False}
            )
            continue
        # each rank schedules its own requests in its own budget; the ranks step together (their MoE
        # layers exchange tokens), taken in phase: every rank's prompt piece in the same step
        kinds = steady_schedule(rank, prompt, generate, token_budget)
        steps = [
            (k, mixed_step(model, hardware, workload, n, contexts, _on_every_rank(k.pieces, ep), **costs))
            for k in kinds
        ]
        mixed = steps[1:]
        phi = prefill_share(kinds)
        keeps_up = phi <= 1.0 + 1e-12
        per_step = n / (generate - 1)  # requests finishing (and starting) per step

        def mean(field: str, steps: list[tuple[StepKind, StepCost]] = steps, ok: bool = keeps_up) -> float:
            return sum(k.share * getattr(c, field) for k, c in steps) if ok else np.nan

        tpot = mean("time_s")
        tokens_per_step = n + per_step  # the decode tokens and the first tokens of the prefills done
        step_bytes = mean("bytes_ideal")
        spread = workload.model_copy(
            update={"phase": "decode", "batch": [n], "context": contexts, "prefix": 0}
        )
        held = float(simulate(model, hardware, spread, **costs)["memory_bytes"].mean())
        largest_step = max(c.act_peak_bytes for _, c in steps)
        in_flight = max(k.in_flight for k, _ in mixed)  # each counted with its whole prompt's cache
        held += in_flight * kv_per_prompt + largest_step - steps[0][1].act_peak_bytes
        mixed_share = sum(k.share for k, _ in mixed)
        rows.append(
            {
                **identity,
                "tpot_s": tpot,
                "decode_step_s": steps[0][1].time_s,
                "mixed_step_s": sum(k.share * c.time_s for k, c in mixed) / mixed_share,
                "ttft_s": sum(k.ttft_steps * c.time_s for k, c in mixed),
                "prefill_share": phi,
                "keeps_up": keeps_up,
                "requests_per_s": per_step / tpot,
                "tokens_per_s": tokens_per_step / tpot,
                "bytes_per_step": step_bytes,
                "weight_bytes_per_step": mean("weight_bytes"),
                # one device's bytes over the tokens of the sequences it serves
                "bytes_per_token": step_bytes / (rank * generate / (generate - 1)),
                "kv_share": mean("kv_bytes") / step_bytes,
                "routing_share": mean("routing_weight_bytes") / step_bytes,
                "memory_bytes": held,
                "fits": held <= hardware.hbm_capacity.value,
            }
        )
    return pd.DataFrame(rows).reindex(columns=list(SERVING_COLUMNS))


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

    # every decode token needs a place in its rank's budget beside at least one prompt token
    most = (token_budget - 1) * workload.ep
    if most < 1:
        raise ConfigError(f"--token-budget {token_budget}: leaves no token for prompts")
    row, why = largest_passing(at, misses, most)
    if why is not None:  # one sequence already misses
        row = row.copy()
        # nothing is served: no measure of one sequence's run stands, except what it would hold
        kept = {"fits", "memory_bytes"} if why == "memory" else set()
        row[[c for c in SERVING_COLUMNS if c not in _IDENTITY and c not in kept]] = np.nan
        row["keeps_up"] = why != "budget"
        row["concurrency"], row["limit"] = 0, why
    return pd.DataFrame([row])


def serving_states(
    models: list[ModelConfig],
    hardware: list[HardwareConfig],
    workload: Workload,
    prompt: int,
    generate: int,
    token_budget: int | None = None,
    *,
    efficiency: Mapping[str, float] | None = None,
    overhead: Mapping[str, float] | None = None,
    tpot_s: float | None = None,
) -> pd.DataFrame:
    """`serving_steady_state` of model i on hardware[i], stacked; with `tpot_s`, each model's
    `largest_concurrency` instead. `token_budget` None: each GPU's `default_token_budget`."""
    if len(models) != len(hardware):
        raise ConfigError(f"{len(models)} models but {len(hardware)} hardware descriptions")
    costs = {"efficiency": efficiency, "overhead": overhead}
    frames = []
    for m, hw in zip(models, hardware, strict=True):
        budget = token_budget if token_budget is not None else default_token_budget(hw)
        frames.append(
            serving_steady_state(m, hw, workload, prompt, generate, budget, **costs)
            if tpot_s is None
            else largest_concurrency(m, hw, workload, prompt, generate, budget, tpot_s, **costs)
        )
    return pd.concat(frames, ignore_index=True)

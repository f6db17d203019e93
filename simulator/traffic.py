"""A serving engine under load, request by request: arrivals, a queue, continuous batching with chunked
prefill, and the latency percentiles and throughput that follow (`serve --rate`).

Where `serving.py` costs the steady state of N sequences decoding with requests arriving evenly, this
module runs the engine step by step on a stream of requests, so that time to first token includes the
wait in the queue, bursts of a Poisson stream show in the tails, and a rate beyond what the engine
serves shows as a queue that grows.

The engine, as vLLM V1's scheduler with chunked prefill, simplified:
- Requests arrive at `rate` per second, as a Poisson process (seeded) or evenly spaced, or as a recorded
  trace has them (`simulate_trace`, each request its own P and G); each brings P prompt tokens and
  generates G (the first by the step that ends its prefill, then G - 1 decode steps).
- A step carries at most `token_budget` tokens (max_num_batched_tokens) and `max_seqs` running requests
  (max_num_seqs). Running requests come first: every decoding sequence gets its one token, then each
  request still prefilling (in the order admitted) gets min(prompt left, budget left) tokens. Waiting
  requests are then admitted first come first served while budget, max_seqs and memory allow, each
  taking min(P, budget left) of its prompt; the rest of a prompt follows in later steps after the part
  already cached (chunked prefill).
- A request is admitted only if the HBM the device holds stays within its capacity: what the engine holds
  besides the requests (weights and the activations of a step of `token_budget` tokens) plus the KV cache
  (or recurrent state) of every admitted request at its full P + G, reserved at admission. With one size
  of request that is a cap on the running requests (`seq_limit`); with a trace, a byte budget.
- Prefix caching (simulator/prefix_cache.py), where prompts name their blocks (a shared prefix, a
  Mooncake trace): a request computes its prompt from the first block not cached, and a block running
  requests share is reserved once (admission by bytes then, whatever the request sizes).
- Each step is costed as `serving.mixed_step` costs it: per layer, the FLOPs, activation and KV bytes of
  its decode sequences (each at its own context) and of its prompt pieces add up, the weights are read
  once for all the step's tokens, and the layer's roofline (calibrated where asked) times its repeats
  gives the time. To be fast, the per-sequence decode costs are tabulated over the contexts a request
  reaches, the weights over the step's token count, and prompt pieces on first use (`StepCoster`).

Simplifications (what vLLM does that this does not):
- no preemption: the KV cache is reserved whole at admission, so a running request is never evicted and
  recomputed (vLLM allocates blocks as it goes and preempts the newest request when they run out; that
  engine is simulator/paged_engine.py, `--allocation paged`);
- decode tokens go before the prompt pieces in a step, whatever the order the requests were admitted in
  (vLLM walks its running list in order; with the budget at least max_seqs every decode token fits
  either way, so only which prompt piece is cut short can differ);
- no speculative decoding, no host time between steps (scheduling, sampling, detokenisation): steps
  follow each other back to back;
- the scheduler runs at step boundaries only: a request arriving during a step waits for the next;
- no expert parallelism: the data-parallel ranks of `--ep` would each run their own queue, which this
  does not model, so it is refused; tensor parallelism is costed as `simulate` costs it.

Statistics leave out a warm-up, the first 10 % of requests by arrival. The measured window runs from the
first measured request's arrival to the last request's; throughput is what the engine completes within
it. `saturated` (see `SATURATION_GROWTH`) flags an engine that cannot keep up.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from simulator.config import HardwareConfig, ModelConfig, Workload, describe_weight_dtypes
from simulator.costs import Points
from simulator.errors import ConfigError
from simulator.prefix_cache import (
    VLLM_BLOCK_TOKENS,
    PrefixCache,
    PromptBlocks,
    SharedPrefixBlocks,
    prefix_cacheable,
)
from simulator.request import (
    MAX_GENERATE,
    MAX_PROMPT,
    PrefillStep,
    check_request,
    prefill_workload,
    prompt_kv_bytes,
)
from simulator.request_trace import RequestTrace
from simulator.routing import RoutingModel
from simulator.sweep import (
    LayerEntry,
    check_parallelism,
    kv_cached,
    layer_entries,
    routing_model,
    sequence_kv_bytes,
    simulate,
)

ARRIVALS = ("poisson", "even")
# KV allocation: each request's P + G reserved at admission, or vLLM's blocks as tokens are computed with
# preemption by recompute (simulator/paged_engine.py)
ALLOCATIONS = ("reserved", "paged")
WARMUP_SHARE = 0.1  # the first 10 % of requests, by arrival, are left out of the statistics
MIN_REQUESTS = 10  # fewer leave no measured window worth a percentile
MAX_REQUESTS = 1_000_000  # a minute or more of simulation per rate on a laptop; arrays of a few hundred MB
# gamma arrivals' CV: near-even to bursts; beyond 10 a few thousand draws no longer show the CV or the rate
MIN_BURSTINESS, MAX_BURSTINESS = 0.1, 10.0
MIN_RATE = 1e-6  # requests/s: slower streams put arrivals so far out that step times vanish beside them
# saturated: the mean queue over the second half of the measured window exceeds that over the first by
# more than this share of the requests arriving in the second half. An engine that completes a share x
# fewer requests than arrive has a queue growing at x times the rate: the means of the two halves lie
# half a window apart, x times the arrivals of a half. A stable engine's queue only fluctuates (a request
# waiting for the next step boundary is a tiny share), whatever the request count
SATURATION_GROWTH = 0.05
DEFAULT_MAX_SEQS = 256  # vLLM's max_num_seqs

TRAFFIC_COLUMNS: dict[str, str] = {
    "model": "model name",
    "hardware": "hardware name",
    "rate": "requests arriving per second",
    "arrivals": "poisson (seeded), even, gamma:CV (gamma gaps of that coefficient of variation, seeded), or "
    "trace (its layout: memtraffic, azure, burstgpt, mooncake)",
    "seed": "seed of the Poisson or gamma stream",
    "requests_file": "the request trace replayed (--requests-file); empty with --rate",
    "trace_speed": "the trace's arrivals compressed this many times (--trace-speed)",
    "requests": "requests simulated (the first 10 % by arrival are warm-up, left out of the statistics)",
    "prompt": "prompt tokens per request (P; with a trace, its mean)",
    "generate": "tokens generated per request (G, the first by the step that ends its prefill; with a "
    "trace, its mean)",
    "token_budget": "tokens a step may carry (decode tokens first, then prompts)",
    "max_seqs": "running requests a step may hold (vLLM max_num_seqs)",
    "seq_limit": "running requests the engine admits: max_seqs (paged: memory is handled by preemption), "
    "or fewer where their reserved KV cache "
    "would not fit in HBM (with a trace, requests of its mean P and G: the engine itself admits while the "
    "reserved bytes of the requests running and the newcomer fit)",
    "requests_per_s": "requests completed per second within the measured window (below the rate while the "
    "engine is still filling up: a run shorter than a few end-to-end times)",
    "tokens_per_s": "tokens generated per second within the measured window, all sequences",
    "ttft_p50_s": "time to first token, median: arrival to the end of the step that ends its prefill, "
    "the wait in the queue included",
    "ttft_p90_s": "time to first token, 90th percentile",
    "ttft_p99_s": "time to first token, 99th percentile",
    "ttft_per_token_p50_s": "time to first token over the request's prompt tokens, median",
    "ttft_per_token_p99_s": "time to first token over the request's prompt tokens, 99th percentile",
    "tpot_p50_s": "time per output token after the first, median over requests (each counts once, "
    "whatever its G): (finish - first token) / (G - 1)",
    "tpot_p99_s": "time per output token, 99th percentile over requests",
    "e2e_p50_s": "arrival to last token, median",
    "e2e_p99_s": "arrival to last token, 99th percentile",
    "mean_step_s": "mean time of the steps that end within the measured window",
    "mean_decoding": "sequences decoding, mean over the steps that end within the measured window",
    "mean_queue": "requests waiting to be admitted, time average over the measured window",
    "max_queue": "requests waiting to be admitted, most at once within the measured window",
    "mean_in_system": "requests waiting or running, time average over the measured window",
    "prefill_share": "share of the steps within the measured window that carry prompt tokens",
    "queue_growth": "mean queue over the second half of the measured window less that over the first, "
    "over the requests arriving in the second half (about the share of arrivals the engine leaves "
    "uncompleted)",
    "capacity_rps": "requests per second the engine sustains at most: the best steady state of continuous "
    "batching (simulator.serving) that keeps up, with up to seq_limit sequences decoding (NaN with G = 1; "
    "with a trace, for requests of its mean P and G, rounded; without prefix caching and with KV reserved "
    "at P + G, so a lower bound where prompts hit the cache or KV is paged)",
    "saturated": f"the rate exceeds capacity_rps, or queue_growth is above {SATURATION_GROWTH}: the engine "
    "does not keep up (a short run may end before its queue starts to grow, so the capacity decides too; "
    "where prompts hit the prefix cache or KV is paged, an upper bound decides instead: the capacity of "
    "requests whose prompts are only the part computed, each holding only its prompt's KV where paged)",
    "prefix_caching": "automatic prefix caching: its block size, or why it is off (--no-prefix-caching; no "
    "shared prefix or block hashes to find; a recurrent mixer's state is not per token)",
    "shared_prefix": "prompt tokens every request of --rate shares (a system prompt, --shared-prefix)",
    "allocation": "KV allocation: reserved (each request's P + G at admission, never preempted) or paged "
    "(the tokens computed so far; the request admitted last preempted and recomputed when they do not fit)",
    "preemptions": "requests preempted over the whole run (paged allocation; one request may count more "
    "than once)",
    "cached_prompt_share": "share of the measured requests' prompt tokens found in the prefix cache, not "
    "computed",
    "kv_per_request_bytes": "KV cache (or recurrent state) one request reserves, at P + G (with a trace, "
    "at its mean P and G)",
    "memory_bytes": "HBM held at the busiest step: weights, a full step's activations and the reserved "
    "KV cache of the requests running (with a trace or prefix caching, the most reserved at once, a shared "
    "block once; unused cached blocks, evicted as needed, left out)",
    "tp": "tensor-parallel degree",
    "weight_dtype": "weight dtype (per layer kind where they differ)",
    "kv_dtype": "KV-cache dtype",
}


@dataclass(frozen=True)
class Caching:
    """Prefix caching as a run uses it: the prompts' blocks (None: off), the KV bytes of one block,
    and what the table says of it."""

    blocks: PromptBlocks | None
    block_bytes: int
    label: str
    # (block tokens, block bytes) of the blocks a preempted request leaves cached (paged engine); None: off
    recompute: tuple[int, int] | None = None


def block_kv_bytes(model: ModelConfig, workload: Workload, block_tokens: int, longest: int) -> int:
    """KV bytes one prompt block holds on a device: per layer, what `block_tokens` more tokens add to a
    sequence of `longest` tokens (the longest request), so a sliding-window or chunked layer whose
    cache no longer grows there adds nothing: its KV stays with its request, unshared."""
    end = max(longest, 2 * block_tokens)
    wl = _decode_workload(workload, [1], [end - block_tokens, end])
    total = 0.0
    for e in _grid_entries(model, wl, routing_model(workload)):
        before, after = kv_cached(e.cost, 2)
        total += max(after - before, 0.0) * max(len(e.blocks), 1)
    return int(np.ceil(total))


def prefix_caching(
    model: ModelConfig,
    workload: Workload,
    blocks: PromptBlocks | None,
    enabled: bool,
    longest: int,
) -> Caching:
    """How a run caches prompt prefixes: `blocks` where `enabled` and the model can use them;
    `longest` the longest request's tokens (`block_kv_bytes`)."""
    if not enabled:
        return Caching(None, 0, "off")
    if not prefix_cacheable(model):
        return Caching(None, 0, "off: recurrent state")
    size = blocks.block_tokens if blocks is not None else VLLM_BLOCK_TOKENS
    block_bytes = block_kv_bytes(model, workload, size, longest)
    if blocks is None:  # no prompt shares a block, but a preempted request finds its own again
        return Caching(None, 0, "nothing shared", (size, block_bytes))
    return Caching(blocks, block_bytes, f"{blocks.block_tokens}-token blocks", (size, block_bytes))


def _grid_entries(model: ModelConfig, workload: Workload, routing: RoutingModel) -> list[LayerEntry]:
    return layer_entries(model, Points.grid(workload, routing), workload)


def _decode_workload(workload: Workload, batch: list[int], contexts: list[int]) -> Workload:
    step = {"phase": "decode", "batch": batch, "context": contexts, "prefix": 0, "logits": "last"}
    return workload.model_copy(update={**step, "tokens_per_step": 1})


# a prompt piece: (tokens, cached prefix), and whether it ends its prompt (then it computes the last
# position's logits); without the flag, whether tokens + prefix reach StepCoster.prompt
Piece = tuple[int, int] | tuple[int, int, bool]


def _per_point(entries: list[LayerEntry], name: str, size: int) -> np.ndarray:
    """(points, layers): one LayerCost array of every layer, broadcast over the points."""
    return np.stack(
        [np.broadcast_to(np.asarray(getattr(e.cost, name), dtype=np.float64), (size,)) for e in entries],
        axis=1,
    )


@dataclass
class StepCoster:
    """The time of an engine step from its composition, as `serving.mixed_step` costs it, from tables:
    per layer, the decode FLOPs and bytes (activations + KV read and written) of one sequence at each
    context `first_context` .. `last_context` (a decode step of n sequences costs the sum of n such:
    `tests/test_traffic.py` checks it; `contexts`, where given, the only ones of that range tabulated: a
    trace's requests reach a few stretches of it), the weight bytes at every step size 1 ..
    `max_tokens`, and prompt pieces (tokens, prefix) costed on first use."""

    model: ModelConfig
    hardware: HardwareConfig
    workload: Workload
    prompt: int
    first_context: int
    last_context: int
    max_tokens: int
    efficiency: Mapping[str, float] | None = None
    overhead: Mapping[str, float] | None = None
    contexts: np.ndarray | None = None
    _pieces: dict[tuple[int, int, bool], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    _first: dict[bool, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._routing = routing_model(self.workload)
        span = self.last_context - self.first_context + 1
        if self.contexts is None:
            contexts = list(range(self.first_context, self.last_context + 1))
            self._row = np.arange(span, dtype=np.int64)
        else:
            contexts = np.asarray(self.contexts, dtype=np.int64).tolist()
            # context c's row of the tables: _row[c - first_context] (-1: never reached)
            self._row = np.full(span, -1, dtype=np.int64)
            self._row[np.asarray(contexts) - self.first_context] = np.arange(len(contexts))
        one = _grid_entries(self.model, _decode_workload(self.workload, [1], contexts), self._routing)
        n = len(contexts)
        # (contexts, layers): what one decoding sequence adds to each layer's step
        self.decode_flops = _per_point(one, "flops", n)
        self.decode_bytes = (
            _per_point(one, "act_bytes_ideal", n)
            + _per_point(one, "kv_read_bytes", n)
            + _per_point(one, "kv_write_bytes", n)
        )
        sizes = list(range(1, self.max_tokens + 1))
        whole = _grid_entries(self.model, _decode_workload(self.workload, sizes, [1]), self._routing)
        # (tokens, layers): weights read once for all of a step's tokens, as a decode step of that many
        self.weight_bytes = _per_point(whole, "weight_bytes_ideal", len(sizes))
        eff, fixed = dict(self.efficiency or {}), dict(self.overhead or {})
        kinds = [e.cost.kind for e in one]
        self.bandwidth = self.hardware.hbm_bandwidth.value * np.array([eff.get(k, 1.0) for k in kinds])
        self.fixed = np.array([fixed.get(k, 0.0) for k in kinds])
        self.repeats = np.array([max(len(e.blocks), 1) for e in one], dtype=np.float64)
        self.peak = self.hardware.flops_for(self.workload.activation_dtype)
        # the LM head: a step of prompt chunks alone, none the last of its prompt, computes no logits and
        # reads no head weights (as `simulate` costs such a prefill); any step with a decode token does
        self._head = [i for i, e in enumerate(one) if e.name == "head"]

    def _first_pieces(self, last: bool) -> tuple[np.ndarray, np.ndarray]:
        """(flops, activation + KV bytes) (tokens, layers) of every piece with no cached prefix, 1 ..
        `max_tokens` tokens, in one grid: a trace of many prompt lengths would otherwise cost each apart."""
        if last not in self._first:
            sizes = list(range(1, self.max_tokens + 1))
            update = {"batch": [1], "context": sizes, "prefix": 0, "phase": "prefill"}
            wl = self.workload.model_copy(update={**update, "logits": "last" if last else "none"})
            entries = _grid_entries(self.model, wl, self._routing)
            n = len(sizes)
            moved = (
                _per_point(entries, "act_bytes_ideal", n)
                + _per_point(entries, "kv_read_bytes", n)
                + _per_point(entries, "kv_write_bytes", n)
            )
            self._first[last] = (_per_point(entries, "flops", n), moved)
        return self._first[last]

    def piece(self, tokens: int, prefix: int, last: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(flops, activation + KV bytes) per layer of `tokens` prompt tokens after `prefix` cached ones
        of one request; the piece that ends the prompt (`last`; None: tokens + prefix reach `prompt`)
        computes its last position's logits."""
        if last is None:
            last = tokens + prefix >= self.prompt
        if prefix == 0 and tokens <= self.max_tokens:
            flops, moved = self._first_pieces(last)
            return flops[tokens - 1], moved[tokens - 1]
        key = (tokens, prefix, last)
        if key not in self._pieces:
            step = PrefillStep(1, 1, tokens, prefix, "last" if last else "none", 0)
            entries = _grid_entries(self.model, prefill_workload(self.workload, step), self._routing)
            flops = _per_point(entries, "flops", 1)[0]
            moved = (
                _per_point(entries, "act_bytes_ideal", 1)
                + _per_point(entries, "kv_read_bytes", 1)
                + _per_point(entries, "kv_write_bytes", 1)
            )[0]
            self._pieces[key] = (flops, moved)
        return self._pieces[key]

    def ends_prompt(self, piece: Piece) -> bool:
        return bool(piece[2]) if len(piece) > 2 else piece[0] + piece[1] >= self.prompt

    def times(
        self, flops: np.ndarray, moved: np.ndarray, tokens: np.ndarray, logits: bool = True
    ) -> np.ndarray:
        """Step times from each step's per-layer additive FLOPs and bytes (steps, layers) and its token
        count (steps,): per layer the roofline over both, plus its fixed time, times its repeats.
        `logits` False: no token of the steps computes logits (the head reads nothing)."""
        weights = self.weight_bytes[tokens - 1]
        if not logits:
            weights = weights.copy()
            weights[:, self._head] = 0.0
        total = weights + moved
        t = np.maximum(flops / self.peak, total / self.bandwidth) + self.fixed
        return t @ self.repeats

    def decode_sums(self, contexts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-layer FLOPs and bytes of decode sequences at `contexts` (any shape (n, ...)), summed over
        the first axis."""
        i = self._row[contexts - self.first_context]
        return self.decode_flops[i].sum(axis=0), self.decode_bytes[i].sum(axis=0)

    def step_time(self, contexts: list[int] | np.ndarray, pieces: Sequence[Piece]) -> float:
        """One step of decode sequences at `contexts` and prompt `pieces` ((tokens, prefix[, last]), ...)."""
        ctx = np.asarray(contexts, dtype=np.int64)
        flops, moved = self.decode_sums(ctx.reshape(-1, 1))
        flops, moved = flops.reshape(-1).copy(), moved.reshape(-1).copy()
        for p in pieces:
            f, m = self.piece(p[0], p[1], self.ends_prompt(p))
            flops += f
            moved += m
        tokens = np.array([len(ctx) + sum(p[0] for p in pieces)])
        logits = len(ctx) > 0 or any(self.ends_prompt(p) for p in pieces)
        return float(self.times(flops[None, :], moved[None, :], tokens, logits)[0])


def burstiness(arrivals: str) -> float | None:
    """The coefficient of variation of the gaps of `gamma:CV` arrivals (None for the others), or the
    option refused in one line."""
    if not arrivals.startswith("gamma:"):
        return None
    text = arrivals.removeprefix("gamma:")
    cv = float(text) if re.fullmatch(r"(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text) else float("nan")
    if not MIN_BURSTINESS <= cv <= MAX_BURSTINESS:
        raise ConfigError(
            f"--arrivals {arrivals}: gamma:CV, the gaps' coefficient of variation CV from "
            f"{MIN_BURSTINESS} to {MAX_BURSTINESS:g} (1: Poisson; above 1, bursts)"
        )
    return cv


def arrival_times(rate: float, requests: int, arrivals: str, seed: int) -> np.ndarray:
    """When each request arrives, in seconds from 0: Poisson (exponential gaps, seeded), even, or
    `gamma:CV` (gamma-distributed gaps of mean 1 / rate and coefficient of variation CV, seeded: CV 1 is
    Poisson, above it the stream comes in bursts)."""
    if arrivals == "even":
        return np.arange(requests, dtype=np.float64) / rate
    rng = np.random.default_rng(seed)
    cv = burstiness(arrivals)
    if cv is None:
        gaps = rng.exponential(1.0 / rate, requests)
    else:
        shape = 1.0 / cv**2
        gaps = rng.gamma(shape, 1.0 / (rate * shape), requests)
    return np.cumsum(gaps) - gaps[0]  # the first request at 0, as with even arrivals


@dataclass
class Trace:
    """Per request: when it arrived, was admitted, got its first token and finished; and the engine's
    own tallies over the steps that end within the measured window [t0, t1]."""

    arrival: np.ndarray
    admitted: np.ndarray
    first_token: np.ndarray
    finish: np.ndarray
    t0: float
    t1: float
    steps: int = 0  # steps ending within the window
    step_time: float = 0.0  # their summed time
    decoding: float = 0.0  # their summed decoding sequences
    prompt_steps: int = 0  # those carrying prompt tokens
    tokens: float = 0.0  # tokens generated by them
    running_area: float = 0.0  # integral of the running requests over the window (request-seconds)
    most_running: int = 0  # the most requests running at once, over the whole run
    most_reserved: int = 0  # the most KV bytes reserved at once (with per-request reservations)
    total_steps: int = 0
    last_step_s: float = 0.0  # the mean step of the last decode stretch: how far to cost ahead
    cached: np.ndarray | None = None  # prompt tokens each request found in the prefix cache
    preemptions: int = 0  # requests preempted (paged allocation), over the whole run
    # when preempted requests went back to the queue and when they were admitted again
    requeued: list[float] = field(default_factory=list)
    readmitted: list[float] = field(default_factory=list)

    def tally(
        self,
        start: np.ndarray,
        end: np.ndarray,
        decoding: int,
        tokens: np.ndarray,
        prompt: bool,
        running: int,
    ) -> None:
        """Add steps [start, end) that ran `decoding` sequences and `running` requests."""
        inside = (end > self.t0) & (end <= self.t1)
        k = int(inside.sum())
        self.steps += k
        self.step_time += float((end - start)[inside].sum())
        self.decoding += decoding * k
        self.prompt_steps += k if prompt else 0
        self.tokens += float(tokens[inside].sum())
        overlap = np.clip(end, self.t0, self.t1) - np.clip(start, self.t0, self.t1)
        self.running_area += running * float(overlap.sum())
        self.most_running = max(self.most_running, running)
        self.total_steps += len(end)


@dataclass
class _Running:
    """The running requests: those decoding (their ids, context offsets and last decode steps) and those
    still prefilling (ids and prompt tokens cached so far), in the order admitted."""

    ids: list[int] = field(default_factory=list)
    offset: list[int] = field(default_factory=list)  # context at global step s is s - offset
    last_step: list[int] = field(default_factory=list)  # the global step of its last decode token
    prefilling: list[list[int]] = field(default_factory=list)  # [id, tokens cached]

    def count(self) -> int:
        return len(self.ids) + len(self.prefilling)


# a decode run gathers (sequences x steps x layers) table entries: this many at most per slice
_RUN_SLICE = 1 << 18


@dataclass
class _Sizes:
    """Per request, as Python lists (the step loop reads them one at a time): prompt and output tokens,
    and the KV bytes reserved at admission."""

    prompt: list[int]
    generate: list[int]
    reserve: list[int]


def _sizes(
    coster: StepCoster,
    n: int,
    generate: int | np.ndarray,
    prompt: np.ndarray | None,
    reserve: np.ndarray | None,
) -> _Sizes:
    prompts = [coster.prompt] * n if prompt is None else np.asarray(prompt, dtype=np.int64).tolist()
    gens = np.broadcast_to(np.asarray(generate, dtype=np.int64), (n,)).tolist()
    held = [0] * n if reserve is None else np.asarray(reserve, dtype=np.int64).tolist()
    return _Sizes(prompts, gens, held)


def new_trace(arrival: np.ndarray) -> Trace:
    """An empty trace of requests arriving at `arrival`, its measured window after the warm-up."""
    n = len(arrival)
    nan = np.full(n, np.nan)
    warm = int(np.ceil(WARMUP_SHARE * n))
    trace = Trace(arrival, nan.copy(), nan.copy(), nan.copy(), float(arrival[warm]), float(arrival[-1]))
    trace.cached = np.zeros(n, dtype=np.int64)
    return trace


def run_engine(
    coster: StepCoster,
    arrival: np.ndarray,
    generate: int | np.ndarray,
    token_budget: int,
    seq_limit: int,
    *,
    prompt: np.ndarray | None = None,
    reserve: np.ndarray | None = None,
    room: int | None = None,
    blocks: PromptBlocks | None = None,
    block_bytes: int = 0,
) -> Trace:
    """Simulate the engine (module docstring) on requests arriving at `arrival` (sorted) until every one
    has finished. Steps that only decode, with nothing to admit, run as one vectorised stretch until the
    next finish or arrival, so a quiet engine costs little.

    Request sizes: `generate` one count for all or one per request; `prompt` one per request (None:
    `coster.prompt` for all). Admission: at most `seq_limit` running requests and, where `room` (bytes)
    is given, the `reserve` bytes (one per request, whole numbers so that they add up exactly) of the
    running requests and the newcomer within it.

    Prefix caching (simulator.prefix_cache), where `blocks` names each prompt's full blocks of
    `block_bytes` KV bytes each (`room` required): a request reserves its `reserve` less its blocks, and
    each of its blocks no running request holds; it computes its prompt from the first block not
    cached."""
    if seq_limit < 1:
        raise ConfigError("the engine holds no request: not one request's KV cache fits in memory")
    n = len(arrival)
    if room is not None and reserve is not None and int(np.max(reserve)) > room:
        raise ConfigError("a request's KV cache does not fit in the memory left for requests")
    if blocks is not None and reserve is not None:  # a request reserves its blocks apart
        reserve = np.maximum(np.asarray(reserve) - blocks.counts() * block_bytes, 0)
    size = _sizes(coster, n, generate, prompt, reserve)
    trace = new_trace(arrival)
    run = _Running()
    cache = _RequestBlocks(blocks, block_bytes, n, room)
    t, step, arrived, head, done, reserved = 0.0, 0, 0, 0, 0, 0

    def finish(rid: int) -> None:
        nonlocal reserved, done
        trace.finish[rid] = t
        reserved -= size.reserve[rid] + cache.release(rid)
        done += 1

    while done < n:
        arrived = int(np.searchsorted(arrival, t, side="right"))
        if run.count() == 0 and head == arrived:  # idle until the next request
            t = float(arrival[arrived])
            continue
        # compose the step: decode tokens, running prefills, then admissions
        left = token_budget - len(run.ids)
        pieces: list[Piece] = []
        ends: list[int] = []  # ids whose prefill ends this step
        for entry in run.prefilling:
            take = min(size.prompt[entry[0]] - entry[1], left)
            if take > 0:
                pieces.append((take, entry[1], entry[1] + take == size.prompt[entry[0]]))
                entry[1] += take
                left -= take
                if entry[1] == size.prompt[entry[0]]:
                    ends.append(entry[0])
        while left > 0 and head < arrived and run.count() < seq_limit:
            need = size.reserve[head] + cache.new_bytes(head)
            if room is not None and reserved + need > room:
                if run.count() == 0:  # nothing runs that could make room
                    raise ConfigError(
                        f"request {head + 1} by arrival: its KV cache does not fit in the memory left for "
                        "requests"
                    )
                break  # first come first served: the head of the queue waits for room, and all behind it
            hit = cache.admit(head, size.prompt[head], room - reserved - need if room is not None else 0)
            take = min(size.prompt[head] - hit, left)
            trace.admitted[head] = t
            trace.cached[head] = hit
            reserved += need
            trace.most_reserved = max(trace.most_reserved, reserved)
            run.prefilling.append([head, hit + take])
            pieces.append((take, hit, hit + take == size.prompt[head]))
            left -= take
            if hit + take == size.prompt[head]:
                ends.append(head)
            head += 1
        decoding = len(run.ids)
        running = run.count()
        if pieces:
            contexts = step - np.asarray(run.offset, dtype=np.int64)
            dt = coster.step_time(contexts, pieces)
            end = t + dt
            produced = decoding + len(ends)
            trace.tally(np.array([t]), np.array([end]), decoding, np.array([float(produced)]), True, running)
            steps, t = 1, end
            for rid in ends:
                trace.first_token[rid] = end
                if size.generate[rid] == 1:
                    finish(rid)
                else:
                    run.ids.append(rid)
                    run.offset.append(step + 1 - size.prompt[rid])
                    run.last_step.append(step + size.generate[rid] - 1)
            run.prefilling = [e for e in run.prefilling if e[1] < size.prompt[e[0]]]
        else:
            # decode only: until the first sequence finishes, or, with the queue empty (nothing blocked
            # waits), until the step during which the next request arrives
            most = min(run.last_step) - step + 1
            waiting = head < arrived
            next_arrival = float(arrival[arrived]) if arrived < n else np.inf
            offsets = np.asarray(run.offset, dtype=np.int64)
            steps, t = _decode_run(coster, trace, offsets, step, most, t, next_arrival, waiting, running)
        step += steps
        # sequences whose last decode token was in these steps finish at their end
        if run.ids:
            last = np.asarray(run.last_step)
            gone = last < step
            for i in np.flatnonzero(gone):
                finish(run.ids[i])
            keep = np.flatnonzero(~gone)
            run.ids = [run.ids[i] for i in keep]
            run.offset = [run.offset[i] for i in keep]
            run.last_step = [run.last_step[i] for i in keep]
    return trace


class _RequestBlocks:
    """The engine's view of prefix caching: per request, its prompt blocks and the bytes it reserves
    besides them; with no blocks, nothing is cached and nothing changes."""

    def __init__(
        self, blocks: PromptBlocks | None, block_bytes: int, requests: int, room: int | None
    ) -> None:
        self.blocks = blocks
        if blocks is None:
            return
        if room is None:
            raise ConfigError("prefix caching needs the engine's memory for requests (room)")
        if len(blocks) != requests:
            raise ConfigError(f"{len(blocks)} requests' prompt blocks for {requests} requests")
        self.cache = PrefixCache(blocks.block_tokens, block_bytes)

    def new_bytes(self, rid: int) -> int:
        return self.cache.new_bytes(self.blocks.of(rid)) if self.blocks is not None else 0

    def hit(self, rid: int, prompt: int) -> int:
        """Prompt tokens request `rid` (of `prompt` tokens now) would find cached."""
        return self.cache.hit_tokens(self.blocks.of(rid), prompt) if self.blocks is not None else 0

    def admit(self, rid: int, prompt: int, free_room: int) -> int:
        """Prompt tokens request `rid` finds cached; its blocks are then in use, and the unused ones
        evicted down to `free_room` bytes."""
        if self.blocks is None:
            return 0
        mine = self.blocks.of(rid)
        hit = self.cache.hit_tokens(mine, prompt)
        self.cache.take(mine)
        self.cache.evict_to(free_room)
        return hit

    def evict_to(self, free_room: int) -> None:
        if self.blocks is not None:
            self.cache.evict_to(free_room)

    def release(self, rid: int, computed_tokens: int | None = None) -> int:
        """Bytes of request `rid`'s blocks that no running request uses any more; where only
        `computed_tokens` of its prompt were computed (a preemption), its later blocks are dropped."""
        if self.blocks is None:
            return 0
        computed = None if computed_tokens is None else computed_tokens // self.blocks.block_tokens
        return self.cache.give_back(self.blocks.of(rid), computed)


def _steps_until(gap: float, step_s: float, most: int, waiting: bool) -> int:
    """Decode steps to cost at once: all `most` when nothing can interrupt them, else enough steps of
    `step_s` to cover `gap` to the next arrival (5 % spare), one when no step time is known yet."""
    if waiting or not np.isfinite(gap):
        return most
    return int(np.ceil(gap / step_s * 1.05)) + 1 if step_s > 0 else 1


def _decode_run(
    coster: StepCoster,
    trace: Trace,
    offsets: np.ndarray,
    step: int,
    most: int,
    t: float,
    next_arrival: float,
    waiting: bool,
    running: int,
) -> tuple[int, float]:
    """Run up to `most` decode-only steps from global step `step` at time `t`; stop after the step during
    which `next_arrival` falls unless requests are already `waiting` (they are blocked until a sequence
    finishes, and a new one would wait behind them). Returns (steps run, time after them)."""
    per_slice = max(1, _RUN_SLICE // max(1, len(offsets) * coster.decode_flops.shape[1]))
    # as many steps as the next arrival is away at the last stretch's step time (one to start with)
    ran, guess = 0, _steps_until(next_arrival - t, trace.last_step_s, most, waiting)
    while ran < most:
        k = min(per_slice, most - ran, guess)
        s = step + ran + np.arange(k)
        contexts = s[None, :] - offsets[:, None]  # (sequences, steps)
        flops, moved = coster.decode_sums(contexts)
        tokens = np.full(k, len(offsets))
        dt = coster.times(flops, moved, tokens)
        end = t + np.cumsum(dt)
        if not waiting:
            cut = int(np.searchsorted(end, next_arrival, side="left"))
            if cut < k:
                end, dt, k = end[: cut + 1], dt[: cut + 1], cut + 1
        start = end - dt
        trace.tally(start, end, len(offsets), tokens[:k].astype(np.float64), False, running)
        ran += k
        t = float(end[-1])
        if not waiting and t >= next_arrival:
            break
        trace.last_step_s = float(dt.mean())
        guess = _steps_until(next_arrival - t, trace.last_step_s, most, waiting)
    return ran, t


def engine_memory(
    model: ModelConfig, hardware: HardwareConfig, workload: Workload, prompt: int, generate: int, budget: int
) -> tuple[float, float]:
    """(bytes the engine holds besides its requests' KV, KV bytes one request reserves). The first is
    `simulate`'s HBM for a prefill step of `budget` tokens (weights, that step's activations and the
    residual stream: the largest step the engine runs) less that prompt's own cache; the second the
    cache one sequence holds at P + G (`prompt_kv_bytes`)."""
    per_request = prompt_kv_bytes(model, workload, prompt + generate)
    full = {"phase": "prefill", "batch": [1], "context": [budget], "prefix": 0, "logits": "last"}
    held = float(simulate(model, hardware, workload.model_copy(update=full))["memory_bytes"].iloc[0])
    return held - prompt_kv_bytes(model, workload, budget), per_request


def engine_capacity(
    model: ModelConfig,
    hardware: HardwareConfig,
    workload: Workload,
    prompt: int,
    generate: int,
    token_budget: int,
    seq_limit: int,
    efficiency: Mapping[str, float] | None = None,
    overhead: Mapping[str, float] | None = None,
) -> float:
    """Requests per second the engine sustains at most: the best steady state of continuous batching
    (`serving.serving_steady_state`) that keeps up, over powers of two up to `seq_limit` sequences and
    `seq_limit` itself; NaN with one token generated (no sequence stays to decode). A stream faster than
    this saturates the engine however short a run is to show it."""
    from simulator.serving import serving_steady_state

    if generate < 2:
        return float("nan")
    grid = sorted({1 << i for i in range(seq_limit.bit_length()) if 1 << i < seq_limit} | {seq_limit})
    steady = serving_steady_state(
        model,
        hardware,
        workload.model_copy(update={"batch": grid}),
        prompt,
        generate,
        token_budget,
        efficiency=efficiency,
        overhead=overhead,
    )
    ok = steady[steady["keeps_up"].astype(bool) & steady["requests_per_s"].notna()]
    return float(ok["requests_per_s"].max()) if not ok.empty else float("nan")


def check_traffic(
    rate: float,
    requests: int,
    arrivals: str,
    token_budget: int,
    max_seqs: int,
    workload: Workload,
    seed: int = 0,
) -> None:
    """ConfigError, naming the option, unless the engine can be run as asked."""
    if not (rate >= MIN_RATE and np.isfinite(rate)):
        raise ConfigError(f"--rate {rate}: a rate is a number of requests per second, at least {MIN_RATE:g}")
    if not MIN_REQUESTS <= requests <= MAX_REQUESTS:
        raise ConfigError(
            f"--requests {requests}: from {MIN_REQUESTS} (the first 10 % are warm-up) to {MAX_REQUESTS:,}"
        )
    if seed < 0:
        raise ConfigError(f"--seed {seed}: a seed is a non-negative integer")
    if arrivals not in ARRIVALS and burstiness(arrivals) is None:
        raise ConfigError(f"--arrivals {arrivals}: choose one of {', '.join(ARRIVALS)}, or gamma:CV")
    check_engine(token_budget, max_seqs, workload, "--rate")


def check_engine(token_budget: int, max_seqs: int, workload: Workload, flag: str) -> None:
    """ConfigError unless the engine's settings can be run, with arrivals given by `flag`."""
    if max_seqs < 1:
        raise ConfigError(f"--max-seqs {max_seqs}: at least one running request")
    if token_budget < max_seqs:
        # as vLLM requires max_num_batched_tokens >= max_num_seqs: every decode token fits in a step
        raise ConfigError(f"--token-budget {token_budget}: below --max-seqs {max_seqs}")
    if workload.ep > 1:
        raise ConfigError(
            f"--ep {workload.ep} with {flag}: each data-parallel rank would run its own queue, which the "
            "request-level simulation does not model; use --tp, or --concurrency for the steady state"
        )


def check_trace(requests: RequestTrace, token_budget: int, max_seqs: int, workload: Workload) -> None:
    """ConfigError, naming the file, unless its requests can be replayed on the engine."""
    if not MIN_REQUESTS <= len(requests) <= MAX_REQUESTS:
        raise ConfigError(
            f"{requests.path}: {len(requests)} requests; from {MIN_REQUESTS} (the first 10 % are warm-up) "
            f"to {MAX_REQUESTS:,} (--trace-requests takes the first N)"
        )
    for what, values, most in (
        ("prompt", requests.prompt, MAX_PROMPT),
        ("output", requests.generate, MAX_GENERATE),
    ):
        if values.max() > most:
            i = int(np.argmax(values))
            raise ConfigError(
                f"{requests.path}: request {i + 1} by arrival has {values[i]} {what} tokens, over {most}"
            )
    check_engine(token_budget, max_seqs, workload, "--requests-file")


def _time_in_queue(trace: Trace, start: float, end: float) -> float:
    """Request-seconds spent waiting for admission within [start, end], preempted requests waiting to
    be admitted again included: the queue's time integral."""
    wait = np.clip(trace.admitted, start, end) - np.clip(trace.arrival, start, end)
    again = np.clip(trace.readmitted, start, end) - np.clip(trace.requeued, start, end)
    return float(wait.sum() + again.sum())


def _percentile(values: np.ndarray, q: float) -> float:
    values = values[np.isfinite(values)]
    return float(np.percentile(values, q)) if values.size else np.nan


def _per_output_token(trace: Trace, generate: int | np.ndarray) -> np.ndarray:
    """Each request's TPOT, (finish - first token) / (G - 1); NaN where G = 1 (no decode step)."""
    n = len(trace.arrival)
    decodes = np.broadcast_to(np.asarray(generate, dtype=np.float64), (n,)) - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(decodes > 0, (trace.finish - trace.first_token) / decodes, np.nan)


def summarize(
    trace: Trace, generate: int | np.ndarray, prompt: int | np.ndarray | None = None
) -> dict[str, float]:
    """The statistics of a run over its measured requests and window (module docstring); `generate`
    and `prompt` one count for all requests or one per request. Percentiles count each request once."""
    n = len(trace.arrival)
    measured = slice(int(np.ceil(WARMUP_SHARE * n)), n)
    arrival, finish = trace.arrival, trace.finish
    ttft = (trace.first_token - arrival)[measured]
    e2e = (finish - arrival)[measured]
    tpot = _per_output_token(trace, generate)[measured]
    prompts = np.broadcast_to(np.asarray(prompt if prompt is not None else np.nan, dtype=np.float64), (n,))
    ttft_per_token = ttft / prompts[measured]
    t0, t1 = trace.t0, trace.t1
    span = t1 - t0
    completed = int(np.count_nonzero((finish > t0) & (finish <= t1)))
    mean_queue = _time_in_queue(trace, t0, t1) / span if span > 0 else np.nan
    k = len(trace.requeued)
    events = np.concatenate([arrival, trace.requeued, trace.admitted, trace.readmitted])
    change = np.concatenate([np.ones(n + k), -np.ones(n + k)])
    order = np.lexsort((change, events))  # at equal times the admission first: no spurious peak
    queue = np.cumsum(change[order])
    within = (events[order] >= t0) & (events[order] <= t1)
    max_queue = int(queue[within].max()) if within.any() else 0
    half = (t0 + t1) / 2
    early, late = _time_in_queue(trace, t0, half), _time_in_queue(trace, half, t1)
    came = np.count_nonzero((arrival > half) & (arrival <= t1))
    # how much the mean queue grew from the first half of the window to the second, per request arriving
    # in the second: about the share of the arrivals left uncompleted (SATURATION_GROWTH)
    growth = (late / (t1 - half) - early / (half - t0)) / came if came and half > t0 else np.nan
    steps = max(trace.steps, 1)
    cached = trace.cached if trace.cached is not None else np.zeros(n)
    prompt_tokens = float(prompts[measured].sum())
    return {
        "cached_prompt_share": float(cached[measured].sum()) / prompt_tokens if prompt_tokens else np.nan,
        "requests_per_s": completed / span if span > 0 else np.nan,
        "tokens_per_s": trace.tokens / span if span > 0 else np.nan,
        "ttft_p50_s": _percentile(ttft, 50),
        "ttft_p90_s": _percentile(ttft, 90),
        "ttft_p99_s": _percentile(ttft, 99),
        "ttft_per_token_p50_s": _percentile(ttft_per_token, 50),
        "ttft_per_token_p99_s": _percentile(ttft_per_token, 99),
        "tpot_p50_s": _percentile(tpot, 50),
        "tpot_p99_s": _percentile(tpot, 99),
        "e2e_p50_s": _percentile(e2e, 50),
        "e2e_p99_s": _percentile(e2e, 99),
        "mean_step_s": trace.step_time / steps if trace.steps else np.nan,
        "mean_decoding": trace.decoding / steps if trace.steps else np.nan,
        "mean_queue": mean_queue,
        "max_queue": max_queue,
        "mean_in_system": mean_queue + trace.running_area / span if span > 0 else np.nan,
        "prefill_share": trace.prompt_steps / steps if trace.steps else np.nan,
        "queue_growth": growth,
        "saturated": bool(growth > SATURATION_GROWTH) if np.isfinite(growth) else False,
    }


@dataclass(frozen=True)
class Engine:
    """A serving engine's settings: `token_budget` tokens and `max_seqs` running requests a step, and
    how it allocates KV (`ALLOCATIONS`)."""

    token_budget: int
    max_seqs: int = DEFAULT_MAX_SEQS
    allocation: str = "reserved"

    def __post_init__(self) -> None:
        if self.allocation not in ALLOCATIONS:
            raise ConfigError(f"--allocation {self.allocation}: choose one of {', '.join(ALLOCATIONS)}")


def _run(
    coster: StepCoster,
    arrival: np.ndarray,
    generate: int | np.ndarray,
    engine: Engine,
    seq_limit: int,
    cache: Caching,
    *,
    prompt: np.ndarray | None = None,
    reserve: np.ndarray | None = None,
    room: int | None = None,
    token_bytes: int = 0,
) -> Trace:
    """The engine `engine.allocation` names on these requests: `run_engine`, or the paged one."""
    blocks = {"blocks": cache.blocks, "block_bytes": cache.block_bytes}
    if engine.allocation == "paged":
        from simulator.paged_engine import run_paged_engine

        return run_paged_engine(
            coster,
            arrival,
            generate,
            engine.token_budget,
            engine.max_seqs,
            reserve=reserve,
            room=room,
            token_bytes=token_bytes,
            prompt=prompt,
            recompute_blocks=cache.recompute,
            **blocks,
        )
    return run_engine(
        coster,
        arrival,
        generate,
        engine.token_budget,
        seq_limit,
        prompt=prompt,
        reserve=reserve,
        room=room,
        **blocks,
    )


def token_kv_bytes(model: ModelConfig, workload: Workload, longest: int) -> int:
    """KV bytes a token adds to a request's cache at the longest request's length, rounded up (the
    paged engine's growth per token; `block_kv_bytes` of a 16-token block over 16)."""
    return -(-block_kv_bytes(model, workload, VLLM_BLOCK_TOKENS, longest) // VLLM_BLOCK_TOKENS)


def _engine_room(
    model: ModelConfig,
    hardware: HardwareConfig,
    workload: Workload,
    engine: Engine,
    prompt: int,
    generate: int,
) -> tuple[float, float, float]:
    """(bytes held besides the requests, KV bytes of one request of P + G, bytes left for requests),
    refused where the engine holds no request of that size."""
    resident, per_request = engine_memory(model, hardware, workload, prompt, generate, engine.token_budget)
    room = hardware.hbm_capacity.value - resident
    if room <= 0:
        raise ConfigError(
            f"{model.name}: the weights and the activations of a step of --token-budget "
            f"{engine.token_budget} tokens ({resident / 1e9:.3g} GB) exceed {hardware.name}'s memory "
            f"({hardware.hbm_capacity.value / 1e9:.3g} GB); try --tp, a lower --weight-dtype, a smaller "
            "budget or another --hardware"
        )
    return resident, per_request, room


def _seq_limit(room: float, per_request: float, max_seqs: int) -> int:
    """Requests of `per_request` KV bytes the engine runs at once: max_seqs, or as many as fit."""
    return min(max_seqs, int(room // per_request) if per_request > 0 else max_seqs)


def _capacity_bound(
    model: ModelConfig,
    hardware: HardwareConfig,
    workload: Workload,
    engine: Engine,
    request: tuple[int, int, int],
    room: float,
    costs: dict,
) -> float:
    """Where prompts of P tokens find `hit` of them cached ((P, G, hit)), or the engine allocates KV
    as tokens are computed: an upper bound on its capacity, that of requests whose prompts are only the
    part computed (the same work but for the cached prefix's attention reads, shorter decode contexts, a
    smaller cache each), each holding only its prompt's KV where paged (a request holds at least that
    while it decodes). A rate beyond it saturates the engine however short the run."""
    prompt, generate, hit = request
    rest = max(prompt - hit, 1)
    held = rest if engine.allocation == "paged" else rest + generate
    per_request = prompt_kv_bytes(model, workload, held)
    limit = max(_seq_limit(room, per_request, engine.max_seqs), 1)
    return engine_capacity(model, hardware, workload, rest, generate, engine.token_budget, limit, **costs)


def _setting_columns(
    model: ModelConfig, hardware: HardwareConfig, workload: Workload, engine: Engine
) -> dict[str, object]:
    return {
        "model": model.name,
        "hardware": hardware.name,
        "token_budget": engine.token_budget,
        "max_seqs": engine.max_seqs,
        "tp": workload.tp,
        "weight_dtype": describe_weight_dtypes(workload),
        "kv_dtype": workload.kv_dtype,
    }


def simulate_traffic(
    model: ModelConfig,
    hardware: HardwareConfig,
    workload: Workload,
    prompt: int,
    generate: int,
    rates: list[float],
    engine: Engine,
    *,
    requests: int = 2000,
    arrivals: str = "poisson",
    seed: int = 0,
    efficiency: Mapping[str, float] | None = None,
    overhead: Mapping[str, float] | None = None,
    keep_traces: list[Trace] | None = None,
    shared_prefix: int = 0,
    caching: bool = True,
) -> pd.DataFrame:
    """Per rate: the engine run on `requests` requests of `prompt` tokens in and `generate` out (module
    docstring), the first `shared_prefix` tokens of every prompt the same (found in the prefix cache
    where `caching`: simulator.prefix_cache). The workload's phase, batch and contexts are ignored; its
    dtypes, tp and routing apply. `keep_traces`: a list the runs' traces are appended to. Columns:
    `TRAFFIC_COLUMNS`."""
    check_request(prompt, generate)
    shared = SharedPrefixBlocks(VLLM_BLOCK_TOKENS, requests, prompt, shared_prefix) if shared_prefix else None
    for rate in rates:
        check_traffic(rate, requests, arrivals, engine.token_budget, engine.max_seqs, workload, seed)
    check_parallelism(model, workload)
    resident, per_request, room = _engine_room(model, hardware, workload, engine, prompt, generate)
    seq_limit = _seq_limit(room, per_request, engine.max_seqs)
    if seq_limit < 1:
        raise ConfigError(
            f"--prompt {prompt} --generate {generate}: one request's KV cache ({per_request / 1e9:.3g} GB) "
            f"does not fit beside the weights and a step's activations in {hardware.name}'s memory"
        )
    last_context = prompt + max(generate - 2, 0)
    coster = StepCoster(
        model, hardware, workload, prompt, prompt, last_context, engine.token_budget, efficiency, overhead
    )
    capacity = engine_capacity(
        model, hardware, workload, prompt, generate, engine.token_budget, seq_limit, efficiency, overhead
    )
    costs = {"efficiency": efficiency, "overhead": overhead}
    cache = prefix_caching(model, workload, shared, caching, prompt + generate)
    bounds: dict[int, float] = {}  # capacity with the prompts' cached tokens left out, per hit
    by_bytes = {}  # with shared blocks or paged KV, admission counts bytes: a shared block is held once
    if cache.blocks is not None or engine.allocation == "paged":
        by_bytes = {"reserve": np.full(requests, int(np.ceil(per_request))), "room": int(room)}
    if engine.allocation == "paged":
        by_bytes["token_bytes"] = token_kv_bytes(model, workload, prompt + generate)
    rows = []
    for rate in rates:
        arrival = arrival_times(rate, requests, arrivals, seed)
        limit = seq_limit if not by_bytes else engine.max_seqs
        trace = _run(coster, arrival, generate, engine, limit, cache, **by_bytes)
        stats = summarize(trace, generate, prompt)
        hit = round(stats["cached_prompt_share"] * prompt)
        bounded = hit or engine.allocation == "paged"  # else capacity itself is the bound
        if bounded and hit not in bounds:
            bounds[hit] = _capacity_bound(
                model, hardware, workload, engine, (prompt, generate, hit), room, costs
            )
        stats["saturated"] = bool(stats["saturated"] or rate > (bounds[hit] if bounded else capacity))
        if keep_traces is not None:
            keep_traces.append(trace)
        rows.append(
            {
                **_setting_columns(model, hardware, workload, engine),
                "rate": rate,
                "arrivals": arrivals,
                "seed": seed,
                "requests": requests,
                "prompt": prompt,
                "generate": generate,
                "seq_limit": engine.max_seqs if engine.allocation == "paged" else seq_limit,
                **stats,
                "capacity_rps": capacity,
                "kv_per_request_bytes": per_request,
                "memory_bytes": resident
                + (trace.most_reserved if by_bytes else trace.most_running * per_request),
                "prefix_caching": cache.label,
                "shared_prefix": shared_prefix,
                "allocation": engine.allocation,
                "preemptions": trace.preemptions,
            }
        )
    return pd.DataFrame(rows).reindex(columns=list(TRAFFIC_COLUMNS))


def request_kv_bytes(model: ModelConfig, workload: Workload, tokens: np.ndarray) -> np.ndarray:
    """`prompt_kv_bytes` at each of `tokens` (P + G per request), costed once per distinct count in one
    sweep, rounded up to whole bytes so that the engine's reservations add up exactly."""
    distinct, index = np.unique(np.asarray(tokens, dtype=np.int64), return_inverse=True)
    kv = sequence_kv_bytes(model, workload, distinct.tolist())
    return np.ceil(kv[index]).astype(np.int64)


def decode_contexts(prompt: np.ndarray, generate: np.ndarray) -> tuple[int, int, np.ndarray]:
    """(first, last, every context between them some decode step reaches): request i decodes at
    contexts P_i .. P_i + G_i - 2 (none where G_i = 1)."""
    decodes = generate > 1
    if not decodes.any():
        return 1, 1, np.array([1])
    start, stop = prompt[decodes], prompt[decodes] + generate[decodes] - 1  # contexts [start, stop)
    first, last = int(start.min()), int(stop.max()) - 1
    # the union of the stretches: +1 where one begins, -1 after it ends, summed along
    edges = np.zeros(last - first + 2, dtype=np.int64)
    np.add.at(edges, start - first, 1)
    np.add.at(edges, stop - first, -1)
    return first, last, first + np.flatnonzero(np.cumsum(edges)[:-1] > 0)


def simulate_trace(
    model: ModelConfig,
    hardware: HardwareConfig,
    workload: Workload,
    requests: RequestTrace,
    engine: Engine,
    *,
    speed: float = 1.0,
    efficiency: Mapping[str, float] | None = None,
    overhead: Mapping[str, float] | None = None,
    keep_traces: list[Trace] | None = None,
    caching: bool = True,
) -> pd.DataFrame:
    """The engine run on a recorded stream of requests, each with its own prompt and output length
    (`serve --requests-file`; `speed` only labels the row: the trace is already scaled), prompt blocks
    the trace names found in the prefix cache where `caching`. One row,
    columns `TRAFFIC_COLUMNS`: `rate` the trace's mean arrival rate, `prompt` and `generate` its mean
    P and G, at which `seq_limit`, `capacity_rps` and `kv_per_request_bytes` are taken."""
    check_trace(requests, engine.token_budget, engine.max_seqs, workload)
    check_parallelism(model, workload)
    mean_p, mean_g = float(requests.prompt.mean()), float(requests.generate.mean())
    typical = max(round(mean_p), 1), max(round(mean_g), 1)
    resident, per_request, room = _engine_room(model, hardware, workload, engine, *typical)
    reserve = request_kv_bytes(model, workload, requests.prompt + requests.generate)
    if reserve.max() > room:
        i = int(np.argmax(reserve))
        raise ConfigError(
            f"{requests.path}: request {i + 1} by arrival (prompt {requests.prompt[i]}, generate "
            f"{requests.generate[i]}): its KV cache ({reserve[i] / 1e9:.3g} GB) does not fit beside the "
            f"weights and a step's activations in {hardware.name}'s memory"
        )
    first, last, reached = decode_contexts(requests.prompt, requests.generate)
    coster = StepCoster(
        model,
        hardware,
        workload,
        typical[0],
        first,
        last,
        engine.token_budget,
        efficiency,
        overhead,
        contexts=reached,
    )
    longest = int((requests.prompt + requests.generate).max())
    cache = prefix_caching(model, workload, requests.blocks, caching, longest)
    paged = {"token_bytes": token_kv_bytes(model, workload, longest)} if engine.allocation == "paged" else {}
    trace = _run(
        coster,
        requests.arrival,
        requests.generate,
        engine,
        engine.max_seqs,
        cache,
        prompt=requests.prompt,
        reserve=reserve,
        room=int(room),
        **paged,
    )
    seq_limit = max(_seq_limit(room, per_request, engine.max_seqs), 1)
    capacity = engine_capacity(
        model, hardware, workload, *typical, engine.token_budget, seq_limit, efficiency, overhead
    )
    costs = {"efficiency": efficiency, "overhead": overhead}
    rate = requests.mean_rate
    stats = summarize(trace, requests.generate, requests.prompt)
    hit = round(stats["cached_prompt_share"] * typical[0])
    bound = capacity
    if hit or engine.allocation == "paged":  # only beyond what the least work allows, saturated for sure
        bound = _capacity_bound(model, hardware, workload, engine, (*typical, hit), room, costs)
    stats["saturated"] = bool(stats["saturated"] or rate > bound)
    if keep_traces is not None:
        keep_traces.append(trace)
    row = {
        **_setting_columns(model, hardware, workload, engine),
        "rate": rate,
        "arrivals": f"trace ({requests.layout})",
        "requests_file": requests.path,
        "trace_speed": speed,
        "requests": len(requests),
        "prompt": mean_p,
        "generate": mean_g,
        "seq_limit": engine.max_seqs if engine.allocation == "paged" else seq_limit,
        **stats,
        "capacity_rps": capacity,
        "kv_per_request_bytes": per_request,
        "memory_bytes": resident + trace.most_reserved,
        "prefix_caching": cache.label,
        "shared_prefix": 0,
        "allocation": engine.allocation,
        "preemptions": trace.preemptions,
    }
    return pd.DataFrame([row]).reindex(columns=list(TRAFFIC_COLUMNS))


def _engines(
    models: list[ModelConfig],
    hardware: list[HardwareConfig],
    token_budget: int | None,
    max_seqs: int,
    allocation: str,
) -> list[tuple[ModelConfig, HardwareConfig, Engine]]:
    """Model i on hardware[i] with its engine: `token_budget`, or each GPU's
    `serving.default_token_budget` where None."""
    from simulator.serving import default_token_budget

    if len(models) != len(hardware):
        raise ConfigError(f"{len(models)} models but {len(hardware)} hardware descriptions")
    return [
        (
            m,
            hw,
            Engine(
                token_budget if token_budget is not None else default_token_budget(hw), max_seqs, allocation
            ),
        )
        for m, hw in zip(models, hardware, strict=True)
    ]


def traffic_states(
    models: list[ModelConfig],
    hardware: list[HardwareConfig],
    workload: Workload,
    prompt: int,
    generate: int,
    rates: list[float],
    token_budget: int | None = None,
    max_seqs: int = DEFAULT_MAX_SEQS,
    allocation: str = "reserved",
    **options,
) -> pd.DataFrame:
    """`simulate_traffic` of model i on hardware[i], stacked. `token_budget` None: each GPU's
    `serving.default_token_budget`."""
    engines = _engines(models, hardware, token_budget, max_seqs, allocation)
    frames = [
        simulate_traffic(m, hw, workload, prompt, generate, rates, engine, **options)
        for m, hw, engine in engines
    ]
    return pd.concat(frames, ignore_index=True)


def trace_states(
    models: list[ModelConfig],
    hardware: list[HardwareConfig],
    workload: Workload,
    requests: RequestTrace,
    token_budget: int | None = None,
    max_seqs: int = DEFAULT_MAX_SEQS,
    allocation: str = "reserved",
    **options,
) -> pd.DataFrame:
    """`simulate_trace` of model i on hardware[i], stacked (`traffic_states` for a recorded trace)."""
    engines = _engines(models, hardware, token_budget, max_seqs, allocation)
    frames = [simulate_trace(m, hw, workload, requests, engine, **options) for m, hw, engine in engines]
    return pd.concat(frames, ignore_index=True)

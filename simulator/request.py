"""One request end to end: the prefill of its prompt, then one decode step per generated token.

A batch of B sequences with P prompt tokens each generating G tokens runs a prefill of the B x P prompt
tokens (in one step, or in chunks of a token budget per step: `prefill_steps`; the last position's
logits give each sequence its first token) and G - 1 decode steps. The decode step
that feeds generated token i (i = 1 .. G-1) finds P + i - 1 entries in the KV cache, so the decode steps
run at contexts P, P+1, ..., P+G-2: the KV read grows by one entry per step while the weight read stays.

Every decode context is costed exactly (no sampling: chunked attention makes the KV read a saw-tooth in
the context, and a layer's roofline time is a max of two lines), in slices of at most `max_points` grid
points so that long generations stay in bounded memory.

Times are those of `simulate` (roofline, or calibrated with `efficiency`/`overhead`); scheduling, queueing
and host time between steps are not modelled. Memory is the peak over the prefill steps and every decode
step, with the cache as the simulator keeps it: sliding-window and chunked-attention layers hold only
the keys still in reach, so their cache can shrink at a chunk boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from simulator.config import HardwareConfig, ModelConfig, Workload, describe_weight_dtypes
from simulator.errors import ConfigError
from simulator.sweep import sequence_kv_bytes, simulate

# decode columns summed over the steps of a request
_SUMMED = (
    "time_s",
    "bytes_ideal",
    "weight_bytes_ideal",
    "kv_read_bytes",
    "kv_write_bytes",
    "flops",
    "routing_weight_bytes",
)

REQUEST_COLUMNS: dict[str, str] = {
    "model": "model name",
    "hardware": "hardware name",
    "batch": "sequences decoded together",
    "prompt": "prompt tokens per sequence",
    "generate": "tokens generated per sequence (the first by the prefill)",
    "ttft_s": "time to first token: the prefill step",
    "tpot_s": "time per output token after the first: mean decode step time (NaN when generate is 1)",
    "last_step_s": "time of the last decode step, at the longest context",
    "e2e_s": "end-to-end time of the request: prefill plus every decode step",
    "tokens_per_s": "generated tokens per second over the whole request, all sequences of the batch",
    "prefill_bytes": "HBM bytes of the prefill step (ideal level)",
    "decode_bytes": "HBM bytes of all decode steps (ideal level)",
    "decode_weight_bytes": "weight bytes of all decode steps (distinct experts / rows per step)",
    "decode_kv_bytes": "KV-cache bytes read and written by all decode steps",
    "bytes_per_token": "decode bytes per generated token on one device: decode_bytes over the tokens of the "
    "sequences it serves (its data-parallel share ceil(batch / ep) x (generate - 1))",
    "kv_share": "KV-cache share of the decode bytes",
    "routing_share": "share of the decode bytes that routing reads (MoE routers, memory-layer retrieval)",
    "decode_flops": "FLOPs of all decode steps",
    "prefill_chunk": "prompt tokens per prefill step (0: the whole batch's prompts in one step)",
    "memory_bytes": "HBM one device holds at the request's peak (over the prefill and every decode step)",
    "peak_at": "where that peak is: 'prefill' or 'decode' (blank when nothing was costed)",
    "fits": "memory_bytes within the GPU's capacity",
    "tp": "tensor-parallel degree",
    "ep": "expert-parallel degree",
    "weight_dtype": "weight dtype (per layer kind where they differ)",
    "kv_dtype": "KV-cache dtype",
}

MAX_GENERATE = 1 << 20  # a million decode steps per request: beyond any context window
MAX_PROMPT = 1 << 24  # sixteen million prompt tokens: beyond the longest context (Llama 4 Scout's 10 M)


def check_request(prompt: int, generate: int) -> None:
    """ConfigError unless a request of `prompt` tokens in and `generate` tokens out can be costed."""
    if prompt < 1:
        raise ConfigError(f"--prompt {prompt}: a request needs at least one prompt token")
    if generate < 1:
        raise ConfigError(f"--generate {generate}: a request generates at least one token (the prefill's)")
    if prompt > MAX_PROMPT:
        raise ConfigError(f"--prompt {prompt}: more than {MAX_PROMPT} tokens per request")
    if generate > MAX_GENERATE:
        raise ConfigError(f"--generate {generate}: more than {MAX_GENERATE} tokens per request")


@dataclass(frozen=True)
class PrefillStep:
    """`count` identical prefill steps of `batch` sequences x `tokens` prompt tokens after `prefix` cached
    ones each, while `held` other sequences' whole prompts sit in the KV cache."""

    count: int
    batch: int
    tokens: int
    prefix: int
    logits: str
    held: int


def prefill_steps(batch: int, prompt: int, chunk: int) -> list[PrefillStep]:
    """The prefill of `batch` prompts of `prompt` tokens at `chunk` prompt tokens per step, as a serving
    engine with that token budget per step schedules it (vLLM's max_num_batched_tokens): whole prompts,
    as many as fit in a step, when a prompt fits; else one sequence at a time in chunks, each after the
    cached ones, only the last computing logits. `held`: the sequences already prefilled when the step's
    kind last runs (where the cache is fullest)."""
    if chunk < 1:
        raise ConfigError(f"--prefill-chunk {chunk}: a prefill step takes at least one token")
    if chunk >= prompt:
        group = min(chunk // prompt, batch)
        full, rest = divmod(batch, group)
        steps = [PrefillStep(full, group, prompt, 0, "last", (full - 1) * group)]
        return steps + ([PrefillStep(1, rest, prompt, 0, "last", full * group)] if rest else [])
    starts = range(0, prompt, chunk)
    return [
        PrefillStep(batch, 1, min(chunk, prompt - s), s, "last" if s + chunk >= prompt else "none", batch - 1)
        for s in starts
    ]


def prefill_workload(workload: Workload, step: PrefillStep, ranks: int = 1) -> Workload:
    """`workload` as one prefill step of `step`, on each of `ranks` data-parallel ranks in lockstep
    (the global batch is `ranks` times the step's)."""
    update = {"batch": [step.batch * ranks], "context": [step.tokens], "prefix": step.prefix}
    return workload.model_copy(update={**update, "phase": "prefill", "logits": step.logits})


def prompt_kv_bytes(model: ModelConfig, workload: Workload, prompt: int) -> float:
    """KV-cache bytes one whole prompt of `prompt` tokens holds on a device: what a decode step of one
    sequence at that context finds cached (more than it reads with sparse attention)."""
    return float(sequence_kv_bytes(model, workload, [prompt])[0])


def largest_passing(
    at: Callable[[int], pd.Series], misses: Callable[[pd.Series], str | None], most: int
) -> tuple[pd.Series, str | None]:
    """The row of the largest n in 1..`most` that `misses` passes (returns None for), with what stops
    n + 1 ("none" when `most` itself passes); (the row at 1, its miss) when 1 already misses. What
    `misses` tests grows with n, so doubling until a miss and then bisecting finds the edge."""
    first = at(1)
    if misses(first) is not None:
        return first, misses(first)
    good, good_row, bad, limit = 1, first, None, "none"
    while bad is None and good < most:
        trial = min(good * 2, most)
        r = at(trial)
        why = misses(r)
        if why is None:
            good, good_row = trial, r
        else:
            bad, limit = trial, why
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        r = at(mid)
        why = misses(r)
        if why is None:
            good, good_row = mid, r
        else:
            bad, limit = mid, why
    good_row = good_row.copy()
    good_row["limit"] = limit
    return good_row, None


def chunked_prefill(
    model: ModelConfig,
    hardware: HardwareConfig,
    workload: Workload,
    batches: np.ndarray,
    prompt: int,
    chunk: int,
    *,
    efficiency: Mapping[str, float] | None = None,
    overhead: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Per batch size: time_s, bytes_ideal and memory_bytes (the peak over the steps, with the sequences
    prefilled before still cached) of the prefill run in `prefill_steps`. With expert parallelism each of
    the ep data-parallel ranks prefills its own ceil(B / ep) sequences on that schedule, in lockstep (their
    MoE layers exchange tokens), so a step's global batch is ep times a rank's."""
    ep = workload.ep
    kv_per_sequence = prompt_kv_bytes(model, workload, prompt)
    cache: dict[tuple[int, int, int, str], pd.Series] = {}
    rows = []
    for b in batches:
        time = traffic = peak = 0.0
        for st in prefill_steps(-(-int(b) // ep), prompt, chunk):
            key = (st.batch, st.tokens, st.prefix, st.logits)
            if key not in cache:
                wl = prefill_workload(workload, st, ranks=ep)
                cache[key] = simulate(model, hardware, wl, efficiency=efficiency, overhead=overhead).iloc[0]
            c = cache[key]
            time += st.count * c["time_s"]
            traffic += st.count * c["bytes_ideal"]
            peak = max(peak, c["memory_bytes"] + st.held * kv_per_sequence)
        rows.append({"batch": b, "time_s": time, "bytes_ideal": traffic, "memory_bytes": peak})
    return pd.DataFrame(rows).set_index("batch").loc[batches]


def request_latency(
    model: ModelConfig,
    hardware: HardwareConfig,
    workload: Workload,
    prompt: int,
    generate: int,
    *,
    efficiency: Mapping[str, float] | None = None,
    overhead: Mapping[str, float] | None = None,
    max_points: int = 1 << 15,
    prefill_chunk: int | None = None,
) -> pd.DataFrame:
    """Per batch size of `workload`: TTFT, TPOT, end-to-end time, throughput and bytes of one request
    (`prompt` tokens in, `generate` tokens out per sequence). The workload's phase and contexts are
    ignored; its dtypes, parallelism, routing and prefill logits apply. `prefill_chunk`: prompt tokens per
    prefill step (see `prefill_steps`; None: the whole batch's prompts in one step). Columns:
    `REQUEST_COLUMNS`."""
    check_request(prompt, generate)
    batches = np.array(sorted(set(workload.batch)), dtype=np.int64)

    def run(phase: str, contexts: list[int]) -> pd.DataFrame:
        # a request's own prompt from its start; logits as the workload asks in prefill, one in decode
        logits = workload.logits if phase == "prefill" else "last"
        step = {"phase": phase, "batch": batches.tolist(), "context": contexts, "prefix": 0, "logits": logits}
        return simulate(
            model, hardware, workload.model_copy(update=step), efficiency=efficiency, overhead=overhead
        )

    if prefill_chunk is None:
        prefill = run("prefill", [prompt]).set_index("batch").loc[batches]
    else:
        costs = {"efficiency": efficiency, "overhead": overhead}
        prefill = chunked_prefill(model, hardware, workload, batches, prompt, prefill_chunk, **costs)
    steps = generate - 1
    decoded = pd.DataFrame(0.0, index=batches, columns=list(_SUMMED))
    last_step = pd.Series(np.nan, index=batches)  # the step at the longest context
    decode_peak = pd.Series(np.nan, index=batches)  # every step's: a chunked layer's cache is a saw-tooth
    per_slice = max(1, max_points // len(batches))
    for start in range(prompt, prompt + steps, per_slice):
        contexts = list(range(start, min(start + per_slice, prompt + steps)))
        df = run("decode", contexts)
        by_batch = df.groupby("batch")
        decoded += by_batch[list(_SUMMED)].sum().loc[batches]
        decode_peak = np.fmax(decode_peak, by_batch["memory_bytes"].max().loc[batches])
        if contexts[-1] == prompt + steps - 1:
            last_step = df[df["context"] == contexts[-1]].set_index("batch")["time_s"].loc[batches]

    tokens = batches * generate
    e2e = prefill["time_s"].to_numpy() + decoded["time_s"].to_numpy()
    decode_kv = (decoded["kv_read_bytes"] + decoded["kv_write_bytes"]).to_numpy()
    decode_bytes = decoded["bytes_ideal"].to_numpy()
    prefill_memory, decode_memory = prefill["memory_bytes"].to_numpy(), decode_peak.to_numpy()
    memory = np.fmax(prefill_memory, decode_memory)
    # NaN (no decode step) compares False: the prefill is then the peak
    peak_at = np.where(decode_memory > prefill_memory, "decode", "prefill")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = pd.DataFrame(
            {
                "model": model.name,
                "hardware": hardware.name,
                "batch": batches,
                "prompt": prompt,
                "generate": generate,
                "ttft_s": prefill["time_s"].to_numpy(),
                "tpot_s": decoded["time_s"].to_numpy() / steps if steps else np.nan,
                "last_step_s": last_step.to_numpy(),
                "e2e_s": e2e,
                "tokens_per_s": tokens / e2e,
                "prefill_bytes": prefill["bytes_ideal"].to_numpy(),
                "decode_bytes": decode_bytes,
                "decode_weight_bytes": decoded["weight_bytes_ideal"].to_numpy(),
                "decode_kv_bytes": decode_kv,
                "bytes_per_token": decode_bytes / (-(-batches // workload.ep) * steps) if steps else np.nan,
                "kv_share": decode_kv / decode_bytes if steps else np.nan,
                "routing_share": decoded["routing_weight_bytes"].to_numpy() / decode_bytes
                if steps
                else np.nan,
                "decode_flops": decoded["flops"].to_numpy(),
                "prefill_chunk": prefill_chunk or 0,
                "memory_bytes": memory,
                "peak_at": peak_at,
                "fits": memory <= hardware.hbm_capacity.value,
                "tp": workload.tp,
                "ep": workload.ep,
                "weight_dtype": describe_weight_dtypes(workload),
                "kv_dtype": workload.kv_dtype,
            }
        )
    return out[list(REQUEST_COLUMNS)]


def request_latencies(
    models: list[ModelConfig],
    hardware: list[HardwareConfig],
    workload: Workload,
    prompt: int,
    generate: int,
    *,
    efficiency: Mapping[str, float] | None = None,
    overhead: Mapping[str, float] | None = None,
    tpot_s: float | None = None,
    ttft_s: float | None = None,
    prefill_chunk: int | None = None,
) -> pd.DataFrame:
    """`request_latency` of model i on hardware[i], stacked (what-if variants side by side); with a
    latency target (`tpot_s`, `ttft_s`), each model's `largest_batch` instead."""
    if len(models) != len(hardware):
        raise ConfigError(f"{len(models)} models but {len(hardware)} hardware descriptions")
    costs = {"efficiency": efficiency, "overhead": overhead, "prefill_chunk": prefill_chunk}
    if tpot_s is None and ttft_s is None:
        frames = [
            request_latency(m, hw, workload, prompt, generate, **costs)
            for m, hw in zip(models, hardware, strict=True)
        ]
    else:
        frames = [
            largest_batch(m, hw, workload, prompt, generate, tpot_s=tpot_s, ttft_s=ttft_s, **costs)
            for m, hw in zip(models, hardware, strict=True)
        ]
    return pd.concat(frames, ignore_index=True)


# the columns that say which request a row is, not what it costs
_IDENTITY = (
    "model",
    "hardware",
    "batch",
    "prompt",
    "generate",
    "prefill_chunk",
    "tp",
    "ep",
    "weight_dtype",
    "kv_dtype",
)
MAX_SEARCH_BATCH = 1 << 24  # sixteen million sequences: beyond any GPU's memory for any model


def largest_batch(
    model: ModelConfig,
    hardware: HardwareConfig,
    workload: Workload,
    prompt: int,
    generate: int,
    *,
    tpot_s: float | None = None,
    ttft_s: float | None = None,
    efficiency: Mapping[str, float] | None = None,
    overhead: Mapping[str, float] | None = None,
    prefill_chunk: int | None = None,
) -> pd.DataFrame:
    """The largest batch whose request meets the latency targets (TPOT and TTFT at most `tpot_s` and
    `ttft_s`, where given) and fits in the GPU's memory: one `request_latency` row with `limit`, what
    stops a larger batch ("tpot", "ttft", "prefill memory" (the prefill's activations and the
    cache filled so far), "decode memory" (the KV cache of the fullest decode step), or "none" at
    MAX_SEARCH_BATCH), and `batch` 0 with NaN times when even one sequence misses a target. Every
    quantity grows with the batch (more tokens read more experts, rows and KV), so the search is a
    bisection."""
    check_request(prompt, generate)
    for name, value in (("--tpot", tpot_s), ("--ttft", ttft_s)):
        if value is not None and not (value > 0 and np.isfinite(value)):
            raise ConfigError(f"{name} {value}: a latency target is a positive time")
    if tpot_s is not None and generate < 2:
        raise ConfigError(
            "--tpot with --generate 1: one token is the prefill's alone, no decode step to time"
        )

    def at(batch: int) -> pd.Series:
        wl = workload.model_copy(update={"batch": [batch]})
        return request_latency(
            model,
            hardware,
            wl,
            prompt,
            generate,
            efficiency=efficiency,
            overhead=overhead,
            prefill_chunk=prefill_chunk,
        ).iloc[0]

    def misses(r: pd.Series) -> str | None:
        if tpot_s is not None and generate > 1 and r["tpot_s"] > tpot_s:
            return "tpot"
        if ttft_s is not None and r["ttft_s"] > ttft_s:
            return "ttft"
        return None if r["fits"] else f"{r['peak_at']} memory"

    row, why = largest_passing(at, misses, MAX_SEARCH_BATCH)
    if why is not None:  # one sequence already misses
        row = row.copy()
        measures = [c for c in REQUEST_COLUMNS if c not in _IDENTITY]
        if why.endswith("memory"):  # what one sequence would need stays in view
            measures = [c for c in measures if c not in ("memory_bytes", "peak_at", "fits")]
        else:
            row["peak_at"] = ""
        row[measures] = np.nan
        row["batch"], row["limit"] = 0, why
    return pd.DataFrame([row])

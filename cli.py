"""memtraffic command line: thin typer commands over simulator/, profiler/, traces/ and reports/.

Every user error (bad config, unknown preset, truncated trace, no GPU) ends as one line on stderr and
exit code 2; nothing here computes anything itself.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from simulator.errors import ConfigError, MemtrafficError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Per-layer HBM traffic of transformers: predicted (simulate, compare), measured (profile, count, "
    "import), checked (validate) and shown (report).",
)
# Piped output is not squeezed into 80 columns (tables are printed whole, see reports.render.print_table);
# COLUMNS, when set, still sets the width of the text around them.
console = Console() if sys.stdout.isatty() or os.environ.get("COLUMNS") else Console(width=140)

DEFAULT_HARDWARE = "h100-sxm"

# ----------------------------------------------------------------------------------------- arguments


def parse_sizes(text: str, what: str) -> list[int]:
    """'1,8,64' -> [1, 8, 64]; '1:4096' -> powers of two from 1 to 4096; 'a:b:f' -> factor f."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ConfigError(f"--{what} {text!r}: an empty item between commas")
        try:
            if ":" in part:
                bits = [int(x) for x in part.split(":")]
                if len(bits) not in (2, 3):
                    raise ValueError
                lo, hi = bits[0], bits[1]
                factor = bits[2] if len(bits) == 3 else 2
                if lo < 1 or hi < lo or factor < 2:
                    raise ConfigError(f"--{what} {part}: a range needs 1 <= start <= end and factor >= 2")
                v = lo
                while v <= hi:
                    out.append(v)
                    v *= factor
                if out[-1] != hi:  # a range ends where the user said, or is refused
                    raise ConfigError(
                        f"--{what} {part}: {hi} is not {lo} times a power of {factor}; end the range at "
                        f"{out[-1]} or {out[-1] * factor}, or list the sizes"
                    )
            else:
                out.append(int(part))
        except ValueError:
            raise ConfigError(
                f"--{what} {text!r}: expected integers like 1,8,64 or a range like 1:4096"
            ) from None
    if not out:
        raise ConfigError(f"--{what} is empty")
    bad = [v for v in out if v < 1]
    if bad:
        raise ConfigError(f"--{what}: sizes must be positive, got {bad[0]}")
    return sorted(set(out))


_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_seconds(text: str | None, flag: str) -> float | None:
    """'20ms', '20 ms', '500us', '0.02s' or '0.02' (seconds) -> seconds; None stays None."""
    if text is None:
        return None
    body = text.strip().lower()
    unit = next((u for u in sorted(_TIME_UNITS, key=len, reverse=True) if body.endswith(u)), "")
    try:
        value = float(body.removesuffix(unit).strip()) * _TIME_UNITS.get(unit, 1.0)
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected a time like 20ms, 500us or 0.02 (seconds)") from None
    if not (value > 0 and value < float("inf")):
        raise ConfigError(f"{flag} {text!r}: a latency target is a positive time")
    return value


def parse_rates(text: str, flag: str = "--rate") -> list[float]:
    """'1,4,16.5' -> [1.0, 4.0, 16.5] (requests per second, or replay speeds), each positive, order kept,
    repeats dropped."""
    what = "requests per second" if flag == "--rate" else "speeds"
    rates: list[float] = []
    for part in text.split(","):
        try:
            value = float(part.strip())
        except ValueError:
            raise ConfigError(f"{flag} {text!r}: expected {what} like 1,4,16") from None
        if not (value > 0 and value < float("inf")):
            raise ConfigError(f"{flag} {part.strip()}: each is a positive number ({what})")
        rates.append(value)
    return list(dict.fromkeys(rates))


def _ordered_sizes(text: str) -> list[int]:
    """'8,1,64' -> [8, 1, 64], order kept (one per trace)."""
    try:
        sizes = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"--batch {text!r}: expected integers like 1,8,64") from None
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"--batch {text!r}: sizes must be positive")
    return sizes


def parse_routing(text: str) -> dict:
    """'uniform' | 'zipf:1.2' | 'histogram:FILE'."""
    kind, _, arg = text.partition(":")
    if kind == "uniform" and not arg:
        return {"kind": "uniform"}
    if kind == "zipf":
        try:
            return {"kind": "zipf", "s": float(arg)}
        except ValueError:
            raise ConfigError(f"--routing {text}: zipf needs its exponent, e.g. zipf:1.1") from None
    if kind == "histogram" and arg:
        return {"kind": "histogram", "histogram": arg}
    raise ConfigError(f"--routing {text}: expected uniform, zipf:S or histogram:FILE")


Batch = Annotated[str, typer.Option("--batch", "-b", help="sizes: 1,8,64 or a range 1:4096 (powers of two)")]
Context = Annotated[
    str, typer.Option("--context", "-c", help="KV length (decode) or prompt length (prefill)")
]
Phase = Annotated[str, typer.Option("--phase", help="decode or prefill")]
Hardware = Annotated[str, typer.Option("--hardware", "-H", help="hardware preset or YAML file")]
Hardwares = Annotated[
    str, typer.Option("--hardware", "-H", help="hardware preset or YAML file; several: h100-sxm,b200")
]
Vary = Annotated[
    list[str] | None,
    typer.Option("--vary", help="what-if variants, one per value: top_k=4,8,16 (repeat: every combination)"),
]
Replace = Annotated[
    bool, typer.Option("--replace", help="overwrite a bundle already at --output (its measurements are lost)")
]
Fmt = Annotated[str, typer.Option("--format", "-f", help="table, csv, json or parquet")]
Output = Annotated[Path | None, typer.Option("--output", "-o", help="write the table to this file")]
Sets = Annotated[list[str] | None, typer.Option("--set", help="override a model field: top_k=16, knum=1024")]
WeightDtype = Annotated[
    str,
    typer.Option(
        "--weight-dtype",
        help="bf16, fp8, int4, mxfp4, nvfp4, ...; per layer kind after a comma, e.g. bf16,moe=mxfp4 "
        "(kinds: attention|attn, recurrent (all recurrent mixers) or mamba (Mamba and Mamba-2), mamba2, "
        "gated_deltanet, lightning, linear_attn (both), dense|ffn, moe, memory (all memory layers) or pkm, "
        "peer, memory_plus, ultramem, ultramemv2, embedding|embed, head)",
    ),
]
ActDtype = Annotated[str, typer.Option("--act-dtype")]
KvDtype = Annotated[str, typer.Option("--kv-dtype")]
TensorParallel = Annotated[int, typer.Option("--tp", help="tensor-parallel degree")]
ExpertParallel = Annotated[
    int, typer.Option("--ep", help="expert-parallel degree (other layers data-parallel; global batch)")
]
Routing = Annotated[str, typer.Option("--routing", help="uniform, zipf:S or histogram:FILE")]
Calibration = Annotated[Path | None, typer.Option("--calibration", help="run dir or calibration JSON")]


def _workload(
    batch: str,
    context: str,
    phase: str,
    weight_dtype: str,
    act_dtype: str,
    kv_dtype: str,
    tp: int,
    ep: int,
    routing: str,
    logits: str = "last",
    prefix: int = 0,
    context_flag: str = "--context",
    sizes_flag: str = "--batch",
):
    from pydantic import ValidationError

    from simulator.config import Workload, describe_validation_error, parse_weight_dtypes

    try:
        default_dtype, kind_dtypes = parse_weight_dtypes(weight_dtype)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        return Workload(
            phase=phase,
            batch=parse_sizes(batch, sizes_flag.removeprefix("--")),
            context=parse_sizes(context, "context"),
            weight_dtype=default_dtype,
            weight_dtypes=kind_dtypes,
            activation_dtype=act_dtype,
            kv_dtype=kv_dtype,
            tp=tp,
            ep=ep,
            routing=parse_routing(routing),
            logits=logits,
            prefix=prefix,
        )
    except ValidationError as exc:
        message = describe_validation_error(exc, "workload")
        raise ConfigError(_flag_error(message, context_flag, sizes_flag)) from None


def _names(cfgs) -> str:
    """The models of a title: "a vs b vs c", or "N variants" when that would not fit on a line."""
    names = [c.name for c in cfgs]
    return " vs ".join(names) if len(names) <= 3 else f"{len(names)} variants ({names[0]}, ...)"


_WORKLOAD_FLAGS = {
    "batch": "--batch",
    "tp": "--tp",
    "ep": "--ep",
    "prefix": "--prefix",
    "logits": "--logits",
    "kv_dtype": "--kv-dtype",
    "activation_dtype": "--act-dtype",
    "weight_dtype": "--weight-dtype",
    "weight_dtypes": "--weight-dtype",
    "routing": "--routing",
    "phase": "--phase",
}


def _flag_error(message: str, context_flag: str, sizes_flag: str = "--batch") -> str:
    """ "workload: tp: ..." -> "--tp: ...": the flag the user typed, not the field it fills."""
    head, _, rest = message.partition(": ")
    field, sep, tail = rest.partition(": ")
    name, *path = field.split(".")
    flag = {"context": context_flag, "batch": sizes_flag}.get(name) or _WORKLOAD_FLAGS.get(name)
    if head != "workload" or not sep or flag is None:
        return message
    where = [p for p in path if not p.isdigit() and p != "[key]"]  # weight_dtypes.experts.[key] -> experts
    return f"{' '.join([flag, *where])}: {tail}"


def _scenario_fields(weight_dtype: str, kv_dtype: str, tp: int, ep: int, routing: str) -> dict:
    """The Workload fields of the scenario options, validated as the other commands validate them."""
    wl = _workload("1", "1", "decode", weight_dtype, "bf16", kv_dtype, tp, ep, routing)
    return {k: getattr(wl, k) for k in ("weight_dtype", "weight_dtypes", "kv_dtype", "tp", "ep", "routing")}


def _positions_asked(wl) -> str:
    """The options that set a step's longest sequence, as the user typed them."""
    context = f"--context {max(wl.context)}"
    return f"--prefix {wl.prefix} {context}" if wl.prefix else context


def _scenario(wl, calibration: Path | None = None, step: str | None = None) -> str:
    """What a table's numbers assume, for its title (defaults left out); `step` in place of the phase and
    context (a whole request)."""
    from simulator.config import describe_weight_dtypes

    if step is None:
        step = wl.phase + (f", context {wl.context[0]}" if len(wl.context) == 1 else "")
        step += f" after {wl.prefix} cached" if wl.prefix else ""
        step += f", logits {wl.logits}" if wl.logits != "last" else ""
    parts = [step, f"weights {describe_weight_dtypes(wl)}", f"KV {wl.kv_dtype}"]
    if wl.tp > 1 or wl.ep > 1:
        parts.append(f"per device of tp {wl.tp} x ep {wl.ep} (global batch)")
    if wl.routing.kind == "zipf":
        parts.append(f"routing zipf:{wl.routing.s:g}")
    elif wl.routing.kind != "uniform":
        parts.append(f"routing {wl.routing.kind}")
    if calibration is not None:
        parts.append(f"calibrated by {calibration}")
    return ", ".join(parts)


_SUFFIX_FORMATS = {".csv": "csv", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}


def _file_format(fmt: str, output: Path) -> str:
    """The format a file is written in: --format when given, else its name's suffix (csv otherwise); a
    --format that contradicts the suffix is refused rather than written under a misleading name."""
    named = _SUFFIX_FORMATS.get(output.suffix.lower())
    if fmt == "table":
        return named or "csv"
    if named is not None and named != fmt:
        raise ConfigError(
            f"--output {output}: a {output.suffix} name for {fmt} data; rename it or drop --format"
        )
    return fmt


def _emit(df, fmt: str, output: Path | None, table_fn) -> None:
    from reports.render import print_table
    from reports.tables import FORMATS, frame_text, write_frame
    from simulator.atomic import stream_fd

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if output is not None:
        write_frame(df, output, _file_format(fmt, output))
        note = f"wrote {len(df)} rows to {output}"
        if stream_fd(output) == 1:
            print(note, file=sys.stderr)  # the data owns stdout
        else:
            console.print(note)
    elif fmt == "table":
        print_table(console, table_fn())
    elif fmt == "parquet":
        raise ConfigError("--format parquet needs --output FILE")
    else:
        sys.stdout.write(frame_text(df, fmt))


# ------------------------------------------------------------------------------------------ commands


@app.command()
def simulate(
    model: Annotated[str, typer.Argument(help="preset name, model YAML/JSON, or a Hugging Face config.json")],
    hardware: Hardware = DEFAULT_HARDWARE,
    batch: Batch = "1,8,64,512",
    context: Context = "2048",
    phase: Phase = "decode",
    per_layer: Annotated[bool, typer.Option("--per-layer", help="one row per layer")] = False,
    fmt: Fmt = "table",
    output: Output = None,
    sets: Sets = None,
    weight_dtype: WeightDtype = "bf16",
    act_dtype: ActDtype = "bf16",
    kv_dtype: KvDtype = "bf16",
    tp: TensorParallel = 1,
    ep: ExpertParallel = 1,
    routing: Routing = "uniform",
    calibration: Calibration = None,
    logits: Annotated[
        str, typer.Option("--logits", help="prefill: LM-head logits for the last position, all, or none")
    ] = "last",
    prefix: Annotated[
        int, typer.Option("--prefix", help="prefill: KV entries already cached per sequence (a later chunk)")
    ] = 0,
) -> None:
    """FLOPs, bytes (weights, activations, KV read/write), intensity and roofline time per step."""
    from simulator.loading import load_hardware, load_model
    from simulator.sweep import simulate as run

    cfg = load_model(model, sets or [])
    if sets:  # named by its overrides, in the title and in every row written to a file
        cfg = cfg.model_copy(update={"name": " ".join([cfg.name, *sets])})
    hw = load_hardware(hardware)
    wl = _workload(batch, context, phase, weight_dtype, act_dtype, kv_dtype, tp, ep, routing, logits, prefix)
    _warn_positions([cfg], wl.positions, _positions_asked(wl))
    eff = _calibration(calibration, [hw], [cfg])
    df = run(cfg, hw, wl, per_layer=per_layer, efficiency=eff, overhead=getattr(eff, "overhead_s", None))
    from reports.tables import simulate_table

    title = f"{cfg.name} on {hw.name}, {_scenario(wl, calibration)}"
    _emit(df, fmt, output, lambda: simulate_table(df, title))


@app.command()
def compare(
    models: Annotated[list[str], typer.Argument(help="models (presets, files, Hub ids) to compare")],
    hardware: Hardwares = DEFAULT_HARDWARE,
    batch: Batch = "1:4096",
    context: Context = "2048",
    phase: Phase = "decode",
    fmt: Fmt = "table",
    output: Output = None,
    sets: Sets = None,
    vary: Vary = None,
    weight_dtype: WeightDtype = "bf16",
    act_dtype: ActDtype = "bf16",
    kv_dtype: KvDtype = "bf16",
    tp: TensorParallel = 1,
    ep: ExpertParallel = 1,
    routing: Routing = "uniform",
    calibration: Calibration = None,
) -> None:
    """Weight bytes and time per step of models and what-if variants (another top-k, a bigger table,
    another GPU) side by side, with ratios to the first."""
    from reports.tables import compare_frame, compare_table
    from simulator.loading import hardware_names, load_variants
    from simulator.sweep import compare as run

    variants = load_variants(models, hardware_names(hardware), sets or [], vary or [])
    cfgs = [m for m, _ in variants]
    gpus = [hw for _, hw in variants]
    wl = _workload(batch, context, phase, weight_dtype, act_dtype, kv_dtype, tp, ep, routing)
    _warn_positions(cfgs, wl.positions, _positions_asked(wl))
    cal = _calibration(calibration, gpus, cfgs)
    cmp = compare_frame(run(cfgs, gpus, wl, efficiency=cal, overhead=getattr(cal, "overhead_s", None)))
    on = " and ".join(dict.fromkeys(hw.name for hw in gpus))
    title = f"{_names(cfgs)} on {on}, {_scenario(wl, calibration)}"
    _emit(cmp, fmt, output, lambda: compare_table(cmp, title))


@app.command()
def latency(
    models: Annotated[list[str], typer.Argument(help="models (presets, files, Hub ids)")],
    prompt: Annotated[int, typer.Option("--prompt", "-p", help="prompt tokens per sequence")] = 2048,
    generate: Annotated[int, typer.Option("--generate", "-g", help="tokens generated per sequence")] = 256,
    hardware: Hardwares = DEFAULT_HARDWARE,
    batch: Annotated[
        str | None, typer.Option("--batch", "-b", help="sizes: 1,8,64 or a range 1:4096 (default 1,8,64,256)")
    ] = None,
    tpot: Annotated[
        str | None,
        typer.Option(
            "--tpot", help="find the largest batch whose time per output token is at most this (20ms)"
        ),
    ] = None,
    ttft: Annotated[
        str | None,
        typer.Option("--ttft", help="find the largest batch whose time to first token is at most this"),
    ] = None,
    prefill_chunk: Annotated[
        int | None,
        typer.Option("--prefill-chunk", help="prompt tokens per prefill step (default: all prompts in one)"),
    ] = None,
    fmt: Fmt = "table",
    output: Output = None,
    sets: Sets = None,
    vary: Vary = None,
    weight_dtype: WeightDtype = "bf16",
    act_dtype: ActDtype = "bf16",
    kv_dtype: KvDtype = "bf16",
    tp: TensorParallel = 1,
    ep: ExpertParallel = 1,
    routing: Routing = "uniform",
    calibration: Calibration = None,
) -> None:
    """One request end to end: time to first token (the prefill), time per output token (every decode
    step costed at its own context), end-to-end time, throughput and bytes per generated token. With
    --tpot or --ttft: each model's largest batch that meets them and fits in the GPU's memory."""
    from reports.tables import latency_table
    from simulator.request import check_request, request_latencies

    check_request(prompt, generate)
    tpot_s, ttft_s = parse_seconds(tpot, "--tpot"), parse_seconds(ttft, "--ttft")
    targeted = tpot_s is not None or ttft_s is not None
    if targeted and batch is not None:
        raise ConfigError(
            "--batch and --tpot/--ttft together: a latency target searches for the batch; drop --batch"
        )
    cfgs, gpus, wl, cal = _request_setup(
        "latency",
        models,
        hardware,
        sets,
        vary,
        ("--batch", batch or "1,8,64,256"),
        (prompt, generate),
        (weight_dtype, act_dtype, kv_dtype, tp, ep, routing),
        calibration,
    )
    df = request_latencies(
        cfgs,
        gpus,
        wl,
        prompt,
        generate,
        efficiency=cal,
        overhead=getattr(cal, "overhead_s", None),
        tpot_s=tpot_s,
        ttft_s=ttft_s,
        prefill_chunk=prefill_chunk,
    )
    on = " and ".join(dict.fromkeys(hw.name for hw in gpus))
    request = f"prompt {prompt}, generate {generate}"
    if prefill_chunk is not None:
        request += f", prefill {prefill_chunk} tokens a step"
    scenario = _scenario(wl, calibration, step=request)
    title = f"{_names(cfgs)} on {on}, one request: {scenario}"
    if targeted:
        wanted = [f"TPOT <= {tpot}" if tpot else "", f"TTFT <= {ttft}" if ttft else ""]
        title += f"; the largest batch with {' and '.join(filter(None, wanted))} that fits in memory"
    _emit(df, fmt, output, lambda: latency_table(df, title))


@app.command()
def serve(
    models: Annotated[list[str], typer.Argument(help="models (presets, files, Hub ids)")],
    prompt: Annotated[
        int | None, typer.Option("--prompt", "-p", help="prompt tokens per request (default 2048)")
    ] = None,
    generate: Annotated[
        int | None, typer.Option("--generate", "-g", help="tokens generated per request (default 256)")
    ] = None,
    hardware: Hardwares = DEFAULT_HARDWARE,
    concurrency: Annotated[
        str | None,
        typer.Option(
            "--concurrency", "-n", help="sequences decoding at once: 1,8,64 or 1:256 (default 1,8,64,256)"
        ),
    ] = None,
    token_budget: Annotated[
        int | None,
        typer.Option(
            "--token-budget",
            help="tokens a step may carry (vLLM max_num_batched_tokens; default as vLLM: 8192 on GPUs of "
            "70 GB and more, 2048 on others and A100s)",
        ),
    ] = None,
    tpot: Annotated[
        str | None,
        typer.Option("--tpot", help="find the largest concurrency whose TPOT is at most this (5ms)"),
    ] = None,
    rate: Annotated[
        str | None,
        typer.Option(
            "--rate",
            help="requests arriving per second, 1,4,16: simulate the engine request by request under that "
            "load (queueing, latency percentiles, saturation) instead of the steady state",
        ),
    ] = None,
    requests: Annotated[
        int, typer.Option("--requests", help="with --rate: requests simulated (the first 10 % warm-up)")
    ] = 2000,
    arrivals: Annotated[
        str,
        typer.Option(
            "--arrivals",
            help="with --rate: poisson (seeded by --seed), even, or gamma:CV (bursty: gamma gaps whose "
            "coefficient of variation is CV, 1 being Poisson; seeded)",
        ),
    ] = "poisson",
    seed: Annotated[
        int, typer.Option("--seed", help="with --rate: seed of the Poisson or gamma arrivals")
    ] = 0,
    max_seqs: Annotated[
        int,
        typer.Option(
            "--max-seqs",
            help="with --rate or --requests-file: running requests a step may hold (vLLM max_num_seqs)",
        ),
    ] = 256,
    requests_file: Annotated[
        Path | None,
        typer.Option(
            "--requests-file",
            help="replay a request trace (each request its own arrival, prompt and output length): Azure "
            "LLM inference CSV, BurstGPT CSV, Mooncake JSONL, or CSV/Parquet with arrival_s,prompt,generate",
        ),
    ] = None,
    trace_speed: Annotated[
        float,
        typer.Option("--trace-speed", help="with --requests-file: compress the arrivals this many times"),
    ] = 1.0,
    trace_requests: Annotated[
        int | None,
        typer.Option("--trace-requests", help="with --requests-file: the first N requests by arrival"),
    ] = None,
    shared_prefix: Annotated[
        int,
        typer.Option(
            "--shared-prefix",
            help="with --rate: prompt tokens every request begins with (a system prompt), found in the "
            "prefix cache after the first",
        ),
    ] = 0,
    prefix_caching: Annotated[
        bool | None,
        typer.Option(
            "--prefix-caching/--no-prefix-caching",
            help="with --rate or --requests-file: reuse the KV of prompt blocks already computed (vLLM's "
            "automatic prefix caching, on by default; a trace's blocks: Mooncake hash_ids)",
        ),
    ] = None,
    allocation: Annotated[
        str | None,
        typer.Option(
            "--allocation",
            help="with --rate or --requests-file: reserved (each request's KV at P + G on admission, the "
            "default) or paged (vLLM: the tokens computed so far; the request admitted last preempted and "
            "recomputed when the next step does not fit)",
        ),
    ] = None,
    fmt: Fmt = "table",
    output: Output = None,
    sets: Sets = None,
    vary: Vary = None,
    weight_dtype: WeightDtype = "bf16",
    act_dtype: ActDtype = "bf16",
    kv_dtype: KvDtype = "bf16",
    tp: TensorParallel = 1,
    ep: ExpertParallel = 1,
    routing: Routing = "uniform",
    calibration: Calibration = None,
) -> None:
    """Continuous batching in steady state: N sequences decoding while the prompts of the requests
    that replace them fill each step's leftover token budget. TPOT, TTFT, tokens/s and bytes per token
    with the prefill work mixed in; with --tpot, each model's largest N that meets it and fits. With
    --rate, the engine run request by request under Poisson (or even) arrivals: TTFT with the queueing,
    TPOT and end-to-end percentiles, throughput, and whether it keeps up. With --requests-file, the
    same engine on a recorded trace's arrivals and request sizes."""
    from reports.tables import serving_table
    from simulator.request import check_request
    from simulator.serving import serving_states

    scenario = (weight_dtype, act_dtype, kv_dtype, tp, ep, routing)
    if allocation is not None:
        from simulator.traffic import Engine

        Engine(1, 1, allocation)  # refused in one line when it is none of the allocations
    if requests_file is not None:
        given = {"--rate": rate, "--prompt": prompt, "--generate": generate}
        given |= {"--concurrency": concurrency, "--tpot": tpot, "--shared-prefix": shared_prefix or None}
        for flag, value in given.items():
            if value is not None:
                raise ConfigError(
                    f"--requests-file and {flag} together: the trace gives the arrivals and request sizes; "
                    f"drop {flag}"
                )
        trace = (requests_file, trace_speed, trace_requests)
        engine = (token_budget, max_seqs, prefix_caching is not False, allocation or "reserved")
        _serve_trace(models, hardware, sets, vary, trace, engine, scenario, calibration, fmt, output)
        return
    prompt = 2048 if prompt is None else prompt
    generate = 256 if generate is None else generate
    check_request(prompt, generate)
    tpot_s = parse_seconds(tpot, "--tpot")
    if tpot_s is not None and concurrency is not None:
        raise ConfigError(
            "--concurrency and --tpot together: a TPOT target searches for it; drop --concurrency"
        )
    if rate is None and shared_prefix:
        raise ConfigError("--shared-prefix without --rate: the prefix cache is simulated request by request")
    if rate is None and prefix_caching is not None:
        flag = "--prefix-caching" if prefix_caching else "--no-prefix-caching"
        raise ConfigError(f"{flag} without --rate or --requests-file: the steady state has no prefix cache")
    if rate is None and allocation is not None:
        raise ConfigError(
            f"--allocation {allocation} without --rate or --requests-file: the steady state reserves no KV"
        )
    if rate is not None:
        for flag, given in (("--concurrency", concurrency), ("--tpot", tpot)):
            if given is not None:
                raise ConfigError(f"--rate and {flag} together: --rate simulates arrivals; drop {flag}")
        options = {"requests": requests, "arrivals": arrivals, "seed": seed, "max_seqs": max_seqs}
        options |= {"shared_prefix": shared_prefix, "caching": prefix_caching is not False}
        options["allocation"] = allocation or "reserved"
        request = (prompt, generate, token_budget)
        scenario = (weight_dtype, act_dtype, kv_dtype, tp, ep, routing)
        _serve_rates(models, hardware, sets, vary, rate, request, scenario, calibration, options, fmt, output)
        return
    cfgs, gpus, wl, cal = _request_setup(
        "serve",
        models,
        hardware,
        sets,
        vary,
        ("--concurrency", concurrency or "1,8,64,256"),
        (prompt, generate),
        (weight_dtype, act_dtype, kv_dtype, tp, ep, routing),
        calibration,
    )
    df = serving_states(
        cfgs,
        gpus,
        wl,
        prompt,
        generate,
        token_budget,
        efficiency=cal,
        overhead=getattr(cal, "overhead_s", None),
        tpot_s=tpot_s,
    )
    on, budgets = _gpus_and_budgets(gpus, df)
    request = f"prompt {prompt}, generate {generate}, {budgets}"
    title = f"{_names(cfgs)} on {on}, continuous batching: {_scenario(wl, calibration, step=request)}"
    if tpot_s is not None:
        title += f"; the largest concurrency with TPOT <= {tpot} that keeps up and fits in memory"
    _emit(df, fmt, output, lambda: serving_table(df, title))


def _gpus_and_budgets(gpus, df) -> tuple[str, str]:
    """ "h100-sxm and b200", "8192 tokens a step, 2048 tokens a step": the GPUs of a serve run and the
    token budgets its rows ran with, for its title."""
    on = " and ".join(dict.fromkeys(hw.name for hw in gpus))
    budgets = ", ".join(f"{b:g} tokens a step" for b in dict.fromkeys(df["token_budget"].dropna()))
    return on, budgets


def _serve_rates(
    models: list[str],
    hardware: str,
    sets: list[str] | None,
    vary: list[str] | None,
    rate: str,
    request: tuple[int, int, int | None],
    scenario: tuple[str, str, str, int, int, str],
    calibration: Path | None,
    options: dict,
    fmt: str,
    output: Path | None,
) -> None:
    """`serve --rate`: the request-level simulation (simulator.traffic) of each model at each rate."""
    from reports.tables import traffic_table
    from simulator.traffic import check_traffic, traffic_states

    prompt, generate, token_budget = request
    rates = parse_rates(rate)
    cfgs, gpus, wl, cal = _request_setup(
        "serve", models, hardware, sets, vary, ("--rate", "1"), (prompt, generate), scenario, calibration
    )
    # the options alone, before any model is costed (the token budget is checked per GPU when defaulted)
    budget = token_budget if token_budget is not None else max(options["max_seqs"], 1)
    check_traffic(
        rates[0], options["requests"], options["arrivals"], budget, options["max_seqs"], wl, options["seed"]
    )
    df = traffic_states(
        cfgs,
        gpus,
        wl,
        prompt,
        generate,
        rates,
        token_budget,
        options["max_seqs"],
        requests=options["requests"],
        arrivals=options["arrivals"],
        seed=options["seed"],
        efficiency=cal,
        overhead=getattr(cal, "overhead_s", None),
        shared_prefix=options["shared_prefix"],
        caching=options["caching"],
        allocation=options["allocation"],
    )
    on, budgets = _gpus_and_budgets(gpus, df)
    seeded = options["arrivals"] != "even"
    stream = options["arrivals"] + (f" (seed {options['seed']})" if seeded else "")
    shared = f" ({options['shared_prefix']} shared)" if options["shared_prefix"] else ""
    step = f"prompt {prompt}{shared}, generate {generate}, {budgets}, max {options['max_seqs']} running"
    title = f"{_names(cfgs)} on {on}, {options['requests']} requests arriving {stream}: "
    title += _scenario(wl, calibration, step=step)
    _emit(df, fmt, output, lambda: traffic_table(df, title))


def _serve_trace(
    models: list[str],
    hardware: str,
    sets: list[str] | None,
    vary: list[str] | None,
    trace: tuple[Path, float, int | None],
    engine: tuple[int | None, int, bool, str],
    scenario: tuple[str, str, str, int, int, str],
    calibration: Path | None,
    fmt: str,
    output: Path | None,
) -> None:
    """`serve --requests-file`: the request-level simulation of each model on a recorded trace."""
    from reports.tables import traffic_table
    from simulator.request_trace import load_request_trace
    from simulator.traffic import check_trace, trace_states

    path, speed, first = trace
    token_budget, max_seqs, caching, allocation = engine
    requests = load_request_trace(path, speed, first)
    # the trace and options alone, before any model is costed (the budget is checked per GPU when defaulted)
    budget = token_budget if token_budget is not None else max(max_seqs, 1)
    # the longest request's context for the max-positions warning: the largest P, and G to its P + G
    most_prompt = int(requests.prompt.max())
    longest = most_prompt, int((requests.prompt + requests.generate).max()) - most_prompt
    cfgs, gpus, wl, cal = _request_setup(
        "serve",
        models,
        hardware,
        sets,
        vary,
        ("--requests-file", "1"),
        longest,
        scenario,
        calibration,
        asked=f"the longest request of {path.name}",
    )
    check_trace(requests, budget, max_seqs, wl)
    df = trace_states(
        cfgs,
        gpus,
        wl,
        requests,
        token_budget,
        max_seqs,
        speed=speed,
        efficiency=cal,
        overhead=getattr(cal, "overhead_s", None),
        caching=caching,
        allocation=allocation,
    )
    on, budgets = _gpus_and_budgets(gpus, df)
    sizes = f"prompt {requests.prompt.mean():.0f} and generate {requests.generate.mean():.0f} on average"
    step = f"{sizes}, {budgets}, max {max_seqs} running"
    replay = f" at {speed:g}x" if speed != 1 else ""
    dropped = f", {requests.dropped} with no output tokens left out" if requests.dropped else ""
    title = f"{_names(cfgs)} on {on}, {len(requests)} requests of {path.name} ({requests.layout}{replay}"
    title += f"{dropped}): {_scenario(wl, calibration, step=step)}"
    _emit(df, fmt, output, lambda: traffic_table(df, title))


def _request_setup(
    command: str,
    models: list[str],
    hardware: str,
    sets: list[str] | None,
    vary: list[str] | None,
    sizes: tuple[str, str],
    request: tuple[int, int],
    scenario: tuple[str, str, str, int, int, str],
    calibration: Path | None,
    asked: str | None = None,
):
    """What `latency` and `serve` share: the variants, the workload (its batch sizes from the flag and
    text in `sizes`, its context the prompt), the max-positions warning (naming `asked`, by default the
    --prompt and --generate) and the calibration."""
    from simulator.loading import hardware_names, load_variants

    prompt, generate = request
    weight_dtype, act_dtype, kv_dtype, tp, ep, routing = scenario
    variants = load_variants(
        models, hardware_names(hardware), sets or [], vary or [], command=command, at_least=1
    )
    flag, text = sizes
    wl = _workload(
        text,
        str(prompt),
        "decode",
        weight_dtype,
        act_dtype,
        kv_dtype,
        tp,
        ep,
        routing,
        context_flag="--prompt",
        sizes_flag=flag,
    )
    cfgs, gpus = [m for m, _ in variants], [hw for _, hw in variants]
    # the last decode step feeds generated token G - 1 at position prompt + G - 1
    _warn_positions(cfgs, prompt + generate - 1, asked or f"--prompt {prompt} --generate {generate}")
    return cfgs, gpus, wl, _calibration(calibration, gpus, cfgs)


@app.command()
def presets(
    kind: Annotated[str, typer.Option("--kind", help="models, hardware or all")] = "all",
) -> None:
    """List the model and hardware presets with their sources."""
    from rich.table import Table

    from simulator.loading import list_presets

    kinds = ["models", "hardware"] if kind == "all" else [kind]
    for k in kinds:
        if k not in {"models", "hardware"}:
            raise ConfigError(f"--kind {kind}: choose models, hardware or all")
        table = Table(title=f"{k} presets", title_justify="left")
        table.add_column("name")
        table.add_column("description")
        table.add_column("provenance tags")
        for p in list_presets(k):
            table.add_row(p["name"], p.get("description", ""), ", ".join(p.get("source_tags", [])))
        console.print(table)


@app.command("import")
def import_(
    output: Annotated[Path, typer.Option("--output", "-o", help="bundle directory to write")],
    traces: Annotated[
        list[Path] | None, typer.Argument(help="kineto JSON traces (.json or .json.gz)")
    ] = None,
    nvml: Annotated[Path | None, typer.Option("--nvml", help="NVML/GPM timeline CSV")] = None,
    runs: Annotated[
        Path | None, typer.Option("--runs", help="JSON listing each trace's steady window")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="the traced model: preset, model file or HF config.json")
    ] = None,
    runs_model: Annotated[
        str | None, typer.Option("--runs-model", help="take this model's runs from the runs file")
    ] = None,
    layer_pattern: Annotated[
        str | None, typer.Option("--layer-pattern", help="regex of layer ranges")
    ] = None,
    step_pattern: Annotated[str | None, typer.Option("--step-pattern", help="regex of step ranges")] = None,
    peak: Annotated[float | None, typer.Option("--peak-hbm-bps", help="theoretical HBM bytes/s")] = None,
    batch: Annotated[
        str | None, typer.Option("--batch", "-b", help="batch size of each trace, in order")
    ] = None,
    phase: Annotated[
        str | None, typer.Option("--phase", help="decode or prefill (else the runs file's)")
    ] = None,
    context: Annotated[
        int | None, typer.Option("--context", "-c", help="KV / prompt length (else the runs file's)")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="bfloat16, float16, float32 (else the runs file's)")
    ] = None,
    replace: Replace = False,
) -> None:
    """Turn torch.profiler traces (and an NVML/GPM timeline) recorded elsewhere into a trace bundle."""
    from traces import import_traces

    cfg = None
    if model is not None:
        from simulator.loading import load_model

        cfg = load_model(model)
    out = import_traces(
        list(traces or []),
        output,
        nvml=nvml,
        runs=runs,
        model=runs_model,
        model_config=cfg.model_dump(mode="json") if cfg is not None else None,
        layer_pattern=layer_pattern,
        step_pattern=step_pattern,
        replace=replace,
        peak_hbm_Bps=peak,
        batch=_ordered_sizes(batch) if batch else None,
        workload={"phase": phase, "context": context, "dtype": dtype},
    )
    _print_bundle_summary(out)


@app.command()
def profile(
    model: Annotated[
        str, typer.Argument(help="preset, model file, HF config.json, or path/to/file.py:factory")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="bundle directory to write")],
    batch: Batch = "1,8,64,512",
    phase: Phase = "decode",
    context: Annotated[
        int, typer.Option("--context", "-c", help="KV length (decode) or prompt length")
    ] = 2048,
    steps: Annotated[int, typer.Option("--steps", help="profiled steps per batch size")] = 3,
    warmup: Annotated[int, typer.Option("--warmup", help="warm-up steps per batch size")] = 3,
    steady_seconds: Annotated[
        float, typer.Option("--steady-seconds", help="steady loop per batch size")
    ] = 1.0,
    device: Annotated[
        str | None, typer.Option("--device", help="cuda, cpu (default: cuda if present)")
    ] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="fp32, tf32, bf16 or fp16")] = "bf16",
    input_shape: Annotated[
        str | None, typer.Option("--input-shape", help="for file.py:factory, e.g. B,1,1024 (B = batch)")
    ] = None,
    input_ring: Annotated[int, typer.Option("--input-ring", help="distinct inputs cycled per step")] = 16,
    kv_mode: Annotated[str, typer.Option("--kv-mode", help="fixed (read-only cache) or append")] = "fixed",
    ncu: Annotated[bool, typer.Option("--ncu", help="second pass under Nsight Compute (DRAM bytes)")] = False,
    routing: Annotated[
        bool, typer.Option("--routing/--no-routing", help="record experts/rows touched")
    ] = True,
    cuda_graphs: Annotated[
        bool, typer.Option("--cuda-graphs", help="also time the steps replayed as CUDA graphs (no launches)")
    ] = False,
    sets: Sets = None,
    replace: Replace = False,
) -> None:
    """Run a model across batch sizes under torch.profiler (+ NVML/GPM, + ncu) into a trace bundle."""
    from profiler.run import profile as run

    out = run(
        model,
        parse_sizes(batch, "batch"),
        output,
        overrides=sets or [],
        input_shape=input_shape,
        phase=phase,
        context=context,
        steps=steps,
        warmup=warmup,
        steady_seconds=steady_seconds,
        device=device,
        dtype=dtype,
        input_ring=input_ring,
        kv_mode=kv_mode,
        ncu=ncu,
        record_routing=routing,
        cuda_graphs=cuda_graphs,
        replace=replace,
        progress=sys.stderr.isatty(),
    )
    _print_bundle_summary(out)


@app.command()
def count(
    model: Annotated[str, typer.Argument(help="preset, model file or HF config.json")],
    batch: Batch = "1,8,64",
    context: Annotated[int, typer.Option("--context", "-c")] = 2048,
    phase: Phase = "decode",
    dtype: Annotated[str, typer.Option("--dtype")] = "bf16",
    device: Annotated[str, typer.Option("--device", help="meta (no memory) or cpu (real routing)")] = "meta",
    per_op: Annotated[
        bool, typer.Option("--per-op", help="one row per aten op instead of per layer")
    ] = False,
    fmt: Fmt = "table",
    output: Output = None,
    sets: Sets = None,
    hardware: Hardware = DEFAULT_HARDWARE,
) -> None:
    """What the real PyTorch module reads and writes, op by op (the eager level), without a GPU, and
    the kernel time that implies on HARDWARE (a fixed cost per kernel plus its roofline time)."""
    from profiler.count import count_sweep, with_step_totals
    from profiler.userfactory import is_factory_spec
    from simulator.loading import load_hardware, load_model

    if is_factory_spec(model):
        raise ConfigError(
            f"{model}: count takes a model config (preset, file, HF config.json); profile a module"
        )
    cfg = load_model(model, sets or [])
    hw = load_hardware(hardware)
    sizes = parse_sizes(batch, "batch")
    df = count_sweep(cfg, sizes, context, phase, dtype, device, hardware=hw, per_op=per_op)
    df = df if per_op else with_step_totals(df)
    from reports.tables import count_table

    title = f"{cfg.name}: op-level counts ({device}), {phase}; kernel time on {hw.name}"
    _emit(df, fmt, output, lambda: count_table(df, title))


@app.command()
def validate(
    run_dir: Annotated[Path, typer.Argument(help="a trace bundle (from profile or import)")],
    model: Annotated[
        str | None, typer.Option("--model", help="model to predict (default: the bundle's)")
    ] = None,
    hardware: Annotated[
        str | None, typer.Option("--hardware", "-H", help="hardware preset (default: the bundle's device)")
    ] = None,
    output: Output = None,
    fmt: Annotated[str | None, typer.Option("--format", "-f", help="parquet or csv (with --output)")] = None,
    calibrate: Annotated[
        Path | None, typer.Option("--save-calibration", help="write the fitted per-kind bandwidth efficiency")
    ] = None,
) -> None:
    """Predicted against measured bytes, time and distinct experts/rows, per layer and batch size."""
    from reports.validation import validate_run

    result = validate_run(run_dir, model=model, output=output, fmt=fmt, console=console, hardware=hardware)
    if output is not None:
        console.print(f"wrote validation tables to {output}")
    if calibrate is not None:
        from reports.calibration import fit_efficiency, save_calibration

        eff = fit_efficiency(result)
        save_calibration(calibrate, eff, {"bundle": str(run_dir)})
        fixed = eff.overhead_s
        console.print(
            f"wrote calibration {calibrate}: "
            + ", ".join(f"{k} {v:.3f} of peak + {fixed.get(k, 0) * 1e6:.1f} us" for k, v in eff.items())
        )


@app.command()
def report(
    inputs: Annotated[list[str], typer.Argument(help="models (presets/files) and run dirs (bundles), mixed")],
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write")] = Path("report.html"),
    batch: Annotated[str | None, typer.Option("--batch", "-b", help="batch sizes to simulate")] = None,
    context: Annotated[int | None, typer.Option("--context", "-c", help="context to simulate")] = None,
    hardware: Hardwares = DEFAULT_HARDWARE,
    title: Annotated[str | None, typer.Option("--title")] = None,
    vary: Vary = None,
    generate: Annotated[
        int,
        typer.Option(
            "--generate", "-g", help="tokens per sequence of the request charts (prompt: --context)"
        ),
    ] = 256,
    prefill_chunk: Annotated[
        int | None, typer.Option("--prefill-chunk", help="prompt tokens a prefill step, request charts")
    ] = None,
    requests_file: Annotated[
        Path | None,
        typer.Option(
            "--requests-file",
            help="also replay this request trace (as serve --requests-file reads) on each model, drawn "
            "against its mean rate at each --trace-speeds",
        ),
    ] = None,
    trace_speeds: Annotated[
        str,
        typer.Option("--trace-speeds", help="with --requests-file: replay speeds, 1,2,4 (its pace x that)"),
    ] = "1,2,4,8",
    allocation: Annotated[
        str,
        typer.Option(
            "--allocation",
            help="KV allocation of the load and trace charts' engine: reserved (P + G at admission) or paged "
            "(vLLM's, with preemption)",
        ),
    ] = "reserved",
    weight_dtype: WeightDtype = "bf16",
    kv_dtype: KvDtype = "bf16",
    tp: TensorParallel = 1,
    ep: ExpertParallel = 1,
    routing: Routing = "uniform",
) -> None:
    """One self-contained interactive HTML page (works offline) from simulations and runs; with
    --vary or several --hardware, of what-if variants side by side; with --requests-file, a recorded
    trace replayed on each model too."""
    import shlex

    from reports.html import report_run

    runs = [i for i in inputs if (Path(i) / "bundle.json").is_file()]
    models = [i for i in inputs if i not in runs]
    path = report_run(
        models,
        runs,
        output,
        batches=parse_sizes(batch, "batch") if batch else None,
        context=context,
        hardware=hardware,
        title=title,
        command=shlex.join(["memtraffic", *sys.argv[1:]]),
        vary=vary or [],
        generate=generate,
        prefill_chunk=prefill_chunk,
        scenario=_scenario_fields(weight_dtype, kv_dtype, tp, ep, routing),
        warn=lambda line: print(f"memtraffic: warning: {line}", file=sys.stderr),
        requests_file=requests_file,
        trace_speeds=parse_rates(trace_speeds, "--trace-speeds") if requests_file is not None else (1.0,),
        allocation=allocation,
    )
    console.print(f"report: {path.resolve()}")


SAMPLE_RUNS = {"moe": "h100-sample-moe", "umv2": "h100-sample-umv2"}
PROFILED_SAMPLES = ("moe", "umv2")  # traces/samples/h100-profiled: bundles `profile` wrote on an H100


@app.command()
def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="folder for bundles, tables, report")] = Path(
        "memtraffic-demo"
    ),
) -> None:
    """The main job on the embedded default: import the bundled real H100 recordings, validate them and
    the H100 profiles memtraffic made itself (OLMoE-like and UltraMemV2-like, batch 1..4096), compare
    OLMoE-1B-7B with UltraMemV2-1B/7B on an H100 at batch 1..4096 and at a 5 ms TPOT (static and
    continuous batching), write one HTML report."""
    import shlex
    from importlib.resources import files

    from reports.html import report_run
    from reports.render import print_table
    from reports.tables import compare_frame, compare_table, latency_table, serving_table
    from reports.validation import validate_run
    from simulator.config import Workload
    from simulator.loading import load_hardware, load_model
    from simulator.request import request_latencies
    from simulator.serving import serving_states
    from simulator.sweep import compare as run_compare
    from traces import import_traces

    samples = Path(str(files("traces") / "samples" / "h100-decode-2026-11-26"))
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output}: exists and is not a folder")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--output {output}: cannot create the folder ({exc.strerror or exc})") from None
    bundles = []
    for recorded, preset in SAMPLE_RUNS.items():
        console.rule(f"[bold]{preset}: real H100 decode recording, imported and validated")
        bundle = import_traces(
            [],
            output / f"bundle-{recorded}",
            nvml=samples / "nvml_timeline.csv",
            runs=samples / "meta.json",
            model=recorded,
            model_config=load_model(preset).model_dump(mode="json"),
            replace=True,  # the demo's own folder: a rerun refreshes it
        )
        _print_bundle_summary(bundle)
        validate_run(
            bundle, model=preset, output=output / f"validation-{recorded}", fmt="csv", console=console
        )
        bundles.append(bundle)
    profiled = Path(str(files("traces") / "samples" / "h100-profiled"))
    for name in PROFILED_SAMPLES:
        console.rule(f"[bold]{name}: profiled on an H100 by memtraffic (kernels, NVML/GPM, ncu, routing)")
        _print_bundle_summary(profiled / name)
        validate_run(profiled / name, output=output / f"validation-h100-{name}", fmt="csv", console=console)
        bundles.append(profiled / name)

    console.rule("[bold]OLMoE-1B-7B against UltraMemV2-1B/7B, simulated")
    pair = [load_model("olmoe-1b-7b"), load_model("ultramemv2-1b-7b")]
    batches = [2**i for i in range(13)]
    cmp = compare_frame(run_compare(pair, load_hardware("h100-sxm"), Workload(batch=batches, context=[2048])))
    title = "olmoe-1b-7b vs ultramemv2-1b-7b on h100-sxm, decode, context 2048"
    print_table(console, compare_table(cmp, title))
    # the decision the comparison serves: what each serves within the same time per token
    h100 = load_hardware("h100-sxm")
    best = request_latencies(pair, [h100, h100], Workload(), 2048, 256, tpot_s=5e-3, prefill_chunk=8192)
    title = "largest batch with TPOT <= 5 ms on h100-sxm (prompt 2048, 256 generated, prefill 8192 a step)"
    print_table(console, latency_table(best, title))
    steady = serving_states(pair, [h100, h100], Workload(), 2048, 256, 8192, tpot_s=5e-3)
    title = "largest concurrency with TPOT <= 5 ms, continuous batching (8192 tokens a step)"
    print_table(console, serving_table(steady, title))

    path = report_run(
        [m.name for m in pair],
        bundles,
        output / "report.html",
        batches=batches,
        context=2048,
        title="memtraffic demo: MoE against UltraMemV2, predicted and measured on an H100",
        command=shlex.join(["memtraffic", *sys.argv[1:]]),
    )
    console.print(f"report: {path.resolve()}")


def _print_bundle_summary(path: Path) -> None:
    from rich.table import Table

    from reports.render import print_table
    from reports.tables import seconds, si
    from traces import read_bundle

    bundle = read_bundle(path)
    runs = bundle.runs
    table = Table(title=f"bundle {path} ({bundle.meta.get('source')})", title_justify="left")
    for c in ("batch", "steps", "time/step", "kernel time/step", "GPM bytes/step", "GPM bandwidth"):
        table.add_column(c, justify="right", overflow="fold")
    if runs is not None:
        for r in runs.itertuples(index=False):
            table.add_row(
                str(r.batch),
                str(r.steps),
                seconds(r.us_per_step / 1e6),
                seconds(getattr(r, "kernel_time_ns_per_step", float("nan")) / 1e9),
                si(getattr(r, "gpm_bytes_per_step", float("nan"))),
                si(getattr(r, "gpm_bw_Bps", float("nan")), "B/s"),
            )
    print_table(console, table)
    for reason in bundle.meta.get("missing", []):
        console.print(f"not measured: {reason}")


def _calibration(path: Path | None, gpus=(), cfgs=()) -> dict[str, float] | None:
    """The calibration (efficiency per kind; its `overhead_s` holds the fixed time per kind), with a
    warning on stderr where it is applied to another GPU than it was fitted on or leaves kinds unfitted."""
    if path is None:
        return None
    from reports.calibration import calibration_warnings, load_calibration
    from simulator.sweep import mixer_kind

    cal = load_calibration(path)
    kinds = {layer.kind for cfg in cfgs for b in cfg.blocks for layer in b.ffn}
    kinds |= {mixer_kind(m) for cfg in cfgs for b in cfg.blocks for m in b.mixers}
    for warning in calibration_warnings(cal, f"--calibration {path}", [hw.name for hw in gpus], kinds):
        print(f"memtraffic: warning: {warning}", file=sys.stderr)
    return cal


# ------------------------------------------------------------------------------------------- running


def _warn_positions(cfgs, positions: int, asked: str) -> None:
    """A warning on stderr for each model `asked` takes past its maximum positions (costed anyway)."""
    from simulator.config import positions_warning

    for cfg in {c.name: c for c in cfgs}.values():
        warning = positions_warning(cfg, positions, asked)
        if warning:
            print(f"memtraffic: warning: {warning}", file=sys.stderr)


def main() -> None:
    """Console entry point: one line and exit code 2 for every user error, never a traceback.

    Set MEMTRAFFIC_DEBUG=1 to see the traceback of an unexpected (internal) error.
    """
    import os

    try:
        code = app(standalone_mode=False)
        # click turns Ctrl-C into Abort and, outside standalone mode, returns its exit code (130 for an
        # interrupt, or a command's own code) instead of exiting: an interrupted run must not end with 0
        if code == 130:
            _fail("interrupted")
        if isinstance(code, int) and code != 0:
            sys.exit(2)
    except MemtrafficError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted")
    except FileNotFoundError as exc:
        _fail(f"no such file: {exc.filename}")
    except OSError as exc:
        _fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
    except Exception as exc:
        if _is_usage_error(exc):
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `memtraffic`: the help was shown
                return
            _fail(f"{exc.format_message()} (see memtraffic --help)")  # type: ignore[attr-defined]
        # a bug, not bad input: still one line, with a way to get the traceback
        if os.environ.get("MEMTRAFFIC_DEBUG"):
            raise
        print(f"memtraffic: internal error: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        sys.exit(1)
    except SystemExit:
        raise


def _is_usage_error(exc: BaseException) -> bool:
    """Command-line usage errors of typer's click (it vendors its own copy, so match by shape)."""
    return hasattr(exc, "format_message") and hasattr(exc, "exit_code")


def _fail(message: str) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    print(f"memtraffic: error: {first}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()

"""Terminal tables and file output of simulation frames (rich for the terminal, atomic files)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table

from simulator.atomic import FRAME_WRITERS, require_folder, write_frame_atomic
from simulator.errors import ConfigError

FORMATS = ("table", "csv", "json", "parquet")


def si(value: float, unit: str = "B") -> str:
    """1.23 GB style, decimal prefixes (HBM bandwidths are quoted in decimal units)."""
    if value is None or not np.isfinite(value):
        return "-"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def seconds(value: float) -> str:
    if not np.isfinite(value):
        return "-"
    # the unit whose three digits do not round up to 1000 (999.9 ns is "1 us", not "1e+03 ns")
    if value >= 0.9995:
        return f"{value:.3g} s"
    if value >= 0.9995e-3:
        return f"{value * 1e3:.3g} ms"
    if value >= 0.9995e-6 or value == 0:
        return f"{value * 1e6:.3g} us"
    return f"{value * 1e9:.3g} ns"


def intensity(value: float) -> str:
    """FLOPs per byte: three digits, thousands written out (1,670 rather than 1.67e+03)."""
    if not np.isfinite(value):
        return "-"
    return f"{value:,.0f}" if value >= 999.5 else f"{value:.3g}"


def simulate_table(df: pd.DataFrame, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    per_layer = (df["layer"] != "total").any()
    cols = ["batch", "context"] + (["layer"] if per_layer else [])
    routed = bool((df["routing_weight_bytes"] > 0).any()) if "routing_weight_bytes" in df else False
    cols += ["FLOPs", "weights", *(["of them routing"] if routed else []), "act", "KV read", "KV write"]
    cols += ["total", "AI", "time", "bound", "HBM held"]
    for c in cols:
        table.add_column(c, justify="left" if c in {"layer", "bound"} else "right", overflow="fold")
    for r in df.itertuples(index=False):
        row = [str(r.batch), str(r.context)] + ([r.layer] if per_layer else [])
        too_big = r.fits is not None and not pd.isna(r.fits) and not bool(r.fits)
        held = si(r.memory_bytes) + (" (too big)" if too_big else "")
        row += [
            si(r.flops, "FLOP"),
            si(r.weight_bytes_ideal),
            *([si(r.routing_weight_bytes)] if routed else []),
            si(r.act_bytes_ideal),
            si(r.kv_read_bytes),
            si(r.kv_write_bytes),
            si(r.bytes_ideal),
            intensity(r.intensity),
            seconds(r.time_s),
            r.bound,
            held,
        ]
        table.add_row(*row)
    table.caption = _l2_caption(df)
    return table


def _l2_caption(df: pd.DataFrame) -> str | None:
    """Which steps read no more than L2 holds, where a steady loop reads less from HBM than shown."""
    totals = df[df["layer"] == "total"]
    small = totals[totals["l2_ratio"] <= 1.0]
    if small.empty:
        return None
    points = ", ".join(f"batch {r.batch} context {r.context}" for r in small.head(4).itertuples(index=False))
    more = f" and {len(small) - 4} more" if len(small) > 4 else ""
    return (
        f"{points}{more}: the step reads at most the L2 size, so a steady loop can be served from L2 "
        "and move fewer HBM bytes than shown (column l2_ratio)"
    )


def compare_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Per (batch, context): weight bytes and time per step of every model, and ratios to the first."""
    totals = df[df["layer"] == "total"]
    models = list(dict.fromkeys(totals["model"]))
    wide = totals.pivot_table(
        index=["batch", "context"],
        columns="model",
        values=["weight_bytes_ideal", "bytes_ideal", "time_s", "memory_bytes"],
        sort=False,
    )
    fits = totals.pivot(index=["batch", "context"], columns="model", values="fits")
    out = pd.DataFrame(index=wide.index)
    first = models[0]
    for m in models:
        out[f"{m} weight_bytes"] = wide[("weight_bytes_ideal", m)]
        out[f"{m} bytes"] = wide[("bytes_ideal", m)]
        out[f"{m} time_s"] = wide[("time_s", m)]
        out[f"{m} memory_bytes"] = wide[("memory_bytes", m)]
        out[f"{m} fits"] = fits[m].reindex(out.index).astype(bool)
    for m in models[1:]:
        out[f"weight ratio {first}/{m}"] = (
            wide[("weight_bytes_ideal", first)] / wide[("weight_bytes_ideal", m)]
        )
        out[f"time ratio {first}/{m}"] = wide[("time_s", first)] / wide[("time_s", m)]
    return out.reset_index()


# beyond this many models a side-by-side table is too wide to read: one row per model instead
WIDE_COMPARE_MODELS = 3


def compare_table(cmp: pd.DataFrame, title: str) -> Table:
    """Weights and time per step of each model, ratios to the first; total bytes stay in csv/json.
    Up to WIDE_COMPARE_MODELS models side by side, more one row per (batch, model)."""
    models = [c.removesuffix(" weight_bytes") for c in cmp.columns if c.endswith(" weight_bytes")]
    if len(models) > WIDE_COMPARE_MODELS:
        return _compare_rows(cmp, models, title)
    table = Table(title=title, title_justify="left")
    cols = ["batch"]
    if cmp["context"].nunique() > 1:
        cols.append("context")
    cols += [c for c in cmp.columns if c.endswith(" weight_bytes")]
    cols += [c for c in cmp.columns if c.startswith("weight ratio")]
    cols += [c for c in cmp.columns if c.endswith(" time_s")]
    cols += [c for c in cmp.columns if c.startswith("time ratio")]
    for c in cols:
        label = (
            c.replace(" weight_bytes", "\nweights/step")
            .replace(" time_s", "\ntime/step")
            .replace("weight ratio ", "weights\n")
            .replace("time ratio ", "time\n")
        )
        table.add_column(label, justify="right", overflow="fold")
    for _, r in cmp.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if c in {"batch", "context"}:
                cells.append(str(v))
            elif "ratio" in c:
                cells.append(f"{v:.2f}x")
            elif c.endswith("time_s"):
                too_big = not r[c.removesuffix("time_s") + "fits"]
                cells.append(seconds(v) + (" *" if too_big else ""))
            else:
                cells.append(si(v))
        table.add_row(*cells)
    table.caption = _too_big_caption(cmp)
    return table


def _compare_rows(cmp: pd.DataFrame, models: list[str], title: str) -> Table:
    """The compare table with one row per (batch, model): its weights and time per step and their
    ratios to the first model (first / this, as in the side-by-side table)."""
    table = Table(title=title, title_justify="left")
    first = models[0]
    many_contexts = cmp["context"].nunique() > 1
    heads = ["batch", *(["context"] if many_contexts else []), "model", "weights/step", "time/step"]
    heads += ["weights\nfirst/this", "time\nfirst/this"]
    for h in heads:
        left = h == "model"
        table.add_column(h, justify="left" if left else "right", no_wrap=left, overflow="fold")
    for _, r in cmp.iterrows():
        for m in models:
            too_big = not r[f"{m} fits"]
            table.add_row(
                str(r["batch"]),
                *([str(r["context"])] if many_contexts else []),
                m,
                si(r[f"{m} weight_bytes"]),
                seconds(r[f"{m} time_s"]) + (" *" if too_big else ""),
                f"{r[f'{first} weight_bytes'] / r[f'{m} weight_bytes']:.2f}x",
                f"{r[f'{first} time_s'] / r[f'{m} time_s']:.2f}x",
            )
        table.add_section()
    table.caption = "; ".join(
        filter(None, [f"first/this: {first}'s value over this row's", _too_big_caption(cmp)])
    )
    return table


def _too_big_caption(cmp: pd.DataFrame) -> str | None:
    """Which models do not fit in the GPU's memory, from which batch size on (their times carry a *)."""
    parts = []
    for col in (c for c in cmp.columns if c.endswith(" fits")):
        over = cmp.loc[~cmp[col].astype(bool), "batch"]
        if not over.empty:
            parts.append(f"{col.removesuffix(' fits')} from batch {int(over.min())}")
    if not parts:
        return None
    return "*: weights, KV cache and activations exceed the GPU's memory (" + "; ".join(parts) + ")"


def _rate(value: float) -> str:
    """Tokens per second: whole numbers with separators, three digits below 100 (a slow request is not 0)."""
    if not np.isfinite(value):
        return "-"
    return f"{value:,.0f}" if value >= 99.5 else f"{value:.3g}"


def _share(value: float) -> str:
    """A share in percent, whole above 10 %, two digits below (0.04 %, not 0.0 %)."""
    if not np.isfinite(value):
        return "-"
    return f"{value:.0%}" if value >= 0.0995 else f"{value * 100:.2g}%"


# what stops a larger batch (simulator.request.largest_batch)
_LIMITS = {"tpot": "TPOT", "ttft": "TTFT", "none": "-"}


def latency_table(df: pd.DataFrame, title: str) -> Table:
    """Per model and batch: TTFT, TPOT, end-to-end time and throughput of one request, with the decode
    bytes per token and the KV cache's share of them. With several models, end-to-end ratios to the
    first (first / this: above 1x, this one is faster); at a latency target (a `limit` column: each model
    at its own largest batch), throughput ratios to the first instead (this / first)."""
    table = Table(title=title, title_justify="left")
    models = list(dict.fromkeys(df["model"]))
    targeted = "limit" in df.columns
    first = df[df["model"] == models[0]]
    cols = ["model"] if len(models) > 1 else []
    cols += ["batch", *(["limited by"] if targeted else []), "TTFT", "TPOT", "last step", "E2E", "tokens/s"]
    cols += ["bytes/token", "KV share", "routing share"]
    if len(models) > 1:
        cols.append("tokens/s\nvs first" if targeted else "E2E ratio")
    cols += ["HBM held"]
    for c in cols:
        left = c == "model"
        table.add_column(c, justify="left" if left else "right", no_wrap=left, overflow="fold")
    # side by side per batch; at a target each model has one row at its own batch: the command's order
    rows = df if targeted else df.sort_values("batch", kind="stable")
    # ratios against the first model's first row that serves anything
    served = first[np.isfinite(first["tokens_per_s"].to_numpy(dtype=float))]
    first_rate = served["tokens_per_s"].iloc[0] if not served.empty else np.nan
    for r in rows.itertuples(index=False):
        row = [r.model] if len(models) > 1 else []
        row += [str(r.batch), *([_LIMITS.get(r.limit, r.limit)] if targeted else [])]
        row += [
            seconds(r.ttft_s),
            seconds(r.tpot_s),
            seconds(r.last_step_s),
            seconds(r.e2e_s),
            _rate(r.tokens_per_s),
            si(r.bytes_per_token),
            _share(r.kv_share),
            _share(r.routing_share),
        ]
        if len(models) > 1:
            if targeted:
                ratio = r.tokens_per_s / first_rate
            else:
                ratio = first.set_index("batch")["e2e_s"].get(r.batch, np.nan) / r.e2e_s
            row.append(f"{ratio:.2f}x" if np.isfinite(ratio) else "-")
        too_big = np.isfinite(r.memory_bytes) and not bool(r.fits)
        row.append(si(r.memory_bytes) + (" (too big)" if too_big else ""))
        table.add_row(*row)
    notes = [
        "TTFT: the prefill, until every sequence has its first token; TPOT: the mean decode step; "
        "last step: at the longest context; bytes/token: one device's decode HBM bytes per token it "
        "generates, "
        "KV share and routing share: the KV cache's and the routers' or retrievals' parts of them"
    ]
    if len(models) > 1 and targeted:
        notes.append(f"tokens/s vs first: this one's throughput over {models[0]}'s, each at its own batch")
    elif len(models) > 1:
        notes.append(f"E2E ratio: {models[0]}'s end-to-end time over this one's (above 1x: faster)")
    if targeted and (df["batch"] == 0).any():
        notes.append(
            "batch 0: not even one sequence meets the target or fits (see limited by; HBM held: what "
            "one sequence needs)"
        )
    table.caption = "; ".join(notes)
    return table


# what stops a larger concurrency (simulator.serving.largest_concurrency)
_SERVING_LIMITS = {"tpot": "TPOT", "budget": "token budget", "memory": "memory", "none": "-"}


def serving_table(df: pd.DataFrame, title: str) -> Table:
    """Per model and concurrency, the steady state of continuous batching: TPOT (the mean step), the
    decode-alone and mixed steps, TTFT, throughput, the share of steps carrying a prefill, bytes per
    token with the KV and routing shares, and HBM held. With several models, throughput ratios to the
    first (this / first) at the same concurrency, or each at its own (a `limit` column: a TPOT target)."""
    table = Table(title=title, title_justify="left")
    models = list(dict.fromkeys(df["model"]))
    targeted = "limit" in df.columns
    cols = ["model"] if len(models) > 1 else []
    cols += ["N", *(["limited by"] if targeted else []), "TPOT", "decode step", "mixed step", "TTFT"]
    cols += ["prefill steps", "tokens/s", "bytes/token", "KV share", "routing share"]
    if len(models) > 1:
        cols.append("tokens/s\nvs first")
    cols.append("HBM held")
    for c in cols:
        left = c == "model"
        table.add_column(c, justify="left" if left else "right", no_wrap=left, overflow="fold")
    rows = df if targeted else df.sort_values("concurrency", kind="stable")
    first = df[df["model"] == models[0]]
    served = first[np.isfinite(first["tokens_per_s"].to_numpy(dtype=float))]
    first_rate = served["tokens_per_s"].iloc[0] if not served.empty else np.nan
    for r in rows.itertuples(index=False):
        row = [r.model] if len(models) > 1 else []
        row += [str(r.concurrency), *([_SERVING_LIMITS.get(r.limit, r.limit)] if targeted else [])]
        row += [seconds(r.tpot_s), seconds(r.decode_step_s), seconds(r.mixed_step_s), seconds(r.ttft_s)]
        behind = "" if r.keeps_up else " (behind)"
        row += [_share(r.prefill_share) + behind, _rate(r.tokens_per_s), si(r.bytes_per_token)]
        row += [_share(r.kv_share), _share(r.routing_share)]
        if len(models) > 1:
            base = (
                first_rate if targeted else first.set_index("concurrency")["tokens_per_s"].get(r.concurrency)
            )
            ratio = r.tokens_per_s / base if base is not None else np.nan
            row.append(f"{ratio:.2f}x" if np.isfinite(ratio) else "-")
        row.append(si(r.memory_bytes) + ("" if bool(r.fits) else " (too big)"))
        table.add_row(*row)
    notes = [
        "TPOT: the mean step (each decoding sequence gets a token a step); mixed step: one that also "
        "carries prompts; TTFT: the steps of a request's own prefill, no queueing; prefill steps: their "
        "share (behind: above 100 %, the prompts arrive faster than the budget left takes them)"
    ]
    if len(models) > 1:
        notes.append(f"tokens/s vs first: this one's throughput over {models[0]}'s")
    table.caption = "; ".join(notes)
    return table


def traffic_table(df: pd.DataFrame, title: str) -> Table:
    """Per model and arrival rate, the engine run request by request (simulator.traffic): throughput,
    TTFT percentiles with the queueing, TPOT and end-to-end percentiles, the sequences decoding and
    the queue, and whether the engine keeps up. With several models, throughput ratios to the first
    (this / first) at the same rate."""
    table = Table(title=title, title_justify="left")
    models = list(dict.fromkeys(df["model"]))
    # a replayed trace: requests of many sizes, so TTFT per prompt token too; its rate is a mean
    replay = "requests_file" in df and bool(df["requests_file"].notna().any())
    cols = ["model"] if len(models) > 1 else []
    cols += ["rate/s", "req/s", "tokens/s", "TTFT p50", "TTFT p90", "TTFT p99"]
    cols += ["TTFT/token p50", "TTFT/token p99"] if replay else []
    cols += ["TPOT p50", "TPOT p99"]
    cols += ["E2E p50", "E2E p99", "decoding", "queue mean", "queue max", "prefill steps"]
    # prefix caching where some run had blocks to find: the share of prompt tokens it found
    caching = "prefix_caching" in df and bool(df["prefix_caching"].str.endswith("blocks").any())
    cols += ["prompt cached"] if caching else []
    paged = "allocation" in df and bool((df["allocation"] == "paged").any())
    cols += ["preempted"] if paged else []
    if len(models) > 1:
        cols.append("tokens/s\nvs first")
    cols += ["keeps up", "HBM held"]
    for c in cols:
        left = c == "model"
        table.add_column(c, justify="left" if left else "right", no_wrap=left, overflow="fold")
    first = df[df["model"] == models[0]].set_index("rate")["tokens_per_s"]
    for r in df.sort_values("rate", kind="stable").itertuples(index=False):
        row = [r.model] if len(models) > 1 else []
        row += [f"{r.rate:.3g}" if replay else f"{r.rate:g}", _rate(r.requests_per_s), _rate(r.tokens_per_s)]
        row += [seconds(r.ttft_p50_s), seconds(r.ttft_p90_s), seconds(r.ttft_p99_s)]
        row += [seconds(r.ttft_per_token_p50_s), seconds(r.ttft_per_token_p99_s)] if replay else []
        row += [seconds(r.tpot_p50_s), seconds(r.tpot_p99_s), seconds(r.e2e_p50_s), seconds(r.e2e_p99_s)]
        queue = f"{r.mean_queue:.2f}" if r.mean_queue < 99.5 else f"{r.mean_queue:,.0f}"
        row += [f"{r.mean_decoding:.3g}", queue, str(int(r.max_queue))]
        row.append(_share(r.prefill_share))
        if caching:
            cached = r.prefix_caching.endswith("blocks")
            row.append(_share(r.cached_prompt_share) if cached else r.prefix_caching)
        if paged:
            row.append(f"{int(r.preemptions):,}" if r.allocation == "paged" else "-")
        if len(models) > 1:
            ratio = r.tokens_per_s / first.get(r.rate, np.nan)
            row.append(f"{ratio:.2f}x" if np.isfinite(ratio) else "-")
        if r.saturated:
            row.append("no (saturated)")
        else:
            row.append("yes" if np.isfinite(r.queue_growth) else "-")  # no window to tell
        row.append(si(r.memory_bytes))
        table.add_row(*row)
    notes = [
        "req/s, tokens/s: completed within the measured window (after the first 10 % of requests); "
        "TTFT: arrival to first token, the wait in the queue included; TPOT: per request, (last token - "
        "first) / (G - 1); decoding: sequences decoding, mean per step; queue: requests waiting to be "
        "admitted; prefill steps: share of steps carrying prompt tokens; keeps up: the rate is within the "
        "engine's capacity (its best steady state, up to the running requests memory allows) and the queue "
        "does not grow (over the second half of the window it gains under 5 % of the requests arriving); HBM "
        "held: at the busiest step, with every running request's KV cache reserved at P + G"
    ]
    if replay:
        notes.append(
            "a replayed trace: rate/s its mean arrival rate; TTFT/token: TTFT over the request's prompt "
            "tokens; percentiles count each request once; capacity at the trace's mean P and G"
        )
    if paged:
        notes.append(
            "paged KV (vLLM's allocation): a request holds the KV of the tokens computed so far; preempted: "
            "requests freed for the next step's tokens and recomputed later, over the whole run; HBM held: "
            "the KV held at the busiest step"
        )
    if caching:
        labels = ", ".join(dict.fromkeys(df["prefix_caching"]))
        notes.append(
            f"prompt cached: share of the prompt tokens found in the prefix cache ({labels}; capacity "
            "without it); HBM held: a block shared by running requests counted once"
        )
    if len(models) > 1:
        notes.append(f"tokens/s vs first: this one's throughput over {models[0]}'s at the same rate")
    table.caption = "; ".join(notes)
    return table


def write_frame(df: pd.DataFrame, path: Path, fmt: str) -> Path:
    """Write csv/json/parquet to `path` atomically (temp file in the same folder, then rename)."""
    if fmt not in FRAME_WRITERS:
        raise ConfigError(f"--format {fmt}: a file needs csv, json or parquet")
    path = Path(path)
    require_folder(path, f"--output {path}")
    return write_frame_atomic(df, path, fmt)


def frame_text(df: pd.DataFrame, fmt: str) -> str:
    """csv or json text for stdout."""
    buf = io.StringIO()
    FRAME_WRITERS["csv" if fmt == "csv" else "json"](df, buf)
    return buf.getvalue()


def count_table(df: pd.DataFrame, title: str) -> Table:
    """`memtraffic count`: per layer (batch, layer, ops, kernels, FLOPs, bytes read/written, peak
    activation bytes alive, estimated kernel time) or, with --per-op, one row per aten op (with the
    activation bytes alive after it and its estimated kernel time)."""
    table = Table(title=title, title_justify="left")
    per_op = "op" in df.columns
    keys = ["batch", "layer", "module", "op"] if per_op else ["batch", "layer", "n_ops", "n_kernels"]
    keys = [k for k in keys if k in df.columns]
    live = "live_bytes" if per_op else "peak_live_bytes"
    time_col = "kernel_s" if per_op else "kernel_time_s"
    timed = time_col in df.columns
    headers = [*keys, "FLOPs", "read", "written", "act. alive" if per_op else "act. peak"]
    for c in [*headers, *(["est. kernel time"] if timed else [])]:
        table.add_column(c, justify="left" if c in {"layer", "module", "op"} else "right", overflow="fold")
    for r in df.itertuples(index=False):
        cells = [str(getattr(r, k)) for k in keys]
        counts = [si(r.flops, "FLOP"), si(r.bytes_read), si(r.bytes_written), si(getattr(r, live))]
        extra = [seconds(getattr(r, time_col))] if timed else []
        table.add_row(*cells, *counts, *extra)
    return table

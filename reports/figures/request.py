"""One request end to end (`simulator.request`): latency against batch size, and the serving trade-off of
throughput against time per output token, one line per model."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from reports.figures.marks import points
from reports.figures.style import Chart, batch_axes, layout, log_axes
from reports.tables import seconds, si

# the two latencies of a request, as line dashes
_LATENCIES = (("tpot_s", "time per output token", "solid"), ("ttft_s", "time to first token", "dash"))


def _hover(r: pd.Series) -> str:
    kv = "" if pd.isna(r["kv_share"]) else f" (KV {r['kv_share']:.0%}, routing {r['routing_share']:.2%})"
    return (
        f"<b>{r['model']}</b><br>batch {r['batch']}, prompt {r['prompt']}, generate {r['generate']}<br>"
        f"TTFT {seconds(r['ttft_s'])} · TPOT {seconds(r['tpot_s'])} · end to end {seconds(r['e2e_s'])}<br>"
        f"{r['tokens_per_s']:,.0f} tokens/s · {si(r['bytes_per_token'])} per token{kv}<br>"
        f"HBM held {si(r['memory_bytes'])}{'' if r['fits'] else ' (too big)'}"
    )


def _symbols(d: pd.DataFrame) -> list[str]:
    """A dot per batch size whose request fits in the GPU's memory, a cross where it does not."""
    return ["circle" if fits else "x" for fits in d["fits"]]


def _serving_hover(r: pd.Series) -> str:
    return (
        f"<b>{r['model']}</b> · continuous batching<br>{r['concurrency']} sequences decoding, prompt "
        f"{r['prompt']}, generate {r['generate']}, {r['token_budget']} tokens a step<br>"
        f"TPOT {seconds(r['tpot_s'])} (decode step {seconds(r['decode_step_s'])}, with a prompt "
        f"{seconds(r['mixed_step_s'])}) · TTFT {seconds(r['ttft_s'])}<br>"
        f"{r['tokens_per_s']:,.0f} tokens/s · {si(r['bytes_per_token'])} per token · prompts on "
        f"{r['prefill_share']:.0%} of the steps<br>"
        f"HBM held {si(r['memory_bytes'])}{'' if r['fits'] else ' (too big)'}"
    )


def _budgets(steady: pd.DataFrame) -> str:
    """ "8192 tokens" or "8192 tokens on h100-sxm, 2048 on l40s" where the GPUs' budgets differ."""
    by_gpu = steady.drop_duplicates("hardware").set_index("hardware")["token_budget"].astype(int)
    if by_gpu.nunique() == 1:
        return f"{by_gpu.iloc[0]} tokens"
    return ", ".join(f"{b} tokens on {hw}" for hw, b in by_gpu.items())


def request_charts(
    req: pd.DataFrame | None, colors: dict[str, str], serving: pd.DataFrame | None = None
) -> list[Chart]:
    """Latency vs batch size, and tokens/s vs time per output token (each point a batch size; with
    `serving`, a `simulator.serving` frame, also each model's continuous-batching steady state)."""
    if req is None or req.empty:
        return []
    # by batch, models in the order given (groupby keeps first appearance)
    req = req.sort_values("batch", kind="stable").assign(hover=lambda d: d.apply(_hover, axis=1))
    prompt, generate = int(req["prompt"].iloc[0]), int(req["generate"].iloc[0])
    scenario = f"prompt {prompt}, {generate} tokens generated per sequence"
    chunk = int(req["prefill_chunk"].iloc[0]) if "prefill_chunk" in req else 0
    scenario += f", prefill {chunk} tokens a step" if chunk else ""

    latency = go.Figure()
    for model, d in req.groupby("model", sort=False):
        for col, label, dash in _LATENCIES:
            if d[col].notna().any():
                latency.add_trace(
                    points(
                        d["batch"],
                        d[col],
                        f"{model} · {label}",
                        str(model),
                        {"size": 7, "symbol": _symbols(d)},
                        d["hover"],
                        mode="lines+markers",
                        line={"color": colors.get(model), "dash": dash},
                    )
                )
    batch_axes(latency, f"Request latency vs batch size ({scenario})", "seconds", "s", req["batch"])

    tradeoff = go.Figure()
    served = req[req["tpot_s"].notna()]
    for model, d in served.groupby("model", sort=False):
        tradeoff.add_trace(
            points(
                d["tpot_s"],
                d["tokens_per_s"],
                str(model),
                str(model),
                {"size": 8, "color": colors.get(model), "symbol": _symbols(d)},
                d["hover"],
                mode="lines+markers+text",
                text=[f"{b}" for b in d["batch"]],
                textposition="top left",
                line={"color": colors.get(model)},
            )
        )
    steady = serving[serving["tpot_s"].notna()] if serving is not None else pd.DataFrame()
    if not steady.empty:
        steady = steady.sort_values("concurrency", kind="stable")
        steady = steady.assign(hover=lambda d: d.apply(_serving_hover, axis=1))
    for model, d in steady.groupby("model", sort=False) if not steady.empty else ():
        tradeoff.add_trace(
            points(
                d["tpot_s"],
                d["tokens_per_s"],
                f"{model} · continuous",
                str(model),
                {"size": 7, "color": colors.get(model), "symbol": _symbols(d)},
                d["hover"],
                mode="lines+markers",
                line={"color": colors.get(model), "dash": "dot"},
            )
        )
    layout(
        tradeoff,
        f"Throughput vs time per output token ({scenario})",
        "time per output token (s)",
        "generated tokens per second (all sequences)",
    )
    log_axes(tradeoff, "s", "")

    charts = [
        Chart(
            id="chart-request-latency",
            title="Request latency vs batch size",
            figure=latency,
            caption=(
                "Solid: time per output token (the mean decode step, each costed at its own context); "
                if generate > 1
                else "One token per sequence: no decode step, so no time per output token and no throughput "
                "chart; "
            )
            + "dashed: time to first token (the prefill). Roofline times, no queueing or host time. "
            "Crosses: the request's weights, KV cache and activations exceed the GPU's memory.",
        )
    ]
    if not served.empty:
        charts.append(
            Chart(
                id="chart-request-tradeoff",
                title="Throughput vs time per output token",
                figure=tradeoff,
                caption="Solid: one static batch, each point a batch size (its label). "
                + (
                    "Dotted: continuous batching in steady state, each point a number of sequences "
                    "decoding while the prompts of the requests replacing them fill the rest of a "
                    f"step's token budget ({_budgets(steady)}). "
                    if not steady.empty
                    else ""
                )
                + "Up and to the left is better: more tokens per second at a shorter time per token.",
            )
        )
    return charts

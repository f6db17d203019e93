"""Latency under load (`simulator.traffic`): each model's engine run request by request at a range of
arrival rates, time to first token (queueing included) and time per output token against the rate;
and the same for a recorded request trace replayed at several speeds (`report --requests-file`)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from reports.figures.marks import points
from reports.figures.style import Chart, layout, log_axes
from reports.tables import seconds

# the latencies drawn per model, as line dashes
_LATENCIES = (
    ("tpot_p50_s", "TPOT p50", "solid"),
    ("ttft_p50_s", "TTFT p50", "dash"),
    ("ttft_p99_s", "TTFT p99", "dot"),
)


def _hover(r: pd.Series) -> str:
    state = "saturated: the queue grows" if r["saturated"] else "keeps up"
    replay = ""
    if isinstance(r.get("requests_file"), str):
        replay = f"{r['trace_speed']:g}x the recorded pace, "
        if str(r.get("prefix_caching", "")).endswith("blocks"):
            replay += f"{r['cached_prompt_share']:.0%} of prompt tokens cached, "
    return (
        f"<b>{r['model']}</b> · {r['rate']:.3g} requests/s arriving ({replay}{r['arrivals']}), {state}<br>"
        f"TTFT p50 {seconds(r['ttft_p50_s'])}, p99 {seconds(r['ttft_p99_s'])} · TPOT p50 "
        f"{seconds(r['tpot_p50_s'])}, p99 {seconds(r['tpot_p99_s'])}<br>"
        f"{r['requests_per_s']:.3g} requests/s completed, {r['tokens_per_s']:,.0f} tokens/s · "
        f"{r['mean_decoding']:.1f} decoding, queue {r['mean_queue']:.1f} (most {int(r['max_queue'])})"
    )


def _allocation(traffic: pd.DataFrame) -> str:
    """How the runs' engine held KV, for a caption."""
    paged = "allocation" in traffic and bool((traffic["allocation"] == "paged").any())
    return "paged KV with preemption by recompute" if paged else "each request's KV reserved, no preemption"


def _latency_figure(traffic: pd.DataFrame, colors: dict[str, str], title: str) -> go.Figure:
    """TTFT p50/p99 and TPOT p50 against the arrival rate, one line per model and latency; crosses
    where the engine is saturated."""
    traffic = traffic.sort_values("rate", kind="stable").assign(hover=lambda d: d.apply(_hover, axis=1))
    fig = go.Figure()
    for model, d in traffic.groupby("model", sort=False):
        symbols = ["x" if s else "circle" for s in d["saturated"]]
        for col, label, dash in _LATENCIES:
            fig.add_trace(
                points(
                    d["rate"],
                    d[col],
                    f"{model} · {label}",
                    str(model),
                    {"size": 7, "symbol": symbols},
                    d["hover"],
                    mode="lines+markers",
                    line={"color": colors.get(model), "dash": dash},
                )
            )
    layout(fig, title, "requests arriving per second", "seconds")
    log_axes(fig, "", "s")
    return fig


def load_charts(traffic: pd.DataFrame | None, colors: dict[str, str]) -> list[Chart]:
    """Latency against the arrival rate, one line per model and latency; crosses where the engine is
    saturated (its queue grows, so the latencies there depend on how long the run is)."""
    if traffic is None or traffic.empty:
        return []
    first = traffic.iloc[0]
    scenario = (
        f"prompt {int(first['prompt'])}, {int(first['generate'])} tokens generated, "
        f"{int(first['requests'])} {first['arrivals']} requests a rate"
    )
    return [
        Chart(
            id="chart-load-latency",
            title="Latency under load",
            figure=_latency_figure(traffic, colors, f"Latency under load ({scenario})"),
            caption="The serving engine run request by request (continuous batching, chunked prefill in "
            f"the GPU's default token budget, {_allocation(traffic)}) at arrival rates spanning the "
            "steady states above and beyond. Solid: median time per output token; dashed and dotted: "
            "median and 99th percentile time to first token, the wait in the queue included. Crosses: "
            "saturated, the queue grows with the run, so the latencies there grow with its length.",
        )
    ]


def trace_charts(replay: pd.DataFrame | None, colors: dict[str, str]) -> list[Chart]:
    """A recorded trace replayed at several speeds (`simulator.traffic.trace_states` rows): latency
    against its mean arrival rate, drawn as `load_charts` draws the Poisson streams."""
    if replay is None or replay.empty:
        return []
    first = replay.iloc[0]
    name = str(first["requests_file"]).replace("\\", "/").rsplit("/", 1)[-1]
    speeds = ", ".join(f"{s:g}x" for s in sorted(replay["trace_speed"].unique()))
    scenario = (
        f"{int(first['requests'])} requests of {name}, {first['arrivals']}, prompt {first['prompt']:.0f} and "
        f"{first['generate']:.0f} tokens generated on average, replayed at {speeds}"
    )
    caching = ", ".join(dict.fromkeys(replay["prefix_caching"].astype(str)))
    return [
        Chart(
            id="chart-trace-latency",
            title="Latency on a recorded trace",
            figure=_latency_figure(replay, colors, f"Latency on a recorded trace ({scenario})"),
            caption="The same engine on a recorded request trace, each request with its own arrival, "
            f"prompt and output length, {_allocation(replay)}, replayed at each speed (its arrivals "
            "compressed that many times; "
            f"the x axis its mean rate). Prefix caching: {caching}. Solid: median time per output token; "
            "dashed and dotted: median and 99th percentile time to first token, the wait in the queue "
            "included. Crosses: saturated. A bursty trace queues requests below its mean rate's capacity.",
        )
    ]

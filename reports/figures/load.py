"""Latency under load (`simulator.traffic`): each model's engine run request by request at a range of
arrival rates, time to first token (queueing included) and time per output token against the rate."""

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
    return (
        f"<b>{r['model']}</b> · {r['rate']:g} requests/s arriving ({r['arrivals']}), {state}<br>"
        f"TTFT p50 {seconds(r['ttft_p50_s'])}, p99 {seconds(r['ttft_p99_s'])} · TPOT p50 "
        f"{seconds(r['tpot_p50_s'])}, p99 {seconds(r['tpot_p99_s'])}<br>"
        f"{r['requests_per_s']:.3g} requests/s completed, {r['tokens_per_s']:,.0f} tokens/s · "
        f"{r['mean_decoding']:.1f} decoding, queue {r['mean_queue']:.1f} (most {int(r['max_queue'])})"
    )


def load_charts(traffic: pd.DataFrame | None, colors: dict[str, str]) -> list[Chart]:
    """Latency against the arrival rate, one line per model and latency; crosses where the engine is
    saturated (its queue grows, so the latencies there depend on how long the run is)."""
    if traffic is None or traffic.empty:
        return []
    traffic = traffic.sort_values("rate", kind="stable").assign(hover=lambda d: d.apply(_hover, axis=1))
    first = traffic.iloc[0]
    scenario = (
        f"prompt {int(first['prompt'])}, {int(first['generate'])} tokens generated, "
        f"{int(first['requests'])} {first['arrivals']} requests a rate"
    )
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
    layout(fig, f"Latency under load ({scenario})", "requests arriving per second", "seconds")
    log_axes(fig, "", "s")
    return [
        Chart(
            id="chart-load-latency",
            title="Latency under load",
            figure=fig,
            caption="The serving engine run request by request (continuous batching, chunked prefill in "
            "the GPU's default token budget, no preemption) at arrival rates spanning the steady states "
            "above and beyond. Solid: median time per output token; dashed and dotted: median and 99th "
            "percentile time to first token, the wait in the queue included. Crosses: saturated, the "
            "queue grows with the run, so the latencies there grow with its length.",
        )
    ]

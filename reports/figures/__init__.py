"""Plotly figures of simulation tables, trace bundles and validations (computing stays in validation.py).

Every builder is a pure function of DataFrames returning `Chart`s (a figure with a stable div id) or an
empty list when its data is absent; html.py lays them out. Bytes, bandwidth and time axes use SI prefixes
(d3 "~s" format, decimal units as HBM bandwidths are quoted).

One module per chart family: `steps` (bytes and time per step vs batch size), `request` (one request's
latency and throughput), `load` (latency against the arrival rate), `roofline`, `layers` (bytes per
layer), `timeline` (HBM bandwidth over a recording), `accuracy` (predicted vs measured), `routing`
(distinct experts / memory rows); `style` holds colours, symbols, layout and log axes, `marks` the trace
builders they share.
"""

from reports.figures.accuracy import pred_vs_meas_charts
from reports.figures.layers import layer_bytes_charts
from reports.figures.load import load_charts, trace_charts
from reports.figures.request import request_charts
from reports.figures.roofline import roofline_chart
from reports.figures.routing import distinct_chart, routing_cost_chart
from reports.figures.steps import step_charts
from reports.figures.style import Chart, group_of, log_ticks, model_colors, si_label
from reports.figures.timeline import timeline_charts

__all__ = [
    "Chart",
    "distinct_chart",
    "group_of",
    "layer_bytes_charts",
    "load_charts",
    "trace_charts",
    "log_ticks",
    "model_colors",
    "pred_vs_meas_charts",
    "request_charts",
    "roofline_chart",
    "routing_cost_chart",
    "si_label",
    "step_charts",
    "timeline_charts",
]

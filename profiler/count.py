"""The eager level of predicted bytes: op-by-op FLOPs and bytes of one step of the reference model.

The model is built on meta tensors (shapes only, no memory, no compute), so a 7B-size or larger model is
counted in seconds on any machine. Routing is unknown on meta: each MoE token draws k distinct experts
uniformly (seeded by layer position), memory layers gather T*H*m rows as requested (duplicates included).
RMSNorm is counted as the single fused kernel CUDA runs, not the composite ops meta tensors decompose it
into (`fuse_rms_norms`).
"""

from __future__ import annotations

import math

import pandas as pd
import torch

from profiler.modules import ReferenceModel
from profiler.opcount import count_ops, op_totals
from profiler.target import check_weights_fit
from simulator.config import HardwareConfig, ModelConfig
from simulator.errors import MemtrafficError
from simulator.roofline import kernel_seconds

SUMMARY_COLUMNS: tuple[str, ...] = (
    "layer",
    "n_ops",
    "flops",
    "bytes_read",
    "bytes_written",
    "bytes_total",
    "peak_live_bytes",
    "n_kernels",
)


def _layer_of(module_path: str, prefixes: list[tuple[str, str]]) -> str:
    for prefix, layer in prefixes:
        if module_path == prefix or module_path.startswith(prefix + "."):
            return layer
    return "other"  # ops of the model's own forward (deferred skip-layer adds, slicing)


def count_model(
    model_cfg: ModelConfig,
    batch: int,
    context: int,
    phase: str = "decode",
    dtype: str = "bf16",
    device: str = "meta",
    kv_mode: str = "fixed",
) -> pd.DataFrame:
    """One forward step of `model_cfg` at (`batch`, `context`), counted op by op.

    Returns profiler.opcount's per-op rows (seq, module, op, flops, bytes_read, bytes_written, out_shape,
    dtype) plus `layer`: the range name (block3.moe, embed, head, ...) of the module that ran the op.
    Decode runs one token per sequence over a KV cache of `context` entries (a recurrent mixer: over its
    fixed-size state, read and written back); prefill runs `context` prompt tokens per sequence. The
    returned frame's attrs carry the parameters and the routing note.
    """
    check_count_args(batch, context, phase, device)
    check_weights_fit(model_cfg, device, dtype)
    model = ReferenceModel(model_cfg, phase=phase, kv_mode=kv_mode, dtype=dtype, device=device)
    model.setup_cache(batch, context, fill="none")
    x = model.make_input(batch, context)
    ops = count_ops(model, x)
    # record_function enter/exit dispatch as profiler.* ops: no data, no FLOPs
    ops = ops[~ops["op"].str.startswith("profiler.")].reset_index(drop=True)
    ops = fuse_rms_norms(ops, model)
    prefixes = sorted(model.module_layer_map().items(), key=lambda kv: -len(kv[0]))
    ops["layer"] = [_layer_of(m, prefixes) for m in ops["module"]]
    ops.attrs.update(
        model=model_cfg.name,
        batch=batch,
        context=context,
        phase=phase,
        dtype=dtype,
        device=device,
        layers=model.layer_names(),
        routing="uniform draw on meta: k experts per token, T*H*m rows" if device == "meta" else "real",
    )
    return ops


def launches_kernel(ops: pd.DataFrame) -> pd.Series:
    """Ops that run a kernel: those that move data or compute. Views and metadata ops (reshape,
    transpose, slicing, detach) move nothing and launch nothing."""
    return (ops["bytes_read"] + ops["bytes_written"] > 0) | (ops["flops"] > 0)


def with_kernel_time(ops: pd.DataFrame, hardware: HardwareConfig) -> pd.DataFrame:
    """The per-op rows plus `kernel_s`: each kernel's fixed cost plus its roofline time on `hardware`
    (simulator.roofline.kernel_seconds); 0 for ops that launch nothing."""
    t = kernel_seconds(ops["flops"], ops["bytes_read"] + ops["bytes_written"], hardware, ops.attrs["dtype"])
    out = ops.assign(kernel_s=pd.Series(t, index=ops.index).where(launches_kernel(ops), 0.0))
    out.attrs = dict(ops.attrs)
    return out


# routing on meta is drawn for every token on the CPU: a bound that keeps that draw to a few GB
MAX_COUNT_TOKENS = 2**26
COUNT_DEVICES = ("meta", "cpu")


def check_count_args(batch: int, context: int, phase: str, device: str) -> None:
    """Refuse, in one line, what `count_model` cannot count: sizes below 1, a step of more tokens
    than MAX_COUNT_TOKENS, or a device other than meta (shapes only) and cpu (real routing)."""
    if batch < 1 or context < 1:
        raise MemtrafficError(
            f"count needs batch >= 1 and context >= 1, got batch {batch}, context {context}"
        )
    if phase not in ("decode", "prefill"):
        raise MemtrafficError(f"phase must be decode or prefill, got {phase!r}")
    tokens = batch * (context if phase == "prefill" else 1)
    if tokens > MAX_COUNT_TOKENS:
        raise MemtrafficError(
            f"count: {tokens:,} tokens in one step is more than the {MAX_COUNT_TOKENS:,} it counts "
            "(routing is drawn per token on the CPU)"
        )
    if str(device) not in COUNT_DEVICES:
        raise MemtrafficError(f"count runs on meta (shapes only) or cpu (real routing), not {device!r}")


FUSED_RMS_NORM = "aten._fused_rms_norm"


def fuse_rms_norms(ops: pd.DataFrame, model: torch.nn.Module) -> pd.DataFrame:
    """Each nn.RMSNorm call as the one kernel CUDA runs for it (aten._fused_rms_norm: x and the weight
    read once, y and one fp32 rstd per row written), not the eight composite ops (fp32 copies, pow,
    mean, rsqrt, muls) that meta and CPU tensors decompose it into; the decomposition's FLOPs are kept,
    and the activation bytes alive are those after its last op."""
    weights = {
        path: sum(p.numel() * p.element_size() for p in m.parameters(recurse=False))
        for path, m in model.named_modules()
        if isinstance(m, torch.nn.RMSNorm)
    }
    if ops.empty or not weights:
        return ops
    runs = (ops["module"] != ops["module"].shift()).cumsum()
    rows: list[pd.DataFrame] = []
    for _, run in ops.groupby(runs, sort=False):
        path = run["module"].iloc[0]
        if path not in weights:
            rows.append(run)
            continue
        last = run.iloc[-1]  # the op that writes y
        y_bytes = int(last["bytes_written"])
        n_rows = math.prod(int(v) for v in last["out_shape"][:-1])
        fused = run.iloc[[0]].copy()
        fused["op"] = FUSED_RMS_NORM
        fused["flops"] = int(run["flops"].sum())
        fused["bytes_read"] = y_bytes + weights[path]  # x has y's shape and dtype
        fused["bytes_written"] = y_bytes + n_rows * 4  # y and one fp32 rstd per row
        fused["out_shape"] = [last["out_shape"]]
        fused["dtype"] = last["dtype"]
        fused["live_bytes"] = run["live_bytes"].iloc[-1]  # y alive, the fp32 temporaries gone
        rows.append(fused)
    out = pd.concat(rows, ignore_index=True)
    out.attrs = dict(ops.attrs)
    return out


def summarize_layers(ops: pd.DataFrame) -> pd.DataFrame:
    """Per layer, in execution order: n_ops, flops, bytes_read, bytes_written, bytes_total,
    peak_live_bytes (activation bytes the step's ops allocated and still held at the layer's peak: its
    intermediates plus what earlier layers left alive, such as the residual stream), n_kernels (ops that
    move data or compute) and, when the rows carry `kernel_s` (with_kernel_time), kernel_time_s."""
    out = op_totals(ops, "layer")
    kernels = ops.assign(_k=launches_kernel(ops)).groupby("layer", sort=False)["_k"].sum()
    out["n_kernels"] = out["layer"].map(kernels).astype("int64")
    cols = list(SUMMARY_COLUMNS)
    if "kernel_s" in ops:
        out["kernel_time_s"] = out["layer"].map(ops.groupby("layer", sort=False)["kernel_s"].sum())
        cols.append("kernel_time_s")
    out.attrs = dict(ops.attrs)
    return out[cols]


def count_sweep(
    model_cfg: ModelConfig,
    batches: list[int],
    context: int,
    phase: str = "decode",
    dtype: str = "bf16",
    device: str = "meta",
    kv_mode: str = "fixed",
    hardware: HardwareConfig | None = None,
    per_op: bool = False,
) -> pd.DataFrame:
    """`summarize_layers(count_model(...))` at each batch size, stacked with a `batch` column first
    (columns: batch + SUMMARY_COLUMNS, + kernel_time_s on `hardware`): what `memtraffic count` prints
    and a profiled bundle's `opcount`. `per_op`: the op rows themselves (`count --per-op`)."""
    frames = []
    with torch.no_grad():
        for b in batches:
            ops = count_model(model_cfg, b, context, phase, dtype, device, kv_mode)
            ops = with_kernel_time(ops, hardware) if hardware is not None else ops
            out = ops.reset_index(drop=True) if per_op else summarize_layers(ops)
            out.insert(0, "batch", b)
            frames.append(out)
    return pd.concat(frames, ignore_index=True)


def with_step_totals(layers: pd.DataFrame) -> pd.DataFrame:
    """A `count_sweep` frame with a `total` row after each batch size's layers: counts, bytes and kernel
    time summed over the step's layers; the activation peak is the largest layer peak (each already holds
    what earlier layers left alive)."""
    summed = [c for c in ("n_ops", "flops", "bytes_read", "bytes_written", "bytes_total", "n_kernels",
                          "kernel_time_s") if c in layers]  # fmt: skip
    frames = []
    for b, d in layers.groupby("batch", sort=False):
        total = {"batch": b, "layer": "total", **d[summed].sum().to_dict()}
        total["peak_live_bytes"] = d["peak_live_bytes"].max()
        frames += [d, pd.DataFrame([total]).astype(d.dtypes.to_dict())[list(d.columns)]]
    return pd.concat(frames, ignore_index=True)

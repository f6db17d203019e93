"""The eager level of predicted bytes: op-by-op FLOPs and bytes of one step of the reference model.

The model is built on meta tensors (shapes only, no memory, no compute), so a 7B-size or larger model is
counted in seconds on any machine. Routing is unknown on meta: each MoE token draws k distinct experts
uniformly (seeded by layer position), memory layers gather T*H*m rows as requested (duplicates included).
"""

from __future__ import annotations

import pandas as pd
import torch

from profiler.modules import ReferenceModel
from profiler.opcount import count_ops, op_totals
from simulator.config import ModelConfig

SUMMARY_COLUMNS: tuple[str, ...] = (
    "layer",
    "n_ops",
    "flops",
    "bytes_read",
    "bytes_written",
    "bytes_total",
    "peak_live_bytes",
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
    Decode runs one token per sequence over a KV cache of `context` entries; prefill runs `context`
    prompt tokens per sequence. The returned frame's attrs carry the parameters and the routing note.
    """
    model = ReferenceModel(model_cfg, phase=phase, kv_mode=kv_mode, dtype=dtype, device=device)
    model.setup_cache(batch, context, fill="none")
    x = model.make_input(batch, context)
    ops = count_ops(model, x)
    # record_function enter/exit dispatch as profiler.* ops: no data, no FLOPs
    ops = ops[~ops["op"].str.startswith("profiler.")].reset_index(drop=True)
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


def summarize_layers(ops: pd.DataFrame) -> pd.DataFrame:
    """Per layer, in execution order: n_ops, flops, bytes_read, bytes_written, bytes_total and
    peak_live_bytes (activation bytes the step's ops allocated and still held at the layer's peak: its
    intermediates plus what earlier layers left alive, such as the residual stream)."""
    out = op_totals(ops, "layer")
    out.attrs = dict(ops.attrs)
    return out[list(SUMMARY_COLUMNS)]


def count_sweep(
    model_cfg: ModelConfig,
    batches: list[int],
    context: int,
    phase: str = "decode",
    dtype: str = "bf16",
    device: str = "meta",
    kv_mode: str = "fixed",
) -> pd.DataFrame:
    """`summarize_layers(count_model(...))` at each batch size, stacked with a `batch` column first
    (columns: batch + SUMMARY_COLUMNS): what `memtraffic count` prints and a profiled bundle's `opcount`."""
    frames = []
    with torch.no_grad():
        for b in batches:
            out = summarize_layers(count_model(model_cfg, b, context, phase, dtype, device, kv_mode))
            out.insert(0, "batch", b)
            frames.append(out)
    return pd.concat(frames, ignore_index=True)

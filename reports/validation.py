"""Join a trace bundle with the simulator's prediction of the same model, workload and GPU.

`validate(bundle)` gives four tables (pandas DataFrames):
- `steps`: per batch size, predicted bytes per step (ideal, naive, eager) beside measured bytes (NVML GPM
  integrated over the steady loop; Nsight Compute sum where present), roofline time beside the measured
  step time and the kernel-time sum, achieved bandwidth and signed % errors (pred - meas) / meas.
- `layers`: per layer and batch size, predicted bytes and roofline time beside the measured kernel time;
  achieved bandwidth = predicted ideal bytes / measured kernel time (TraceLens' "achieved TB/s").
- `routing`: distinct experts / memory rows per step, measured (routing table) beside the formula.
- `summary`: per layer kind and metric, median absolute % error and MAPE.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from simulator.config import (
    MEMORY_KINDS,
    HardwareConfig,
    ModelConfig,
    Quantity,
    Workload,
    describe_validation_error,
)
from simulator.errors import ConfigError, MemtrafficError, TraceError

if TYPE_CHECKING:
    from rich.console import Console

    from traces.bundle import Bundle

# Bundle device name (NVML) -> hardware preset. Exact names only: no substring matching.
DEVICE_PRESETS: dict[str, str] = {
    "NVIDIA H100 80GB HBM3": "h100-sxm",
    "NVIDIA H100 SXM5 80GB": "h100-sxm",
}
# torch dtype names as bundles record them -> simulator DType
DTYPES: dict[str, str] = {
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "float32": "fp32",
    "float": "fp32",
    "float8_e4m3fn": "fp8",
    "float8_e5m2": "fp8",
    "int8": "int8",
    "bf16": "bf16",
    "fp16": "fp16",
    "fp32": "fp32",
    "fp8": "fp8",
}
LEVELS: tuple[str, ...] = ("ideal", "naive", "eager")
TABLES: tuple[str, ...] = ("steps", "layers", "routing", "summary")
# model fields that do not change a single byte: a preset and a bundle may word them differently
_NON_SHAPE_FIELDS = {"name", "description", "sources", "provenance"}


# ------------------------------------------------------------------------------------------ result


@dataclass
class ValidationResult:
    """Predicted beside measured, for one bundle. Errors are signed: (pred - meas) / meas x 100."""

    model: str
    hardware: HardwareConfig  # the preset, with HBM bandwidth taken from the bundle when it has one
    source: str  # the bundle's path (or its meta.source)
    meta: dict[str, Any]  # the bundle's meta, for report headers
    prediction: pd.DataFrame  # simulate(..., per_layer=True) for the bundle's workload
    steps: pd.DataFrame
    layers: pd.DataFrame
    routing: pd.DataFrame
    summary: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    @property
    def peak_Bps(self) -> float:
        return self.hardware.hbm_bandwidth.value

    def tables(self) -> dict[str, pd.DataFrame]:
        return {name: getattr(self, name) for name in TABLES}

    def to_files(self, dest: str | Path, fmt: str | None = None) -> list[Path]:
        """Write the tables, each file atomically (temp file in the same folder, then os.replace).

        A folder (existing, or a path without suffix) gets steps/layers/routing/summary.{fmt}; a file
        path (`x.parquet`, `x.csv`) gets one table stacking all four, told apart by a `table` column.
        `fmt` defaults to the file's suffix, else parquet.
        """
        dest = Path(dest)
        as_dir = dest.is_dir() or (not dest.suffix and not dest.exists())
        fmt = (fmt or (dest.suffix.lstrip(".") if not as_dir else "") or "parquet").lower()
        if fmt not in {"parquet", "csv"}:
            raise ConfigError(f"--format {fmt}: validation tables are written as parquet or csv")
        if as_dir:
            if not dest.parent.exists():
                raise ConfigError(f"--output {dest}: folder {dest.parent} does not exist")
            dest.mkdir(exist_ok=True)
            return [_write_atomic(df, dest / f"{name}.{fmt}", fmt) for name, df in self.tables().items()]
        if not dest.parent.exists():
            raise ConfigError(f"--output {dest}: folder {dest.parent} does not exist")
        stacked = pd.concat(
            [df.assign(table=name) for name, df in self.tables().items() if not df.empty], ignore_index=True
        )
        stacked = stacked[["table", *[c for c in stacked.columns if c != "table"]]]
        return [_write_atomic(stacked, dest, fmt)]

    def render(self, console: Console | None = None) -> None:
        """Print the tables with rich."""
        _render(self, console)


def _write_atomic(df: pd.DataFrame, path: Path, fmt: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if fmt == "csv":
            df.to_csv(tmp, index=False)
        else:
            # object columns mixing str and NaN are fine for pyarrow; mixed numbers/str are not in our tables
            df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"--output {path}: cannot write ({exc.strerror or exc})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# ------------------------------------------------------------------------------------------ inputs


def open_bundle(bundle: Bundle | str | Path) -> Bundle:
    """A Bundle as given, or read from a path (the reader's TraceError passes through unchanged)."""
    if isinstance(bundle, str | Path):
        from traces.bundle import read_bundle

        return read_bundle(Path(bundle))  # its one-line TraceErrors (missing, foreign, old) pass through
    return bundle


def bundle_label(bundle: Bundle) -> str:
    path = getattr(bundle, "path", None)
    return str(path) if path is not None else str(bundle.meta.get("source") or "<bundle>")


def bundle_table(bundle: Bundle, name: str) -> pd.DataFrame | None:
    """One of the bundle's tables, or None when the bundle lacks it (a corrupt table raises TraceError)."""
    df = bundle.table(name)
    if df is None or len(df) == 0:
        return None
    return df


def recorded_model(bundle: Bundle) -> tuple[str | None, ModelConfig | None, dict[str, Any]]:
    """(name, config if it is one of ours, raw config). Imports may record a foreign description."""
    rec = bundle.meta.get("model") or {}
    cfg = rec.get("config") if isinstance(rec.get("config"), dict) else {}
    name = rec.get("name") or cfg.get("name")
    if not cfg:
        return name, None, {}
    try:
        return name, ModelConfig.model_validate({"name": name or "recorded", **cfg}), cfg
    except Exception:  # pydantic ValidationError: a description in another schema (e.g. an import)
        return name, None, cfg


def _shape(model: ModelConfig) -> dict[str, Any]:
    return model.model_dump(exclude=_NON_SHAPE_FIELDS)


# Shape numbers a foreign description may carry, by section: (section, our key) <- accepted spellings.
_SYNONYMS: dict[tuple[str, str], tuple[str, ...]] = {
    ("model", "d_model"): ("d_model", "hidden_size"),
    ("model", "n_layers"): ("blocks", "n_layers", "num_hidden_layers", "num_layers"),
    ("attention", "heads"): ("heads", "n_heads", "num_attention_heads"),
    ("attention", "kv_heads"): ("kv_heads", "n_kv_heads", "num_key_value_heads"),
    ("attention", "head_dim"): ("head_dim",),
    ("moe", "experts"): ("experts", "n_experts", "num_experts"),
    ("moe", "top_k"): ("top_k", "num_experts_per_tok"),
    ("moe", "expert_ffn"): ("expert_ffn", "moe_intermediate_size"),
    ("dense", "d_ff"): ("d_ff", "intermediate_size"),
    ("memory", "rows"): ("rows",),
    ("memory", "knum"): ("knum", "sub_keys", "n_keys"),
    ("memory", "key_dim"): ("key_dim",),
    ("memory", "heads"): ("heads",),
    ("memory", "top_m"): ("top_m", "top_k"),
    ("memory", "row_col_top"): ("row_col_top",),
    ("memory", "value_dim"): ("value_dim",),
    ("memory", "pre_value_dim"): ("pre_value_dim",),
}


def _foreign_fingerprint(cfg: dict[str, Any]) -> dict[tuple[str, str], float]:
    """Shape numbers of a foreign model description (top level, attention, ffn / moe, memory)."""
    sections: dict[str, dict[str, Any]] = {"model": cfg}
    for key, value in cfg.items():
        if not isinstance(value, dict):
            continue
        kind = str(value.get("kind", key))
        if key == "attention":
            sections["attention"] = value
        elif "moe" in kind or key == "moe":
            sections["moe"] = value
        elif key in {"memory", "mem"} or any(k in kind for k in ("ultramem", "pkm", "peer", "memory")):
            sections["memory"] = value
        elif key in {"ffn", "mlp"}:
            sections["dense"] = value
    out: dict[tuple[str, str], float] = {}
    for (section, ours), spellings in _SYNONYMS.items():
        data = sections.get(section, {})
        for spelling in spellings:
            value = data.get(spelling)
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[(section, ours)] = float(value)
                break
    return out


def _fingerprint(model: ModelConfig) -> dict[tuple[str, str], float]:
    """The same shape numbers read from one of our configs (first block with each kind of layer)."""
    fp: dict[tuple[str, str], float] = {
        ("model", "d_model"): model.d_model,
        ("model", "n_layers"): model.n_layers,
    }
    blocks = model.expanded_blocks()
    a = blocks[0].attention
    fp |= {("attention", "heads"): a.n_heads, ("attention", "kv_heads"): a.kv_heads}
    if a.head_dim is not None:
        fp[("attention", "head_dim")] = a.head_dim
    for layer in (lay for b in blocks for lay in b.ffn):
        if layer.kind == "moe" and ("moe", "experts") not in fp:
            fp |= {
                ("moe", "experts"): layer.n_experts,
                ("moe", "top_k"): layer.top_k,
                ("moe", "expert_ffn"): layer.expert_ffn,
            }
        elif layer.kind == "dense" and ("dense", "d_ff") not in fp:
            fp[("dense", "d_ff")] = layer.d_ff
        elif layer.kind in MEMORY_KINDS and ("memory", "rows") not in fp:
            for key in (
                "knum",
                "n_keys",
                "key_dim",
                "heads",
                "top_m",
                "top_k",
                "row_col_top",
                "value_dim",
                "pre_value_dim",
            ):
                value = getattr(layer, key, None)
                if value is not None:
                    fp.setdefault(
                        ("memory", "top_m" if key == "top_k" else "knum" if key == "n_keys" else key), value
                    )
            fp[("memory", "rows")] = getattr(layer, "rows", None) or getattr(layer, "knum", 0) ** 2
    return {k: float(v) for k, v in fp.items()}


def _matches_foreign(model: ModelConfig, foreign: dict[tuple[str, str], float]) -> bool:
    """Every shape number the foreign description gives agrees with the model, and the same kinds of
    sparse layers are present (a description naming experts needs a model with experts)."""
    ours = _fingerprint(model)
    if len(foreign) < 3:  # too little to tell
        return False
    sections = {s for s, _ in foreign} - {"model"}
    if sections != {s for s, _ in ours} - {"model"}:
        return False
    return all(ours.get(k) == v for k, v in foreign.items())


def _presets_matching(foreign: dict[tuple[str, str], float], name: str | None) -> list[ModelConfig]:
    """Model presets whose shapes match a foreign description; exact name matches first."""
    from simulator.loading import load_model, preset_names

    found: list[ModelConfig] = []
    for preset in preset_names("models"):
        try:
            cfg = load_model(preset)
        except MemtrafficError:
            continue
        if _matches_foreign(cfg, foreign):
            found.append(cfg)
    return sorted(found, key=lambda m: (m.name != name, not m.name.endswith(f"-{name}"), m.name))


def resolve_model(bundle: Bundle, model: ModelConfig | None) -> tuple[ModelConfig, str | None]:
    """The model to predict and a note on how it was chosen.

    A model named by the user must have the bundle's shapes (compared in full when the bundle records one
    of our configs, else on the shape numbers its description gives); without one, the bundle's config, or
    the model preset whose shapes match the bundle's description.
    """
    name, recorded, raw = recorded_model(bundle)
    where = bundle_label(bundle)
    if model is not None:
        if recorded is not None:
            ok = _shape(model) == _shape(recorded)
        elif raw and len(_foreign_fingerprint(raw)) >= 3:
            ok = _matches_foreign(model, _foreign_fingerprint(raw))
        else:
            ok = name is None or name == model.name
        if not ok:
            same = " (same name, other shapes)" if name == model.name else ""
            raise TraceError(f"bundle {where} records model {name}, not {model.name}{same}")
        return model, None
    if recorded is not None:
        return recorded, None
    if raw:
        found = _presets_matching(_foreign_fingerprint(raw), name)
        if found:
            return found[
                0
            ], f"model: preset {found[0].name}, whose shapes match the model {name} the bundle records"
    raise TraceError(f"bundle {where} records model {name} in a form no preset matches; name the model")


def resolve_hardware(bundle: Bundle, hardware: HardwareConfig | None) -> tuple[HardwareConfig, list[str]]:
    """The preset of the bundle's device, with the bundle's measured HBM peak in place of the preset's."""
    device = bundle.meta.get("device") or {}
    dev_name = device.get("name")
    notes: list[str] = []
    if hardware is None:
        preset = DEVICE_PRESETS.get(str(dev_name))
        if preset is None:
            known = ", ".join(sorted(DEVICE_PRESETS))
            raise ConfigError(
                f"bundle {bundle_label(bundle)}: device {dev_name!r} maps to no hardware preset "
                f"(known: {known}); pass the hardware"
            )
        from simulator.loading import load_hardware

        hardware = load_hardware(preset)
        notes.append(f"hardware: preset {preset} for device {dev_name}")
    peak = device.get("peak_hbm_Bps")
    if peak and float(peak) > 0:
        old = hardware.hbm_bandwidth.value
        hardware = hardware.model_copy(
            update={
                "hbm_bandwidth": Quantity(
                    value=float(peak), tag="measured", source=f"bundle device.peak_hbm_Bps ({dev_name})"
                )
            }
        )
        notes.append(
            f"HBM bandwidth {float(peak) / 1e12:.4g} TB/s from the bundle (device.peak_hbm_Bps) "
            f"overrides the preset's {old / 1e12:.4g} TB/s"
        )
    return hardware, notes


def bundle_batches(bundle: Bundle) -> list[int]:
    runs = bundle_table(bundle, "runs")
    if runs is not None and "batch" in runs:
        values: Iterable[Any] = runs["batch"]
    else:
        values = [r.get("batch") for r in bundle.meta.get("runs") or [] if isinstance(r, dict)]
    batches = sorted({int(b) for b in values if b is not None})
    if not batches:
        raise TraceError(f"bundle {bundle_label(bundle)} records no runs (no batch sizes)")
    return batches


def bundle_workload(bundle: Bundle, batches: Sequence[int]) -> Workload:
    wl = bundle.meta.get("workload") or {}
    dtype = DTYPES.get(str(wl.get("dtype", "bf16")).removeprefix("torch."))
    if dtype is None:
        raise TraceError(
            f"bundle {bundle_label(bundle)}: workload.dtype {wl.get('dtype')!r} is not supported"
        )
    context = wl.get("context")
    try:
        return Workload(
            phase=wl.get("phase", "decode"),
            batch=list(batches),
            context=[int(context)] if context is not None else [2048],
            weight_dtype=dtype,
            activation_dtype=dtype,
            kv_dtype=dtype,
        )
    except Exception as exc:  # pydantic ValidationError
        raise TraceError(describe_validation_error(exc, f"bundle {bundle_label(bundle)}: workload")) from None


# ------------------------------------------------------------------------------------------ measured


def _per_step_mean(df: pd.DataFrame, keys: list[str], value: str) -> pd.Series:
    """Sum `value` per (keys, step), then the mean over steps (profiled steps may differ slightly).

    Rows outside every step range (step -1: warm-up, setup) are left out.
    """
    if "step" not in df:
        return df.groupby(keys)[value].sum()
    df = df[df["step"] >= 0]
    return df.groupby([*keys, "step"])[value].sum().groupby(level=keys).mean()


def layer_names(df: pd.DataFrame) -> pd.Series:
    """Simulator-style layer names ("block3.moe") from a bundle table's layer/block columns."""
    layer = df["layer"].astype(str)
    if "block" in df and not layer.str.startswith("block").any():
        block = pd.to_numeric(df["block"], errors="coerce")
        return pd.Series(
            np.where(block >= 0, "block" + block.fillna(-1).astype(int).astype(str) + "." + layer, layer),
            index=df.index,
        )
    return layer


def measured_steps(bundle: Bundle) -> pd.DataFrame:
    """Per batch: steady-loop step time, GPM bytes, kernel-time sum per profiled step, ncu bytes."""
    runs = bundle_table(bundle, "runs")
    out = pd.DataFrame({"batch": bundle_batches(bundle)}).set_index("batch")
    if runs is not None:
        r = runs.drop_duplicates("batch").set_index("batch")
        for src, dst in (
            ("steps", "steps"),
            ("us_per_step", "us_per_step"),
            ("gpm_bytes_per_step", "meas_bytes_gpm"),
            ("gpm_bw_Bps", "gpm_bw_Bps"),
            ("mean_dram_util_pct", "mean_dram_util_pct"),
            ("energy_j_per_step", "energy_j_per_step"),
        ):
            if src in r:
                out[dst] = pd.to_numeric(r[src], errors="coerce")
    kernels = bundle_table(bundle, "kernels")
    layers = bundle_table(bundle, "layers")
    if kernels is not None and "dur_ns" in kernels:
        out["meas_kernel_s"] = _per_step_mean(kernels, ["batch"], "dur_ns") * 1e-9
    elif layers is not None:
        out["meas_kernel_s"] = _per_step_mean(layers, ["batch"], "kernel_time_ns") * 1e-9
    ncu = bundle_table(bundle, "ncu")
    if ncu is not None:
        ncu = ncu.assign(_b=ncu["dram_bytes_read"].fillna(0) + ncu["dram_bytes_write"].fillna(0))
        out["meas_bytes_ncu"] = _per_step_mean(ncu, ["batch"], "_b")
    return out.reset_index()


def measured_layers(bundle: Bundle) -> pd.DataFrame:
    """Per (batch, layer): mean kernel time per profiled step, kernels per step, ncu bytes per step."""
    cols = ["batch", "layer"]
    layers = bundle_table(bundle, "layers")
    parts: list[pd.DataFrame] = []
    if layers is not None:
        df = layers.assign(layer=layer_names(layers))
        t = _per_step_mean(df, cols, "kernel_time_ns") * 1e-9
        parts.append(t.rename("meas_kernel_s").to_frame())
        if "n_kernels" in df:
            parts.append(_per_step_mean(df, cols, "n_kernels").rename("n_kernels").to_frame())
    ncu = bundle_table(bundle, "ncu")
    if ncu is not None and "layer" in ncu:
        df = ncu.assign(layer=layer_names(ncu))
        parts.append(_per_step_mean(df, cols, "dram_bytes_read").rename("ncu_bytes_read").to_frame())
        parts.append(_per_step_mean(df, cols, "dram_bytes_write").rename("ncu_bytes_write").to_frame())
    if not parts:
        return pd.DataFrame(columns=cols)
    out = pd.concat(parts, axis=1).reset_index()
    if "ncu_bytes_read" in out:
        out["meas_bytes_ncu"] = out["ncu_bytes_read"].fillna(0) + out["ncu_bytes_write"].fillna(0)
    return out


def measured_routing(bundle: Bundle) -> pd.DataFrame | None:
    """Per (batch, layer): distinct items and selections per step, over the recorded steps."""
    routing = bundle_table(bundle, "routing")
    if routing is None:
        return None
    df = routing.assign(layer=layer_names(routing))
    df = df[df["count"] > 0]
    step = "step" if "step" in df else None
    keys = ["batch", "layer", *([step] if step else [])]
    per = df.groupby(keys).agg(distinct=("item", "nunique"), requested=("count", "sum")).reset_index()
    return (
        per.groupby(["batch", "layer"])
        .agg(
            meas_distinct=("distinct", "mean"),
            meas_distinct_min=("distinct", "min"),
            meas_distinct_max=("distinct", "max"),
            meas_requested=("requested", "mean"),
            n_steps=("distinct", "size"),
        )
        .reset_index()
    )


# ------------------------------------------------------------------------------------------ eager


def eager_bytes(
    model: ModelConfig, batches: Sequence[int], workload: Workload
) -> tuple[pd.DataFrame | None, str | None]:
    """Op-level bytes per (batch, layer) from profiler.count on meta tensors (or None) and a note.

    torch is imported only here, and only when installed: reports must work without it.
    """
    if importlib.util.find_spec("torch") is None:
        return None, "eager level skipped: torch is not installed (pip install memtraffic[profile])"
    try:
        from profiler.count import count_model
    except Exception as exc:  # the profiler is optional for reports
        return None, f"eager level skipped: profiler.count unavailable ({str(exc).splitlines()[0]})"
    frames = []
    context = workload.context[0]
    routing = ""
    try:
        for b in batches:
            counts = _as_frame(count_model(model, b, context, workload.phase, workload.activation_dtype))
            routing = str(counts.attrs.get("routing", ""))
            frames.append(_eager_per_layer(counts).assign(batch=int(b)))
    except MemtrafficError as exc:
        return None, f"eager level skipped: {str(exc).splitlines()[0]}"
    except Exception as exc:  # an op the counter does not know must not sink the whole validation
        return (
            None,
            f"eager level skipped: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
        )
    how = (
        f"eager level: profiler.count on meta tensors ({routing})"
        if routing
        else "eager level: profiler.count"
    )
    return pd.concat(frames, ignore_index=True), how


def _as_frame(counts: Any) -> pd.DataFrame:
    if isinstance(counts, pd.DataFrame):
        return counts
    for attr in ("layers", "per_layer", "frame", "table"):
        value = getattr(counts, attr, None)
        if isinstance(value, pd.DataFrame):
            return value
    return pd.DataFrame(counts)


def _eager_per_layer(counts: pd.DataFrame) -> pd.DataFrame:
    """Reduce count_model's rows to bytes per layer named like the simulator's layers."""
    df = counts.copy()
    if "bytes" not in df:
        read = next((c for c in ("bytes_read", "read_bytes") if c in df), None)
        write = next((c for c in ("bytes_written", "write_bytes") if c in df), None)
        if read is None or write is None:
            raise TraceError(f"profiler.count returned no bytes columns ({', '.join(map(str, df.columns))})")
        df["bytes"] = df[read].fillna(0) + df[write].fillna(0)
    name = next((c for c in ("layer", "module") if c in df), None)
    if name is None:
        raise TraceError("profiler.count returned no layer column")
    df = df.rename(columns={name: "layer"})
    df["layer"] = layer_names(df)
    df = df[df["layer"] != "total"]
    return df.groupby("layer", sort=False)["bytes"].sum().rename("pred_bytes_eager").reset_index()


# ------------------------------------------------------------------------------------------ joining


def pct_error(pred: pd.Series | np.ndarray, meas: pd.Series | np.ndarray) -> np.ndarray:
    """Signed % error (pred - meas) / meas x 100; NaN where meas is missing or not positive."""
    p = np.asarray(pred, dtype=np.float64)
    m = np.asarray(meas, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(m > 0, (p - m) / m * 100.0, np.nan)


def validate(
    bundle: Bundle | str | Path,
    model: ModelConfig | None = None,
    hardware: HardwareConfig | None = None,
    levels: Sequence[str] = LEVELS,
) -> ValidationResult:
    """Predicted beside measured for every batch size and layer the bundle recorded.

    `model` defaults to the bundle's recorded config; a model named by the user must have the bundle's
    shapes (TraceError otherwise). `hardware` defaults to the preset of the bundle's device; the bundle's
    measured HBM peak replaces the preset's bandwidth either way.
    """
    from simulator.sweep import simulate  # the simulator pulls numba-backed routing: import when needed

    unknown = set(levels) - set(LEVELS)
    if unknown:
        raise ConfigError(f"levels: unknown {', '.join(sorted(unknown))} (choose from {', '.join(LEVELS)})")
    bundle = open_bundle(bundle)
    cfg, how = resolve_model(bundle, model)
    hw, notes = resolve_hardware(bundle, hardware)
    if how:
        notes.insert(0, how)
    batches = bundle_batches(bundle)
    workload = bundle_workload(bundle, batches)
    pred = simulate(cfg, hw, workload, per_layer=True)
    notes.append(
        f"workload: {workload.phase}, context {workload.context[0]}, {workload.weight_dtype}, "
        f"batch {', '.join(map(str, batches))}"
    )

    eager = None
    if "eager" in levels:
        eager, how = eager_bytes(cfg, batches, workload)
        if how:
            notes.append(how)
    if bundle.meta.get("partial"):
        notes.append("the bundle is partial: some runs or tables are missing")
    for name in bundle.meta.get("missing") or []:
        notes.append(f"not measured: {name}")

    peak = hw.hbm_bandwidth.value
    layers = _join_layers(pred, measured_layers(bundle), eager, peak, levels)
    steps = _join_steps(pred, measured_steps(bundle), eager, peak, levels)
    routing = _join_routing(pred, measured_routing(bundle))
    for df in (steps, layers, routing):
        df.insert(0, "model", cfg.name)
    if steps["meas_bytes_ncu"].notna().any():
        ncu_meta = (bundle.meta.get("extra") or {}).get("ncu") or {}
        notes.append(
            f"ncu: DRAM bytes per kernel, cache mode {ncu_meta.get('cache_mode', 'unknown')} (cold-L2 reads; "
            "writes that fit in L2 may not reach DRAM inside the kernel)"
        )
    summary = _summary(steps, layers, routing, levels)
    unmatched = sorted(set(layers.loc[layers["kind"].isna(), "layer"]))
    if unmatched:
        notes.append(f"measured layers with no predicted counterpart: {', '.join(unmatched)}")
    return ValidationResult(
        model=cfg.name,
        hardware=hw,
        source=bundle_label(bundle),
        meta=dict(bundle.meta),
        prediction=pred,
        steps=steps,
        layers=layers,
        routing=routing,
        summary=summary,
        notes=notes,
    )


def validate_run(
    run_dir: str | Path,
    model: str | Path | ModelConfig | None = None,
    output: str | Path | None = None,
    fmt: str | None = None,
    console: Console | None = None,
) -> ValidationResult:
    """`memtraffic validate RUN_DIR [--model M] [--output FILE] [--format parquet|csv]` in one call:
    validate, print the tables, write them when asked. `model` is a preset name, a file or a config."""
    cfg = model
    if isinstance(model, str | Path):
        from simulator.loading import load_model

        cfg = load_model(model)
    result = validate(run_dir, model=cfg)  # type: ignore[arg-type]
    result.render(console)
    if output is not None:
        written = result.to_files(output, fmt)
        if console is not None:
            console.print("wrote " + ", ".join(str(w) for w in written))
    return result


_PRED_LAYER_COLS = [
    "batch",
    "layer",
    "block",
    "kind",
    "flops",
    "weight_bytes_ideal",
    "act_bytes_ideal",
    "kv_read_bytes",
    "kv_write_bytes",
    "bytes_ideal",
    "bytes_naive",
    "intensity",
    "time_s",
    "time_naive_s",
    "bound",
]


def _join_layers(
    pred: pd.DataFrame, meas: pd.DataFrame, eager: pd.DataFrame | None, peak: float, levels: Sequence[str]
) -> pd.DataFrame:
    p = pred.loc[pred["layer"] != "total", _PRED_LAYER_COLS].rename(
        columns={
            "bytes_ideal": "pred_bytes_ideal",
            "bytes_naive": "pred_bytes_naive",
            "time_s": "pred_time_s",
            "time_naive_s": "pred_time_naive_s",
        }
    )
    df = p.merge(meas, on=["batch", "layer"], how="outer", sort=False)
    if eager is not None and "eager" in levels:
        df = df.merge(eager, on=["batch", "layer"], how="left")
    df = _order(df)
    if "meas_kernel_s" not in df:
        df["meas_kernel_s"] = np.nan
    df["err_time_pct"] = pct_error(df["pred_time_s"], df["meas_kernel_s"])
    # TraceLens' achieved bandwidth: analytic (predicted ideal) bytes over the measured kernel time
    with np.errstate(divide="ignore", invalid="ignore"):
        df["achieved_bw_Bps"] = df["pred_bytes_ideal"] / df["meas_kernel_s"]
    df["bw_share_of_peak"] = df["achieved_bw_Bps"] / peak
    if "meas_bytes_ncu" in df:
        for level in levels:
            if f"pred_bytes_{level}" in df:
                df[f"err_{level}_ncu_pct"] = pct_error(df[f"pred_bytes_{level}"], df["meas_bytes_ncu"])
    return df.reset_index(drop=True)


def _order(df: pd.DataFrame) -> pd.DataFrame:
    """Batch, then model order: embed, blocks in order, head; unmatched names last."""
    block = (
        pd.to_numeric(df["block"], errors="coerce") if "block" in df else pd.Series(np.nan, index=df.index)
    )
    from_name = df["layer"].str.extract(r"^block(\d+)\.", expand=False).astype(float)
    key = block.where(block >= 0, from_name)
    key = key.where(df["layer"] != "embed", -1.0).where(df["layer"] != "head", 1e9).fillna(2e9)
    return df.assign(_k=key.to_numpy()).sort_values(["batch", "_k"], kind="stable").drop(columns="_k")


def _join_steps(
    pred: pd.DataFrame, meas: pd.DataFrame, eager: pd.DataFrame | None, peak: float, levels: Sequence[str]
) -> pd.DataFrame:
    tot = pred.loc[pred["layer"] == "total"].set_index("batch")
    df = meas.set_index("batch")
    for level in ("ideal", "naive"):
        if level in levels:
            df[f"pred_bytes_{level}"] = tot[f"bytes_{level}"]
    if "eager" in levels:
        df["pred_bytes_eager"] = (
            eager.groupby("batch")["pred_bytes_eager"].sum() if eager is not None else np.nan
        )
    df["pred_time_s"] = tot["time_s"]
    df["pred_time_naive_s"] = tot["time_naive_s"]
    df["flops"] = tot["flops"]
    df["bound"] = tot["bound"]
    for c in ("meas_bytes_gpm", "meas_bytes_ncu", "meas_kernel_s", "us_per_step"):
        if c not in df:
            df[c] = np.nan
    df["meas_step_s"] = df["us_per_step"] * 1e-6
    for level in levels:
        df[f"err_{level}_pct"] = pct_error(df[f"pred_bytes_{level}"], df["meas_bytes_gpm"])
        df[f"err_{level}_ncu_pct"] = pct_error(df[f"pred_bytes_{level}"], df["meas_bytes_ncu"])
    df["err_time_step_pct"] = pct_error(df["pred_time_s"], df["meas_step_s"])
    df["err_time_kernel_pct"] = pct_error(df["pred_time_s"], df["meas_kernel_s"])
    with np.errstate(divide="ignore", invalid="ignore"):
        df["achieved_bw_Bps"] = df["meas_bytes_gpm"] / df["meas_step_s"]
    df["bw_share_of_peak"] = df["achieved_bw_Bps"] / peak
    return df.reset_index()


def _join_routing(pred: pd.DataFrame, meas: pd.DataFrame | None) -> pd.DataFrame:
    p = pred.loc[
        (pred["layer"] != "total") & pred["distinct_items"].notna(),
        ["batch", "layer", "kind", "distinct_items", "items_requested"],
    ]
    p = p.rename(columns={"distinct_items": "pred_distinct", "items_requested": "pred_requested"})
    if meas is None:
        cols = ["meas_distinct", "meas_distinct_min", "meas_distinct_max", "meas_requested", "n_steps"]
        df = p.assign(**{c: np.nan for c in cols})
    else:
        df = p.merge(meas, on=["batch", "layer"], how="outer")
    df["err_distinct_pct"] = pct_error(df["pred_distinct"], df["meas_distinct"])
    return _order(df).reset_index(drop=True)


def _summary(
    steps: pd.DataFrame, layers: pd.DataFrame, routing: pd.DataFrame, levels: Sequence[str]
) -> pd.DataFrame:
    """Median |error| and MAPE per layer kind and metric (only metrics with measured data)."""
    rows: list[dict[str, Any]] = []

    def add(kind: str, metric: str, errors: pd.Series) -> None:
        e = pd.to_numeric(errors, errors="coerce").to_numpy(dtype=np.float64)
        e = e[np.isfinite(e)]
        if e.size:
            rows.append(
                {
                    "kind": kind,
                    "metric": metric,
                    "n": int(e.size),
                    "median_abs_err_pct": float(np.median(np.abs(e))),
                    "mape_pct": float(np.mean(np.abs(e))),
                    "median_err_pct": float(np.median(e)),
                }
            )

    for level in levels:
        add("step", f"bytes_{level} vs GPM", steps[f"err_{level}_pct"])
        add("step", f"bytes_{level} vs ncu", steps[f"err_{level}_ncu_pct"])
    add("step", "time vs step time", steps["err_time_step_pct"])
    add("step", "time vs kernel sum", steps["err_time_kernel_pct"])
    for kind, g in layers.dropna(subset=["kind"]).groupby("kind", sort=False):
        add(str(kind), "time vs kernel time", g["err_time_pct"])
        for level in levels:
            if f"err_{level}_ncu_pct" in g:
                add(str(kind), f"bytes_{level} vs ncu", g[f"err_{level}_ncu_pct"])
    for kind, g in routing.dropna(subset=["kind"]).groupby("kind", sort=False):
        add(str(kind), "distinct items", g["err_distinct_pct"])
    cols = ["kind", "metric", "n", "median_abs_err_pct", "mape_pct", "median_err_pct"]
    return pd.DataFrame(rows, columns=cols)


# ------------------------------------------------------------------------------------------ terminal


def _render(result: ValidationResult, console: Console | None) -> None:
    from rich.console import Console
    from rich.table import Table

    from reports.tables import seconds, si

    con = console or Console()
    con.print(f"[bold]validation of {result.model}[/bold] against {result.source}")
    for note in result.notes:
        con.print(f"  - {note}")

    def pct(v: float) -> str:
        return f"{v:+.1f} %" if np.isfinite(v) else "-"

    def table(title: str, df: pd.DataFrame, cols: list[tuple[str, str, Any]]) -> None:
        cols = [c for c in cols if c[1] in df]
        t = Table(title=title, title_justify="left")
        for head, _, _ in cols:
            t.add_column(head, justify="left" if head in {"layer", "kind", "metric", "bound"} else "right")
        for _, r in df.iterrows():
            t.add_row(*[fmt(r[c]) if _finite_or_text(r[c]) else "-" for _, c, fmt in cols])
        con.print(t)

    levels = [lv for lv in LEVELS if f"err_{lv}_pct" in result.steps]
    table(
        "per step (errors: (pred - meas) / meas; bytes vs NVML GPM)",
        result.steps,
        [
            ("batch", "batch", str),
            *[(f"pred {lv}", f"pred_bytes_{lv}", si) for lv in levels],
            ("GPM", "meas_bytes_gpm", si),
            ("ncu", "meas_bytes_ncu", si),
            *[(f"err {lv}", f"err_{lv}_pct", pct) for lv in levels],
            ("roofline", "pred_time_s", seconds),
            ("step", "meas_step_s", seconds),
            ("kernels", "meas_kernel_s", seconds),
            ("err t/step", "err_time_step_pct", pct),
            ("err t/kern", "err_time_kernel_pct", pct),
            ("achieved", "achieved_bw_Bps", lambda v: si(v, "B/s")),
            ("of peak", "bw_share_of_peak", _share),
        ],
    )
    table(
        "per layer (achieved = predicted ideal bytes / measured kernel time, TraceLens style)",
        result.layers,
        [
            ("batch", "batch", str),
            ("layer", "layer", str),
            ("kind", "kind", str),
            ("ideal", "pred_bytes_ideal", si),
            ("naive", "pred_bytes_naive", si),
            ("eager", "pred_bytes_eager", si),
            ("ncu", "meas_bytes_ncu", si),
            ("err ideal/ncu", "err_ideal_ncu_pct", pct),
            ("roofline", "pred_time_s", seconds),
            ("kernels", "meas_kernel_s", seconds),
            ("err time", "err_time_pct", pct),
            ("achieved", "achieved_bw_Bps", lambda v: si(v, "B/s")),
            ("of peak", "bw_share_of_peak", _share),
        ],
    )
    if result.routing["meas_distinct"].notna().any():
        table(
            "distinct experts / memory rows per step",
            result.routing,
            [
                ("batch", "batch", str),
                ("layer", "layer", str),
                ("kind", "kind", str),
                ("measured", "meas_distinct", lambda v: f"{v:.1f}"),
                ("formula", "pred_distinct", lambda v: f"{v:.1f}"),
                ("err", "err_distinct_pct", pct),
            ],
        )
    table(
        "summary per layer kind",
        result.summary,
        [
            ("kind", "kind", str),
            ("metric", "metric", str),
            ("n", "n", str),
            ("median |err|", "median_abs_err_pct", lambda v: f"{v:.1f} %"),
            ("MAPE", "mape_pct", lambda v: f"{v:.1f} %"),
            ("median err", "median_err_pct", pct),
        ],
    )


def _share(v: float) -> str:
    return f"{v * 100:.0f} %"


def _finite_or_text(v: Any) -> bool:
    if isinstance(v, str):
        return True
    try:
        return bool(np.isfinite(float(v)))
    except (TypeError, ValueError):
        return False

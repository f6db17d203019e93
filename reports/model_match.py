"""Which model and hardware a trace bundle is predicted with, and the workload it ran.

- `resolve_model`: the bundle's recorded config, or a model named by the user, which must have the
  bundle's shapes; an import that recorded a foreign model description (another schema) is matched to the
  model preset with the same shape numbers (`_foreign_fingerprint` / `_fingerprint`).
- `resolve_hardware`: the preset of the bundle's device (exact NVML names, else a name pattern), its HBM
  bandwidth replaced by the bundle's measured peak. A hardware named by the user (`--hardware`) must not
  be another GPU's preset when the recorded device has one (`check_same_device`):
  - the recorded device matches no preset (a CPU run, a GPU without a preset): any hardware;
  - a hardware file of the user's own (its name is no preset's): taken as a description of the recorded
    device (measured clocks, a MIG slice, a power cap), with a note saying so;
  - the preset the device maps to: as without --hardware;
  - a preset of the same family (h100-pcie for h100-sxm) when the device name matched only a pattern, not
    an exact NVML name ("NVIDIA H100 NVL" is a PCIe card the pattern calls h100-sxm): noted;
  - any other preset (b200 for an H100 recording): refused, since its compute, L2 and clocks would be
    mixed with the recording's HBM peak and times.
- `bundle_workload`: phase, context and dtype as the bundle records them, over its batch sizes; all that
  is missing, and the model when none can be found, is named in one message (`workload_gaps`,
  `missing_message`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from reports.measured import bundle_label
from simulator.config import (
    BUNDLE_DTYPES,
    MEMORY_KINDS,
    AttentionConfig,
    HardwareConfig,
    ModelConfig,
    Quantity,
    Workload,
    describe_validation_error,
)
from simulator.errors import ConfigError, MemtrafficError, TraceError
from traces.importer import NEEDED_FLAGS, join_words, missing_for_validate

if TYPE_CHECKING:
    from traces.bundle import Bundle

# Bundle device name (NVML) -> hardware preset. Exact names only: no substring matching.
DEVICE_PRESETS: dict[str, str] = {
    "NVIDIA H100 80GB HBM3": "h100-sxm",
    "NVIDIA H100 SXM5 80GB": "h100-sxm",
}
# Device names as NVML/torch report them, matched by pattern when not listed exactly above
# (first match wins, so the more specific patterns come first).
DEVICE_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"H100.*PCIe", "h100-pcie"),
    (r"H100", "h100-sxm"),
    (r"H200", "h200"),
    (r"GB200", "gb200"),
    (r"B200", "b200"),
    (r"A100.*PCIE.*40GB|A100-PCIE-40GB", "a100-pcie-40gb"),
    (r"A100", "a100-sxm-80gb"),
    (r"L40S", "l40s"),
    (r"RTX 4090", "rtx-4090"),
    (r"MI325X", "mi325x"),
    (r"MI300X", "mi300x"),
)


def device_preset(name: str | None) -> str | None:
    """The hardware preset for a recorded device name, or None."""
    if not name:
        return None
    if name in DEVICE_PRESETS:
        return DEVICE_PRESETS[name]
    import re

    for pattern, preset in DEVICE_PATTERNS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return preset
    return None


# model fields that do not change a single byte: a preset and a bundle may word them differently
_NON_SHAPE_FIELDS = {"name", "description", "sources", "provenance"}


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
    attention = [b.attention for b in blocks if isinstance(b.attention, AttentionConfig)]
    if attention:
        a = attention[0]
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


class UnknownModelError(TraceError):
    """The bundle records no model a prediction can use, and none was named."""


MODEL_HINT = "--model MODEL (a preset, model file or HF config.json), on validate or on import"


def workload_gaps(bundle: Bundle) -> list[str]:
    """Of dtype, phase and context, those the bundle records as unknown (None)."""
    return [k for k in missing_for_validate(bundle.meta) if k != "model"]


def missing_message(bundle: Bundle, lacking: Sequence[str]) -> str:
    """One line naming everything a bundle lacks for validate and the flags that give it."""
    flags = " ".join(NEEDED_FLAGS[k] for k in lacking)
    return f"bundle {bundle_label(bundle)} records no {join_words(list(lacking))}; re-import it with {flags}"


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
            best = found[0]
            return best, f"model: preset {best.name}, whose shapes match the model {name} the bundle records"
    if name is None:
        raise UnknownModelError(f"bundle {where} records no model; name it with {MODEL_HINT}")
    raise UnknownModelError(
        f"bundle {where} records model {name!r} in a form no preset matches; name it with {MODEL_HINT}"
    )


def _family(preset: str) -> str:
    """h100-sxm and h100-pcie -> h100; b200 -> b200 (gb200 is another family)."""
    return preset.split("-")[0]


def check_same_device(dev_name: str | None, hardware: HardwareConfig) -> str | None:
    """Refuse (ConfigError) a --hardware that is another GPU's preset than the recorded device's; a note
    when the hardware is accepted in place of the device's own preset, else None (see the module doc)."""
    recorded = device_preset(dev_name)
    if recorded is None or hardware.name == recorded:
        return None
    from simulator.loading import preset_names

    name = hardware.name.strip().lower().replace("_", "-")
    if name not in preset_names("hardware"):
        return (
            f"hardware: {hardware.name} (not a preset) taken to describe device {dev_name}, "
            f"in place of preset {recorded}"
        )
    if name == recorded:
        return None
    if dev_name not in DEVICE_PRESETS and _family(name) == _family(recorded):
        return f"hardware: preset {name} for device {dev_name} (its name alone suggests {recorded})"
    raise ConfigError(
        f"--hardware {hardware.name}: the run was recorded on {dev_name} (preset {recorded}); validating "
        "it against another GPU's numbers mixes devices (leave --hardware out, or give a file describing "
        "this GPU)"
    )


def resolve_hardware(bundle: Bundle, hardware: HardwareConfig | None) -> tuple[HardwareConfig, list[str]]:
    """The preset of the bundle's device, with the bundle's measured HBM peak in place of the preset's."""
    device = bundle.meta.get("device") or {}
    dev_name = device.get("name")
    notes: list[str] = []
    if hardware is not None:
        note = check_same_device(dev_name, hardware)
        if note:
            notes.append(note)
    else:
        preset = device_preset(dev_name)
        if preset is None:
            raise ConfigError(
                f"bundle {bundle_label(bundle)}: device {dev_name!r} maps to no hardware preset; "
                "name one with --hardware (see memtraffic presets)"
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


def bundle_workload(bundle: Bundle, batches: Sequence[int]) -> Workload:
    wl = bundle.meta.get("workload") or {}
    gaps = workload_gaps(bundle)
    if gaps:
        raise TraceError(missing_message(bundle, gaps))
    dtype = BUNDLE_DTYPES.get(str(wl.get("dtype", "bf16")).removeprefix("torch."))
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

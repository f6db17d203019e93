"""Find, parse, override and validate model and hardware descriptions.

A spec is a preset name (case-insensitive, `_` and `-` interchangeable), a path to one of our YAML/JSON files,
a path to a Hugging Face `config.json` (or a directory holding one), or a Hub repository id (`org/name`,
`hf:org/name@revision`; simulator/hub.py fetches and caches its config.json). Every failure is a
ConfigError whose message is one line naming the file or field and the problem.
"""

from __future__ import annotations

import copy
import difflib
import functools
import itertools
import json
import re
import typing
from collections.abc import Iterable, Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from simulator.config import (
    AttentionConfig,
    FFNLayer,
    HardwareConfig,
    Mixer,
    ModelConfig,
    describe_validation_error,
)
from simulator.errors import ConfigError, PresetNotFoundError
from simulator.hf import from_hf_config, is_hf_config
from simulator.hub import HUB_PREFIX, fetch_config, parse_hub_spec

Kind = Literal["models", "hardware"]
_SUFFIXES = (".yaml", ".yml", ".json")
_KIND_ALIASES: dict[str, Kind] = {
    "model": "models",
    "models": "models",
    "hardware": "hardware",
    "hw": "hardware",
}

_Config = typing.TypeVar("_Config", ModelConfig, HardwareConfig)


# -------------------------------------------------------------------------------------------- parsing


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and reads YAML 1.2 floats such as `3.35e12` as numbers."""


# PyYAML follows YAML 1.1, where `1e9` and `3.35e12` are strings; datasheet numbers are written that way.
_FLOAT_12 = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_StrictLoader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:float"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _parse_text(text: str, label: str, suffix: str) -> Any:
    """Parse JSON or YAML text; errors name `label` and, where the parser knows it, line and column."""
    if suffix == ".json" or (suffix not in (".yaml", ".yml") and text.lstrip().startswith(("{", "["))):
        try:
            return json.loads(text, object_pairs_hook=_no_duplicate_pairs)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{label}: invalid JSON at line {exc.lineno} column {exc.colno}: {_one_line(exc.msg)}"
            ) from exc
        except _DuplicateKey as exc:
            raise ConfigError(f"{label}: invalid JSON: duplicate key {exc.args[0]!r}") from exc
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader derives from SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{label}: invalid YAML{where}: {_one_line(problem)}") from exc


@functools.lru_cache(maxsize=256)
def _parse_cached(text: str, label: str, suffix: str) -> Any:
    return _parse_text(text, label, suffix)


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _read_mapping(source: Path | Traversable, label: str) -> dict[str, Any]:
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{label}: cannot read: {_one_line(exc)}") from exc
    # the pure-Python YAML parser costs ~15 ms per preset; sweeps load the same files repeatedly
    data = copy.deepcopy(_parse_cached(text, label, Path(source.name).suffix.lower()))
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping at the top level, got {type(data).__name__}")
    return data


# -------------------------------------------------------------------------------------------- presets


def _kind(kind: str) -> Kind:
    try:
        return _KIND_ALIASES[kind.lower()]
    except KeyError:
        raise ConfigError(f"unknown preset kind {kind!r}; use 'models' or 'hardware'") from None


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _preset_files(kind: Kind) -> dict[str, Traversable]:
    """Normalised preset name -> file, from the package data under simulator/presets/<kind>."""
    folder = resources.files("simulator") / "presets" / kind
    out: dict[str, Traversable] = {}
    if not folder.is_dir():
        return out
    for entry in folder.iterdir():
        suffix = Path(entry.name).suffix.lower()
        if entry.is_file() and suffix in _SUFFIXES:
            out[_norm(entry.name[: -len(suffix)])] = entry
    return out


def preset_names(kind: str) -> list[str]:
    return sorted(_preset_files(_kind(kind)))


def _find_preset(kind: Kind, name: str) -> Traversable:
    files = _preset_files(kind)
    key = _norm(name)
    if key in files:
        return files[key]
    label = "model" if kind == "models" else "hardware"
    # substring hits first ("405b" -> llama-3.1-405b, "h100" -> h100-*), then the closest spellings
    near = [n for n in sorted(files) if key and key in n][:3]
    for candidate in difflib.get_close_matches(key, list(files), n=3, cutoff=0.0):
        if len(near) < 3 and candidate not in near:
            near.append(candidate)
    hint = f"; nearest: {', '.join(near)}" if near else "; no presets installed"
    raise PresetNotFoundError(f"unknown {label} preset {name!r}{hint}")


def list_presets(kind: str) -> list[dict[str, Any]]:
    """Name, description and source tags of every preset of a kind (files are parsed, not validated)."""
    k = _kind(kind)
    rows: list[dict[str, Any]] = []
    for key, entry in sorted(_preset_files(k).items()):
        data = _read_mapping(entry, f"preset {entry.name}")
        tags = sorted({str(s.get("tag")) for s in data.get("sources") or [] if isinstance(s, dict)})
        if k == "hardware":  # hardware numbers carry their tags inline
            tags = sorted(set(tags) | set(_quantity_tags(data)))
        rows.append(
            {
                "name": str(data.get("name", key)),
                "description": str(data.get("description", "")),
                "source_tags": tags,
            }
        )
    return rows


def _quantity_tags(data: Any) -> Iterable[str]:
    if isinstance(data, dict):
        if "tag" in data and "value" in data:
            yield str(data["tag"])
        for value in data.values():
            yield from _quantity_tags(value)


# ------------------------------------------------------------------------------------------ resolving


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or "\\" in spec or spec.lower().endswith(_SUFFIXES)


def _resolve(spec: str | Path, kind: Kind) -> tuple[dict[str, Any], str]:
    """(raw mapping, default name) for a preset name or a file path."""
    if isinstance(spec, str) and not spec.strip():
        raise ConfigError(f"empty {'model' if kind == 'models' else 'hardware'} spec")
    if kind == "models" and isinstance(spec, str):
        hub = _hub_model(spec)
        if hub is not None:
            return hub
    if isinstance(spec, str) and not _looks_like_path(spec):
        files = _preset_files(kind)
        if _norm(spec) in files or not Path(spec).exists():
            entry = _find_preset(kind, spec)
            return _read_mapping(entry, f"preset {entry.name}"), _norm(spec)
    path = Path(spec)
    if path.is_dir():  # a Hugging Face model directory
        if not (path / "config.json").is_file():
            what = "model" if kind == "models" else "hardware"
            raise ConfigError(f"{path}: a folder without a config.json, so no {what} description")
        path = path / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    stem = path.parent.name if path.name == "config.json" else path.stem
    return _read_mapping(path, str(path)), stem


def _hub_model(spec: str) -> tuple[dict[str, Any], str] | None:
    """A Hub repository's config.json for `hf:org/name[@rev]`, or for a bare `org/name` that is no local
    path; None for anything else."""
    explicit = spec.startswith(HUB_PREFIX)
    if not explicit and ("/" not in spec or Path(spec).exists()):
        return None
    parsed = parse_hub_spec(spec)
    if parsed is None:
        return None
    repo, revision = parsed
    try:
        raw, _ = fetch_config(repo, revision)
    except ConfigError as exc:
        if explicit:
            raise
        reason = str(exc).removeprefix(f"{repo}: ")
        raise ConfigError(f"{spec}: no such local file or directory, nor a Hub model: {reason}") from None
    return raw, repo.split("/")[-1]


def load_model(spec: str | Path, overrides: Sequence[str] = ()) -> ModelConfig:
    """A validated ModelConfig from a preset name, one of our YAML/JSON files, or an HF config.json."""
    raw, default_name = _resolve(spec, "models")
    if is_hf_config(raw):
        model = from_hf_config(raw, default_name)
        if not overrides:
            return model
        raw = model.model_dump(mode="python")
    return _validated(ModelConfig, "model", raw, default_name, overrides)


def load_hardware(spec: str | Path, overrides: Sequence[str] = ()) -> HardwareConfig:
    """A validated HardwareConfig from a preset name or a YAML/JSON file."""
    raw, default_name = _resolve(spec, "hardware")
    return _validated(HardwareConfig, "hardware", raw, default_name, overrides)


def _validated(
    cls: type[_Config], kind: str, raw: dict[str, Any], default_name: str, overrides: Sequence[str]
) -> _Config:
    """`raw` (named `default_name` unless it names itself) with the --set overrides applied, validated
    as `cls`; any error is one line naming the `kind` and the name."""
    raw.setdefault("name", default_name)
    name = str(raw["name"])
    _apply_overrides(raw, overrides, cls, f"{kind} {name}")
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_one_line(describe_validation_error(exc, f"{kind} {name}"))) from exc


# ------------------------------------------------------------------------------------------ overrides


def _apply_overrides(raw: dict[str, Any], overrides: Sequence[str], root: type[BaseModel], what: str) -> None:
    """Apply `key=value` strings to the raw mapping before validation.

    `a.b.0.c=v` sets one dotted path (list items by index). A bare key sets a top-level field if the root
    schema has it; for models it otherwise sets that field on every FFN-position layer whose kind has it,
    then on every attention config, then on every block.
    """
    if isinstance(overrides, str):  # a lone string would otherwise be applied character by character
        overrides = [overrides]
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{what}: override {item!r} is not of the form key=value")
        value = _parse_scalar(text, what, item)
        parts = key.split(".")
        if len(parts) > 1 or parts[0] in root.model_fields or root is not ModelConfig:
            _set_path(raw, parts, value, root, what, item)
        elif not _set_everywhere(raw, parts[0], value, f"{what}: override {item!r}"):
            raise ConfigError(f"{what}: override {item!r} names no field of the model, its blocks or layers")


def _parse_scalar(text: str, what: str, item: str) -> Any:
    text = text.strip()
    if not text:
        return None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what}: override {item!r}: value is not a YAML scalar") from exc


def _set_path(
    raw: dict[str, Any], parts: list[str], value: Any, root: type[BaseModel], what: str, item: str
) -> None:
    node: Any = raw
    schema: Any = root
    walked: list[str] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        here = ".".join(walked) or "<root>"
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise ConfigError(
                    f"{what}: override {item!r}: {here} has no item {part!r} ({len(node)} items)"
                )
            idx = int(part)
            schema = _item_schema(schema, node[idx])
            if last:
                node[idx] = value
                return
            node = node[idx]
        elif isinstance(node, dict):
            fields = _fields_of(schema)
            if fields is not None and part not in fields:
                known = ", ".join(sorted(fields))
                raise ConfigError(f"{what}: override {item!r}: no field {part!r} at {here} (fields: {known})")
            child_schema = fields[part] if fields is not None else _dict_value_schema(schema)
            if last:
                node[part] = value
                return
            if part not in node or node[part] is None:
                if _fields_of(_unwrap_optional(child_schema)) is None:
                    raise ConfigError(f"{what}: override {item!r}: {'.'.join([*walked, part])} is not set")
                node[part] = {}  # e.g. interconnect_bandwidth.value on a preset that has none
            node = node[part]
            schema = child_schema
        else:
            raise ConfigError(f"{what}: override {item!r}: {here} is a value, not a mapping or list")
        walked.append(part)


def _set_everywhere(raw: dict[str, Any], field: str, value: Any, what: str) -> bool:
    """Set `field` on every FFN layer, else token mixer, else block that has it; False when none has it.
    A name two kinds of mixer share (n_heads of attention and Mamba-2) is refused as ambiguous."""
    blocks = raw.get("blocks")
    if not isinstance(blocks, list):
        return False
    block_dicts = [b for b in blocks if isinstance(b, dict)]
    targets: list[dict[str, Any]] = []
    for block in block_dicts:
        for layer in block.get("ffn") or []:
            if isinstance(layer, dict) and field in (_fields_of(_layer_class(layer)) or {}):
                targets.append(layer)
    if not targets:  # the token mixers whose class has the field (attention, Mamba, Gated DeltaNet)
        slots = [
            (i, slot, b[slot])
            for i, b in enumerate(block_dicts)
            for slot in ("attention", "parallel_mixer")
            if isinstance(b.get(slot), dict)
        ]
        found = [(i, slot, m) for i, slot, m in slots if field in _mixer_class(m).model_fields]
        targets = [m for _, _, m in found]
        kinds = sorted(
            {"attention" if _mixer_class(m) is AttentionConfig else str(m["kind"]) for m in targets}
        )
        if len(kinds) > 1:
            index, slot, _ = found[0]
            raise ConfigError(
                f"{what}: {' and '.join(kinds)} layers both have {field!r}; name one with a dotted path "
                f"(blocks.{index}.{slot}.{field}=...)"
            )
    if not targets and field in _BLOCK_FIELDS:
        targets = block_dicts
    for target in targets:
        target[field] = value
    return bool(targets)


# ----------------------------------------------------------------------------- schema walking helpers


def _model_field_types(cls: type[BaseModel]) -> dict[str, Any]:
    return {name: f.annotation for name, f in cls.model_fields.items()}


def _unwrap_optional(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, _UnionType) and len(args) == 1:
        return args[0]
    return tp


_UnionType = type(int | None)


def _fields_of(schema: Any) -> dict[str, Any] | None:
    schema = _unwrap_optional(schema)
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return _model_field_types(schema)
    return None


def _dict_value_schema(schema: Any) -> Any:
    args = typing.get_args(_unwrap_optional(schema))
    return args[1] if len(args) == 2 else Any


def _item_schema(list_schema: Any, item: Any) -> Any:
    args = typing.get_args(_unwrap_optional(list_schema))
    inner = args[0] if args else Any
    if typing.get_origin(inner) is typing.Annotated:  # the discriminated FFN-layer union
        return _layer_class(item) if isinstance(item, dict) else Any
    return inner


def _layer_class(layer: dict[str, Any]) -> type[BaseModel] | None:
    return _LAYER_CLASSES.get(str(layer.get("kind")))


def _kind_classes(annotated: Any) -> dict[str, type[BaseModel]]:
    """`kind` -> class of a discriminated union, for the classes whose kind has one value (attention's
    mha/gqa/mqa/mla is left to the caller)."""
    union = typing.get_args(annotated)[0]  # Annotated[Union[...], discriminator] -> the Union
    classes = (cls for cls in typing.get_args(union) if isinstance(cls.model_fields["kind"].default, str))
    return {cls.model_fields["kind"].default: cls for cls in classes}


def _mixer_class(mixer: dict[str, Any]) -> type[BaseModel]:
    """The class of a token-mixer mapping: a recurrent mixer by its kind, else attention."""
    return _RECURRENT_CLASSES.get(str(mixer.get("kind")), AttentionConfig)


_LAYER_CLASSES = _kind_classes(FFNLayer)
_RECURRENT_CLASSES = _kind_classes(Mixer)
_BLOCK_FIELDS = frozenset({"repeat", "norm", "parallel_ffn"})


# ------------------------------------------------------------------------------------------- variants


def hardware_names(spec: str | Path) -> list[str]:
    """The hardware specs of a `--hardware` value: one, or several separated by commas (h100-sxm,b200)."""
    return [h.strip() for h in str(spec).split(",") if h.strip()]


def load_variants(
    models: Sequence[str],
    hardware: Sequence[str],
    overrides: Sequence[str] = (),
    vary: Sequence[str] = (),
    *,
    command: str = "compare",
    at_least: int = 2,
) -> list[tuple[ModelConfig, HardwareConfig]]:
    """Every (model, hardware) pair a what-if comparison runs: each model, under each combination of the
    `vary` values (`top_k=4,8,16`: one variant per value, on top of `overrides`), on each hardware.
    Variants are named by what differs (`olmoe-1b-7b top_k=4 @b200`), so no two share a name."""
    axes: list[list[str]] = []
    for item in vary:
        key, sep, values = item.partition("=")
        options = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not options:
            raise ConfigError(f"--vary {item!r}: expected key=value1,value2,...")
        axes.append([f"{key.strip()}={v}" for v in options])
    gpus = [load_hardware(h) for h in hardware]
    out: list[tuple[ModelConfig, HardwareConfig]] = []
    for spec in models:
        for combo in itertools.product(*axes):
            model = load_model(spec, [*overrides, *combo])
            for hw in gpus:
                label = " ".join([model.name, *combo, *([f"@{hw.name}"] if len(gpus) > 1 else [])])
                out.append((model.model_copy(update={"name": label}), hw))
    names = [m.name for m, _ in out]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"{command}: {', '.join(map(repr, repeated))} would appear twice; vary it with --vary KEY=A,B "
            "or --hardware A,B"
        )
    if len(out) < at_least:
        raise ConfigError(
            f"{command} needs at least two variants: two models, --vary KEY=A,B or --hardware A,B"
        )
    return out

"""Typed reading of a Hugging Face config dict, and the layer builders every family shares: attention,
the gated MLP and its activation, per-layer type lists. Defaults for absent keys are recorded, so the model's
provenance says which transformers defaults were used."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from simulator.config import AttentionConfig, DenseFFNConfig, describe_validation_error
from simulator.errors import ConfigError

GATED_ACT: dict[str, str] = {
    # the gated MLP of these families: act(W_g x) * (W_u x); the activation names the gate
    "silu": "swiglu",
    "swish": "swiglu",
    "gelu": "geglu",
    "gelu_pytorch_tanh": "geglu",
    "gelu_new": "geglu",
}

PLAIN_ACT: dict[str, str] = {
    # the two-matrix MLP of GPT-2, GPT-NeoX, Falcon, StarCoder2: W_down act(W_up x); tanh and exact GELU
    # differ in the function only, not in what they read
    "gelu": "gelu",
    "gelu_new": "gelu",
    "gelu_fast": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "relu": "relu",
    "silu": "silu",
}


class Reader:
    """Typed access to one config dict that remembers which transformers defaults it fell back on."""

    def __init__(self, cfg: dict[str, Any], what: str) -> None:
        self.cfg = cfg
        self.what = what
        self.defaults: dict[str, Any] = {}

    def need_int(self, key: str) -> int:
        """A required size: present, an integer, and at least 1."""
        if self.cfg.get(key) is None:
            raise ConfigError(f"{self.what}: missing required key '{key}'")
        value = self._as_int(key, self.cfg[key])
        if value < 1:
            raise ConfigError(f"{self.what}: '{key}' must be at least 1, got {value}")
        return value

    def opt_int(self, key: str, default: int | None) -> int | None:
        value = self.cfg.get(key)
        if value is None:
            return self._default(key, default)
        return self._as_int(key, value)

    def opt_size(self, key: str, default: int, *aliases: str) -> int:
        """A size with a transformers default: at least 1 when stated. `aliases` are older spellings of
        the key that the config class still accepts (read when the key itself is absent)."""
        for name in (key, *aliases):
            if self.cfg.get(name) is not None:
                value = self._as_int(name, self.cfg[name])
                if value < 1:
                    raise ConfigError(f"{self.what}: '{name}' must be at least 1, got {value}")
                return value
        return self._default(key, default)

    def opt_count(self, key: str, default: int) -> int:
        """A count that may be 0 (no experts, no shared expert), never negative."""
        value = self.opt_int(key, default)
        if value is None:
            return 0
        if value < 0:
            raise ConfigError(f"{self.what}: '{key}' must be at least 0, got {value}")
        return value

    def opt_flag(self, key: str, default: bool, *aliases: str) -> bool:
        """opt_bool with the older spellings the config class still accepts."""
        for name in (key, *aliases):
            if name in self.cfg and self.cfg[name] is not None:
                return self.opt_bool(name, default)
        return self._default(key, default)

    def auto_size(self, key: str, auto: int) -> int:
        """A size that may be written "auto" (the transformers default), meaning `auto`."""
        value = self.cfg.get(key, "auto")
        if value is None or value == "auto":
            if key not in self.cfg:
                self.defaults[key] = "auto"
            return auto
        return self.opt_size(key, auto)

    def stated_int(self, key: str) -> int | None:
        """An integer when the config states it, else None (unknown, not a transformers default)."""
        value = self.cfg.get(key)
        return None if value is None else self._as_int(key, value)

    def opt_bool(self, key: str, default: bool) -> bool:
        value = self.cfg.get(key)
        if value is None:
            return self._default(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.what}: '{key}' must be true or false, got {value!r}")
        return value

    def opt_str(self, key: str, default: str) -> str:
        value = self.cfg.get(key)
        if value is None:
            return self._default(key, default)
        return str(value)

    def _default(self, key: str, default: Any) -> Any:
        # an explicit null is the published value (e.g. q_lora_rank of V2-Lite); only absent keys are defaults
        if key not in self.cfg:
            self.defaults[key] = default
        return default

    def int_list(self, key: str) -> list[int]:
        value = self.cfg.get(key) or []
        # bools are ints in Python: `[true]` is not a list of layer indices
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(f"{self.what}: '{key}' must be a list of layer indices, got {value!r}")
        return value

    def _as_int(self, key: str, value: Any) -> int:
        # JSON may carry 4096.0; bools are ints in Python and must not pass as sizes; NaN/inf never do
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (isinstance(value, float) and not math.isfinite(value))
            or int(value) != value
        ):
            raise ConfigError(f"{self.what}: '{key}' must be an integer, got {value!r}")
        return int(value)


def attention_config(
    r: Reader,
    d_model: int,
    qkv_bias: bool,
    o_bias: bool,
    window: int | None = None,
    chunk: int | None = None,
    sinks: bool = False,
    output_gate: bool = False,
    head_dim_keys: tuple[str, ...] = ("head_dim",),
    head_dim_default: int | None = None,
    kv_default: int | None = None,
) -> AttentionConfig:
    """`kv_default`: the family's K/V head count when the config states none (None: as many as the
    query heads, the Llama rule)."""
    n_heads = r.need_int("num_attention_heads")
    # absent: the family's default; written as null: as many as the query heads (the Llama rule)
    stated_null = "num_key_value_heads" in r.cfg and r.cfg["num_key_value_heads"] is None
    n_kv = n_heads if stated_null else r.opt_int("num_key_value_heads", kv_default or n_heads)
    assert n_kv is not None
    # explicit head_dim wins (Qwen3, Gemma, Llama-3.2 ...); then the family's class default where it has
    # one (Qwen3-Next, Nemotron-H); only derive hidden/heads when neither exists
    stated = [key for key in head_dim_keys if r.cfg.get(key) is not None]
    if stated:
        head_dim = r._as_int(stated[0], r.cfg[stated[0]])
    elif head_dim_default is not None:
        head_dim = r._default(head_dim_keys[0], head_dim_default)
    else:
        if d_model % n_heads:
            raise ConfigError(
                f"{r.what}: no head_dim and hidden_size {d_model} is not divisible by {n_heads} heads"
            )
        head_dim = d_model // n_heads
    if n_kv == n_heads:
        kind = "mha"
    elif n_kv == 1:
        kind = "mqa"
    else:
        kind = "gqa"
    return validated(
        r,
        lambda: AttentionConfig(
            kind=kind,
            n_heads=n_heads,
            n_kv_heads=n_kv,
            head_dim=head_dim,
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            sliding_window=window,
            attention_chunk=chunk,
            sinks=sinks,
            output_gate=output_gate,
        ),
    )


def mla_config(r: Reader, sparse: bool = False) -> AttentionConfig:
    """DeepSeek's MLA; `sparse`: with V3.2's lightning indexer (DSA), which picks `index_topk` tokens
    per query."""
    nope = r.need_int("qk_nope_head_dim")
    rope = r.need_int("qk_rope_head_dim")
    # q_lora_rank null (V2-Lite) means a plain W_Q projection; 0 is written by some ports for the same
    q_lora = r.opt_int("q_lora_rank", None) or None
    bias = r.opt_bool("attention_bias", False)
    return validated(
        r,
        lambda: AttentionConfig(
            kind="mla",
            n_heads=r.need_int("num_attention_heads"),
            head_dim=nope + rope,
            qkv_bias=bias,
            o_bias=bias,
            q_lora_rank=q_lora,
            kv_lora_rank=r.need_int("kv_lora_rank"),
            qk_nope_head_dim=nope,
            qk_rope_head_dim=rope,
            v_head_dim=r.need_int("v_head_dim"),
            index_topk=r.need_int("index_topk") if sparse else None,
            index_n_heads=r.need_int("index_n_heads") if sparse else None,
            index_head_dim=r.need_int("index_head_dim") if sparse else None,
        ),
    )


def gated_activation(r: Reader, key: str = "hidden_act", default: str = "silu") -> str:
    act = r.opt_str(key, default)
    if act not in GATED_ACT:
        known = ", ".join(sorted(GATED_ACT))
        raise ConfigError(f"{r.what}: hidden_act {act!r} is not supported (known: {known})")
    return GATED_ACT[act]


def plain_activation(r: Reader, key: str, default: str) -> str:
    act = r.opt_str(key, default)
    if act not in PLAIN_ACT:
        raise ConfigError(f"{r.what}: {key} {act!r} is not supported (known: {', '.join(sorted(PLAIN_ACT))})")
    return PLAIN_ACT[act]


def dense_ffn(r: Reader, bias: bool = False, act: str | None = None) -> DenseFFNConfig:
    act = act or gated_activation(r)
    return validated(
        r, lambda: DenseFFNConfig(d_ff=r.need_int("intermediate_size"), activation=act, bias=bias)
    )


def mistral_window(r: Reader) -> int | None:
    """Mistral/Mixtral attend within `sliding_window` keys when it is set (null in later releases)."""
    return r.opt_int("sliding_window", None)


def validated(r: Reader, build: Callable[[], Any]) -> Any:
    try:
        return build()
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, r.what)) from exc


def per_layer_types(r: Reader, key: str, n_layers: int, known: dict[str, str]) -> list[str] | None:
    """A per-layer list of layer kinds (`layer_types`, `layers_block_type`) mapped through `known`, or
    None when the config does not state it."""
    types = r.cfg.get(key)
    if types is None:
        return None
    if not isinstance(types, list) or len(types) != n_layers:
        raise ConfigError(f"{r.what}: '{key}' must list one type per layer ({n_layers}), got {types!r}")
    unknown = sorted({str(t) for t in types if not isinstance(t, str) or t not in known})
    if unknown:
        raise ConfigError(f"{r.what}: {key} {unknown} not supported (known: {', '.join(sorted(known))})")
    return [known[t] for t in types]

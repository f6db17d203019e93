"""Hugging Face configs of hybrid and state-space families: Qwen3-Next (Gated DeltaNet and gated
attention), Jamba (Mamba and attention, MoE every other layer), Mamba and Falcon-Mamba, Mamba-2,
Nemotron-H (a pattern of Mamba-2, attention, MLP and MoE layers), Granite-4.0-H, Bamba, Kimi Linear
(Kimi Delta Attention and MLA), Falcon-H1 (attention and Mamba-2 side by side) and MiniMax-01 / M1
(lightning attention). Each
builder returns one BlockConfig per layer, as the attention families' builders do."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from simulator.config import (
    BlockConfig,
    DenseFFNConfig,
    GatedDeltaNetConfig,
    LightningAttentionConfig,
    Mamba2Config,
    MambaConfig,
    MoEConfig,
)
from simulator.errors import ConfigError
from simulator.hf.reader import (
    Reader,
    attention_config,
    dense_ffn,
    gated_activation,
    mistral_window,
    mla_config,
    per_layer_types,
    validated,
)


def _gated_deltanet(r: Reader) -> GatedDeltaNetConfig:
    """Qwen3-Next's linear attention: q/k/v/z and b/a projections without biases, a bias-free depthwise
    convolution over q, k and v, per value head a decay (A_log) and a step bias; its gated RMSNorm holds
    norm weights only."""
    return validated(
        r,
        lambda: GatedDeltaNetConfig(
            n_k_heads=r.opt_size("linear_num_key_heads", 16),
            n_v_heads=r.opt_size("linear_num_value_heads", 32),
            head_k_dim=r.opt_size("linear_key_head_dim", 128),
            head_v_dim=r.opt_size("linear_value_head_dim", 128),
            d_conv=r.opt_size("linear_conv_kernel_dim", 4),
            conv_bias=False,
            proj_bias=False,
        ),
    )


def _qwen3_next(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """Qwen3-Next: Gated DeltaNet layers with a full (gated) attention layer every
    `full_attention_interval`-th layer, or as `layer_types` lists them; q_proj also yields a sigmoid gate
    as wide as the attention output; head_dim 256 by default. The FFN follows Qwen2-MoE's layer rule: MoE
    with one shared expert (its sigmoid gate, a d-vector, is left out as for Qwen2-MoE), the dense MLP of
    `intermediate_size` on `mlp_only_layers` and off the sparse step. Absent keys take Qwen3NextConfig's
    defaults (the 80B-A3B's shapes). The multi-token-prediction weights (`mtp.*`) are not loaded by
    transformers and are left out."""
    kinds = per_layer_types(
        r, "layer_types", n_layers, {"linear_attention": "linear", "full_attention": "full"}
    )
    if kinds is None:
        every = r.opt_size("full_attention_interval", 4)
        kinds = ["full" if (i + 1) % every == 0 else "linear" for i in range(n_layers)]
    bias = r.opt_bool("attention_bias", False)
    attn = attention_config(r, d, qkv_bias=bias, o_bias=bias, output_gate=True, head_dim_default=256)
    linear = _gated_deltanet(r) if "linear" in kinds else None
    step = r.opt_size("decoder_sparse_step", 1)
    dense_only = set(r.int_list("mlp_only_layers"))
    n_experts = r.opt_count("num_experts", 512)
    sparse = [n_experts > 0 and i not in dense_only and (i + 1) % step == 0 for i in range(n_layers)]
    moe = None
    if any(sparse):
        shared = r.opt_count("shared_expert_intermediate_size", 512)
        act = gated_activation(r)
        moe = validated(
            r,
            lambda: MoEConfig(
                n_experts=n_experts,
                top_k=r.opt_size("num_experts_per_tok", 10),
                expert_ffn=r.opt_size("moe_intermediate_size", 512),
                n_shared_experts=1 if shared else 0,
                shared_ffn=shared,
                shared_gate=bool(shared),  # as Qwen2-MoE: sigmoid(shared_expert_gate(x)) scales it
                activation=act,
            ),
        )
    dense = None
    if not all(sparse):
        act = gated_activation(r)
        dense = validated(
            r, lambda: DenseFFNConfig(d_ff=r.opt_size("intermediate_size", 5632), activation=act)
        )
    return [
        BlockConfig(attention=attn if k == "full" else linear, ffn=[moe if s else dense])  # type: ignore[list-item]
        for k, s in zip(kinds, sparse, strict=True)
    ]


def _mamba1(r: Reader, d: int, d_inner: int, keys: dict[str, str], defaults: dict[str, Any]) -> MambaConfig:
    """A Mamba-1 mixer: in_proj (x and the gate z), x_proj (dt rank, B, C), dt_proj with its bias, A_log,
    D, out_proj and a depthwise convolution; `keys` names this family's config keys for each field."""
    return validated(
        r,
        lambda: MambaConfig(
            d_inner=d_inner,
            d_state=r.opt_size(keys["d_state"], defaults["d_state"]),
            dt_rank=r.auto_size(keys["dt_rank"], math.ceil(d / 16)),
            d_conv=r.opt_size(keys["d_conv"], defaults["d_conv"]),
            conv_bias=r.opt_bool(keys["conv_bias"], defaults["conv_bias"]),
            proj_bias=r.opt_bool(keys["proj_bias"], defaults["proj_bias"]),
        ),
    )


def _jamba(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """Jamba: attention (Llama-shaped, no biases) on layers i % attn_layer_period == attn_layer_offset,
    Mamba-1 elsewhere (its dt/B/C RMSNorms hold norm weights only); the FFN is a MoE of `num_experts`
    Mistral-style experts on layers i % expert_layer_period == expert_layer_offset, a dense MLP of the same
    width elsewhere. A `layers_block_type` list, when a file states one, must agree with the rule (the
    config class derives it and ignores a stored one)."""
    periods: dict[str, tuple[int, int]] = {}
    for what, period_default, offset_default in (("attn", 8, 4), ("expert", 2, 1)):
        period = r.opt_size(f"{what}_layer_period", period_default)
        offset = r.opt_int(f"{what}_layer_offset", offset_default)
        assert offset is not None
        if not 0 <= offset < period:
            raise ConfigError(
                f"{r.what}: '{what}_layer_offset' {offset} must be at least 0 and below "
                f"{what}_layer_period {period}"
            )
        periods[what] = (period, offset)
    kinds = [
        "attention" if i % periods["attn"][0] == periods["attn"][1] else "mamba" for i in range(n_layers)
    ]
    stated = per_layer_types(r, "layers_block_type", n_layers, {"attention": "attention", "mamba": "mamba"})
    if stated is not None and stated != kinds:
        raise ConfigError(
            f"{r.what}: 'layers_block_type' disagrees with attn_layer_period {periods['attn'][0]} / "
            f"attn_layer_offset {periods['attn'][1]}, which transformers follows"
        )
    n_experts = r.opt_count("num_experts", 16)
    sparse = [n_experts > 1 and i % periods["expert"][0] == periods["expert"][1] for i in range(n_layers)]
    mamba = None
    if "mamba" in kinds:
        mamba = _mamba1(
            r,
            d,
            r.opt_size("mamba_expand", 2) * d,
            {
                "d_state": "mamba_d_state",
                "dt_rank": "mamba_dt_rank",
                "d_conv": "mamba_d_conv",
                "conv_bias": "mamba_conv_bias",
                "proj_bias": "mamba_proj_bias",
            },
            {"d_state": 16, "d_conv": 4, "conv_bias": True, "proj_bias": False},
        )
    attn = (
        attention_config(r, d, qkv_bias=False, o_bias=False, window=mistral_window(r))
        if "attention" in kinds
        else None
    )
    act = gated_activation(r)
    width = r.opt_size("intermediate_size", 14336)  # the experts' and the dense MLP's
    moe = dense = None
    if any(sparse):
        moe = validated(
            r,
            lambda: MoEConfig(
                n_experts=n_experts,
                top_k=r.opt_size("num_experts_per_tok", 2),
                expert_ffn=width,
                activation=act,
            ),
        )
    if not all(sparse):
        dense = validated(r, lambda: DenseFFNConfig(d_ff=width, activation=act))
    return [
        BlockConfig(attention=attn if k == "attention" else mamba, ffn=[moe if s else dense])  # type: ignore[list-item]
        for k, s in zip(kinds, sparse, strict=True)
    ]


def _mamba(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """Mamba-1 (state-spaces/mamba-*-hf) and Falcon-Mamba: every block a Mamba mixer with its own norm and
    residual, no attention, no FFN. d_inner is `intermediate_size` when the file states it (the config
    class then keeps it; Falcon-Mamba-7B's `expand` 16 is not its width), else expand x hidden_size.
    Falcon-Mamba's weight-free B/C/dt RMS normalisation adds no weights."""
    stated = r.cfg.get("intermediate_size")
    d_inner = r.need_int("intermediate_size") if stated is not None else r.opt_size("expand", 2) * d
    mixer = _mamba1(
        r,
        d,
        d_inner,
        {
            "d_state": "state_size",
            "dt_rank": "time_step_rank",
            "d_conv": "conv_kernel",
            "conv_bias": "use_conv_bias",
            "proj_bias": "use_bias",
        },
        {"d_state": 16, "d_conv": 4, "conv_bias": True, "proj_bias": False},
    )
    return [BlockConfig(attention=mixer) for _ in range(n_layers)]


def _mamba2_mixer(
    r: Reader,
    d: int,
    n_heads: int,
    head_dim: int,
    d_inner: int | None,
    keys: dict[str, tuple[str, ...]],
    defaults: dict[str, Any],
) -> Mamba2Config:
    """A Mamba-2 mixer: one in_proj (z, x, B, C and dt), a depthwise convolution over x, B and C, per head
    A_log, D and dt_bias, out_proj; the gated RMSNorm holds norm weights only. `d_inner`, where the
    family's mixer takes its width from elsewhere (expand x hidden_size), must equal heads x head_dim."""
    if d_inner is not None and n_heads * head_dim != d_inner:
        raise ConfigError(
            f"{r.what}: {keys['n_heads'][0]} x {keys['head_dim'][0]} = {n_heads} x {head_dim} must equal "
            f"the mixer width {d_inner} (expand x hidden_size)"
        )
    return validated(
        r,
        lambda: Mamba2Config(
            n_heads=n_heads,
            head_dim=head_dim,
            d_state=r.opt_size(keys["d_state"][0], defaults["d_state"], *keys["d_state"][1:]),
            n_groups=r.opt_size(keys["n_groups"][0], defaults["n_groups"], *keys["n_groups"][1:]),
            chunk_size=r.opt_size(keys["chunk_size"][0], defaults["chunk_size"], *keys["chunk_size"][1:]),
            d_conv=r.opt_size(keys["d_conv"][0], defaults["d_conv"], *keys["d_conv"][1:]),
            conv_bias=r.opt_flag(keys["conv_bias"][0], defaults["conv_bias"], *keys["conv_bias"][1:]),
            proj_bias=r.opt_flag(keys["proj_bias"][0], defaults["proj_bias"], *keys["proj_bias"][1:]),
        ),
    )


def _mamba2(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """Mamba-2 (Mamba-Codestral-7B): every block a Mamba-2 mixer with its own norm and residual. The mixer
    is expand x hidden_size wide, split into `num_heads` heads of `head_dim`; Mamba2Config's defaults are
    Mamba-Codestral-7B's shapes."""
    n_heads = r.opt_size("num_heads", 128)
    head_dim = r.opt_size("head_dim", 64)
    mixer = _mamba2_mixer(
        r,
        d,
        n_heads,
        head_dim,
        r.opt_size("expand", 2) * d,
        {
            "n_heads": ("num_heads",),
            "head_dim": ("head_dim",),
            "d_state": ("state_size",),
            "n_groups": ("n_groups",),
            "chunk_size": ("chunk_size",),
            "d_conv": ("conv_kernel",),
            "conv_bias": ("use_conv_bias",),
            "proj_bias": ("use_bias",),
        },
        {
            "d_state": 128,
            "n_groups": 8,
            "chunk_size": 256,
            "d_conv": 4,
            "conv_bias": True,
            "proj_bias": False,
        },
    )
    return [BlockConfig(attention=mixer) for _ in range(n_layers)]


# Nemotron-H's pattern symbols and the layer-type names (older and newer transformers) they stand for
_NEMOTRON_SYMBOLS = {"M": "Mamba-2", "*": "attention", "-": "MLP", "E": "MoE"}
_NEMOTRON_TYPES = {
    "mamba": "M",
    "linear_attention": "M",
    "attention": "*",
    "full_attention": "*",
    "mlp": "-",
    "moe": "E",
}


def _nemotron_pattern(r: Reader) -> str:
    """The layer pattern: `hybrid_override_pattern` (M Mamba-2, * attention, - MLP, E MoE), else a
    `layers_block_type` list (transformers >= 5 writes one)."""
    pattern = r.cfg.get("hybrid_override_pattern")
    if pattern is None:
        types = r.cfg.get("layers_block_type")
        if types is None:
            raise ConfigError(
                f"{r.what}: missing required key 'hybrid_override_pattern' (or 'layers_block_type')"
            )
        if not isinstance(types, list) or not types:
            raise ConfigError(f"{r.what}: 'layers_block_type' must be a list of layer types, got {types!r}")
        unknown = sorted({str(t) for t in types if not isinstance(t, str) or t not in _NEMOTRON_TYPES})
        if unknown:
            known = ", ".join(sorted(_NEMOTRON_TYPES))
            raise ConfigError(f"{r.what}: layers_block_type {unknown} not supported (known: {known})")
        return "".join(_NEMOTRON_TYPES[t] for t in types)
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"{r.what}: 'hybrid_override_pattern' must be a non-empty string, got {pattern!r}")
    unknown = sorted({c for c in pattern if c not in _NEMOTRON_SYMBOLS})
    if unknown:
        known = ", ".join(f"{c} {name}" for c, name in _NEMOTRON_SYMBOLS.items())
        raise ConfigError(
            f"{r.what}: hybrid_override_pattern has unknown layer symbol(s) {''.join(unknown)!r} "
            f"(known: {known})"
        )
    return pattern


def _nemotron_layer_count(r: Reader) -> int:
    """Nemotron-H's layer count is its pattern's length; a stated num_hidden_layers must agree."""
    length = len(_nemotron_pattern(r))
    stated = r.stated_int("num_hidden_layers")
    if stated is not None and stated != length:
        raise ConfigError(
            f"{r.what}: hybrid_override_pattern has {length} layers but num_hidden_layers is {stated}"
        )
    return length


def _nemotron_h(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """Nemotron-H: each layer is ONE of Mamba-2 (M), attention (*), a non-gated relu^2 MLP (-) or a MoE
    of relu^2 experts (E), with its own norm and residual; one block per layer. The attention has
    head_dim 128 by default (`attention_head_dim` in the 2025 releases); the MoE (Nemotron-3) routes with
    a sigmoid and a selection bias and adds one shared relu^2 MLP. Latent MoE projections
    (`moe_latent_size`) are not modelled and are refused."""
    pattern = _nemotron_pattern(r)
    used = set(pattern)
    mamba = attn = dense = moe = None
    if "M" in used:
        mamba = _mamba2_mixer(
            r,
            d,
            r.opt_size("mamba_num_heads", 128),
            r.opt_size("mamba_head_dim", 64),
            None,
            {
                "n_heads": ("mamba_num_heads",),
                "head_dim": ("mamba_head_dim",),
                "d_state": ("ssm_state_size",),
                "n_groups": ("n_groups", "mamba_n_groups"),
                "chunk_size": ("chunk_size", "mamba_chunk_size"),
                "d_conv": ("conv_kernel", "mamba_d_conv"),
                "conv_bias": ("use_conv_bias", "mamba_conv_bias"),
                # in_proj and out_proj take their bias from use_bias (mamba_proj_bias is not read)
                "proj_bias": ("use_bias",),
            },
            {
                "d_state": 128,
                "n_groups": 8,
                "chunk_size": 128,
                "d_conv": 4,
                "conv_bias": True,
                "proj_bias": False,
            },
        )
    if "*" in used:
        bias = r.opt_bool("attention_bias", False)
        attn = attention_config(
            r,
            d,
            qkv_bias=bias,
            o_bias=bias,
            window=r.opt_int("sliding_window", None),
            head_dim_keys=("head_dim", "attention_head_dim"),
            head_dim_default=128,
        )
    act = _relu2(r)
    mlp_bias = r.opt_bool("mlp_bias", False)
    if "-" in used:
        dense = validated(
            r,
            lambda: DenseFFNConfig(
                d_ff=r.opt_size("intermediate_size", 21504), activation=act, bias=mlp_bias
            ),
        )
    if "E" in used:
        if r.cfg.get("moe_latent_size") is not None:
            raise ConfigError(f"{r.what}: latent MoE projections ('moe_latent_size') are not modelled")
        if mlp_bias:
            raise ConfigError(f"{r.what}: biased MoE experts ('mlp_bias' true) are not modelled")
        shared = r.opt_count("moe_shared_expert_intermediate_size", 7688)
        n_group = r.opt_size("n_group", 1)
        grouped = n_group > 1
        moe = validated(
            r,
            lambda: MoEConfig(
                n_experts=r.opt_size("n_routed_experts", 8),
                top_k=r.opt_size("num_experts_per_tok", 2),
                expert_ffn=r.opt_size("moe_intermediate_size", 7688),
                n_shared_experts=1 if shared else 0,
                shared_ffn=shared,
                activation=act,
                router="sigmoid",
                router_bias=True,  # e_score_correction_bias, one per expert
                n_groups=n_group if grouped else None,
                topk_groups=r.opt_size("topk_group", 1) if grouped else None,
            ),
        )
    layer = {
        "M": lambda: BlockConfig(attention=mamba),
        "*": lambda: BlockConfig(attention=attn),
        "-": lambda: BlockConfig(ffn=[dense]),  # type: ignore[list-item]
        "E": lambda: BlockConfig(ffn=[moe]),  # type: ignore[list-item]
    }
    return [layer[c]() for c in pattern]


def _relu2(r: Reader) -> str:
    """Nemotron-H's MLP activation (`mlp_hidden_act`, relu^2 by default): a non-gated two-matrix MLP,
    costed as relu (the same weights; the square is elementwise)."""
    act = r.opt_str("mlp_hidden_act", "relu2")
    if act not in ("relu2", "relu"):
        raise ConfigError(f"{r.what}: mlp_hidden_act {act!r} is not supported (known: relu, relu2)")
    return "relu"


# the `mamba_*` keys of Bamba, Granite 4.0-H and Falcon-H1, and their config classes' shared defaults
_MAMBA_KEYS: dict[str, tuple[str, ...]] = {
    "n_heads": ("mamba_n_heads",),
    "head_dim": ("mamba_d_head",),
    "d_state": ("mamba_d_state",),
    "n_groups": ("mamba_n_groups",),
    "chunk_size": ("mamba_chunk_size",),
    "d_conv": ("mamba_d_conv",),
    "conv_bias": ("mamba_conv_bias",),
    "proj_bias": ("mamba_proj_bias",),
}
_MAMBA_DEFAULTS: dict[str, Any] = {
    "d_state": 256,
    "n_groups": 1,
    "chunk_size": 256,
    "d_conv": 4,
    "conv_bias": True,
    "proj_bias": False,
}


def _granite_mamba(r: Reader, d: int) -> Mamba2Config:
    """The Mamba-2 mixer of Bamba and Granite 4.0-H (`mamba_*` keys): expand x hidden_size wide, heads
    of `mamba_d_head` ("auto": the width over `mamba_n_heads`)."""
    n_heads = r.opt_size("mamba_n_heads", 128)
    width = r.opt_size("mamba_expand", 2) * d
    if width % n_heads:
        raise ConfigError(f"{r.what}: mamba_n_heads {n_heads} must divide mamba_expand x hidden_size {width}")
    return _mamba2_mixer(
        r,
        d,
        n_heads,
        r.auto_size("mamba_d_head", width // n_heads),
        width,
        _MAMBA_KEYS,
        _MAMBA_DEFAULTS,
    )


def _falcon_h1(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """Falcon-H1: in every layer attention and a Mamba-2 mixer run side by side on one normed input and
    their outputs are summed (parallel_mixer), then a SwiGLU MLP. The attention reads `head_dim` (its
    query width need not be hidden_size); the mixer is `mamba_d_ssm` wide (FalconH1Config's 1024 when
    absent; `mamba_expand` x hidden_size when null) in heads of `mamba_d_head` ("auto": the width over the
    heads). The mixer's in_proj is biased by `mamba_proj_bias`, its out_proj by `projectors_bias`: one
    switch here, so the two must agree. The muP multipliers hold no weights."""
    if r.opt_bool("mamba_proj_bias", False) != r.opt_bool("projectors_bias", False):
        raise ConfigError(f"{r.what}: mamba_proj_bias and projectors_bias differ, which is not modelled")
    if not r.opt_bool("mamba_use_mlp", True):
        raise ConfigError(f"{r.what}: mamba_use_mlp false (layers without an MLP) is not modelled")
    bias = r.opt_bool("attention_bias", False)
    attn = attention_config(r, d, qkv_bias=bias, o_bias=bias, kv_default=8)
    stated = "mamba_d_ssm" in r.cfg
    width = r.stated_int("mamba_d_ssm") if stated else r.opt_size("mamba_d_ssm", 1024)
    width = width or r.opt_size("mamba_expand", 2) * d
    n_heads = r.opt_size("mamba_n_heads", 128)
    if width % n_heads:
        raise ConfigError(f"{r.what}: mamba_n_heads {n_heads} must divide the mixer width {width}")
    mamba = _mamba2_mixer(
        r,
        d,
        n_heads,
        r.auto_size("mamba_d_head", width // n_heads),
        width,
        _MAMBA_KEYS,
        _MAMBA_DEFAULTS,
    )
    ffn = dense_ffn(r, bias=r.opt_bool("mlp_bias", False))
    return [BlockConfig(attention=attn, parallel_mixer=mamba, ffn=[ffn]) for _ in range(n_layers)]


def _minimax01(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """MiniMax-Text-01 / MiniMax-M1: lightning attention (`attn_type_list` 0, or `layer_types`
    linear_attention) and GQA softmax attention (1 / full_attention), both with `num_attention_heads` of
    `head_dim`; every layer a MoE of `num_local_experts` SwiGLU experts of `intermediate_size`, softmax
    top-k, a shared expert only where `shared_intermediate_size` is set. The lightning layers' decay
    slopes are fixed, and the residual alphas and betas are scalars: neither holds weights."""
    kinds = per_layer_types(
        r, "layer_types", n_layers, {"linear_attention": "lightning", "full_attention": "full"}
    )
    types = r.cfg.get("attn_type_list")
    if kinds is not None and types is not None:
        if types != [1 if k == "full" else 0 for k in kinds]:
            raise ConfigError(f"{r.what}: layer_types and attn_type_list disagree")
    elif kinds is None:
        if not isinstance(types, list) or len(types) != n_layers or set(types) - {0, 1}:
            raise ConfigError(
                f"{r.what}: 'attn_type_list' must give 0 (lightning) or 1 (softmax) for each of the "
                f"{n_layers} layers"
            )
        kinds = ["full" if t == 1 else "lightning" for t in types]
    heads = r.need_int("num_attention_heads")
    head_dim = r.opt_size("head_dim", d // heads)  # hidden / heads when absent, as transformers derives
    lightning = validated(
        r,
        lambda: LightningAttentionConfig(
            n_heads=heads, head_dim=head_dim, chunk_size=r.opt_size("block_size", 256), proj_bias=False
        ),
    )
    full = attention_config(r, d, qkv_bias=False, o_bias=False)
    shared = r.opt_count("shared_intermediate_size", 0)
    act = gated_activation(r)
    moe = validated(
        r,
        lambda: MoEConfig(
            n_experts=r.need_int("num_local_experts"),
            top_k=r.need_int("num_experts_per_tok"),
            expert_ffn=r.need_int("intermediate_size"),
            n_shared_experts=1 if shared else 0,
            shared_ffn=shared,
            shared_gate=bool(shared),
            activation=act,
        ),
    )
    return [BlockConfig(attention=lightning if k == "lightning" else full, ffn=[moe]) for k in kinds]


def _granitemoehybrid(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """Granite 4.0-H: Mamba-2 or attention per `layer_types` (all Mamba-2 when absent), every layer then
    a MoE of `num_local_experts` experts of `intermediate_size` (fused gate/up, the same weights as
    separate ones) plus an always-on shared SwiGLU MLP of `shared_intermediate_size`; with no experts
    (`num_local_experts` 0, Granite 4.0-H-1B and -Micro) the shared MLP alone, a dense FFN. The attention
    uses no position encoding and hidden/heads per head; its multipliers hold no weights."""
    kinds = per_layer_types(r, "layer_types", n_layers, {"mamba": "mamba", "attention": "attention"})
    kinds = kinds or ["mamba"] * n_layers
    mamba = _granite_mamba(r, d) if "mamba" in kinds else None
    bias = r.opt_bool("attention_bias", False)
    attn = attention_config(r, d, qkv_bias=bias, o_bias=bias) if "attention" in kinds else None
    n_experts = r.opt_count("num_local_experts", 8)
    shared = r.opt_count("shared_intermediate_size", 1024)
    act = gated_activation(r)
    ffn: MoEConfig | DenseFFNConfig
    if n_experts > 0:
        ffn = validated(
            r,
            lambda: MoEConfig(
                n_experts=n_experts,
                top_k=r.opt_size("num_experts_per_tok", 2),
                expert_ffn=r.opt_size("intermediate_size", 11008),
                n_shared_experts=1 if shared else 0,
                shared_ffn=shared,
                activation=act,
            ),
        )
    elif shared:
        ffn = validated(r, lambda: DenseFFNConfig(d_ff=shared, activation=act))
    else:
        raise ConfigError(f"{r.what}: no experts ('num_local_experts' 0) and no 'shared_intermediate_size'")
    return [BlockConfig(attention=attn if k == "attention" else mamba, ffn=[ffn]) for k in kinds]


def _bamba(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """Bamba: Mamba-2 layers with attention (Llama-shaped; biases where `attention_bias`) on
    `attn_layer_indices`, every layer then a SwiGLU MLP of `intermediate_size` (biases where `mlp_bias`)."""
    indices = set(r.int_list("attn_layer_indices"))
    outside = sorted(i for i in indices if not 0 <= i < n_layers)
    if outside:
        raise ConfigError(
            f"{r.what}: attn_layer_indices {outside} are not layers of a {n_layers}-layer model"
        )
    mamba = _granite_mamba(r, d) if len(indices) < n_layers else None
    bias = r.opt_bool("attention_bias", False)
    attn = attention_config(r, d, qkv_bias=bias, o_bias=bias) if indices else None
    ffn = dense_ffn(r, bias=r.opt_bool("mlp_bias", False))
    return [BlockConfig(attention=attn if i in indices else mamba, ffn=[ffn]) for i in range(n_layers)]


def _kimi_layers(r: Reader, n_layers: int) -> list[str]:
    """Per layer "kda" or "mla", from linear_attn_config's 1-based kda_layers and full_attn_layers, which
    must share out the layers between them."""
    linear = r.cfg.get("linear_attn_config")
    if not isinstance(linear, dict):
        raise ConfigError(f"{r.what}: missing required key 'linear_attn_config' (a JSON object)")
    sub = Reader(linear, f"{r.what} linear_attn_config")
    kda, full = set(sub.int_list("kda_layers")), set(sub.int_list("full_attn_layers"))
    if kda & full or kda | full != set(range(1, n_layers + 1)):
        raise ConfigError(
            f"{r.what}: linear_attn_config's kda_layers and full_attn_layers must share out layers "
            f"1..{n_layers} (1-based), got {sorted(kda)} and {sorted(full)}"
        )
    return ["kda" if i + 1 in kda else "mla" for i in range(n_layers)]


def _kimi_delta(r: Reader) -> GatedDeltaNetConfig:
    """Kimi Delta Attention: q/k/v projections with bias-free short convolutions, beta per head, a decay
    per key channel and a sigmoid output gate each through a rank-head_dim projection; its state stays in
    fp32 (vLLM's kda_state_dtype, whatever the cache dtype)."""
    sub = Reader(r.cfg["linear_attn_config"], f"{r.what} linear_attn_config")
    heads, dim = sub.need_int("num_heads"), sub.need_int("head_dim")
    return validated(
        r,
        lambda: GatedDeltaNetConfig(
            n_k_heads=heads,
            n_v_heads=heads,
            head_k_dim=dim,
            head_v_dim=dim,
            d_conv=sub.opt_size("short_conv_kernel_size", 4),
            conv_bias=False,
            proj_bias=False,
            gate_rank=dim,
            state_dtype="fp32",
        ),
    )


def _kimi_linear(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """Kimi Linear: Kimi Delta Attention layers and MLA layers (no query LoRA; NoPE, which changes no
    weight: the rope part is still cached) as linear_attn_config lists them; a dense MLP below
    `first_k_dense_replace`, then a MoE with a sigmoid router, its selection bias and shared experts of
    the routed width. Its MoE keys are spelled `num_experts`, `num_experts_per_token` and
    `num_shared_experts`."""
    kinds = _kimi_layers(r, n_layers)
    kda = _kimi_delta(r) if "kda" in kinds else None
    mla = mla_config(r) if "mla" in kinds else None
    width = r.need_int("moe_intermediate_size")
    # KimiLinearConfig's spellings, and the DeepSeek-style ones some copies carry
    shared = r.opt_count("num_shared_experts" if "n_shared_experts" not in r.cfg else "n_shared_experts", 1)
    top_k_key = "num_experts_per_tok" if "num_experts_per_token" not in r.cfg else "num_experts_per_token"
    act = gated_activation(r)
    router = r.opt_str("moe_router_activation_func", "sigmoid")
    if router not in ("sigmoid", "softmax"):
        raise ConfigError(
            f"{r.what}: moe_router_activation_func {router!r} is not supported (sigmoid, softmax)"
        )
    moe = validated(
        r,
        lambda: MoEConfig(
            n_experts=r.need_int("num_experts"),
            top_k=r.need_int(top_k_key),
            expert_ffn=width,
            n_shared_experts=shared,
            shared_ffn=shared * width,
            activation=act,
            router="sigmoid" if router == "sigmoid" else "softmax",
            router_bias=True,  # e_score_correction_bias
        ),
    )
    first_dense = r.opt_count("first_k_dense_replace", 1)
    freq = r.opt_size("moe_layer_freq", 1)
    sparse = [i >= first_dense and i % freq == 0 for i in range(n_layers)]
    dense = dense_ffn(r) if not all(sparse) else None
    return [
        BlockConfig(attention=kda if k == "kda" else mla, ffn=[moe if s else dense])  # type: ignore[list-item]
        for k, s in zip(kinds, sparse, strict=True)
    ]


BUILDERS: dict[str, Callable[[Reader, int, int], list[BlockConfig]]] = {
    "qwen3_next": _qwen3_next,
    "jamba": _jamba,
    "mamba": _mamba,
    "falcon_mamba": _mamba,
    "mamba2": _mamba2,
    "nemotron_h": _nemotron_h,
    "granitemoehybrid": _granitemoehybrid,
    "bamba": _bamba,
    "kimi_linear": _kimi_linear,
    "falcon_h1": _falcon_h1,
    "minimax": _minimax01,
    "minimax_text_01": _minimax01,
    "minimax_m1": _minimax01,
}
# families whose layer count comes from their layer pattern rather than num_hidden_layers alone
LAYER_COUNT: dict[str, Callable[[Reader], int]] = {"nemotron_h": _nemotron_layer_count}

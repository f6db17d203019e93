"""Hugging Face configs of attention families (Llama, Mistral, Mixtral, Qwen, OLMoE, OLMo, DeepSeek,
Gemma, Phi, gpt-oss, GLM-4/4.5, Granite, Llama 4, ERNIE 4.5, MiniMax-M2, Command R, SmolLM3): one
BlockConfig per layer, with each family's own rule for sliding windows, chunked attention, MLA, shared
experts and interleaved dense and MoE layers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from simulator.config import AttentionConfig, BlockConfig, DenseFFNConfig, MoEConfig
from simulator.errors import ConfigError
from simulator.hf.reader import (
    Reader,
    attention_config,
    dense_ffn,
    gated_activation,
    mistral_window,
    mla_config,
    validated,
)


def _llama(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    bias = r.opt_bool("attention_bias", False)  # LlamaAttention puts it on q, k, v and o
    attn = attention_config(r, d, qkv_bias=bias, o_bias=bias)
    ffn = dense_ffn(r, bias=r.opt_bool("mlp_bias", False))
    return [BlockConfig(attention=attn, ffn=[ffn]) for _ in range(n_layers)]


def _qwen_windows(r: Reader, n_layers: int) -> list[int | None]:
    """Qwen2/3: layers from `max_window_layers` on use the window, only when `use_sliding_window`."""
    if not r.opt_bool("use_sliding_window", False):
        return [None] * n_layers
    window = r.opt_int("sliding_window", None)
    first = r.opt_int("max_window_layers", 0) or 0
    return [window if i >= first else None for i in range(n_layers)]


def _mistral(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    attn = attention_config(r, d, qkv_bias=False, o_bias=False, window=mistral_window(r))
    return [BlockConfig(attention=attn, ffn=[dense_ffn(r)]) for _ in range(n_layers)]


def _qwen2(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    # Qwen2 attention: bias on q, k, v; none on o (hard-wired in modeling_qwen2)
    bias = r.opt_bool("qkv_bias", True)
    return [
        BlockConfig(
            attention=attention_config(r, d, qkv_bias=bias, o_bias=False, window=w), ffn=[dense_ffn(r)]
        )
        for w in _qwen_windows(r, n_layers)
    ]


def _qwen3(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    bias = r.opt_bool("attention_bias", False)
    return [
        BlockConfig(
            attention=attention_config(r, d, qkv_bias=bias, o_bias=bias, window=w), ffn=[dense_ffn(r)]
        )
        for w in _qwen_windows(r, n_layers)
    ]


def _moe(
    r: Reader, n_experts_key: str, expert_key: str, top_k_key: str = "num_experts_per_tok", **extra: Any
) -> MoEConfig:
    act = gated_activation(r)
    return validated(
        r,
        lambda: MoEConfig(
            n_experts=r.need_int(n_experts_key),
            top_k=r.need_int(top_k_key),
            expert_ffn=r.need_int(expert_key),
            activation=act,
            **extra,
        ),
    )


def _mixtral(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    attn = attention_config(r, d, qkv_bias=False, o_bias=False, window=mistral_window(r))
    moe = _moe(r, "num_local_experts", "intermediate_size")
    return [BlockConfig(attention=attn, ffn=[moe]) for _ in range(n_layers)]


def _olmoe(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    bias = r.opt_bool("attention_bias", False)
    attn = attention_config(r, d, qkv_bias=bias, o_bias=bias)
    moe = _moe(r, "num_experts", "intermediate_size")  # OLMoE keeps the expert width in intermediate_size
    return [BlockConfig(attention=attn, ffn=[moe]) for _ in range(n_layers)]


def _qwen_sparse_layers(r: Reader, n_layers: int) -> list[bool]:
    """Qwen2-MoE / Qwen3-MoE rule: MoE unless listed in mlp_only_layers or off the sparse step."""
    step = r.opt_int("decoder_sparse_step", 1) or 1
    dense_only = set(r.int_list("mlp_only_layers"))
    has_experts = (r.opt_int("num_experts", 0) or 0) > 0
    return [has_experts and i not in dense_only and (i + 1) % step == 0 for i in range(n_layers)]


def _qwen2_moe(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    bias = r.opt_bool("qkv_bias", True)
    attns = [
        attention_config(r, d, qkv_bias=bias, o_bias=False, window=w) for w in _qwen_windows(r, n_layers)
    ]
    shared = r.opt_int("shared_expert_intermediate_size", 0) or 0
    # Qwen2MoeSparseMoeBlock scales its shared expert by sigmoid(shared_expert_gate(x))
    moe = _moe(
        r,
        "num_experts",
        "moe_intermediate_size",
        n_shared_experts=1 if shared else 0,
        shared_ffn=shared,
        shared_gate=bool(shared),
    )
    return _mixed_blocks(r, attns, _qwen_sparse_layers(r, n_layers), moe)


def _qwen3_moe(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    bias = r.opt_bool("attention_bias", False)
    attns = [attention_config(r, d, qkv_bias=bias, o_bias=bias, window=w) for w in _qwen_windows(r, n_layers)]
    moe = _moe(r, "num_experts", "moe_intermediate_size")
    return _mixed_blocks(r, attns, _qwen_sparse_layers(r, n_layers), moe)


def _group_limit(r: Reader, n_group: int | None) -> dict[str, int | None]:
    """The MoE's group-limited routing (`n_group` groups, the best `topk_group` of them searched) where
    there is more than one group; `n_group` is what the family read (its default recorded)."""
    grouped = (n_group or 1) > 1
    return {
        "n_groups": n_group if grouped else None,
        "topk_groups": r.opt_int("topk_group", None) if grouped else None,
    }


def _mixed_blocks(
    r: Reader,
    attns: list[AttentionConfig],
    sparse: list[bool],
    moe: MoEConfig | None,
    dense_bias: bool = False,
) -> list[BlockConfig]:
    """One block per layer: the MoE where `sparse` says so, the family's dense FFN elsewhere (read from
    the config only when some layer needs it; biased where the family's switch says so)."""
    dense = dense_ffn(r, bias=dense_bias) if not all(sparse) else None
    return [
        BlockConfig(attention=a, ffn=[moe if s else dense])  # type: ignore[list-item]
        for a, s in zip(attns, sparse, strict=True)
    ]


def _deepseek(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    return _deepseek_blocks(r, n_layers, mla_config(r))


def _deepseek_v32(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """DeepSeek-V3.2: V3's blocks with sparse attention (DSA) on every layer."""
    return _deepseek_blocks(r, n_layers, mla_config(r, sparse=True))


def _deepseek_blocks(r: Reader, n_layers: int, attn: AttentionConfig) -> list[BlockConfig]:
    n_routed = r.opt_int("n_routed_experts", None)
    first_dense = r.opt_int("first_k_dense_replace", 0) or 0
    freq = r.opt_int("moe_layer_freq", 1) or 1
    n_shared = r.opt_int("n_shared_experts", 0) or 0
    expert_ffn = r.need_int("moe_intermediate_size") if n_routed else 0
    method = r.opt_str("topk_method", "greedy")
    n_group = r.opt_int("n_group", 1) or 1
    if method == "greedy":  # plain greedy ignores the group fields
        n_group = 1
    moe = None
    if n_routed:
        moe = _moe(
            r,
            "n_routed_experts",
            "moe_intermediate_size",
            n_shared_experts=n_shared,
            shared_ffn=n_shared * expert_ffn,  # shared experts have the routed width, not intermediate_size
            router="sigmoid" if r.opt_str("scoring_func", "softmax") == "sigmoid" else "softmax",
            router_bias=method == "noaux_tc",  # V3's e_score_correction_bias
            **_group_limit(r, n_group),
        )
    # modeling_deepseek: MoE iff n_routed_experts and layer >= first_k_dense_replace and layer % freq == 0
    sparse = [bool(n_routed) and i >= first_dense and i % freq == 0 for i in range(n_layers)]
    return _mixed_blocks(r, [attn] * n_layers, sparse, moe)


def _layer_windows(
    r: Reader, n_layers: int, pattern: int, pattern_key: str | None, window_default: int | None = None
) -> list[int | None]:
    """Per layer, the sliding window or None (full attention). `layer_types` (transformers >= 4.53 writes
    it) is authoritative; without it every `pattern`-th layer is full and the others slide (Gemma 2
    alternates; Gemma 3 has five sliding layers per full one and may say so in `pattern_key`)."""
    window = r.opt_int("sliding_window", window_default)
    types = r.cfg.get("layer_types")
    if types is None:
        every = (r.opt_int(pattern_key, pattern) if pattern_key else pattern) or pattern
        return [window if (i + 1) % every else None for i in range(n_layers)]
    if not isinstance(types, list) or len(types) != n_layers:
        raise ConfigError(f"{r.what}: 'layer_types' must list one type per layer ({n_layers}), got {types!r}")
    known = {"sliding_attention": window, "full_attention": None}
    unknown = sorted({str(t) for t in types if t not in known})
    if unknown:
        raise ConfigError(f"{r.what}: layer_types {unknown} not supported (known: {', '.join(known)})")
    return [known[t] for t in types]


def _gemma_family(
    pattern: int | None, pattern_key: str | None = None
) -> Callable[[Reader, int, int], list[BlockConfig]]:
    """Gemma 1/2/3 decoders: GeGLU MLP named by `hidden_activation` (tanh GELU by default), explicit
    head_dim, tied embeddings; Gemma 2/3 interleave sliding-window and full layers (`pattern`). Their
    extra norms (post-attention/post-MLP, q/k norms) hold no weights the simulator counts."""

    def build(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
        bias = r.opt_bool("attention_bias", False)
        ffn = dense_ffn(r, act=gated_activation(r, "hidden_activation", "gelu_pytorch_tanh"))
        windows = [None] * n_layers if pattern is None else _layer_windows(r, n_layers, pattern, pattern_key)
        return [
            BlockConfig(attention=attention_config(r, d, qkv_bias=bias, o_bias=bias, window=w), ffn=[ffn])
            for w in windows
        ]

    return build


def _phi3(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """Phi-3: fused qkv and gate/up projections (the same weights as separate ones), no biases,
    Mistral-style sliding window on every layer when `sliding_window` is set."""
    attn = attention_config(r, d, qkv_bias=False, o_bias=False, window=mistral_window(r))
    return [BlockConfig(attention=attn, ffn=[dense_ffn(r)]) for _ in range(n_layers)]


def _gpt_oss(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """gpt-oss: biased attention with a learned sink logit per head, alternating 128-token sliding
    windows and full layers (layer_types), a biased softmax router and biased SwiGLU experts. The
    published checkpoints keep the experts in MXFP4: simulate them with --weight-dtype bf16,moe=mxfp4."""
    bias = r.opt_bool("attention_bias", True)
    # the router's logit bias is n_experts weights, as DeepSeek-V3's selection bias counts
    moe = _moe(r, "num_local_experts", "intermediate_size", router_bias=True, expert_bias=True)
    return [
        BlockConfig(
            attention=attention_config(r, d, qkv_bias=bias, o_bias=bias, window=w, sinks=True), ffn=[moe]
        )
        for w in _layer_windows(r, n_layers, 2, None)
    ]


def _v3_style_moe(r: Reader, n_shared: int, n_group: int | None) -> MoEConfig:
    """DeepSeek-V3's MoE as GLM-4.5 and dots.llm1 write it (each with its own defaults for the counts):
    routed experts of `moe_intermediate_size`, the shared ones fused into one MLP of n_shared x that width,
    a sigmoid router with its selection bias (e_score_correction_bias), group-limited routing."""
    return _moe(
        r,
        "n_routed_experts",
        "moe_intermediate_size",
        n_shared_experts=n_shared,
        shared_ffn=n_shared * r.need_int("moe_intermediate_size"),
        router="sigmoid",
        router_bias=True,
        **_group_limit(r, n_group),
    )


def _glm4_moe(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """GLM-4.5: biased q/k/v (`attention_bias`), never o; a query width of heads x head_dim that need not
    be hidden_size; dense layers below `first_k_dense_replace`, then MoE with one shared MLP of
    n_shared x the routed width and a sigmoid router with a selection bias (e_score_correction_bias).
    The multi-token-prediction layer (`num_nextn_predict_layers`) is not part of the decoder transformers
    runs and is left out, as are the q/k norms (norm weights)."""
    bias = r.opt_bool("attention_bias", False)
    attn = attention_config(r, d, qkv_bias=bias, o_bias=False)
    moe = _v3_style_moe(r, r.opt_int("n_shared_experts", 1) or 0, r.opt_int("n_group", 1))
    first_dense = r.opt_int("first_k_dense_replace", 1) or 0
    return _mixed_blocks(r, [attn] * n_layers, [i >= first_dense for i in range(n_layers)], moe)


def _phimoe(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """Phi-3.5-MoE: biased q/k/v/o, every layer MoE (no shared expert), the sliding window as written
    (Phi-3.5-MoE's equals its context length: full attention in effect). Not counted: its LayerNorm
    biases and the LM head's bias (`lm_head_bias`, vocab_size weights)."""
    bias = r.opt_bool("attention_bias", False)
    attn = attention_config(r, d, qkv_bias=bias, o_bias=bias, window=mistral_window(r))
    moe = _moe(r, "num_local_experts", "intermediate_size")
    return [BlockConfig(attention=attn, ffn=[moe]) for _ in range(n_layers)]


def _granitemoe(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """Granite MoE: Llama attention, every layer MoE with fused gate/up experts (the same weights as
    separate ones) of width `intermediate_size`, no shared expert; its multipliers hold no weights."""
    bias = r.opt_bool("attention_bias", False)
    attn = attention_config(r, d, qkv_bias=bias, o_bias=bias)
    moe = _moe(r, "num_local_experts", "intermediate_size")
    return [BlockConfig(attention=attn, ffn=[moe]) for _ in range(n_layers)]


def _llama4_chunks(r: Reader, n_layers: int) -> list[int | None]:
    """Per layer, the attention chunk or None (global attention). `layer_types` is authoritative when
    written; else RoPE layers (no_rope_layers[i] == 1; by default all but every
    `no_rope_layer_interval`-th, 4) attend within chunks of `attention_chunk_size` (default 8192) and
    the NoPE layers globally."""
    chunk = r.opt_int("attention_chunk_size", 8192)  # Llama4TextConfig's default
    types = r.cfg.get("layer_types")
    if types is not None:
        known = {"chunked_attention": chunk, "full_attention": None}
        if not isinstance(types, list) or len(types) != n_layers or any(t not in known for t in types):
            raise ConfigError(
                f"{r.what}: 'layer_types' must list one of {', '.join(known)} per layer ({n_layers})"
            )
        return [known[t] for t in types]
    every = r.opt_int("no_rope_layer_interval", 4) or 4
    rope = r.int_list("no_rope_layers") or [int((i + 1) % every != 0) for i in range(n_layers)]
    if len(rope) != n_layers:
        raise ConfigError(f"{r.what}: 'no_rope_layers' must have one entry per layer ({n_layers})")
    return [chunk if uses_rope else None for uses_rope in rope]


def _llama4(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """Llama 4 text decoder: chunked attention on the RoPE layers, global attention on the NoPE ones
    (weight-free L2 q/k norms); MoE layers (`moe_layers`, else every `interleave_moe_layer_step`-th) with
    a sigmoid top-k router and one always-on shared expert as wide as a routed one; the other layers a
    dense MLP of `intermediate_size_mlp`."""
    bias = r.opt_bool("attention_bias", False)
    attns = [attention_config(r, d, qkv_bias=bias, o_bias=bias, chunk=c) for c in _llama4_chunks(r, n_layers)]
    step = r.opt_int("interleave_moe_layer_step", 1) or 1
    listed = r.cfg.get("moe_layers")
    moe_layers = set(r.int_list("moe_layers")) if listed is not None else set(range(step - 1, n_layers, step))
    outside = sorted(i for i in moe_layers if not 0 <= i < n_layers)
    if outside:
        raise ConfigError(f"{r.what}: moe_layers {outside} are not layers of a {n_layers}-layer model")
    width = r.need_int("intermediate_size")
    moe = _moe(
        r, "num_local_experts", "intermediate_size", n_shared_experts=1, shared_ffn=width, router="sigmoid"
    )
    dense = None
    if any(i not in moe_layers for i in range(n_layers)):
        dense = validated(
            r,
            lambda: DenseFFNConfig(d_ff=r.need_int("intermediate_size_mlp"), activation=gated_activation(r)),
        )
    return [
        BlockConfig(attention=a, ffn=[moe if i in moe_layers else dense])  # type: ignore[list-item]
        for i, a in enumerate(attns)
    ]


def _ernie4_5_moe(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """ERNIE 4.5 MoE: q/k/v/o biased iff `use_bias`; MoE on every `moe_layer_interval`-th layer from
    `moe_layer_start_index` to `moe_layer_end_index` (default: the last), dense elsewhere; the shared
    experts are one MLP of n_shared x the routed width; a softmax router with a selection bias
    (e_score_correction_bias)."""
    bias = r.opt_bool("use_bias", False)
    attn = attention_config(r, d, qkv_bias=bias, o_bias=bias)
    n_shared = r.opt_int("moe_num_shared_experts", 2) or 0  # Ernie4_5_MoeConfig's defaults here and below
    moe = _moe(
        r,
        "moe_num_experts",
        "moe_intermediate_size",
        top_k_key="moe_k",
        n_shared_experts=n_shared,
        shared_ffn=n_shared * r.need_int("moe_intermediate_size"),
        router_bias=True,
    )
    interval = r.opt_int("moe_layer_interval", 1) or 1
    start = r.opt_int("moe_layer_start_index", 1) or 0
    end = r.opt_int("moe_layer_end_index", -1)
    last = n_layers - 1 if end is None or end < 0 else end
    sparse = [(i + 1) % interval == 0 and start <= i <= last for i in range(n_layers)]
    return _mixed_blocks(r, [attn] * n_layers, sparse, moe)


def _ernie4_5(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """ERNIE 4.5 dense (0.3B): Llama weights with an explicit head_dim, q/k/v/o and the MLP biased by
    `use_bias` (off in the release), tied embeddings by default."""
    bias = r.opt_bool("use_bias", False)
    attn = attention_config(r, d, qkv_bias=bias, o_bias=bias)
    return [BlockConfig(attention=attn, ffn=[dense_ffn(r, bias=bias)]) for _ in range(n_layers)]


def _seed_oss(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """Seed-OSS: Llama weights with q/k/v biased by `attention_bias` (on by default), o by
    `attention_out_bias` and the MLP by `mlp_bias` (both off); SeedOssConfig's 8 K/V heads of 128."""
    attn = attention_config(
        r,
        d,
        qkv_bias=r.opt_bool("attention_bias", True),
        o_bias=r.opt_bool("attention_out_bias", False),
        head_dim_default=128,
        kv_default=8,
    )
    ffn = dense_ffn(r, bias=r.opt_bool("mlp_bias", False))
    return [BlockConfig(attention=attn, ffn=[ffn]) for _ in range(n_layers)]


def _per_layer(r: Reader, key: str, n_layers: int, default: int) -> list[int]:
    """A size that may be one integer or a list with one per layer (Hunyuan's num_experts, moe_topk)."""
    value = r.cfg.get(key)
    if isinstance(value, list):
        if len(value) != n_layers or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{r.what}: '{key}' must be an integer or one integer per layer ({n_layers})")
        return list(value)
    return [r.opt_size(key, default)] * n_layers


def _hunyuan_moe(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """Hunyuan-A13B (hunyuan_v1_moe): GQA with per-head q/k norms (norm weights), every layer a MoE whose
    routed experts and one always-on shared MLP are `intermediate_size` wide, as transformers builds them
    (its per-layer `moe_intermediate_size` and `num_shared_expert` lists are not read; they agree for
    A13B); a softmax router; `num_experts` and `moe_topk` an integer or one per layer. Cross-layer KV
    sharing (`use_cla`) is refused: the native class has none."""
    if r.opt_bool("use_cla", False):
        raise ConfigError(f"{r.what}: use_cla (cross-layer KV sharing) is not modelled")
    bias = r.opt_bool("attention_bias", False)
    attn = attention_config(
        r, d, qkv_bias=bias, o_bias=bias, head_dim_keys=("head_dim", "attention_head_dim")
    )
    width = r.need_int("intermediate_size")
    act = gated_activation(r)
    shared = width if r.opt_bool("use_mixed_mlp_moe", True) else 0
    experts, top_k = _per_layer(r, "num_experts", n_layers, 1), _per_layer(r, "moe_topk", n_layers, 1)

    def moe(n: int, k: int) -> MoEConfig:
        return validated(
            r,
            lambda: MoEConfig(
                n_experts=n,
                top_k=k,
                expert_ffn=width,
                n_shared_experts=1 if shared else 0,
                shared_ffn=shared,
                activation=act,
            ),
        )

    return [BlockConfig(attention=attn, ffn=[moe(n, k)]) for n, k in zip(experts, top_k, strict=True)]


def _bailing_moe(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """Ling 2.0 (bailing_moe): fused q/k/v biased by `use_bias` or `use_qkv_bias`, o by `use_bias`,
    per-head q/k norms (norm weights); dense layers below `first_k_dense_replace`, then a MoE of
    `num_experts` experts of `moe_intermediate_size` with `num_shared_experts` shared ones of
    `moe_shared_expert_intermediate_size`, a sigmoid router with its expert bias and group-limited
    routing (`n_group`, `topk_group`)."""
    bias = r.opt_bool("use_bias", False)
    attn = attention_config(r, d, qkv_bias=bias or r.opt_bool("use_qkv_bias", False), o_bias=bias)
    width = r.need_int("moe_intermediate_size")
    n_shared = r.opt_count("num_shared_experts", 0)
    shared_width = r.opt_size("moe_shared_expert_intermediate_size", width)
    sigmoid = r.opt_str("score_function", "softmax") == "sigmoid"
    moe = _moe(
        r,
        "num_experts",
        "moe_intermediate_size",
        n_shared_experts=n_shared,
        shared_ffn=n_shared * shared_width,
        router="sigmoid" if sigmoid else "softmax",
        router_bias=r.opt_bool("moe_router_enable_expert_bias", False),
        **_group_limit(r, r.opt_int("n_group", None)),
    )
    first_dense = r.opt_count("first_k_dense_replace", 0)
    sparse = [i >= first_dense for i in range(n_layers)]
    return _mixed_blocks(r, [attn] * n_layers, sparse, moe, dense_bias=bias)  # the MLP shares the switch


def _dots1(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """dots.llm1: DeepSeek-V3's MoE layout (dense below `first_k_dense_replace`, a sigmoid router with
    its selection bias, shared experts fused into one MLP of n_shared x the routed width) under plain
    attention with per-head q/k norms (norm weights), hidden/heads per head."""
    bias = r.opt_bool("attention_bias", False)
    attn = attention_config(r, d, qkv_bias=bias, o_bias=bias)
    moe = _v3_style_moe(r, r.opt_count("n_shared_experts", 0), r.opt_int("n_group", None))
    first_dense = r.opt_count("first_k_dense_replace", 0)
    return _mixed_blocks(r, [attn] * n_layers, [i >= first_dense for i in range(n_layers)], moe)


def _minimax_m2(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """MiniMax-M2: unbiased GQA with q/k RMSNorms over the whole projected width (norm weights), full
    attention on every layer, every layer MoE with a sigmoid router and its selection bias
    (e_score_correction_bias), no shared expert. `mlp_intermediate_size` names no weights (the
    checkpoint has no dense MLP) and is not read; the multi-token-prediction modules the file lists are
    not in the published checkpoint. `attn_type_list` 0 marks MiniMax-01's lightning attention, which
    has no cost model here."""
    types = r.cfg.get("attn_type_list")
    if types is not None and (not isinstance(types, list) or len(types) != n_layers or set(types) - {1}):
        raise ConfigError(
            f"{r.what}: attn_type_list must be 1 (softmax attention) on all {n_layers} layers; lightning "
            "attention (0) has no cost model"
        )
    # MiniMaxM2Config's defaults are the 230B's: 8 K/V heads of 128
    attn = attention_config(
        r, d, qkv_bias=False, o_bias=False, window=mistral_window(r), head_dim_default=128, kv_default=8
    )
    shared = r.opt_count("shared_intermediate_size", 0)
    moe = _moe(
        r,
        "num_local_experts",
        "intermediate_size",
        n_shared_experts=1 if shared else 0,
        shared_ffn=shared,
        router="sigmoid" if r.opt_str("scoring_func", "sigmoid") == "sigmoid" else "softmax",
        router_bias=r.opt_bool("use_routing_bias", True),
    )
    return [BlockConfig(attention=attn, ffn=[moe]) for _ in range(n_layers)]


def _glm4(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """GLM-4-0414 dense: q/k/v biased by `attention_bias` (on by default), o never; fused gate/up MLP
    (the same weights as separate ones); four norms a layer (norm weights)."""
    # Glm4Config's defaults: 2 K/V heads of 128
    bias = r.opt_bool("attention_bias", True)
    attn = attention_config(r, d, qkv_bias=bias, o_bias=False, head_dim_default=128, kv_default=2)
    return [BlockConfig(attention=attn, ffn=[dense_ffn(r)]) for _ in range(n_layers)]


def _olmo3(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """OLMo 3: OLMo 2's weights (whole-width q/k norms and post-norms are norm weights) with three
    sliding-window layers per full one (`layer_types`, else every fourth layer full; window 4096 by
    default)."""
    bias = r.opt_bool("attention_bias", False)
    ffn = dense_ffn(r)
    return [
        BlockConfig(attention=attention_config(r, d, qkv_bias=bias, o_bias=bias, window=w), ffn=[ffn])
        for w in _layer_windows(r, n_layers, 4, None, window_default=4096)
    ]


def _cohere(pattern: int | None) -> Callable[[Reader, int, int], list[BlockConfig]]:
    """Command R (cohere) and Command R7B / A (cohere2): Llama weights, attention and MLP in parallel
    on one LayerNorm's output (the same weights and bytes as in sequence), tied embeddings; cohere2
    slides on three layers of four (`layer_types` or `sliding_window_pattern`). Command R+'s per-head
    q/k norms (`use_qk_norm`) are norm weights."""

    def build(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
        bias = r.opt_bool("attention_bias", False)
        windows = (
            [None] * n_layers
            if pattern is None
            else _layer_windows(r, n_layers, pattern, "sliding_window_pattern", window_default=4096)
        )
        ffn = dense_ffn(r)
        return [
            BlockConfig(
                attention=attention_config(r, d, qkv_bias=bias, o_bias=bias, window=w),
                ffn=[ffn],
                norm="layernorm",  # CohereLayerNorm: a mean-subtracting norm (weight only)
            )
            for w in windows
        ]

    return build


# families normalised by LayerNorm, model-wide (their blocks say so too)
MODEL_FIELDS: dict[str, dict[str, Any]] = {"cohere": {"norm": "layernorm"}, "cohere2": {"norm": "layernorm"}}


def _granite(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """Granite 3 dense: Llama weights with `attention_bias` and `mlp_bias`; its multipliers hold no
    weights."""
    bias = r.opt_bool("attention_bias", False)
    attn = attention_config(r, d, qkv_bias=bias, o_bias=bias)
    ffn = dense_ffn(r, bias=r.opt_bool("mlp_bias", False))
    return [BlockConfig(attention=attn, ffn=[ffn]) for _ in range(n_layers)]


def _smollm3(r: Reader, d: int, n_layers: int) -> list[BlockConfig]:
    """SmolLM3: Llama weights (4 K/V heads by default); the NoPE layers (`no_rope_layers` 0, else every
    `no_rope_layer_interval`-th) skip RoPE, which holds no weights, and slide when `use_sliding_window`
    and `sliding_window` are set, as SmolLM3Config derives `layer_types` (stated, it wins)."""
    bias = r.opt_bool("attention_bias", False)
    ffn = dense_ffn(r, bias=r.opt_bool("mlp_bias", False))
    if r.cfg.get("layer_types") is not None:
        windows = _layer_windows(r, n_layers, 1, None)
    else:
        window = r.opt_int("sliding_window", None) if r.opt_bool("use_sliding_window", False) else None
        every = r.opt_size("no_rope_layer_interval", 4)
        rope = r.int_list("no_rope_layers") or [int((i + 1) % every != 0) for i in range(n_layers)]
        if len(rope) != n_layers:
            raise ConfigError(f"{r.what}: 'no_rope_layers' must have one entry per layer ({n_layers})")
        windows = [None if uses_rope else window for uses_rope in rope]
    return [
        BlockConfig(
            attention=attention_config(r, d, qkv_bias=bias, o_bias=bias, window=w, kv_default=4), ffn=[ffn]
        )
        for w in windows
    ]


BUILDERS: dict[str, Callable[[Reader, int, int], list[BlockConfig]]] = {
    "llama": _llama,
    "mistral": _mistral,
    "mixtral": _mixtral,
    "qwen2": _qwen2,
    "qwen2_moe": _qwen2_moe,
    "qwen3": _qwen3,
    "qwen3_moe": _qwen3_moe,
    "olmoe": _olmoe,
    "deepseek_v2": _deepseek,
    "deepseek_v3": _deepseek,
    "deepseek_v32": _deepseek_v32,
    "gemma": _gemma_family(None),
    "gemma2": _gemma_family(2),
    "gemma3_text": _gemma_family(6, "sliding_window_pattern"),
    "phi3": _phi3,
    "olmo2": _llama,  # Llama weights; its q/k norms and post-norms are norm weights only
    "gpt_oss": _gpt_oss,
    "glm4_moe": _glm4_moe,
    "phimoe": _phimoe,
    "granitemoe": _granitemoe,
    "llama4_text": _llama4,
    "ernie4_5_moe": _ernie4_5_moe,
    "ernie4_5": _ernie4_5,
    "seed_oss": _seed_oss,
    "hunyuan_v1_moe": _hunyuan_moe,
    "bailing_moe": _bailing_moe,
    "dots1": _dots1,
    "minimax_m2": _minimax_m2,
    "glm4": _glm4,
    "olmo3": _olmo3,
    "cohere": _cohere(None),
    "cohere2": _cohere(4),
    "granite": _granite,
    "smollm3": _smollm3,
}

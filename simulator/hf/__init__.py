"""Hugging Face `config.json` -> ModelConfig, for the model families we can model exactly.

Each rule below encodes a config-ingestion bug seen in other tools (shared/docs/prior-art.md 6.9, 10.12):
`head_dim` is read from the file when present (never assumed hidden/heads), GQA comes from
`num_key_value_heads`, MLA keeps its latent ranks, shared experts and interleaved dense/MoE layers follow the
family's own layer rule, and tied embeddings are read, not guessed. Defaults for absent keys are those of the
transformers config class of that family; each default used is recorded in the model's provenance.

The families live in `attention_families` and `hybrid_families`; `reader` holds the typed access and the
layer builders they share.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from simulator.config import BlockConfig, ModelConfig, Source, describe_validation_error
from simulator.errors import ConfigError
from simulator.hf import attention_families, classic_families, hybrid_families
from simulator.hf.reader import Reader

# `architectures[0]` -> model_type, for config files that lack `model_type`.
_ARCH_TO_TYPE: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "MixtralForCausalLM": "mixtral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen2MoeForCausalLM": "qwen2_moe",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "OlmoeForCausalLM": "olmoe",
    "DeepseekV2ForCausalLM": "deepseek_v2",
    "DeepseekV3ForCausalLM": "deepseek_v3",
    "DeepseekV32ForCausalLM": "deepseek_v32",
    "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3_text",
    "Gemma3ForConditionalGeneration": "gemma3",
    "Phi3ForCausalLM": "phi3",
    "Olmo2ForCausalLM": "olmo2",
    "GptOssForCausalLM": "gpt_oss",
    "Glm4MoeForCausalLM": "glm4_moe",
    "PhiMoEForCausalLM": "phimoe",
    "GraniteMoeForCausalLM": "granitemoe",
    "Llama4ForConditionalGeneration": "llama4",
    "Llama4ForCausalLM": "llama4_text",
    "Ernie4_5_MoeForCausalLM": "ernie4_5_moe",
    "Qwen3NextForCausalLM": "qwen3_next",
    "JambaForCausalLM": "jamba",
    "MambaForCausalLM": "mamba",
    "FalconMambaForCausalLM": "falcon_mamba",
    "Mamba2ForCausalLM": "mamba2",
    "NemotronHForCausalLM": "nemotron_h",
    "GraniteMoeHybridForCausalLM": "granitemoehybrid",
    "BambaForCausalLM": "bamba",
    "KimiLinearForCausalLM": "kimi_linear",
    "FalconH1ForCausalLM": "falcon_h1",
    "MiniMaxForCausalLM": "minimax",
    "MiniMaxText01ForCausalLM": "minimax_text_01",
    "MiniMaxM1ForCausalLM": "minimax_m1",
    "MiniMaxM2ForCausalLM": "minimax_m2",
    "Glm4ForCausalLM": "glm4",
    "Olmo3ForCausalLM": "olmo3",
    "CohereForCausalLM": "cohere",
    "Cohere2ForCausalLM": "cohere2",
    "GraniteForCausalLM": "granite",
    "SmolLM3ForCausalLM": "smollm3",
    "GPT2LMHeadModel": "gpt2",
    "GPTNeoXForCausalLM": "gpt_neox",
    "FalconForCausalLM": "falcon",
    "Starcoder2ForCausalLM": "starcoder2",
    "Mistral3ForConditionalGeneration": "mistral3",
    "Qwen3VLForConditionalGeneration": "qwen3_vl",
    "Qwen3VLMoeForConditionalGeneration": "qwen3_vl_moe",
    "Qwen2VLForConditionalGeneration": "qwen2_vl",
    "Qwen2_5_VLForConditionalGeneration": "qwen2_5_vl",
    "Glm4vMoeForConditionalGeneration": "glm4v_moe",
    "Glm4vForConditionalGeneration": "glm4v",
    "Ernie4_5ForCausalLM": "ernie4_5",
    "Ernie4_5_ForCausalLM": "ernie4_5",
    "SeedOssForCausalLM": "seed_oss",
    "HunYuanMoEV1ForCausalLM": "hunyuan_v1_moe",
    "BailingMoeV2ForCausalLM": "bailing_moe",
    "Dots1ForCausalLM": "dots1",
    "PhiForCausalLM": "phi",
    "StableLmForCausalLM": "stablelm",
    "OPTForCausalLM": "opt",
    "BloomForCausalLM": "bloom",
    "GPTJForCausalLM": "gptj",
    "MPTForCausalLM": "mpt",
    "MptForCausalLM": "mpt",
}

# families whose transformers config class ties the LM head to the embedding by default (Gemma's;
# Ernie4_5_MoeConfig's, whose defaults are ERNIE-4.5-21B-A3B; Cohere's and SmolLM3's; and MambaConfig /
# FalconMambaConfig, GPT2Config, FalconConfig and Starcoder2Config, which leave PretrainedConfig's True in
# place)
_TIED_BY_DEFAULT = {
    "gemma",
    "gemma2",
    "gemma3_text",
    "ernie4_5_moe",
    "mamba",
    "falcon_mamba",
    "cohere",
    "cohere2",
    "smollm3",
    "ernie4_5",
    "mpt",
    "opt",
    "bloom",
    "gpt2",
    "falcon",
    "starcoder2",
}

_BUILDERS: dict[str, Callable[[Reader, int, int], list[BlockConfig]]] = {
    **attention_families.BUILDERS,
    **classic_families.BUILDERS,
    **hybrid_families.BUILDERS,
}
# what a family holds beside its blocks (LayerNorm, a learned position table, a biased LM head)
_MODEL_FIELDS: dict[str, dict[str, Any]] = {
    **attention_families.MODEL_FIELDS,
    **classic_families.MODEL_FIELDS,
}
# image-text families whose `text_config` holds the decoder, and that decoder's model_type
_TEXT_DECODER_OF: dict[str, str] = {
    "gemma3": "gemma3_text",
    "llama4": "llama4_text",
    "mistral3": "mistral",  # Mistral Small 3.1 / 3.2
    "qwen3_vl": "qwen3",
    "qwen3_vl_moe": "qwen3_moe",  # its text decoder has Qwen3-MoE's weights and layer rule
    "qwen2_vl": "qwen2",  # Qwen2-VL / Qwen2.5-VL: text keys at the top level in the published files
    "qwen2_5_vl": "qwen2",
    "glm4v": "glm4",  # GLM-4.1V
    "glm4v_moe": "glm4_moe",  # GLM-4.5V
}
# the text_config model_types these wrappers name, read as the decoder family they are
_TEXT_DECODER_ALIASES: dict[str, str] = {
    "gemma3_text": "gemma3_text",
    "llama4_text": "llama4_text",
    "qwen3_vl_text": "qwen3",
    "qwen3_vl_moe_text": "qwen3_moe",
    "qwen2_vl_text": "qwen2",
    "qwen2_5_vl_text": "qwen2",
    "glm4v_text": "glm4",
    "glm4v_moe_text": "glm4_moe",
}


def _text_decoder_type(inner: Any, outer: str, what: str) -> str:
    """The family of an image-text model's text_config: its own model_type where it names one (as
    transformers builds it), else the wrapper's default decoder; a type we cannot read is refused rather
    than read as the default."""
    if inner is None:
        return _TEXT_DECODER_OF[outer]
    if isinstance(inner, str) and (inner in _TEXT_DECODER_ALIASES or inner in _BUILDERS):
        return _TEXT_DECODER_ALIASES.get(inner, inner)
    raise ConfigError(f"{what}: the text decoder of {outer} is model_type {inner!r}, which is not supported")


# families whose config class supplies a vocab_size default that hub configs may omit
_VOCAB_DEFAULTS: dict[str, int] = {"gemma3_text": 262_208}


# older spellings that a family's config class maps onto the standard keys (its `attribute_map`);
# read only where the standard key is absent
_KEY_ALIASES: dict[str, dict[str, str]] = {
    "gpt2": {
        "hidden_size": "n_embd",
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "max_position_embeddings": "n_positions",
        "intermediate_size": "n_inner",
    },
    # BloomConfig reads n_layer / n_head and takes n_embed for hidden_size
    "bloom": {"hidden_size": "n_embed", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head"},
    "gptj": {
        "hidden_size": "n_embd",
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "max_position_embeddings": "n_positions",
        "intermediate_size": "n_inner",
    },
    "mpt": {
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads",
        "max_position_embeddings": "max_seq_len",
    },
    # Kimi Linear's context length (KimiLinearConfig maps max_position_embeddings to it)
    "kimi_linear": {"max_position_embeddings": "model_max_length"},
}


def _with_standard_keys(cfg: dict[str, Any], model_type: str) -> dict[str, Any]:
    out = dict(cfg)
    for key, alias in _KEY_ALIASES.get(model_type, {}).items():
        if out.get(key) is None and alias in cfg:
            out[key] = cfg[alias]
    return out


def _stated_layer_count(r: Reader) -> int:
    return r.need_int("num_hidden_layers")


# families whose layer count comes from their layer pattern rather than num_hidden_layers alone
_LAYER_COUNT: dict[str, Callable[[Reader], int]] = dict(hybrid_families.LAYER_COUNT)


def model_type_of(cfg: dict[str, Any]) -> str | None:
    """The family named by a config.json: `model_type` when we read it, else the first known
    `architectures` entry (remote-code models name their own type but reuse a transformers class:
    Kimi K2 is "kimi_k2" with DeepseekV3ForCausalLM), else the unknown `model_type` (or None)."""
    model_type = cfg.get("model_type")
    named = model_type if isinstance(model_type, str) and model_type else None
    if named in _BUILDERS or named in _TEXT_DECODER_OF:
        return named
    architectures = cfg.get("architectures")
    for arch in architectures if isinstance(architectures, list) else []:
        if isinstance(arch, str) and arch in _ARCH_TO_TYPE:
            return _ARCH_TO_TYPE[arch]
    return named


def is_hf_config(raw: dict[str, Any]) -> bool:
    """A Hugging Face config carries `model_type` or `architectures`; our own schema has neither."""
    return "model_type" in raw or "architectures" in raw


def from_hf_config(cfg: dict[str, Any], name: str) -> ModelConfig:
    """Translate a Hugging Face `config.json` dict into a validated ModelConfig."""
    what = f"hf config {name}"
    if not isinstance(cfg, dict):
        raise ConfigError(f"{what}: expected a JSON object, got {type(cfg).__name__}")
    model_type = model_type_of(cfg)
    decoder_of = ""
    if model_type in _TEXT_DECODER_OF and not isinstance(cfg.get("text_config"), dict):
        # Qwen2-VL / Qwen2.5-VL as published: the decoder's keys at the top level beside vision_config
        decoder_of = f", the text decoder of {model_type}"
        model_type = _TEXT_DECODER_OF[model_type]
    elif model_type in _TEXT_DECODER_OF and isinstance(cfg.get("text_config"), dict):
        # image-text models (Gemma 3 4B and up, Llama 4, Mistral Small 3.1, Qwen3-VL): the decoder is
        # their text_config; the vision tower is left out. The outer config decides the LM head's tie
        # where the text_config does not say (Qwen3-VL's text class would default to tied; its
        # checkpoint is not)
        outer = cfg
        cfg = {**cfg["text_config"]}
        if cfg.get("tie_word_embeddings") is None and outer.get("tie_word_embeddings") is not None:
            cfg["tie_word_embeddings"] = outer["tie_word_embeddings"]
        decoder_of = f", the text decoder of {model_type}"
        model_type = _text_decoder_type(cfg.get("model_type"), model_type, what)
    builder = _BUILDERS.get(model_type or "")
    if builder is None:
        supported = ", ".join(sorted(_BUILDERS))
        shown = repr(model_type) if model_type else f"unknown (architectures={cfg.get('architectures')!r})"
        raise ConfigError(f"{what}: unsupported model_type {shown}; supported: {supported}")
    assert model_type is not None
    r = Reader(_with_standard_keys(cfg, model_type), what)
    d_model = r.need_int("hidden_size")
    n_layers = _LAYER_COUNT.get(model_type, _stated_layer_count)(r)
    per_layer = builder(r, d_model, n_layers)
    blocks = _group(per_layer)
    fields = _MODEL_FIELDS.get(model_type, {})

    vocab_size = (
        r.need_int("vocab_size")
        if model_type not in _VOCAB_DEFAULTS
        else r.opt_int("vocab_size", _VOCAB_DEFAULTS[model_type])
    )
    assert vocab_size is not None
    # the transformers config classes pass tie_word_embeddings=False, except Gemma's (True)
    tie = r.opt_bool("tie_word_embeddings", model_type in _TIED_BY_DEFAULT)
    max_positions = r.stated_int("max_position_embeddings")
    provenance = {
        f"hf.{key}": Source(
            tag="code", source=f"absent from config.json; transformers {model_type} default {value!r}"
        )
        for key, value in sorted(r.defaults.items())
    }
    try:
        return ModelConfig(
            name=name,
            description=f"from a Hugging Face config.json (model_type {model_type}"
            + (decoder_of or _read_as(cfg, model_type))
            + ")"
            + _quantization_note(cfg),
            d_model=d_model,
            vocab_size=vocab_size,
            tie_embeddings=tie,
            max_positions=max_positions,
            blocks=blocks,
            norm=fields.get("norm", "rmsnorm"),
            learned_positions=fields.get("learned_positions", False),
            position_offset=fields.get("position_offset", 0),
            head_bias=fields.get("head_bias", False),
            sources=[Source(tag="code", source=f"Hugging Face config.json, model_type {model_type}")],
            provenance=provenance,
        )
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, what)) from exc


# ------------------------------------------------------------------------------------------- helpers


def _read_as(cfg: dict[str, Any], model_type: str) -> str:
    """ ", named kimi_k2" where the config's own model_type was read through its architectures entry."""
    named = cfg.get("model_type")
    return f", named {named}" if isinstance(named, str) and named and named != model_type else ""


def _quantization_note(cfg: dict[str, Any]) -> str:
    """What the published checkpoint is quantised with, so the user can pick matching --weight-dtype."""
    quant = cfg.get("quantization_config")
    method = quant.get("quant_method") if isinstance(quant, dict) else None
    return f"; checkpoint quantised with {method}" if isinstance(method, str) and method else ""


def _group(per_layer: list[BlockConfig]) -> list[BlockConfig]:
    """Merge runs of identical consecutive blocks into one BlockConfig with `repeat`."""
    groups: list[tuple[BlockConfig, int]] = []
    for block in per_layer:
        if groups and groups[-1][0] == block:
            groups[-1] = (block, groups[-1][1] + 1)
        else:
            groups.append((block, 1))
    return [block.model_copy(update={"repeat": n}) for block, n in groups]

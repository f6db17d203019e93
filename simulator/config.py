"""Validated schemas for models, hardware and workloads.

One model config drives the analytic simulator, the reference PyTorch modules and the profiler, so every
shape lives here once. Every number that came from somewhere carries its provenance.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    ValidationInfo,
    field_validator,
    model_validator,
)

# Every size, count and degree: at least 1 and at most 2^40 (a trillion), so a unit slip such as 1e30
# is refused with its field's name instead of flowing into astronomically large, meaningless counts.
MAX_SIZE = 2**40
PositiveInt = Annotated[int, Field(gt=0, le=MAX_SIZE)]

# torch dtype names as bundles record them (and our own names) -> simulator DType
BUNDLE_DTYPES: dict[str, str] = {
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

DType = Literal["fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4", "mxfp4", "nvfp4"]
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "tf32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
    # block-scaled 4-bit formats, scales included: OCP MX (32 values share an 8-bit E8M0 scale) and
    # NVFP4 (16 values share an 8-bit E4M3 scale; its one FP32 scale per tensor is negligible)
    "mxfp4": (4 + 8 / 32) / 8,
    "nvfp4": (4 + 8 / 16) / 8,
}
# layer kinds, as the simulator's `kind` column names them (per-kind weight dtypes are keyed by these)
LayerKind = Literal[
    "attention",
    "mamba",
    "mamba2",
    "gated_deltanet",
    "lightning",
    "dense",
    "moe",
    "pkm",
    "peer",
    "memory_plus",
    "ultramem",
    "ultramemv2",
    "embedding",
    "head",
]

# datasheet/measured/derived for hardware; paper/code/derived/secondary/recalled mirror the tags
# [Q]/[C]/[D]/[S]/[R] of docs/cost-reference.md; "user" marks a number typed in by hand.
Tag = Literal["datasheet", "measured", "derived", "paper", "code", "secondary", "recalled", "user"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(Strict):
    tag: Tag
    source: str = ""


class Quantity(Strict):
    """A hardware number with where it came from."""

    value: PositiveFloat
    tag: Tag
    source: str = ""


# --------------------------------------------------------------------------------------------- hardware


class HardwareConfig(Strict):
    name: str
    description: str = ""
    peak_flops: dict[DType, Quantity] = Field(description="dense (no structured sparsity) FLOP/s per dtype")
    hbm_bandwidth: Quantity = Field(description="bytes/s")
    hbm_capacity: Quantity = Field(description="bytes")
    l2_bytes: Quantity
    interconnect_bandwidth: Quantity | None = Field(None, description="bytes/s per direction per device")
    sustained_bandwidth_fraction: Quantity | None = Field(
        None, description="achievable fraction of hbm_bandwidth for streaming kernels"
    )
    kernel_floor_s: Quantity | None = Field(
        None,
        description="seconds a kernel takes that moves almost nothing (launch ramp and tail): the fixed "
        "cost per kernel of the op-level time estimate",
    )

    @model_validator(mode="after")
    def _has_bf16_or_fp16(self) -> HardwareConfig:
        if not self.peak_flops:
            raise ValueError("peak_flops needs at least one dtype")
        return self

    def flops_for(self, dtype: str) -> float:
        """Peak FLOP/s for a compute dtype, falling back to the nearest wider type the chip has."""
        for candidate in (dtype, *_FLOPS_FALLBACK.get(dtype, ())):
            if candidate in self.peak_flops:
                return self.peak_flops[candidate].value
        raise ValueError(f"hardware {self.name!r} lists no peak FLOP/s for {dtype} or a wider type")


_FLOPS_FALLBACK: dict[str, tuple[str, ...]] = {
    "mxfp4": ("nvfp4", "fp8", "fp16", "bf16"),
    "nvfp4": ("mxfp4", "fp8", "fp16", "bf16"),
    "int4": ("int8", "fp8", "fp16", "bf16"),
    "int8": ("fp8", "fp16", "bf16"),
    "fp8": ("fp16", "bf16"),
    "fp16": ("bf16",),
    "bf16": ("fp16",),
    "tf32": ("fp32",),
    "fp32": ("tf32",),
}

# ------------------------------------------------------------------------------------------------ model


class AttentionConfig(Strict):
    """Self-attention with a KV cache. MHA/GQA/MQA share one shape; MLA caches a compressed latent."""

    kind: Literal["mha", "gqa", "mqa", "mla"]
    n_heads: PositiveInt
    n_kv_heads: PositiveInt | None = None
    head_dim: PositiveInt | None = Field(None, description="per-head q/k dim; MLA: qk_nope + qk_rope")
    qkv_bias: bool = False
    o_bias: bool = False
    sliding_window: PositiveInt | None = Field(None, description="attend to at most this many recent keys")
    attention_chunk: PositiveInt | None = Field(
        None, description="chunked local attention (Llama 4): a query sees only the keys of its own chunk"
    )
    sinks: bool = Field(False, description="a learned logit per head in the softmax denominator (gpt-oss)")
    output_gate: bool = Field(
        False,
        description="a sigmoid gate per output element, projected from x with the queries (Qwen3-Next)",
    )
    # MLA (DeepSeek-V2/V3)
    q_lora_rank: PositiveInt | None = None
    kv_lora_rank: PositiveInt | None = None
    qk_nope_head_dim: PositiveInt | None = None
    qk_rope_head_dim: PositiveInt | None = None
    v_head_dim: PositiveInt | None = None
    # DeepSeek Sparse Attention (DeepSeek-V3.2): a lightning indexer scores every cached token and each
    # query attends over the index_topk best only
    index_topk: PositiveInt | None = Field(
        None, description="tokens each query attends over, picked by the lightning indexer (DSA)"
    )
    index_n_heads: PositiveInt | None = Field(None, description="the indexer's query heads")
    index_head_dim: PositiveInt | None = Field(
        None, description="the indexer's key width: one key per token, cached in fp8 with a scale"
    )

    @model_validator(mode="after")
    def _check(self) -> AttentionConfig:
        if self.sliding_window is not None and self.attention_chunk is not None:
            raise ValueError("sliding_window and attention_chunk exclude each other: choose one")
        index = (self.index_topk, self.index_n_heads, self.index_head_dim)
        if any(v is not None for v in index):
            if any(v is None for v in index):
                raise ValueError("sparse attention needs index_topk, index_n_heads and index_head_dim")
            if self.kind != "mla" or self.sliding_window is not None or self.attention_chunk is not None:
                raise ValueError("sparse attention (index_topk) is modelled for mla without window or chunks")
        if self.kind == "mla":
            if self.sinks or self.output_gate:
                raise ValueError("attention sinks and output gates are modelled for mha/gqa/mqa, not mla")
            need = ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
            missing = [f for f in need if getattr(self, f) is None]
            if missing:
                raise ValueError(f"MLA attention needs {', '.join(missing)}")
            return self
        if self.head_dim is None:
            raise ValueError("head_dim is required (explicit, not hidden/heads)")
        kv = self.kv_heads
        if self.n_heads % kv:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={kv}")
        if self.kind == "mha" and kv != self.n_heads:
            raise ValueError(f"mha needs n_kv_heads == n_heads, got {kv} != {self.n_heads}")
        if self.kind == "mqa" and kv != 1:
            raise ValueError(f"mqa needs n_kv_heads == 1, got {kv}")
        return self

    @property
    def kv_heads(self) -> int:
        if self.n_kv_heads is not None:
            return self.n_kv_heads
        return 1 if self.kind == "mqa" else self.n_heads

    @property
    def index_key_bytes(self) -> int:
        """Bytes of the indexer's cached key per token (0 without sparse attention): fp8 elements and a
        float32 scale per 128 of them, as DeepSeek's kernels and vLLM store it, whatever --kv-dtype."""
        if self.index_head_dim is None:
            return 0
        return self.index_head_dim + 4 * -(-self.index_head_dim // 128)

    @property
    def kv_elements_per_token(self) -> int:
        """Cached elements per token per layer (cost-reference section 10.1)."""
        if self.kind == "mla":
            assert self.kv_lora_rank is not None and self.qk_rope_head_dim is not None
            return self.kv_lora_rank + self.qk_rope_head_dim
        assert self.head_dim is not None
        return 2 * self.kv_heads * self.head_dim


class _Recurrent(Strict):
    """A token mixer with a fixed-size state per sequence instead of a KV cache that grows: a decode step
    reads and rewrites the whole state; a prefill writes it once at the end (and reads it first after a
    cached prefix). The state also holds the last d_conv - 1 inputs of the short causal convolution."""

    d_conv: PositiveInt = Field(4, description="kernel width of the depthwise causal convolution")
    conv_bias: bool = True
    proj_bias: bool = Field(False, description="biases on the input and output projections")
    state_dtype: DType | None = Field(
        None,
        description="dtype the recurrent state is cached in (None: the activation dtype, as vLLM's "
        "mamba_ssm_cache_dtype auto keeps it in the model dtype)",
    )


class MambaConfig(_Recurrent):
    """Mamba (Gu & Dao 2023): selective scan over d_inner channels, each with a d_state state (Jamba,
    Falcon-Mamba). x_proj gives the per-token step size (through a rank-dt_rank projection), B and C."""

    kind: Literal["mamba"] = "mamba"
    d_inner: PositiveInt = Field(description="expand x d_model")
    d_state: PositiveInt = 16
    dt_rank: PositiveInt

    @property
    def state_elements(self) -> int:
        return self.d_inner * self.d_state

    @property
    def conv_channels(self) -> int:
        return self.d_inner


class Mamba2Config(_Recurrent):
    """Mamba-2 (Dao & Gu 2024, state-space duality): n_heads heads of head_dim channels, a scalar decay
    per head, B and C shared by the heads of each of n_groups groups; prefill runs the chunked (SSD) form."""

    kind: Literal["mamba2"] = "mamba2"
    n_heads: PositiveInt
    head_dim: PositiveInt
    d_state: PositiveInt = 128
    n_groups: PositiveInt = 1
    chunk_size: PositiveInt = Field(256, description="SSD chunk length of the prefill kernels")

    @model_validator(mode="after")
    def _groups_divide_heads(self) -> Mamba2Config:
        if self.n_heads % self.n_groups:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_groups={self.n_groups}")
        return self

    @property
    def d_inner(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def state_elements(self) -> int:
        return self.n_heads * self.head_dim * self.d_state

    @property
    def conv_channels(self) -> int:
        return self.d_inner + 2 * self.n_groups * self.d_state


class GatedDeltaNetConfig(_Recurrent):
    """Gated DeltaNet (Yang et al. 2025; Qwen3-Next's linear attention): per value head a head_k_dim x
    head_v_dim state, decayed and corrected by the delta rule each token; key heads may be shared by
    several value heads; prefill runs the chunked WY form."""

    kind: Literal["gated_deltanet"] = "gated_deltanet"
    n_k_heads: PositiveInt
    n_v_heads: PositiveInt
    head_k_dim: PositiveInt
    head_v_dim: PositiveInt
    chunk_size: PositiveInt = Field(64, description="chunk length of the prefill kernels")
    conv_bias: bool = False
    gate_rank: PositiveInt | None = Field(
        None,
        description="Kimi Delta Attention (Kimi Linear): a decay per key channel and a sigmoid output "
        "gate, each projected through this rank, in place of Gated DeltaNet's per-head decay and z",
    )

    @model_validator(mode="after")
    def _k_heads_divide_v_heads(self) -> GatedDeltaNetConfig:
        if self.n_v_heads % self.n_k_heads:
            raise ValueError(f"n_v_heads={self.n_v_heads} is not a multiple of n_k_heads={self.n_k_heads}")
        if self.gate_rank is not None and self.n_v_heads != self.n_k_heads:
            raise ValueError("Kimi Delta Attention (gate_rank) has as many key heads as value heads")
        return self

    @property
    def key_dim(self) -> int:
        return self.n_k_heads * self.head_k_dim

    @property
    def value_dim(self) -> int:
        return self.n_v_heads * self.head_v_dim

    @property
    def d_inner(self) -> int:
        return self.value_dim

    @property
    def state_elements(self) -> int:
        return self.n_v_heads * self.head_k_dim * self.head_v_dim

    @property
    def conv_channels(self) -> int:
        return 2 * self.key_dim + self.value_dim


class LightningAttentionConfig(_Recurrent):
    """Lightning attention (MiniMax-01 / MiniMax-M1): linear attention with a fixed decay per head (ALiBi
    slopes, no weights), per head a head_dim x head_dim state, S = lambda S + k v^T and o = q S; q, k, v
    from one projection through SiLU, no convolution; the output RMSNorm'd and gated by sigmoid(W_g x).
    Prefill runs the blocked form over `chunk_size` tokens."""

    kind: Literal["lightning"] = "lightning"
    n_heads: PositiveInt
    head_dim: PositiveInt
    chunk_size: PositiveInt = Field(256, description="block length of the prefill kernels (block_size)")
    d_conv: PositiveInt = Field(1, description="no convolution: its state holds no inputs")
    conv_bias: bool = False

    @property
    def d_inner(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def state_elements(self) -> int:
        return self.n_heads * self.head_dim * self.head_dim

    @property
    def conv_channels(self) -> int:
        return 0


RecurrentMixer = MambaConfig | Mamba2Config | GatedDeltaNetConfig | LightningAttentionConfig
RECURRENT_KINDS: frozenset[str] = frozenset({"mamba", "mamba2", "gated_deltanet", "lightning"})
Mixer = Annotated[
    AttentionConfig | MambaConfig | Mamba2Config | GatedDeltaNetConfig | LightningAttentionConfig,
    Field(discriminator="kind"),
]


Activation = Literal["gelu", "relu", "silu", "swiglu", "geglu"]
GATED: frozenset[str] = frozenset({"swiglu", "geglu"})


class DenseFFNConfig(Strict):
    kind: Literal["dense"] = "dense"
    d_ff: PositiveInt
    activation: Activation = "swiglu"
    bias: bool = False


class MoEConfig(Strict):
    kind: Literal["moe"] = "moe"
    n_experts: PositiveInt
    top_k: PositiveInt
    expert_ffn: PositiveInt
    n_shared_experts: Annotated[int, Field(ge=0)] = 0
    shared_ffn: Annotated[int, Field(ge=0)] = Field(
        0, description="total intermediate width of shared experts"
    )
    activation: Activation = "swiglu"
    router: Literal["softmax", "sigmoid"] = "softmax"
    router_bias: bool = Field(
        False, description="per-expert selection bias (DeepSeek-V3) or logit bias (gpt-oss)"
    )
    expert_bias: bool = Field(False, description="biases on the experts' projections (gpt-oss)")
    shared_gate: bool = Field(
        False,
        description="a sigmoid gate (one d-vector) scales the shared experts' output (Qwen2-MoE, Qwen3-Next)",
    )
    n_groups: PositiveInt | None = Field(None, description="node-limited routing groups (DeepSeek-V3)")
    topk_groups: PositiveInt | None = None

    @field_validator("top_k")
    @classmethod
    def _k_fits(cls, v: int, info: ValidationInfo) -> int:
        return _not_above(v, info, "top_k", "n_experts")

    @model_validator(mode="after")
    def _check(self) -> MoEConfig:
        if (self.n_shared_experts == 0) != (self.shared_ffn == 0):
            raise ValueError("n_shared_experts and shared_ffn must both be zero or both positive")
        if self.shared_gate and not self.shared_ffn:
            raise ValueError("shared_gate needs shared experts (shared_ffn > 0)")
        if self.n_groups is not None and self.n_experts % self.n_groups:
            raise ValueError(f"n_experts={self.n_experts} is not a multiple of n_groups={self.n_groups}")
        if self.topk_groups is not None and self.topk_groups > (self.n_groups or 1):
            raise ValueError(f"topk_groups={self.topk_groups} exceeds n_groups={self.n_groups}")
        return self


class _ProductKeyTable(Strict):
    """A table of n_keys^2 rows addressed by product keys; each of `heads` picks top_k rows."""

    n_keys: PositiveInt = Field(description="sub-keys per side; rows = n_keys^2")
    heads: PositiveInt
    top_k: PositiveInt

    @field_validator("top_k")
    @classmethod
    def _k_fits(cls, v: int, info: ValidationInfo) -> int:
        # top-k over each product-key side cannot pick more than that side has
        return _not_above(v, info, "top_k", "n_keys")

    @property
    def rows(self) -> int:
        return self.n_keys**2


class PKMConfig(_ProductKeyTable):
    """Product-key memory (Lample et al. 2019): H heads, each picks top_k of n_keys^2 value rows."""

    kind: Literal["pkm"] = "pkm"
    key_dim: PositiveInt = Field(description="query dim per head (both halves together)")
    value_dim: PositiveInt | None = Field(None, description="defaults to d_model")
    shared_table: str | None = Field(None, description="layers naming the same table share its values")
    query_batchnorm: bool = False

    @model_validator(mode="after")
    def _check(self) -> PKMConfig:
        if self.key_dim % 2:
            raise ValueError(f"key_dim={self.key_dim} must be even (two halves)")
        return self


class PEERConfig(_ProductKeyTable):
    """PEER (He 2024): n_keys^2 single-neuron experts (u_i, v_i), product-key retrieval per head."""

    kind: Literal["peer"] = "peer"
    query_dim: PositiveInt = Field(description="per-half query dim d_q")
    activation: Activation = "gelu"
    shared_table: str | None = None


class MemoryPlusConfig(_ProductKeyTable):
    """Memory+ (Berges et al. 2024): PKM lookup into a (shared) table, SiLU-gated, output projection."""

    kind: Literal["memory_plus"] = "memory_plus"
    key_dim: PositiveInt
    value_dim: PositiveInt | None = Field(None, description="defaults to d_model (the released code)")
    shared_table: str | None = "memory"
    gated: bool = Field(True, description="swilu: bag * SiLU(W_1 x) then W_o")


class _TuckerTable(Strict):
    """Tucker-decomposed product-key retrieval (TDQKR) over knum^2 rows: UltraMem and UltraMemV2."""

    knum: PositiveInt = Field(description="sub-keys per side; rows = knum^2")
    key_dim: PositiveInt = Field(description="D_k per side")
    rank: PositiveInt = Field(2, description="Tucker rank r")
    cores: PositiveInt = Field(2, description="multi-core scoring c")
    top_m: PositiveInt
    value_dim: PositiveInt

    @field_validator("top_m")
    @classmethod
    def _m_fits(cls, v: int, info: ValidationInfo) -> int:
        # top-m over each side cannot pick more than that side has
        return _not_above(v, info, "top_m", "knum")

    @property
    def rows(self) -> int:
        return self.knum**2


class UltraMemConfig(_TuckerTable):
    """UltraMem (Huang et al., ICLR 2025): TDQKR, implicit value expansion, multi-core scoring."""

    kind: Literal["ultramem"] = "ultramem"
    heads: PositiveInt = 2
    row_col_top: PositiveInt | None = Field(None, description="top rows/cols before the grid; default top_m")
    expansion: PositiveInt = Field(4, description="implicit value expansion E")
    skip_span: Annotated[int, Field(ge=0)] = Field(0, description="output added this many blocks later")

    @model_validator(mode="after")
    def _check(self) -> UltraMemConfig:
        if self.m_rc > self.keys_per_side:
            raise ValueError(f"row_col_top={self.m_rc} exceeds the keys per side ({self.keys_per_side})")
        return self

    @property
    def m_rc(self) -> int:
        return self.row_col_top or self.top_m

    @property
    def keys_per_side(self) -> int:
        return int(round(math.sqrt(self.expansion) * self.knum))


class UltraMemV2Config(_TuckerTable):
    """UltraMemV2 (ICLR 2026): pre-value rows, one value projector, memory layer in every block."""

    kind: Literal["ultramemv2"] = "ultramemv2"
    heads: PositiveInt = 1
    row_col_top: PositiveInt | None = Field(None, description="m_rc; the paper caps it at 128")
    pre_value_dim: PositiveInt
    share_ratio: PositiveFloat | None = Field(
        None, description="ring-window sharing: layer window = share_ratio * table rows (None: knum^2)"
    )
    shared_table: str | None = Field("values", description="one table of knum^2 * L_m rows for the model")

    @model_validator(mode="after")
    def _check(self) -> UltraMemV2Config:
        if self.share_ratio is not None and self.share_ratio > 1:
            raise ValueError(f"share_ratio={self.share_ratio} must be at most 1")
        return self

    @property
    def m_rc(self) -> int:
        return self.row_col_top or min(self.top_m, 128)

    def keys_per_side(self, memory_layers: int) -> int:
        """n_l: floor(sqrt(share_ratio * L_m) * knum) with ring sharing, else knum (cost-ref 9.2)."""
        if self.share_ratio is None:
            return self.knum
        return int(math.floor(math.sqrt(self.share_ratio * memory_layers) * self.knum))

    def window_rows(self, memory_layers: int) -> int:
        return self.keys_per_side(memory_layers) ** 2


FFNLayer = Annotated[
    DenseFFNConfig
    | MoEConfig
    | PKMConfig
    | PEERConfig
    | MemoryPlusConfig
    | UltraMemConfig
    | UltraMemV2Config,
    Field(discriminator="kind"),
]
MEMORY_KINDS: frozenset[str] = frozenset({"pkm", "peer", "memory_plus", "ultramem", "ultramemv2"})


class BlockConfig(Strict):
    """`repeat` identical transformer blocks: a token mixer (attention, or a recurrent mixer such as
    Mamba or Gated DeltaNet) then FFN-position layers. Hybrid stacks (Nemotron-H) also have blocks with
    only a mixer or only an FFN; pure state-space models have no FFN."""

    repeat: PositiveInt = 1
    attention: Mixer | None = Field(None, description="the token mixer; None for an FFN-only block")
    parallel_mixer: Mixer | None = Field(
        None,
        description="a second token mixer on the same normed input, its output added beside the first's "
        "(Falcon-H1: Mamba-2 beside attention)",
    )
    ffn: list[FFNLayer] = Field(default_factory=list)
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    parallel_ffn: bool = Field(
        False, description="FFN-position layers run in parallel on the same input (UltraMemV2)"
    )

    @model_validator(mode="after")
    def _has_a_layer(self) -> BlockConfig:
        if self.attention is None and not self.ffn:
            raise ValueError("a block needs a token mixer (attention), an FFN-position layer, or both")
        if self.parallel_mixer is not None:
            if self.attention is None:
                raise ValueError("parallel_mixer runs beside attention: the block needs an attention too")
            if (self.attention.kind in RECURRENT_KINDS) == (self.parallel_mixer.kind in RECURRENT_KINDS):
                raise ValueError("parallel_mixer pairs attention with a recurrent mixer (one of each)")
        return self

    @property
    def mixers(self) -> list[Mixer]:
        """The block's token mixers: its attention slot and the one beside it, where present."""
        return [m for m in (self.attention, self.parallel_mixer) if m is not None]


class ModelConfig(Strict):
    name: str
    description: str = ""
    d_model: PositiveInt
    vocab_size: PositiveInt | None = Field(None, description="required when the model has embeddings")
    tie_embeddings: bool = False
    embeddings: bool = Field(True, description="false for a bare stack of blocks (no embedding, no LM head)")
    blocks: list[BlockConfig] = Field(min_length=1)
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    max_positions: PositiveInt | None = Field(
        None,
        description="longest sequence the position encoding is set up for (config.json "
        "max_position_embeddings); None: not stated",
    )
    learned_positions: bool = Field(
        False,
        description="a learned absolute position table of max_positions rows, added to the token "
        "embeddings (GPT-2's wpe); RoPE and NoPE models have none",
    )
    position_offset: Annotated[int, Field(ge=0)] = Field(
        0, description="rows of the learned position table before position 0 (OPT keeps 2)"
    )
    head_bias: bool = Field(False, description="a bias on the LM head (phi-2, GPT-J)")
    sources: list[Source] = Field(default_factory=list)
    provenance: dict[str, Source] = Field(
        default_factory=dict, description="field path -> where that number came from"
    )

    @model_validator(mode="after")
    def _vocab_with_embeddings(self) -> ModelConfig:
        if self.embeddings and self.vocab_size is None:
            raise ValueError("vocab_size is required when embeddings is true")
        if self.learned_positions and (not self.embeddings or self.max_positions is None):
            raise ValueError("learned_positions needs embeddings and max_positions (the table's rows)")
        if self.position_offset and not self.learned_positions:
            raise ValueError("position_offset is a learned position table's: set learned_positions")
        if self.head_bias and not self.embeddings:
            raise ValueError("head_bias needs embeddings (the LM head)")
        return self

    @model_validator(mode="after")
    def _ring_windows_hold_top_m(self) -> ModelConfig:
        # a shared UltraMemV2 table gives each layer a ring window of n_l^2 rows, n_l from share_ratio and
        # the layers sharing it: a window smaller than the rows a token picks cannot be served
        for layer in (f for b in self.blocks for f in b.ffn):
            if layer.kind != "ultramemv2" or layer.shared_table is None:
                continue
            sharing = max(1, self.memory_layer_count(layer.shared_table))
            window = layer.window_rows(sharing)
            if window < layer.top_m:
                raise ValueError(
                    f"an UltraMemV2 ring window of {window} rows (knum {layer.knum}, share_ratio "
                    f"{layer.share_ratio}, {sharing} layers sharing the table) is smaller than top_m="
                    f"{layer.top_m}"
                )
        return self

    @property
    def n_layers(self) -> int:
        return sum(b.repeat for b in self.blocks)

    def expanded_blocks(self) -> list[BlockConfig]:
        """One entry per transformer block, in order."""
        return [b for b in self.blocks for _ in range(b.repeat)]

    def memory_layer_count(self, table: str | None) -> int:
        """Memory layers that read the shared table `table` (sharing changes rows per table)."""
        return sum(
            b.repeat
            for b in self.blocks
            for layer in b.ffn
            if layer.kind in MEMORY_KINDS and getattr(layer, "shared_table", None) == table
        )


# --------------------------------------------------------------------------------------------- workload


class RoutingSpec(Strict):
    kind: Literal["uniform", "zipf", "histogram"] = "uniform"
    s: Annotated[float, Field(ge=0)] = 1.0
    histogram: str | None = Field(None, description="path to a routing table (CSV/Parquet: item,count)")


class Workload(Strict):
    phase: Literal["decode", "prefill"] = "decode"
    batch: list[PositiveInt] = Field(default_factory=lambda: [1], min_length=1)
    context: list[PositiveInt] = Field(
        default_factory=lambda: [2048],
        min_length=1,
        description="decode: KV entries per sequence; prefill: prompt tokens per sequence",
    )
    prefix: Annotated[int, Field(ge=0, le=MAX_SIZE)] = Field(
        0,
        description="prefill: KV entries per sequence already cached before this step's prompt tokens (a "
        "later chunk of a chunked prefill, or a cached prefix); 0 is a fresh prompt",
    )
    tokens_per_step: PositiveInt = Field(1, description="decode tokens per sequence per step (speculation)")
    logits: Literal["last", "all", "none"] = Field(
        "last",
        description="prefill: LM-head logits for the last position of each sequence (what a serving engine "
        "samples from), for every position (a plain Hugging Face forward), or none (a chunk of a chunked "
        "prefill before the prompt's last)",
    )
    weight_dtype: DType = "bf16"
    weight_dtypes: dict[LayerKind, DType] = Field(
        default_factory=dict,
        description="per layer kind, a weight dtype other than weight_dtype (e.g. MoE experts in mxfp4)",
    )
    activation_dtype: DType = "bf16"
    kv_dtype: DType = "bf16"
    tp: PositiveInt = Field(1, description="tensor-parallel degree (within each layer)")
    ep: PositiveInt = Field(
        1,
        description="expert-parallel degree: MoE experts sharded over ep devices; the other layers run "
        "data-parallel over them; batch is the global batch",
    )
    routing: RoutingSpec = Field(default_factory=RoutingSpec)

    @model_validator(mode="after")
    def _logits_of_the_phase(self) -> Workload:
        if self.phase == "decode" and self.logits != "last":
            raise ValueError(
                f"logits {self.logits!r} is a prefill choice: a decode step samples one position per sequence"
            )
        if self.phase == "decode" and self.prefix:
            raise ValueError("prefix is a prefill choice: a decode step's context already counts the cache")
        return self

    @property
    def positions(self) -> int:
        """The longest sequence a step of this workload holds: the cached context plus the new tokens in
        decode, the cached prefix plus the prompt in prefill."""
        if self.phase == "decode":
            return max(self.context) + self.tokens_per_step
        return self.prefix + max(self.context)


def positions_warning(model: ModelConfig, positions: int, asked: str) -> str | None:
    """A note (not an error) when `asked` reaches past the positions `model` is set up for: the step is
    still costed as asked, as a long-context variant of the same weights would run it (RoPE scaling)."""
    if model.max_positions is None or positions <= model.max_positions:
        return None
    # a learned table has no row past its last: unlike RoPE, no scaled variant of the weights runs there
    table = "; its learned position table has no rows for them" if model.learned_positions else ""
    return (
        f"{model.name}: {asked} needs {positions} positions, past the {model.max_positions} it is set up "
        f"for (max_position_embeddings){table}; costed as asked"
    )


def _not_above(v: int, info: ValidationInfo, name: str, limit_name: str) -> int:
    limit = info.data.get(limit_name)
    if limit is not None and v > limit:
        raise ValueError(f"{name}={v} exceeds {limit_name}={limit}")
    return v


def describe_validation_error(exc: Exception, what: str) -> str:
    """One line naming the first failing field and the problem, from a pydantic ValidationError."""
    errors: list[dict[str, Any]] = getattr(exc, "errors", lambda: [])()
    if not errors:
        return f"{what}: {exc}"
    first = errors[0]
    loc = ".".join(str(p) for p in first.get("loc", ()) if not _is_union_tag(p))
    msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{what}: {loc + ': ' if loc else ''}{msg}{more}"


def _is_union_tag(part: object) -> bool:
    # pydantic inserts the discriminator value into locations of tagged unions; keep indices and names
    return isinstance(part, str) and part in {
        "mha",
        "gqa",
        "mqa",
        "mla",
        "mamba",
        "mamba2",
        "gated_deltanet",
        "lightning",
        "dense",
        "moe",
        "pkm",
        "peer",
        "memory_plus",
        "ultramem",
        "ultramemv2",
    }


def weight_dtype_of(workload: Workload, kind: str) -> str:
    """The weight dtype layers of `kind` are stored in under `workload`."""
    return workload.weight_dtypes.get(kind, workload.weight_dtype)  # type: ignore[call-overload]


def describe_weight_dtypes(workload: Workload) -> str:
    """`bf16`, or `bf16, moe=mxfp4` when some layer kinds have their own (`memory=int4` when every
    memory-layer kind has the same one; `recurrent=fp8` likewise for the recurrent mixers)."""
    kinds = dict(workload.weight_dtypes)
    for group, members in (("memory", MEMORY_KINDS), ("recurrent", RECURRENT_KINDS)):
        same = {kinds.get(k) for k in members}
        if len(same) == 1 and None not in same:
            kinds = {k: v for k, v in kinds.items() if k not in members} | {group: same.pop()}
    extra = ", ".join(f"{k}={v}" for k, v in sorted(kinds.items()))
    return workload.weight_dtype + (f", {extra}" if extra else "")


# the per-layer names (block0.attn, block0.ffn, block0.memory, embed) as names of the kinds they hold
KIND_ALIASES: dict[str, tuple[str, ...]] = {
    "attn": ("attention",),
    "recurrent": ("mamba", "mamba2", "gated_deltanet", "lightning"),
    # Mamba and Mamba-2 layers are both named block{i}.mamba; Gated DeltaNet and lightning attention
    # block{i}.linear_attn
    "mamba": ("mamba", "mamba2"),
    "linear_attn": ("gated_deltanet", "lightning"),
    "ffn": ("dense",),
    "mlp": ("dense",),
    "embed": ("embedding",),
    "memory": ("pkm", "peer", "memory_plus", "ultramem", "ultramemv2"),
}


def parse_weight_dtypes(text: str) -> tuple[str, dict[str, str]]:
    """`bf16` or `bf16,moe=mxfp4,embedding=bf16` -> (default dtype, {kind: dtype}); the Workload validates
    the names. One entry without `=` sets the default (bf16 when there is none). The layer names' short
    forms are taken too (`attn`, `ffn`/`mlp`, `embed`, and `memory` for every memory-layer kind); a kind
    named on its own wins over a group naming it (`memory=int4,ultramemv2=fp8`)."""
    default = "bf16"
    overrides: dict[str, str] = {}
    grouped: dict[str, str] = {}
    plain = 0
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise ValueError(f"--weight-dtype {text!r}: empty entry")
        kind, eq, dtype = part.partition("=")
        if eq:
            if not kind.strip() or not dtype.strip():
                raise ValueError(f"--weight-dtype {text!r}: {part!r} is not KIND=DTYPE")
            if kind.strip() in KIND_ALIASES:  # a group, filled in below where no kind of it is named
                grouped.update(dict.fromkeys(KIND_ALIASES[kind.strip()], dtype.strip()))
            else:
                overrides[kind.strip()] = dtype.strip()
        else:
            plain += 1
            default = part
    if plain > 1:
        raise ValueError(f"--weight-dtype {text!r}: more than one default dtype")
    return default, grouped | overrides  # a kind named on its own wins over its group

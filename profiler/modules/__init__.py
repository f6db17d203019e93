"""Reference PyTorch modules built from the simulator's config objects (one per layer family)."""

from __future__ import annotations

from profiler.modules.attention import Attention, MLAAttention, SparseMLAAttention, build_attention
from profiler.modules.common import RoutingRecorder, layer_range, torch_dtype
from profiler.modules.ffn import DenseFFN
from profiler.modules.memory_plus import MemoryPlus
from profiler.modules.model import ReferenceModel, sublayer_base
from profiler.modules.moe import MoE
from profiler.modules.peer import PEER
from profiler.modules.pkm import PKM
from profiler.modules.recurrent import (
    GatedDeltaNet,
    KimiDeltaAttention,
    LightningAttention,
    Mamba,
    Mamba2,
    build_recurrent,
)
from profiler.modules.retrieval import product_key_topk, tucker_topk
from profiler.modules.tables import MemoryTable, TableRegistry
from profiler.modules.ultramem import UltraMem
from profiler.modules.ultramemv2 import UltraMemV2

__all__ = [
    "PEER",
    "PKM",
    "Attention",
    "DenseFFN",
    "GatedDeltaNet",
    "KimiDeltaAttention",
    "LightningAttention",
    "MLAAttention",
    "SparseMLAAttention",
    "Mamba",
    "Mamba2",
    "MemoryPlus",
    "MemoryTable",
    "MoE",
    "ReferenceModel",
    "RoutingRecorder",
    "TableRegistry",
    "UltraMem",
    "UltraMemV2",
    "build_attention",
    "build_recurrent",
    "layer_range",
    "product_key_topk",
    "sublayer_base",
    "torch_dtype",
    "tucker_topk",
]

"""The whole reference model: embeddings, blocks, final norm and head, from a ModelConfig.

Every sublayer (norm + layer + residual add) runs inside a range named like the simulator's layers and
the H100 recordings: `block{i}.attn`, `block{i}.ffn`, `block{i}.moe`, `block{i}.memory` (a second layer
of the same family in one block gets `ffn1`, `memory1`, ...), plus `embed` and `head`. A block's token
mixer is attention (`block{i}.attn`) or a recurrent mixer (profiler.modules.recurrent: `block{i}.mamba`
for Mamba and Mamba-2, `block{i}.linear_attn` for Gated DeltaNet); hybrid stacks also have blocks
without a mixer (FFN only) or without FFN-position layers (mixer only). With
`parallel_ffn` the FFN-position layers share one normalised input and their outputs are added to the
residual together; otherwise each has its own norm and residual add, in order. An UltraMem layer with
`skip_span` > 0 reads its block's input and adds its output after block i + skip_span.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch
import torch.nn as nn

from profiler.modules.attention import build_attention
from profiler.modules.common import (
    NORM_TYPES,
    RoutingRecorder,
    factory_kwargs,
    layer_range,
    make_norm,
    torch_dtype,
)
from profiler.modules.ffn import DenseFFN
from profiler.modules.memory_plus import MemoryPlus
from profiler.modules.moe import MoE
from profiler.modules.peer import PEER
from profiler.modules.pkm import PKM
from profiler.modules.recurrent import build_recurrent
from profiler.modules.tables import TableRegistry
from profiler.modules.ultramem import UltraMem
from profiler.modules.ultramemv2 import UltraMemV2
from simulator.config import AttentionConfig, Mixer, ModelConfig
from simulator.sweep import layer_suffix, mixer_kind


def sublayer_base(kind: str) -> str:
    """Range-name suffix of an FFN-position layer kind: the simulator's layer name."""
    return layer_suffix(kind)


def mixer_base(mixer: Mixer) -> str:
    """Range-name suffix of a token mixer: attn, or mamba / linear_attn (the simulator's layer name)."""
    return layer_suffix(mixer_kind(mixer))


def build_mixer(
    mixer: Mixer,
    d_model: int,
    *,
    phase: str,
    kv_mode: str,
    append_headroom: int,
    device: torch.device | str | None,
    dtype: torch.dtype,
) -> nn.Module:
    """The module of a block's token mixer; a recurrent state is always updated in place, so kv_mode
    and the append headroom concern attention only."""
    if isinstance(mixer, AttentionConfig):
        return build_attention(
            mixer,
            d_model,
            phase=phase,
            kv_mode=kv_mode,
            append_headroom=append_headroom,
            device=device,
            dtype=dtype,
        )
    return build_recurrent(mixer, d_model, phase=phase, device=device, dtype=dtype)


class Sublayer(nn.Module):
    """norm -> layer -> residual add, inside the layer's named range."""

    def __init__(self, name: str, norm: nn.Module | None, layer: nn.Module, skip_span: int = 0) -> None:
        super().__init__()
        self.layer_name = name
        self.norm = norm
        self.layer = layer
        self.skip_span = skip_span

    def forward(
        self, h: torch.Tensor, u: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(new residual, normalised input, output deferred to a later block or None)."""
        with layer_range(self.layer_name):
            if u is None:
                assert self.norm is not None
                u = self.norm(h)
            out = self.layer(u)
            if self.skip_span:
                return h, u, out
            return h + out, u, None


class Block(nn.Module):
    """The token mixer's sublayer (`attn`, whatever the mixer; None in an FFN-only block), the mixer
    beside it on the same normed input (`beside`, Falcon-H1's Mamba-2; usually None), then the
    FFN-position sublayers (none in a mixer-only block)."""

    def __init__(
        self, attn: Sublayer | None, ffn: list[Sublayer], parallel: bool, beside: Sublayer | None = None
    ) -> None:
        super().__init__()
        self.attn = attn
        self.beside = beside
        self.ffn = nn.ModuleList(ffn)
        self.parallel = parallel

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, torch.Tensor]]]:
        if self.attn is not None:
            h, u, _ = self.attn(h)
            if self.beside is not None:  # its output joins the residual with the first mixer's
                h, _, _ = self.beside(h, u)
        deferred: list[tuple[int, torch.Tensor]] = []
        u = None
        for sub in self.ffn:
            h, u_out, out = sub(h, u if self.parallel else None)
            if self.parallel:
                u = u_out
            if out is not None:
                deferred.append((sub.skip_span, out))
        return h, deferred


class ReferenceModel(nn.Module):
    """A runnable model of `config`: inputs are token ids (B, T) when config.embeddings, else hidden
    states (B, T, d). Decode returns logits (or hidden states) for every position; prefill for the last
    position of each sequence only (what a serving engine samples from), like the simulator's head."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        phase: str = "decode",
        kv_mode: str = "fixed",
        append_headroom: int = 64,
        dtype: str | torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        record_routing: bool = False,
    ) -> None:
        super().__init__()
        self.config = config
        self.phase = phase
        dt = torch_dtype(dtype)
        f = factory_kwargs(device, dt)
        d = config.d_model
        self.tables_registry = TableRegistry(device, dt)
        self.embed = nn.Embedding(config.vocab_size, d, **f) if config.embeddings else None
        self.pos_embed = (
            nn.Embedding(config.max_positions + config.position_offset, d, **f)  # type: ignore[operator]
            if config.learned_positions
            else None
        )
        self._decode_position = 0  # the position a decode step's token takes (set with the cache)
        blocks: list[Block] = []
        table_layers: dict[str | None, int] = {}  # next layer index per shared table
        for i, bc in enumerate(config.expanded_blocks()):
            attn_sub = beside = None
            for slot, cfg in enumerate(bc.mixers):
                mixer = build_mixer(
                    cfg, d, phase=phase, kv_mode=kv_mode, append_headroom=append_headroom, **f
                )  # type: ignore[arg-type]
                name = f"block{i}.{mixer_base(cfg)}"
                if slot == 0:
                    attn_sub = Sublayer(name, make_norm(bc.norm, d, **f), mixer)
                else:  # beside the first, on its normed input
                    beside = Sublayer(name, None, mixer)
            subs: list[Sublayer] = []
            seen: dict[str, int] = {}
            for j, lc in enumerate(bc.ffn):
                base = sublayer_base(lc.kind)
                seen[base] = seen.get(base, 0) + 1
                name = f"block{i}.{base}" + (str(seen[base] - 1) if seen[base] > 1 else "")
                layer = self._build_ffn_layer(lc, name, table_layers)
                norm = make_norm(bc.norm, d, **f) if (j == 0 or not bc.parallel_ffn) else None
                skip = getattr(lc, "skip_span", 0)
                subs.append(Sublayer(name, norm, layer, skip))
            blocks.append(Block(attn_sub, subs, bc.parallel_ffn, beside))
        self.blocks = nn.ModuleList(blocks)
        moe_layers = (m for m in self.modules() if isinstance(m, MoE))
        for position, moe in enumerate(moe_layers):
            moe.seed_meta_routing(position)  # meta counts: another draw per layer, the same every build
        # ModuleDict keys may not shadow its methods ("values"), nor hold dots
        self.tables = nn.ModuleDict(
            {"table_" + re.sub(r"\W", "_", k): t for k, t in self.tables_registry.tables.items()}
        )
        if config.embeddings:
            self.norm: nn.Module | None = make_norm(config.norm, d, **f)
            self.head: nn.Linear | None = nn.Linear(d, config.vocab_size, bias=config.head_bias, **f)
            if config.tie_embeddings:
                assert self.embed is not None
                self.head.weight = self.embed.weight
        else:
            self.norm = self.head = None
        self.set_recording(record_routing)
        self.eval()

    def _build_ffn_layer(self, lc: object, name: str, table_layers: dict[str | None, int]) -> nn.Module:
        cfg = self.config
        d = cfg.d_model
        p = self.tables_registry
        f = factory_kwargs(p.device, p.dtype)
        kind = lc.kind  # type: ignore[attr-defined]
        if kind == "dense":
            return DenseFFN.from_config(lc, d, **f)  # type: ignore[arg-type]
        if kind == "moe":
            return MoE(lc, d, **f)  # type: ignore[arg-type]
        if kind == "pkm":
            return PKM(lc, d, tables=p, name=name, **f)  # type: ignore[arg-type]
        if kind == "peer":
            return PEER(lc, d, tables=p, name=name, **f)  # type: ignore[arg-type]
        if kind == "memory_plus":
            return MemoryPlus(lc, d, tables=p, name=name, **f)  # type: ignore[arg-type]
        if kind == "ultramem":
            return UltraMem(lc, d, tables=p, name=name, **f)  # type: ignore[arg-type]
        if kind == "ultramemv2":
            table = lc.shared_table  # type: ignore[attr-defined]
            index = table_layers.get(table, 0)
            table_layers[table] = index + 1
            layers = cfg.memory_layer_count(table) if table is not None else 1
            return UltraMemV2(
                lc,
                d,
                tables=p,
                layer_index=index,
                memory_layers=layers,
                name=name,
                **f,  # type: ignore[arg-type]
            )
        raise ValueError(f"unknown FFN-position layer kind {kind!r}")

    # ------------------------------------------------------------------------------------ setup
    def setup_cache(self, batch: int, context: int, fill: str = "randn") -> None:
        """(Re)allocate every token mixer's cache for `batch` sequences: attention's KV cache of `context`
        entries (decode), a recurrent mixer's fixed-size state (decode, and prefill, which writes it)."""
        for block in self.blocks:
            for sub in (block.attn, block.beside):
                if sub is not None:
                    sub.layer.setup_cache(batch, context, fill)  # type: ignore[union-attr,operator]
        if self.pos_embed is not None:
            self._decode_position = min(context, self.pos_embed.num_embeddings - 1)

    def sublayers(self) -> Iterator[Sublayer]:
        for block in self.blocks:
            if block.attn is not None:
                yield block.attn  # type: ignore[misc]
            if block.beside is not None:
                yield block.beside  # type: ignore[misc]
            yield from block.ffn  # type: ignore[misc]

    def layer_names(self) -> list[str]:
        """Range names in execution order, embed/head included when present."""
        names = [s.layer_name for s in self.sublayers()]
        return (["embed", *names, "head"]) if self.embed is not None else names

    def module_layer_map(self) -> dict[str, str]:
        """Module path prefix -> layer name, for attributing op counts (longest prefix wins)."""
        out: dict[str, str] = {}
        for i, block in enumerate(self.blocks):
            if block.attn is not None:
                out[f"blocks.{i}.attn"] = block.attn.layer_name  # type: ignore[union-attr]
            if block.beside is not None:
                out[f"blocks.{i}.beside"] = block.beside.layer_name  # type: ignore[union-attr]
            for j, sub in enumerate(block.ffn):
                out[f"blocks.{i}.ffn.{j}"] = sub.layer_name  # type: ignore[union-attr]
        if self.embed is not None:
            out["embed"] = "embed"
            if self.pos_embed is not None:
                out["pos_embed"] = "embed"
            out["norm"] = "head"
            out["head"] = "head"
        return out

    def routing_recorders(self) -> dict[str, RoutingRecorder]:
        """Layer name -> recorder, for every MoE and memory layer."""
        return {
            s.layer_name: s.layer.recorder  # type: ignore[union-attr]
            for s in self.sublayers()
            if isinstance(getattr(s.layer, "recorder", None), RoutingRecorder)
        }

    def set_recording(self, enabled: bool) -> None:
        for rec in self.routing_recorders().values():
            rec.enabled = enabled

    def reset_routing(self) -> None:
        for rec in self.routing_recorders().values():
            rec.reset()

    def param_count(self, include_norms: bool = False) -> int:
        """Parameters stored (shared tables and tied weights once); norms left out by default, as the
        simulator leaves them out."""
        norm_params = {id(p) for m in self.modules() if isinstance(m, NORM_TYPES) for p in m.parameters()}
        return sum(p.numel() for p in self.parameters() if include_norms or id(p) not in norm_params)

    def make_input(self, batch: int, context: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """One step's input: decode 1 token per sequence, prefill `context` tokens per sequence."""
        tokens = 1 if self.phase == "decode" else context
        p = next(self.parameters())
        if self.embed is not None:
            if p.device.type == "meta":
                return torch.zeros(batch, tokens, dtype=torch.long, device="meta")
            ids = torch.randint(0, self.config.vocab_size, (batch, tokens), generator=generator)
            return ids.to(p.device)
        if p.device.type == "meta":
            return torch.empty(batch, tokens, self.config.d_model, dtype=p.dtype, device="meta")
        x = torch.randn(batch, tokens, self.config.d_model, generator=generator)
        return x.to(device=p.device, dtype=p.dtype)

    def _positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Position ids of one step's tokens (B, T): prefill from 0, decode after the cached context."""
        batch, tokens = ids.shape
        start = self._decode_position if self.phase == "decode" else 0
        positions = torch.arange(start, start + tokens, device=ids.device)
        last = self.config.max_positions - 1  # type: ignore[operator]
        return positions.clamp(max=last).add(self.config.position_offset).expand(batch, tokens)

    # ------------------------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed is not None:
            with layer_range("embed"):
                h = self.embed(x)
                if self.pos_embed is not None:
                    h = h + self.pos_embed(self._positions(x))
        else:
            h = x
        n = len(self.blocks)
        pending: dict[int, list[torch.Tensor]] = {}
        for i, block in enumerate(self.blocks):
            h, deferred = block(h)
            for span, out in deferred:
                pending.setdefault(min(i + span, n - 1), []).append(out)
            for out in pending.pop(i, []):
                h = h + out
        if self.head is None:
            return h
        with layer_range("head"):
            if self.phase == "prefill":
                h = h[:, -1:]
            assert self.norm is not None
            return self.head(self.norm(h))

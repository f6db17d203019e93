"""Self-attention with a KV cache: MHA/GQA/MQA through SDPA, and MLA with a latent cache.

Decode reads a preallocated cache of `context` entries per sequence. Two cache modes:
- "fixed": the cache is read-only, as in the H100 recordings: the new token's K/V are projected
  (their weights are read) but not stored, and every step attends over the same `context` entries;
- "append": the new K/V are written at the cache's end and attended over; when the headroom is used
  up the length falls back to `context` (shapes stay bounded over a long steady loop).
Prefill is causal self-attention over the prompt; it does not keep a cache. No rotary embedding is
applied (it moves no weights and little data).

A sliding window of W keys (Mistral, Qwen's upper layers) bounds what a query sees: in prefill, query i
attends to keys i-W+1..i (a banded causal mask); in decode, the cache is a rolling buffer of
min(context, W) entries, as in Mistral's reference code, and a step attends over its last W entries.
Chunked attention of C positions (Llama 4) restarts at every multiple of C: in prefill, a block-diagonal
causal mask; in decode, the cache holds the current chunk's context mod C entries (none at a chunk's
first token, which then attends to itself alone). That is the KV reach the simulator charges.
With `output_gate` (Qwen3-Next), q_proj also projects a gate per output element, and the attention
output is multiplied by its sigmoid before o_proj.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from profiler.modules.common import factory_kwargs
from simulator.config import AttentionConfig
from simulator.errors import ConfigError

KV_MODES = ("fixed", "append")


class _CachedAttention(nn.Module):
    """The constructor and KV-cache handling both attention kinds share; `_build` makes the weights."""

    def __init__(
        self,
        cfg: AttentionConfig,
        d_model: int,
        *,
        phase: str = "decode",
        kv_mode: str = "fixed",
        append_headroom: int = 64,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if phase not in ("decode", "prefill"):
            raise ConfigError(f"phase must be decode or prefill, got {phase!r}")
        if kv_mode not in KV_MODES:
            raise ConfigError(f"kv_mode must be one of {', '.join(KV_MODES)}, got {kv_mode!r}")
        self.phase = phase
        self.kv_mode = kv_mode
        self.append_headroom = append_headroom
        self.window = cfg.sliding_window
        self.chunk = cfg.attention_chunk
        self.context = 0
        self.length = 0  # entries currently held (append mode grows it)
        self._build(cfg, d_model, factory_kwargs(device, dtype))

    def _build(self, cfg: AttentionConfig, d_model: int, f: dict[str, object]) -> None:
        raise NotImplementedError

    def _cache_shapes(self, batch: int, capacity: int) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def setup_cache(self, batch: int, context: int, fill: str = "randn") -> None:
        """Allocate (decode) the cache for `batch` sequences of `context` entries (at most the sliding
        window, or the current chunk's entries: older ones are out of reach); prefill frees it."""
        for name in self._cache_shapes(1, 1):
            setattr(self, name, None)
        context = int(context)
        if self.window is not None:
            context = min(context, self.window)
        elif self.chunk is not None:
            context %= self.chunk
        self.context = self.length = context
        if self.phase != "decode":
            return
        capacity = context + (self.append_headroom if self.kv_mode == "append" else 0)
        p = next(self.parameters())
        for name, shape in self._cache_shapes(batch, capacity).items():
            buf = torch.empty(shape, device=p.device, dtype=p.dtype)
            if fill == "randn" and buf.device.type != "meta":
                buf.normal_()
            elif fill == "zeros":
                buf.zero_()
            setattr(self, name, buf)

    def _advance(self, tokens: int) -> tuple[int, slice]:
        """(write position, attended entries) for an append step; wraps back to `context` when full."""
        cache = getattr(self, next(iter(self._cache_shapes(1, 1))))
        if self.length + tokens > cache.shape[-2]:
            self.length = self.context
        pos = self.length
        self.length += tokens
        start = 0
        if self.window is not None:
            start = max(0, self.length - self.window)
        elif self.chunk is not None:  # the cache starts at a chunk boundary
            start = (self.length - 1) // self.chunk * self.chunk
        return pos, slice(start, self.length)

    def _prefill_mask(self, t: int, device: torch.device) -> torch.Tensor | None:
        """The banded (window) or block-diagonal (chunks) causal mask (True = attend) when the window or
        chunk is shorter than the prompt, else None (plain causal attention, which every SDPA backend
        runs without a mask tensor)."""
        limit = self.window if self.window is not None else self.chunk
        if limit is None or limit >= t:
            return None
        i = torch.arange(t, device=device)
        causal = i[:, None] >= i[None, :]
        if self.window is not None:
            return causal & (i[:, None] - i[None, :] < self.window)
        return causal & (i[:, None] // limit == i[None, :] // limit)

    def _prefill_sdpa(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: object
    ) -> torch.Tensor:
        t = q.shape[-2]
        mask = self._prefill_mask(t, q.device)
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=mask is None and t > 1,
            **kwargs,  # type: ignore[arg-type]
        )

    def _check_cache(self, batch: int) -> torch.Tensor:
        cache = getattr(self, next(iter(self._cache_shapes(1, 1))), None)
        if cache is None:
            raise RuntimeError("decode attention needs setup_cache(batch, context) first")
        if cache.shape[0] != batch:
            raise RuntimeError(f"KV cache holds {cache.shape[0]} sequences, input has {batch}")
        return cache


class Attention(_CachedAttention):
    """MHA / GQA / MQA: q/k/v/o projections and SDPA, never copying K/V per query head (decode folds
    each group's query heads into one KV head's queries, prefill uses `enable_gqa`)."""

    def _build(self, cfg: AttentionConfig, d_model: int, f: dict[str, object]) -> None:
        if cfg.kind == "mla":
            raise ConfigError("use MLAAttention for kind 'mla'")
        assert cfg.head_dim is not None
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        # with an output gate (Qwen3-Next), q_proj also projects the gate: per head [query | gate]
        self.output_gate = cfg.output_gate
        q_width = self.n_heads * self.head_dim * (2 if cfg.output_gate else 1)
        self.q_proj = nn.Linear(d_model, q_width, bias=cfg.qkv_bias, **f)
        self.k_proj = nn.Linear(d_model, self.n_kv * self.head_dim, bias=cfg.qkv_bias, **f)
        self.v_proj = nn.Linear(d_model, self.n_kv * self.head_dim, bias=cfg.qkv_bias, **f)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d_model, bias=cfg.o_bias, **f)
        self.sinks = nn.Parameter(torch.zeros(self.n_heads, **f)) if cfg.sinks else None  # type: ignore[arg-type]
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None

    def _cache_shapes(self, batch: int, capacity: int) -> dict[str, tuple[int, ...]]:
        shape = (batch, self.n_kv, capacity, self.head_dim)
        return {"k_cache": shape, "v_cache": shape}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, -1)
        gate = None
        if self.output_gate:
            q, gate = q.split(self.head_dim, dim=-1)
        q = q.transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        gqa = self.n_kv != self.n_heads
        if self.sinks is not None and self.phase == "prefill":
            i = torch.arange(t, device=x.device)
            mask = self._prefill_mask(t, x.device)
            out = sink_attention(q, k, v, self.sinks, i[:, None] >= i[None, :] if mask is None else mask)
        elif self.phase == "prefill":
            out = self._prefill_sdpa(q, k, v, enable_gqa=gqa)
        else:
            self._check_cache(b)
            assert self.k_cache is not None and self.v_cache is not None
            if self.kv_mode == "fixed" and self.k_cache.shape[-2] == 0:  # a chunk's first token
                keys, values = k, v
            elif self.kv_mode == "fixed":
                keys, values = self.k_cache, self.v_cache
            else:
                pos, reach = self._advance(t)
                self.k_cache[:, :, pos : pos + t].copy_(k)
                self.v_cache[:, :, pos : pos + t].copy_(v)
                keys, values = self.k_cache[:, :, reach], self.v_cache[:, :, reach]
            # speculative tokens of one step would need a causal tail mask; decode steps have t == 1
            if self.sinks is not None:
                out = sink_attention(q, keys, values, self.sinks)
            else:
                out = grouped_decode_attention(q, keys, values)
        out = out.transpose(1, 2)
        if gate is not None:  # each output element scaled by sigmoid(its gate) before o_proj
            out = out * torch.sigmoid(gate)
        return self.o_proj(out.reshape(b, t, self.n_heads * self.head_dim))


class MLAAttention(_CachedAttention):
    """Multi-head latent attention (DeepSeek-V2/V3).

    The cache holds, per token, the normalised latent c (kv_lora_rank) and the shared rope key
    (qk_rope_head_dim) in one row. Decode absorbs the up-projections: queries are mapped into the
    latent space (q_nope @ W_UK), attention runs as MQA over the cached rows (values = the latent
    part of the same rows), and W_UV maps the result back per head. Prefill expands the latent into
    per-head keys and values and runs causal SDPA.
    """

    def _build(self, cfg: AttentionConfig, d_model: int, f: dict[str, object]) -> None:
        assert cfg.kv_lora_rank and cfg.qk_nope_head_dim and cfg.qk_rope_head_dim and cfg.v_head_dim
        h = self.n_heads = cfg.n_heads
        self.c, self.nope, self.rope, self.vdim = (
            cfg.kv_lora_rank,
            cfg.qk_nope_head_dim,
            cfg.qk_rope_head_dim,
            cfg.v_head_dim,
        )
        qk = self.nope + self.rope
        self.scale = qk**-0.5
        if cfg.q_lora_rank:
            self.wq_a: nn.Linear | None = nn.Linear(d_model, cfg.q_lora_rank, bias=False, **f)
            self.q_norm: nn.Module | None = nn.RMSNorm(cfg.q_lora_rank, eps=1e-6, **f)
            self.wq_b = nn.Linear(cfg.q_lora_rank, h * qk, bias=False, **f)
        else:
            self.wq_a = self.q_norm = None
            self.wq_b = nn.Linear(d_model, h * qk, bias=False, **f)
        self.wkv_a = nn.Linear(d_model, self.c + self.rope, bias=False, **f)
        self.kv_norm = nn.RMSNorm(self.c, eps=1e-6, **f)
        self.wkv_b = nn.Linear(self.c, h * (self.nope + self.vdim), bias=False, **f)
        self.wo = nn.Linear(h * self.vdim, d_model, bias=False, **f)
        self.kv_cache: torch.Tensor | None = None

    def _cache_shapes(self, batch: int, capacity: int) -> dict[str, tuple[int, ...]]:
        return {"kv_cache": (batch, capacity, self.c + self.rope)}

    def _queries(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q_nope, q_rope, the normalised query latent, or x without a query LoRA)."""
        b, t, _ = x.shape
        if self.wq_a is not None:
            assert self.q_norm is not None
            x = self.q_norm(self.wq_a(x))
        q = self.wq_b(x).view(b, t, self.n_heads, self.nope + self.rope)
        return q[..., : self.nope], q[..., self.nope :], x

    def _latent(self, x: torch.Tensor) -> torch.Tensor:
        kv = self.wkv_a(x)
        return torch.cat([self.kv_norm(kv[..., : self.c]), kv[..., self.c :]], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q_nope, q_rope, _ = self._queries(x)
        latent = self._latent(x)  # (b, t, c + rope)
        w = self.wkv_b.weight.view(self.n_heads, self.nope + self.vdim, self.c)
        w_uk, w_uv = w[:, : self.nope], w[:, self.nope :]
        if self.phase == "prefill":
            kv = self.wkv_b(latent[..., : self.c]).view(b, t, self.n_heads, self.nope + self.vdim)
            k_rope = latent[..., self.c :].unsqueeze(2).expand(b, t, self.n_heads, self.rope)
            k = torch.cat([kv[..., : self.nope], k_rope], dim=-1).transpose(1, 2)
            v = kv[..., self.nope :].transpose(1, 2)
            q = torch.cat([q_nope, q_rope], dim=-1).transpose(1, 2)
            out = self._prefill_sdpa(q, k, v, scale=self.scale)
            return self.wo(out.transpose(1, 2).reshape(b, t, self.n_heads * self.vdim))
        self._check_cache(b)
        assert self.kv_cache is not None
        if self.kv_mode == "fixed":
            rows = self.kv_cache if self.kv_cache.shape[1] else latent  # empty: a chunk's first token
        else:
            pos, reach = self._advance(t)
            self.kv_cache[:, pos : pos + t].copy_(latent)
            rows = self.kv_cache[:, reach]
        # absorbed: q_lat = q_nope W_UK per head; scores over [latent | rope key] rows, one KV head
        q_lat = torch.einsum("bthn,hnc->bhtc", q_nope, w_uk)
        q = torch.cat([q_lat, q_rope.transpose(1, 2)], dim=-1)  # (b, h, t, c + rope)
        keys = rows.unsqueeze(1)  # (b, 1, S, c + rope)
        values = keys[..., : self.c]
        o_lat = grouped_decode_attention(q, keys, values, scale=self.scale)
        out = torch.einsum("bhtc,hvc->bthv", o_lat, w_uv)
        return self.wo(out.reshape(b, t, self.n_heads * self.vdim))


class SparseMLAAttention(MLAAttention):
    """MLA with DeepSeek Sparse Attention (DeepSeek-V3.2): a lightning indexer scores every reachable
    token, sum over index heads h of w_h(x) * ReLU(q_h . k), from index queries projected off the query
    latent and one LayerNorm'd index key per token, cached beside the latent; each query then attends
    over the index_topk best-scored tokens only. Decode gathers those rows of the latent cache; prefill
    runs the expanded attention under a mask of the picked keys (DeepSeek's masked-MHA mode for short
    prompts: the same outputs, but every causal pair computed, where the simulator charges the sparse
    absorbed form its long-prompt kernels run). The index cache is kept in the module's dtype
    (DeepSeek's kernels keep it in fp8 with a scale)."""

    def _build(self, cfg: AttentionConfig, d_model: int, f: dict[str, object]) -> None:
        super()._build(cfg, d_model, f)
        assert cfg.index_topk and cfg.index_n_heads and cfg.index_head_dim
        self.topk, self.index_heads, self.index_dim = cfg.index_topk, cfg.index_n_heads, cfg.index_head_dim
        q_in = cfg.q_lora_rank or d_model
        self.index_wq = nn.Linear(q_in, self.index_heads * self.index_dim, bias=False, **f)
        self.index_wk = nn.Linear(d_model, self.index_dim, bias=False, **f)
        self.index_k_norm = nn.LayerNorm(self.index_dim, **f)
        self.index_weights = nn.Linear(d_model, self.index_heads, bias=False, **f)
        self.index_cache: torch.Tensor | None = None

    def _cache_shapes(self, batch: int, capacity: int) -> dict[str, tuple[int, ...]]:
        return {**super()._cache_shapes(batch, capacity), "index_cache": (batch, capacity, self.index_dim)}

    def _index_scores(self, x: torch.Tensor, q_latent: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(b, t, S) scores of S index keys (b, S, index_dim) for the t queries of x."""
        b, t, _ = x.shape
        q = self.index_wq(q_latent).view(b, t, self.index_heads, self.index_dim)
        per_head = torch.einsum("bthd,bsd->bths", q, keys).relu()
        return torch.einsum("bths,bth->bts", per_head, self.index_weights(x)) * self.index_heads**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q_nope, q_rope, q_latent = self._queries(x)
        latent = self._latent(x)  # (b, t, c + rope)
        index_keys = self.index_k_norm(self.index_wk(x))  # (b, t, index_dim)
        w = self.wkv_b.weight.view(self.n_heads, self.nope + self.vdim, self.c)
        if self.phase == "prefill":
            scores = self._index_scores(x, q_latent, index_keys)  # (b, t, t)
            causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            picked = scores.masked_fill(~causal, float("-inf")).topk(min(t, self.topk), dim=-1).indices
            mask = torch.zeros(b, t, t, dtype=torch.bool, device=x.device).scatter(-1, picked, True) & causal
            kv = self.wkv_b(latent[..., : self.c]).view(b, t, self.n_heads, self.nope + self.vdim)
            k_rope = latent[..., self.c :].unsqueeze(2).expand(b, t, self.n_heads, self.rope)
            k = torch.cat([kv[..., : self.nope], k_rope], dim=-1).transpose(1, 2)
            v = kv[..., self.nope :].transpose(1, 2)
            q = torch.cat([q_nope, q_rope], dim=-1).transpose(1, 2)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1), scale=self.scale)
            return self.wo(out.transpose(1, 2).reshape(b, t, self.n_heads * self.vdim))
        self._check_cache(b)
        assert self.kv_cache is not None and self.index_cache is not None
        if self.kv_mode == "fixed":
            empty = not self.kv_cache.shape[1]  # a chunk's first token attends to itself
            rows = latent if empty else self.kv_cache
            keys = index_keys if empty else self.index_cache
        else:
            pos, reach = self._advance(t)
            self.kv_cache[:, pos : pos + t].copy_(latent)
            self.index_cache[:, pos : pos + t].copy_(index_keys)
            rows, keys = self.kv_cache[:, reach], self.index_cache[:, reach]
        scores = self._index_scores(x, q_latent, keys)  # (b, t, S)
        picked = scores.topk(min(scores.shape[-1], self.topk), dim=-1).indices  # (b, t, k)
        # only the picked rows of the latent cache are read: (b, t, k, c + rope)
        chosen = rows[torch.arange(b, device=x.device).view(b, 1, 1), picked]
        w_uk, w_uv = w[:, : self.nope], w[:, self.nope :]
        q_lat = torch.einsum("bthn,hnc->bthc", q_nope, w_uk)
        q = torch.cat([q_lat, q_rope], dim=-1).reshape(b * t, 1, self.n_heads, -1)  # a query per batch row
        keys_bt = chosen.reshape(b * t, 1, chosen.shape[2], -1)
        o_lat = grouped_decode_attention(q, keys_bt, keys_bt[..., : self.c], scale=self.scale)
        out = torch.einsum("bhc,hvc->bhv", o_lat.reshape(b * t, self.n_heads, self.c), w_uv)
        return self.wo(out.reshape(b, t, self.n_heads * self.vdim))


def grouped_decode_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Decode attention (no mask) of H query heads over G <= H shared KV heads.

    The H/G query heads of a group are folded into the query-length dimension, so it is plain attention
    over G heads: every SDPA backend takes it, and each K/V row is read once per group, never expanded
    into per-query-head copies. q: (b, H, t, d); keys/values: (b, G, S, d | d_v).
    """
    b, h, t, d = q.shape
    g = keys.shape[1]
    if g == h:
        return F.scaled_dot_product_attention(q, keys, values, scale=scale)
    folded = q.reshape(b, g, (h // g) * t, d)  # query head i belongs to group i // (h // g)
    out = F.scaled_dot_product_attention(folded, keys, values, scale=scale)
    return out.reshape(b, h, t, values.shape[-1])


def sink_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    sinks: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention whose softmax denominator also holds exp(sink) for a learned logit per query head
    (gpt-oss): probabilities sum to less than one. SDPA has no such term, so the scores are
    materialised, as transformers' eager path for this family does. Query heads are grouped over their
    KV head (no per-head K/V copies). q: (b, H, t, d); keys/values: (b, G, S, d); mask (t, S), True =
    attend."""
    b, h, t, d = q.shape
    g, s = keys.shape[1], keys.shape[2]
    r = h // g
    scores = torch.einsum("bgrtd,bgsd->bgrts", q.reshape(b, g, r, t, d), keys) * d**-0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    sink = sinks.to(scores.dtype).view(1, g, r, 1, 1).expand(b, g, r, t, 1)
    probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :s]
    out = torch.einsum("bgrts,bgsv->bgrtv", probs, values)
    return out.reshape(b, h, t, values.shape[-1])


def build_attention(cfg: AttentionConfig, d_model: int, **kwargs: object) -> _CachedAttention:
    if cfg.kind == "mla":
        cls: type[_CachedAttention] = SparseMLAAttention if cfg.index_topk is not None else MLAAttention
    else:
        cls = Attention
    return cls(cfg, d_model, **kwargs)  # type: ignore[arg-type]

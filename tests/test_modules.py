"""Reference modules against plain Python-loop implementations written here (token by token, expert by
expert, row by row), fp32 modules vs float64 loops, tolerance 1e-5; parameter counts vs the simulator."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from profiler.modules import (
    PEER,
    PKM,
    Attention,
    DenseFFN,
    MemoryPlus,
    MLAAttention,
    MoE,
    ReferenceModel,
    SparseMLAAttention,
    UltraMem,
    UltraMemV2,
)
from profiler.modules.common import SHUFFLE_OFFSET, shuffle_multiplier
from simulator.config import (
    AttentionConfig,
    BlockConfig,
    DenseFFNConfig,
    HardwareConfig,
    MemoryPlusConfig,
    ModelConfig,
    MoEConfig,
    PEERConfig,
    PKMConfig,
    UltraMemConfig,
    UltraMemV2Config,
    Workload,
)

TOL = {"atol": 1e-5, "rtol": 1e-5}
D = 16
ACTS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu, "swiglu": F.silu, "geglu": F.gelu}


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    torch.manual_seed(0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops on a busy 2-core machine: extra threads only add barrier waits
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------- loop helpers
def w64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().double()


def lin(layer: torch.nn.Linear | None, x: torch.Tensor) -> torch.Tensor:
    """One token through an nn.Linear, as a matrix-vector product in float64."""
    assert layer is not None
    y = w64(layer.weight) @ x
    return y + w64(layer.bias) if layer.bias is not None else y


def top(scores: list[float], k: int) -> list[int]:
    """Indices of the k largest scores, best first."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])[:k]


def softmax(values: list[float]) -> list[float]:
    m = max(values)
    e = [math.exp(v - m) for v in values]
    return [v / sum(e) for v in e]


def layer_norm(x: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
    mu = x.mean()
    var = ((x - mu) ** 2).mean()
    return (x - mu) / torch.sqrt(var + ln.eps) * w64(ln.weight) + w64(ln.bias)


def rms_norm(x: torch.Tensor, norm: torch.nn.RMSNorm) -> torch.Tensor:
    eps = norm.eps if norm.eps is not None else torch.finfo(torch.float32).eps
    return x / torch.sqrt((x * x).mean() + eps) * w64(norm.weight)


def attend(
    q: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor], scale: float
) -> torch.Tensor:
    p = softmax([float(q @ k) * scale for k in keys])
    return sum(pi * v for pi, v in zip(p, values, strict=True))


def randomize_(module: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial values everywhere (norm weights and biases included)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.5)
    return module.eval()  # BatchNorm uses its running statistics, as at inference


# ----------------------------------------------------------------------------------------- attention
@pytest.mark.parametrize("kind,heads,kv", [("mha", 4, 4), ("gqa", 4, 2), ("mqa", 4, 1)])
def test_attention_decode_fixed_and_append(kind: str, heads: int, kv: int) -> None:
    cfg = AttentionConfig(kind=kind, n_heads=heads, n_kv_heads=kv, head_dim=8, qkv_bias=True, o_bias=True)
    attn = randomize_(Attention(cfg, D, kv_mode="append", append_headroom=2))
    b, s = 3, 7
    attn.setup_cache(b, s)
    k0, v0 = attn.k_cache.clone(), attn.v_cache.clone()
    x = torch.randn(b, 1, D)
    scale = 8**-0.5
    got = attn(x)
    for i in range(b):
        xi = w64(x[i, 0])
        q = lin(attn.q_proj, xi).view(heads, 8)
        k_new = lin(attn.k_proj, xi).view(kv, 8)
        v_new = lin(attn.v_proj, xi).view(kv, 8)
        outs = []
        for h in range(heads):
            g = h // (heads // kv)
            keys = [w64(k0[i, g, j]) for j in range(s)] + [k_new[g]]
            vals = [w64(v0[i, g, j]) for j in range(s)] + [v_new[g]]
            outs.append(attend(q[h], keys, vals, scale))
        want = lin(attn.o_proj, torch.cat(outs))
        torch.testing.assert_close(got[i, 0].double(), want, **TOL)
        torch.testing.assert_close(attn.k_cache[i, :, s].double(), k_new, **TOL)
    assert attn.length == s + 1
    # the headroom of 2 is used by the second step; the third falls back to `context` entries + 1
    attn(x)
    attn(x)
    assert attn.length == s + 1

    fixed = Attention(cfg, D, kv_mode="fixed")
    fixed.load_state_dict(attn.state_dict())
    fixed.setup_cache(b, s)
    kc, vc = fixed.k_cache.clone(), fixed.v_cache.clone()
    got = fixed(x)
    for i in range(b):
        q = lin(fixed.q_proj, w64(x[i, 0])).view(heads, 8)
        outs = []
        for h in range(heads):
            g = h // (heads // kv)
            keys = [w64(kc[i, g, j]) for j in range(s)]
            outs.append(attend(q[h], keys, [w64(vc[i, g, j]) for j in range(s)], scale))
        torch.testing.assert_close(got[i, 0].double(), lin(fixed.o_proj, torch.cat(outs)), **TOL)
    assert torch.equal(fixed.k_cache, kc) and torch.equal(fixed.v_cache, vc)  # read-only cache


def test_attention_prefill_causal() -> None:
    cfg = AttentionConfig(kind="gqa", n_heads=4, n_kv_heads=2, head_dim=8)
    attn = randomize_(Attention(cfg, D, phase="prefill"))
    b, t = 2, 5
    x = torch.randn(b, t, D)
    got = attn(x)
    for i in range(b):
        qs = [lin(attn.q_proj, w64(x[i, p])).view(4, 8) for p in range(t)]
        ks = [lin(attn.k_proj, w64(x[i, p])).view(2, 8) for p in range(t)]
        vs = [lin(attn.v_proj, w64(x[i, p])).view(2, 8) for p in range(t)]
        for p in range(t):
            outs = [
                attend(qs[p][h], [k[h // 2] for k in ks[: p + 1]], [v[h // 2] for v in vs[: p + 1]], 8**-0.5)
                for h in range(4)
            ]
            torch.testing.assert_close(got[i, p].double(), lin(attn.o_proj, torch.cat(outs)), **TOL)


def test_attention_sliding_window_decode() -> None:
    """Window 3 over a context of 7: the cache is a rolling buffer of 3 entries; an append step attends
    over the newest 3 of them, its own K/V included."""
    cfg = AttentionConfig(kind="gqa", n_heads=4, n_kv_heads=2, head_dim=8, sliding_window=3)
    attn = randomize_(Attention(cfg, D, kv_mode="append", append_headroom=2))
    b, s, w = 2, 7, 3
    attn.setup_cache(b, s)
    assert attn.k_cache.shape == (b, 2, w + 2, 8)  # window + headroom, not context + headroom
    k0, v0 = attn.k_cache.clone(), attn.v_cache.clone()
    x = torch.randn(b, 1, D)
    got = attn(x)
    for i in range(b):
        xi = w64(x[i, 0])
        q = lin(attn.q_proj, xi).view(4, 8)
        k_new, v_new = lin(attn.k_proj, xi).view(2, 8), lin(attn.v_proj, xi).view(2, 8)
        outs = []
        for h in range(4):
            g = h // 2
            keys = [w64(k0[i, g, j]) for j in (1, 2)] + [k_new[g]]  # entry 0 fell out of the window
            vals = [w64(v0[i, g, j]) for j in (1, 2)] + [v_new[g]]
            outs.append(attend(q[h], keys, vals, 8**-0.5))
        torch.testing.assert_close(got[i, 0].double(), lin(attn.o_proj, torch.cat(outs)), **TOL)

    fixed = Attention(cfg, D, kv_mode="fixed")
    fixed.load_state_dict(attn.state_dict())
    fixed.setup_cache(b, s)
    assert fixed.k_cache.shape == (b, 2, w, 8)
    kc, vc = fixed.k_cache.clone(), fixed.v_cache.clone()
    got = fixed(x)
    for i in range(b):
        q = lin(fixed.q_proj, w64(x[i, 0])).view(4, 8)
        outs = [
            attend(
                q[h],
                [w64(kc[i, h // 2, j]) for j in range(w)],
                [w64(vc[i, h // 2, j]) for j in range(w)],
                8**-0.5,
            )
            for h in range(4)
        ]
        torch.testing.assert_close(got[i, 0].double(), lin(fixed.o_proj, torch.cat(outs)), **TOL)


def _check_prefill_attends_from(cfg: AttentionConfig, t: int, first_key: Callable[[int], int]) -> None:
    """The module's prefill output at every position p equals plain attention over keys first_key(p)..p,
    computed in float64 per head (GQA heads share their group's K/V)."""
    attn = randomize_(Attention(cfg, D, phase="prefill"))
    x = torch.randn(1, t, D)
    got = attn(x)
    assert cfg.n_kv_heads is not None and cfg.head_dim is not None
    h, kv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    qs = [lin(attn.q_proj, w64(x[0, p])).view(h, hd) for p in range(t)]
    ks = [lin(attn.k_proj, w64(x[0, p])).view(kv, hd) for p in range(t)]
    vs = [lin(attn.v_proj, w64(x[0, p])).view(kv, hd) for p in range(t)]
    group = h // kv
    for p in range(t):
        lo = first_key(p)
        outs = [
            attend(
                qs[p][i],
                [k[i // group] for k in ks[lo : p + 1]],
                [v[i // group] for v in vs[lo : p + 1]],
                hd**-0.5,
            )
            for i in range(h)
        ]
        torch.testing.assert_close(got[0, p].double(), lin(attn.o_proj, torch.cat(outs)), **TOL)


@pytest.mark.parametrize("window", [2, 5, 9])
def test_attention_prefill_sliding_window(window: int) -> None:
    """Query p attends to keys max(0, p - window + 1)..p (a window as long as the prompt is plain causal)."""
    cfg = AttentionConfig(kind="mha", n_heads=2, n_kv_heads=2, head_dim=8, sliding_window=window)
    _check_prefill_attends_from(cfg, 6, lambda p: max(0, p - window + 1))


@pytest.mark.parametrize("chunk", [2, 4, 9])
def test_attention_prefill_chunked(chunk: int) -> None:
    """Chunked attention (Llama 4): query p attends to keys (p // chunk) * chunk..p."""
    cfg = AttentionConfig(kind="gqa", n_heads=4, n_kv_heads=2, head_dim=8, attention_chunk=chunk)
    _check_prefill_attends_from(cfg, 7, lambda p: p // chunk * chunk)


def test_attention_chunked_decode() -> None:
    """Chunk 4 over a context of 10: the cache holds the current chunk's 10 mod 4 = 2 entries; append
    steps attend over them and their own K/V until the chunk is full, then start a new chunk; at a
    context that is a multiple of 4 a fixed-cache step attends to its own K/V alone."""
    cfg = AttentionConfig(kind="gqa", n_heads=4, n_kv_heads=2, head_dim=8, attention_chunk=4)
    attn = randomize_(Attention(cfg, D, kv_mode="append", append_headroom=4))
    b = 2
    attn.setup_cache(b, 10)
    assert attn.k_cache.shape == (b, 2, 2 + 4, 8)
    keys: list[torch.Tensor] = [attn.k_cache[:, :, j].clone().double() for j in range(2)]
    vals: list[torch.Tensor] = [attn.v_cache[:, :, j].clone().double() for j in range(2)]
    for step in range(3):  # positions 10, 11 (the chunk 8..11 fills up), then 12 (a new chunk)
        x = torch.randn(b, 1, D)
        got = attn(x)
        xi = w64(x[:, 0])
        k_new = torch.stack([lin(attn.k_proj, xi[i]) for i in range(b)]).view(b, 2, 8)
        v_new = torch.stack([lin(attn.v_proj, xi[i]) for i in range(b)]).view(b, 2, 8)
        if step == 2:
            keys, vals = [], []
        keys.append(k_new)
        vals.append(v_new)
        for i in range(b):
            q = lin(attn.q_proj, xi[i]).view(4, 8)
            outs = [
                attend(q[h], [k[i, h // 2] for k in keys], [v[i, h // 2] for v in vals], 8**-0.5)
                for h in range(4)
            ]
            torch.testing.assert_close(got[i, 0].double(), lin(attn.o_proj, torch.cat(outs)), **TOL)

    fixed = Attention(cfg, D, kv_mode="fixed")
    fixed.load_state_dict(attn.state_dict())
    fixed.setup_cache(b, 8)
    assert fixed.k_cache.shape == (b, 2, 0, 8)
    x = torch.randn(b, 1, D)
    got = fixed(x)
    for i in range(b):
        xi = w64(x[i, 0])
        v = lin(fixed.v_proj, xi).view(2, 8)  # one key: softmax weight 1 on its own value
        out = torch.cat([v[h // 2] for h in range(4)])
        torch.testing.assert_close(got[i, 0].double(), lin(fixed.o_proj, out), **TOL)


def _attend_with_sink(
    q: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor], sink: float
) -> torch.Tensor:
    """Loop attention whose denominator also holds exp(sink): the gpt-oss softmax."""
    logits = [float(q @ k) * q.numel() ** -0.5 for k in keys]
    top = max([*logits, sink])
    weights = [math.exp(x - top) for x in logits]
    z = sum(weights) + math.exp(sink - top)
    return sum((w / z) * v for w, v in zip(weights, values, strict=True))


def test_attention_sinks_decode_and_windowed_prefill() -> None:
    """gpt-oss attention: per query head a learned sink logit joins the softmax denominator; decode
    over a GQA cache, and prefill within a sliding window of 3 keys."""
    cfg = AttentionConfig(kind="gqa", n_heads=4, n_kv_heads=2, head_dim=8, qkv_bias=True, sinks=True)
    attn = randomize_(Attention(cfg, D, kv_mode="fixed"))
    assert attn.sinks is not None and attn.sinks.shape == (4,)
    b, s = 2, 5
    attn.setup_cache(b, s)
    kc, vc = attn.k_cache.clone(), attn.v_cache.clone()
    x = torch.randn(b, 1, D)
    got = attn(x)
    for i in range(b):
        q = lin(attn.q_proj, w64(x[i, 0])).view(4, 8)
        outs = [
            _attend_with_sink(
                q[h],
                [w64(kc[i, h // 2, j]) for j in range(s)],
                [w64(vc[i, h // 2, j]) for j in range(s)],
                float(attn.sinks[h].detach()),
            )
            for h in range(4)
        ]
        torch.testing.assert_close(got[i, 0].double(), lin(attn.o_proj, torch.cat(outs)), **TOL)

    windowed = cfg.model_copy(update={"sliding_window": 3})
    pre = Attention(windowed, D, phase="prefill")
    pre.load_state_dict(attn.state_dict())
    t = 6
    x = torch.randn(1, t, D)
    got = pre(x)
    qs = [lin(pre.q_proj, w64(x[0, p])).view(4, 8) for p in range(t)]
    ks = [lin(pre.k_proj, w64(x[0, p])).view(2, 8) for p in range(t)]
    vs = [lin(pre.v_proj, w64(x[0, p])).view(2, 8) for p in range(t)]
    for p in range(t):
        lo = max(0, p - 2)
        outs = [
            _attend_with_sink(
                qs[p][h],
                [k[h // 2] for k in ks[lo : p + 1]],
                [v[h // 2] for v in vs[lo : p + 1]],
                float(pre.sinks[h].detach()),
            )
            for h in range(4)
        ]
        torch.testing.assert_close(got[0, p].double(), lin(pre.o_proj, torch.cat(outs)), **TOL)


def _mla_reference(attn: MLAAttention, x: torch.Tensor, latents: list[torch.Tensor]) -> torch.Tensor:
    """Non-absorbed MLA for one token over cached latent rows [c | k_rope]: per position, per head,
    expand the latent with W_UK / W_UV and attend."""
    h, nope, rope, c, vd = attn.n_heads, attn.nope, attn.rope, attn.c, attn.vdim
    if attn.wq_a is not None:
        assert attn.q_norm is not None
        q = lin(attn.wq_b, rms_norm(lin(attn.wq_a, x), attn.q_norm))
    else:
        q = lin(attn.wq_b, x)
    q = q.view(h, nope + rope)
    w = w64(attn.wkv_b.weight).view(h, nope + vd, c)
    outs = []
    for head in range(h):
        keys, vals = [], []
        for row in latents:
            keys.append(torch.cat([w[head, :nope] @ row[:c], row[c:]]))
            vals.append(w[head, nope:] @ row[:c])
        outs.append(attend(q[head], keys, vals, (nope + rope) ** -0.5))
    return lin(attn.wo, torch.cat(outs))


def _latent(attn: MLAAttention, x: torch.Tensor) -> torch.Tensor:
    kv = lin(attn.wkv_a, x)
    return torch.cat([rms_norm(kv[: attn.c], attn.kv_norm), kv[attn.c :]])


def _mla_config(q_lora: int | None) -> AttentionConfig:
    return AttentionConfig(
        kind="mla",
        n_heads=3,
        q_lora_rank=q_lora,
        kv_lora_rank=10,
        qk_nope_head_dim=6,
        qk_rope_head_dim=4,
        v_head_dim=5,
    )


@pytest.mark.parametrize("q_lora", [None, 12])
def test_mla_absorbed_decode_matches_expanded(q_lora: int | None) -> None:
    cfg = _mla_config(q_lora)
    attn = randomize_(MLAAttention(cfg, D, kv_mode="append"))
    b, s = 2, 6
    attn.setup_cache(b, s)
    cache = attn.kv_cache.clone()
    x = torch.randn(b, 1, D)
    got = attn(x)
    for i in range(b):
        xi = w64(x[i, 0])
        rows = [w64(cache[i, j]) for j in range(s)] + [_latent(attn, xi)]
        torch.testing.assert_close(got[i, 0].double(), _mla_reference(attn, xi, rows), **TOL)
    assert attn.kv_cache.shape[-1] == cfg.kv_elements_per_token


def test_mla_prefill_causal() -> None:
    cfg = AttentionConfig(
        kind="mla",
        n_heads=2,
        q_lora_rank=8,
        kv_lora_rank=10,
        qk_nope_head_dim=6,
        qk_rope_head_dim=4,
        v_head_dim=5,
    )
    attn = randomize_(MLAAttention(cfg, D, phase="prefill"))
    x = torch.randn(1, 4, D)
    got = attn(x)
    rows = [_latent(attn, w64(x[0, p])) for p in range(4)]
    for p in range(4):
        want = _mla_reference(attn, w64(x[0, p]), rows[: p + 1])
        torch.testing.assert_close(got[0, p].double(), want, **TOL)


def _dsa_config(q_lora: int | None, topk: int) -> AttentionConfig:
    sparse = {"index_topk": topk, "index_n_heads": 2, "index_head_dim": 7}
    return AttentionConfig.model_validate({**_mla_config(q_lora).model_dump(), **sparse})


def _index_key(attn: SparseMLAAttention, x: torch.Tensor) -> torch.Tensor:
    k = lin(attn.index_wk, x)
    norm = attn.index_k_norm
    return (k - k.mean()) / torch.sqrt(k.var(unbiased=False) + norm.eps) * w64(norm.weight) + w64(norm.bias)


def _picked(attn: SparseMLAAttention, x: torch.Tensor, keys: list[torch.Tensor]) -> list[int]:
    """The lightning indexer by hand: score_j = sum over index heads of w_h(x) ReLU(q_h . k_j); the
    indices of the top-k scores."""
    latent = rms_norm(lin(attn.wq_a, x), attn.q_norm) if attn.wq_a is not None else x  # type: ignore[arg-type]
    q = lin(attn.index_wq, latent).view(attn.index_heads, attn.index_dim)
    w = lin(attn.index_weights, x)
    scores = [sum(float(w[h]) * max(float(q[h] @ k), 0.0) for h in range(attn.index_heads)) for k in keys]
    return sorted(range(len(keys)), key=lambda j: -scores[j])[: attn.topk]


@pytest.mark.parametrize("q_lora", [None, 12])
def test_sparse_mla_decode_attends_over_the_indexers_top_k_only(q_lora: int | None) -> None:
    """DeepSeek-V3.2 decode: of 7 reachable tokens (6 cached + its own) the indexer picks 3, and the
    output is MLA (expanded, by hand) over those 3 latent rows."""
    attn = randomize_(SparseMLAAttention(_dsa_config(q_lora, topk=3), D, kv_mode="append"))
    b, s = 2, 6
    attn.setup_cache(b, s)
    assert attn.kv_cache is not None and attn.index_cache is not None
    rows_cached, keys_cached = attn.kv_cache.clone(), attn.index_cache.clone()
    x = torch.randn(b, 1, D)
    got = attn(x)
    for i in range(b):
        xi = w64(x[i, 0])
        rows = [w64(rows_cached[i, j]) for j in range(s)] + [_latent(attn, xi)]
        keys = [w64(keys_cached[i, j]) for j in range(s)] + [_index_key(attn, xi)]
        picked = _picked(attn, xi, keys)
        want = _mla_reference(attn, xi, [rows[j] for j in picked])
        torch.testing.assert_close(got[i, 0].double(), want, **TOL)
        full = _mla_reference(attn, xi, rows)
        assert not torch.allclose(want, full, **TOL)  # the pick matters: 3 of 7 rows


def test_sparse_mla_prefill_picks_among_causal_keys() -> None:
    attn = randomize_(SparseMLAAttention(_dsa_config(8, topk=3), D, phase="prefill"))
    t = 6
    x = torch.randn(1, t, D)
    got = attn(x)
    rows = [_latent(attn, w64(x[0, p])) for p in range(t)]
    keys = [_index_key(attn, w64(x[0, p])) for p in range(t)]
    for p in range(t):
        picked = _picked(attn, w64(x[0, p]), keys[: p + 1])
        want = _mla_reference(attn, w64(x[0, p]), [rows[j] for j in picked])
        torch.testing.assert_close(got[0, p].double(), want, **TOL)


# ----------------------------------------------------------------------------------------- FFN and MoE
def _ffn_reference(ffn: DenseFFN, act: str, x: torch.Tensor) -> torch.Tensor:
    f = ACTS[act]
    if ffn.gate is not None:
        return lin(ffn.down, f(lin(ffn.gate, x)) * lin(ffn.up, x))
    return lin(ffn.down, f(lin(ffn.up, x)))


@pytest.mark.parametrize("act", ["gelu", "relu", "swiglu", "geglu"])
def test_dense_ffn(act: str) -> None:
    ffn = DenseFFN.from_config(DenseFFNConfig(d_ff=24, activation=act, bias=True), D)
    x = torch.randn(5, D)
    got = ffn(x)
    for t in range(5):
        torch.testing.assert_close(got[t].double(), _ffn_reference(ffn, act, w64(x[t])), **TOL)


def _expert(moe: MoE, e: int, act: str, x: torch.Tensor) -> torch.Tensor:
    f = ACTS[act]

    def bias(b: torch.nn.Parameter | None) -> torch.Tensor | float:
        return 0.0 if b is None else w64(b[e])

    up = w64(moe.w_up[e]) @ x + bias(moe.b_up)
    h = f(w64(moe.w_gate[e]) @ x + bias(moe.b_gate)) * up if moe.w_gate is not None else f(up)
    return w64(moe.w_down[e]) @ h + bias(moe.b_down)


def _moe_reference(moe: MoE, cfg: MoEConfig, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    logits = (w64(moe.router.weight) @ x).tolist()
    if cfg.router == "softmax":
        probs = softmax(logits)
        chosen = top(probs, cfg.top_k)
        gates = [probs[e] for e in chosen]
    else:
        sig = [1 / (1 + math.exp(-v)) for v in logits]
        bias = moe.router_bias.tolist() if moe.router_bias is not None else [0.0] * len(sig)
        choice = [s + b for s, b in zip(sig, bias, strict=True)]
        if cfg.n_groups:
            size = cfg.n_experts // cfg.n_groups
            group_score = [
                sum(sorted(choice[g * size : (g + 1) * size], reverse=True)[:2]) for g in range(cfg.n_groups)
            ]
            keep = set(top(group_score, cfg.topk_groups or cfg.n_groups))
            choice = [c if e // size in keep else -math.inf for e, c in enumerate(choice)]
        chosen = top(choice, cfg.top_k)
        total = sum(sig[e] for e in chosen)
        gates = [sig[e] / total for e in chosen]
    out = sum(g * _expert(moe, e, cfg.activation, x) for g, e in zip(gates, chosen, strict=True))
    if moe.shared is not None:
        shared = _ffn_reference(moe.shared, cfg.activation, x)
        if cfg.shared_gate:  # Qwen2-MoE: the shared expert scaled by sigmoid(g . x)
            assert moe.shared_gate is not None
            shared = shared / (1 + math.exp(-float(w64(moe.shared_gate.weight[0]) @ x)))
        out = out + shared
    return out, chosen


MOE_CONFIGS = {
    "gpt-oss": MoEConfig(n_experts=8, top_k=2, expert_ffn=12, router_bias=True, expert_bias=True),
    "softmax+shared": MoEConfig(n_experts=8, top_k=2, expert_ffn=12, n_shared_experts=1, shared_ffn=20),
    "qwen2-moe": MoEConfig(
        n_experts=8, top_k=2, expert_ffn=12, n_shared_experts=1, shared_ffn=20, shared_gate=True
    ),
    "gelu": MoEConfig(n_experts=6, top_k=3, expert_ffn=12, activation="gelu"),
    "deepseek-v3": MoEConfig(
        n_experts=8,
        top_k=3,
        expert_ffn=12,
        router="sigmoid",
        router_bias=True,
        n_groups=4,
        topk_groups=2,
        n_shared_experts=1,
        shared_ffn=12,
    ),
}


@pytest.mark.parametrize("name", list(MOE_CONFIGS))
def test_moe_and_routing_record(name: str) -> None:
    cfg = MOE_CONFIGS[name]
    moe = MoE(cfg, D)
    if moe.router_bias is not None:
        with torch.no_grad():
            moe.router_bias.normal_(0.0, 0.5)
    moe.recorder.enabled = True
    x = torch.randn(7, D)
    got = moe(x)
    chosen_all = []
    for t in range(7):
        want, chosen = _moe_reference(moe, cfg, w64(x[t]))
        chosen_all.append(chosen)
        torch.testing.assert_close(got[t].double(), want, **TOL)
    assert len(moe.recorder.records) == 1
    recorded = moe.recorder.records[0].view(7, cfg.top_k)
    assert [sorted(r) for r in recorded.tolist()] == [sorted(c) for c in chosen_all]
    items, counts = moe.recorder.histograms()[0]
    flat = [e for c in chosen_all for e in c]
    assert items.tolist() == sorted(set(flat))
    assert counts.tolist() == [flat.count(e) for e in sorted(set(flat))]


def test_moe_meta_routing_draws_k_distinct_uniform_experts() -> None:
    # on meta the router's choices are unknown: each token draws k distinct experts uniformly
    cfg = MoEConfig(n_experts=8, top_k=2, expert_ffn=12)
    moe = MoE(cfg, D, device="meta")
    counts = moe._expert_counts(torch.empty(6, dtype=torch.long, device="meta"))
    assert sum(counts) == 6 and max(counts) <= 3  # 3 tokens x 2 copies, at most one copy per token
    assert moe(torch.empty(3, D, device="meta")).shape == (3, D)
    choices = moe.uniform_choices(20_000)
    assert all(len(set(row)) == 2 for row in choices[:500].tolist())
    # every expert equally likely: 40,000 copies over 8 experts, 5,000 each (binomial sd 66)
    share = torch.bincount(choices.reshape(-1), minlength=8).double()
    assert (share - 5000).abs().max() < 5 * 66


# ----------------------------------------------------------------------------------------- product keys
def _pk_reference(q: torch.Tensor, keys: torch.Tensor, k: int) -> tuple[list[float], list[int]]:
    """One head: scores and rows (i*n + j) of the k best product keys, by enumeration."""
    n, half = keys.shape[1], keys.shape[2]
    s1 = [float(w64(keys[0, i]) @ q[:half]) for i in range(n)]
    s2 = [float(w64(keys[1, j]) @ q[half:]) for j in range(n)]
    cand = {i * n + j: s1[i] + s2[j] for i in top(s1, k) for j in top(s2, k)}
    rows = sorted(cand, key=lambda r: -cand[r])[:k]
    return [cand[r] for r in rows], rows


def _bag(table: torch.Tensor, rows: list[int], weights: list[float]) -> torch.Tensor:
    return sum(w * w64(table[r]) for r, w in zip(rows, weights, strict=True))


def _recorded_rows(recorder) -> list[int]:
    items, counts = recorder.histograms()[0]
    return sorted(int(i) for i, c in zip(items, counts, strict=True) for _ in range(int(c)))


@pytest.mark.parametrize("value_dim,bn", [(None, False), (12, True)])
def test_pkm(value_dim: int | None, bn: bool) -> None:
    cfg = PKMConfig(n_keys=6, heads=2, top_k=3, key_dim=8, value_dim=value_dim, query_batchnorm=bn)
    pkm = randomize_(PKM(cfg, D))
    if pkm.query_bn is not None:
        pkm.query_bn.running_mean.normal_()
        pkm.query_bn.running_var.uniform_(0.5, 2.0)
    pkm.recorder.enabled = True
    x = torch.randn(4, D)
    got = pkm(x)
    used: list[int] = []
    for t in range(4):
        q = lin(pkm.query, w64(x[t]))
        if pkm.query_bn is not None:
            bn_ = pkm.query_bn
            q = (q - w64(bn_.running_mean)) / torch.sqrt(w64(bn_.running_var) + bn_.eps)
            q = q * w64(bn_.weight) + w64(bn_.bias)
        out = 0.0
        for h in range(2):
            scores, rows = _pk_reference(q[h * 8 : (h + 1) * 8], pkm.keys[h], 3)
            out = out + _bag(pkm.table.values, rows, softmax(scores))
            used += rows
        if pkm.out_proj is not None:
            out = lin(pkm.out_proj, out)
        torch.testing.assert_close(got[t].double(), out, **TOL)
    assert _recorded_rows(pkm.recorder) == sorted(used)


@pytest.mark.parametrize("gated", [True, False])
def test_memory_plus(gated: bool) -> None:
    cfg = MemoryPlusConfig(n_keys=6, heads=2, top_k=3, key_dim=8, gated=gated)
    mem = randomize_(MemoryPlus(cfg, D))
    mem.recorder.enabled = True
    x = torch.randn(4, D)
    got = mem(x)
    used: list[int] = []
    for t in range(4):
        xt = w64(x[t])
        q = lin(mem.query, xt)
        bag = 0.0
        for h in range(2):
            scores, rows = _pk_reference(q[h * 8 : (h + 1) * 8], mem.keys[h], 3)
            bag = bag + _bag(mem.table.values, rows, softmax(scores))
            used += rows
        want = lin(mem.wo, bag * F.silu(lin(mem.w1, xt))) if gated else bag
        torch.testing.assert_close(got[t].double(), want, **TOL)
    assert _recorded_rows(mem.recorder) == sorted(used)


def test_peer() -> None:
    cfg = PEERConfig(n_keys=6, heads=2, top_k=3, query_dim=4)
    peer = randomize_(PEER(cfg, D))
    peer.recorder.enabled = True
    x = torch.randn(4, D)
    got = peer(x)
    used: list[int] = []
    for t in range(4):
        xt = w64(x[t])
        q = lin(peer.query, xt)
        out = 0.0
        for h in range(2):
            scores, rows = _pk_reference(q[h * 8 : (h + 1) * 8], peer.keys[h], 3)
            for g, r in zip(softmax(scores), rows, strict=True):
                out = out + g * F.gelu(w64(peer.table.down[r]) @ xt) * w64(peer.table.up[r])
            used += rows
        torch.testing.assert_close(got[t].double(), out, **TOL)
    assert _recorded_rows(peer.recorder) == sorted(used)


# ----------------------------------------------------------------------------------------- Tucker memories
def _rank_one(cores: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Leading singular pair of the summed cores, sign fixed: u's largest-|.| entry positive."""
    u_mat, _, vh = np.linalg.svd(w64(cores).sum(0).numpy())
    u, t = u_mat[:, 0], vh[0, :]
    sign = 1.0 if u[np.argmax(np.abs(u))] >= 0 else -1.0
    return u * sign, t * sign


def _tdqkr_reference(
    s_row: np.ndarray, s_col: np.ndarray, cores: torch.Tensor, m_rc: int, m: int
) -> list[tuple[int, int, list[float]]]:
    """One head: (row, col, per-core scores) of the m best grid cells. s_row/s_col: (r, n)."""
    u, t = _rank_one(cores)
    n = s_row.shape[1]
    rows = top([float(u @ s_row[:, i]) for i in range(n)], m_rc)
    cols = top([float(t @ s_col[:, j]) for j in range(n)], m_rc)
    cells = []
    for a in rows:
        for b in cols:
            per_core = [float(s_row[:, a] @ w64(c).numpy() @ s_col[:, b]) for c in cores]
            cells.append((a, b, per_core))
    cells.sort(key=lambda cell: -sum(cell[2]))
    return cells[:m]


def _shuffle(v: int, size: int) -> int:
    return (v * shuffle_multiplier(size) + SHUFFLE_OFFSET) % size


def test_ultramem() -> None:
    cfg = UltraMemConfig(
        knum=5, key_dim=6, rank=2, cores=2, heads=3, top_m=4, row_col_top=3, value_dim=8, expansion=4
    )
    mem = randomize_(UltraMem(cfg, D))
    mem.recorder.enabled = True
    n, e, phys_rows = cfg.keys_per_side, cfg.expansion, cfg.rows
    x = torch.randn(3, D)
    got = mem(x)
    used: list[int] = []
    for t in range(3):
        xt = w64(x[t])
        q_all = lin(mem.wq, xt).view(mem.queries, 2, cfg.key_dim)
        acc = torch.zeros(e, cfg.value_dim, dtype=torch.float64)
        for h in range(cfg.heads):
            q = [layer_norm(q_all[h // 2, side], mem.q_norm) for side in range(2)]
            keys = w64(mem.keys[h])  # (2, n, r, D_k)
            s_row = np.array([[float(keys[0, i, r] @ q[0]) for i in range(n)] for r in range(cfg.rank)])
            s_col = np.array([[float(keys[1, j, r] @ q[1]) for j in range(n)] for r in range(cfg.rank)])
            for a, b, per_core in _tdqkr_reference(s_row, s_col, mem.cores[h], cfg.m_rc, cfg.top_m):
                virt = _shuffle(a * n + b, e * phys_rows)
                row, group = virt % phys_rows, virt // phys_rows
                used.append(row)
                value = w64(mem.table.values[row]).view(cfg.cores, -1)
                acc[group] += torch.cat([per_core[i] * value[i] for i in range(cfg.cores)])
        torch.testing.assert_close(got[t].double(), lin(mem.wo, acc.reshape(-1)), **TOL)
    assert _recorded_rows(mem.recorder) == sorted(used)


def test_tucker_rank_one_vectors_computed_once_until_the_cores_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the SVD of the summed cores runs on the first step only (its CUDA kernel syncs with the host, which
    # would keep the steps out of a CUDA graph); an in-place update of the cores computes it again
    import profiler.modules.retrieval as retrieval

    calls = []
    real = retrieval.rank_one_vectors
    monkeypatch.setattr(retrieval, "rank_one_vectors", lambda c: calls.append(1) or real(c))
    cfg = UltraMemV2Config(knum=5, key_dim=6, top_m=5, row_col_top=3, value_dim=8, pre_value_dim=4)
    mem = randomize_(UltraMemV2(cfg, D))
    x = torch.randn(3, D)
    first = mem(x)
    torch.testing.assert_close(mem(x), first)
    assert len(calls) == 1
    with torch.no_grad():
        mem.cores.mul_(-1.0)  # flips the sign of every core: other rank-one vectors, other scores
    mem(x)
    assert len(calls) == 2


@pytest.mark.parametrize("layer_index,share_ratio", [(0, None), (1, 0.75)])
def test_ultramemv2(layer_index: int, share_ratio: float | None) -> None:
    cfg = UltraMemV2Config(
        knum=5,
        key_dim=6,
        rank=2,
        cores=2,
        heads=1,
        top_m=5,
        row_col_top=3,
        value_dim=8,
        pre_value_dim=4,
        share_ratio=share_ratio,
    )
    layers = 2
    mem = randomize_(UltraMemV2(cfg, D, layer_index=layer_index, memory_layers=layers))
    mem.recorder.enabled = True
    n = cfg.keys_per_side(layers)
    table_rows = cfg.knum**2 * layers
    assert mem.table.values.shape[0] == table_rows and mem.n == n
    x = torch.randn(3, D)
    got = mem(x)
    used: list[int] = []
    for t in range(3):
        xt = w64(x[t])
        q = lin(mem.wq, xt).view(2, cfg.rank, cfg.key_dim)
        x_pre = lin(mem.w_pre, xt)
        keys = w64(mem.keys[0])
        s = [
            np.array(
                [
                    [float(keys[side, i, r] @ layer_norm(q[side, r], mem.q_norm)) for i in range(n)]
                    for r in range(cfg.rank)
                ]
            )
            for side in range(2)
        ]
        pooled = torch.zeros(cfg.value_dim, dtype=torch.float64)
        for a, b, per_core in _tdqkr_reference(s[0], s[1], mem.cores[0], cfg.m_rc, cfg.top_m):
            row = (_shuffle(a * n + b, n * n) + layer_index * cfg.knum**2) % table_rows
            used.append(row)
            dot = float(w64(mem.table.pre_values[row]) @ x_pre)  # no activation on the pre-value product
            value = w64(mem.table.values[row]).view(cfg.cores, -1)
            pooled += torch.cat([per_core[i] * dot * value[i] for i in range(cfg.cores)])
        torch.testing.assert_close(got[t].double(), lin(mem.wo, pooled), **TOL)
    assert _recorded_rows(mem.recorder) == sorted(used)
    assert all(
        layer_index * cfg.knum**2 <= r or r < (layer_index * cfg.knum**2 + n * n) % table_rows for r in used
    )  # inside the layer's (ring) window


# ----------------------------------------------------------------------------------------- whole model
def _model(parallel: bool, tie: bool = False, skip: int = 0) -> ModelConfig:
    attn = AttentionConfig(kind="gqa", n_heads=4, n_kv_heads=2, head_dim=4)
    ffn: list = [
        DenseFFNConfig(d_ff=24),
        MoEConfig(n_experts=4, top_k=2, expert_ffn=8),
        UltraMemV2Config(knum=5, key_dim=4, top_m=4, row_col_top=3, value_dim=8, pre_value_dim=4),
    ]
    if skip:
        ffn.append(UltraMemConfig(knum=4, key_dim=4, top_m=3, row_col_top=2, value_dim=4, skip_span=skip))
    return ModelConfig(
        name="tiny",
        d_model=D,
        vocab_size=11,
        tie_embeddings=tie,
        blocks=[BlockConfig(repeat=3, attention=attn, ffn=ffn, parallel_ffn=parallel)],
    )


@pytest.mark.parametrize("parallel,tie,skip", [(False, False, 0), (True, True, 0), (False, False, 1)])
def test_reference_model_wiring(parallel: bool, tie: bool, skip: int) -> None:
    cfg = _model(parallel, tie, skip)
    model = randomize_(ReferenceModel(cfg, record_routing=True))
    model.setup_cache(2, 5)
    ids = torch.randint(0, 11, (2, 1))
    got = model(ids)
    # the same composition, written out: residual adds, one norm per FFN-position layer (or one shared)
    h = model.embed(ids)
    pending: dict[int, list[torch.Tensor]] = {}
    for i, block in enumerate(model.blocks):
        h = h + block.attn.layer(block.attn.norm(h))
        u0 = block.ffn[0].norm(h)
        outs = []
        for sub in block.ffn:
            out = sub.layer(u0 if parallel else sub.norm(h))
            if sub.skip_span:
                pending.setdefault(min(i + sub.skip_span, 2), []).append(out)
            elif parallel:
                outs.append(out)
            else:
                h = h + out
        h = h + sum(outs) if outs else h
        h = h + sum(pending.pop(i, [])) if i in pending else h
    want = model.head(model.norm(h))
    torch.testing.assert_close(got, want, **TOL)
    if tie:
        assert model.head.weight is model.embed.weight
    names = model.layer_names()
    assert names[:5] == ["embed", "block0.attn", "block0.ffn", "block0.moe", "block0.memory"]
    assert ("block0.memory1" in names) == bool(skip)
    assert set(model.routing_recorders()) == {n for n in names if ".moe" in n or ".memory" in n}


def test_named_ranges_in_profiler_trace() -> None:
    model = ReferenceModel(_model(True))
    model.setup_cache(1, 4)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(model.make_input(1, 4))
    names = {e.name for e in prof.events()}
    assert {f"block{i}.{s}" for i in range(3) for s in ("attn", "ffn", "moe", "memory")} <= names
    assert {"embed", "head"} <= names


# ----------------------------------------------------------------------------------------- parameter counts
def _hardware() -> HardwareConfig:
    q = {"tag": "user"}
    return HardwareConfig(
        name="test",
        peak_flops={"bf16": {"value": 1e15, **q}},
        hbm_bandwidth={"value": 3e12, **q},
        hbm_capacity={"value": 8e10, **q},
        l2_bytes={"value": 5e7, **q},
    )


FAMILY_LAYERS = {
    "dense": [DenseFFNConfig(d_ff=40, activation="gelu", bias=True)],
    "moe": [
        MoEConfig(
            n_experts=6,
            top_k=2,
            expert_ffn=12,
            n_shared_experts=2,
            shared_ffn=24,
            router="sigmoid",
            router_bias=True,
            expert_bias=True,
            n_groups=3,
            topk_groups=2,
        )
    ],
    "pkm": [
        DenseFFNConfig(d_ff=40),
        PKMConfig(
            n_keys=6, heads=2, top_k=3, key_dim=8, value_dim=12, query_batchnorm=True, shared_table="pk"
        ),
    ],
    "peer": [PEERConfig(n_keys=6, heads=2, top_k=3, query_dim=4)],
    "memory_plus": [MemoryPlusConfig(n_keys=6, heads=2, top_k=3, key_dim=8)],
    "ultramem": [DenseFFNConfig(d_ff=40), UltraMemConfig(knum=5, key_dim=6, heads=3, top_m=4, value_dim=8)],
    "ultramemv2": [
        DenseFFNConfig(d_ff=40),
        UltraMemV2Config(
            knum=5, key_dim=6, top_m=4, row_col_top=3, value_dim=9, pre_value_dim=3, cores=3, share_ratio=0.5
        ),
    ],
}
ATTENTIONS = {
    "gqa": AttentionConfig(kind="gqa", n_heads=4, n_kv_heads=2, head_dim=4, qkv_bias=True, o_bias=True),
    "mla": AttentionConfig(
        kind="mla",
        n_heads=2,
        q_lora_rank=8,
        kv_lora_rank=6,
        qk_nope_head_dim=4,
        qk_rope_head_dim=2,
        v_head_dim=3,
    ),
}
ATTENTIONS["mla_sparse"] = ATTENTIONS["mla"].model_copy(
    update={"index_topk": 4, "index_n_heads": 3, "index_head_dim": 5}
)


def _hand_params(cfg: ModelConfig) -> int:
    """Cost-reference closed forms (sections 3-10), norms left out, shared tables once."""
    d = cfg.d_model
    total = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    tables: dict[str, int] = {}
    for block in cfg.expanded_blocks():
        a = block.attention
        if a.kind == "mla":
            qk = a.qk_nope_head_dim + a.qk_rope_head_dim
            total += d * a.q_lora_rank + a.q_lora_rank * a.n_heads * qk
            total += d * (a.kv_lora_rank + a.qk_rope_head_dim)
            total += a.kv_lora_rank * a.n_heads * (a.qk_nope_head_dim + a.v_head_dim)
            total += a.n_heads * a.v_head_dim * d
            if a.index_topk:  # DSA's indexer: queries off the query latent, one key, head weights
                total += a.q_lora_rank * a.index_n_heads * a.index_head_dim + d * (
                    a.index_head_dim + a.index_n_heads
                )
        else:
            hd, kv = a.head_dim, a.kv_heads
            total += 2 * d * a.n_heads * hd + 2 * d * kv * hd
            total += (a.n_heads * hd + 2 * kv * hd if a.qkv_bias else 0) + (d if a.o_bias else 0)
        for f in block.ffn:
            gated = getattr(f, "activation", "") in ("swiglu", "geglu")
            if f.kind == "dense":
                total += (3 if gated else 2) * d * f.d_ff
                total += ((2 if gated else 1) * f.d_ff + d) if f.bias else 0
            elif f.kind == "moe":
                mats = 3 if gated else 2
                total += f.n_experts * mats * d * f.expert_ffn + mats * d * f.shared_ffn + d * f.n_experts
                total += f.n_experts if f.router_bias else 0
                total += f.n_experts * ((mats - 1) * f.expert_ffn + d) if f.expert_bias else 0
            elif f.kind == "pkm":
                v = f.value_dim or d
                total += d * f.heads * f.key_dim + f.heads * f.key_dim + f.heads * f.n_keys * f.key_dim
                total += 2 * f.heads * f.key_dim if f.query_batchnorm else 0
                total += v * d if v != d else 0
                total += f.rows * v if f.shared_table is None else 0
                tables.update({f.shared_table: f.rows * v} if f.shared_table else {})
            elif f.kind == "peer":
                total += d * f.heads * 2 * f.query_dim + f.heads * 2 * f.n_keys * f.query_dim
                total += f.rows * 2 * d if f.shared_table is None else 0
                tables.update({f.shared_table: f.rows * 2 * d} if f.shared_table else {})
            elif f.kind == "memory_plus":
                total += d * f.heads * f.key_dim + f.heads * f.key_dim + f.heads * f.n_keys * f.key_dim
                total += 2 * (d * d + d)
                tables[f.shared_table] = f.rows * d
            elif f.kind == "ultramem":
                total += math.ceil(f.heads / 2) * 2 * d * f.key_dim
                total += f.heads * 2 * f.keys_per_side * f.key_dim * f.rank
                total += f.cores * f.heads * f.rank**2 + f.expansion * f.value_dim * d + f.rows * f.value_dim
            elif f.kind == "ultramemv2":
                n = f.keys_per_side(cfg.memory_layer_count(f.shared_table))
                total += 2 * f.rank * d * f.key_dim + 2 * n * f.key_dim * f.rank + f.cores * f.rank**2
                total += d * f.pre_value_dim + f.value_dim * d
                tables[f.shared_table] = (
                    f.knum**2 * cfg.memory_layer_count(f.shared_table) * (f.value_dim + f.pre_value_dim)
                )
    return total + sum(tables.values())


@pytest.mark.parametrize("attn", list(ATTENTIONS))
@pytest.mark.parametrize("family", list(FAMILY_LAYERS))
def test_param_count_equals_simulator(family: str, attn: str) -> None:
    cfg = ModelConfig(
        name=f"{family}-{attn}",
        d_model=D,
        vocab_size=13,
        tie_embeddings=family == "peer",
        blocks=[
            BlockConfig(
                repeat=2,
                attention=ATTENTIONS[attn],
                ffn=FAMILY_LAYERS[family],
                parallel_ffn=family == "ultramemv2",
            )
        ],
    )
    ref = ReferenceModel(cfg, device="meta").param_count()
    assert ref == _hand_params(cfg)
    from simulator.sweep import simulate

    sim = simulate(cfg, _hardware(), Workload(batch=[1], context=[8]))
    assert ref == int(sim.loc[sim["layer"] == "total", "params"].iloc[0])


def _preset_names() -> list[str]:
    from simulator.loading import preset_names

    return preset_names("model")


@pytest.mark.parametrize("name", _preset_names())
def test_every_preset_builds_on_meta_with_the_simulators_param_count(name: str) -> None:
    from simulator.loading import load_model
    from simulator.sweep import simulate

    cfg = load_model(name)
    ref = ReferenceModel(cfg, device="meta", dtype="bf16").param_count()
    sim = simulate(cfg, _hardware(), Workload(batch=[1], context=[8]))
    assert ref == int(sim.loc[sim["layer"] == "total", "params"].iloc[0])

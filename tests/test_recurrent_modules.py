"""Recurrent token mixers (Mamba, Mamba-2, Gated DeltaNet) and Qwen3-Next's gated attention.

- against plain per-token loops written here (float64 modules, float64 loops): prefill (several chunk
  sizes, prompts not a multiple of the chunk), decode steps after a prefill and from a cached state;
- parameter counts against simulator.layers.recurrent.params;
- op-level counts (profiler.count on meta tensors, realistic sizes) against the simulator's per-layer
  FLOPs and state bytes: the brute-force check of simulator/layers/recurrent.py;
- whole hybrid models through ReferenceModel, `memtraffic count` and a CPU profile.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from profiler.count import count_model, summarize_layers
from profiler.modules import (
    Attention,
    GatedDeltaNet,
    KimiDeltaAttention,
    LightningAttention,
    Mamba,
    Mamba2,
    ReferenceModel,
    build_recurrent,
)
from profiler.modules.common import NORM_TYPES
from profiler.opcount import op_bytes, tensor_bytes
from simulator.config import (
    AttentionConfig,
    BlockConfig,
    GatedDeltaNetConfig,
    LightningAttentionConfig,
    Mamba2Config,
    MambaConfig,
    ModelConfig,
    RecurrentMixer,
    Workload,
)
from simulator.layers import attention as sim_attention
from simulator.layers import recurrent as sim_recurrent
from simulator.loading import load_hardware
from simulator.sweep import simulate
from tests.test_modules import _seed_and_one_thread, w64  # noqa: F401  (the fixture applies here too)

D = 16
TOL = {"atol": 1e-10, "rtol": 1e-10}
F64 = torch.float64


# ----------------------------------------------------------------------------------------- loop helpers


def lin(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """One token through an nn.Linear, as a matrix-vector product in float64."""
    y = w64(layer.weight) @ x
    return y + w64(layer.bias) if layer.bias is not None else y


def silu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def softplus(x: torch.Tensor) -> torch.Tensor:
    return torch.log1p(torch.exp(x))


def rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean() + eps)


class CausalConv:
    """A depthwise causal convolution, one token at a time, over a list of the last d_conv - 1 inputs."""

    def __init__(self, conv: torch.nn.Conv1d, history: torch.Tensor | None) -> None:
        self.weight = w64(conv.weight)[:, 0]  # (channels, d_conv); tap d_conv - 1 is the newest input
        self.bias = w64(conv.bias) if conv.bias is not None else None
        c, k = self.weight.shape
        past = w64(history) if history is not None else torch.zeros(c, k - 1, dtype=F64)
        self.inputs = [past[:, i] for i in range(k - 1)]

    def step(self, u: torch.Tensor) -> torch.Tensor:
        self.inputs.append(u)
        window = self.inputs[-self.weight.shape[1] :]
        out = sum(self.weight[:, i] * window[i] for i in range(len(window)))
        self.inputs = self.inputs[1:]
        return silu(out + self.bias if self.bias is not None else out)

    def state(self) -> torch.Tensor:
        return torch.stack(self.inputs, dim=-1) if self.inputs else torch.zeros(self.weight.shape[0], 0)


class MambaLoop:
    """Mamba-1, token by token, channel by channel."""

    def __init__(self, m: Mamba, state: torch.Tensor | None, conv: torch.Tensor | None) -> None:
        self.m = m
        self.h = w64(state) if state is not None else torch.zeros(m.d_inner, m.d_state, dtype=F64)
        self.conv = CausalConv(m.conv1d, conv)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        m, di, n, r = self.m, self.m.d_inner, self.m.d_state, self.m.dt_rank
        xz = lin(m.in_proj, x)
        u = self.conv.step(xz[:di])
        dbc = lin(m.x_proj, u)
        dt = softplus(lin(m.dt_proj, dbc[:r]))
        b, c = dbc[r : r + n], dbc[r + n :]
        a = -torch.exp(w64(m.A_log))
        y = torch.zeros(di, dtype=F64)
        for ch in range(di):
            self.h[ch] = torch.exp(dt[ch] * a[ch]) * self.h[ch] + dt[ch] * u[ch] * b
            y[ch] = self.h[ch] @ c + w64(m.D)[ch] * u[ch]
        return lin(m.out_proj, y * silu(xz[di:]))


class Mamba2Loop:
    """Mamba-2, token by token, head by head."""

    def __init__(self, m: Mamba2, state: torch.Tensor | None, conv: torch.Tensor | None) -> None:
        self.m = m
        shape = (m.n_heads, m.head_dim, m.d_state)
        self.h = w64(state) if state is not None else torch.zeros(shape, dtype=F64)
        self.conv = CausalConv(m.conv1d, conv)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        m = self.m
        di, cc, gn, p = m.d_inner, m.conv_channels, m.n_groups * m.d_state, m.head_dim
        proj = lin(m.in_proj, x)
        z, xbc = proj[:di], self.conv.step(proj[di : di + cc])
        dt = softplus(proj[di + cc :] + w64(m.dt_bias))
        xs = xbc[:di].view(m.n_heads, p)
        b, c = xbc[di : di + gn].view(m.n_groups, -1), xbc[di + gn :].view(m.n_groups, -1)
        y = torch.zeros(m.n_heads, p, dtype=F64)
        for head in range(m.n_heads):
            g = head // (m.n_heads // m.n_groups)
            decay = torch.exp(-torch.exp(w64(m.A_log)[head]) * dt[head])
            self.h[head] = decay * self.h[head] + dt[head] * torch.outer(xs[head], b[g])
            y[head] = self.h[head] @ c[g] + w64(m.D)[head] * xs[head]
        gated = y.reshape(-1) * silu(z)
        normed = torch.cat([rms(part, m.norm.eps) for part in gated.chunk(m.n_groups)]) * w64(m.norm.weight)
        return lin(m.out_proj, normed)


class GatedDeltaNetLoop:
    """Gated DeltaNet, token by token, value head by value head (the delta rule as written)."""

    def __init__(self, m: GatedDeltaNet, state: torch.Tensor | None, conv: torch.Tensor | None) -> None:
        self.m = m
        shape = (m.n_v_heads, m.head_k_dim, m.head_v_dim)
        self.h = w64(state) if state is not None else torch.zeros(shape, dtype=F64)
        self.conv = CausalConv(m.conv1d, conv)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        m = self.m
        kd, vd, dk, dv = m.key_dim, m.value_dim, m.head_k_dim, m.head_v_dim
        qkvz = lin(m.in_proj_qkvz, x)
        qkv, z = self.conv.step(qkvz[: 2 * kd + vd]), qkvz[2 * kd + vd :]
        ba = lin(m.in_proj_ba, x)
        q, k = qkv[:kd].view(m.n_k_heads, dk), qkv[kd : 2 * kd].view(m.n_k_heads, dk)
        v = qkv[2 * kd :].view(m.n_v_heads, dv)
        outs = []
        for j in range(m.n_v_heads):
            kh = j // (m.n_v_heads // m.n_k_heads)
            qj = q[kh] / torch.sqrt(q[kh] @ q[kh] + 1e-6) / math.sqrt(dk)
            kj = k[kh] / torch.sqrt(k[kh] @ k[kh] + 1e-6)
            beta = torch.sigmoid(ba[j])
            g = -torch.exp(w64(m.A_log)[j]) * softplus(ba[m.n_v_heads + j] + w64(m.dt_bias)[j])
            s = torch.exp(g) * self.h[j]
            delta = beta * (v[j] - s.T @ kj)
            self.h[j] = s + torch.outer(kj, delta)
            o = self.h[j].T @ qj
            outs.append(rms(o, m.norm.eps) * w64(m.norm.weight) * silu(z[j * dv : (j + 1) * dv]))
        return lin(m.out_proj, torch.cat(outs))


class KimiDeltaLoop(GatedDeltaNetLoop):
    """Kimi Delta Attention, token by token, head by head: the delta rule after a decay per key
    channel (each row of the head's state by its own factor), the output gated by a sigmoid."""

    def step(self, x: torch.Tensor) -> torch.Tensor:
        m = self.m
        assert isinstance(m, KimiDeltaAttention)
        kd, dk, dv = m.key_dim, m.head_k_dim, m.head_v_dim
        qkv = self.conv.step(lin(m.in_proj_qkv, x))
        q, k = qkv[:kd].view(m.n_k_heads, dk), qkv[kd : 2 * kd].view(m.n_k_heads, dk)
        v = qkv[2 * kd :].view(m.n_v_heads, dv)
        decay = softplus(lin(m.f_b, lin(m.f_a, x)) + w64(m.dt_bias)).view(m.n_v_heads, dk)
        gate = torch.sigmoid(lin(m.g_b, lin(m.g_a, x)))
        outs = []
        for j in range(m.n_v_heads):
            qj = q[j] / torch.sqrt(q[j] @ q[j] + 1e-6) / math.sqrt(dk)
            kj = k[j] / torch.sqrt(k[j] @ k[j] + 1e-6)
            beta = torch.sigmoid(lin(m.b_proj, x)[j])
            g = -torch.exp(w64(m.A_log)[j]) * decay[j]  # one log decay per key channel
            s = torch.exp(g)[:, None] * self.h[j]
            delta = beta * (v[j] - s.T @ kj)
            self.h[j] = s + torch.outer(kj, delta)
            o = self.h[j].T @ qj
            outs.append(rms(o, m.norm.eps) * w64(m.norm.weight) * gate[j * dv : (j + 1) * dv])
        return lin(m.out_proj, torch.cat(outs))


class NoConv:
    """Lightning attention has no convolution: its convolution state is empty."""

    def state(self) -> torch.Tensor:
        return torch.zeros(0, 0, dtype=F64)


class LightningLoop:
    """Lightning attention, token by token, head by head: S = lambda S + k^T v, o = q S, with lambda
    = 2^(-8 (h + 1) / heads) as a decay factor exp(-slope) per head."""

    def __init__(self, m: LightningAttention, state: torch.Tensor | None, conv: torch.Tensor | None) -> None:
        self.m = m
        shape = (m.n_heads, m.head_dim, m.head_dim)
        self.h = w64(state) if state is not None else torch.zeros(shape, dtype=F64)
        self.conv = NoConv()

    def step(self, x: torch.Tensor) -> torch.Tensor:
        m, dh = self.m, self.m.head_dim
        qkv = silu(lin(m.qkv_proj, x))
        inner = m.n_heads * dh
        outs = []
        for h in range(m.n_heads):
            q, k, v = (qkv[part * inner + h * dh : part * inner + (h + 1) * dh] for part in range(3))
            decay = math.exp(-(2.0 ** (-8.0 * (h + 1) / m.n_heads)))
            self.h[h] = decay * self.h[h] + torch.outer(k, v)
            outs.append(q @ self.h[h])
        o = torch.cat(outs)
        return lin(m.out_proj, rms(o, m.norm.eps) * w64(m.norm.weight) * torch.sigmoid(lin(m.output_gate, x)))


Loop = MambaLoop | Mamba2Loop | GatedDeltaNetLoop | KimiDeltaLoop | LightningLoop
LOOPS: dict[str, Callable[..., Loop]] = {
    "mamba": MambaLoop,
    "mamba2": Mamba2Loop,
    "gated_deltanet": GatedDeltaNetLoop,
    "kda": KimiDeltaLoop,
    "lightning": LightningLoop,
}
MIXERS: dict[str, RecurrentMixer] = {
    "mamba": MambaConfig(d_inner=12, d_state=4, dt_rank=3, d_conv=4, proj_bias=True),
    "mamba2": Mamba2Config(
        n_heads=6, head_dim=4, d_state=5, n_groups=2, chunk_size=4, d_conv=3, proj_bias=True
    ),
    "gated_deltanet": GatedDeltaNetConfig(
        n_k_heads=2, n_v_heads=4, head_k_dim=6, head_v_dim=5, chunk_size=4, d_conv=4, conv_bias=True
    ),
    "kda": GatedDeltaNetConfig(
        n_k_heads=3, n_v_heads=3, head_k_dim=6, head_v_dim=5, chunk_size=4, d_conv=4, gate_rank=4
    ),
    "lightning": LightningAttentionConfig(n_heads=6, head_dim=5, chunk_size=4),  # slopes inexact in fp32
}


def make(cfg: RecurrentMixer, phase: str, dtype: torch.dtype = F64) -> Any:
    m = build_recurrent(cfg, D, phase=phase, dtype=dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.5)
    return m.eval()


def loop_outputs(loop: Loop, x: torch.Tensor) -> list[torch.Tensor]:
    return [loop.step(w64(x[t])) for t in range(x.shape[0])]


# ----------------------------------------------------------------------------------------- against loops
@pytest.mark.parametrize("chunk", [None, 1, 3, 16])
@pytest.mark.parametrize("kind", list(MIXERS))
def test_prefill_then_decode_continue_the_loop(kind: str, chunk: int | None) -> None:
    """A 10-token prompt (not a multiple of chunks of 3 or 4; shorter than 16) then 3 decode steps: the
    outputs, the state and the convolution's inputs are the loop's from a zero state."""
    cfg = MIXERS[kind]
    if chunk is not None:
        if kind == "mamba":
            pytest.skip("Mamba scans token by token: no chunks")
        cfg = cfg.model_copy(update={"chunk_size": chunk})
    m = make(cfg, "prefill")
    bsz, prompt, steps = 2, 10, 3
    m.setup_cache(bsz, prompt)  # random contents: a fresh prompt must not read them
    x = torch.randn(bsz, prompt + steps, D, dtype=F64)
    with torch.no_grad():
        got_prompt = m(x[:, :prompt])
        state, conv = m.state.clone(), m.conv_state.clone()
        m.phase = "decode"
        got_steps = [m(x[:, prompt + i : prompt + i + 1]) for i in range(steps)]
    for b in range(bsz):
        loop = LOOPS[kind](m, None, None)
        want = loop_outputs(loop, x[b, :prompt])
        torch.testing.assert_close(got_prompt[b], torch.stack(want), **TOL)
        torch.testing.assert_close(state[b], loop.h, **TOL)
        torch.testing.assert_close(conv[b], loop.conv.state(), **TOL)
        for i in range(steps):
            torch.testing.assert_close(got_steps[i][b, 0], loop.step(w64(x[b, prompt + i])), **TOL)
        torch.testing.assert_close(m.state[b], loop.h, **TOL)


@pytest.mark.parametrize("kind", list(MIXERS))
def test_decode_from_a_cached_state_and_several_tokens_in_one_call(kind: str) -> None:
    m = make(MIXERS[kind], "decode")
    m.setup_cache(3, 100, fill="randn")
    state, conv = m.state.clone(), m.conv_state.clone()
    x = torch.randn(3, 4, D, dtype=F64)
    with torch.no_grad():
        one_by_one = torch.cat([m(x[:, i : i + 1]) for i in range(4)], dim=1)
        after = m.state.clone()
        m.state.copy_(state)
        m.conv_state.copy_(conv)
        together = m(x)
    torch.testing.assert_close(together, one_by_one, **TOL)
    torch.testing.assert_close(m.state, after, **TOL)
    for b in range(3):
        loop = LOOPS[kind](m, state[b], conv[b])
        torch.testing.assert_close(one_by_one[b], torch.stack(loop_outputs(loop, x[b])), **TOL)
        torch.testing.assert_close(after[b], loop.h, **TOL)


@pytest.mark.parametrize("kind", list(MIXERS))
def test_state_buffers_keep_their_storage_and_shape(kind: str) -> None:
    """Decode updates the state in place (CUDA graphs replay the same addresses); a batch other than
    the cache's is refused, and so is a forward before setup_cache."""
    m = make(MIXERS[kind], "decode", torch.float32)
    with pytest.raises(RuntimeError, match="setup_cache"):
        m(torch.randn(2, 1, D))
    m.setup_cache(2, 8)
    ptrs = (m.state.data_ptr(), m.conv_state.data_ptr())
    before = m.state.clone()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(2, 1, D))
    assert (m.state.data_ptr(), m.conv_state.data_ptr()) == ptrs
    assert not torch.equal(m.state, before)
    with pytest.raises(RuntimeError, match="holds 2 sequences"):
        m(torch.randn(3, 1, D))


@pytest.mark.parametrize("phase", ["decode", "prefill"])
@pytest.mark.parametrize("kind", list(MIXERS))
def test_meta_tensors_and_a_wider_state_dtype(kind: str, phase: str) -> None:
    """Shapes only (meta) and a bf16 module whose state is cached in fp32: the state keeps its dtype."""
    cfg = MIXERS[kind].model_copy(update={"state_dtype": "fp32"})
    meta = build_recurrent(cfg, D, phase=phase, device="meta", dtype=torch.bfloat16)
    meta.setup_cache(2, 8, fill="none")
    t = 9 if phase == "prefill" else 1
    out = meta(torch.empty(2, t, D, device="meta", dtype=torch.bfloat16))
    assert out.shape == (2, t, D) and out.device.type == "meta"
    assert meta.state.dtype == torch.float32 and meta.conv_state.dtype == torch.bfloat16

    cpu = build_recurrent(cfg, D, phase=phase, dtype=torch.bfloat16)
    cpu.setup_cache(2, 8, fill="zeros")
    with torch.no_grad():
        y = cpu(torch.randn(2, t, D, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    assert cpu.state.dtype == torch.float32 and cpu.state.abs().sum() > 0


# ----------------------------------------------------------------------------------------- gated attention
def test_output_gate_attention_decode_and_prefill() -> None:
    """Qwen3-Next's gated attention: q_proj gives [query | gate] per head, o_proj(attn * sigmoid(gate))."""
    heads, kv, hd = 4, 2, 8
    cfg = AttentionConfig(kind="gqa", n_heads=heads, n_kv_heads=kv, head_dim=hd, output_gate=True)
    attn = Attention(cfg, D, phase="prefill", dtype=F64)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0.0, 0.5)
    t = 5
    x = torch.randn(2, t, D, dtype=F64)
    with torch.no_grad():
        got = attn(x)
    for b in range(2):
        qg = [lin(attn.q_proj, x[b, i]).view(heads, 2 * hd) for i in range(t)]
        keys = [lin(attn.k_proj, x[b, i]).view(kv, hd) for i in range(t)]
        vals = [lin(attn.v_proj, x[b, i]).view(kv, hd) for i in range(t)]
        for i in range(t):
            outs = []
            for h in range(heads):
                g = h // (heads // kv)
                scores = torch.stack([qg[i][h, :hd] @ keys[j][g] for j in range(i + 1)]) * hd**-0.5
                p = torch.softmax(scores, dim=0)
                o = sum(p[j] * vals[j][g] for j in range(i + 1))
                outs.append(o * torch.sigmoid(qg[i][h, hd:]))
            torch.testing.assert_close(got[b, i], lin(attn.o_proj, torch.cat(outs)), **TOL)

    dec = Attention(cfg, D, phase="decode", dtype=F64)
    dec.load_state_dict(attn.state_dict())
    dec.setup_cache(2, 6)
    with torch.no_grad():
        out = dec(x[:, :1])
    for b in range(2):
        qg = lin(dec.q_proj, x[b, 0]).view(heads, 2 * hd)
        outs = []
        for h in range(heads):
            g = h // (heads // kv)
            p = torch.softmax(w64(dec.k_cache[b, g]) @ qg[h, :hd] * hd**-0.5, dim=0)
            outs.append((p @ w64(dec.v_cache[b, g])) * torch.sigmoid(qg[h, hd:]))
        torch.testing.assert_close(out[b, 0], lin(dec.o_proj, torch.cat(outs)), **TOL)
    assert sum(p.numel() for p in dec.parameters()) == sim_attention.projection_params(cfg, D)


# ----------------------------------------------------------------------------------------- parameters
def _module_params(m: torch.nn.Module) -> int:
    norms = {id(p) for mod in m.modules() if isinstance(mod, NORM_TYPES) for p in mod.parameters()}
    return sum(p.numel() for p in m.parameters() if id(p) not in norms)


@pytest.mark.parametrize("biases", [False, True])
@pytest.mark.parametrize("kind", list(MIXERS))
def test_param_count_equals_simulator(kind: str, biases: bool) -> None:
    cfg = MIXERS[kind].model_copy(update={"proj_bias": biases, "conv_bias": biases})
    m = build_recurrent(cfg, D, device="meta")
    assert _module_params(m) == sim_recurrent.params(cfg, D)


# ----------------------------------------------------------------------------------------- op counts
# realistic shapes, so the matmuls dominate as in the models: Falcon-Mamba-7B, Mamba-2 2.7B, Qwen3-Next
REAL: dict[str, tuple[int, RecurrentMixer]] = {
    "mamba": (4096, MambaConfig(d_inner=8192, d_state=16, dt_rank=256)),
    "mamba2": (2560, Mamba2Config(n_heads=80, head_dim=64, d_state=128, chunk_size=256)),
    "gated_deltanet": (
        2048,
        GatedDeltaNetConfig(n_k_heads=16, n_v_heads=32, head_k_dim=128, head_v_dim=128, chunk_size=64),
    ),
}
REAL["lightning"] = (6144, LightningAttentionConfig(n_heads=64, head_dim=128))  # MiniMax-Text-01's
LAYER = {
    "mamba": "block0.mamba",
    "mamba2": "block0.mamba",
    "gated_deltanet": "block0.linear_attn",
    "lightning": "block0.linear_attn",
}


def mixer_only(kind: str, state_dtype: str | None = None) -> ModelConfig:
    d, mixer = REAL[kind]
    mixer = mixer.model_copy(update={"state_dtype": state_dtype})
    return ModelConfig(
        name=kind, d_model=d, vocab_size=8, embeddings=False, blocks=[BlockConfig(attention=mixer)]
    )


def simulated(cfg: ModelConfig, phase: str, batch: int, context: int) -> pd.Series:
    frame = simulate(
        cfg,
        load_hardware("h100-sxm"),
        Workload(phase=phase, batch=[batch], context=[context]),
        per_layer=True,
    )
    return frame.set_index("layer").loc[LAYER[cfg.blocks[0].attention.kind]]  # type: ignore[union-attr]


def matmul_flops_by_hand(kind: str, phase: str, tokens: int, prompt: int) -> float:
    """The FLOPs of the matmul-family ops the module runs (what the op counter counts; elementwise ops
    count 0): its nn.Linear weights (biases are not multiplied), the depthwise convolution, and the
    recurrence's products (decode: C h for Mamba and Mamba-2, S^T k and S^T q for Gated DeltaNet;
    prefill: the chunked products; Mamba's scan: C h per token)."""
    d, m = REAL[kind]
    module = build_recurrent(m, d, device="meta")
    linear = sum(mod.weight.numel() for mod in module.modules() if isinstance(mod, torch.nn.Linear))
    per_token = 2 * linear + 2 * m.conv_channels * m.d_conv
    if isinstance(m, MambaConfig):
        per_token += 2 * m.d_inner * m.d_state
    elif isinstance(m, Mamba2Config):
        n, p, h, g = m.d_state, m.head_dim, m.n_heads, m.n_groups
        if phase == "decode":
            per_token += 2 * h * p * n
        else:
            q = min(prompt, m.chunk_size)
            per_token += 2 * q * n * g + h * (2 * q * p + 4 * n * p)  # C B^T, its product with x, B^T x, C h
    elif isinstance(m, LightningAttentionConfig):
        dh, h = m.head_dim, m.n_heads
        if phase == "decode":
            per_token += 2 * h * dh * dh  # q S (the decay and k^T v are elementwise)
        else:
            q = min(prompt, m.chunk_size)
            per_token += h * (4 * q * dh + 4 * dh * dh)  # Q K^T and its product with V; Q S and K^T V
    else:
        dk, dv, h = m.head_k_dim, m.head_v_dim, m.n_v_heads
        if phase == "decode":
            per_token += 4 * h * dk * dv
        else:
            q = min(prompt, m.chunk_size)
            # K K^T, Q K^T, W = T K, U = T V, the within-chunk output, W S, Q S and K^T U
            per_token += h * (6 * q * dk + 4 * q * dv + 6 * dk * dv)
    return per_token * tokens


@pytest.mark.parametrize(
    "phase,batch,context", [("decode", 8, 4096), ("prefill", 1, 512)], ids=["decode", "prefill"]
)
@pytest.mark.parametrize("kind", list(REAL))
def test_op_counted_flops_against_the_simulator(kind: str, phase: str, batch: int, context: int) -> None:
    """The op counter's FLOPs of one step of the mixer equal the hand count of its matmul-family ops
    exactly, and are within 3 % of the simulator's per-layer FLOPs. The simulator also charges what the
    counter leaves at 0: biases (2 per token each) and the elementwise recurrence (decode: Mamba
    d_inner (6 d_state + 6), Mamba-2 d_inner (3 d_state + 8), Gated DeltaNet 3 state elements
    + 6 value_dim + 4 key_dim per token; prefill: Gated DeltaNet's triangular inverse, 2Q^2/3 per head
    and token, and a few per channel). Measured gaps: Mamba -0.4 % both phases, Mamba-2 -2.4 % decode
    and -0.05 % prefill, Gated DeltaNet -2.3 % decode and -0.2 % prefill."""
    cfg = mixer_only(kind)
    ops = count_model(cfg, batch, context, phase=phase, dtype="bf16")
    layer = summarize_layers(ops).set_index("layer").loc[LAYER[kind]]
    tokens = batch * (context if phase == "prefill" else 1)
    assert layer["flops"] == matmul_flops_by_hand(kind, phase, tokens, context)
    sim = simulated(cfg, phase, batch, context)
    assert layer["flops"] == pytest.approx(sim["flops"], rel=0.03)
    assert layer["flops"] <= sim["flops"]  # the simulator counts everything the counter counts, and more


class StateTraffic(TorchDispatchMode):
    """Bytes of the given buffers' storages that ops read and write, by the op counter's rules (a tensor
    counts its own elements, views and metadata ops move nothing, an in-place op reads and writes what it
    mutates, copy_ only writes its destination)."""

    def __init__(self, buffers: Sequence[torch.Tensor]) -> None:
        super().__init__()
        self.keys = {b.untyped_storage()._cdata for b in buffers}
        self.read = self.written = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if op_bytes(func, args, kwargs, out) == (0, 0):
            return out
        mutated = set()
        for i, schema_arg in enumerate(func._schema.arguments):
            if schema_arg.alias_info is not None and schema_arg.alias_info.is_write:
                value = args[i] if i < len(args) else kwargs.get(schema_arg.name)
                mutated.add(id(value))
        seen: set[int] = set()
        for t in tree_leaves((args, kwargs)):
            if (
                not isinstance(t, torch.Tensor)
                or id(t) in seen
                or t.untyped_storage()._cdata not in self.keys
            ):
                continue
            seen.add(id(t))
            if id(t) not in mutated:
                self.read += tensor_bytes(t)
                continue
            self.written += tensor_bytes(t)
            if func._overloadpacket is not torch.ops.aten.copy_:
                self.read += tensor_bytes(t)
        return out


@pytest.mark.parametrize("state_dtype", [None, "fp32"])
@pytest.mark.parametrize(
    "phase,batch,context", [("decode", 8, 4096), ("prefill", 2, 300)], ids=["decode", "prefill"]
)
@pytest.mark.parametrize("kind", list(REAL))
def test_state_bytes_read_and_written_equal_the_simulators_kv_bytes(
    kind: str, phase: str, batch: int, context: int, state_dtype: str | None
) -> None:
    """Like with like: the bytes the ops read from and write to the state buffers (recurrent state and
    convolution inputs; bf16 run, state in bf16 or fp32) are the simulator's kv_read / kv_write bytes:
    decode reads each buffer once and writes it back once; a fresh prompt only writes its final state.
    The layer's op-level totals hold these plus the weights (read once) and the activations."""
    cfg = mixer_only(kind, state_dtype)
    model = ReferenceModel(cfg, phase=phase, dtype="bf16", device="meta")
    model.setup_cache(batch, context, fill="none")
    mixer = model.blocks[0].attn.layer  # type: ignore[union-attr]
    traffic = StateTraffic([mixer.state, mixer.conv_state])
    with torch.no_grad(), traffic:
        model(model.make_input(batch, context))
    sim = simulated(cfg, phase, batch, context)
    assert (traffic.read, traffic.written) == (sim["kv_read_bytes"], sim["kv_write_bytes"])
    state_bytes = batch * sim_recurrent.state_bytes(cfg.blocks[0].attention, 2.0)  # type: ignore[arg-type]
    assert traffic.written == state_bytes and traffic.read == (state_bytes if phase == "decode" else 0)

    layers = summarize_layers(count_model(cfg, batch, context, phase=phase)).set_index("layer")
    layer = layers.loc[LAYER[kind]]
    weights = sim_recurrent.params(cfg.blocks[0].attention, cfg.d_model) * 2  # type: ignore[arg-type]
    assert layer["bytes_read"] >= weights + traffic.read and layer["bytes_written"] >= traffic.written


# ----------------------------------------------------------------------------------------- hybrid models
# a Qwen3-Next-like stack (3 Gated DeltaNet blocks to 1 gated GQA block, MoE everywhere) and a
# Nemotron-H-like one (Mamba-2, MLP-only and attention-only blocks; a Mamba-1 block too)
HYBRIDS: dict[str, str] = {
    "qwen3-next-tiny": """
name: qwen3-next-tiny
d_model: 32
vocab_size: 97
blocks:
  - repeat: 3
    attention: {kind: gated_deltanet, n_k_heads: 2, n_v_heads: 4, head_k_dim: 8, head_v_dim: 8, chunk_size: 4}
    ffn: [{kind: moe, n_experts: 8, top_k: 2, expert_ffn: 32, n_shared_experts: 1, shared_ffn: 32}]
  - attention: {kind: gqa, n_heads: 4, n_kv_heads: 2, head_dim: 8, output_gate: true}
    ffn: [{kind: moe, n_experts: 8, top_k: 2, expert_ffn: 32, n_shared_experts: 1, shared_ffn: 32}]
""",
    "nemotron-h-tiny": """
name: nemotron-h-tiny
d_model: 32
vocab_size: 97
blocks:
  - attention: {kind: mamba2, n_heads: 4, head_dim: 8, d_state: 8, n_groups: 2, chunk_size: 4}
  - ffn: [{kind: dense, d_ff: 64, activation: relu}]
  - attention: {kind: gqa, n_heads: 4, n_kv_heads: 2, head_dim: 8}
  - ffn: [{kind: dense, d_ff: 64, activation: relu}]
  - attention: {kind: mamba, d_inner: 64, d_state: 4, dt_rank: 4}
""",
    "minimax01-tiny": """
name: minimax01-tiny
d_model: 32
vocab_size: 97
blocks:
  - repeat: 2
    attention: {kind: lightning, n_heads: 4, head_dim: 8, chunk_size: 4}
    ffn: [{kind: moe, n_experts: 4, top_k: 2, expert_ffn: 32}]
  - attention: {kind: gqa, n_heads: 4, n_kv_heads: 2, head_dim: 8}
    ffn: [{kind: moe, n_experts: 4, top_k: 2, expert_ffn: 32}]
""",
    "falcon-h1-tiny": """
name: falcon-h1-tiny
d_model: 32
vocab_size: 97
blocks:
  - repeat: 2
    attention: {kind: gqa, n_heads: 4, n_kv_heads: 2, head_dim: 16}
    parallel_mixer: {kind: mamba2, n_heads: 4, head_dim: 8, d_state: 8, chunk_size: 4}
    ffn: [{kind: dense, d_ff: 64}]
""",
}


def hybrid(name: str) -> ModelConfig:
    return ModelConfig.model_validate(yaml.safe_load(HYBRIDS[name]))


HYBRID_LAYERS = {
    "qwen3-next-tiny": [
        "embed", "block0.linear_attn", "block0.moe", "block1.linear_attn", "block1.moe",
        "block2.linear_attn", "block2.moe", "block3.attn", "block3.moe", "head",
    ],
    "nemotron-h-tiny": [
        "embed", "block0.mamba", "block1.ffn", "block2.attn", "block3.ffn", "block4.mamba", "head",
    ],
    "minimax01-tiny": [
        "embed", "block0.linear_attn", "block0.moe", "block1.linear_attn", "block1.moe", "block2.attn",
        "block2.moe", "head",
    ],
    "falcon-h1-tiny": [
        "embed", "block0.attn", "block0.mamba", "block0.ffn", "block1.attn", "block1.mamba", "block1.ffn",
        "head",
    ],
}  # fmt: skip


@pytest.mark.parametrize("name", list(HYBRIDS))
def test_hybrid_model_decode_prefill_names_and_params(name: str) -> None:
    cfg = hybrid(name)
    sim = simulate(cfg, load_hardware("h100-sxm"), Workload(batch=[2], context=[16]), per_layer=True)
    sim_layers = [n for n in sim["layer"] if n != "total"]
    for phase in ("decode", "prefill"):
        model = ReferenceModel(cfg, phase=phase)
        assert model.layer_names() == HYBRID_LAYERS[name] == sim_layers
        assert model.param_count() == int(sim.loc[sim["layer"] == "total", "params"].iloc[0])
        paths = dict(model.named_modules())
        assert all(path in paths for path in model.module_layer_map())
        model.setup_cache(2, 16)
        with torch.no_grad():
            out = model(model.make_input(2, 16))
        assert out.shape == (2, 1, cfg.vocab_size) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(HYBRIDS))
def test_count_cli_on_hybrid_models(name: str, tmp_path: Path) -> None:
    from tests.test_cli import run

    path = tmp_path / f"{name}.yaml"
    path.write_text(HYBRIDS[name])
    for phase, device in (("decode", "meta"), ("prefill", "cpu")):
        out = tmp_path / f"{phase}.csv"
        args = ["-b", "1,2", "-c", "12", "--phase", phase, "--device", device, "-f", "csv", "-o", str(out)]
        proc = run("count", str(path), *args)
        assert proc.returncode == 0, proc.stderr
        df = pd.read_csv(out)
        for b in (1, 2):
            layers = [n for n in df.loc[df["batch"] == b, "layer"] if n not in ("total", "other")]
            assert layers == HYBRID_LAYERS[name], (phase, b)
        mixers = df[df["layer"].str.contains("mamba|linear_attn")]
        assert (mixers["flops"] > 0).all() and (mixers["bytes_read"] > 0).all()


def test_profile_a_hybrid_model_on_the_cpu(tmp_path: Path) -> None:
    from profiler.run import profile_model
    from traces.bundle import read_bundle

    cfg = hybrid("nemotron-h-tiny")
    for phase in ("decode", "prefill"):
        out = profile_model(
            cfg, [1, 2], output=tmp_path / phase, phase=phase, context=8, steps=2, warmup=1, dtype="fp32",
            steady_seconds=0.1, input_ring=2, progress=False, device="cpu",
        )  # fmt: skip
        bundle = read_bundle(out)
        assert bundle.meta["partial"] is False
        for _, g in bundle.layers.groupby(["batch", "step"]):
            assert set(HYBRID_LAYERS["nemotron-h-tiny"]) <= set(g["layer"])


def test_a_mixer_beside_attention_adds_its_output_on_the_same_normed_input() -> None:
    """Falcon-H1's layer: h + attention(norm(h)) + mamba2(norm(h)), then the MLP; composed here from
    the block's own sublayers, and different from running them one after the other."""
    model = ReferenceModel(hybrid("falcon-h1-tiny"), phase="prefill", dtype=F64)
    block = model.blocks[0]
    assert block.attn is not None and block.beside is not None and block.beside.norm is None
    model.setup_cache(2, 6)
    h = torch.randn(2, 6, 32, dtype=F64)
    with torch.no_grad():
        got, _ = block(h)
        u = block.attn.norm(h)
        mixed = h + block.attn.layer(u) + block.beside.layer(u)
        ffn = block.ffn[0]
        want = mixed + ffn.layer(ffn.norm(mixed))
        after_attn = h + block.attn.layer(u)
        in_sequence = after_attn + block.beside.layer(block.attn.norm(after_attn))
    torch.testing.assert_close(got, want, **TOL)
    assert not torch.allclose(mixed, in_sequence)


def test_kda_prefill_with_strong_decays_over_long_chunks_matches_the_loop() -> None:
    """Kimi Delta Attention at its real chunk length (64) over a 150-token prompt (three chunks, the
    last partial), with decays as strong as the module's defaults (A_log up to log 16): the chunked form
    (its per-channel ratios through sub-block pivots) gives the per-token loop's outputs and final state."""
    cfg = MIXERS["kda"].model_copy(update={"chunk_size": 64})
    m = build_recurrent(cfg, D, phase="prefill", dtype=F64)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name not in ("A_log", "dt_bias"):
                p.normal_(0.0, 0.3)
    m.setup_cache(1, 150, fill="zeros")
    x = torch.randn(1, 150, D, dtype=F64)
    with torch.no_grad():
        got = m(x)
    loop = LOOPS["kda"](m, None, None)
    want = torch.stack(loop_outputs(loop, x[0]))
    torch.testing.assert_close(got[0], want, **TOL)
    torch.testing.assert_close(m.state[0], loop.h, **TOL)

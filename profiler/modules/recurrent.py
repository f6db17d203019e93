"""Recurrent token mixers: Mamba (selective scan), Mamba-2 (SSD) and Gated DeltaNet (Qwen3-Next's linear
attention), built from the simulator's configs; simulator/layers/recurrent.py counts the same work.

They stand where attention stands in a block, with the attention modules' cache interface. Instead of a
KV cache that grows with the context, each sequence carries a fixed-size state (`setup_cache`): the
recurrent state (in the config's state_dtype, else the module's dtype) and the last d_conv - 1 inputs of
the short depthwise causal convolution (in the module's dtype).

- decode: each token runs one step of the recurrence. The state buffers are read once and written back
  once, in place (the same shapes every step, so a steady loop and CUDA graph replays work). The step
  computes in the state's dtype.
- prefill: the whole prompt from a zero state: Mamba by a sequential scan over the tokens, Mamba-2 by the
  chunked SSD form and Gated DeltaNet by the chunked WY form, over chunks of min(chunk_size, prompt)
  tokens (the prompt zero-padded to whole chunks; a padded token has no input and no decay, so it leaves
  the state as it is). The final state is written to the buffers, so decode steps can follow (set
  `phase = "decode"`). The scan and chunk math run in float32 (float64 for a float64 state), as the
  fused kernels accumulate.

Nothing branches on tensor values (loops run over token or chunk counts, which are shapes), so the
modules run on CPU, CUDA and meta tensors (memtraffic count). Gated norms are nn.RMSNorm modules: the
simulator leaves their weights out of parameter counts, and `count` charges each as one fused kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from profiler.modules.common import factory_kwargs, torch_dtype
from simulator.config import (
    GatedDeltaNetConfig,
    LightningAttentionConfig,
    Mamba2Config,
    MambaConfig,
    RecurrentMixer,
)
from simulator.errors import ConfigError


def compute_dtype(state_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the prefill scan and chunk math: float32, or float64 when the state is float64."""
    return torch.promote_types(state_dtype, torch.float32)


def pad_tokens(x: torch.Tensor, tokens: int, dim: int = 1) -> torch.Tensor:
    """`x` zero-padded at the end of `dim` to `tokens` entries (no copy when it already has them)."""
    extra = tokens - x.shape[dim]
    if extra == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim) + [0, extra]
    return F.pad(x, pad)


def stack_tokens(xs: list[torch.Tensor]) -> torch.Tensor:
    """Per-token tensors (B, ...) as (B, T, ...); one token is a view, not a copy."""
    return xs[0].unsqueeze(1) if len(xs) == 1 else torch.stack(xs, dim=1)


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(|x|^2 + eps) over the last dim (Gated DeltaNet's query and key normalisation)."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


class GroupRMSNorm(nn.RMSNorm):
    """RMSNorm over each of `groups` equal slices of the last dim, one weight over the whole: Mamba-2's
    gated norm normalises each group of heads on its own. An nn.RMSNorm, so parameter counts and `count`
    treat it as every other norm."""

    def __init__(self, dim: int, groups: int, eps: float = 1e-5, **factory: object) -> None:
        super().__init__(dim, eps=eps, **factory)  # type: ignore[arg-type]
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups == 1:
            return super().forward(x)
        shape = x.shape
        grouped = x.reshape(*shape[:-1], self.groups, shape[-1] // self.groups)
        y = F.rms_norm(grouped, (grouped.shape[-1],), eps=self.eps)
        return y.reshape(shape) * self.weight


class _RecurrentMixer(nn.Module):
    """What the three mixers share: phase, the state buffers and the causal depthwise convolution."""

    def __init__(
        self,
        cfg: RecurrentMixer,
        d_model: int,
        *,
        phase: str = "decode",
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if phase not in ("decode", "prefill"):
            raise ConfigError(f"phase must be decode or prefill, got {phase!r}")
        self.phase = phase
        self.d_model = d_model
        self.d_conv = cfg.d_conv
        self.conv_channels = cfg.conv_channels
        self.state_dtype = torch_dtype(cfg.state_dtype) if cfg.state_dtype is not None else dtype
        f = factory_kwargs(device, dtype)
        self.factory = f  # the device and dtype of the module's weights
        # depthwise: one d_conv-tap filter per channel; the causal left padding is done by hand
        # (lightning attention has no convolution)
        self.conv1d = (
            nn.Conv1d(
                cfg.conv_channels,
                cfg.conv_channels,
                cfg.d_conv,
                groups=cfg.conv_channels,
                bias=cfg.conv_bias,
                **f,  # type: ignore[arg-type]
            )
            if cfg.conv_channels
            else None
        )
        self.state: torch.Tensor | None = None  # (batch, *state_shape), the recurrent state
        self.conv_state: torch.Tensor | None = None  # (batch, channels, d_conv - 1), the last inputs
        self.context = 0

    @property
    def state_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def setup_cache(self, batch: int, context: int, fill: str = "randn") -> None:
        """Allocate the state of `batch` sequences; its size does not depend on `context`. Prefill
        allocates it too: the prompt's final state is written there."""
        p = next(self.parameters())  # where the weights are now (the module may have been moved)
        self.context = int(context)
        self.state = torch.empty((batch, *self.state_shape), device=p.device, dtype=self.state_dtype)
        self.conv_state = torch.empty(
            (batch, self.conv_channels, self.d_conv - 1), device=p.device, dtype=p.dtype
        )
        for buf in (self.state, self.conv_state):
            if fill == "randn" and buf.device.type != "meta":
                buf.normal_()
            elif fill == "zeros":
                buf.zero_()

    def _check_state(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.state is None or self.conv_state is None:
            raise RuntimeError(f"{type(self).__name__} needs setup_cache(batch, context) first")
        if self.state.shape[0] != batch:
            raise RuntimeError(
                f"the recurrent state holds {self.state.shape[0]} sequences, input has {batch}"
            )
        return self.state, self.conv_state

    def _conv_prompt(self, u: torch.Tensor) -> torch.Tensor:
        """SiLU(causal conv) over a whole prompt u (B, T, C); keeps its last d_conv - 1 inputs."""
        _, conv_state = self._check_state(u.shape[0])
        padded = F.pad(u.transpose(1, 2), (self.d_conv - 1, 0))  # (B, C, d_conv - 1 + T): zeros before
        conv_state.copy_(padded[..., padded.shape[-1] - (self.d_conv - 1) :])
        return F.silu(self.conv1d(padded)).transpose(1, 2)

    def _conv_token(self, u: torch.Tensor) -> torch.Tensor:
        """SiLU(causal conv) of one token u (B, C) over the cached inputs, which it shifts by one."""
        _, conv_state = self._check_state(u.shape[0])
        window = torch.cat([conv_state, u.unsqueeze(-1)], dim=-1)  # (B, C, d_conv)
        conv_state.copy_(window[..., 1:])
        return F.silu(self.conv1d(window)[..., 0])

    def _chunking(self, tokens: int, chunk_size: int) -> tuple[int, int]:
        """(chunk length, chunks): a prompt shorter than a chunk is one chunk of its own length."""
        q = min(chunk_size, tokens)
        return q, math.ceil(tokens / q)


class Mamba(_RecurrentMixer):
    """Mamba-1 (Gu & Dao 2023; transformers' MambaMixer, Jamba's and Falcon-Mamba's mixer): per channel
    a d_state state, decayed by exp(dt A) and fed dt B x each token; y = C h + D x, gated by SiLU(z).
    Prefill scans the tokens one by one (the per-channel, per-state decay has no cheap chunked form)."""

    def __init__(self, cfg: MambaConfig, d_model: int, **kwargs: object) -> None:
        super().__init__(cfg, d_model, **kwargs)  # type: ignore[arg-type]
        p = self.conv1d.weight
        f = factory_kwargs(p.device, p.dtype)
        di, n, r = cfg.d_inner, cfg.d_state, cfg.dt_rank
        self.d_inner, self.d_state, self.dt_rank = di, n, r
        self.in_proj = nn.Linear(d_model, 2 * di, bias=cfg.proj_bias, **f)
        self.x_proj = nn.Linear(di, r + 2 * n, bias=False, **f)
        self.dt_proj = nn.Linear(r, di, bias=True, **f)
        self.A_log = nn.Parameter(torch.empty(di, n, **f))  # type: ignore[arg-type]
        self.D = nn.Parameter(torch.empty(di, **f))  # type: ignore[arg-type]
        self.out_proj = nn.Linear(di, d_model, bias=cfg.proj_bias, **f)
        with torch.no_grad():  # S4D-real: A = -(1..n) per channel, a skip of 1
            self.A_log.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).expand(di, n))
            self.D.fill_(1.0)

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.d_inner, self.d_state)

    def _ssm_inputs(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(dt, B, C) of the convolved inputs u (..., d_inner)."""
        dt, b, c = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.softplus(self.dt_proj(dt)), b, c

    def _recur(
        self,
        h: torch.Tensor,
        a: torch.Tensor,
        u: torch.Tensor,
        dt: torch.Tensor,
        b: torch.Tensor,
        c: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One token: h (B, d_inner, d_state) -> (exp(dt A) h + dt u B, its read-out C h), in h's dtype
        (A = a, the per-channel inputs cast to it). Reads h once."""
        dt, u, b, c = (v.to(h.dtype) for v in (dt, u, b, c))
        h = h * torch.exp(dt.unsqueeze(-1) * a) + (dt * u).unsqueeze(-1) * b.unsqueeze(1)
        return h, (h @ c.unsqueeze(-1)).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, t, _ = x.shape
        state, _ = self._check_state(bsz)
        u, z = self.in_proj(x).split(self.d_inner, dim=-1)
        if self.phase == "prefill":
            u = self._conv_prompt(u)
            cd = compute_dtype(state.dtype)
            dt, b, c = (v.to(cd) for v in self._ssm_inputs(u))
            a, u_cd = -torch.exp(self.A_log.to(cd)), u.to(cd)
            # torch.zeros, not state.new_zeros: the op counter charges new_* ops a read of their template
            h = torch.zeros(state.shape, dtype=cd, device=state.device)
            ys = []
            for i in range(t):  # the sequential scan
                h, y = self._recur(h, a, u_cd[:, i], dt[:, i], b[:, i], c[:, i])
                ys.append(y)
            state.copy_(h)
        else:
            a = -torch.exp(self.A_log.to(state.dtype))
            us, ys = [], []
            for i in range(t):
                us.append(self._conv_token(u[:, i]))
                h, y = self._recur(state, a, us[-1], *self._ssm_inputs(us[-1]))
                state.copy_(h)
                ys.append(y)
            u = stack_tokens(us)
        y = stack_tokens(ys).to(x.dtype) + u * self.D
        return self.out_proj(y * F.silu(z))


class Mamba2(_RecurrentMixer):
    """Mamba-2 (Dao & Gu 2024; transformers' Mamba2Mixer, Nemotron-H's mixer): n_heads heads of head_dim
    channels, each channel a d_state state, one scalar decay exp(dt A) per head and token, B and C shared
    by the heads of each of n_groups groups; y + D x, then RMSNorm(y * SiLU(z)) per group.

    Prefill runs the chunked SSD form. Within a chunk the output is attention-like: (C B^T masked by the
    decays between tokens) times dt x, one C B^T per group; each chunk's own contribution to the state at
    its end is B^T (dt x) with the decays to the end. Across chunks, a loop passes the state on, and the
    state each chunk starts from is read out by C (decayed to each token)."""

    def __init__(self, cfg: Mamba2Config, d_model: int, **kwargs: object) -> None:
        super().__init__(cfg, d_model, **kwargs)  # type: ignore[arg-type]
        p = self.conv1d.weight
        f = factory_kwargs(p.device, p.dtype)
        h = self.n_heads = cfg.n_heads
        self.head_dim, self.d_state, self.n_groups = cfg.head_dim, cfg.d_state, cfg.n_groups
        self.d_inner, self.chunk_size = cfg.d_inner, cfg.chunk_size
        # one input projection: z (d_inner), then x, B, C (the convolved channels), then dt (n_heads)
        width = self.d_inner + self.conv_channels + h
        self.in_proj = nn.Linear(d_model, width, bias=cfg.proj_bias, **f)
        self.dt_bias = nn.Parameter(torch.empty(h, **f))  # type: ignore[arg-type]
        self.A_log = nn.Parameter(torch.empty(h, **f))  # type: ignore[arg-type]
        self.D = nn.Parameter(torch.empty(h, **f))  # type: ignore[arg-type]
        self.norm = GroupRMSNorm(self.d_inner, cfg.n_groups, eps=1e-5, **f)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=cfg.proj_bias, **f)
        with torch.no_grad():  # A in [1, 16], dt in [1e-3, 1e-1] through softplus, a skip of 1
            self.A_log.copy_(torch.log(torch.linspace(1.0, 16.0, h)))
            dt = torch.exp(torch.linspace(math.log(1e-3), math.log(1e-1), h))
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
            self.D.fill_(1.0)

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.n_heads, self.head_dim, self.d_state)

    def _split(self, xbc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (..., heads, head_dim), B and C (..., groups, d_state) of the convolved channels."""
        gn = self.n_groups * self.d_state
        x, b, c = xbc.split([self.d_inner, gn, gn], dim=-1)
        lead = xbc.shape[:-1]
        return (
            x.reshape(*lead, self.n_heads, self.head_dim),
            b.reshape(*lead, self.n_groups, self.d_state),
            c.reshape(*lead, self.n_groups, self.d_state),
        )

    def _step(self, state: torch.Tensor, xbc: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """One token (xbc (B, channels), dt (B, heads)): h = exp(dt A) h + dt x B^T, y = h C (B, heads,
        head_dim). The state is viewed per group (B, groups, heads/group, head_dim, d_state), so B and C
        are never copied per head."""
        bsz = xbc.shape[0]
        g, r, p, n = self.n_groups, self.n_heads // self.n_groups, self.head_dim, self.d_state
        x, b, c = self._split(xbc)
        sd = state.dtype
        decay = torch.exp(dt.to(sd) * -torch.exp(self.A_log.to(sd)))
        dtx = (dt.unsqueeze(-1) * x).view(bsz, g, r, p, 1)
        h = state.view(bsz, g, r, p, n) * decay.view(bsz, g, r, 1, 1) + dtx * b.view(bsz, g, 1, 1, n)
        y = h.view(bsz, g, r * p, n) @ c.view(bsz, g, n, 1).to(sd)
        state.copy_(h.view(state.shape))
        return y.view(bsz, self.n_heads, p)

    def _ssd(self, state: torch.Tensor, xbc: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """A whole prompt (xbc (B, T, channels), dt (B, T, heads)) in chunks: y (B, T, heads, head_dim);
        the final state written to `state`."""
        bsz, t, _ = xbc.shape
        g, r, p, n = self.n_groups, self.n_heads // self.n_groups, self.head_dim, self.d_state
        cd = compute_dtype(state.dtype)
        q, nc = self._chunking(t, self.chunk_size)
        x, b, c = self._split(xbc.to(cd))
        dt = dt.to(cd)
        # (B, chunks, Q, groups, ...); dt folded into x once
        x = pad_tokens(x * dt.unsqueeze(-1), nc * q).view(bsz, nc, q, g, r, p)
        b = pad_tokens(b, nc * q).view(bsz, nc, q, g, n)
        c = pad_tokens(c, nc * q).view(bsz, nc, q, g, n)
        log_decay = pad_tokens(dt * -torch.exp(self.A_log.to(cd)), nc * q).view(bsz, nc, q, g, r)
        acs = log_decay.cumsum(dim=2).permute(0, 1, 3, 4, 2)  # (B, nc, G, R, Q): since the chunk start
        # decay from token j to token i within a chunk, exp(acs_i - acs_j) for j <= i, 0 above
        causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
        seg = (acs.unsqueeze(-1) - acs.unsqueeze(-2)).masked_fill(~causal, -math.inf).exp()
        cb = torch.einsum("bcign,bcjgn->bcgij", c, b)  # one C B^T per group
        y = torch.einsum("bcgrij,bcjgrp->bcigrp", cb.unsqueeze(3) * seg, x)
        # each chunk's own state at its end: sum_j exp(acs_end - acs_j) dt_j x_j B_j^T
        to_end = torch.exp(acs[..., -1:] - acs).permute(0, 1, 4, 2, 3).unsqueeze(-1)  # (B, nc, Q, G, R, 1)
        chunk_states = torch.einsum("bcjgn,bcjgrp->bcgrpn", b, x * to_end)
        # pass the state along the chunks; starts[i] is the state chunk i begins with
        chunk_decay = torch.exp(acs[..., -1])  # (B, nc, G, R)
        h = torch.zeros((bsz, g, r, p, n), dtype=cd, device=x.device)
        starts = []
        for i in range(nc):
            starts.append(h)
            h = h * chunk_decay[:, i, :, :, None, None] + chunk_states[:, i]
        state.copy_(h.view(state.shape))
        # the state each chunk began with, read out by C and decayed to each token
        carried = torch.einsum("bcign,bcgrpn->bcigrp", c, torch.stack(starts, dim=1))
        y = y + carried * acs.exp().permute(0, 1, 4, 2, 3).unsqueeze(-1)
        return y.reshape(bsz, nc * q, self.n_heads, p)[:, :t]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, t, _ = x.shape
        state, _ = self._check_state(bsz)
        z, xbc, dt = self.in_proj(x).split([self.d_inner, self.conv_channels, self.n_heads], dim=-1)
        dt = F.softplus(dt + self.dt_bias)
        if self.phase == "prefill":
            xbc = self._conv_prompt(xbc)
            y = self._ssd(state, xbc, dt)
        else:
            xbcs, ys = [], []
            for i in range(t):
                xbcs.append(self._conv_token(xbc[:, i]))
                ys.append(self._step(state, xbcs[-1], dt[:, i]))
            xbc, y = stack_tokens(xbcs), stack_tokens(ys)
        y = y.to(x.dtype) + self._split(xbc)[0] * self.D.unsqueeze(-1)
        return self.out_proj(self.norm(y.reshape(bsz, t, self.d_inner) * F.silu(z)))


def to_chunks(u: torch.Tensor, chunks: int, q: int) -> torch.Tensor:
    """(B, T, heads, *rest) zero-padded to chunks * q tokens, as (B, heads, chunks, q, *rest)."""
    u = pad_tokens(u, chunks * q)
    return u.view(u.shape[0], chunks, q, *u.shape[2:]).movedim(3, 1)


class GatedDeltaNet(_RecurrentMixer):
    """Gated DeltaNet (Yang et al. 2025; Qwen3-Next's linear attention, transformers'
    Qwen3NextGatedDeltaNet). Per value head a head_k_dim x head_v_dim state S, each token:
    S = exp(g) S; S += k (beta (v - S^T k))^T; o = S^T q, with q and k L2-normalised (q also scaled by
    1/sqrt(head_k_dim)), key heads repeated over the value heads, beta = sigmoid(b) and the log decay
    g = -exp(A_log) softplus(a + dt_bias); then RMSNorm(o) * SiLU(z) per head.

    Prefill runs the chunked WY form. Within a chunk of Q tokens starting from state S0, with G_i the
    decay from the chunk start to token i, the delta rule's corrections u satisfy (I + A) u = beta V -
    beta G K S0, A_ij = beta_i (G_i / G_j) k_i.k_j (j < i), so u = U - W S0 with T = (I + A)^-1,
    U = T (beta V) and W = T (beta G K); then o_i = G_i S0^T q_i + sum_{j<=i} (G_i / G_j) (q_i.k_j) u_j and
    the chunk's final state is G_Q S0 + sum_j (G_Q / G_j) k_j u_j^T. Only the last two need the state, so a
    loop over the chunks does just those."""

    def __init__(self, cfg: GatedDeltaNetConfig, d_model: int, **kwargs: object) -> None:
        super().__init__(cfg, d_model, **kwargs)  # type: ignore[arg-type]
        f = self._take_shapes(cfg)
        hv = cfg.n_v_heads
        qkvz = 2 * self.key_dim + 2 * self.value_dim
        self.in_proj_qkvz = nn.Linear(d_model, qkvz, bias=cfg.proj_bias, **f)
        self.in_proj_ba = nn.Linear(d_model, 2 * hv, bias=cfg.proj_bias, **f)
        self.dt_bias = nn.Parameter(torch.empty(hv, **f))  # type: ignore[arg-type]
        self.A_log = nn.Parameter(torch.empty(hv, **f))  # type: ignore[arg-type]
        self.norm = nn.RMSNorm(self.head_v_dim, eps=1e-6, **f)
        self.out_proj = nn.Linear(self.value_dim, d_model, bias=cfg.proj_bias, **f)
        with torch.no_grad():
            self.A_log.copy_(torch.log(torch.linspace(1.0, 16.0, hv)))
            self.dt_bias.fill_(1.0)

    def _take_shapes(self, cfg: GatedDeltaNetConfig) -> dict[str, object]:
        """Keep the head counts and widths; the factory kwargs of the module's weights."""
        self.n_k_heads, self.n_v_heads = cfg.n_k_heads, cfg.n_v_heads
        self.head_k_dim, self.head_v_dim = cfg.head_k_dim, cfg.head_v_dim
        self.key_dim, self.value_dim, self.chunk_size = cfg.key_dim, cfg.value_dim, cfg.chunk_size
        p = self.conv1d.weight
        return factory_kwargs(p.device, p.dtype)

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.n_v_heads, self.head_k_dim, self.head_v_dim)

    def _heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k (..., value heads, head_k_dim), normalised and repeated per value head; v (..., value
        heads, head_v_dim)."""
        lead = qkv.shape[:-1]
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q = l2_normalize(q.reshape(*lead, self.n_k_heads, self.head_k_dim)) * self.head_k_dim**-0.5
        k = l2_normalize(k.reshape(*lead, self.n_k_heads, self.head_k_dim))
        if self.n_v_heads != self.n_k_heads:  # value head j reads key head j // (value / key heads)
            q = q.repeat_interleave(self.n_v_heads // self.n_k_heads, dim=-2)
            k = k.repeat_interleave(self.n_v_heads // self.n_k_heads, dim=-2)
        return q, k, v.reshape(*lead, self.n_v_heads, self.head_v_dim)

    @staticmethod
    def _decay(g: torch.Tensor) -> torch.Tensor:
        """The factor a token's log decay g (B, value heads) scales the state (B, heads, dk, dv) by."""
        return torch.exp(g)[..., None, None]

    def _step(
        self, state: torch.Tensor, qkv: torch.Tensor, beta: torch.Tensor, g: torch.Tensor
    ) -> torch.Tensor:
        """One token (qkv (B, channels), beta and g (B, value heads); KDA's g (B, heads, head_k_dim)):
        o (B, value heads, head_v_dim)."""
        sd = state.dtype
        q, k, v = (u.to(sd) for u in self._heads(qkv))
        s = state * self._decay(g.to(sd))  # the one read of the state
        delta = beta.to(sd).unsqueeze(-1) * (v - (k.unsqueeze(-2) @ s).squeeze(-2))
        s = s + k.unsqueeze(-1) * delta.unsqueeze(-2)
        state.copy_(s)
        return (q.unsqueeze(-2) @ s).squeeze(-2)

    def _chunked(
        self, state: torch.Tensor, qkv: torch.Tensor, beta: torch.Tensor, g: torch.Tensor
    ) -> torch.Tensor:
        """A whole prompt (qkv (B, T, channels), beta and g (B, T, value heads)) in chunks: o (B, T,
        value heads, head_v_dim); the final state written to `state`."""
        bsz, t, _ = qkv.shape
        cd = compute_dtype(state.dtype)
        q_len, nc = self._chunking(t, self.chunk_size)
        q, k, v = (to_chunks(u, nc, q_len) for u in self._heads(qkv.to(cd)))  # (B, H, nc, Q, dim)
        beta = to_chunks(beta.to(cd), nc, q_len)  # (B, H, nc, Q)
        gc = to_chunks(g.to(cd), nc, q_len).cumsum(-1)  # log decay from the chunk start
        causal = torch.ones(q_len, q_len, dtype=torch.bool, device=qkv.device).tril()
        decay = (gc.unsqueeze(-1) - gc.unsqueeze(-2)).masked_fill(~causal, -math.inf).exp()  # G_i / G_j
        kb = k * beta.unsqueeze(-1)
        a = (kb @ k.transpose(-1, -2) * decay).tril(-1)  # strictly below the diagonal
        eye = torch.eye(q_len, dtype=cd, device=qkv.device).expand_as(a)
        t_inv = torch.linalg.solve_triangular(a, eye, upper=False, unitriangular=True)  # (I + A)^-1
        w = t_inv @ (kb * gc.exp().unsqueeze(-1))
        u = t_inv @ (v * beta.unsqueeze(-1))
        qk = q @ k.transpose(-1, -2) * decay
        q_decayed = q * gc.exp().unsqueeze(-1)
        k_to_end = k * (gc[..., -1:] - gc).exp().unsqueeze(-1)
        chunk_decay = gc[..., -1].exp()  # (B, H, nc)
        s = torch.zeros(state.shape, dtype=cd, device=qkv.device)
        outs = []
        for i in range(nc):  # only these need the state the chunk starts from
            ui = u[:, :, i] - w[:, :, i] @ s
            outs.append(q_decayed[:, :, i] @ s + qk[:, :, i] @ ui)
            s = s * chunk_decay[:, :, i, None, None] + k_to_end[:, :, i].transpose(-1, -2) @ ui
        state.copy_(s)
        o = torch.stack(outs, dim=2).reshape(bsz, self.n_v_heads, nc * q_len, self.head_v_dim)
        return o[:, :, :t].transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, t, _ = x.shape
        state, _ = self._check_state(bsz)
        conv_width = 2 * self.key_dim + self.value_dim
        qkv, z = self.in_proj_qkvz(x).split([conv_width, self.value_dim], dim=-1)
        b, a = self.in_proj_ba(x).split(self.n_v_heads, dim=-1)
        beta = torch.sigmoid(b)
        g = -torch.exp(self.A_log) * F.softplus(a + self.dt_bias)  # log decay per value head, < 0
        if self.phase == "prefill":
            o = self._chunked(state, self._conv_prompt(qkv), beta, g)
        else:
            steps = [self._step(state, self._conv_token(qkv[:, i]), beta[:, i], g[:, i]) for i in range(t)]
            o = stack_tokens(steps)
        o = self.norm(o.to(x.dtype)) * F.silu(z.reshape(bsz, t, self.n_v_heads, self.head_v_dim))
        return self.out_proj(o.reshape(bsz, t, self.value_dim))


class KimiDeltaAttention(GatedDeltaNet):
    """Kimi Delta Attention (Kimi Linear): Gated DeltaNet with a decay per key channel instead of per
    head, S = diag(exp(g)) S before the delta rule, where g = -exp(A_log) softplus(f_b(f_a(x)) + dt_bias)
    per channel through a rank-`gate_rank` projection; the output is RMSNorm(o) * sigmoid(g_b(g_a(x)))
    per head, and q, k, v come from one projection each (here one fused matrix, the same weights), with
    beta from its own. The checkpoint's three short convolutions are one over q, k and v here.

    Prefill's chunked form generalises Gated DeltaNet's with per-channel decays: within a chunk,
    A_ij = beta_i sum_c k_ic k_jc G_ic / G_jc (j < i), u = (I + A)^-1 (beta V - beta (K * G) S0),
    o_i = (q_i * G_i) S0 + sum_{j<=i} (sum_c q_ic k_jc G_ic / G_jc) u_j, and the chunk's final state is
    diag(G_Q) S0 + sum_j diag(G_Q / G_j) k_j u_j^T; the per-channel ratios come as exp of log
    differences (`_decayed_products`)."""

    def __init__(self, cfg: GatedDeltaNetConfig, d_model: int, **kwargs: object) -> None:
        _RecurrentMixer.__init__(self, cfg, d_model, **kwargs)  # type: ignore[arg-type]
        assert cfg.gate_rank is not None
        f = self._take_shapes(cfg)
        bias, rank = cfg.proj_bias, cfg.gate_rank
        self.in_proj_qkv = nn.Linear(d_model, 2 * self.key_dim + self.value_dim, bias=bias, **f)
        self.b_proj = nn.Linear(d_model, self.n_v_heads, bias=bias, **f)
        self.f_a = nn.Linear(d_model, rank, bias=False, **f)
        self.f_b = nn.Linear(rank, self.key_dim, bias=False, **f)
        self.g_a = nn.Linear(d_model, rank, bias=False, **f)
        self.g_b = nn.Linear(rank, self.value_dim, bias=False, **f)
        self.A_log = nn.Parameter(torch.empty(self.n_v_heads, **f))  # type: ignore[arg-type]
        self.dt_bias = nn.Parameter(torch.empty(self.key_dim, **f))  # type: ignore[arg-type]
        self.norm = nn.RMSNorm(self.head_v_dim, eps=1e-5, **f)  # vLLM's o_norm eps
        self.out_proj = nn.Linear(self.value_dim, d_model, bias=bias, **f)
        with torch.no_grad():
            self.A_log.copy_(torch.log(torch.linspace(1.0, 16.0, self.n_v_heads)))
            self.dt_bias.fill_(1.0)

    @staticmethod
    def _decay(g: torch.Tensor) -> torch.Tensor:
        """Each key row of a head's state decays by its own channel's gate (g: (B, heads, dk))."""
        return torch.exp(g).unsqueeze(-1)

    def _chunked(
        self, state: torch.Tensor, qkv: torch.Tensor, beta: torch.Tensor, g: torch.Tensor
    ) -> torch.Tensor:
        """A whole prompt (qkv (B, T, channels), beta (B, T, heads), g (B, T, heads, head_k_dim)) in
        chunks: o (B, T, heads, head_v_dim); the final state written to `state`."""
        bsz, t, _ = qkv.shape
        cd = compute_dtype(state.dtype)
        q_len, nc = self._chunking(t, self.chunk_size)
        q, k, v = (to_chunks(u, nc, q_len) for u in self._heads(qkv.to(cd)))  # (B, H, nc, Q, dim)
        beta = to_chunks(beta.to(cd), nc, q_len)  # (B, H, nc, Q)
        gc = to_chunks(g.to(cd), nc, q_len).cumsum(-2)  # (B, H, nc, Q, dk): log decay from the chunk start
        causal = torch.ones(q_len, q_len, dtype=torch.bool, device=qkv.device).tril()
        eye = torch.eye(q_len, dtype=cd, device=qkv.device)
        s = torch.zeros(state.shape, dtype=cd, device=qkv.device)
        outs = []
        for i in range(nc):
            qi, ki, vi, bi, gi = q[:, :, i], k[:, :, i], v[:, :, i], beta[:, :, i], gc[:, :, i]
            a = self._decayed_products(ki * bi.unsqueeze(-1), ki, gi, causal).tril(-1)
            t_inv = torch.linalg.solve_triangular(a, eye.expand_as(a), upper=False, unitriangular=True)
            w = t_inv @ (ki * bi.unsqueeze(-1) * gi.exp())
            u = t_inv @ (vi * bi.unsqueeze(-1)) - w @ s
            qk = self._decayed_products(qi, ki, gi, causal)
            outs.append((qi * gi.exp()) @ s + qk @ u)
            k_to_end = ki * (gi[..., -1:, :] - gi).exp()
            s = s * gi[..., -1, :].exp().unsqueeze(-1) + k_to_end.transpose(-1, -2) @ u
        state.copy_(s)
        o = torch.stack(outs, dim=2).reshape(bsz, self.n_v_heads, nc * q_len, self.head_v_dim)
        return o[:, :, :t].transpose(1, 2)

    @staticmethod
    def _decayed_products(
        x: torch.Tensor, k: torch.Tensor, g: torch.Tensor, causal: torch.Tensor, sub: int = 16
    ) -> torch.Tensor:
        """(B, H, Q, Q): sum_c x_ic k_jc exp(g_ic - g_jc) for j <= i within a chunk (0 above), g the log
        decay from the chunk start (falling). A pair whose key lies in an earlier sub-block of `sub`
        positions goes through the query's sub-block start p: exp(g_i - g_p) exp(g_p - g_j), both
        exponents <= 0, so two matmuls; pairs within a sub-block take their ratios one by one (sub x sub
        x dk at a time, not Q x Q x dk)."""
        out = x.new_zeros(*x.shape[:-1], x.shape[-2])
        for start in range(0, x.shape[-2], sub):
            rows = slice(start, start + sub)
            g_rows, pivot = g[..., rows, :], g[..., start : start + 1, :]
            if start:
                earlier_keys = k[..., :start, :] * (pivot - g[..., :start, :]).exp()
                out[..., rows, :start] = (x[..., rows, :] * (g_rows - pivot).exp()) @ earlier_keys.transpose(
                    -1, -2
                )
            within = causal[rows, rows][..., None]
            ratio = (g_rows.unsqueeze(-2) - g_rows.unsqueeze(-3)).masked_fill(~within, -math.inf).exp()
            out[..., rows, rows] = torch.einsum(
                "bhic,bhjc,bhijc->bhij", x[..., rows, :], k[..., rows, :], ratio
            )
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, t, _ = x.shape
        state, _ = self._check_state(bsz)
        qkv = self.in_proj_qkv(x)
        beta = torch.sigmoid(self.b_proj(x))
        decay = F.softplus(self.f_b(self.f_a(x)) + self.dt_bias).view(bsz, t, self.n_v_heads, self.head_k_dim)
        g = -torch.exp(self.A_log).unsqueeze(-1) * decay  # log decay per key channel, < 0
        if self.phase == "prefill":
            o = self._chunked(state, self._conv_prompt(qkv), beta, g)
        else:
            steps = [self._step(state, self._conv_token(qkv[:, i]), beta[:, i], g[:, i]) for i in range(t)]
            o = stack_tokens(steps)
        gate = torch.sigmoid(self.g_b(self.g_a(x))).view(bsz, t, self.n_v_heads, self.head_v_dim)
        o = self.norm(o.to(x.dtype)) * gate
        return self.out_proj(o.reshape(bsz, t, self.value_dim))


def alibi_slopes(heads: int) -> torch.Tensor:
    """The ALiBi geometric slopes 2^(-8 (h + 1) / heads), h = 0 .. heads - 1: lightning attention's
    decay rates per head (MiniMax-01 also scales them down with depth, which the module leaves out)."""
    return torch.pow(2.0, -8.0 * torch.arange(1, heads + 1, dtype=torch.float64) / heads)


class LightningAttention(_RecurrentMixer):
    """Lightning attention (MiniMax-01, MiniMax-M1): q, k, v = SiLU(W_qkv x) per head; per head a
    head_dim x head_dim state, S = lambda S + k^T v each token and o = q S, with a fixed decay
    lambda = exp(-slope) per head; then RMSNorm over the heads' outputs, times sigmoid(W_g x), and W_o.

    Prefill runs the blocked form over chunks of Q tokens from the state S0 the chunk starts with:
    o_i = lambda^(i+1) q_i S0 + sum_{j<=i} lambda^(i-j) (q_i . k_j) v_j, and the chunk's final state is
    lambda^n S0 + sum_{j<n} lambda^(n-1-j) k_j^T v_j over its n real tokens (the last chunk's padding
    neither adds to nor decays the state)."""

    def __init__(self, cfg: LightningAttentionConfig, d_model: int, **kwargs: object) -> None:
        super().__init__(cfg, d_model, **kwargs)  # type: ignore[arg-type]
        f = self.factory
        self.n_heads, self.head_dim, self.chunk_size = cfg.n_heads, cfg.head_dim, cfg.chunk_size
        inner = cfg.d_inner
        self.qkv_proj = nn.Linear(d_model, 3 * inner, bias=cfg.proj_bias, **f)  # type: ignore[arg-type]
        self.output_gate = nn.Linear(d_model, inner, bias=cfg.proj_bias, **f)  # type: ignore[arg-type]
        self.norm = nn.RMSNorm(inner, eps=1e-5, **f)  # type: ignore[arg-type]
        self.out_proj = nn.Linear(inner, d_model, bias=cfg.proj_bias, **f)  # type: ignore[arg-type]
        # log decay per head, a buffer: fixed slopes, not weights
        # kept at least in fp32 (the kernels compute the decay in fp32), in fp64 for an fp64 module
        dtype = compute_dtype(f["dtype"])  # type: ignore[arg-type]
        slopes = alibi_slopes(cfg.n_heads).to(device=f["device"], dtype=dtype)  # type: ignore[arg-type]
        self.register_buffer("log_decay", -slopes, persistent=False)

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.n_heads, self.head_dim, self.head_dim)

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (B, T, heads, head_dim) of the tokens x."""
        qkv = F.silu(self.qkv_proj(x))
        return tuple(u.unflatten(-1, (self.n_heads, self.head_dim)) for u in qkv.chunk(3, dim=-1))  # type: ignore[return-value]

    def _step(self, state: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One token (q, k, v (B, heads, head_dim)): o (B, heads, head_dim)."""
        cd = compute_dtype(state.dtype)  # the update in fp32 at least, as the kernels run it
        decay = self.log_decay.to(cd).exp()[:, None, None]
        s = state.to(cd) * decay + k.to(cd).unsqueeze(-1) * v.to(cd).unsqueeze(-2)  # the one state read
        state.copy_(s)
        return (q.to(cd).unsqueeze(-2) @ s).squeeze(-2).to(state.dtype)

    def _chunked(
        self, state: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """A whole prompt (q, k, v (B, T, heads, head_dim)) in chunks: o (B, T, heads, head_dim); the
        final state written to `state`."""
        bsz, t = q.shape[:2]
        cd = compute_dtype(state.dtype)
        q_len, nc = self._chunking(t, self.chunk_size)
        qc, kc, vc = (to_chunks(u.to(cd), nc, q_len) for u in (q, k, v))  # (B, H, nc, Q, dh)
        log_decay = self.log_decay.to(cd)[:, None, None]  # (H, 1, 1)
        pos = torch.arange(q_len, dtype=cd, device=q.device)
        causal = pos[:, None] >= pos[None, :]
        within = (
            ((pos[:, None] - pos[None, :]) * log_decay).masked_fill(~causal, -math.inf).exp()
        )  # (H, Q, Q)
        to_here = ((pos + 1) * log_decay[..., 0]).exp().unsqueeze(-1)  # (H, Q, 1): lambda^(i+1)
        s = torch.zeros(state.shape, dtype=cd, device=q.device)
        outs = []
        for i in range(nc):
            n = min(q_len, t - i * q_len)  # real tokens of this chunk
            qi, ki, vi = qc[:, :, i], kc[:, :, i], vc[:, :, i]
            outs.append((qi @ s) * to_here + (qi @ ki.transpose(-1, -2) * within) @ vi)
            to_end = ((n - 1 - pos) * log_decay[..., 0]).exp().masked_fill(pos >= n, 0.0).unsqueeze(-1)
            s = s * (n * log_decay).exp() + (ki * to_end).transpose(-1, -2) @ vi
        state.copy_(s)
        o = torch.stack(outs, dim=2).reshape(bsz, self.n_heads, nc * q_len, self.head_dim)
        return o[:, :, :t].transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, t, _ = x.shape
        state, _ = self._check_state(bsz)
        q, k, v = self._heads(x)
        if self.phase == "prefill":
            o = self._chunked(state, q, k, v)
        else:
            o = stack_tokens([self._step(state, q[:, i], k[:, i], v[:, i]) for i in range(t)])
        o = self.norm(o.to(x.dtype).flatten(-2)) * torch.sigmoid(self.output_gate(x))
        return self.out_proj(o)


_RECURRENT_CLASSES: dict[str, type[_RecurrentMixer]] = {
    "mamba": Mamba,
    "mamba2": Mamba2,
    "gated_deltanet": GatedDeltaNet,
    "lightning": LightningAttention,
}


def build_recurrent(cfg: RecurrentMixer, d_model: int, **kwargs: object) -> _RecurrentMixer:
    """The module of a recurrent mixer config (kwargs: phase, device, dtype)."""
    if isinstance(cfg, GatedDeltaNetConfig) and cfg.gate_rank is not None:
        return KimiDeltaAttention(cfg, d_model, **kwargs)  # type: ignore[arg-type]
    return _RECURRENT_CLASSES[cfg.kind](cfg, d_model, **kwargs)  # type: ignore[arg-type]

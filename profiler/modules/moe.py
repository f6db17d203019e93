"""Mixture-of-Experts: router, top-k, routed experts, shared experts (cost-reference section 4.1).

Dispatch is an index-sorted grouped loop: the T*k token copies are sorted by expert, gathered once,
split into per-expert runs and each expert with tokens runs its FFN on its run; outputs are scaled by
the gates and summed back with one index_add. The per-expert token counts come to the host in a single
transfer per layer (shapes of the splits), not one sync per expert. Experts without tokens are never
touched, so a step reads the weights of the distinct experts it routes to (the "ideal" level's count).

On meta tensors (op counting) the router's choices are unknown, so each token draws k distinct experts
uniformly at random from a generator the reference model seeds with the layer's position: a step
touches about N(1 - (1 - k/N)^T) distinct experts, the uniform-routing expectation the simulator uses,
and a count is the same every time.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from profiler.modules.common import RoutingRecorder, activation, factory_kwargs, is_gated
from profiler.modules.ffn import DenseFFN
from simulator.config import MoEConfig


class MoE(nn.Module):
    def __init__(
        self,
        cfg: MoEConfig,
        d_model: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        f = factory_kwargs(device, dtype)
        n, ff = cfg.n_experts, cfg.expert_ffn
        self.cfg = cfg
        self.n_experts, self.top_k = n, cfg.top_k
        self.act = activation(cfg.activation)
        self.router = nn.Linear(d_model, n, bias=False, **f)
        # DeepSeek-V3's selection bias: a stored, not trained, per-expert vector (counted like the simulator)
        self.router_bias = nn.Parameter(torch.zeros(n, **f), requires_grad=False) if cfg.router_bias else None
        # experts stacked: w_up/w_gate (N, ff, d), w_down (N, d, ff); row e is expert e's nn.Linear weight
        scale_in, scale_out = d_model**-0.5, ff**-0.5
        self.w_up = nn.Parameter(torch.empty(n, ff, d_model, **f).uniform_(-scale_in, scale_in))
        self.w_gate = (
            nn.Parameter(torch.empty(n, ff, d_model, **f).uniform_(-scale_in, scale_in))
            if is_gated(cfg.activation)
            else None
        )
        self.w_down = nn.Parameter(torch.empty(n, d_model, ff, **f).uniform_(-scale_out, scale_out))
        # gpt-oss puts biases on the experts' projections: one vector per expert and projection
        bias = cfg.expert_bias
        self.b_up = nn.Parameter(torch.zeros(n, ff, **f)) if bias else None
        self.b_gate = nn.Parameter(torch.zeros(n, ff, **f)) if bias and self.w_gate is not None else None
        self.b_down = nn.Parameter(torch.zeros(n, d_model, **f)) if bias else None
        self.shared = (
            DenseFFN(d_model, cfg.shared_ffn, cfg.activation, device=device, dtype=dtype)
            if cfg.shared_ffn
            else None
        )
        # Qwen2-MoE / Qwen3-Next: sigmoid(x . g) scales the shared experts' output, per token
        self.shared_gate = nn.Linear(d_model, 1, bias=False, **f) if cfg.shared_gate else None
        self.recorder = RoutingRecorder(n)
        self._meta_routing = np.random.default_rng(0)

    # ------------------------------------------------------------------------------------ routing
    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gates (T, k) in x's dtype, expert indices (T, k)) for tokens x (T, d)."""
        logits = self.router(x).float()
        cfg = self.cfg
        if cfg.router == "softmax":
            # no renormalisation of the k gates (OLMoE, Qwen-MoE; as the H100 recordings ran)
            probs = logits.softmax(dim=-1)
            gates, idx = probs.topk(self.top_k, dim=-1)
            return gates.to(x.dtype), idx
        scores = logits.sigmoid()
        choice = scores if self.router_bias is None else scores + self.router_bias.float()
        if cfg.n_groups is not None and (cfg.topk_groups or cfg.n_groups) < cfg.n_groups:
            choice = self._limit_groups(choice, cfg.n_groups, cfg.topk_groups or cfg.n_groups)
        idx = choice.topk(self.top_k, dim=-1).indices
        gates = scores.gather(-1, idx)  # the bias steers selection only, not the gate values
        gates = gates / gates.sum(dim=-1, keepdim=True).clamp_min(1e-20)  # DeepSeek-V3 renormalises
        return gates.to(x.dtype), idx

    @staticmethod
    def _limit_groups(choice: torch.Tensor, n_groups: int, keep: int) -> torch.Tensor:
        """DeepSeek-V3 node-limited routing: a group's score is the sum of its top-2 experts' scores;
        experts outside the `keep` best groups cannot be chosen."""
        t, n = choice.shape
        grouped = choice.view(t, n_groups, n // n_groups)
        group_score = grouped.topk(min(2, n // n_groups), dim=-1).values.sum(dim=-1)
        best = group_score.topk(keep, dim=-1).indices
        mask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, best, True)
        return grouped.masked_fill(~mask.unsqueeze(-1), float("-inf")).view(t, n)

    def _expert_counts(self, flat_idx: torch.Tensor) -> list[int]:
        if flat_idx.device.type == "meta":
            flat_idx = self.uniform_choices(flat_idx.numel() // self.top_k).reshape(-1)
        return torch.bincount(flat_idx, minlength=self.n_experts).tolist()  # the layer's one host sync

    def seed_meta_routing(self, seed: int) -> None:
        self._meta_routing = np.random.default_rng(seed)

    def uniform_choices(self, tokens: int) -> torch.Tensor:
        """(tokens, k) expert indices, k distinct per token, drawn uniformly (seeded). Drawn with numpy,
        outside torch's dispatcher, so an op count on meta tensors does not take the draw for kernels
        the GPU would run."""
        noise = self._meta_routing.random((tokens, self.n_experts))
        picks = np.argpartition(noise, self.n_experts - self.top_k, axis=1)[:, self.n_experts - self.top_k :]
        return torch.from_numpy(np.ascontiguousarray(picks, dtype=np.int64))

    # ------------------------------------------------------------------------------------ experts
    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        up = F.linear(x, self.w_up[e], _row(self.b_up, e))
        if self.w_gate is not None:
            h = self.act(F.linear(x, self.w_gate[e], _row(self.b_gate, e))) * up
        else:
            h = self.act(up)
        return F.linear(h, self.w_down[e], _row(self.b_down, e))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        gates, idx = self.route(x)
        self.recorder.record(idx)
        flat = idx.reshape(-1)
        order = torch.argsort(flat, stable=True)
        token = order // self.top_k  # token of each sorted copy
        x_sorted = x.index_select(0, token)
        counts = self._expert_counts(flat)
        outs = [self.expert(e, chunk) for e, chunk in enumerate(torch.split(x_sorted, counts)) if counts[e]]
        y_sorted = torch.cat(outs) * gates.reshape(-1, 1).index_select(0, order)
        out = torch.zeros_like(x).index_add_(0, token, y_sorted)
        if self.shared is not None:
            shared = self.shared(x)
            if self.shared_gate is not None:
                shared = shared * torch.sigmoid(self.shared_gate(x))
            out = out + shared
        return out.view(shape)


def _row(bias: nn.Parameter | None, e: int) -> torch.Tensor | None:
    return None if bias is None else bias[e]

"""PEER (He 2024, cost-reference section 7.1): n*n single-neuron experts (u_i, v_i), product-key
retrieval per head, gates = softmax over each head's top-k scores.

out = sum_heads sum_{i in top-k} g_i * act(u_i . x) * v_i: the u rows are gathered (they feed a dot
product), the v rows are summed by one weighted EmbeddingBag.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from profiler.modules.common import RoutingRecorder, activation, factory_kwargs
from profiler.modules.retrieval import product_key_query, product_key_select
from profiler.modules.tables import MemoryTable, TableRegistry
from simulator.config import PEERConfig


class PEER(nn.Module):
    def __init__(
        self,
        cfg: PEERConfig,
        d_model: int,
        *,
        tables: TableRegistry | None = None,
        name: str = "peer",
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        f = factory_kwargs(device, dtype)
        self.heads, self.k, self.query_dim = cfg.heads, cfg.top_k, cfg.query_dim
        self.act = activation(cfg.activation)
        self.query, self.keys = product_key_query(
            d_model, cfg.heads, 2 * cfg.query_dim, cfg.n_keys, bias=False, **f
        )
        registry = tables or TableRegistry(device, dtype)
        self.table: MemoryTable = registry.get(
            cfg.shared_table, cfg.rows, {"down": d_model, "up": d_model}, name
        )
        self.recorder = RoutingRecorder(cfg.rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        t = x.shape[0]
        q = self.query(x).view(t, self.heads, 2 * self.query_dim)
        w, rows = product_key_select(q, self.keys, self.k, self.recorder, x.dtype)
        gates = w.view(t, -1)
        flat = rows.view(t, -1)
        down = F.embedding(flat, self.table.down)  # (T, H*k, d)
        hidden = self.act(torch.bmm(down, x.unsqueeze(-1)).squeeze(-1)) * gates
        return F.embedding_bag(flat, self.table.up, per_sample_weights=hidden, mode="sum").view(shape)

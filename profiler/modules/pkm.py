"""The Product Key Memory layer (cost-reference section 5.1) and the product-key bag it shares with
Memory+: query -> per-head product-key top-k (profiler.modules.retrieval) -> softmax -> weighted bag of
value rows."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from profiler.modules.common import RoutingRecorder, factory_kwargs
from profiler.modules.retrieval import product_key_query, product_key_select
from profiler.modules.tables import MemoryTable, TableRegistry
from simulator.config import MemoryPlusConfig, PKMConfig


class ProductKeyBag(nn.Module):
    """Query (+bias, optional BatchNorm) -> per-head product-key top-k -> softmax -> weighted bag of rows
    of a (shareable) value table; `lookup` is the bag, subclasses add what surrounds it."""

    def __init__(
        self,
        cfg: PKMConfig | MemoryPlusConfig,
        d_model: int,
        tables: TableRegistry,
        name: str,
        f: dict[str, object],
        query_batchnorm: bool = False,
    ) -> None:
        super().__init__()
        self.heads, self.k, self.key_dim = cfg.heads, cfg.top_k, cfg.key_dim
        self.value_dim = cfg.value_dim or d_model
        self.query, self.keys = product_key_query(d_model, cfg.heads, cfg.key_dim, cfg.n_keys, bias=True, **f)
        self.query_bn = nn.BatchNorm1d(cfg.heads * cfg.key_dim, **f) if query_batchnorm else None
        self.table: MemoryTable = tables.get(cfg.shared_table, cfg.rows, {"values": self.value_dim}, name)
        self.recorder = RoutingRecorder(cfg.rows)

    def lookup(self, x: torch.Tensor) -> torch.Tensor:
        """(T, value_dim): per token of x (T, d_model), its k rows per head summed with softmax weights."""
        t = x.shape[0]
        q = self.query(x)
        if self.query_bn is not None:
            q = self.query_bn(q)
        q = q.view(t, self.heads, self.key_dim)
        w, rows = product_key_select(q, self.keys, self.k, self.recorder, x.dtype)
        return F.embedding_bag(
            rows.view(t, -1), self.table.values, per_sample_weights=w.view(t, -1), mode="sum"
        )


class PKM(ProductKeyBag):
    """The product-key bag; a value width other than d_model gets a bias-free output projection back to
    d_model."""

    def __init__(
        self,
        cfg: PKMConfig,
        d_model: int,
        *,
        tables: TableRegistry | None = None,
        name: str = "pkm",
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        f = factory_kwargs(device, dtype)
        super().__init__(cfg, d_model, tables or TableRegistry(device, dtype), name, f, cfg.query_batchnorm)
        v = self.value_dim
        self.out_proj = nn.Linear(v, d_model, bias=False, **f) if v != d_model else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        out = self.lookup(x.reshape(-1, shape[-1]))
        if self.out_proj is not None:
            out = self.out_proj(out)
        return out.view(*shape[:-1], out.shape[-1])

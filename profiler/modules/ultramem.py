"""UltraMem (Huang et al., ICLR 2025; cost-reference section 8.2): Tucker-decomposed retrieval (TDQKR,
profiler.modules.retrieval, shared with UltraMemV2) into a physical table read as E virtual groups
(implicit value expansion)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from profiler.modules.common import RoutingRecorder, affine_shuffle, factory_kwargs
from profiler.modules.retrieval import RankOneCache, check_tucker, init_tucker, tucker_topk
from profiler.modules.tables import MemoryTable, TableRegistry
from simulator.config import UltraMemConfig


class UltraMem(nn.Module):
    """q = LN(W_q x) (one row and one column query per pair of heads) -> TDQKR per head -> shuffled
    virtual index -> (physical row, IVE group) -> core-weighted value slices summed per group ->
    W_o (E*D_v -> d)."""

    def __init__(
        self,
        cfg: UltraMemConfig,
        d_model: int,
        *,
        tables: TableRegistry | None = None,
        name: str = "ultramem",
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        f = factory_kwargs(device, dtype)
        self.cfg = cfg
        self.n = cfg.keys_per_side
        check_tucker(name, self.n, cfg.m_rc, cfg.top_m, cfg.value_dim, cfg.cores)
        self.phys = cfg.rows
        self.virtual = cfg.expansion * cfg.rows
        self.queries = (cfg.heads + 1) // 2  # "share one query between two heads" (section 8.1)
        self.wq = nn.Linear(d_model, self.queries * 2 * cfg.key_dim, bias=False, **f)
        self.q_norm = nn.LayerNorm(cfg.key_dim, **f)
        self.keys, self.cores = init_tucker(cfg.heads, self.n, cfg.rank, cfg.key_dim, cfg.cores, **f)
        self.rank_one = RankOneCache()
        registry = tables or TableRegistry(device, dtype)
        self.table: MemoryTable = registry.get(None, cfg.rows, {"values": cfg.value_dim}, name)
        self.wo = nn.Linear(cfg.expansion * cfg.value_dim, d_model, bias=False, **f)
        self.recorder = RoutingRecorder(cfg.rows)

    def select(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-core scores (T, H*m, c), physical rows (T, H*m), IVE groups (T, H*m))."""
        cfg = self.cfg
        t = x.shape[0]
        q = self.q_norm(self.wq(x).view(t, self.queries, 2, cfg.key_dim))
        q = q.repeat_interleave(2, dim=1)[:, : cfg.heads]  # head h reads query h // 2
        s = torch.einsum("thsk,hsnrk->thsrn", q, self.keys)
        scores, row, col = tucker_topk(s[:, :, 0], s[:, :, 1], self.cores, cfg.m_rc, cfg.top_m, self.rank_one)
        virt = affine_shuffle(row * self.n + col, self.virtual)
        phys = virt % self.phys
        group = torch.div(virt, self.phys, rounding_mode="floor")
        return scores.transpose(2, 3).reshape(t, -1, cfg.cores), phys.view(t, -1), group.view(t, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        t = x.shape[0]
        cfg = self.cfg
        scores, phys, group = self.select(x)
        self.recorder.record(phys)
        rows = F.embedding(phys, self.table.values)  # (T, H*m, D_v)
        sel = rows.shape[1]
        weighted = rows.view(t, sel, cfg.cores, -1) * scores.unsqueeze(-1).to(rows.dtype)
        slot = (torch.arange(t, device=x.device).unsqueeze(1) * cfg.expansion + group).view(-1)
        acc = x.new_zeros(t * cfg.expansion, cfg.value_dim)
        acc.index_add_(0, slot, weighted.view(t * sel, cfg.value_dim))
        return self.wo(acc.view(t, cfg.expansion * cfg.value_dim)).view(shape)

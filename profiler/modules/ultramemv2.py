"""UltraMemV2 (ICLR 2026; cost-reference section 9.2).

q = LN(W_q x) with one row and one column query per Tucker rank -> TDQKR (rank-1 pre-selection of
m_rc rows and columns, c-core grid, top-m) -> shuffled window index -> physical row
(window index + layer offset) mod table rows -> pre-value dot a = <W_pre x, P_row> -> value slices
weighted by core score x a, summed by one EmbeddingBag per core -> W_o (D_v -> d).

The table (pre-values P and values V) is shared by every layer naming it: knum^2 rows per such layer;
layer l reads a window of n_l^2 rows starting at l * knum^2 (ring sharing when share_ratio is set).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from profiler.modules.common import RoutingRecorder, affine_shuffle, factory_kwargs
from profiler.modules.retrieval import RankOneCache, check_tucker, init_tucker, tucker_topk
from profiler.modules.tables import MemoryTable, TableRegistry
from simulator.config import UltraMemV2Config


class UltraMemV2(nn.Module):
    def __init__(
        self,
        cfg: UltraMemV2Config,
        d_model: int,
        *,
        tables: TableRegistry | None = None,
        layer_index: int = 0,
        memory_layers: int = 1,
        name: str = "ultramemv2",
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        f = factory_kwargs(device, dtype)
        self.cfg = cfg
        shared = cfg.shared_table is not None
        layers = memory_layers if shared else 1
        self.n = cfg.keys_per_side(layers)
        check_tucker(name, self.n, cfg.m_rc, cfg.top_m, cfg.value_dim, cfg.cores)
        self.table_rows = cfg.knum**2 * layers
        self.window = self.n * self.n
        self.offset = (layer_index if shared else 0) * cfg.knum**2
        self.wq = nn.Linear(d_model, cfg.heads * 2 * cfg.rank * cfg.key_dim, bias=False, **f)
        self.q_norm = nn.LayerNorm(cfg.key_dim, **f)
        self.keys, self.cores = init_tucker(cfg.heads, self.n, cfg.rank, cfg.key_dim, cfg.cores, **f)
        self.rank_one = RankOneCache()
        registry = tables or TableRegistry(device, dtype)
        self.table: MemoryTable = registry.get(
            cfg.shared_table,
            self.table_rows,
            {"pre_values": cfg.pre_value_dim, "values": cfg.value_dim},
            name,
        )
        self.w_pre = nn.Linear(d_model, cfg.pre_value_dim, bias=False, **f)
        self.wo = nn.Linear(cfg.value_dim, d_model, bias=False, **f)
        self.recorder = RoutingRecorder(self.table_rows)

    def select(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-core scores (T, H*m, c), physical table rows (T, H*m))."""
        cfg = self.cfg
        t = x.shape[0]
        q = self.q_norm(self.wq(x).view(t, cfg.heads, 2, cfg.rank, cfg.key_dim))
        s = torch.einsum("thsrk,hsnrk->thsrn", q, self.keys)
        scores, row, col = tucker_topk(s[:, :, 0], s[:, :, 1], self.cores, cfg.m_rc, cfg.top_m, self.rank_one)
        phys = (affine_shuffle(row * self.n + col, self.window) + self.offset) % self.table_rows
        return scores.transpose(2, 3).reshape(t, -1, cfg.cores), phys.view(t, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        cfg = self.cfg
        scores, phys = self.select(x)
        self.recorder.record(phys)
        pre = F.embedding(phys, self.table.pre_values)  # (T, H*m, D_p)
        dots = torch.bmm(pre, self.w_pre(x).unsqueeze(-1)).squeeze(-1)  # <W_pre x, P_row>, no activation
        weights = scores.to(x.dtype) * dots.unsqueeze(-1)  # (T, H*m, c)
        # value row = c slices; slice i is weighted by core i: one bag per core over a (rows*c, D_v/c) view
        sliced = self.table.values.view(self.table_rows * cfg.cores, cfg.value_dim // cfg.cores)
        bags = [
            F.embedding_bag(phys * cfg.cores + i, sliced, per_sample_weights=weights[..., i], mode="sum")
            for i in range(cfg.cores)
        ]
        return self.wo(torch.cat(bags, dim=-1)).view(shape)

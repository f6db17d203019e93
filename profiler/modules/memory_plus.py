"""Memory+ (Berges et al. 2024, cost-reference section 6.2): the product-key bag (profiler.modules.pkm)
over a (shared) value table, SiLU input gate, output projection.

out = W_o(bag * SiLU(W_1 x)) when gated ("swilu"); ungated, W_o(bag) when a value width is given, else the
bag itself. W_1 and W_o carry biases.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from profiler.modules.common import factory_kwargs
from profiler.modules.pkm import ProductKeyBag
from profiler.modules.tables import TableRegistry
from simulator.config import MemoryPlusConfig


class MemoryPlus(ProductKeyBag):
    def __init__(
        self,
        cfg: MemoryPlusConfig,
        d_model: int,
        *,
        tables: TableRegistry | None = None,
        name: str = "memory_plus",
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        f = factory_kwargs(device, dtype)
        super().__init__(cfg, d_model, tables or TableRegistry(device, dtype), name, f)
        v = self.value_dim
        self.w1 = nn.Linear(d_model, v, bias=True, **f) if cfg.gated else None
        # lingua projects whenever the gate is on or a value width is given (the simulator's count)
        has_wo = cfg.gated or cfg.value_dim is not None or v != d_model
        self.wo = nn.Linear(v, d_model, bias=True, **f) if has_wo else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        bag = self.lookup(x)
        if self.w1 is not None:
            bag = bag * F.silu(self.w1(x))
        out = self.wo(bag) if self.wo is not None else bag
        return out.view(shape)

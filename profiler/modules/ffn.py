"""Dense FFN: GeLU/ReLU/SiLU two-matrix or SwiGLU/GeGLU three-matrix (cost-reference section 3)."""

from __future__ import annotations

import torch
import torch.nn as nn

from profiler.modules.common import activation, factory_kwargs, is_gated
from simulator.config import DenseFFNConfig


class DenseFFN(nn.Module):
    def __init__(
        self,
        d_model: int,
        d_ff: int,
        act: str = "swiglu",
        bias: bool = False,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        f = factory_kwargs(device, dtype)
        self.act = activation(act)
        self.gated = is_gated(act)
        self.up = nn.Linear(d_model, d_ff, bias=bias, **f)
        self.gate = nn.Linear(d_model, d_ff, bias=bias, **f) if self.gated else None
        self.down = nn.Linear(d_ff, d_model, bias=bias, **f)

    @classmethod
    def from_config(cls, cfg: DenseFFNConfig, d_model: int, **factory: object) -> DenseFFN:
        return cls(d_model, cfg.d_ff, cfg.activation, cfg.bias, **factory)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            return self.down(self.act(self.gate(x)) * self.up(x))
        return self.down(self.act(self.up(x)))

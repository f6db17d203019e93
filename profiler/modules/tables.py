"""Value tables of memory layers, shareable between layers by name.

A table is a small nn.Module holding named row matrices (values; PEER's u/v; UltraMemV2's pre-values
and values). Layers that share a table hold the same module object, so `model.parameters()` counts it
once, as the simulator does.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from simulator.errors import ConfigError


class MemoryTable(nn.Module):
    def __init__(
        self,
        rows: int,
        columns: dict[str, int],
        *,
        std: float = 0.02,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.rows = int(rows)
        self.columns = dict(columns)
        for name, width in columns.items():
            w = torch.empty(rows, width, device=device, dtype=dtype)
            if w.device.type != "meta":
                w.normal_(0.0, std)
            self.register_parameter(name, nn.Parameter(w))

    def matrix(self, name: str) -> torch.Tensor:
        return getattr(self, name)

    def signature(self) -> tuple[int, tuple[tuple[str, int], ...]]:
        return self.rows, tuple(sorted(self.columns.items()))


class TableRegistry:
    """Named tables for one model: the first layer naming a table creates it, later ones must agree."""

    def __init__(self, device: torch.device | str | None, dtype: torch.dtype) -> None:
        self.device, self.dtype = device, dtype
        self.tables: dict[str, MemoryTable] = {}

    def get(self, name: str | None, rows: int, columns: dict[str, int], owner: str) -> MemoryTable:
        """The table `name` (a private one when name is None) with `rows` x `columns`."""
        if name is None:
            return MemoryTable(rows, columns, device=self.device, dtype=self.dtype)
        table = self.tables.get(name)
        if table is None:
            table = self.tables[name] = MemoryTable(rows, columns, device=self.device, dtype=self.dtype)
            return table
        want = (int(rows), tuple(sorted(columns.items())))
        if table.signature() != want:
            raise ConfigError(
                f"{owner}: shared table {name!r} is {table.signature()} (rows, columns) elsewhere, "
                f"this layer needs {want}"
            )
        return table

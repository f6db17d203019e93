"""One module per layer family, each exposing a pure `cost(layer, model, points) -> LayerCost`."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from simulator.costs import LayerCost

# FFN-position layer kind -> module in this package
FAMILY_MODULES: dict[str, str] = {
    "dense": "dense",
    "moe": "moe",
    "pkm": "pkm",
    "peer": "peer",
    "memory_plus": "memory_plus",
    "ultramem": "ultramem",
    "ultramemv2": "ultramemv2",
}


def cost_function(kind: str) -> Callable[..., LayerCost]:
    """The cost function of an FFN-position layer kind (imported on first use)."""
    module: Any = importlib.import_module(f"simulator.layers.{FAMILY_MODULES[kind]}")
    return module.cost

"""Pieces every reference module shares: named ranges, routing records, norms, activations, dtypes."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from simulator.errors import ConfigError

TORCH_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    """The torch dtype the reference modules compute in; fp8/int formats have no eager reference."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return TORCH_DTYPES[name]
    except KeyError:
        raise ConfigError(
            f"dtype {name!r} has no eager reference implementation; use one of {', '.join(TORCH_DTYPES)}"
        ) from None


@lru_cache(maxsize=1)
def nvtx_enabled() -> bool:
    # NVTX ranges are what ncu filters on; only a CUDA build with a device has them
    return bool(torch.cuda.is_available())


@contextmanager
def layer_range(name: str) -> Iterator[None]:
    """A `record_function` range (torch.profiler) and an NVTX range of the same name (CUDA only)."""
    nvtx = nvtx_enabled()
    with torch.profiler.record_function(name):
        if nvtx:
            torch.cuda.nvtx.range_push(name)
        try:
            yield
        finally:
            if nvtx:
                torch.cuda.nvtx.range_pop()


class RoutingRecorder:
    """The items (experts or memory rows) one layer selects, one record per forward call (= step).

    Recording keeps a flat device copy of the indices (no host sync, so it does not perturb timing);
    `histograms` reduces each record with a bincount on the device and moves only the non-zero counts.
    """

    def __init__(self, n_items: int, max_records: int = 4096) -> None:
        self.n_items = int(n_items)
        self.max_records = max_records
        self.enabled = False
        self.per_token: int | None = None  # items one token selects (k, or heads x m)
        self.records: list[torch.Tensor] = []

    def record(self, indices: torch.Tensor) -> None:
        if not self.enabled or indices.device.type == "meta" or len(self.records) >= self.max_records:
            return
        self.per_token = int(indices.shape[-1]) if indices.dim() else 1
        self.records.append(indices.detach().reshape(-1).clone())

    def reset(self) -> None:
        self.records.clear()

    def histograms(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per record: (items, counts) of the items selected at least once, items ascending."""
        out = []
        for idx in self.records:
            counts = torch.bincount(idx.long(), minlength=self.n_items)
            items = torch.nonzero(counts, as_tuple=True)[0]
            out.append((items.cpu().numpy(), counts[items].cpu().numpy()))
        return out


def make_norm(kind: str, dim: int, eps: float = 1e-5, **factory: object) -> nn.Module:
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps, **factory)  # type: ignore[arg-type]
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, **factory)  # type: ignore[arg-type]
    raise ConfigError(f"unknown norm {kind!r}")


# norms the simulator leaves out of parameter counts (PKM's query BatchNorm it counts, so it is not here)
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.RMSNorm, nn.LayerNorm)

# gate activation of the gated kinds, the activation itself for the plain ones
_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swiglu": F.silu,
    "geglu": F.gelu,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ConfigError(f"unknown activation {name!r}") from None


def is_gated(name: str) -> bool:
    return name in ("swiglu", "geglu")


def factory_kwargs(device: torch.device | str | None, dtype: torch.dtype) -> dict[str, object]:
    return {"device": device, "dtype": dtype}


def input_generator(seed: int, batch: int, index: int) -> torch.Generator:
    """The CPU generator of input `index` of a ring at `batch`: reproducible per (seed, batch, index)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + batch * 7_919 + index)


# Odd primes tried in turn as the multiplier of the index shuffle (the first coprime to the range wins).
_SHUFFLE_MULTIPLIERS = (1_000_003, 998_244_353, 2_147_483_647, 7_919, 104_729)
SHUFFLE_OFFSET = 12_345


def shuffle_multiplier(size: int) -> int:
    for a in _SHUFFLE_MULTIPLIERS:
        if math.gcd(a, size) == 1:
            return a % size if size > 1 else 0
    raise ConfigError(f"no shuffle multiplier is coprime to {size}")  # unreachable for real sizes


def affine_shuffle(index: torch.Tensor, size: int) -> torch.Tensor:
    """A fixed bijection of [0, size): (a*i + b) mod size.

    Stands in for the random permutation the UltraMem code applies to virtual indices: same effect
    (neighbouring grid cells land on unrelated rows) without a permutation table to read.
    """
    a = shuffle_multiplier(size)
    return torch.remainder(index * a + SHUFFLE_OFFSET, size)

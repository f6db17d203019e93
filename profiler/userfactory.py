"""A user's own nn.Module, named as `path/to/file.py:factory`, for `memtraffic profile`.

The file is imported as a module, `factory()` must return an nn.Module. Inputs come from an input-shape
spec: comma-separated dims with `B` standing for the batch size (`B,1,1024` -> a float tensor of the run's
dtype); a suffix `@int:V` asks for int64 token ids below V instead (`B,16@int:50257`).

Layers are attributed by the module's own `record_function` ranges when it opens any whose names look
like layers (`block3.moe`, `layers.3.mlp`, ...); otherwise `attach_layer_ranges` opens one range (and an
NVTX range on CUDA) per child of each block of the module's main nn.ModuleList, named by module path
(`model.layers.3.mlp`), through forward hooks.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from profiler.modules.common import input_generator, nvtx_enabled, torch_dtype
from profiler.session import torch_profile
from simulator.errors import ConfigError

_SPEC = re.compile(r"^(?P<path>.+\.py):(?P<name>[A-Za-z_]\w*)$")
# a range per child of a block: `layers.3.mlp`; matched by traces.attribution.DEFAULT_LAYER_PATTERN
HOOK_LAYER_PATTERN = r"(?:^|\.)(?:blocks?|layers?|h|L)[._]?(?P<block>\d+)\.(?P<sublayer>[A-Za-z_][\w.]*)$"
# fallback when the module has no ModuleList of blocks: one range per top-level child, any name
FLAT_LAYER_PATTERN = r"^(?!step\d+$)(?P<sublayer>[A-Za-z_][\w.]*)$"


def is_factory_spec(spec: str) -> bool:
    return bool(_SPEC.match(str(spec)))


def load_factory(spec: str) -> Callable[[], nn.Module]:
    """The factory function named by `path/to/file.py:factory` (ConfigError with one line otherwise)."""
    m = _SPEC.match(spec)
    if m is None:
        raise ConfigError(f"{spec!r} is not a module factory (expected path/to/file.py:factory)")
    path = Path(m.group("path")).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path}: no such Python file")
    name = f"memtraffic_user_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"{path}: cannot be imported as a Python module")
    mod = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = mod
    try:
        module_spec.loader.exec_module(mod)
    except (Exception, SystemExit) as exc:  # a script that calls sys.exit() on import must not end the run
        raise ConfigError(f"{path}: import failed: {_describe(exc)}") from None
    factory = getattr(mod, m.group("name"), None)
    if not callable(factory):
        raise ConfigError(f"{path} has no callable {m.group('name')!r}")
    return factory


def _describe(exc: BaseException) -> str:
    """`Type: first line of the message` of an exception raised by the user's code."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def build_module(spec: str, device: torch.device | str, dtype: str) -> nn.Module:
    """Call the factory; the module is moved to `device` and `dtype` (floating parameters only) and
    put in eval mode."""
    factory = load_factory(spec)
    try:
        module = factory()
    except (Exception, SystemExit) as exc:
        raise ConfigError(f"{spec}: the factory failed: {_describe(exc)}") from None
    if not isinstance(module, nn.Module):
        raise ConfigError(f"{spec}: the factory returned a {type(module).__name__}, not an nn.Module")
    return module.to(device=device, dtype=torch_dtype(dtype)).eval()


@dataclass(frozen=True)
class InputShape:
    dims: tuple[int | str, ...]  # ints, and "B" for the batch size
    int_high: int | None = None  # token ids below this, else floats

    def shape(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == "B" else int(d) for d in self.dims)


def parse_input_shape(text: str) -> InputShape:
    """`B,1,1024` or `B,16@int:50257` (ConfigError with one line when malformed)."""
    body, _, kind = text.replace(" ", "").partition("@")
    dims: list[int | str] = []
    for part in body.split(","):
        if part.upper() == "B":
            dims.append("B")
        elif part.isdigit() and int(part) > 0:
            dims.append(int(part))
        else:
            raise ConfigError(f"input shape {text!r}: {part!r} is neither B nor a positive integer")
    if "B" not in dims:
        raise ConfigError(f"input shape {text!r} has no B (batch) dimension")
    high = None
    if kind:
        m = re.fullmatch(r"int:(\d+)", kind)
        if m is None or int(m.group(1)) < 1:
            raise ConfigError(f"input shape {text!r}: the suffix must be @int:VOCAB")
        high = int(m.group(1))
    return InputShape(tuple(dims), high)


def make_input_factory(
    shape: InputShape | str, dtype: str, device: torch.device | str, seed: int = 0
) -> Callable[[int, int], torch.Tensor]:
    """(batch, ring index) -> one step's input, reproducible per (seed, batch, index)."""
    spec = parse_input_shape(shape) if isinstance(shape, str) else shape
    dt = torch_dtype(dtype)

    def make(batch: int, index: int) -> torch.Tensor:
        gen = input_generator(seed, batch, index)
        size = spec.shape(batch)
        if spec.int_high is not None:
            return torch.randint(0, spec.int_high, size, generator=gen).to(device)
        return torch.randn(size, generator=gen).to(device=device, dtype=dt)

    return make


def block_children(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(range name, module) per child of each block of the largest nn.ModuleList (`layers.3.mlp`);
    the root's direct children when it has no ModuleList."""
    lists = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        return [(name, child) for name, child in module.named_children()]
    path, blocks = max(lists, key=lambda item: len(item[1]))
    out = []
    for i, block in enumerate(blocks):
        prefix = f"{path}.{i}" if path else str(i)
        children = list(block.named_children())
        out += [(f"{prefix}.{name}", child) for name, child in children] or [(f"{prefix}.block", block)]
    return out


class _Range:
    """A record_function (+ NVTX) range opened by a forward pre-hook and closed by the forward hook."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stack: list[Any] = []

    def enter(self, *_: Any) -> None:
        rf = torch.profiler.record_function(self.name)
        rf.__enter__()
        self.stack.append(rf)
        if nvtx_enabled():
            torch.cuda.nvtx.range_push(self.name)

    def exit(self, *_: Any) -> None:
        if not self.stack:
            return
        if nvtx_enabled():
            torch.cuda.nvtx.range_pop()
        self.stack.pop().__exit__(None, None, None)


def attach_layer_ranges(module: nn.Module) -> tuple[list[torch.utils.hooks.RemovableHandle], str]:
    """Hooks opening a named range around every block child; returns (handles, layer pattern)."""
    children = block_children(module)
    flat = not any(isinstance(m, nn.ModuleList) and len(m) for m in module.modules())
    handles = []
    for name, child in children:
        r = _Range(name)
        handles.append(child.register_forward_pre_hook(r.enter))
        handles.append(child.register_forward_hook(r.exit, always_call=True))
    return handles, FLAT_LAYER_PATTERN if flat else HOOK_LAYER_PATTERN


def own_layer_ranges(module: nn.Module, example: Any, pattern: str = HOOK_LAYER_PATTERN) -> list[str]:
    """Range names matching `pattern` that the module opens itself during one forward (CPU profiler).
    This is the module's first forward: its failure (a shape the module does not take, memory it cannot
    have) is the user's input, told in one line."""
    args = example if isinstance(example, tuple) else (example,)
    try:
        with torch.no_grad(), torch_profile(torch.device("cpu")) as prof:
            module(*args)
    except (Exception, SystemExit) as exc:
        shapes = ", ".join(str(tuple(a.shape)) for a in args if isinstance(a, torch.Tensor))
        raise ConfigError(
            f"the module's forward failed on a batch-1 input {shapes}: {_describe(exc)}"
        ) from None
    rx = re.compile(pattern)
    return sorted({e.name for e in prof.events() if rx.search(e.name) and not e.name.startswith("aten::")})

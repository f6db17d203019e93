"""What a sweep runs: a Target (the module, one step's input, per-batch setup, layer naming) and the
device it runs on.

Three kinds of target: the reference model of a ModelConfig, a user's module passed in-process, and a
user's `path/to/file.py:factory` (profiler.userfactory). A target built from a config or a factory
carries a `spec` from which a child process rebuilds it (the ncu pass, profiler.ncu_pass).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from profiler import userfactory
from profiler.modules import ReferenceModel, RoutingRecorder
from profiler.modules.common import input_generator, torch_dtype
from simulator.config import ModelConfig
from simulator.errors import MemtrafficError

# Reference-model range names: block3.moe (block 3, sublayer moe), embed and head (block -1); not step{i}
REFERENCE_LAYER_PATTERN = r"^(?!step\d+$)(?:block(?P<block>\d+)\.)?(?P<sublayer>[A-Za-z_][A-Za-z0-9_]*)$"


@dataclass
class Target:
    """What a sweep runs: the module, one step's input, per-batch setup and its naming."""

    module: nn.Module
    make_input: Callable[[int, int], Any]  # (batch, ring index) -> tensor or tuple of tensors
    setup: Callable[[int], None]  # per batch size (KV caches)
    name: str
    layer_pattern: str
    config: dict[str, Any] | None = None  # ModelConfig as JSON (reference models)
    spec: dict[str, Any] | None = None  # how a child process rebuilds it (the ncu pass)
    recorders: dict[str, RoutingRecorder] = field(default_factory=dict)
    layer_names: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    uncapturable: str | None = None  # why its steps cannot be captured as CUDA graphs, once found

    def step(self, inputs: Any) -> Any:
        """One forward step on `inputs` (a tensor or a tuple of positional arguments)."""
        return self.module(*(inputs if isinstance(inputs, tuple) else (inputs,)))


def reference_target(
    cfg: ModelConfig,
    phase: str,
    context: int,
    device: torch.device,
    dtype: str,
    kv_mode: str = "fixed",
    seed: int = 0,
) -> Target:
    if context < 1:
        raise MemtrafficError(f"context must be at least 1, got {context}")
    check_weights_fit(cfg, device, dtype)
    torch.manual_seed(seed)
    model = ReferenceModel(cfg, phase=phase, kv_mode=kv_mode, dtype=dtype, device=device)
    cfg_json = cfg.model_dump(mode="json")
    return Target(
        module=model,
        make_input=lambda b, i: model.make_input(b, context, input_generator(seed, b, i)),
        setup=lambda b: model.setup_cache(b, context),
        name=cfg.name,
        layer_pattern=REFERENCE_LAYER_PATTERN,
        config=cfg_json,
        spec={
            "kind": "config",
            "config": cfg_json,
            "phase": phase,
            "context": context,
            "kv_mode": kv_mode,
            "dtype": dtype,
            "seed": seed,
        },
        recorders=model.routing_recorders(),
        layer_names=model.layer_names(),
    )


def module_target(
    module: nn.Module,
    input_factory: Callable[[int, int], Any],
    name: str | None = None,
    spec: dict[str, Any] | None = None,
) -> Target:
    """A user's module: its own layer ranges if it opens any, else hooks named after block children."""
    module.eval()
    own = userfactory.own_layer_ranges(module, input_factory(1, 0))
    notes: list[str] = []
    if own:
        pattern = userfactory.HOOK_LAYER_PATTERN
        notes.append(f"layers: the module's own record_function ranges ({len(own)} names)")
    else:
        _, pattern = userfactory.attach_layer_ranges(module)
        notes.append("layers: ranges opened by forward hooks around each block child (module paths)")
    recorders = {
        getattr(m, "layer_name", n): m.recorder
        for n, m in module.named_modules()
        if isinstance(getattr(m, "recorder", None), RoutingRecorder)
    }
    return Target(
        module=module,
        make_input=input_factory,
        setup=lambda b: None,
        name=name or type(module).__name__,
        layer_pattern=pattern,
        spec=spec,
        recorders=recorders,
        notes=notes,
    )


def factory_target(spec: str, input_shape: str, device: torch.device, dtype: str, seed: int = 0) -> Target:
    """`path/to/file.py:factory` with inputs from an input-shape spec (see profiler.userfactory)."""
    module = userfactory.build_module(spec, device, dtype)
    make = userfactory.make_input_factory(input_shape, dtype, device, seed)
    child = {"kind": "factory", "spec": spec, "input_shape": input_shape, "dtype": dtype, "seed": seed}
    return module_target(module, make, name=Path(spec.split(":")[0]).stem, spec=child)


def target_from_spec(spec: dict[str, Any], dev: torch.device) -> Target:
    """The target a Target.spec describes, rebuilt on `dev` (in the ncu child process)."""
    if spec["kind"] == "config":
        cfg = ModelConfig.model_validate(spec["config"])
        return reference_target(
            cfg,
            spec["phase"],
            spec["context"],
            dev,
            spec.get("dtype", "bf16"),
            spec.get("kv_mode", "fixed"),
            spec.get("seed", 0),
        )
    return factory_target(
        spec["spec"], spec["input_shape"], dev, spec.get("dtype", "bf16"), spec.get("seed", 0)
    )


def check_weights_fit(cfg: ModelConfig, device: torch.device | str, dtype: str) -> None:
    """Refuse, before allocating, a reference model whose weights alone exceed the device's memory (the
    host's RAM for the CPU, free GPU memory for CUDA); meta tensors hold nothing and always fit."""
    dev = torch.device(device)
    if dev.type == "meta":
        return
    weights = stored_params(cfg) * torch.empty((), dtype=torch_dtype(dtype)).element_size()
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        where = f"{free / 1e9:.1f} GB free on {torch.cuda.get_device_name(dev)}"
    else:
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        where = f"{free / 1e9:.1f} GB of RAM on this machine"
    if weights > free:
        raise MemtrafficError(
            f"{cfg.name}: its weights are {weights / 1e9:.1f} GB in {dtype}, more than the {where}; "
            "count it on meta tensors (memtraffic count) or profile a smaller config"
        )


def stored_params(cfg: ModelConfig) -> float:
    """Parameters the model stores, from the simulator's own count (one decode token, no KV)."""
    from simulator.config import Workload
    from simulator.costs import Points
    from simulator.routing import RoutingModel
    from simulator.sweep import layer_entries, total_params

    points = Points.grid(Workload(batch=[1], context=[1]), RoutingModel())
    stored, _ = total_params(layer_entries(cfg, points))
    return float(stored)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device asked for; None: CUDA when torch sees one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise MemtrafficError(f"--device {device!r}: not a device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "meta":
        raise MemtrafficError("profile runs on a GPU or the CPU; meta tensors (no data) are for count")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MemtrafficError(f"device {device} asked for, but torch sees no CUDA device")
    return dev


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)

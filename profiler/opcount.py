"""The "eager" level: FLOPs and HBM bytes of a real PyTorch module, counted op by op.

`OpCounter` is a TorchDispatchMode: every aten op that reaches the dispatcher becomes one row with the
innermost module that ran it, its FLOPs and the bytes it reads and writes. It works on CPU tensors and on
meta tensors (build the module under `torch.device("meta")`: shapes only, so a 7B-size model is counted in
seconds).

Byte rules (one kernel per op, no cache reuse between ops):
- default: every distinct input tensor is read once, every output tensor written once; a tensor counts its
  own elements (a view is not charged for its whole storage) and a broadcast (stride-0) dim only once;
- views and metadata ops (view, expand, transpose, slice, detach, ...) and `empty*`: 0;
- gathers (embedding, embedding_bag, index_select, gather, index.Tensor) read only the requested rows
  (index count x row bytes, duplicates included) plus the indices, never the whole table;
- in-place ops read and write the mutated tensor (plus read their other inputs); fills and RNG inits only
  write it; `copy_` reads the source and writes the destination; `out=` arguments are written only;
- in-place scatters (index_put_, index_copy_, index_add_, scatter_*) write only the updated rows, and
  read them too when they accumulate: a KV-cache update is not charged for the whole cache.

FLOPs: matmul family and SDPA by the formulas below, anything else `torch.utils.flop_counter` knows by its
registry, everything else (elementwise, reductions) 0. Attention FLOPs are dense: 2*S_q*S_k*(d_qk + d_v)
per query head whether or not the mask is causal, the convention of torch's own flop registry.

SDPA: `F.scaled_dot_product_attention` is decomposed before the dispatcher (into a CPU flash kernel on CPU,
into bmm/softmax math on meta). With `fuse_sdpa=True` (default) the call is recorded as one fused op,
`aten.scaled_dot_product_attention`, reading q, k, v (and the mask) and writing the output, as a fused
GPU kernel does; the ops inside it are not recorded. With `fuse_sdpa=False` the inner ops are recorded.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

__all__ = [
    "COLUMNS",
    "SDPA_OP",
    "OpCounter",
    "OpRecord",
    "count_ops",
    "op_bytes",
    "op_totals",
    "sdpa_flops",
    "summarize",
    "tensor_bytes",
]

aten = torch.ops.aten

COLUMNS: tuple[str, ...] = (
    "seq",
    "module",
    "op",
    "flops",
    "bytes_read",
    "bytes_written",
    "out_shape",
    "dtype",
    "live_bytes",
)

# Name of the row a fused SDPA call produces (the aten op F.scaled_dot_product_attention maps to).
SDPA_OP = "aten.scaled_dot_product_attention"

# Ops that only create a new view or change metadata: no data moves. `is_view` catches most view ops;
# these are listed because their schema does not say so (_unsafe_view) or to be explicit.
_METADATA_OPS = {
    aten.view,
    aten._unsafe_view,
    aten.reshape,
    aten._reshape_alias,
    aten.expand,
    aten.t,
    aten.transpose,
    aten.permute,
    aten.slice,
    aten.select,
    aten.unsqueeze,
    aten.squeeze,
    aten.as_strided,
    aten.detach,
    aten.alias,
    aten.lift_fresh,
    aten.unfold,
    aten.narrow,
    aten.split,
    aten.split_with_sizes,
    aten.unbind,
    aten.view_as_real,
    aten.view_as_complex,
    aten.resize_,
    aten.set_,
    aten.empty,
    aten.empty_strided,
    aten.empty_like,
    aten.new_empty,
    aten.new_empty_strided,
    aten.empty_permuted,
    aten._fused_sdp_choice,
    # in-place metadata changes: the data stays where it is
    aten.t_,
    aten.transpose_,
    aten.unsqueeze_,
    aten.squeeze_,
    aten.as_strided_,
    aten.detach_,
}

# In-place ops that overwrite the mutated tensor without reading it.
_WRITE_ONLY_INPLACE = {
    aten.fill_,
    aten.zero_,
    aten.uniform_,
    aten.normal_,
    aten.random_,
    aten.bernoulli_,
    aten.exponential_,
    aten.geometric_,
    aten.log_normal_,
    aten.cauchy_,
}

Rule = Callable[[Sequence[Any], dict[str, Any], Any], tuple[int, int]]
FlopRule = Callable[[Sequence[Any], dict[str, Any], Any], int]


# ----------------------------------------------------------------------------------------- sizes
def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes to read or write `t` once: its own elements, a broadcast (stride-0) dimension only once."""
    if t.numel() == 0:
        return 0
    try:
        strides = t.stride()
    except (RuntimeError, NotImplementedError):  # sparse / nested layouts have no strides
        return int(t.numel()) * t.element_size()
    n = 1
    for size, stride in zip(t.shape, strides, strict=True):
        if stride != 0:
            n *= int(size)
    return n * t.element_size()


def _tensors(x: Any) -> list[torch.Tensor]:
    """Distinct tensors in a (nested) argument structure; a tensor passed twice is read once."""
    seen: set[int] = set()
    found: list[torch.Tensor] = []
    for leaf in tree_leaves(x):
        if isinstance(leaf, torch.Tensor) and id(leaf) not in seen:
            seen.add(id(leaf))
            found.append(leaf)
    return found


def _sum_bytes(x: Any) -> int:
    return sum(tensor_bytes(t) for t in _tensors(x))


def _arg(args: Sequence[Any], kwargs: dict[str, Any], index: int, name: str, default: Any = None) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def _row_bytes(t: torch.Tensor, dim: int) -> int:
    """Bytes of one slice of `t` along `dim` (one embedding row, one index_select row)."""
    if t.dim() == 0:
        return t.element_size()
    size = int(t.shape[dim])
    return 0 if size == 0 else int(t.numel()) // size * t.element_size()


# ----------------------------------------------------------------------------------------- gathers
def _embedding(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> tuple[int, int]:
    weight, indices = _arg(args, kwargs, 0, "weight"), _arg(args, kwargs, 1, "indices")
    read = int(indices.numel()) * _row_bytes(weight, 0) + tensor_bytes(indices)
    return read, _sum_bytes(out)


def _embedding_bag(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> tuple[int, int]:
    weight, indices = _arg(args, kwargs, 0, "weight"), _arg(args, kwargs, 1, "indices")
    extras = [_arg(args, kwargs, 2, "offsets"), _arg(args, kwargs, 6, "per_sample_weights")]
    read = int(indices.numel()) * _row_bytes(weight, 0) + tensor_bytes(indices) + _sum_bytes(extras)
    return read, _sum_bytes(out)  # every output: the bags and the bookkeeping tensors the kernel writes


def _index_select(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> tuple[int, int]:
    src, dim = _arg(args, kwargs, 0, "self"), _arg(args, kwargs, 1, "dim")
    index = _arg(args, kwargs, 2, "index")
    read = int(index.numel()) * _row_bytes(src, dim) + tensor_bytes(index)
    return read, _sum_bytes(out)


def _gather(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> tuple[int, int]:
    src, index = _arg(args, kwargs, 0, "self"), _arg(args, kwargs, 2, "index")
    read = int(index.numel()) * src.element_size() + tensor_bytes(index)
    return read, _sum_bytes(out)


def _index_tensor(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> tuple[int, int]:
    # Advanced indexing: each output element is one source element, so the source read is the output size.
    src, indices = _arg(args, kwargs, 0, "self"), _arg(args, kwargs, 1, "indices")
    read = int(out.numel()) * src.element_size() + _sum_bytes(list(indices))
    return read, _sum_bytes(out)


# ----------------------------------------------------------------------------------------- scatters
def _indexed_numel(dst: torch.Tensor, indices: Sequence[Any], values: torch.Tensor) -> int:
    """Elements of `dst` that `dst[indices] = values` updates."""
    idx = [i for i in indices if i is not None]
    if not idx or any(i.dtype == torch.bool for i in idx):
        return int(values.numel())  # a mask's hit count is data-dependent: the values tell it
    n = math.prod(int(s) for s in torch.broadcast_shapes(*(i.shape for i in idx)))
    free = [int(s) for d, s in enumerate(dst.shape) if d >= len(indices) or indices[d] is None]
    return n * math.prod(free)


def _index_put_(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> tuple[int, int]:
    dst, indices = _arg(args, kwargs, 0, "self"), _arg(args, kwargs, 1, "indices")
    values, accumulate = _arg(args, kwargs, 2, "values"), bool(_arg(args, kwargs, 3, "accumulate", False))
    written = _indexed_numel(dst, indices, values) * dst.element_size()
    read = tensor_bytes(values) + _sum_bytes(list(indices)) + (written if accumulate else 0)
    return read, written


def _index_rows_(accumulate: bool) -> Rule:
    """index_copy_ / index_add_(self, dim, index, source): whole rows along `dim`."""

    def rule(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> tuple[int, int]:
        dst, dim = _arg(args, kwargs, 0, "self"), _arg(args, kwargs, 1, "dim")
        index, source = _arg(args, kwargs, 2, "index"), _arg(args, kwargs, 3, "source")
        written = int(index.numel()) * _row_bytes(dst, dim)
        read = tensor_bytes(source) + tensor_bytes(index) + (written if accumulate else 0)
        return read, written

    return rule


def _scatter_(accumulate: bool) -> Rule:
    """scatter_ / scatter_add_ / scatter_reduce_(self, dim, index, src|value, ...): one element per index."""

    def rule(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> tuple[int, int]:
        dst, index = _arg(args, kwargs, 0, "self"), _arg(args, kwargs, 2, "index")
        src = _arg(args, kwargs, 3, "src", kwargs.get("value"))
        reduces = accumulate or _arg(args, kwargs, 4, "reduce") is not None
        written = int(index.numel()) * dst.element_size()
        read = tensor_bytes(index) + (written if reduces else 0)
        if isinstance(src, torch.Tensor):
            read += int(index.numel()) * src.element_size()
        return read, written

    return rule


def _copy_(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> tuple[int, int]:
    dst, src = _arg(args, kwargs, 0, "self"), _arg(args, kwargs, 1, "src")
    return tensor_bytes(src), tensor_bytes(dst)


def _filled_from_template(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> tuple[int, int]:
    # zeros_like(x), x.new_full(...): x gives only the shape, dtype and device; its data is never read
    return 0, _sum_bytes(out)


_FILLS = (
    aten.zeros_like,
    aten.ones_like,
    aten.full_like,
    aten.rand_like,
    aten.randn_like,
    aten.randint_like,
    aten.new_zeros,
    aten.new_ones,
    aten.new_full,
)

_BYTE_RULES: dict[Any, Rule] = {
    **dict.fromkeys(_FILLS, _filled_from_template),
    aten.embedding: _embedding,
    aten.embedding_bag: _embedding_bag,
    aten._embedding_bag: _embedding_bag,
    aten._embedding_bag_forward_only: _embedding_bag,
    aten.index_select: _index_select,
    aten.gather: _gather,
    aten.index: _index_tensor,
    aten.index_put_: _index_put_,
    aten._index_put_impl_: _index_put_,
    aten.index_copy_: _index_rows_(accumulate=False),
    aten.index_add_: _index_rows_(accumulate=True),
    aten.scatter_: _scatter_(accumulate=False),
    aten.scatter_add_: _scatter_(accumulate=True),
    aten.scatter_reduce_: _scatter_(accumulate=True),
    aten.copy_: _copy_,
}


def _schema_bytes(
    func: torch._ops.OpOverload, args: Sequence[Any], kwargs: dict[str, Any], out: Any
) -> tuple[int, int]:
    """Default, in-place and out= rules, read off the op's schema alias annotations."""
    mutated: list[torch.Tensor] = []
    out_args: list[torch.Tensor] = []
    for i, schema_arg in enumerate(func._schema.arguments):
        info = schema_arg.alias_info
        if info is None or not info.is_write:
            continue
        value = _arg(args, kwargs, i, schema_arg.name)
        (out_args if schema_arg.is_out else mutated).extend(_tensors(value))
    if not mutated and not out_args:
        return _sum_bytes((args, kwargs)), _sum_bytes(out)
    written_ids = {id(t) for t in mutated + out_args}
    others = [t for t in _tensors((args, kwargs)) if id(t) not in written_ids]
    read = sum(tensor_bytes(t) for t in others)
    if func._overloadpacket not in _WRITE_ONLY_INPLACE:
        read += sum(tensor_bytes(t) for t in mutated)
    written = sum(tensor_bytes(t) for t in mutated + out_args)
    # Outputs that are not one of the written arguments (rare: extra returns of an out= op).
    written += sum(tensor_bytes(t) for t in _tensors(out) if id(t) not in written_ids)
    return read, written


def op_bytes(
    func: torch._ops.OpOverload, args: Sequence[Any], kwargs: dict[str, Any], out: Any
) -> tuple[int, int]:
    """(bytes_read, bytes_written) of one executed aten op, by the rules in the module docstring."""
    packet = func._overloadpacket
    if packet in _METADATA_OPS or func.is_view:
        return 0, 0
    rule = _BYTE_RULES.get(packet)
    if rule is not None:
        return rule(args, kwargs, out)
    return _schema_bytes(func, args, kwargs, out)


# ----------------------------------------------------------------------------------------- FLOPs
def _mm(a: torch.Tensor, b: torch.Tensor) -> int:
    return 2 * int(a.shape[0]) * int(a.shape[1]) * int(b.shape[-1])


def _bmm(a: torch.Tensor, b: torch.Tensor) -> int:
    return 2 * int(a.shape[0]) * int(a.shape[1]) * int(a.shape[2]) * int(b.shape[2])


def sdpa_flops(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
    """QK^T plus PV over all query heads (GQA: k/v heads are shared, FLOPs follow the query heads)."""
    s_q, d_qk = int(q.shape[-2]), int(q.shape[-1])
    s_k, d_v = int(k.shape[-2]), int(v.shape[-1])
    batch_heads = math.prod(int(s) for s in q.shape[:-2])
    return 2 * batch_heads * s_q * s_k * (d_qk + d_v)


def _linear(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> int:
    x, w = args[0], args[1]
    return 2 * (int(x.numel()) // int(x.shape[-1])) * int(w.shape[1]) * int(w.shape[0])


_FLOP_RULES: dict[Any, FlopRule] = {
    aten.mm: lambda a, k, o: _mm(a[0], a[1]),
    aten.addmm: lambda a, k, o: _mm(a[1], a[2]),
    aten._addmm_activation: lambda a, k, o: _mm(a[1], a[2]),
    aten.bmm: lambda a, k, o: _bmm(a[0], a[1]),
    aten.baddbmm: lambda a, k, o: _bmm(a[1], a[2]),
    aten.mv: lambda a, k, o: 2 * int(a[0].numel()),
    aten.addmv: lambda a, k, o: 2 * int(a[1].numel()),
    aten.dot: lambda a, k, o: 2 * int(a[0].numel()),
    aten.linear: _linear,
    # SDPA kernels torch's registry has no formula for (the CPU one gives 0 attention FLOPs otherwise).
    aten._scaled_dot_product_flash_attention_for_cpu: lambda a, k, o: sdpa_flops(a[0], a[1], a[2]),
    aten._scaled_dot_product_fused_attention_overrideable: lambda a, k, o: sdpa_flops(a[0], a[1], a[2]),
}


# ----------------------------------------------------------------------------------------- the mode
@dataclass(frozen=True)
class OpRecord:
    """One executed op; fields are the DataFrame columns."""

    seq: int
    module: str
    op: str
    flops: int
    bytes_read: int
    bytes_written: int
    out_shape: tuple[int, ...] | None
    dtype: str
    live_bytes: int  # bytes of the storages counted ops allocated that are still alive after this one


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata  # the StorageImpl's address: shared by views, stable while alive


def _first_tensor(x: Any) -> torch.Tensor | None:
    return next((t for t in tree_leaves(x) if isinstance(t, torch.Tensor)), None)


class _SdpaAsOneOp(TorchFunctionMode):
    """Records F.scaled_dot_product_attention as one fused op and mutes the ops it dispatches."""

    def __init__(self, counter: OpCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        self.counter._muted += 1
        try:
            out = func(*args, **kwargs)
        finally:
            self.counter._muted -= 1
        q, k, v = (_arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
        mask = _arg(args, kwargs, 3, "attn_mask")
        read = _sum_bytes([q, k, v, mask])
        self.counter._record(SDPA_OP, sdpa_flops(q, k, v), read, tensor_bytes(out), out, (args, kwargs))
        return out


class OpCounter(TorchDispatchMode):
    """Records every aten op run inside it: module path, FLOPs, bytes read and written.

    Pass the root module to attribute ops to the innermost submodule (forward pre/post hooks on every
    submodule, removed on exit); without it every op is attributed to "". The root itself is "".
    """

    def __init__(self, module: torch.nn.Module | None = None, *, fuse_sdpa: bool = True) -> None:
        super().__init__()
        self.module = module
        self.fuse_sdpa = fuse_sdpa
        self.records: list[OpRecord] = []
        self.flop_errors: list[str] = []  # registry formulas that raised: the op keeps 0 FLOPs
        self._stack: list[str] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._fn_mode: _SdpaAsOneOp | None = None
        self._muted = 0
        self._live: dict[int, list[int]] = {}  # storage key -> [bytes, tensors alive on it]
        self.live_bytes = 0

    # -- module tracking
    def _attach(self, root: torch.nn.Module) -> None:
        for name, mod in root.named_modules():
            self._handles.append(mod.register_forward_pre_hook(self._pre_hook(name)))
            self._handles.append(mod.register_forward_hook(self._post_hook(name), always_call=True))

    def _pre_hook(self, name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any) -> None:
            self._stack.append(name)

        return hook

    def _post_hook(self, name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            # Pop back to this module even if an inner forward raised before its own hook ran.
            while self._stack:
                if self._stack.pop() == name:
                    break

        return hook

    @property
    def current_module(self) -> str:
        return self._stack[-1] if self._stack else ""

    # -- mode protocol
    def __enter__(self) -> OpCounter:
        if self.module is not None:
            self._attach(self.module)
        if self.fuse_sdpa:
            self._fn_mode = _SdpaAsOneOp(self)
            self._fn_mode.__enter__()
        super().__enter__()
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        try:
            super().__exit__(exc_type, exc_val, exc_tb)
        finally:
            if self._fn_mode is not None:
                self._fn_mode.__exit__(exc_type, exc_val, exc_tb)
                self._fn_mode = None
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            self._stack.clear()

    def __torch_dispatch__(
        self,
        func: torch._ops.OpOverload,
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self._muted:
            return out
        read, written = op_bytes(func, args, kwargs, out)
        self._record(str(func), self._flops(func, args, kwargs, out), read, written, out, (args, kwargs))
        return out

    def _flops(
        self, func: torch._ops.OpOverload, args: Sequence[Any], kwargs: dict[str, Any], out: Any
    ) -> int:
        packet = func._overloadpacket
        rule = _FLOP_RULES.get(packet)
        if rule is not None:
            return int(rule(args, kwargs, out))
        formula = flop_registry.get(packet)
        if formula is None:
            return 0
        try:
            return int(formula(*args, **kwargs, out_val=out))
        except Exception as exc:  # a registry formula that rejects these args must not stop the count
            self.flop_errors.append(f"{func}: {type(exc).__name__}: {exc}")
            return 0

    def _record(self, op: str, flops: int, read: int, written: int, out: Any, inputs: Any) -> None:
        self._track_new_storages(out, inputs)
        first = _first_tensor(out)
        self.records.append(
            OpRecord(
                seq=len(self.records),
                module=self.current_module,
                op=op,
                flops=flops,
                bytes_read=int(read),
                bytes_written=int(written),
                out_shape=tuple(int(s) for s in first.shape) if first is not None else None,
                dtype=str(first.dtype).removeprefix("torch.") if first is not None else "",
                live_bytes=self.live_bytes,
            )
        )

    # -- live activation bytes: storages the counted ops allocate, until their last tensor dies
    def _track_new_storages(self, out: Any, inputs: Any) -> None:
        """Count the storages an op allocated (not views of its inputs, parameters or caches, not in-place
        results); each is released when the last tensor the counted ops returned on it is collected."""
        given = {_storage_key(t) for t in tree_leaves(inputs) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            key = _storage_key(t)
            entry = self._live.get(key)
            if entry is None:
                if key in given:
                    continue  # a view or in-place result of something allocated elsewhere
                entry = self._live[key] = [t.untyped_storage().nbytes(), 0]
                self.live_bytes += entry[0]
            entry[1] += 1
            weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.live_bytes -= entry[0]
            del self._live[key]

    def to_dataframe(self) -> pd.DataFrame:
        """One row per recorded op, columns `COLUMNS`."""
        df = pd.DataFrame([r.__dict__ for r in self.records], columns=list(COLUMNS))
        ints = ("seq", "flops", "bytes_read", "bytes_written", "live_bytes")
        return df.astype(dict.fromkeys(ints, "int64"))


def count_ops(module: torch.nn.Module, *inputs: Any, fuse_sdpa: bool = True, **kwargs: Any) -> pd.DataFrame:
    """Run `module(*inputs, **kwargs)` once under torch.no_grad inside an OpCounter; one row per op."""
    counter = OpCounter(module, fuse_sdpa=fuse_sdpa)
    with torch.no_grad(), counter:
        module(*inputs, **kwargs)
    return counter.to_dataframe()


def summarize(df: pd.DataFrame, depth: int = 1) -> pd.DataFrame:
    """Totals per module prefix of `depth` dotted components (`blocks.3` at depth 2), first-seen order.

    Columns: module, n_ops, flops, bytes_read, bytes_written, bytes_total. Ops of the root module are "".
    """
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    prefix = df["module"].map(lambda m: ".".join(m.split(".")[:depth]) if m else "")
    return op_totals(df.assign(module=prefix), "module")


def op_totals(df: pd.DataFrame, by: str) -> pd.DataFrame:
    """Per value of column `by` of per-op rows, first-seen order: by, n_ops, flops, bytes_read,
    bytes_written, bytes_total, peak_live_bytes (the most activation bytes alive after any of its ops)."""
    out = (
        df.groupby(by, sort=False)
        .agg(
            n_ops=("op", "size"),
            flops=("flops", "sum"),
            bytes_read=("bytes_read", "sum"),
            bytes_written=("bytes_written", "sum"),
            peak_live_bytes=("live_bytes", "max"),
        )
        .reset_index()
    )
    out["bytes_total"] = out["bytes_read"] + out["bytes_written"]
    return out

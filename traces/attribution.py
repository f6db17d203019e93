"""Kernel -> step and layer attribution.

A device activity (kernel, memcpy, memset) is tied to the CPU call that launched it by
``args.correlation``; the launch lies inside CPU ``user_annotation`` ranges (``record_function``) on
the same pid/tid. The innermost range whose name matches the layer pattern names the layer; the range
matching the step pattern names the step. Activities without a launch (e.g. CUDA graph replays) fall
back to the GPU-side ``gpu_user_annotation`` ranges on their own stream.

Containment uses sorted starts plus parent links (ranges on one thread nest like a stack), so each
lookup is a binary search and a short walk up the nesting, never an all-pairs scan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from simulator.errors import TraceError
from traces.kineto import ANNOTATION, DEVICE_CATEGORIES, GPU_ANNOTATION, LAUNCH_CATEGORIES

DEFAULT_STEP_PATTERN = r"^step(\d+)$"
# block3.moe, block0.attn, layers.3.mlp, model.layers.12.self_attn, L3.moe, transformer.h.5.attn ...
DEFAULT_LAYER_PATTERN = r"(?:^|\.)(?:blocks?|layers?|h|L)[._]?(?P<block>\d+)\.(?P<sublayer>[A-Za-z_][\w.]*)$"

ATTRIBUTED_COLUMNS: tuple[str, ...] = (
    "step",
    "layer",
    "block",
    "sublayer",
    "kernel",
    "ts_ns",
    "dur_ns",
    "correlation",
    "stream",
    "category",
)


_SEPARATORS = "._/:-"
# the block number of a range name: after a block word (block0, layers.3, h.5, L3), else a number that
# is a whole component of a dotted name ("gpt2.h.3.attn" -> 3), else the first digits
_BLOCK_NUMBERS = (
    re.compile(r"(?:^|[._/:-])(?:blocks?|layers?|h|l)[._]?(\d+)(?=[._/:-]|$)", re.IGNORECASE),
    re.compile(r"(?:^|[._/:-])(\d+)(?=[._/:-]|$)"),
    re.compile(r"(\d+)"),
)


def _block_number(name: str, number: str | None = None) -> re.Match[str] | None:
    """Where the block number (`number`, or the first one found) sits in `name`."""
    for regex in _BLOCK_NUMBERS:
        for m in regex.finditer(name):
            if number is None or m.group(1) == number:
                return m
    return None


@dataclass(frozen=True)
class NamePattern:
    """A compiled range-name pattern. Groups: named ``block``/``sublayer`` (or ``step``), else the first
    and second groups (one unnamed group: the block when it is a number, else the sublayer). What the
    groups leave open is read from the matched range name: the block is its number after a block word
    (block, layer(s), h, L), else its first number that is a whole dotted component, else its first
    digits, and the sublayer what follows that number (``encoder.layer.7.attention`` -> 7,
    ``attention``; ``gpt2.h.3.attn`` -> 3; ``block0.moe.expert.3`` -> 0, ``moe.expert.3``); a name with
    no number keeps block -1 and is its own sublayer. A step pattern without a group gives step -1."""

    regex: re.Pattern[str]

    @classmethod
    def compile(cls, pattern: str, what: str) -> NamePattern:
        try:
            return cls(re.compile(pattern))
        except re.error as exc:
            raise TraceError(
                f"{what} pattern {pattern!r} is not a valid regular expression ({exc})"
            ) from None

    def _group(self, m: re.Match[str], name: str, position: int) -> str | None:
        if name in self.regex.groupindex:
            return m.group(name)
        if self.regex.groups >= position and not self.regex.groupindex:
            return m.group(position)
        return None

    def layer(self, name: str) -> tuple[int, str] | None:
        """(block, sublayer) for a layer range name, None when it does not match."""
        m = self.regex.search(name)
        if m is None:
            return None
        block = self._group(m, "block", 1)
        sub = self._group(m, "sublayer", 2)
        if self.regex.groups == 1 and not self.regex.groupindex and block and not block.isdigit():
            block, sub = None, block  # the one group names the sublayer
        found = _block_number(name, block if block and block.isdigit() else None)
        if block and block.isdigit():
            rest = name[found.end(1) :].lstrip(_SEPARATORS) if found else ""
            return int(block), sub or rest or name
        if found is None:
            return -1, sub or name
        return int(found.group(1)), sub or name[found.end(1) :].lstrip(_SEPARATORS) or name

    def step(self, name: str) -> int | None:
        """Step index for a step range name (-1 when the pattern captures none), None if no match."""
        m = self.regex.search(name)
        if m is None:
            return None
        idx = self._group(m, "step", 1)
        return int(idx) if idx and idx.isdigit() else -1


def _parents(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Parent index of each range (sorted by start asc, end desc) in the nesting tree; -1 at the root."""
    parent = np.full(len(starts), -1, dtype=np.int64)
    end_list = ends.tolist()
    stack: list[int] = []
    for i, s in enumerate(starts.tolist()):
        while stack and end_list[stack[-1]] <= s:
            stack.pop()
        if stack:
            parent[i] = stack[-1]
        stack.append(i)
    return parent


def innermost(
    r_group: np.ndarray, r_start: np.ndarray, r_end: np.ndarray, q_group: np.ndarray, q_t: np.ndarray
) -> np.ndarray:
    """Index into the ranges of the innermost range of the same group with start <= t < end, or -1.

    With nested ranges, the ranges that contain t are the last range starting at or before t and its
    ancestors; walking up from it, the first one whose end is past t is the innermost.
    """
    out = np.full(len(q_t), -1, dtype=np.int64)
    if len(r_start) == 0 or len(q_t) == 0:
        return out
    for g in np.unique(q_group):
        rsel = np.flatnonzero(r_group == g)
        if len(rsel) == 0:
            continue
        order = rsel[np.lexsort((-r_end[rsel], r_start[rsel]))]
        starts, ends = r_start[order], r_end[order]
        parent = _parents(starts, ends)
        qsel = np.flatnonzero(q_group == g)
        t = q_t[qsel]
        idx = np.searchsorted(starts, t, side="right") - 1
        # walk up while the candidate ends at or before t; depth of nesting bounds the iterations
        pending = idx >= 0
        pending[pending] = ends[idx[pending]] <= t[pending]
        while pending.any():
            idx[pending] = parent[idx[pending]]
            pending &= idx >= 0
            pending[pending] = ends[idx[pending]] <= t[pending]
        found = idx >= 0
        out[qsel[found]] = order[idx[found]]
    return out


def _group_key(pid: np.ndarray, tid: np.ndarray) -> np.ndarray:
    """One int64 per (pid, tid) pair, for grouping with np.unique."""
    pairs = np.stack([pid, tid], axis=1)
    _, inv = np.unique(pairs, axis=0, return_inverse=True)
    return inv.reshape(-1).astype(np.int64)


def _ranges(events: pd.DataFrame, cat: str) -> pd.DataFrame:
    r = events[events["cat"] == cat]
    return r.assign(name=r["name"].astype(str))


def attribute(
    events: pd.DataFrame,
    layer_pattern: str | None = None,
    step_pattern: str | None = None,
    source: str = "trace",
) -> pd.DataFrame:
    """Device activities of a kineto events frame with their step and layer.

    Returns ATTRIBUTED_COLUMNS, sorted by ts: step (-1 outside every step range), layer (None outside
    every layer range), block (-1 when unknown), sublayer, kernel name, ts_ns / dur_ns (trace base),
    correlation, stream, category. Raises TraceError when no activity lands in any layer range.
    """
    lpat = NamePattern.compile(layer_pattern or DEFAULT_LAYER_PATTERN, "layer")
    spat = NamePattern.compile(step_pattern or DEFAULT_STEP_PATTERN, "step")

    dev = events[events["cat"].isin(DEVICE_CATEGORIES)].reset_index(drop=True)
    launches = events[events["cat"].isin(LAUNCH_CATEGORIES) & (events["correlation"] >= 0)]
    launches = launches.drop_duplicates("correlation")

    # where each activity was issued: the launch's thread and time, else its own stream and time
    li = pd.Index(launches["correlation"].to_numpy()).get_indexer(dev["correlation"].to_numpy())
    has_launch = (li >= 0) & (dev["correlation"].to_numpy() >= 0)
    l_pid, l_tid, l_ts = (launches[c].to_numpy() for c in ("pid", "tid", "ts_ns"))
    q_pid = np.where(has_launch, l_pid[np.maximum(li, 0)], dev["pid"].to_numpy())
    q_tid = np.where(has_launch, l_tid[np.maximum(li, 0)], dev["tid"].to_numpy())
    q_ts = np.where(has_launch, l_ts[np.maximum(li, 0)], dev["ts_ns"].to_numpy())

    cpu = _ranges(events, ANNOTATION)
    gpu = _ranges(events, GPU_ANNOTATION)
    cpu_steps, cpu_layers = _classify(cpu, spat, lpat)
    gpu_steps, gpu_layers = _classify(gpu, spat, lpat)

    step = _lookup(cpu_steps, gpu_steps, has_launch, q_pid, q_tid, q_ts, "step_idx", -1)
    li_layer = _lookup(cpu_layers, gpu_layers, has_launch, q_pid, q_tid, q_ts, "row", -1)
    layers_all = pd.concat([cpu_layers, gpu_layers], ignore_index=True)
    # _lookup returns row positions into cpu_layers, then gpu_layers offset by len(cpu_layers)
    hit = li_layer >= 0
    layer = np.full(len(dev), None, dtype=object)
    sub = np.full(len(dev), None, dtype=object)
    block = np.full(len(dev), -1, dtype=np.int64)
    if hit.any():
        picked = layers_all.iloc[li_layer[hit]]
        layer[hit] = picked["name"].to_numpy()
        sub[hit] = picked["sublayer"].to_numpy()
        block[hit] = picked["block"].to_numpy()
    if not hit.any():
        names = sorted(set(cpu["name"]) | set(gpu["name"]))
        shown = ", ".join(names[:24]) + (f" (+{len(names) - 24} more)" if len(names) > 24 else "")
        raise TraceError(
            f"{source}: no kernel lies in a range matching layer pattern {lpat.regex.pattern!r}; "
            f"range names seen: {shown or 'none'}"
        )
    out = pd.DataFrame(
        {
            "step": step,
            "layer": layer,
            "block": block,
            "sublayer": sub,
            "kernel": dev["name"].astype(str).to_numpy(dtype=object),
            "ts_ns": dev["ts_ns"].to_numpy(),
            "dur_ns": dev["dur_ns"].to_numpy(),
            "correlation": dev["correlation"].to_numpy(),
            "stream": dev["stream"].to_numpy(),
            "category": dev["cat"].astype(str).to_numpy(dtype=object),
        }
    )
    return out.sort_values("ts_ns", kind="stable").reset_index(drop=True)


def _classify(
    ranges: pd.DataFrame, spat: NamePattern, lpat: NamePattern
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split annotation ranges into step ranges (with step_idx) and layer ranges (block, sublayer)."""
    names = ranges["name"].to_numpy()
    uniq = pd.unique(names)
    step_of = {n: spat.step(n) for n in uniq}
    layer_of = {n: lpat.layer(n) for n in uniq}
    is_step = np.array([step_of[n] is not None for n in names], dtype=bool)
    is_layer = np.array([layer_of[n] is not None for n in names], dtype=bool) & ~is_step
    steps = ranges[is_step].copy()
    steps["step_idx"] = [step_of[n] for n in steps["name"]]
    if len(steps) and (steps["step_idx"] < 0).all():
        steps["step_idx"] = np.argsort(np.argsort(steps["ts_ns"].to_numpy(), kind="stable"))
    layers = ranges[is_layer].copy()
    layers["block"] = np.array([layer_of[n][0] for n in layers["name"]], dtype=np.int64)
    layers["sublayer"] = [layer_of[n][1] for n in layers["name"]]
    return steps.reset_index(drop=True), layers.reset_index(drop=True)


def _lookup(
    cpu: pd.DataFrame,
    gpu: pd.DataFrame,
    has_launch: np.ndarray,
    pid: np.ndarray,
    tid: np.ndarray,
    ts: np.ndarray,
    value: str,
    default: int,
) -> np.ndarray:
    """Per activity: ``value`` of the innermost containing range ("row" = row position in cpu, then gpu
    offset by len(cpu)); launched activities look in CPU ranges, the others in GPU ranges."""
    out = np.full(len(ts), default, dtype=np.int64)
    for frame, sel, offset in ((cpu, has_launch, 0), (gpu, ~has_launch, len(cpu))):
        if not sel.any() or frame.empty:
            continue
        r_group, q_group = _shared_groups(frame, pid[sel], tid[sel])
        start = frame["ts_ns"].to_numpy()
        end = start + frame["dur_ns"].to_numpy()
        idx = innermost(r_group, start, end, q_group, ts[sel])
        found = idx >= 0
        vals = np.full(len(idx), default, dtype=np.int64)
        if value == "row":
            vals[found] = idx[found] + offset
        else:
            vals[found] = frame[value].to_numpy()[idx[found]]
        out[np.flatnonzero(sel)] = vals
    return out


def _shared_groups(
    frame: pd.DataFrame, q_pid: np.ndarray, q_tid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Group ids for ranges and queries over the same (pid, tid) numbering."""
    pid = np.concatenate([frame["pid"].to_numpy(), q_pid])
    tid = np.concatenate([frame["tid"].to_numpy(), q_tid])
    key = _group_key(pid, tid)
    return key[: len(frame)], key[len(frame) :]


def step_ranges(events: pd.DataFrame, step_pattern: str | None = None) -> pd.DataFrame:
    """CPU step ranges (name, step_idx, pid, tid, ts_ns, dur_ns), sorted by start."""
    spat = NamePattern.compile(step_pattern or DEFAULT_STEP_PATTERN, "step")
    lpat = NamePattern.compile(r"(?!)", "layer")  # matches nothing
    steps, _ = _classify(_ranges(events, ANNOTATION), spat, lpat)
    return steps.sort_values("ts_ns").reset_index(drop=True)


def layer_ranges(events: pd.DataFrame, layer_pattern: str | None = None) -> pd.DataFrame:
    """CPU layer ranges (name, block, sublayer, pid, tid, ts_ns, dur_ns), sorted by start."""
    spat = NamePattern.compile(r"(?!)", "step")
    lpat = NamePattern.compile(layer_pattern or DEFAULT_LAYER_PATTERN, "layer")
    _, layers = _classify(_ranges(events, ANNOTATION), spat, lpat)
    return layers.sort_values("ts_ns").reset_index(drop=True)


def layer_table(kernels: pd.DataFrame) -> pd.DataFrame:
    """Per (batch, step, layer): kernel_time_ns (sum of device activity durations), n_kernels, first_ts_ns,
    last_end_ns. Activities outside every layer range are left out."""
    k = kernels[kernels["layer"].notna()]
    keys = ["batch", "step", "layer", "block", "sublayer"]
    g = k.assign(end_ns=k["ts_ns"] + k["dur_ns"]).groupby(keys, sort=False, dropna=False)
    out = g.agg(
        kernel_time_ns=("dur_ns", "sum"),
        n_kernels=("dur_ns", "size"),
        first_ts_ns=("ts_ns", "min"),
        last_end_ns=("end_ns", "max"),
    ).reset_index()
    return out.sort_values(["batch", "step", "first_ts_ns"], kind="stable").reset_index(drop=True)

"""Streaming kineto reader, counter injection and kernel-to-layer attribution."""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from simulator.errors import TraceError
from traces.attribution import DEFAULT_LAYER_PATTERN, NamePattern, attribute, innermost
from traces.kineto import KEPT_CATEGORIES, TruncatedTraceError, inject_events, read_kineto, us_to_ns

SAMPLES = Path(__file__).resolve().parent.parent / "traces" / "samples" / "h100-decode-2026-11-26"
MOE_B8 = SAMPLES / "kineto" / "moe_decode_b8.json.gz"


def _raw_events(path: Path, exact: bool = False) -> dict[str, Any]:
    with gzip.open(path, "rt") as f:
        return json.load(f, parse_float=Decimal) if exact else json.load(f)


def _write_trace(path: Path, events: list[dict[str, Any]], base: int | None = 1_000_000_000) -> Path:
    doc: dict[str, Any] = {"schemaVersion": 1, "traceEvents": events}
    if base is not None:
        doc["baseTimeNanoseconds"] = base
    path.write_text(json.dumps(doc))
    return path


def _x(cat: str, name: str, ts: float, dur: float, pid: int = 1, tid: int = 1, **args: Any) -> dict[str, Any]:
    return {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": ts, "dur": dur, "args": args}


# --- reader -------------------------------------------------------------------------------------------


def test_reader_keeps_exactly_the_needed_events_with_exact_ns() -> None:
    doc = _raw_events(MOE_B8, exact=True)
    trace = read_kineto(MOE_B8)
    assert trace.base_time_ns == doc["baseTimeNanoseconds"]
    assert trace.device_name == doc["deviceProperties"][0]["name"]
    assert trace.n_events == len(doc["traceEvents"])
    kept = [e for e in doc["traceEvents"] if e.get("ph") == "X" and e.get("cat") in KEPT_CATEGORIES]
    assert Counter(str(c) for c in trace.events["cat"]) == Counter(e["cat"] for e in kept)
    # ts in the file has 3 decimals of µs: Decimal arithmetic gives the exact ns, independent of floats
    expect_ts = [int(Decimal(e["ts"]) * 1000) for e in kept]
    expect_dur = [int(Decimal(e["dur"]) * 1000) for e in kept]
    assert trace.events["ts_ns"].tolist() == expect_ts
    assert trace.events["dur_ns"].tolist() == expect_dur
    expect_corr = [e.get("args", {}).get("correlation", -1) for e in kept]
    assert trace.events["correlation"].tolist() == expect_corr


def test_plain_and_gzip_give_the_same_frames(tmp_path: Path) -> None:
    plain = tmp_path / "t.json"
    plain.write_bytes(gzip.decompress(MOE_B8.read_bytes()))
    a, b = read_kineto(MOE_B8), read_kineto(plain)
    assert a.events.astype(str).equals(b.events.astype(str))
    assert a.base_time_ns == b.base_time_ns


def test_first_input_dim_of_ops_is_recorded() -> None:
    trace = read_kineto(MOE_B8, with_ops=True)
    doc = _raw_events(MOE_B8)
    ops = [e for e in doc["traceEvents"] if e.get("ph") == "X" and e.get("cat") == "cpu_op"]
    want = []
    for e in ops:
        dims = [d for d in e.get("args", {}).get("Input Dims", []) if isinstance(d, list) and d]
        want.append(dims[0][0] if dims else -1)
    assert trace.ops["first_dim"].tolist() == want


def test_us_to_ns_is_exact_at_wall_clock_magnitudes() -> None:
    rng = np.random.default_rng(1)
    ns = rng.integers(4_000_000_000_000_000, 5_000_000_000_000_000, size=10_000)
    us = np.array([float(Decimal(int(n)) / 1000) for n in ns])
    assert (us_to_ns(us) == ns).all()


def test_truncated_gzip_raises_with_count_and_keeps_partial(tmp_path: Path) -> None:
    raw = MOE_B8.read_bytes()
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(TruncatedTraceError) as info:
        read_kineto(cut)
    msg = str(info.value)
    assert str(cut) in msg and "truncated" in msg and "events were read" in msg and "\n" not in msg
    partial = info.value.partial
    assert partial.truncated and len(partial.events) > 0
    assert f"after {partial.n_events} events" in msg
    again = read_kineto(cut, allow_truncated=True)
    assert again.truncated and len(again.events) == len(partial.events)


def test_truncated_plain_json_raises(tmp_path: Path) -> None:
    text = gzip.decompress(MOE_B8.read_bytes())
    cut = tmp_path / "cut.json"
    cut.write_bytes(text[: len(text) // 3])
    with pytest.raises(TraceError, match=r"JSON ends early after \d+ events were read"):
        read_kineto(cut)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"foo": [1, 2, 3]}', "not a kineto trace (no traceEvents)"),
        ("[1, 2]", "not a kineto trace (no traceEvents)"),
        ('{"traceEvents": [{"ph": "M", "name": "x"}]}', "none complete (ph X)"),
        ("this is not json", "not valid JSON"),
        ("", "empty file"),
    ],
)
def test_foreign_files_raise_one_line(tmp_path: Path, content: str, message: str) -> None:
    f = tmp_path / "foreign.json"
    f.write_text(content)
    with pytest.raises(TraceError) as info:
        read_kineto(f)
    assert message in str(info.value) and str(f) in str(info.value) and "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no such kineto trace file"):
        read_kineto(tmp_path / "nope.json.gz")


# --- injection ----------------------------------------------------------------------------------------


def test_inject_events_into_real_trace(tmp_path: Path) -> None:
    extra = [{"ph": "C", "name": "c", "pid": 0, "ts": 1.5, "args": {"value": 2.0}}]
    dst = tmp_path / "out.json.gz"
    inject_events(MOE_B8, dst, extra)
    before, after = _raw_events(MOE_B8), _raw_events(dst)
    assert after["traceEvents"][0] == extra[0]
    assert after["traceEvents"][1:] == before["traceEvents"]
    assert {k: v for k, v in after.items() if k != "traceEvents"} == {
        k: v for k, v in before.items() if k != "traceEvents"
    }


def test_inject_into_empty_array_and_skips_nested_keys(tmp_path: Path) -> None:
    src = tmp_path / "s.json"
    src.write_text('{"meta": {"traceEvents": [9]}, "s": "\\"traceEvents\\": [", "traceEvents" : [ ] }')
    dst = tmp_path / "d.json.gz"
    inject_events(src, dst, [{"a": 1}, {"b": 2}])
    doc = json.loads(gzip.decompress(dst.read_bytes()))
    assert doc["traceEvents"] == [{"a": 1}, {"b": 2}]
    assert doc["meta"] == {"traceEvents": [9]}


# --- attribution --------------------------------------------------------------------------------------


def _nested_ranges(rng: random.Random, lo: int, hi: int, depth: int, out: list[tuple[int, int]]) -> None:
    """Random properly nested ranges inside [lo, hi)."""
    t = lo
    while depth > 0 and t < hi - 2:
        a = rng.randint(t, hi - 2)
        b = rng.randint(a + 1, min(hi, a + 1 + (hi - lo) // 2))
        out.append((a, b))
        _nested_ranges(rng, a, b, depth - 1, out)
        t = b if rng.random() < 0.7 else b + 1  # siblings may touch: [a, b) then [b, c)
        if rng.random() < 0.2:
            break


@pytest.mark.parametrize("seed", range(6))
def test_innermost_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    groups: list[int] = []
    starts: list[int] = []
    ends: list[int] = []
    for g in range(3):
        rs: list[tuple[int, int]] = []
        _nested_ranges(rng, 0, 1000, 4, rs)
        for a, b in rs:
            groups.append(g)
            starts.append(a)
            ends.append(b)
    q_group = np.array([rng.randrange(3) for _ in range(600)])
    q_t = np.array([rng.randrange(-5, 1005) for _ in range(600)])
    got = innermost(np.array(groups), np.array(starts), np.array(ends), q_group, q_t)
    for i, (g, t) in enumerate(zip(q_group.tolist(), q_t.tolist(), strict=True)):
        inside = [j for j in range(len(starts)) if groups[j] == g and starts[j] <= t < ends[j]]
        if not inside:
            assert got[i] == -1
        else:
            # innermost = the shortest containing range (ties: the later-starting one, nested inside)
            best = min(inside, key=lambda j: (ends[j] - starts[j], -starts[j]))
            assert (starts[got[i]], ends[got[i]]) == (starts[best], ends[best])


@pytest.mark.parametrize(
    ("name", "block", "sublayer"),
    [
        ("block3.moe", 3, "moe"),
        ("block0.attn", 0, "attn"),
        ("layers.3.mlp", 3, "mlp"),
        ("model.layers.12.self_attn", 12, "self_attn"),
        ("L3.moe", 3, "moe"),
        ("transformer.h.5.attn", 5, "attn"),
        ("step0", None, None),
        ("aten::mm", None, None),
        ("model.layers.12", None, None),
    ],
)
def test_default_layer_pattern(name: str, block: int | None, sublayer: str | None) -> None:
    got = NamePattern.compile(DEFAULT_LAYER_PATTERN, "layer").layer(name)
    assert got == (None if block is None else (block, sublayer))


@pytest.mark.parametrize(
    ("pattern", "name", "block", "sublayer"),
    [
        # no groups: the block is the name's first dotted number, the sublayer what follows it
        (r"encoder\.layer\.\d+\.\w+$", "bert.encoder.layer.11.output", 11, "output"),
        (r"h\.\d+\.\w+$", "gpt2.h.3.attn", 3, "attn"),  # "gpt2" is not a dotted number
        (r"blk\d+$", "blk12", 12, "blk12"),  # nothing follows the number: the name stays the sublayer
        (r".*", "block0.moe.expert.3", 0, "moe.expert.3"),  # the number after a block word, not the last
        (r"^(?:attn|mlp)$", "mlp", -1, "mlp"),  # no number at all
        # one unnamed group: the block when numeric, else the sublayer
        (r"layer\.(\d+)", "model.layer.3.mlp", 3, "mlp"),
        (r"\.(attn|mlp)$", "model.layers.4.mlp", 4, "mlp"),
        # named groups win; what they leave open is read from the name
        (r"(?P<sublayer>attn|mlp)$", "transformer.h.2.mlp", 2, "mlp"),
        (r"layers\.(?P<block>\d+)", "model.layers.7.self_attn", 7, "self_attn"),
    ],
)
def test_layer_pattern_without_named_groups(pattern: str, name: str, block: int, sublayer: str) -> None:
    assert NamePattern.compile(pattern, "layer").layer(name) == (block, sublayer)


def _synthetic_events(tmp_path: Path) -> Path:
    ev = [
        _x("user_annotation", "step0", 0, 100),
        _x("user_annotation", "model.layers.2.self_attn", 10, 40),
        _x("user_annotation", "model.layers.2.self_attn.q_proj", 12, 5),
        _x("user_annotation", "model.layers.2.mlp", 60, 30),
        _x("cuda_runtime", "cudaLaunchKernel", 13, 1, correlation=1),  # q_proj (innermost)
        _x("cuda_runtime", "cudaLaunchKernel", 20, 1, correlation=2),  # self_attn
        _x("cuda_driver", "cuLaunchKernel", 70, 1, correlation=3),  # mlp
        _x("cuda_runtime", "cudaLaunchKernel", 95, 1, correlation=4),  # step, no layer
        _x("cuda_runtime", "cudaLaunchKernel", 70, 1, tid=2, correlation=5),  # other thread: no ranges
        _x("kernel", "k1", 200, 3, pid=0, tid=7, correlation=1, stream=7),
        _x("kernel", "k2", 204, 3, pid=0, tid=7, correlation=2, stream=7),
        _x("gpu_memcpy", "Memcpy", 208, 2, pid=0, tid=7, correlation=3, stream=7),
        _x("kernel", "k4", 211, 2, pid=0, tid=7, correlation=4, stream=7),
        _x("kernel", "k5", 214, 2, pid=0, tid=7, correlation=5, stream=7),
        # a replayed kernel without a launch: falls back to the GPU-side range on its stream
        _x("gpu_user_annotation", "model.layers.3.mlp", 300, 50, pid=0, tid=7),
        _x("kernel", "graph_k", 310, 5, pid=0, tid=7, stream=7),
    ]
    return _write_trace(tmp_path / "syn.json", ev)


def test_attribution_innermost_thread_and_fallback(tmp_path: Path) -> None:
    k = attribute(read_kineto(_synthetic_events(tmp_path)).events).set_index("kernel")
    assert k.loc["k1", "layer"] == "model.layers.2.self_attn.q_proj"
    assert k.loc["k1", "sublayer"] == "self_attn.q_proj"
    assert k.loc["k2", "layer"] == "model.layers.2.self_attn" and k.loc["k2", "block"] == 2
    assert k.loc["Memcpy", "sublayer"] == "mlp" and k.loc["Memcpy", "category"] == "gpu_memcpy"
    assert pd.isna(k.loc["k4", "layer"]) and k.loc["k4", "step"] == 0
    assert pd.isna(k.loc["k5", "layer"]) and k.loc["k5", "step"] == -1
    assert k.loc["graph_k", "layer"] == "model.layers.3.mlp" and k.loc["graph_k", "step"] == -1
    assert k.loc["k1", "dur_ns"] == 3000 and k.loc["k1", "ts_ns"] == 200_000


def test_custom_patterns_and_unknown_layer_pattern(tmp_path: Path) -> None:
    events = read_kineto(_synthetic_events(tmp_path)).events
    k = attribute(events, layer_pattern=r"layers\.(?P<block>\d+)\.(?P<sublayer>mlp)$")
    assert set(k["layer"].dropna()) == {"model.layers.2.mlp", "model.layers.3.mlp"}
    with pytest.raises(TraceError) as info:
        attribute(events, layer_pattern=r"^decoder\.(\d+)\.(\w+)$", source="syn.json")
    msg = str(info.value)
    assert "syn.json" in msg and "range names seen" in msg and "model.layers.2.mlp" in msg and "step0" in msg
    with pytest.raises(TraceError, match="not a valid regular expression"):
        attribute(events, layer_pattern="([")

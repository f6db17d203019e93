"""Bundle format: round trip, atomic replacement, and one-line errors for every bad bundle."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from simulator.errors import TraceError
from traces import BUNDLE_VERSION, Bundle, read_bundle, write_bundle


def _tables(scale: int = 1) -> dict[str, pd.DataFrame]:
    kernels = pd.DataFrame(
        {
            "batch": np.array([1, 1, 8], dtype=np.int64),
            "step": np.array([0, 1, 0], dtype=np.int64),
            "layer": ["block0.attn", None, "block0.moe"],
            "block": np.array([0, -1, 0], dtype=np.int64),
            "sublayer": ["attn", None, "moe"],
            "kernel": ["k_a", "k_b", "k_c"],
            "ts_ns": np.array([1_795_702_254_093_887_543, 1_795_702_254_093_890_000, 3], dtype=np.int64),
            "dur_ns": np.array([2176, 100 * scale, 5], dtype=np.int64),
            "correlation": np.array([20, 21, 22], dtype=np.int64),
            "stream": np.array([7, 7, 7], dtype=np.int64),
            "category": ["kernel", "gpu_memcpy", "kernel"],
        }
    )
    runs = pd.DataFrame({"batch": [1, 8], "steps": [288, 96], "gpm_bytes_per_step": [9.9e7 * scale, np.nan]})
    routing = pd.DataFrame({"batch": [1], "step": [0], "layer": ["block0.moe"], "item": [3], "count": [2]})
    return {"kernels": kernels, "runs": runs, "routing": routing}


def _meta(**over: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "source": "profiled",
        "partial": True,
        "model": {"name": "moe", "config": {"blocks": 4}},
        "device": {"name": "NVIDIA H100 80GB HBM3", "peak_hbm_Bps": 3.35232e12, "peak_source": "test"},
        "workload": {"phase": "decode", "context": 1024, "dtype": "bfloat16"},
        "runs": [{"batch": 1, "steps": 288, "kineto": "raw/t.json.gz", "complete": True}],
        "missing": ["ncu: not run"],
        "provenance": {"kernels": "profiled"},
        "extra": {"note": "x"},
    }
    meta.update(over)
    return meta


def _one_line_error(fn: Any, *args: Any) -> str:
    with pytest.raises(TraceError) as info:
        fn(*args)
    msg = str(info.value)
    assert msg and "\n" not in msg
    return msg


def test_round_trip(tmp_path: Path) -> None:
    raw_json = b'{"traceEvents": [{"ph": "X", "name": "k", "ts": 1, "dur": 2}]}'
    plain = tmp_path / "p.json"
    plain.write_bytes(raw_json)
    tables = _tables()
    out = write_bundle(
        tmp_path / "b", _meta(), tables, {"t.json.gz": gzip.compress(raw_json), "p.json": plain}
    )
    b = read_bundle(out)
    assert isinstance(b, Bundle) and b.path == out
    assert b.meta["format"] == "memtraffic-bundle" and b.meta["version"] == BUNDLE_VERSION == 1
    assert b.meta["partial"] is True and b.partial
    assert b.meta["model"] == {"name": "moe", "config": {"blocks": 4}}
    assert b.meta["measured"] == {
        "kernels": True,
        "nvml": False,
        "gpm": True,
        "ncu": False,
        "routing": True,
        "opcount": False,
    }
    assert b.meta["created_utc"].endswith("Z")
    assert b.tables == ["kernels", "routing", "runs"]
    for name, df in tables.items():
        got = b.table(name)
        assert got is not None
        assert got.shape == df.shape and list(got.columns) == list(df.columns)
        for col in df.columns:
            a, e = got[col].tolist(), df[col].tolist()
            assert [None if pd.isna(x) else x for x in a] == [None if pd.isna(x) else x for x in e], col
    assert b.kernels is not None and b.kernels["ts_ns"].dtype == np.int64
    assert b.kernels["ts_ns"].iloc[0] == 1_795_702_254_093_887_543  # int64 survives exactly
    assert b.layers is None and b.nvml is None and b.ncu is None and b.table("nope") is None
    assert [p.name for p in b.raw_traces] == ["p.json.gz", "t.json.gz"]
    for p in b.raw_traces:
        assert gzip.decompress(p.read_bytes()) == raw_json
    assert read_bundle(out / "bundle.json").meta == b.meta  # the bundle.json path works too


def test_atomic_replacement(tmp_path: Path) -> None:
    path = tmp_path / "b"
    write_bundle(path, _meta(partial=True), _tables(1))
    write_bundle(path, _meta(partial=False), {"runs": _tables(2)["runs"]})
    b = read_bundle(path)
    assert b.partial is False and b.tables == ["runs"]  # old tables do not linger
    assert b.runs is not None and b.runs["gpm_bytes_per_step"].iloc[0] == pytest.approx(1.98e8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temporary or old copies left


@pytest.mark.parametrize(
    "bad",
    [
        {"tables": {"kernels": pd.DataFrame({"x": [1, "a", 2.5]})}},  # pyarrow cannot type the column
        {"tables": {"kernels": "not a frame"}},
        {"tables": {"Bad Name": pd.DataFrame({"x": [1]})}},
        {"raw": {"t.json.gz": Path("/nonexistent/trace.json.gz")}},
        {"meta": {"unknown_key": 1}},
        {"meta": {"extra": {"x": float("nan")}}},
    ],
)
def test_failing_write_leaves_old_bundle(tmp_path: Path, bad: dict[str, Any]) -> None:
    path = tmp_path / "b"
    write_bundle(path, _meta(), _tables(1))
    before = read_bundle(path)
    tables = {**_tables(3), **bad.get("tables", {})}
    meta = {**_meta(), **bad.get("meta", {})}
    _one_line_error(write_bundle, path, meta, tables, bad.get("raw", {}))
    after = read_bundle(path)
    assert after.meta == before.meta
    assert after.kernels is not None and after.kernels["dur_ns"].tolist() == [2176, 100, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_refuses_to_replace_foreign_directory(tmp_path: Path) -> None:
    foreign = tmp_path / "data"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    msg = _one_line_error(write_bundle, foreign, _meta(), _tables())
    assert "not a memtraffic bundle" in msg
    assert (foreign / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize(("version", "word"), [(2, "newer"), (0, "older")])
def test_version_mismatch(tmp_path: Path, version: int, word: str) -> None:
    path = write_bundle(tmp_path / "b", _meta(), _tables())
    meta = json.loads((path / "bundle.json").read_text())
    meta["version"] = version
    (path / "bundle.json").write_text(json.dumps(meta))
    msg = _one_line_error(read_bundle, path)
    assert f"version {version}" in msg and f"version {BUNDLE_VERSION}" in msg and word in msg


def test_truncated_parquet(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "b", _meta(), _tables())
    f = path / "kernels.parquet"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    msg = _one_line_error(read_bundle, path)
    assert "kernels.parquet" in msg and "parquet" in msg


def test_garbage_parquet(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "b", _meta(), _tables())
    (path / "runs.parquet").write_bytes(b"PAR1" + b"\x00" * 64 + b"PAR1")
    msg = _one_line_error(read_bundle, path)
    assert "runs.parquet" in msg


def test_missing_bundle_json_and_foreign_dirs(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "b", _meta(), _tables())
    (path / "bundle.json").unlink()
    assert "no bundle.json" in _one_line_error(read_bundle, path)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hello")
    assert "not a memtraffic bundle" in _one_line_error(read_bundle, foreign)

    other = tmp_path / "other"
    other.mkdir()
    (other / "bundle.json").write_text(json.dumps({"format": "something-else", "version": 1}))
    assert "something-else" in _one_line_error(read_bundle, other)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bundle.json").write_text('{"format": "memtraffic-bundle", "vers')
    assert "bundle.json" in _one_line_error(read_bundle, broken)

    assert "no such bundle directory" in _one_line_error(read_bundle, tmp_path / "missing")
    file = tmp_path / "file.txt"
    file.write_text("x")
    assert "not a bundle directory" in _one_line_error(read_bundle, file)

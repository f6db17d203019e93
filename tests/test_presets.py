"""Presets: KV cache sizes, the recorded H100 sample models, the derived OLMoE-227M baseline, and the
provenance of every hardware number."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from simulator.config import DTYPE_BYTES, HardwareConfig, ModelConfig, MoEConfig, Quantity, UltraMemV2Config
from simulator.loading import list_presets, load_hardware, load_model, preset_names

MODEL_PRESETS = [
    "olmoe-1b-7b",
    "olmoe-227m-1.2b",
    "mixtral-8x7b",
    "qwen3-30b-a3b",
    "qwen3-next-80b-a3b",
    "falcon-mamba-7b",
    "deepseek-v3",
    "deepseek-v2-lite",
    "llama-3.1-8b",
    "llama-3.1-405b",
    "qwen2.5-72b",
    "qwen1.5-moe-a2.7b",
    "h100-sample-moe",
    "h100-sample-umv2",
]
HARDWARE_PRESETS = [
    "h100-sxm",
    "h100-pcie",
    "h200",
    "a100-sxm-80gb",
    "a100-pcie-40gb",
    "b200",
    "gb200",
    "l40s",
    "mi300x",
    "mi325x",
    "rtx-4090",
]


def kv_bytes_per_token(model: ModelConfig, dtype: str = "bf16") -> float:
    """Whole-model KV cache per token: sum over blocks of repeat x cached elements x bytes."""
    per = sum(b.repeat * b.attention.kv_elements_per_token for b in model.blocks)
    return per * DTYPE_BYTES[dtype]


# ---------------------------------------------------------------------------------------- models


@pytest.mark.parametrize("name", MODEL_PRESETS)
def test_model_preset_loads_with_provenance(name: str) -> None:
    model = load_model(name)
    assert model.name == name
    assert model.description
    assert model.sources and all(s.source for s in model.sources)
    assert all(src.source for src in model.provenance.values())


@pytest.mark.parametrize(
    "name,expected",
    # cost-reference.md 10.1 and 15.9 (published 70.272 / 516.096 / 327.68 KB)
    [("deepseek-v3", 70_272), ("llama-3.1-405b", 516_096), ("qwen2.5-72b", 327_680)],
)
def test_kv_bytes_per_token_exact(name: str, expected: int) -> None:
    assert kv_bytes_per_token(load_model(name)) == expected


@pytest.mark.parametrize(
    "name,expected",
    # cost-reference.md 10.1 examples: 128, 128, 192, 96 KiB, 27 x 576 x 2 B, 60 KiB (UltraMemV2-227M)
    [
        ("mixtral-8x7b", 131_072),
        ("olmoe-1b-7b", 131_072),
        ("qwen1.5-moe-a2.7b", 196_608),
        ("qwen3-30b-a3b", 98_304),
        ("deepseek-v2-lite", 31_104),
        ("olmoe-227m-1.2b", 61_440),
    ],
)
def test_kv_bytes_per_token_other_presets(name: str, expected: int) -> None:
    assert kv_bytes_per_token(load_model(name)) == expected


def test_every_required_preset_is_listed() -> None:
    assert set(MODEL_PRESETS) <= set(preset_names("models"))
    assert set(HARDWARE_PRESETS) <= set(preset_names("hardware"))
    rows = {row["name"]: row for row in list_presets("models")}
    assert rows["deepseek-v3"]["description"] and "code" in rows["deepseek-v3"]["source_tags"]


# ------------------------------------------------------------------- the recorded H100 sample models

# shared/data/h100-decode-2026-11-26/meta.json; the file is read too when it is reachable
META_PARAMS = {"moe_params": 312_606_720, "umv2_params": 165_847_056}


def _meta() -> dict[str, Any] | None:
    candidates = [
        os.environ.get("MEMTRAFFIC_SHARED", ""),
        str(Path(__file__).resolve().parents[1] / "shared"),
        "/work/shared",
    ]
    for root in candidates:
        path = Path(root) / "data" / "h100-decode-2026-11-26" / "meta.json" if root else None
        if path is not None and path.is_file():
            return json.loads(path.read_text())
    return None


def _gqa_params(d: int, n_heads: int, n_kv: int, head: int) -> int:
    return d * n_heads * head + 2 * d * n_kv * head + n_heads * head * d


def test_h100_sample_moe_params_by_hand() -> None:
    m = load_model("h100-sample-moe")
    assert m.embeddings is False and m.n_layers == 4
    a, moe = m.blocks[0].attention, m.blocks[0].ffn[0]
    assert isinstance(moe, MoEConfig)
    attn = _gqa_params(m.d_model, a.n_heads, a.kv_heads, a.head_dim or 0)
    experts = moe.n_experts * 3 * m.d_model * moe.expert_ffn
    router = m.d_model * moe.n_experts
    # the recorded count has no norm weights (RMSNorm without affine parameters)
    assert m.n_layers * (attn + experts + router) == META_PARAMS["moe_params"]
    assert (attn, experts, router) == (2_621_440, 75_497_472, 32_768)


def test_h100_sample_umv2_params_by_hand() -> None:
    m = load_model("h100-sample-umv2")
    block = m.blocks[0]
    assert block.parallel_ffn and m.embeddings is False
    a = block.attention
    ffn, mem = block.ffn
    assert isinstance(mem, UltraMemV2Config) and mem.shared_table is None
    d, r, c, dk = m.d_model, mem.rank, mem.cores, mem.key_dim
    attn = _gqa_params(d, a.n_heads, a.kv_heads, a.head_dim or 0)
    dense = 3 * d * ffn.d_ff  # type: ignore[union-attr]
    w_q = 2 * r * d * dk  # row/col query per Tucker rank
    keys = 2 * mem.knum * dk * r
    cores = c * r * r
    w_pre = d * mem.pre_value_dim
    w_o = mem.value_dim * d
    rows = mem.knum**2 * (mem.value_dim + mem.pre_value_dim)  # a private table per block
    per_block = attn + dense + w_q + keys + cores + w_pre + w_o + rows
    assert (w_q, keys, cores, rows) == (393_216, 115_200, 4, 31_680_000)
    assert m.n_layers * per_block == META_PARAMS["umv2_params"]


def test_h100_sample_presets_match_meta_json() -> None:
    meta = _meta()
    if meta is None:
        pytest.skip("shared/data/h100-decode-2026-11-26/meta.json not reachable")
    for key, value in META_PARAMS.items():
        assert meta[key] == value
    common = meta["models"]["common"]
    for name in ("h100-sample-moe", "h100-sample-umv2"):
        m = load_model(name)
        a = m.blocks[0].attention
        assert (m.n_layers, m.d_model) == (common["blocks"], common["d_model"])
        assert (a.kind, a.n_heads, a.kv_heads, a.head_dim) == (
            common["attention"]["kind"],
            common["attention"]["heads"],
            common["attention"]["kv_heads"],
            common["attention"]["head_dim"],
        )
    moe = load_model("h100-sample-moe").blocks[0].ffn[0]
    spec = meta["models"]["moe"]["ffn"]
    assert isinstance(moe, MoEConfig)
    assert (moe.n_experts, moe.top_k, moe.expert_ffn, moe.activation) == (
        spec["experts"],
        spec["top_k"],
        spec["expert_ffn"],
        spec["activation"],
    )
    ffn, mem = load_model("h100-sample-umv2").blocks[0].ffn
    spec = meta["models"]["umv2"]["memory"]
    assert ffn.d_ff == meta["models"]["umv2"]["ffn"]["d_ff"]  # type: ignore[union-attr]
    assert isinstance(mem, UltraMemV2Config)
    assert (mem.knum, mem.knum**2, mem.key_dim, mem.rank, mem.heads) == (
        spec["sub_keys"],
        spec["rows"],
        spec["key_dim"],
        spec["tucker_rank"],
        spec["heads"],
    )
    assert (mem.top_m, mem.m_rc, mem.value_dim, mem.pre_value_dim) == (
        spec["top_m"],
        spec["row_col_top"],
        spec["value_dim"],
        spec["pre_value_dim"],
    )


def test_olmoe_227m_derivation_matches_table_10() -> None:
    m = load_model("olmoe-227m-1.2b")
    d = m.d_model
    moe = m.blocks[0].ffn[0]
    assert isinstance(moe, MoEConfig)
    attn = 4 * d * d
    router = d * moe.n_experts
    total_wo_embedding = m.n_layers * (attn + router + moe.n_experts * 3 * d * moe.expert_ffn)
    active = m.n_layers * (attn + router + moe.top_k * 3 * d * moe.expert_ffn) + m.vocab_size * d
    assert m.tie_embeddings
    # UltraMemV2 Table 10: 1.18 B total (embedding excluded), 227 M active (tied embedding included)
    assert round(total_wo_embedding / 1e9, 2) == 1.18
    assert abs(active / 227e6 - 1) < 0.01
    assert "blocks.0.ffn.0.expert_ffn" in m.provenance


# -------------------------------------------------------------------------------------- hardware


def quantities(hw: HardwareConfig) -> dict[str, Quantity]:
    out: dict[str, Quantity] = {f"peak_flops.{k}": v for k, v in hw.peak_flops.items()}
    for field in (
        "hbm_bandwidth",
        "hbm_capacity",
        "l2_bytes",
        "interconnect_bandwidth",
        "sustained_bandwidth_fraction",
    ):
        value = getattr(hw, field)
        if value is not None:
            out[field] = value
    return out


@pytest.mark.parametrize("name", HARDWARE_PRESETS)
def test_every_hardware_number_has_a_source(name: str) -> None:
    hw = load_hardware(name)
    assert hw.name == name and hw.description
    for field, q in quantities(hw).items():
        assert q.source.strip(), f"{name}.{field} has no source"
    assert {"bf16", "fp16", "fp32", "tf32", "int8"} <= set(hw.peak_flops)
    assert hw.interconnect_bandwidth is not None


@pytest.mark.parametrize("name", HARDWARE_PRESETS)
def test_hardware_numbers_are_dense_and_ordered(name: str) -> None:
    hw = load_hardware(name)
    f = {k: v.value for k, v in hw.peak_flops.items()}
    assert f["tf32"] <= f["bf16"] == f["fp16"]
    if "fp8" in f:
        assert f["fp8"] >= f["bf16"]
    assert f["fp32"] <= f["bf16"]
    assert 1e11 < hw.hbm_bandwidth.value < 2e13
    assert 1e10 < hw.hbm_capacity.value < 1e12
    assert 1e6 < hw.l2_bytes.value < 1e9


def test_h100_sxm_matches_cost_reference() -> None:
    hw = load_hardware("h100-sxm")
    bw, bf16 = hw.hbm_bandwidth, hw.peak_flops["bf16"]
    assert (bw.value, bw.tag) == (3.35e12, "datasheet")
    assert (bf16.value, bf16.tag) == (989.4e12, "datasheet")
    assert abs(bf16.value / bw.value - 295) < 1  # cost-reference section 1 ridge point
    frac = hw.sustained_bandwidth_fraction
    assert frac is not None and (frac.value, frac.tag) == (0.90, "measured")
    assert "3.02 TB/s" in frac.source and "measured-on-h100.md" in frac.source
    assert "3.352e12" in bw.source  # the NVML-derived peak is noted beside the datasheet number


@pytest.mark.parametrize("name,ridge", [("a100-sxm-80gb", 153), ("h200", 206)])
def test_other_ridge_points_match_cost_reference(name: str, ridge: float) -> None:
    hw = load_hardware(name)
    assert abs(hw.flops_for("bf16") / hw.hbm_bandwidth.value - ridge) < 1


def test_a100_has_no_fp8_and_falls_back() -> None:
    hw = load_hardware("a100-sxm-80gb")
    assert "fp8" not in hw.peak_flops
    assert hw.flops_for("fp8") == hw.peak_flops["fp16"].value

"""Spec resolution (preset / own file / HF config.json), overrides, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import pytest
import yaml

from simulator.config import DenseFFNConfig, MoEConfig, UltraMemV2Config
from simulator.errors import ConfigError, PresetNotFoundError
from simulator.loading import list_presets, load_hardware, load_model

HF_DIR = Path(__file__).parent / "data" / "hf"

SMALL_MOE_YAML = """\
name: x
description: a tiny MoE for tests
d_model: 512
vocab_size: 1000
blocks:
  - repeat: 2
    attention: {kind: gqa, n_heads: 8, n_kv_heads: 2, head_dim: 64}
    ffn:
      - {kind: moe, n_experts: 8, top_k: 2, expert_ffn: 256}
"""


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert text and "\n" not in text and text.strip() == text
    return text


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------------------- resolving


@pytest.mark.parametrize("spec", ["deepseek-v3", "DeepSeek_V3", "  deepseek_v3 ", "DEEPSEEK-V3"])
def test_preset_names_are_case_and_separator_insensitive(spec: str) -> None:
    assert load_model(spec).name == "deepseek-v3"


def test_hardware_preset_lookup() -> None:
    assert load_hardware("H100_SXM").name == "h100-sxm"


def test_own_yaml_and_json_files(tmp_path: Path) -> None:
    from_yaml = load_model(write(tmp_path, "m.yaml", SMALL_MOE_YAML))
    from_json = load_model(str(write(tmp_path, "m.json", json.dumps(yaml.safe_load(SMALL_MOE_YAML)))))
    assert from_yaml == from_json
    assert from_yaml.n_layers == 2


def test_missing_name_defaults_to_file_stem(tmp_path: Path) -> None:
    text = SMALL_MOE_YAML.replace("name: x\n", "")
    assert load_model(write(tmp_path, "tiny-moe.yaml", text)).name == "tiny-moe"


def test_hf_config_file_and_directory_are_detected(tmp_path: Path) -> None:
    by_file = load_model(HF_DIR / "Mixtral-8x7B.json")
    assert by_file.blocks == load_model("mixtral-8x7b").blocks
    model_dir = tmp_path / "Mixtral-8x7B-v0.1"
    model_dir.mkdir()
    shutil.copy(HF_DIR / "Mixtral-8x7B.json", model_dir / "config.json")
    by_dir = load_model(str(model_dir))
    assert by_dir.name == "Mixtral-8x7B-v0.1" and by_dir.blocks == by_file.blocks


def test_yaml_12_floats_are_numbers(tmp_path: Path) -> None:
    # PyYAML alone reads 3.35e12 (no sign in the exponent) as a string
    text = (resources.files("simulator") / "presets" / "hardware" / "h100-sxm.yaml").read_text()
    hw = load_hardware(write(tmp_path, "hw.yaml", text.replace("3.35e12", "3e12")))
    assert hw.hbm_bandwidth.value == 3e12


def test_list_presets_rows() -> None:
    models = {row["name"]: row for row in list_presets("models")}
    hardware = {row["name"]: row for row in list_presets("hardware")}
    assert {"deepseek-v3", "h100-sample-umv2"} <= set(models)
    assert "measured" in hardware["h100-sxm"]["source_tags"]
    assert all(set(row) == {"name", "description", "source_tags"} for row in models.values())


# ----------------------------------------------------------------------------------------- overrides


def test_dotted_override() -> None:
    m = load_model("deepseek-v3", ["blocks.1.ffn.0.top_k=16", "d_model=4096"])
    moe = m.blocks[1].ffn[0]
    assert isinstance(moe, MoEConfig) and moe.top_k == 16 and m.d_model == 4096


def test_bare_override_applies_to_every_layer_that_has_the_field() -> None:
    m = load_model("deepseek-v3", ["top_k=4"])
    dense, moe = m.blocks[0].ffn[0], m.blocks[1].ffn[0]
    assert isinstance(dense, DenseFFNConfig) and isinstance(moe, MoEConfig) and moe.top_k == 4
    umv2 = load_model("h100-sample-umv2", ["knum=1024", "shared_table=values"]).blocks[0].ffn[1]
    assert isinstance(umv2, UltraMemV2Config) and (umv2.knum, umv2.shared_table) == (1024, "values")


def test_bare_override_falls_back_to_attention_and_blocks() -> None:
    m = load_model("llama-3.1-8b", ["n_kv_heads=4", "qkv_bias=true", "repeat=2"])
    a = m.blocks[0].attention
    assert (a.n_kv_heads, a.qkv_bias, m.n_layers) == (4, True, 2)


def test_override_values_are_yaml_scalars() -> None:
    m = load_model("h100-sample-umv2", ["blocks.0.ffn.1.shared_table=null", "blocks.0.parallel_ffn=false"])
    assert m.blocks[0].ffn[1].shared_table is None  # type: ignore[union-attr]
    assert m.blocks[0].parallel_ffn is False


def test_override_on_hf_config_and_hardware() -> None:
    m = load_model(HF_DIR / "OLMoE-1B-7B.json", ["top_k=2"])
    assert m.blocks[0].ffn[0].top_k == 2  # type: ignore[union-attr]
    hw = load_hardware("h100-sxm", ["hbm_bandwidth.value=3.0e12", "peak_flops.bf16.value=1e15"])
    assert (hw.hbm_bandwidth.value, hw.peak_flops["bf16"].value) == (3e12, 1e15)


def test_override_default_field_not_written_in_preset() -> None:
    # qkv_bias is absent from the llama preset file but is a field of AttentionConfig
    assert load_model("llama-3.1-8b", ["blocks.0.attention.qkv_bias=true"]).blocks[0].attention.qkv_bias


@pytest.mark.parametrize(
    "override,needle",
    [
        ("no_such_field=3", "no_such_field"),
        ("blocks.0.ffn.0.no_such=1", "no field 'no_such'"),
        ("blocks.7.ffn.0.top_k=1", "no item '7'"),
        ("top_k", "key=value"),
        ("blocks.0.attention.n_heads.x=1", "not a mapping"),
    ],
)
def test_bad_override_is_one_line(override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_model("mixtral-8x7b", [override])
    text = one_line(exc)
    assert needle in text and "mixtral-8x7b" in text


def test_bad_hardware_override_is_one_line() -> None:
    with pytest.raises(ConfigError) as exc:
        load_hardware("h100-sxm", ["hbm_bandwith.value=1"])
    assert "hbm_bandwith" in one_line(exc)


# ----------------------------------------------------------------------------------------- bad input


def test_top_k_above_experts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_model(write(tmp_path, "m.yaml", SMALL_MOE_YAML.replace("top_k: 2", "top_k: 9")))
    text = one_line(exc)
    assert text.startswith("model x: blocks.0.ffn.0") and "top_k=9 exceeds n_experts=8" in text


def test_top_k_above_experts_through_override() -> None:
    with pytest.raises(ConfigError) as exc:
        load_model("deepseek-v3", ["top_k=300"])
    assert "model deepseek-v3: blocks.1.ffn.0" in one_line(exc) and "top_k=300 exceeds n_experts=256" in str(
        exc.value
    )


def test_negative_size(tmp_path: Path) -> None:
    text = SMALL_MOE_YAML.replace("expert_ffn: 256", "expert_ffn: -256")
    with pytest.raises(ConfigError) as exc:
        load_model(write(tmp_path, "m.yaml", text))
    assert "model x: blocks.0.ffn.0.expert_ffn: Input should be greater than 0" in one_line(exc)


def test_negative_hardware_number(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_hardware("h100-sxm", ["hbm_bandwidth.value=-1"])
    assert "hardware h100-sxm: hbm_bandwidth.value" in one_line(exc)


def test_unknown_preset_suggests_nearest() -> None:
    with pytest.raises(PresetNotFoundError) as exc:
        load_model("llama-3.1-8")
    text = one_line(exc)
    assert "'llama-3.1-8'" in text and "llama-3.1-8b" in text
    assert text.count(",") <= 2  # at most three names
    with pytest.raises(PresetNotFoundError) as exc:
        load_hardware("h100")
    assert "h100-sxm" in one_line(exc)


def test_malformed_json_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.json", '{\n  "name": "x",\n  "d_model": 512,,\n}')
    with pytest.raises(ConfigError) as exc:
        load_model(path)
    text = one_line(exc)
    assert str(path) in text and "line 3" in text and "column" in text


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "name: x\nblocks:\n  - repeat: 2\n   attention: [\n")
    with pytest.raises(ConfigError) as exc:
        load_model(path)
    text = one_line(exc)
    assert str(path) in text and "line 4" in text and "invalid YAML" in text


def test_duplicate_keys_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_model(write(tmp_path, "dup.yaml", SMALL_MOE_YAML + "d_model: 1024\n"))
    assert "duplicate key 'd_model'" in one_line(exc)
    with pytest.raises(ConfigError) as exc:
        load_model(write(tmp_path, "dup.json", '{"name": "a", "name": "b"}'))
    assert "duplicate key 'name'" in one_line(exc)


def test_hf_unsupported_model_type(tmp_path: Path) -> None:
    cfg = json.loads((HF_DIR / "Llama-3.1-8B.json").read_text())
    cfg["model_type"] = "zamba2"  # Mamba-2 layers with shared attention blocks: not modelled
    cfg["architectures"] = ["Zamba2ForCausalLM"]
    with pytest.raises(ConfigError) as exc:
        load_model(write(tmp_path, "config.json", json.dumps(cfg)))
    text = one_line(exc)
    assert "unsupported model_type 'zamba2'" in text and "llama" in text


@pytest.mark.parametrize("text,needle", [("[1, 2]", "expected a mapping"), ("", "expected a mapping")])
def test_non_mapping_file(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_model(write(tmp_path, "m.yaml", text))
    assert needle in one_line(exc)


def test_missing_file_and_unknown_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_model(tmp_path / "nope.yaml")
    assert "no such file" in one_line(exc)
    with pytest.raises(ConfigError) as exc:
        load_model(write(tmp_path, "m.yaml", SMALL_MOE_YAML + "layers: 3\n"))
    assert "model x: layers: Extra inputs are not permitted" in one_line(exc)


def test_overrides_do_not_leak_into_later_loads() -> None:
    # parsed presets are cached; each load must get its own copy
    assert load_model("deepseek-v3", ["top_k=4"]).blocks[1].ffn[0].top_k == 4  # type: ignore[union-attr]
    assert load_model("deepseek-v3").blocks[1].ffn[0].top_k == 8  # type: ignore[union-attr]

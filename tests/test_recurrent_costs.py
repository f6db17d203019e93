"""Recurrent token mixers (Mamba, Mamba-2, Gated DeltaNet) in the simulator, against hand counts from the
weight shapes of the transformers modeling files and the state tensors a serving engine allocates."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from simulator.config import (
    AttentionConfig,
    BlockConfig,
    DenseFFNConfig,
    GatedDeltaNetConfig,
    Mamba2Config,
    MambaConfig,
    ModelConfig,
    MoEConfig,
    Workload,
)
from simulator.errors import ConfigError
from simulator.loading import load_hardware
from simulator.sweep import simulate
from tests.test_cli import assert_one_line_error, run

H100 = load_hardware("h100-sxm")

# Mamba-Codestral-7B-like Mamba-2 mixer: d 4096, 128 heads of 64, state 128, 8 groups, conv 4 with bias
CODESTRAL = Mamba2Config(n_heads=128, head_dim=64, d_state=128, n_groups=8, d_conv=4)
# Qwen3-Next-80B-A3B's Gated DeltaNet: 16 key heads, 32 value heads, 128 x 128, conv 4 without bias
QWEN3_NEXT_GDN = GatedDeltaNetConfig(n_k_heads=16, n_v_heads=32, head_k_dim=128, head_v_dim=128)
# Falcon-Mamba-7B-like Mamba-1 mixer: d 4096, d_inner 8192, state 16, dt rank 256, conv 4 with bias
FALCON = MambaConfig(d_inner=8192, d_state=16, dt_rank=256, d_conv=4)


def stack(mixer: object, d: int = 4096, layers: int = 2, ffn: list | None = None) -> ModelConfig:
    return ModelConfig(
        name="m",
        d_model=d,
        embeddings=False,
        blocks=[BlockConfig(repeat=layers, attention=mixer, ffn=ffn or [])],  # type: ignore[arg-type]
    )


def layer_row(model: ModelConfig, **workload: object) -> pd.Series:
    df = simulate(model, H100, Workload(**workload), per_layer=True)  # type: ignore[arg-type]
    return df[df["block"] == 0].iloc[0]


def test_mamba2_params_from_the_weight_shapes() -> None:
    # in_proj 4096 -> z 8192 + xBC (8192 + 2*8*128) + dt 128; conv1d 10240 x 4 + bias; A_log, D, dt_bias;
    # out_proj 8192 -> 4096
    in_proj = 4096 * (8192 + 10240 + 128)
    conv = 10240 * 4 + 10240
    expected = in_proj + conv + 3 * 128 + 8192 * 4096
    assert layer_row(stack(CODESTRAL))["params"] == expected


def test_gated_deltanet_params_from_the_weight_shapes() -> None:
    # in_proj_qkvz 2048 -> q 2048 + k 2048 + v 4096 + z 4096; in_proj_ba 2048 -> 64; conv 8192 x 4 (no bias);
    # A_log, dt_bias (32 each); out_proj 4096 -> 2048
    expected = 2048 * 12288 + 2048 * 64 + 8192 * 4 + 64 + 4096 * 2048
    assert layer_row(stack(QWEN3_NEXT_GDN, d=2048))["params"] == expected


def test_mamba1_params_from_the_weight_shapes() -> None:
    # in_proj 4096 -> 2 x 8192; conv 8192 x 4 + bias; x_proj 8192 -> 256 + 32; dt_proj 256 -> 8192 + bias;
    # A_log 8192 x 16; D 8192; out_proj 8192 -> 4096
    expected = 4096 * 16384 + 8192 * 5 + 8192 * 288 + 256 * 8192 + 8192 + 8192 * 16 + 8192 + 8192 * 4096
    assert layer_row(stack(FALCON))["params"] == expected


@pytest.mark.parametrize(
    ("mixer", "d", "state_elements", "conv_channels"),
    [
        (CODESTRAL, 4096, 128 * 64 * 128, 8192 + 2 * 8 * 128),
        (QWEN3_NEXT_GDN, 2048, 32 * 128 * 128, 2 * 16 * 128 + 32 * 128),
        (FALCON, 4096, 8192 * 16, 8192),
    ],
)
def test_decode_reads_and_rewrites_one_state_per_sequence_at_any_context(
    mixer: object, d: int, state_elements: int, conv_channels: int
) -> None:
    # the engine's per-sequence cache: the recurrent state plus the convolution's last 3 inputs, bf16
    per_sequence = (state_elements + conv_channels * 3) * 2
    model = stack(mixer, d=d)
    for context in (128, 131072):
        row = layer_row(model, batch=[8], context=[context])
        assert row["kv_read_bytes"] == row["kv_write_bytes"] == 8 * per_sequence
        # held once, not once read and once written: memory = weights + state + peak activations
        held = row["memory_bytes"] - row["act_peak_bytes"] - row["params"] * 2
        assert held == pytest.approx(8 * per_sequence)


def test_state_dtype_and_tensor_parallel_split() -> None:
    fp32 = QWEN3_NEXT_GDN.model_copy(update={"state_dtype": "fp32"})
    row = layer_row(stack(fp32, d=2048), batch=[1], context=[4096], tp=2)
    # fp32 recurrent state, bf16 conv state; half the heads on each of 2 ranks
    assert row["kv_read_bytes"] == (32 * 128 * 128 * 4 + 8192 * 3 * 2) / 2
    # the state follows the model dtype, not an fp8 KV cache (vLLM's mamba cache dtypes "auto")
    fp8_kv = layer_row(stack(QWEN3_NEXT_GDN, d=2048), batch=[1], context=[4096], kv_dtype="fp8")
    assert fp8_kv["kv_read_bytes"] == (32 * 128 * 128 + 8192 * 3) * 2
    with pytest.raises(ConfigError, match="does not divide the 16 Gated DeltaNet key heads"):
        simulate(stack(QWEN3_NEXT_GDN, d=2048), H100, Workload(tp=32))


def test_mamba2_groups_fewer_than_ranks_are_replicated() -> None:
    one_group = Mamba2Config(n_heads=64, head_dim=64, d_state=128, n_groups=1)
    whole = layer_row(stack(one_group, d=2048), tp=1)["params"]
    # B and C of the one group (2 x 128 columns of in_proj, their conv channels and conv biases) on both
    replicated = 2 * 128 * (2048 + 4 + 1)
    row = layer_row(stack(one_group, d=2048), tp=2)
    assert row["weight_bytes_ideal"] == pytest.approx(((whole - replicated) / 2 + replicated) * 2)


def test_one_mamba2_group_is_widened_to_every_rank_and_uneven_groups_are_refused() -> None:
    # vLLM keeps a lone group's B and C whole on each rank: one rank's conv state is
    # (d_inner / tp + 2 N) x (d_conv - 1), its recurrent state a quarter of the heads' (Granite-4.0-H-Tiny)
    granite = Mamba2Config(n_heads=48, head_dim=64, d_state=128, n_groups=1)
    row = layer_row(stack(granite, d=1536), batch=[1], context=[100], tp=4)
    assert row["kv_read_bytes"] == (48 * 64 * 128 / 4 + (3072 / 4 + 2 * 128) * 3) * 2 == 202_752
    # 8 groups split over 8 ranks; over 16 they cannot be (vLLM refuses it too)
    assert layer_row(stack(CODESTRAL), tp=8)["kv_read_bytes"] == (128 * 64 * 128 / 8 + (1024 + 256) * 3) * 2
    with pytest.raises(ConfigError, match="does not divide the 8 Mamba-2 groups"):
        simulate(stack(CODESTRAL), H100, Workload(tp=16))


def test_mamba1_all_reduces_x_proj_under_tensor_parallelism() -> None:
    # row-parallel out_proj (d 4096) and x_proj (dt rank 256 + 2 x 16): a ring all-reduce moves
    # 2 (tp - 1) / tp of each per token, bf16
    row = layer_row(stack(FALCON), batch=[64], context=[100], tp=2)
    assert row["comm_bytes"] == 64 * (4096 + 288) * 2


def test_prefill_writes_the_final_state_and_reads_it_after_a_prefix() -> None:
    model = stack(CODESTRAL)
    per_sequence = (128 * 64 * 128 + 10240 * 3) * 2
    fresh = layer_row(model, phase="prefill", batch=[4], context=[1000])
    assert fresh["kv_read_bytes"] == 0
    assert fresh["kv_write_bytes"] == 4 * per_sequence
    later = layer_row(model, phase="prefill", batch=[4], context=[1000], prefix=3000)
    assert later["kv_read_bytes"] == later["kv_write_bytes"] == 4 * per_sequence


def test_decode_flops_by_hand() -> None:
    # Gated DeltaNet, one token: 2 x the projection weights, the depthwise conv (2 x 8192 x 4), the
    # recurrence (7 per state element) and the per-channel work (6 per value, 4 per key channel)
    row = layer_row(stack(QWEN3_NEXT_GDN, d=2048), batch=[1], context=[4096])
    projections = 2048 * 12288 + 2048 * 64 + 4096 * 2048
    expected = 2 * projections + 2 * 8192 * 4 + 7 * 32 * 128 * 128 + 6 * 4096 + 4 * 2048
    assert row["flops"] == expected


def test_hybrid_kv_cache_grows_only_in_the_attention_layers() -> None:
    # Qwen3-Next-80B-A3B's layout: 3 Gated DeltaNet layers, then one gated full-attention layer (16 q, 2 KV
    # heads of 256), 12 times; MoE of 512 experts top-10 of width 512 plus a shared expert of 512
    moe = MoEConfig(n_experts=512, top_k=10, expert_ffn=512, n_shared_experts=1, shared_ffn=512)
    attn = AttentionConfig(kind="gqa", n_heads=16, n_kv_heads=2, head_dim=256, output_gate=True)
    model = ModelConfig(
        name="qwen3-next-like",
        d_model=2048,
        vocab_size=151936,
        blocks=[
            BlockConfig(repeat=3, attention=QWEN3_NEXT_GDN, ffn=[moe]),
            BlockConfig(repeat=1, attention=attn, ffn=[moe]),
        ]
        * 12,
    )
    state = (32 * 128 * 128 + 8192 * 3) * 2
    for context in (4096, 262144):
        total = simulate(model, H100, Workload(batch=[1], context=[context])).iloc[0]
        assert total["kv_read_bytes"] == 36 * state + 12 * context * 2 * 2 * 256 * 2


def test_gated_attention_adds_its_gate_projection() -> None:
    plain = AttentionConfig(kind="gqa", n_heads=16, n_kv_heads=2, head_dim=256)
    gated = plain.model_copy(update={"output_gate": True})
    extra = layer_row(stack(gated, d=2048))["params"] - layer_row(stack(plain, d=2048))["params"]
    assert extra == 2048 * 16 * 256


def test_ffn_only_and_mixer_only_blocks() -> None:
    # a Nemotron-H-like run of layers: Mamba-2, MLP alone, attention alone
    model = ModelConfig(
        name="hybrid",
        d_model=1024,
        embeddings=False,
        blocks=[
            BlockConfig(attention=Mamba2Config(n_heads=16, head_dim=64, d_state=64, n_groups=2)),
            BlockConfig(ffn=[DenseFFNConfig(d_ff=4096, activation="relu")]),
            BlockConfig(attention=AttentionConfig(kind="gqa", n_heads=8, n_kv_heads=2, head_dim=128)),
        ],
    )
    df = simulate(model, H100, Workload(), per_layer=True)
    assert list(df["layer"]) == ["block0.mamba", "block1.ffn", "block2.attn", "total"]
    with pytest.raises(ValidationError, match="needs a token mixer"):
        BlockConfig()


def test_invalid_shapes_are_refused() -> None:
    with pytest.raises(ValidationError, match="not a multiple of n_groups"):
        Mamba2Config(n_heads=10, head_dim=64, n_groups=4)
    with pytest.raises(ValidationError, match="not a multiple of n_k_heads"):
        GatedDeltaNetConfig(n_k_heads=16, n_v_heads=24, head_k_dim=128, head_v_dim=128)


@st.composite
def recurrent_mixers(draw: st.DrawFn) -> object:
    kind = draw(st.sampled_from(["mamba", "mamba2", "gated_deltanet"]))
    d_conv = draw(st.integers(1, 5))
    dtype = draw(st.sampled_from([None, "fp32", "bf16"]))
    if kind == "mamba":
        return MambaConfig(
            d_inner=draw(st.integers(8, 512)),
            d_state=draw(st.integers(1, 64)),
            dt_rank=draw(st.integers(1, 64)),
            d_conv=d_conv,
            proj_bias=draw(st.booleans()),
            state_dtype=dtype,
        )
    if kind == "mamba2":
        groups = draw(st.integers(1, 4))
        return Mamba2Config(
            n_heads=groups * draw(st.integers(1, 8)),
            head_dim=draw(st.integers(1, 64)),
            d_state=draw(st.integers(1, 128)),
            n_groups=groups,
            chunk_size=draw(st.integers(1, 300)),
            d_conv=d_conv,
            state_dtype=dtype,
        )
    k_heads = draw(st.integers(1, 8))
    return GatedDeltaNetConfig(
        n_k_heads=k_heads,
        n_v_heads=k_heads * draw(st.integers(1, 3)),
        head_k_dim=draw(st.integers(1, 128)),
        head_v_dim=draw(st.integers(1, 128)),
        chunk_size=draw(st.integers(1, 128)),
        d_conv=d_conv,
        state_dtype=dtype,
    )


@settings(max_examples=60, deadline=None)
@given(
    mixer=recurrent_mixers(),
    d=st.sampled_from([64, 256, 1024]),
    batch=st.lists(st.integers(1, 3000), min_size=2, max_size=5, unique=True),
    context=st.integers(1, 5000),
    phase=st.sampled_from(["decode", "prefill"]),
)
def test_recurrent_counts_grow_with_batch_and_not_with_decode_context(
    mixer: object, d: int, batch: list[int], context: int, phase: str
) -> None:
    model = ModelConfig(
        name="p",
        d_model=d,
        vocab_size=1000,
        blocks=[BlockConfig(attention=mixer, ffn=[DenseFFNConfig(d_ff=4 * d)])],  # type: ignore[arg-type]
    )
    wl = Workload(phase=phase, batch=sorted(batch), context=[context])  # type: ignore[arg-type]
    df = simulate(model, H100, wl, per_layer=True)
    layer = df[df["layer"] == "block0.mamba"]
    if layer.empty:
        layer = df[df["layer"] == "block0.linear_attn"]
    layer = layer.sort_values("batch")
    for col in ("bytes_ideal", "bytes_naive", "flops", "kv_write_bytes", "memory_bytes"):
        assert np.all(np.diff(layer[col].to_numpy()) >= -1e-9 * layer[col].abs().max()), col
    assert np.all(layer["bytes_ideal"] <= layer["bytes_naive"] * (1 + 1e-12))
    assert np.all(layer["kv_write_bytes"] > 0)
    for col in ("flops", "bytes_ideal", "kv_read_bytes", "memory_bytes"):
        total = df[df["layer"] == "total"].sort_values("batch")[col].to_numpy()
        parts = df[df["layer"] != "total"].groupby("batch")[col].sum().sort_index().to_numpy()
        if col != "memory_bytes":  # memory holds the largest layer's activations, not their sum
            assert parts == pytest.approx(total, rel=1e-12)
    if phase == "decode":  # the state is the same at any context
        longer = simulate(model, H100, wl.model_copy(update={"context": [context * 7 + 3]}), per_layer=True)
        mine = df[df["layer"] == layer["layer"].iloc[0]]
        theirs = longer[longer["layer"] == layer["layer"].iloc[0]]
        for col in ("kv_read_bytes", "flops", "bytes_ideal"):
            assert mine[col].to_numpy() == pytest.approx(theirs[col].to_numpy(), rel=1e-12)


MAMBA2_YAML = """
name: mamba2-small
d_model: 1024
vocab_size: 32000
blocks:
  - repeat: 4
    attention: {kind: mamba2, n_heads: 32, head_dim: 64, d_state: 64, n_groups: 2}
"""


HYBRID_TAIL = """  - attention: {kind: gqa, n_heads: 8, n_kv_heads: 2, head_dim: 128}
    ffn: [{kind: dense, d_ff: 4096}]
"""


def test_cli_takes_a_recurrent_model_file_with_overrides_and_refuses_bad_ones(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(MAMBA2_YAML)
    proc = run("simulate", str(path), "-b", "2", "-c", "100,100000", "--set", "d_state=128", "-f", "csv")
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(StringIO(proc.stdout))
    # 4 layers x 2 sequences x (32 x 64 x 128 state + (2048 + 2 x 2 x 128) x 3 conv) x 2 bytes, at any context
    assert df["kv_read_bytes"].tolist() == [4 * 2 * (32 * 64 * 128 + 2560 * 3) * 2] * 2
    assert_one_line_error(run("simulate", str(path), "--tp", "3"), "does not divide the 32 Mamba-2 heads")
    # the layer name `mamba` sets Mamba and Mamba-2 weights alike
    fp8 = run(
        "simulate", str(path), "-b", "1", "--weight-dtype", "bf16,mamba=fp8", "--per-layer", "-f", "csv"
    )
    assert fp8.returncode == 0, fp8.stderr
    layer = pd.read_csv(StringIO(fp8.stdout)).set_index("layer").loc["block0.mamba"]
    assert layer["weight_dtype"] == "fp8" and layer["weight_bytes_ideal"] == layer["params"]
    # a field attention and Mamba-2 share is ambiguous where both are in the model
    path.write_text(MAMBA2_YAML + HYBRID_TAIL)
    assert_one_line_error(
        run("simulate", str(path), "--set", "n_heads=64"), "attention and mamba2 layers both have 'n_heads'"
    )
    assert run("simulate", str(path), "--set", "blocks.1.attention.n_heads=16").returncode == 0
    path.write_text(MAMBA2_YAML.replace("n_groups: 2", "n_groups: 5"))
    assert_one_line_error(run("simulate", str(path)), "not a multiple of n_groups=5")
    path.write_text(MAMBA2_YAML.replace("kind: mamba2", "kind: mamba3"))
    assert_one_line_error(run("simulate", str(path)), "blocks.0.attention")


def test_serving_a_pure_state_space_model_costs_the_same_step_at_any_prompt() -> None:
    from simulator.serving import serving_states

    model = ModelConfig.model_validate(yaml.safe_load(MAMBA2_YAML))
    rows = [
        serving_states([model], [H100], Workload(batch=[16]), prompt, 64).iloc[0] for prompt in (512, 65536)
    ]
    # no KV cache grows: a decode-only step is the same; the state held per sequence too
    assert rows[0]["decode_step_s"] == rows[1]["decode_step_s"]

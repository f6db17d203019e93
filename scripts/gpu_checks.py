"""The one prepared check for a lent H100 (<= 10 minutes): what the CPU machines cannot measure.

Stages, each a child process with its own time budget (a hang or crash costs only that stage):
  device   device facts (NVML, torch), read-only nvidia-smi query
  parity   every reference-module family on CUDA, recurrent mixers too (fp32 vs the CPU, bf16 runs)
  gpm      GPM calibration: 2 GiB device copies in bursts of 1, 0.5 and 2 s, counted vs GPM DRAM bytes
  moe      profile an OLMoE-like model (d 2048, 8 blocks, 64 experts top-8) at batch 1..4096, ncu pass
  umv2     profile an UltraMemV2-like model (d 2048, 8 blocks, shared 2.2 M-row table), ncu pass
  nvml     benchmarks/bench_nvml_overhead.py: does the sampler slow the run it measures
  graphs   2-block versions of both models replayed as CUDA graphs beside eager (MoE: not capturable)
Named with --stages only (held-out checks, run on 2026-11-27 in two further calls):
  zoo, zoo_prefill, zoo_b16   one block of every layer family, shapes used nowhere else, with ncu
  graphs8                     the 8-block UltraMemV2-like model replayed as a CUDA graph
Everything lands in a work folder (/tmp/gpu-checks), packed after every stage into $OUT/gpu-checks.tar.gz
(split into parts of <= 15 MiB when larger; the device tool returns at most 8 files of 16 MiB), so a
command stopped early still brings back every finished stage. Stages run in their own process groups: a
stage that runs out of time is killed with its children (ncu and the program it profiles).

    python3 scripts/gpu_checks.py --dry-run      # the plan, on any machine (builds the models on meta)
    python3 scripts/gpu_checks.py                # on the GPU machine (scripts/gpu_checks.sh wraps it)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from profiler.child import run_group  # noqa: E402  (needs ROOT on the path; imports no torch)
from simulator.config import (  # noqa: E402
    AttentionConfig,
    BlockConfig,
    DenseFFNConfig,
    GatedDeltaNetConfig,
    LightningAttentionConfig,
    Mamba2Config,
    MambaConfig,
    MemoryPlusConfig,
    ModelConfig,
    MoEConfig,
    PEERConfig,
    PKMConfig,
    UltraMemConfig,
    UltraMemV2Config,
)

BATCHES = [1, 4, 16, 64, 256, 1024, 4096]
CONTEXT = 256  # KV entries per sequence; GQA 16q/4kv keeps batch 4096 at 17 GB of cache
PART_BYTES = 15 * 2**20
NCU_BATCHES = {"moe": [1, 4], "umv2": [1, 1024]}
# seconds for the whole ncu pass of a stage (one ncu process per batch, an equal share each): about 10 s
# to start the child plus 20-40 ms per kernel replayed (MoE at batch 4: ~1,400 kernels per step)
NCU_SECONDS = {"moe": 130, "umv2": 110}
GRAPH_BATCHES = [1, 16, 256]
ZOO_BATCHES = [1, 16, 256]
ZOO_NCU = [1, 256]
ZOO_PREFILL_BATCHES = [1, 4]
ZOO_PREFILL_NCU = [4]
ZOO_PROMPT = 512
GRAPH8_BATCHES = [1, 64, 1024]
PACK_SECONDS = 15  # kept back at the end for the last packing
MIN_STAGE_SECONDS = 15  # a stage that would get less is skipped, not started
DEADLINE_ENV = "GPU_CHECKS_STAGE_DEADLINE"  # wall-clock time (time.time()) a stage must end by
# stage -> (seconds budget, what it does); the budgets sum to 540 s. gpu_checks.sh gives the whole run
# 580 s of the device's 600 s per command, less what its pip install and imports took; `orchestrate` cuts
# a stage to what is left (PACK_SECONDS kept for packing) and skips one that would get too little.
# A profile stage: ~60 s sweep + its ncu pass (cut to the stage's own deadline) + margin.
STAGES: dict[str, tuple[int, str]] = {
    "device": (20, "device facts: NVML device_info, torch.cuda properties, nvidia-smi query (read-only)"),
    "parity": (40, "each layer family on CUDA: fp32 output vs CPU (same weights), bf16 forward runs"),
    "gpm": (25, "GPM calibration: 2 GiB copy bursts of 1, 0.5 and 2 s, counted bytes vs GPM DRAM bytes"),
    "moe": (
        190,
        f"profile OLMoE-like, batches {BATCHES}, context {CONTEXT}, NVML/GPM, ncu at {NCU_BATCHES['moe']}",
    ),
    "umv2": (
        170,
        f"profile UltraMemV2-like, batches {BATCHES}, context {CONTEXT}, NVML/GPM, "
        f"ncu at {NCU_BATCHES['umv2']}",
    ),
    "nvml": (50, "benchmarks/bench_nvml_overhead.py --steps 100"),
    "graphs": (45, f"2-block models at batches {GRAPH_BATCHES}: eager vs CUDA-graph step time"),
    # held out: shapes no other stage or test uses, one block of every family in one model, so that one
    # ncu pass per batch measures them all (not in the default run; name them with --stages)
    "zoo": (150, f"one block per layer family (decode), batches {ZOO_BATCHES}, NVML/GPM, ncu at {ZOO_NCU}"),
    "zoo_prefill": (
        100,
        f"attention/FFN families (prefill, {ZOO_PROMPT} tokens), batches {ZOO_PREFILL_BATCHES}, "
        f"ncu at {ZOO_PREFILL_NCU}",
    ),
    "zoo_b16": (100, "the decode zoo at batch 16 alone, with ncu at 16"),
    "graphs8": (60, f"8-block UltraMemV2-like model, batches {GRAPH8_BATCHES}: eager vs CUDA-graph step"),
}
DEFAULT_STAGES = ("device", "parity", "gpm", "moe", "umv2", "nvml", "graphs")


# ------------------------------------------------------------------------------------------ models
def moe_config(blocks: int = 8) -> ModelConfig:
    attn = AttentionConfig(kind="gqa", n_heads=16, n_kv_heads=4, head_dim=128)
    moe = MoEConfig(n_experts=64, top_k=8, expert_ffn=1024, activation="swiglu", router="softmax")
    return ModelConfig(
        name=f"olmoe-like-d2048-{blocks}L",
        description="OLMoE-1B-7B layer shape (64 experts, top-8), 8 blocks, GQA",
        d_model=2048,
        vocab_size=50304,
        embeddings=False,
        blocks=[BlockConfig(repeat=blocks, attention=attn, ffn=[moe])],
    )


def umv2_config(blocks: int = 8) -> ModelConfig:
    attn = AttentionConfig(kind="gqa", n_heads=16, n_kv_heads=4, head_dim=128)
    mem = UltraMemV2Config(
        knum=528,
        key_dim=512,
        rank=2,
        cores=2,
        heads=1,
        top_m=128,
        value_dim=768,
        pre_value_dim=384,
        shared_table="values",
    )
    return ModelConfig(
        name=f"umv2-like-d2048-{blocks}L",
        description="UltraMemV2-1B/7B layer shape, 8 blocks, GQA, shared table",
        d_model=2048,
        vocab_size=50304,
        embeddings=False,
        blocks=[
            BlockConfig(
                repeat=blocks, attention=attn, parallel_ffn=True, ffn=[DenseFFNConfig(d_ff=6144), mem]
            )
        ],
    )


def zoo_config(phase: str = "decode") -> ModelConfig:
    """One block of every layer family at d_model 2048, with shapes no other stage or test uses (a
    held-out check of the cost model): each block is its own BlockConfig, so the layers are named
    block0.attn, block0.ffn, block1.attn, block1.moe, ... Prefill keeps the attention mixers (the
    reference recurrent prefills run per chunk or per token, too many kernels for one ncu pass)."""

    gqa = AttentionConfig(kind="gqa", n_heads=32, n_kv_heads=8, head_dim=64)
    mha = AttentionConfig(kind="mha", n_heads=16, head_dim=128)
    mla = AttentionConfig(
        kind="mla",
        n_heads=16,
        q_lora_rank=768,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
    )
    # DeepSeek-V3.2's indexer picks 128 of the cached tokens (decode context 256, prompt 512)
    dsa = AttentionConfig.model_validate(
        {**mla.model_dump(), "index_topk": 128, "index_n_heads": 16, "index_head_dim": 128}
    )
    dense = DenseFFNConfig(d_ff=5632)
    layers: list[tuple[Any, list[Any], bool]] = [
        (gqa, [dense], False),
        (
            mla,
            [MoEConfig(n_experts=48, top_k=6, expert_ffn=1408, n_shared_experts=2, shared_ffn=1408)],
            False,
        ),
        (gqa, [PKMConfig(n_keys=256, heads=4, top_k=32, key_dim=256)], False),
        (mha, [PEERConfig(n_keys=128, heads=8, top_k=16, query_dim=128)], False),
        (gqa, [MemoryPlusConfig(n_keys=256, heads=4, top_k=32, key_dim=512)], False),
        (
            gqa,
            [UltraMemConfig(knum=256, key_dim=256, heads=2, top_m=32, row_col_top=16, value_dim=512)],
            False,
        ),
        (
            dsa,
            [
                DenseFFNConfig(d_ff=4096, activation="gelu"),
                UltraMemV2Config(knum=384, key_dim=256, top_m=64, value_dim=512, pre_value_dim=256),
            ],
            True,
        ),
        (
            gqa,
            [
                MoEConfig(
                    n_experts=64,
                    top_k=8,
                    expert_ffn=768,
                    router="sigmoid",
                    router_bias=True,
                    n_groups=8,
                    topk_groups=4,
                )
            ],
            False,
        ),
    ]
    if phase == "decode":
        recurrent = [
            Mamba2Config(n_heads=64, head_dim=64, d_state=128, n_groups=8),
            GatedDeltaNetConfig(n_k_heads=16, n_v_heads=32, head_k_dim=128, head_v_dim=128),
            GatedDeltaNetConfig(
                n_k_heads=16, n_v_heads=16, head_k_dim=128, head_v_dim=128, gate_rank=128, state_dtype="fp32"
            ),
            LightningAttentionConfig(n_heads=16, head_dim=128),
            MambaConfig(d_inner=4096, d_state=16, dt_rank=128),
        ]
        layers += [(mixer, [dense], False) for mixer in recurrent]
    return ModelConfig(
        name=f"zoo-d2048-{phase}",
        description="one block per layer family, held-out shapes (scripts/gpu_checks.py zoo_config)",
        d_model=2048,
        vocab_size=50304,
        embeddings=False,
        blocks=[BlockConfig(attention=a, ffn=f, parallel_ffn=par) for a, f, par in layers],
    )


def _model_plan(cfg: Any) -> dict[str, Any]:
    """Parameters and memory of a model, from a meta-tensor build (no memory used)."""
    from profiler.modules import ReferenceModel

    model = ReferenceModel(cfg, device="meta", dtype="bf16")
    params = model.param_count(include_norms=True)
    kv = 2 * sum(  # bf16 bytes per token; recurrent mixers hold a fixed state instead
        getattr(b.attention, "kv_elements_per_token", 0) * b.repeat for b in cfg.blocks
    )
    return {
        "name": cfg.name,
        "params": params,
        "weights_GB": params * 2 / 1e9,
        "kv_GB_at_max_batch": kv * CONTEXT * max(BATCHES) / 1e9,
        "layers": model.layer_names(),
    }


# ------------------------------------------------------------------------------------------ stages
def stage_device(out: Path) -> None:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(
            name=p.name,
            sm_count=p.multi_processor_count,
            total_memory=p.total_memory,
            l2_bytes=getattr(p, "L2_cache_size", None),
        )
    try:
        from profiler.nvml import device_info, nvml_status

        info["nvml_status"] = nvml_status(require_gpm=True)
        info["nvml"] = device_info()
    except Exception as exc:
        info["nvml_error"] = f"{type(exc).__name__}: {exc}"
    try:
        from profiler.ncu import ncu_available

        info["ncu"] = ncu_available()
    except Exception as exc:
        info["ncu_error"] = f"{type(exc).__name__}: {exc}"
    q = "name,driver_version,clocks.max.memory,clocks.max.sm,power.limit,memory.total"
    try:
        smi = subprocess.run(
            ["nvidia-smi", f"--query-gpu={q}", "--format=csv"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        info["nvidia_smi"] = (smi.stdout + smi.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        info["nvidia_smi"] = f"{type(exc).__name__}: {exc}"
    (out / "device.json").write_text(json.dumps(info, indent=1, default=str))
    print(json.dumps(info, indent=1, default=str))


def stage_parity(out: Path) -> None:
    """Small configs of every family: CUDA fp32 == CPU fp32 (same weights); bf16 on CUDA runs."""
    import torch

    from profiler.modules import ReferenceModel

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    families = {
        "dense": [DenseFFNConfig(d_ff=256)],
        "moe": [MoEConfig(n_experts=16, top_k=4, expert_ffn=64, n_shared_experts=1, shared_ffn=64)],
        "moe-v3": [
            MoEConfig(
                n_experts=16,
                top_k=4,
                expert_ffn=64,
                router="sigmoid",
                router_bias=True,
                n_groups=4,
                topk_groups=2,
            )
        ],
        "pkm": [PKMConfig(n_keys=32, heads=2, top_k=8, key_dim=32)],
        "peer": [PEERConfig(n_keys=32, heads=2, top_k=8, query_dim=16)],
        "memory_plus": [MemoryPlusConfig(n_keys=32, heads=2, top_k=8, key_dim=32)],
        "ultramem": [UltraMemConfig(knum=24, key_dim=32, heads=2, top_m=16, row_col_top=8, value_dim=64)],
        "ultramemv2": [
            DenseFFNConfig(d_ff=256),
            UltraMemV2Config(knum=24, key_dim=32, top_m=16, row_col_top=8, value_dim=64, pre_value_dim=32),
        ],
    }
    attns = {
        "gqa": AttentionConfig(kind="gqa", n_heads=8, n_kv_heads=2, head_dim=16),
        "mla": AttentionConfig(
            kind="mla",
            n_heads=4,
            q_lora_rank=32,
            kv_lora_rank=32,
            qk_nope_head_dim=16,
            qk_rope_head_dim=8,
            v_head_dim=16,
        ),
        # the recurrent mixers, prefill over two chunks of 8 (Mamba: a token-by-token scan)
        "gated_deltanet": GatedDeltaNetConfig(
            n_k_heads=2, n_v_heads=4, head_k_dim=16, head_v_dim=16, chunk_size=8
        ),
        "mamba2": Mamba2Config(n_heads=4, head_dim=16, d_state=16, n_groups=2, chunk_size=8),
        "mamba": MambaConfig(d_inner=256, d_state=8, dt_rank=8),
        # Kimi Delta Attention, lightning attention
        "kda": GatedDeltaNetConfig(
            n_k_heads=4,
            n_v_heads=4,
            head_k_dim=16,
            head_v_dim=16,
            chunk_size=8,
            gate_rank=16,
            state_dtype="fp32",
        ),
        "lightning": LightningAttentionConfig(n_heads=4, head_dim=16, chunk_size=8),
    }
    # DeepSeek-V3.2's sparse MLA: the MLA above with a lightning indexer (8 of 16 cached tokens picked)
    sparse = {"index_topk": 8, "index_n_heads": 4, "index_head_dim": 16}
    attns["mla_sparse"] = AttentionConfig.model_validate({**attns["mla"].model_dump(), **sparse})
    # Falcon-H1's layer: a Mamba-2 mixer beside the attention
    beside = {"gqa+mamba2": ("gqa", "mamba2")}
    mixer_families = ("dense", "moe")  # the recurrent mixers beside these FFNs only: the budget is 40 s
    results = []
    mixers = {name: (attn, None) for name, attn in attns.items()}
    mixers |= {name: (attns[a], attns[b]) for name, (a, b) in beside.items()}
    for fam, ffn in families.items():
        for aname, (attn, parallel) in mixers.items():
            if aname not in ("gqa", "mla") and fam not in mixer_families:
                continue
            for phase in ("decode", "prefill"):
                block = BlockConfig(
                    repeat=2,
                    attention=attn,
                    parallel_mixer=parallel,
                    ffn=ffn,
                    parallel_ffn=fam == "ultramemv2",
                )
                cfg = ModelConfig(name=f"{fam}-{aname}", d_model=128, vocab_size=101, blocks=[block])
                row: dict[str, Any] = {"family": fam, "attention": aname, "phase": phase}
                try:
                    torch.manual_seed(0)
                    cpu = ReferenceModel(cfg, phase=phase)
                    cpu.setup_cache(4, 16)
                    ids = cpu.make_input(4, 16)
                    with torch.no_grad():
                        want, got = parity_outputs(cpu, ids, "cuda", 16)
                        row["max_abs_err_fp32"] = float((got - want).abs().max())
                        row["rel_err_fp32"] = float((got - want).norm() / want.norm())
                        half = ReferenceModel(cfg, phase=phase, device="cuda", dtype="bf16")
                        half.setup_cache(4, 16)
                        y = half(ids.cuda())
                        row["bf16_finite"] = bool(torch.isfinite(y).all())
                    row["ok"] = row["rel_err_fp32"] < 1e-4 and row["bf16_finite"]
                except Exception as exc:
                    row["ok"] = False
                    row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
                results.append(row)
                print(row)
    (out / "parity.json").write_text(json.dumps(results, indent=1))
    bad = [r for r in results if not r["ok"]]
    print(f"parity: {len(results) - len(bad)} of {len(results)} ok")
    if bad:
        raise SystemExit(1)


def parity_outputs(cpu: Any, ids: Any, device: str, context: int) -> tuple[Any, Any]:
    """(CPU output, `device` output) of one step of the reference model `cpu` (its caches set up for
    `context`) and of a copy on `device` with the same weights and caches. The copy is made before the
    CPU step runs: a decode step of a recurrent mixer updates its state in place."""
    from profiler.modules import ReferenceModel

    other = ReferenceModel(cpu.config, phase=cpu.phase, device=device)
    other.load_state_dict(cpu.state_dict())
    other.setup_cache(int(ids.shape[0]), context)
    _copy_caches(cpu, other)
    return cpu(ids), other(ids.to(device)).cpu()


def _copy_caches(src: Any, dst: Any) -> None:
    """KV caches and recurrent states are plain attributes (not buffers): copy them so both models start
    from the same."""
    for s_block, d_block in zip(src.blocks, dst.blocks, strict=True):
        for slot in ("attn", "beside"):  # the block's mixer and the one beside it (Falcon-H1)
            s_sub, d_sub = getattr(s_block, slot, None), getattr(d_block, slot, None)
            if s_sub is None:
                continue
            for name in ("k_cache", "v_cache", "kv_cache", "index_cache", "state", "conv_state"):
                s = getattr(s_sub.layer, name, None)
                if s is not None:
                    getattr(d_sub.layer, name).copy_(s)


GPM_BURSTS_S = (1.0, 0.5, 2.0)  # copy bursts, each between idle gaps: the counter's lag shows at both edges


def stage_gpm(out: Path) -> None:
    """Device-to-device copy bursts of known bytes, each between idle gaps, under the NVML sampler: the
    timeline and every burst's [t0, t1] are kept, so GPM bytes can be checked against counted bytes with
    any estimator (the in-window integral, and the lag-aware one of traces.timeline)."""
    import torch

    from profiler.nvml import NvmlSampler, device_info, dram_bytes
    from traces.timeline import gpm_steady_bytes

    info = device_info()
    peak = info["peak_hbm_Bps"]
    n = 2**30  # bf16 elements: 2 GiB per buffer
    src = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    bursts = []
    with NvmlSampler(interval_s=0.1, require_gpm=True) as sampler:
        for seconds in GPM_BURSTS_S:
            time.sleep(0.6)  # idle: the counter lags (measured-on-h100.md), let it settle
            t0 = time.time_ns()
            copies = 0
            while time.time_ns() - t0 < seconds * 1e9 or copies < 10:
                dst.copy_(src)
                copies += 1
                if copies % 10 == 0:
                    torch.cuda.synchronize()
            torch.cuda.synchronize()
            bursts.append({"t0_ns": t0, "t1_ns": time.time_ns(), "copies": copies})
        time.sleep(0.6)
    timeline = sampler.to_dataframe()
    timeline.to_csv(out / "gpm_calibration_timeline.csv", index=False)
    for b in bursts:
        b["bytes_counted"] = 2 * 2 * n * b["copies"]  # bytes read + written
        b["seconds"] = (b["t1_ns"] - b["t0_ns"]) / 1e9
        b["copy_Bps"] = b["bytes_counted"] / b["seconds"]
        b["ratio_in_window"] = dram_bytes(timeline, peak, b["t0_ns"], b["t1_ns"]) / b["bytes_counted"]
        steady = gpm_steady_bytes(timeline, peak, b["t0_ns"], b["t1_ns"])
        b["ratio_lag_aware"] = None if steady is None else steady / b["bytes_counted"]
    result = {
        "peak_hbm_Bps": peak,
        "peak_derivation": info["peak_hbm_derivation"],
        "buffer_bytes": 2 * n,
        "bursts": bursts,
        "gpm_bytes_whole_recording": dram_bytes(timeline, peak),
        "bytes_counted_all_bursts": sum(b["bytes_counted"] for b in bursts),
        "sampler_errors": sampler.errors[:5],
    }
    (out / "gpm_calibration.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


def _profile_and_summarize(
    out: Path,
    cfg: Any,
    batches: list[int],
    name: str,
    phase: str = "decode",
    context: int = CONTEXT,
    **options: Any,
) -> None:
    """profile_model on the GPU (decode at CONTEXT unless told, bf16, 3 warm-up steps) into
    out/{name}-bundle, and its summary into out/{name}-summary.txt."""
    from profiler.run import profile_model

    started = time.time()
    path = profile_model(
        cfg,
        batches,
        phase,
        context,
        warmup=3,
        output=out / f"{name}-bundle",
        device="cuda",
        dtype="bf16",
        progress=False,
        replace=True,  # the script's own work folder: a rerun on a warm machine refreshes it
        **options,
    )
    _summarize_bundle(path, out / f"{name}-summary.txt", time.time() - started)


def _stage_deadline() -> float | None:
    """This stage's deadline as a time.monotonic() value (its budget less 15 s to write the bundle and
    its summary), from the wall-clock time the orchestrator set; None when run by hand."""
    end = os.environ.get(DEADLINE_ENV)
    if end is None:
        return None
    return time.monotonic() + float(end) - time.time() - 15.0


def stage_profile(out: Path, which: str) -> None:
    _profile_and_summarize(
        out,
        moe_config() if which == "moe" else umv2_config(),
        BATCHES,
        which,
        steps=3,
        steady_seconds=1.0,
        input_ring=16,
        ncu=True,
        record_routing=True,
        ncu_batches=NCU_BATCHES[which],
        ncu_steps=1,
        ncu_timeout_s=NCU_SECONDS[which],
        ncu_deadline=_stage_deadline(),
        routing_max_rows=200_000,  # keeps the committed bundles at a few MB
    )


ZOO_STAGES = {  # stage -> (phase, batches, ncu batches)
    "zoo": ("decode", ZOO_BATCHES, ZOO_NCU),
    "zoo_b16": ("decode", [16], [16]),
    "zoo_prefill": ("prefill", ZOO_PREFILL_BATCHES, ZOO_PREFILL_NCU),
}


def stage_zoo(out: Path, stage: str) -> None:
    phase, batches, ncu_batches = ZOO_STAGES[stage]
    decode = phase == "decode"
    _profile_and_summarize(
        out,
        zoo_config(phase),
        batches,
        stage,
        phase=phase,
        context=CONTEXT if decode else ZOO_PROMPT,
        steps=3 if decode else 2,
        steady_seconds=1.0,
        input_ring=8,
        ncu=True,
        record_routing=True,
        ncu_batches=ncu_batches,
        ncu_steps=1,
        ncu_timeout_s=STAGES[stage][0],
        ncu_deadline=_stage_deadline(),
        routing_max_rows=100_000,
    )


def _summarize_bundle(path: Path, dest: Path, seconds: float) -> None:
    from traces.bundle import read_bundle

    b = read_bundle(path)
    lines = [
        f"{path.name}: {seconds:.0f} s, partial={b.partial}, tables={b.tables}",
        f"device: {b.meta['device']}",
        "missing:",
        *[f"  {m}" for m in b.meta["missing"]],
    ]
    runs = b.runs
    if runs is not None:
        cols = [
            c
            for c in (
                "batch",
                "steps",
                "us_per_step",
                "us_per_step_graph",
                "gpm_bytes_per_step",
                "gpm_bw_Bps",
                "kernel_time_ns_per_step",
                "n_kernels_per_step",
                "mean_power_w",
            )
            if c in runs
        ]
        lines.append(runs[cols].to_string(index=False))
    ncu = b.ncu
    if ncu is not None:
        per = ncu.groupby(["batch", "layer"])[["dram_bytes_read", "dram_bytes_write"]].sum()
        lines.append(per.head(40).to_string())
    text = "\n".join(lines)
    dest.write_text(text + "\n")
    print(text)


def stage_nvml(out: Path) -> None:
    bench = ROOT / "benchmarks" / "bench_nvml_overhead.py"
    proc = run_group(
        [sys.executable, str(bench), "--steps", "100"], STAGES["nvml"][0] - 5, capture_output=True, text=True
    )
    (out / "nvml_overhead.txt").write_text(proc.stdout + proc.stderr)
    print(proc.stdout + proc.stderr)


def stage_graphs(out: Path) -> None:
    """Eager and CUDA-graph step time of small versions of both models (the MoE is expected to refuse
    capture: its reference dispatch moves per-expert counts to the host)."""
    for which, cfg in (("umv2", umv2_config(blocks=2)), ("moe", moe_config(blocks=2))):
        _profile_and_summarize(
            out,
            cfg,
            GRAPH_BATCHES,
            f"graphs-{which}",
            steps=2,
            steady_seconds=0.5,
            input_ring=8,
            record_routing=False,
            opcount=False,
            cuda_graphs=True,
        )


def stage_graphs8(out: Path) -> None:
    """The whole UltraMemV2-like model replayed as a CUDA graph: its step time without the host's
    launch gaps, to set beside the roofline (the eager steps are host-bound)."""
    _profile_and_summarize(
        out,
        umv2_config(),
        GRAPH8_BATCHES,
        "graphs8-umv2",
        steps=2,
        steady_seconds=1.0,
        input_ring=8,
        record_routing=False,
        opcount=False,
        cuda_graphs=True,
    )


def run_stage(name: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if name in ("moe", "umv2"):
        stage_profile(out, name)
        return
    if name in ZOO_STAGES:
        stage_zoo(out, name)
        return
    stage = {
        "device": stage_device,
        "parity": stage_parity,
        "gpm": stage_gpm,
        "nvml": stage_nvml,
        "graphs": stage_graphs,
        "graphs8": stage_graphs8,
    }[name]
    stage(out)


# ------------------------------------------------------------------------------------------ orchestration
def pack(work: Path, dest_dir: Path) -> list[Path]:
    """work/ -> dest_dir/gpu-checks.tar.gz, split into <= 15 MiB parts when larger (cat them to rejoin).
    The new archive is written whole under names outside that pattern, and only then replaces the
    previous packing (renames): a kill at any point leaves one complete packing, never a cut one."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest_dir / "packing.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(work, arcname="gpu-checks")
    pieces = [tmp]
    if tmp.stat().st_size > PART_BYTES:
        pieces = []
        with open(tmp, "rb") as f:
            while chunk := f.read(PART_BYTES):
                piece = dest_dir / f"packing.part{len(pieces):02d}.tmp"
                piece.write_bytes(chunk)
                pieces.append(piece)
        tmp.unlink()
    for old in dest_dir.glob("gpu-checks.tar.gz*"):
        old.unlink()
    if len(pieces) == 1:
        final = [dest_dir / "gpu-checks.tar.gz"]
    else:
        final = [dest_dir / f"gpu-checks.tar.gz.part{i:02d}" for i in range(len(pieces))]
    for piece, name in zip(pieces, final, strict=True):
        piece.replace(name)
    return final


def orchestrate(out_root: Path, work: Path, stages: list[str], limit_s: float | None = None) -> int:
    """Run each stage as a killable child within its budget, cut to what is left of `limit_s` (less
    PACK_SECONDS), and pack after each; a stage that would get under MIN_STAGE_SECONDS is skipped."""
    work.mkdir(parents=True, exist_ok=True)
    end = None if limit_s is None else time.time() + limit_s - PACK_SECONDS
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    summary: dict[str, Any] = {"started_utc": started, "stages": {}}
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    for name in stages:
        budget = STAGES[name][0] if end is None else min(STAGES[name][0], end - time.time())
        if budget < min(MIN_STAGE_SECONDS, STAGES[name][0]):  # cut by the run's limit to too little
            summary["stages"][name] = {"rc": "skipped", "seconds": 0, "tail": [f"{budget:.0f} s left"]}
            print(f"== {name}: skipped, {budget:.0f} s left", flush=True)
            # the bundle records what was not run too
            (work / "summary.json").write_text(json.dumps(summary, indent=1))
            pack(work, out_root)
            continue
        log = work / f"{name}.log"
        t0 = time.time()
        print(f"== {name} (budget {budget:.0f} s): {STAGES[name][1]}", flush=True)
        with open(log, "w") as f:
            try:
                cmd = [sys.executable, __file__, "--stage", name, "--out", str(work)]
                stage_env = {**env, DEADLINE_ENV: str(t0 + budget)}
                proc = run_group(cmd, budget, stdout=f, stderr=subprocess.STDOUT, env=stage_env, cwd=ROOT)
                rc: int | str = proc.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        summary["stages"][name] = {"rc": rc, "seconds": round(time.time() - t0, 1), "tail": tail}
        print(f"   {name}: rc={rc} in {time.time() - t0:.0f} s; {tail[-1] if tail else ''}", flush=True)
        (work / "summary.json").write_text(json.dumps(summary, indent=1))
        pack(work, out_root)  # after every stage: a command stopped early keeps what finished
    files = sorted(out_root.glob("gpu-checks.tar.gz*"))
    print("packed:", ", ".join(f"{p.name} ({p.stat().st_size / 2**20:.1f} MiB)" for p in files))
    print(json.dumps(summary["stages"], indent=1))
    return 0 if all(s["rc"] == 0 for s in summary["stages"].values()) else 1


def dry_run(stages: list[str]) -> int:
    print(__doc__.split("\n\n")[0])
    total = 0
    for name in stages:
        budget, what = STAGES[name]
        total += budget
        print(f"  {name:7s} {budget:4d} s  {what}")
    print(
        f"  total budget {total} s; gpu_checks.sh allows 580 s less its own set-up, of the device's 600 s "
        f"per command, and keeps {PACK_SECONDS} s of it for the last packing"
    )
    for cfg in (moe_config(), umv2_config()):
        plan = _model_plan(cfg)
        print(
            f"  model {plan['name']}: {plan['params'] / 1e9:.2f} B params, {plan['weights_GB']:.1f} GB "
            f"bf16 weights (L2 is 0.05 GB), KV {plan['kv_GB_at_max_batch']:.1f} GB at batch "
            f"{max(BATCHES)} x context {CONTEXT}; layers {', '.join(plan['layers'][:4])}, ..."
        )
    print(
        f"  output: /tmp/gpu-checks/ packed after every stage into $OUT/gpu-checks.tar.gz "
        f"(parts of <= {PART_BYTES >> 20} MiB)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit (any machine)")
    p.add_argument("--stages", default=",".join(DEFAULT_STAGES), help="comma-separated subset, in order")
    p.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # child: run one stage
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-checks-out")))
    p.add_argument("--work", type=Path, default=Path("/tmp/gpu-checks"), help="where stages write")
    p.add_argument("--pack-only", action="store_true", help="pack --work into --out and exit")
    p.add_argument("--limit-s", type=float, default=None, help="seconds the whole run may take")
    a = p.parse_args(argv)
    if a.pack_only:
        pack(a.work, a.out)
        return 0
    stages = [s for s in a.stages.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        p.error(f"unknown stage(s) {unknown}; known: {', '.join(STAGES)}")
    if a.dry_run:
        return dry_run(stages)
    if a.stage is not None:
        try:
            run_stage(a.stage, a.out)
        except Exception:
            traceback.print_exc()
            return 1
        return 0
    return orchestrate(a.out, a.work, stages, a.limit_s)


if __name__ == "__main__":
    sys.exit(main())

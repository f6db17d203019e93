"""Sweep speed: memtraffic's vectorised simulator against llm-analysis (PyPI 0.2.2), in one run.

Both evaluate the same (model, batch, context) decode points: 4 models x 250 batch sizes x 100 contexts
= 100,000 points. memtraffic returns a DataFrame of every point; llm-analysis is called once per point
(`LLMAnalysis.inference`), as its API offers. Points llm-analysis refuses (its memory-capacity asserts)
are counted and still timed. Prints points per second for each and their ratio (memtraffic: best of
three runs; llm-analysis: one run).

Run:  pip install llm-analysis==0.2.2 && python benchmarks/bench_sweep.py [--points-per-model N]
"""

from __future__ import annotations

import argparse
import logging
import platform
import time

import numpy as np

from simulator.config import Workload
from simulator.loading import load_hardware, load_model
from simulator.sweep import simulate

MODELS = ("llama-3.1-8b", "mixtral-8x7b", "olmoe-1b-7b", "qwen3-30b-a3b")


def memtraffic_sweep(batches: list[int], contexts: list[int]) -> tuple[float, int]:
    hw = load_hardware("h100-sxm")
    wl = Workload(phase="decode", batch=batches, context=contexts)
    start = time.perf_counter()
    rows = 0
    for name in MODELS:
        rows += len(simulate(load_model(name), hw, wl))
    return time.perf_counter() - start, rows


def llm_analysis_sweep(batches: list[int], contexts: list[int]) -> tuple[float, int, int]:
    from llm_analysis import analysis as la
    from llm_analysis.config import ModelConfig as LaModel
    from llm_analysis.config import get_dtype_config_by_name, get_gpu_config_by_name

    la.logger.setLevel(logging.ERROR)
    gpu = get_gpu_config_by_name("h100-sxm-80gb")
    dtype = get_dtype_config_by_name("w16a16e16")
    done = refused = 0
    start = time.perf_counter()
    for name in MODELS:
        cfg = load_model(name)
        block = cfg.blocks[-1]
        ffn = block.ffn[0]
        experts = getattr(ffn, "n_experts", 1)
        width = getattr(ffn, "expert_ffn", getattr(ffn, "d_ff", 4 * cfg.d_model))
        # llm-analysis wants ffn width as a multiple of d_model; round up (it only changes its numbers)
        ffn_dim = int(np.ceil(width / cfg.d_model)) * cfg.d_model
        model = LaModel(
            name=name,
            num_layers=cfg.n_layers,
            n_head=block.attention.n_heads,
            hidden_dim=cfg.d_model,
            vocab_size=cfg.vocab_size,
            num_key_value_heads=block.attention.kv_heads,
            ffn_embed_dim=ffn_dim,
            moe_num_experts=experts,
            moe_top_k=getattr(ffn, "top_k", 1),
        )
        analysis = la.LLMAnalysis(model, gpu, dtype)
        for b in batches:
            for s in contexts:
                try:
                    analysis.inference(batch_size_per_gpu=b, seq_len=s, num_tokens_to_generate=1)
                    done += 1
                except AssertionError:  # its capacity checks refuse points that do not fit in 80 GB
                    refused += 1
    return time.perf_counter() - start, done, refused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=250)
    parser.add_argument("--contexts", type=int, default=100)
    args = parser.parse_args()
    batches = list(range(1, args.batches + 1))
    contexts = [32 * i for i in range(1, args.contexts + 1)]
    points = len(MODELS) * len(batches) * len(contexts)
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(
        f"points: {points:,} ({len(MODELS)} models x {len(batches)} batch sizes x {len(contexts)} contexts)"
    )

    simulate(load_model(MODELS[0]), load_hardware("h100-sxm"), Workload(batch=[1], context=[1]))  # warm-up
    # best of three for the fast side: a 0.1 s measurement is at the mercy of whatever else runs
    t_mt, rows = min(memtraffic_sweep(batches, contexts) for _ in range(3))
    t_la, done, refused = llm_analysis_sweep(batches, contexts)
    mt_rate = rows / t_mt
    la_rate = (done + refused) / t_la
    print(f"memtraffic   : {rows:,} points in {t_mt:.2f} s = {mt_rate:,.0f} points/s")
    print(
        f"llm-analysis : {done + refused:,} points in {t_la:.2f} s = {la_rate:,.0f} points/s "
        f"({refused:,} refused by its memory checks)"
    )
    print(f"ratio        : memtraffic is {mt_rate / la_rate:,.1f}x faster")


if __name__ == "__main__":
    main()

"""One request end to end (`memtraffic latency`): prefill plus one decode step per generated token.

Checked against hand counts (Llama 3.1 8B's KV bytes per token and weight bytes per step, summed over an
arithmetic series of contexts) and against a brute force that costs every decode step on its own.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from simulator import Workload, simulate
from simulator.errors import ConfigError
from simulator.loading import load_hardware, load_model
from simulator.request import MAX_GENERATE, REQUEST_COLUMNS, largest_batch, request_latency
from tests.test_cli import assert_one_line_error, run

H100 = load_hardware("h100-sxm")

# Llama 3.1 8B by hand: 32 layers of q/o 4096x4096, k/v 4096x1024, SwiGLU 3 x 4096 x 14336; untied head
LLAMA_LAYER_PARAMS = 4096 * (2 * 4096 + 2 * 1024) + 3 * 4096 * 14336
LLAMA_HEAD_PARAMS = 128256 * 4096
LLAMA_KV_BYTES_PER_TOKEN = 2 * 32 * 8 * 128 * 2  # K and V, 32 layers, 8 KV heads of 128, bf16


def test_llama_request_matches_hand_count() -> None:
    prompt, generate, batch = 1000, 65, 4
    df = request_latency(load_model("llama-3.1-8b"), H100, Workload(batch=[batch]), prompt, generate)
    r = df.iloc[0]
    steps = generate - 1
    # decode steps run at contexts prompt .. prompt + steps - 1; each reads its context and writes one entry
    context_sum = steps * (2 * prompt + steps - 1) // 2
    kv = batch * LLAMA_KV_BYTES_PER_TOKEN * (context_sum + steps)
    assert r.decode_kv_bytes == pytest.approx(kv, rel=1e-12)
    # every step reads all layer weights and the head, and the embedding rows of its batch tokens
    weights_per_step = 2 * (32 * LLAMA_LAYER_PARAMS + LLAMA_HEAD_PARAMS + batch * 4096)
    assert r.decode_weight_bytes == pytest.approx(steps * weights_per_step, rel=1e-12)
    assert r.kv_share == pytest.approx(kv / r.decode_bytes)
    assert r.bytes_per_token == pytest.approx(r.decode_bytes / (batch * steps))
    # the timing identities of a request
    assert r.e2e_s == pytest.approx(r.ttft_s + steps * r.tpot_s)
    assert r.tokens_per_s == pytest.approx(batch * generate / r.e2e_s)
    # batch 4 decode is bound by HBM: a step cannot be faster than its weight bytes at peak bandwidth
    assert r.tpot_s >= weights_per_step / H100.hbm_bandwidth.value
    assert r.last_step_s > r.tpot_s  # the KV read grows with the context


def test_ttft_is_the_prefill_step_and_memory_the_larger_peak() -> None:
    model, prompt, generate = load_model("olmoe-1b-7b"), 512, 33
    df = request_latency(model, H100, Workload(batch=[1, 16]), prompt, generate).set_index("batch")
    pre = simulate(model, H100, Workload(phase="prefill", batch=[1, 16], context=[prompt])).set_index("batch")
    last = simulate(model, H100, Workload(batch=[1, 16], context=[prompt + generate - 2])).set_index("batch")
    assert np.allclose(df["ttft_s"], pre["time_s"])
    assert np.allclose(df["prefill_bytes"], pre["bytes_ideal"])
    assert np.allclose(df["last_step_s"], last["time_s"])
    assert np.allclose(df["memory_bytes"], np.maximum(pre["memory_bytes"], last["memory_bytes"]))


@pytest.mark.parametrize(
    ("model", "prompt"),
    [
        ("llama-4-scout-17b-16e", 8188),  # chunked attention: the KV read falls back at context 8192
        ("tests/data/hf/Gemma-2-2B.json", 4090),  # sliding window of 4096 on every other layer
        ("ultramemv2-1b-7b", 100),  # memory rows, not KV, vary with batch
    ],
)
def test_decode_sum_equals_every_step_costed_alone(model: str, prompt: int) -> None:
    cfg, generate, batches = load_model(model), 12, [1, 8]
    df = request_latency(cfg, H100, Workload(batch=batches), prompt, generate, max_points=3)
    contexts = list(range(prompt, prompt + generate - 1))
    alone = pd.concat(simulate(cfg, H100, Workload(batch=batches, context=[c])) for c in contexts).groupby(
        "batch"
    )
    got = df.set_index("batch")
    steps = generate - 1
    assert np.allclose(got["tpot_s"] * steps, alone["time_s"].sum(), rtol=1e-12)
    kv = alone["kv_read_bytes"].sum() + alone["kv_write_bytes"].sum()
    assert np.allclose(got["decode_kv_bytes"], kv, rtol=1e-12)
    assert np.allclose(got["decode_flops"], alone["flops"].sum(), rtol=1e-12)
    # slicing the contexts (3 points a slice here) changes nothing
    whole = request_latency(cfg, H100, Workload(batch=batches), prompt, generate)
    pd.testing.assert_frame_equal(df, whole)


def test_chunk_boundary_makes_a_late_step_cheaper() -> None:
    # Llama 4 Scout's chunked layers read context mod 8192 keys: the step at 8192 reads fewer than at 8191
    cfg = load_model("llama-4-scout-17b-16e")
    before = request_latency(cfg, H100, Workload(batch=[64]), 8191, 2)  # one decode step, at 8191
    after = request_latency(cfg, H100, Workload(batch=[64]), 8192, 2)  # one decode step, at 8192
    assert after.iloc[0].decode_kv_bytes < before.iloc[0].decode_kv_bytes


def test_one_token_is_the_prefill_alone() -> None:
    df = request_latency(load_model("llama-3.1-8b"), H100, Workload(batch=[2]), 128, 1)
    r = df.iloc[0]
    assert r.e2e_s == r.ttft_s and r.decode_bytes == 0
    assert np.isnan(r.tpot_s) and np.isnan(r.last_step_s) and np.isnan(r.bytes_per_token)
    assert r.tokens_per_s == pytest.approx(2 / r.ttft_s)
    assert list(df.columns) == list(REQUEST_COLUMNS)


@pytest.mark.parametrize(("prompt", "generate"), [(0, 8), (16, 0), (16, MAX_GENERATE + 1)])
def test_impossible_request_is_refused(prompt: int, generate: int) -> None:
    with pytest.raises(ConfigError):
        request_latency(load_model("llama-3.1-8b"), H100, Workload(), prompt, generate)


def test_cli_latency_compares_models_and_variants() -> None:
    models = ("olmoe-1b-7b", "ultramemv2-1b-7b")
    proc = run("latency", *models, "-b", "1,64", "-p", "256", "-g", "9", "-f", "csv")
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(io.StringIO(proc.stdout))
    assert sorted(df["model"].unique()) == ["olmoe-1b-7b", "ultramemv2-1b-7b"]
    assert set(df["batch"]) == {1, 64} and (df["generate"] == 9).all()
    table = run("latency", "olmoe-1b-7b", "--vary", "top_k=4,8", "-b", "8", "-g", "4")
    assert table.returncode == 0, table.stderr
    assert "olmoe-1b-7b top_k=4" in table.stdout and "E2E ratio" in table.stdout


def test_cli_latency_bad_input_is_one_line() -> None:
    assert_one_line_error(run("latency", "llama-3.1-8b", "--prompt", "0"), "--prompt 0")
    assert_one_line_error(run("latency", "llama-3.1-8b", "--generate", str(MAX_GENERATE + 1)), "--generate")
    assert_one_line_error(run("latency", "no-such-model"), "no-such-model")


def _at(model, batch: int, prompt: int, generate: int) -> pd.Series:
    return request_latency(model, H100, Workload(batch=[batch]), prompt, generate).iloc[0]


def test_largest_batch_at_a_tpot_target_is_the_last_that_meets_it() -> None:
    model = load_model("olmoe-1b-7b")
    r = largest_batch(model, H100, Workload(), 2048, 64, tpot_s=5e-3).iloc[0]
    assert r.limit == "tpot" and r.batch > 1
    assert r.tpot_s <= 5e-3 < _at(model, r.batch + 1, 2048, 64).tpot_s
    assert r.tpot_s == pytest.approx(_at(model, r.batch, 2048, 64).tpot_s)


def test_largest_batch_without_a_binding_target_is_set_by_memory() -> None:
    # Llama 3.1 8B, prompt 2048, 256 generated: by hand the KV cache alone allows
    # (80 GB - 16.06 GB of weights) / (131,072 B x 2303 entries) = 211 sequences; the prefill's activations
    # (the whole batch's prompts in one step) take more, so the answer is lower and the prefill is the limit
    model = load_model("llama-3.1-8b")
    r = largest_batch(model, H100, Workload(), 2048, 256, tpot_s=10.0).iloc[0]
    kv_bound = (80e9 - 2 * (32 * LLAMA_LAYER_PARAMS + 2 * LLAMA_HEAD_PARAMS)) / (
        LLAMA_KV_BYTES_PER_TOKEN * 2303
    )
    assert int(kv_bound) == 211
    assert 1 < r.batch < kv_bound and r.limit == "prefill memory"
    assert r.fits and not _at(model, r.batch + 1, 2048, 256).fits


def test_largest_batch_is_zero_when_one_sequence_misses() -> None:
    r = largest_batch(load_model("llama-3.1-8b"), H100, Workload(), 2048, 16, tpot_s=1e-4).iloc[0]
    assert r.batch == 0 and r.limit == "tpot" and np.isnan(r.tpot_s) and np.isnan(r.memory_bytes)
    with pytest.raises(ConfigError):
        largest_batch(load_model("llama-3.1-8b"), H100, Workload(), 2048, 16, ttft_s=-1.0)


def test_cli_latency_targets() -> None:
    same = [
        run("latency", "olmoe-1b-7b", "-g", "16", "--tpot", t, "-f", "csv").stdout
        for t in ("5ms", "0.005", "5000us")
    ]
    assert same[0] == same[1] == same[2]
    assert pd.read_csv(io.StringIO(same[0]))["limit"].tolist() == ["tpot"]
    assert_one_line_error(run("latency", "olmoe-1b-7b", "--tpot", "5 parsecs"), "--tpot")
    assert_one_line_error(run("latency", "olmoe-1b-7b", "--tpot", "5ms", "-b", "8"), "--batch")
    assert_one_line_error(run("latency", "olmoe-1b-7b", "--ttft", "0"), "positive")


# ------------------------------------------------------------------------------------- chunked prefill


def _brute_pairs_and_keys(prefix: int, tokens: int, window: int | None, chunk: int | None) -> tuple[int, int]:
    """(query, key) pairs and distinct keys of prompt positions prefix+1 .. prefix+tokens, by enumeration."""
    pairs, keys = 0, set()
    for p in range(prefix + 1, prefix + tokens + 1):
        for q in range(1, p + 1):
            if window is not None and p - q >= window:
                continue
            if chunk is not None and (p - 1) // chunk != (q - 1) // chunk:
                continue
            pairs += 1
            keys.add(q)
    return pairs, len(keys)


@pytest.mark.parametrize(("window", "chunk"), [(None, None), (5, None), (None, 6)])
@pytest.mark.parametrize(("prefix", "tokens"), [(0, 13), (4, 9), (11, 3), (12, 7)])
def test_prefill_after_a_prefix_counts_pairs_and_keys_by_enumeration(
    window: int | None, chunk: int | None, prefix: int, tokens: int
) -> None:
    from simulator.config import AttentionConfig
    from simulator.costs import Points
    from simulator.layers.attention import attended_pairs, cached_keys_reached

    attn = AttentionConfig(kind="gqa", n_heads=4, n_kv_heads=2, head_dim=8, sliding_window=window,
                           attention_chunk=chunk)  # fmt: skip
    points = Points.grid(Workload(phase="prefill", batch=[1], context=[tokens], prefix=prefix))
    pairs, keys = _brute_pairs_and_keys(prefix, tokens, window, chunk)
    assert attended_pairs(points, attn)[0] == pairs
    assert tokens + cached_keys_reached(attn, prefix) == keys


@pytest.mark.parametrize("model", ["llama-3.1-8b", "tests/data/hf/Gemma-2-2B.json", "ultramemv2-1b-7b"])
def test_two_prefill_chunks_add_up_to_the_whole_prompt(model: str) -> None:
    cfg, batch, split, prompt = load_model(model), [1, 4], 700, 1900

    def prefill(tokens: int, **kw) -> pd.DataFrame:
        wl = Workload(phase="prefill", batch=batch, context=[tokens], **kw)
        return simulate(cfg, H100, wl, per_layer=True).set_index(["batch", "layer"])

    whole, first, second = (
        prefill(prompt),
        prefill(split, logits="none"),
        prefill(prompt - split, prefix=split),
    )
    for col in ("flops", "kv_write_bytes"):
        assert np.allclose(first[col] + second[col], whole[col], rtol=1e-12), col
    # the first chunk runs no LM head; the second reads the cached keys the whole prompt's queries reached
    assert (first.xs("head", level="layer")["weight_bytes_ideal"] == 0).all()
    assert (second["kv_read_bytes"] >= whole["kv_read_bytes"] * (prompt - split) / prompt).all()


def test_prefill_schedule_covers_every_prompt_token_once() -> None:
    from simulator.request import prefill_steps

    for batch, prompt, chunk in [(7, 100, 250), (7, 100, 100), (3, 1000, 256), (1, 5, 1), (9, 64, 10**6)]:
        steps = prefill_steps(batch, prompt, chunk)
        assert sum(st.count * st.batch * st.tokens for st in steps) == batch * prompt
        assert all(st.batch * st.tokens <= max(chunk, prompt) for st in steps)  # within the token budget
        # logits come once per sequence, from the step that ends its prompt
        assert sum(st.count * st.batch for st in steps if st.logits == "last") == batch
        assert all(st.prefix + st.tokens <= prompt for st in steps)


def test_chunked_prefill_moves_the_memory_limit_to_the_kv_cache() -> None:
    # Llama 3.1 8B, prompt 2048, 256 generated: prefilled 8192 tokens a step, the prefill's activations
    # stay small and the KV cache sets the limit: the hand bound of 211 sequences (see above), less what
    # the last decode step's activations take
    model = load_model("llama-3.1-8b")
    r = largest_batch(model, H100, Workload(), 2048, 256, tpot_s=10.0, prefill_chunk=8192).iloc[0]
    assert r.limit == "decode memory" and 205 <= r.batch <= 211
    # one step for the whole batch's prompts costs what the unchunked prefill does
    whole = request_latency(model, H100, Workload(batch=[4]), 2048, 8).iloc[0]
    one_step = request_latency(model, H100, Workload(batch=[4]), 2048, 8, prefill_chunk=4 * 2048).iloc[0]
    assert one_step.ttft_s == pytest.approx(whole.ttft_s)
    assert one_step.prefill_bytes == pytest.approx(whole.prefill_bytes)
    # chunks of 512 tokens read the weights once a chunk: more prefill bytes, never less time
    small = request_latency(model, H100, Workload(batch=[4]), 2048, 8, prefill_chunk=512).iloc[0]
    assert small.prefill_bytes > 3 * whole.prefill_bytes and small.ttft_s >= whole.ttft_s * 0.999


def test_mla_prefill_after_a_prefix_expands_the_cached_latents() -> None:
    # DeepSeek-V2-Lite by hand: 16 heads, qk 128 + 64 rope, v 128, kv_lora_rank 512. A chunk of n tokens
    # after o cached ones adds, per attention layer, the pairs it reaches beyond a fresh prompt of n
    # (n*o of them, 2*16*(192+128) FLOPs each) and the up-projection of the o cached latents
    # (2 * o * 512 * 16 * (128 + 128) FLOPs)
    cfg, n, o = load_model("tests/data/hf/DeepSeek-V2-Lite.json"), 300, 1000

    def attn_flops(prefix: int) -> float:
        wl = Workload(phase="prefill", batch=[1], context=[n], prefix=prefix)
        df = simulate(cfg, H100, wl, per_layer=True)
        return float(df.loc[df["layer"] == "block0.attn", "flops"].iloc[0])

    extra = n * o * 2 * 16 * (192 + 128) + 2 * o * 512 * 16 * (128 + 128)
    assert attn_flops(o) - attn_flops(0) == pytest.approx(extra, rel=1e-12)


def test_chunked_attention_memory_peak_is_the_largest_decode_step() -> None:
    # Llama 4 Scout's chunked layers keep the keys of the current 8192-chunk only: a request that crosses
    # the boundary peaks before it, and a longer request never holds less at its peak
    cfg, prompt = load_model("llama-4-scout-17b-16e"), 8000
    short, longer = (
        request_latency(cfg, H100, Workload(batch=[8]), prompt, g, prefill_chunk=1000).iloc[0]
        for g in (150, 300)
    )
    steps = simulate(cfg, H100, Workload(batch=[8], context=list(range(prompt, prompt + 299))))
    assert steps["memory_bytes"].idxmax() < len(steps) - 1  # the last step holds less than an earlier one
    assert longer.peak_at == "decode" and longer.memory_bytes == pytest.approx(steps["memory_bytes"].max())
    assert longer.memory_bytes >= short.memory_bytes


def test_chunked_prefill_with_expert_parallelism_spreads_the_held_cache() -> None:
    # with ep 8 every rank prefills its own 32 of 256 sequences: chunking holds no more than one step
    model, wl = load_model("olmoe-1b-7b"), Workload(batch=[256], ep=8)
    whole = request_latency(model, H100, wl, 2048, 2).iloc[0]
    chunked = request_latency(model, H100, wl, 2048, 2, prefill_chunk=16384).iloc[0]
    assert chunked.memory_bytes < whole.memory_bytes
    # the rank's 32 sequences' whole prompts: 32 x 2048 tokens x 16 layers x 2 x 16 heads x 128 x 2 B
    kv_rank = 32 * 2048 * 16 * 2 * 16 * 128 * 2
    assert chunked.memory_bytes > kv_rank


def test_routing_share_of_a_request_is_the_routers_bytes() -> None:
    # OLMoE-1B-7B: 16 routers of 2048 x 64 bf16 weights, read once per decode step
    r = request_latency(load_model("olmoe-1b-7b"), H100, Workload(batch=[1]), 512, 33).iloc[0]
    assert r.routing_share * r.decode_bytes == pytest.approx(32 * 16 * 2048 * 64 * 2)

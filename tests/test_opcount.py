"""profiler.opcount against FLOPs and bytes derived by hand in each test."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from profiler.opcount import COLUMNS, SDPA_OP, OpCounter, count_ops, summarize

BF16, FP32, I64 = 2, 4, 8  # element sizes in bytes


def _ops(df, prefix: str):
    return df[df["op"].str.startswith(prefix)]


# ----------------------------------------------------------------------------------------- linear
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_linear_bias_bf16(device: str) -> None:
    layer = nn.Linear(1024, 4096, bias=True, dtype=torch.bfloat16, device=device)
    x = torch.zeros(8, 1024, dtype=torch.bfloat16, device=device)
    df = count_ops(layer, x)
    assert list(df.columns) == list(COLUMNS)
    # Whatever aten ops torch emits (addmm, or mm + add), together they must move exactly this:
    assert df["flops"].sum() == 2 * 8 * 1024 * 4096
    assert df["bytes_read"].sum() == (8 * 1024 + 1024 * 4096 + 4096) * BF16
    assert df["bytes_written"].sum() == 8 * 4096 * BF16
    assert set(df["module"]) == {""}  # the root module is ""
    assert df.iloc[-1]["out_shape"] == (8, 4096) and df.iloc[-1]["dtype"] == "bfloat16"


def test_views_charge_nothing() -> None:
    x = torch.zeros(4, 6, 8)
    with OpCounter() as oc:
        x.view(24, 8).t().unsqueeze(0).squeeze(0).transpose(0, 1).permute(1, 0)
        x[1:3].select(0, 0).expand(5, 6, 8).detach()
        x.reshape(4, 48)  # contiguous: a view
    df = oc.to_dataframe()
    assert len(df) > 8
    assert df["bytes_read"].sum() == 0 and df["bytes_written"].sum() == 0


def test_copy_clone_inplace_and_factories() -> None:
    x = torch.zeros(16, 32)  # 2048 B
    dst = torch.zeros(8, 32)  # 1024 B
    with OpCounter() as oc:
        x.t().contiguous()  # clone: read 2048, write 2048
        dst.copy_(x[:8])  # source view read 1024, destination written 1024
        x.mul_(2.0)  # in place: read + write the mutated tensor
        torch.zeros(10, 10)  # write only
        torch.full((5,), 3.0)  # write only
        torch.empty(1000)  # nothing
    df = oc.to_dataframe()

    def moved(prefix: str) -> tuple[int, int]:
        rows = _ops(df, prefix)
        return int(rows["bytes_read"].sum()), int(rows["bytes_written"].sum())

    assert moved("aten.clone.") == (2048, 2048)
    assert moved("aten.copy_.") == (1024, 1024)
    assert moved("aten.mul_.") == (2048, 2048)  # the Python scalar is an argument, not a read
    assert moved("aten.zeros.") == (0, 400)
    assert moved("aten.full.") == (0, 20)
    assert moved("aten.empty.") == (0, 0)


# ----------------------------------------------------------------------------------------- gathers
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_embedding_charges_requested_rows_only(device: str) -> None:
    emb = nn.Embedding(50_000, 512, device=device)
    idx = torch.tensor([5, 17, 5, 49_999, 0, 3, 8], device=device)  # 7 indices, a duplicate included
    df = count_ops(emb, idx)
    row = _ops(df, "aten.embedding").iloc[0]
    assert row["bytes_read"] == 7 * 512 * FP32 + 7 * I64  # not 50_000 rows
    assert row["bytes_written"] == 7 * 512 * FP32


def test_index_select_gather_and_advanced_index() -> None:
    table = torch.zeros(1000, 64)
    idx = torch.tensor([3, 1, 4, 1, 5])
    gidx = torch.zeros(1000, 2, dtype=torch.int64)
    with OpCounter() as oc:
        table.index_select(0, idx)
        torch.gather(table, 1, gidx)
        table[idx]
    df = oc.to_dataframe()
    sel = _ops(df, "aten.index_select").iloc[0]
    assert (sel["bytes_read"], sel["bytes_written"]) == (5 * 64 * FP32 + 5 * I64, 5 * 64 * FP32)
    gat = _ops(df, "aten.gather").iloc[0]
    assert (gat["bytes_read"], gat["bytes_written"]) == (2000 * FP32 + 2000 * I64, 2000 * FP32)
    adv = _ops(df, "aten.index.Tensor").iloc[0]
    assert (adv["bytes_read"], adv["bytes_written"]) == (5 * 64 * FP32 + 5 * I64, 5 * 64 * FP32)


def test_embedding_bag_charges_requested_rows_only() -> None:
    bag = nn.EmbeddingBag(10_000, 128, mode="sum")
    idx, offsets = torch.tensor([1, 2, 3, 4, 5, 6]), torch.tensor([0, 3])
    df = count_ops(bag, idx, offsets)
    row = _ops(df, "aten._embedding_bag").iloc[0]
    assert row["bytes_read"] == 6 * 128 * FP32 + 6 * I64 + 2 * I64
    assert row["bytes_written"] >= 2 * 128 * FP32  # the bags (+ small bookkeeping outputs)
    assert row["bytes_written"] < 10_000 * 128 * FP32 // 100


def test_scatter_into_cache_charges_updated_rows_only() -> None:
    cache = torch.zeros(2, 1000, 64)  # a KV-cache-like buffer
    new = torch.ones(2, 1, 64)
    with OpCounter() as oc:
        cache.index_copy_(1, torch.tensor([7]), new)
        cache[:, torch.tensor([9])] = new  # index_put_
        cache[:, 11:12] = new  # slice view + copy_
    df = oc.to_dataframe()
    for prefix in ("aten.index_copy_", "aten.index_put_", "aten.copy_"):
        assert _ops(df, prefix)["bytes_written"].sum() == 2 * 64 * FP32, prefix
    assert df["bytes_read"].sum() < 1000 * 64 * FP32


# ----------------------------------------------------------------------------------------- attention
class _Attention(nn.Module):
    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False
    ) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_flops_and_bytes(device: str, causal: bool) -> None:
    q, k, v = (torch.zeros(2, 8, 128, 64, device=device) for _ in range(3))
    df = count_ops(_Attention(), q, k, v, causal=causal)
    assert list(df["op"]) == [SDPA_OP]  # one fused op on CPU and on meta alike
    # Rule: dense QK^T + PV whether causal or not (torch's flop registry convention).
    assert df["flops"].sum() == 4 * 2 * 8 * 128 * 128 * 64
    assert df["bytes_read"].sum() == 3 * 2 * 8 * 128 * 64 * FP32
    assert df["bytes_written"].sum() == 2 * 8 * 128 * 64 * FP32


def test_sdpa_gqa_reads_kv_once() -> None:
    q = torch.zeros(1, 32, 16, 128, device="meta", dtype=torch.bfloat16)
    kv = torch.zeros(1, 8, 16, 128, device="meta", dtype=torch.bfloat16)
    df = count_ops(_Attention(), q, kv, kv.clone())
    assert df["flops"].sum() == 4 * 32 * 16 * 16 * 128
    assert df["bytes_read"].sum() == (32 + 8 + 8) * 16 * 128 * BF16


def test_sdpa_unfused_cpu_kernel_gets_flops() -> None:
    # torch's registry has no formula for the CPU flash kernel; ours must not give 0.
    q = torch.zeros(2, 8, 128, 64)
    df = count_ops(_Attention(), q, q.clone(), q.clone(), fuse_sdpa=False)
    cpu = _ops(df, "aten._scaled_dot_product_flash_attention_for_cpu")
    assert len(cpu) == 1 and cpu["flops"].sum() == 4 * 2 * 8 * 128 * 128 * 64


# ----------------------------------------------------------------------------------------- modules
class _RMSNorm(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class _Attn(nn.Module):
    def __init__(self, d: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, d // heads
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, kv_heads * self.hd, bias=False)
        self.v_proj = nn.Linear(d, kv_heads * self.hd, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.kv_heads, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.kv_heads, self.hd).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.o_proj(o.transpose(1, 2).reshape(b, s, d))


class _SwiGLU(nn.Module):
    def __init__(self, d: int, ff: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d, ff, bias=False)
        self.up_proj = nn.Linear(d, ff, bias=False)
        self.down_proj = nn.Linear(ff, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, kv_heads: int, ff: int) -> None:
        super().__init__()
        self.attn_norm, self.attn = _RMSNorm(d), _Attn(d, heads, kv_heads)
        self.mlp_norm, self.mlp = _RMSNorm(d), _SwiGLU(d, ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class _Llama(nn.Module):
    def __init__(self, d: int, layers: int, heads: int, kv_heads: int, ff: int, vocab: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(_Block(d, heads, kv_heads, ff) for _ in range(layers))
        self.norm = _RMSNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm(x))


def test_module_paths_and_summarize() -> None:
    model = _Llama(d=64, layers=2, heads=4, kv_heads=2, ff=128, vocab=100)
    df = count_ops(model, torch.tensor([[1, 2, 3]]))
    linear = df[df["op"].str.match(r"aten\.(mm|addmm)\.")]
    assert sorted(set(linear["module"])) == sorted(
        [f"blocks.{i}.attn.{p}_proj" for i in range(2) for p in "qkvo"]
        + [f"blocks.{i}.mlp.{p}_proj" for i in range(2) for p in ("gate", "up", "down")]
        + ["lm_head"]
    )
    assert set(df.loc[df["op"] == SDPA_OP, "module"]) == {"blocks.0.attn", "blocks.1.attn"}
    assert df.loc[df["op"].str.startswith("aten.embedding"), "module"].tolist() == ["embed"]
    assert df["seq"].tolist() == list(range(len(df)))

    s1 = summarize(df, depth=1)
    assert s1["module"].tolist() == ["embed", "blocks", "norm", "lm_head"]  # first-seen order
    s2 = summarize(df, depth=2)
    assert {"blocks.0", "blocks.1"} <= set(s2["module"])
    for col in ("flops", "bytes_read", "bytes_written"):
        assert s1[col].sum() == s2[col].sum() == df[col].sum()
    assert (s1["bytes_total"] == s1["bytes_read"] + s1["bytes_written"]).all()
    assert summarize(df, depth=0)["module"].tolist() == [""]


def test_hooks_removed_after_count() -> None:
    model = _Llama(d=32, layers=1, heads=2, kv_heads=1, ff=64, vocab=10)
    count_ops(model, torch.tensor([[1]]))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_llama_7b_on_meta_linear_flops_per_token() -> None:
    d, layers, heads, kv_heads, ff, vocab, tokens = 4096, 32, 32, 8, 11008, 32000, 16
    with torch.device("meta"):
        model = _Llama(d, layers, heads, kv_heads, ff, vocab).to(torch.bfloat16)
    hd = d // heads  # 128
    # Hand-derived linear parameters (no biases): per layer q,o: d*d; k,v: d*(8*128); gate, up, down: d*ff.
    per_layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 11008  # 177,209,344
    linear_params = 32 * per_layer + 4096 * 32000  # + lm_head = 5,801,771,008
    assert linear_params == 5_801_771_008
    assert linear_params == sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))

    start = time.perf_counter()
    df = count_ops(model, torch.zeros(1, tokens, dtype=torch.int64, device="meta"))
    elapsed = time.perf_counter() - start
    assert elapsed < 60, f"meta count took {elapsed:.1f}s"

    linear = df[df["op"].str.match(r"aten\.(mm|addmm|linear)\.")]
    assert linear["flops"].sum() / tokens == 2 * linear_params
    attn = df[df["op"] == SDPA_OP]
    assert len(attn) == layers
    assert attn["flops"].sum() == layers * 2 * heads * tokens * tokens * (hd + hd)
    # Weights are read once per linear: 2 bytes each, inside the linear ops' reads.
    assert linear["bytes_read"].sum() >= 2 * linear_params
    emb = df[df["op"].str.startswith("aten.embedding")]
    assert emb["bytes_read"].sum() == tokens * d * BF16 + tokens * I64


class _MoE(nn.Module):
    """Eager top-1 MoE: gather each expert's tokens, run it, scatter-add the result back."""

    def __init__(self, d: int, experts: int) -> None:
        super().__init__()
        self.router = nn.Linear(d, experts, bias=False)
        self.experts = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        choice = self.router(x).argmax(-1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            idx = (choice == e).nonzero().squeeze(-1)
            out.index_add_(0, idx, expert(x[idx]))
        return out


def test_moe_expert_paths_and_row_bytes() -> None:
    torch.manual_seed(0)
    model = nn.ModuleDict({"moe": _MoE(d=32, experts=4)})
    x = torch.randn(64, 32)
    counter = OpCounter(model)
    with torch.no_grad(), counter:
        model["moe"](x)
    df = counter.to_dataframe()
    mm = df[df["op"].str.startswith("aten.mm")]
    assert set(mm["module"]) == {"moe.router"} | {f"moe.experts.{e}" for e in range(4)}
    tokens = mm[mm["module"].str.startswith("moe.experts")]["out_shape"].map(lambda s: s[0])
    assert tokens.sum() == 64  # every token went to exactly one expert
    # The gathers read only each expert's rows (+ indices), the scatter-adds write only those rows.
    gathers = df[df["op"] == "aten.index.Tensor"]
    assert gathers["bytes_written"].sum() == 64 * 32 * FP32
    assert gathers["bytes_read"].sum() == 64 * 32 * FP32 + 64 * I64
    scatters = df[df["op"].str.startswith("aten.index_add_")]
    assert scatters["bytes_written"].sum() == 64 * 32 * FP32


def test_failing_forward_leaves_no_hooks() -> None:
    class Boom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.inner(x)
            raise RuntimeError("boom")

    model = Boom()
    with pytest.raises(RuntimeError, match="boom"):
        count_ops(model, torch.zeros(1, 4))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert len(count_ops(model.inner, torch.zeros(1, 4))) > 0  # the modes were popped: counting still works


# ----------------------------------------------------------------------------------------- live bytes
@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("inplace", [False, True])
def test_live_bytes_follow_allocations_and_frees(device: str, inplace: bool) -> None:
    # 10 tokens through Linear(8, 16) -> ReLU -> Linear(16, 4), fp32. Live after each op (hand count):
    # the first output (640 B); the ReLU output beside it (1,280 B), or nothing new when in place; then
    # Sequential drops the first output and the last Linear adds 160 B. Views of the weights (aten.t)
    # and the input, allocated outside the count, are never counted.
    model = nn.Sequential(
        nn.Linear(8, 16, device=device), nn.ReLU(inplace=inplace), nn.Linear(16, 4, device=device)
    )
    x = torch.zeros(10, 8, device=device)
    df = count_ops(model, x)
    compute = df[~df["op"].str.startswith("aten.t.")]
    assert list(compute["op"]) == [
        "aten.addmm.default",
        f"aten.relu{'_' if inplace else ''}.default",
        "aten.addmm.default",
    ]
    if inplace:
        assert list(compute["live_bytes"]) == [640, 640, 640 + 160]
    else:
        assert list(compute["live_bytes"]) == [640, 1280, 640 + 160]
    assert summarize(df, depth=0)["peak_live_bytes"].iloc[0] == (800 if inplace else 1280)


def test_fills_from_a_template_read_nothing() -> None:
    # zeros_like(x) and x.new_full(...) take x's shape and dtype only: they write their output, read nothing
    class Fills(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return torch.zeros_like(x), x.new_full((10, 7), 2.0), torch.ones_like(x), x.new_zeros(3)

    df = count_ops(Fills(), torch.randn(100, 8))
    assert df["bytes_read"].tolist() == [0, 0, 0, 0]
    assert df["bytes_written"].tolist() == [100 * 8 * 4, 70 * 4, 100 * 8 * 4, 3 * 4]

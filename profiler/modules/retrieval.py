"""Row retrieval shared by the memory layers (as simulator/layers/memory_common is for their costs).

Product keys (PKM, Memory+, PEER): per head, the query's two halves are scored against two sets of n
sub-keys, the top-k of each side form k*k candidate sums, and the top-k of those name rows of the n*n
table (row = i*n + j).

Tucker-decomposed retrieval, TDQKR (UltraMem, UltraMemV2): row and column scores carry r components; the
c cores (r x r each) are summed and their leading singular vectors (torch.linalg.svd on the cores'
device) pre-select the top-m_rc rows and columns; the m_rc x m_rc grid is then scored with every core in
full, the core scores summed, and the top-m grid cells kept. Each kept cell carries one score per core
(multi-core scoring): core i weights slice i of the value row.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from profiler.modules.common import RoutingRecorder
from simulator.errors import ConfigError


# ------------------------------------------------------------------------------------ product keys
def init_keys(heads: int, n_keys: int, half_dim: int, **factory: object) -> nn.Parameter:
    """Sub-keys (heads, 2 sides, n_keys, half_dim), unit-variance scores for a unit-variance query."""
    k = torch.empty(heads, 2, n_keys, half_dim, **factory)  # type: ignore[arg-type]
    if k.device.type != "meta":
        k.normal_(0.0, half_dim**-0.5)
    return nn.Parameter(k)


def product_key_query(
    d_model: int, heads: int, key_dim: int, n_keys: int, *, bias: bool, **factory: object
) -> tuple[nn.Linear, nn.Parameter]:
    """The query projection (d_model -> heads * key_dim) and its sub-keys (heads, 2, n_keys, key_dim/2),
    created in that order (the order the random initialisation draws in)."""
    query = nn.Linear(d_model, heads * key_dim, bias=bias, **factory)  # type: ignore[arg-type]
    return query, init_keys(heads, n_keys, key_dim // 2, **factory)


def product_key_topk(q: torch.Tensor, keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and row indices (T, H, k) of the k best product keys per head.

    q: (T, H, 2*half) queries; keys: (H, 2, n, half) sub-keys.
    """
    n, half = keys.shape[2], keys.shape[3]
    s1 = torch.einsum("thd,hnd->thn", q[..., :half], keys[:, 0])
    s2 = torch.einsum("thd,hnd->thn", q[..., half:], keys[:, 1])
    v1, i1 = s1.topk(k, dim=-1)
    v2, i2 = s2.topk(k, dim=-1)
    cand = (v1.unsqueeze(-1) + v2.unsqueeze(-2)).flatten(-2)  # (T, H, k*k)
    scores, pos = cand.topk(k, dim=-1)
    rows = i1.gather(-1, torch.div(pos, k, rounding_mode="floor")) * n + i2.gather(-1, pos % k)
    return scores, rows


def product_key_select(
    q: torch.Tensor, keys: torch.Tensor, k: int, recorder: RoutingRecorder, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, rows), each (T, H, k): the k best product keys per head, their rows recorded, their
    scores softmaxed per head in fp32 (as lingua's memory layer) and cast to `dtype`."""
    scores, rows = product_key_topk(q, keys, k)
    recorder.record(rows)
    return scores.float().softmax(dim=-1).to(dtype), rows


# ------------------------------------------------------------------------------------ Tucker (TDQKR)
def init_tucker(
    heads: int, n_keys: int, rank: int, key_dim: int, cores: int, **factory: object
) -> tuple[nn.Parameter, nn.Parameter]:
    """Keys (heads, 2 sides, n_keys, rank, key_dim) and cores (heads, cores, rank, rank)."""
    keys = torch.empty(heads, 2, n_keys, rank, key_dim, **factory)  # type: ignore[arg-type]
    core = torch.empty(heads, cores, rank, rank, **factory)  # type: ignore[arg-type]
    if keys.device.type != "meta":
        keys.normal_(0.0, key_dim**-0.5)
        core.normal_(0.0, 1.0)
    return nn.Parameter(keys), nn.Parameter(core)


def check_tucker(owner: str, n_keys: int, m_rc: int, top_m: int, value_dim: int, cores: int) -> None:
    if m_rc > n_keys:
        raise ConfigError(f"{owner}: row/column top {m_rc} exceeds the {n_keys} keys per side")
    if top_m > m_rc * m_rc:
        raise ConfigError(f"{owner}: top_m={top_m} exceeds the {m_rc}x{m_rc} candidate grid")
    if value_dim % cores:
        raise ConfigError(f"{owner}: value_dim={value_dim} is not a multiple of cores={cores}")


def rank_one_vectors(cores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Leading left/right singular vectors (u, t) of each summed core (..., r, r), on the core's device.

    The sign of a singular pair is arbitrary; it is fixed so that u's largest-magnitude entry is
    positive, which keeps the row/column pre-selection deterministic across backends.
    """
    u_mat, _, vh = torch.linalg.svd(cores.float())
    u = u_mat[..., :, 0]
    t = vh[..., 0, :]
    pick = u.abs().argmax(dim=-1, keepdim=True)
    sign = torch.sign(u.gather(-1, pick))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return u * sign, t * sign


class RankOneCache:
    """The rank-one vectors of a layer's summed cores, computed once and again only when the cores change
    (in-place updates such as load_state_dict bump the parameter's version). The cores are fixed at
    inference, as a serving implementation would precompute them; and the SVD, whose CUDA kernel checks
    its convergence on the host, stays out of the steps (they can then be captured as CUDA graphs)."""

    def __init__(self) -> None:
        self._key: tuple[object, ...] | None = None
        self._vectors: tuple[torch.Tensor, torch.Tensor] | None = None

    def vectors(self, cores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (cores._version, cores.data_ptr(), cores.device, cores.dtype, tuple(cores.shape))
        if self._vectors is None or key != self._key:
            with torch.no_grad():
                self._vectors = rank_one_vectors(cores.sum(dim=1))
            self._key = key
        return self._vectors


def tucker_topk(
    s_row: torch.Tensor,
    s_col: torch.Tensor,
    cores: torch.Tensor,
    m_rc: int,
    top_m: int,
    rank_one: RankOneCache | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-core scores (T, H, c, m), row (T, H, m), column (T, H, m)) of the top-m grid cells.

    s_row, s_col: (T, H, r, n) scores per rank; cores: (H, c, r, r). `rank_one` keeps the cores'
    rank-one vectors between steps (without it they are computed on every call).
    """
    t, h, r, _ = s_row.shape
    u, v = (rank_one or RankOneCache()).vectors(cores)  # (H, r) each
    row_pre = torch.einsum("thrn,hr->thn", s_row, u.to(s_row.dtype))
    col_pre = torch.einsum("thrn,hr->thn", s_col, v.to(s_col.dtype))
    ri = row_pre.topk(m_rc, dim=-1).indices  # (T, H, m_rc)
    ci = col_pre.topk(m_rc, dim=-1).indices
    sr = s_row.gather(-1, ri.unsqueeze(2).expand(t, h, r, m_rc))
    sc = s_col.gather(-1, ci.unsqueeze(2).expand(t, h, r, m_rc))
    grid = torch.einsum("thra,hirs,thsb->thiab", sr, cores, sc)  # (T, H, c, m_rc, m_rc)
    pos = grid.sum(dim=2).flatten(-2).topk(top_m, dim=-1).indices  # (T, H, m)
    c = cores.shape[1]
    core_scores = grid.flatten(-2).gather(-1, pos.unsqueeze(2).expand(t, h, c, top_m))
    row = ri.gather(-1, torch.div(pos, m_rc, rounding_mode="floor"))
    col = ci.gather(-1, pos % m_rc)
    return core_scores, row, col

"""Expected number of distinct experts or memory rows touched by T tokens in one forward step.

Every function here is a closed form from shared/docs/cost-reference.md section 2 ("Distinct items touched
by T tokens"), except the busiest expert-parallel device's distinct items (expected_max_distinct_per_device:
an exact recursion, tabulated once per layer shape). All are pure and vectorised over an array of token
counts: numpy arrays (or scalars) in, float64 arrays with the shape of ``tokens`` out (a numpy float64
scalar for a scalar, as ufuncs return).
Token counts may be fractional (the effective-T models of section 2.4); the bounds min(N, T*k) hold for
whole T only, since 1 - (1 - pi)^T > T*pi when 0 < T < 1.

Bad arguments raise :class:`simulator.errors.ConfigError` with one line naming the argument.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from simulator.errors import ConfigError

__all__ = [
    "RoutingModel",
    "distinct_from_probs",
    "distinct_multihead",
    "distinct_uniform",
    "distinct_uniform_var",
    "expected_max_distinct_per_device",
    "expected_max_load",
    "min_bound",
    "numba_available",
    "probs_from_histogram",
    "zipf_probs",
]

ArrayLike = npt.ArrayLike
FloatArray = npt.NDArray[np.float64]
Backend = Literal["auto", "numba", "numpy"]

# Kernel constants for distinct_from_probs (see _build_numba_kernel for the scheme).
_SERIES_RADIUS = 1.0  # |x| <= 1: sum -expm1(x) as a power series of per-item moments
_SERIES_TERMS = 18  # truncation error of the series <= 1/19! ~ 8e-18 relative
_SATURATION = 40.0  # x <= -40: -expm1(x) rounds to exactly 1.0 in float64 (e^-40 ~ 4e-18 < 2^-54)
_CHUNKS = 64  # independent partial sums: load balance across threads, no write races
_BLOCK = 1024  # items summed into block-local totals first: rounding grows with 1024 + N/1024, not N
_REANCHOR = 64  # longest chain of multiplied exponentials before a fresh exp (error ~ chain * 1e-16)
_STEP_DIRECT, _STEP_DOUBLE, _STEP_REPEAT = 0, 1, 2  # how T_j follows T_(j-1), see _grid_steps


# --------------------------------------------------------------------------------------------------
# Argument validation: every failure is one ConfigError line that names the argument.


def _show(value: object) -> str:
    """A one-line, bounded repr for error messages (array reprs span lines)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _number(value: float) -> str:
    """12 for 12.0 and 278784 in full, 0.25 and 1.5e-09 as such: numbers as a config file spells them."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:.6g}"


def _out(values: ArrayLike) -> FloatArray:
    """A float64 result shaped like tokens; 0-d becomes a numpy float64 scalar, as ufuncs return."""
    array = np.asarray(values, dtype=np.float64)
    return array[()] if array.ndim == 0 else array


def _whole(name: str, value: object, minimum: int = 1) -> int:
    """A whole number >= minimum; integral floats (1e8) are accepted, bools are not."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        raise ConfigError(f"{name}={_show(value)} must be a whole number")
    if isinstance(value, float | np.floating) and not (math.isfinite(value) and float(value).is_integer()):
        raise ConfigError(f"{name}={_show(value)} must be a whole number")
    number = int(value)
    if number < minimum:
        raise ConfigError(f"{name}={number} must be >= {minimum}")
    return number


def _real(name: str, value: object, minimum: float = 0.0, *, strict: bool = False) -> float:
    """A finite real number >= minimum (> minimum when strict)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        raise ConfigError(f"{name}={_show(value)} must be a real number")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(f"{name}={number} must be finite")
    if number < minimum or (strict and number == minimum):
        raise ConfigError(f"{name}={_number(number)} must be {'>' if strict else '>='} {_number(minimum)}")
    return number


def _not_above(name: str, value: float, limit_name: str, limit: int) -> None:
    if value > limit:
        raise ConfigError(f"{name}={_number(value)} exceeds {limit_name}={limit}")


def _tokens(tokens: ArrayLike, name: str = "tokens") -> FloatArray:
    """Token counts as a float64 array; each must be finite and >= 0."""
    try:
        values = np.asarray(tokens, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={_show(tokens)} must be numeric") from None
    finite = np.isfinite(values)
    if not finite.all():
        raise ConfigError(f"{name} contains a non-finite value ({values[~finite].flat[0]})")
    if (values < 0).any():
        raise ConfigError(f"{name} contains a negative value ({_number(values[values < 0].flat[0])})")
    return values


def _vector(name: str, values: ArrayLike, upper: float | None) -> FloatArray:
    """A non-empty 1-D float64 array of finite values in [0, upper] (upper=None: no upper limit)."""
    try:
        array = np.ascontiguousarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={_show(values)} must be a numeric array") from None
    if array.ndim != 1 or array.size == 0:
        raise ConfigError(f"{name} must be a non-empty 1-D array, got shape {array.shape}")
    bad = ~np.isfinite(array) | (array < 0)
    if upper is not None:
        bad |= array > upper
    if bad.any():
        where = int(np.argmax(bad))
        rule = "must be finite and >= 0" if upper is None else f"is not in [0, {_number(upper)}]"
        raise ConfigError(f"{name}[{where}]={_number(array[where])} {rule}")
    return array


# --------------------------------------------------------------------------------------------------
# Uniform routing, sections 2.1 and 2.2.


def _one_minus_power(log_base: float, tokens: FloatArray) -> FloatArray:
    """1 - b^T with log_base = ln b <= 0, via -expm1(T ln b): no cancellation when b^T is near 1.

    T = 0 gives 0 even when b = 0 (ln b = -inf), the 0^0 = 1 convention of the formulas.
    """
    with np.errstate(invalid="ignore"):
        result = -np.expm1(tokens * log_base)
    return np.where(tokens == 0, 0.0, result)


def _distinct_uniform(n_items: int, k: int, tokens: FloatArray) -> FloatArray:
    with np.errstate(divide="ignore"):  # k == N: ln(0) = -inf, handled in _one_minus_power
        log_miss = np.log1p(-k / n_items)
    return n_items * _one_minus_power(log_miss, tokens)


def distinct_uniform(n_items: int, k: int, tokens: ArrayLike) -> FloatArray:
    """Expected distinct items read when each of T tokens picks k of N items uniformly (top-k).

    E[U] = N * [1 - (1 - k/N)^T]  (cost-reference.md section 2.1; exact for top-k without replacement,
    where every item has inclusion probability k/N). Evaluated as -N * expm1(T * log1p(-k/N)), accurate for
    N up to 1e8 and T up to 1e7.
    """
    n = _whole("n_items", n_items)
    kk = _whole("k", k)
    _not_above("k", kk, "n_items", n)
    return _out(_distinct_uniform(n, kk, _tokens(tokens)))


def distinct_uniform_var(n_items: int, k: int, tokens: ArrayLike) -> FloatArray:
    """Variance of the number of distinct items under uniform top-k routing (section 2.1).

    Var[U] = N*q1 + N(N-1)*q2 - N^2*q1^2, q1 = (1 - k/N)^T, q2 = [(N-k)(N-k-1) / (N(N-1))]^T.
    Rewritten without the cancellation of those O(N^2) terms as
    Var[U] = N*q1*(1 - q1) + N(N-1)*q1^2 * expm1(T * log1p(-k / ((N-k)(N-1)))),
    using q2 / q1^2 = [1 - k/((N-k)(N-1))]^T (the second term is the negative covariance of misses).
    """
    n = _whole("n_items", n_items)
    kk = _whole("k", k)
    _not_above("k", kk, "n_items", n)
    t = _tokens(tokens)
    if kk == n:  # every item is read by the first token: U is N (or 0 at T = 0) with certainty
        return _out(np.zeros_like(t))
    log_miss = math.log1p(-kk / n)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q1 = np.exp(t * log_miss)
        log_ratio = np.log1p(-kk / ((n - kk) * (n - 1)))  # k < N implies N >= 2; -inf when k = N - 1
        pair = np.where(t == 0, 0.0, np.expm1(t * log_ratio))
        var = n * q1 * _one_minus_power(log_miss, t) + n * (n - 1.0) * q1 * q1 * pair
    return _out(np.maximum(var, 0.0))  # rounding may leave -1e-16 where the variance is 0 (T = 1)


def distinct_multihead(n_items: int, m: int, heads: int, tokens: ArrayLike) -> FloatArray:
    """Expected distinct rows of one shared memory table read by T tokens with H heads of m rows each.

    E[U] = N * [1 - (1 - m/N)^(H*T)]  (cost-reference.md section 2.2; heads independent, collisions between
    heads of one token included). With per-head tables, call distinct_uniform per table and sum instead.
    """
    n = _whole("n_items", n_items)
    mm = _whole("m", m)
    _not_above("m", mm, "n_items", n)
    h = _whole("heads", heads)
    return _out(_distinct_uniform(n, mm, h * _tokens(tokens)))


def min_bound(n_items: int, k: int, tokens: ArrayLike) -> FloatArray:
    """The popular upper bound min(T*k, N) (section 2.1), kept for comparison tables.

    It overstates E[U] most near T = N/k, where it gives N against E[U] ~ 0.63 N. For memory layers pass
    k = H*m.
    """
    n = _whole("n_items", n_items)
    kk = _whole("k", k)
    _not_above("k", kk, "n_items", n)
    return _out(np.minimum(_tokens(tokens) * kk, float(n)))


# --------------------------------------------------------------------------------------------------
# Non-uniform popularity, section 2.3.


def _distinct_from_probs_numpy(probs: FloatArray, ts: FloatArray) -> FloatArray:
    """Reference path: sum_i -expm1(T * log1p(-pi_i)) term by term, in item blocks to bound memory."""
    with np.errstate(divide="ignore"):  # pi = 1 gives ln 0 = -inf; T > 0 here, so the term is exactly 1
        log_miss = np.log1p(-probs)
    out = np.zeros(ts.size)
    block = max(1, (1 << 22) // ts.size)  # ~32 MB of float64 per temporary
    for start in range(0, log_miss.size, block):
        # Items along the contiguous axis, so that numpy's sum is pairwise (rounding ~ log N, not N).
        out -= np.expm1(np.multiply.outer(ts, log_miss[start : start + block])).sum(axis=1)
    return out


def _grid_steps(ts: FloatArray) -> npt.NDArray[np.int64]:
    """Classify each sorted token count by how e^(x T_j) follows from e^(x T_(j-1)) without an exp.

    _STEP_DOUBLE: T_j = 2 T_(j-1) exactly (power-of-two batch sweeps), so e^(x T_j) = (e^(x T_(j-1)))^2.
    _STEP_REPEAT: T_j - T_(j-1) equals the previous step exactly (arange-like grids), so one exp of the
    step per item serves the whole run. _STEP_DIRECT: anything else.
    """
    steps = np.full(ts.size, _STEP_DIRECT, dtype=np.int64)
    if ts.size > 2:
        gaps = np.diff(ts)
        steps[2:][gaps[1:] == gaps[:-1]] = _STEP_REPEAT
    steps[1:][ts[1:] == 2.0 * ts[:-1]] = _STEP_DOUBLE
    return steps


@functools.cache
def _build_numba_kernel() -> Callable[..., tuple[FloatArray, FloatArray, FloatArray]] | None:
    """Compile (or load from numba's on-disk cache) the distinct_from_probs kernel; None without numba.

    Built lazily so that importing this module does not pay numba's ~0.4 s import.

    Per item, with x_j = T_j * ln(1 - pi) over the sorted positive token counts T_j, the term -expm1(x_j)
    falls in one of three ranges, and only the middle one costs exponentials:
      * |x_j| <= 1: -expm1(x) = -sum_n x^n / n!. Each item adds the powers of y = x at the largest such
        T_j (call its index a - 1) to moments[a, n]; smaller T_j reuse them scaled by (T_j / T_(a-1))^n
        (see _combine_kernel_output). Cost: 18 multiply-adds per item instead of one exp per T_j.
      * 1 < |x_j| < 40: 1 - e^x (no cancellation there, so exp rather than expm1), with e^x carried from
        the previous T_j by squaring or by a cached step factor where the grid allows (_grid_steps).
      * |x_j| >= 40: the term is exactly 1.0 in float64, so the item is counted once at the first such j
        and a cumulative sum spreads it to every larger T_j.
    A Zipf law keeps most items in the first range for every practical T: on the 2-CPU development VM
    (shared, so timings varied), 10^7 items x 50 token counts took 0.25-0.5 s for Zipf s = 1 on geometric
    or power-of-two grids, against 1.6-2.1 s for the worst case (every item mid-range at every T, on a
    grid without doubling or equal steps: one exp per item and token count). benchmarks/bench_routing.py
    measures it.
    """
    try:
        import numba
    except ImportError:
        return None
    # Only the explicit prange is parallelised: numba's automatic array-expression passes add seconds of
    # compile time and nothing here needs them (the block loops below are written out for the same reason).
    prange_only = {
        "prange": True,
        "numpy": False,
        "reduction": False,
        "setitem": False,
        "stencil": False,
        "fusion": False,
        "comprehension": False,
        "inplace_binop": False,
    }

    @numba.njit(cache=True, parallel=prange_only)
    def kernel(
        probs: FloatArray, ts: FloatArray, steps: npt.NDArray[np.int64]
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        n = probs.shape[0]
        m = ts.shape[0]
        chunks = min(_CHUNKS, n)
        per_chunk = (n + chunks - 1) // chunks
        moments = np.zeros((chunks, m + 1, _SERIES_TERMS))
        direct = np.zeros((chunks, m))
        saturated = np.zeros((chunks, m + 1))  # slot m: never saturates within the grid
        for c in numba.prange(chunks):
            block_moments = np.zeros((m + 1, _SERIES_TERMS))
            block_direct = np.zeros(m)
            block_saturated = np.zeros(m + 1)
            end = min(n, (c + 1) * per_chunk)
            for start in range(c * per_chunk, end, _BLOCK):
                for j in range(m + 1):
                    block_saturated[j] = 0.0
                    for q in range(_SERIES_TERMS):
                        block_moments[j, q] = 0.0
                for j in range(m):
                    block_direct[j] = 0.0
                for i in range(start, min(end, start + _BLOCK)):
                    p = probs[i]
                    if p <= 0.0:
                        continue  # never chosen: 0 at every T
                    if p >= 1.0:
                        block_saturated[0] += 1.0  # chosen by every token: 1 at every T > 0
                        continue
                    log_miss = math.log1p(-p)
                    # a = #{j: T_j |ln(1-p)| <= radius}; b = #{j: T_j |ln(1-p)| < saturation} >= a
                    limit = _SERIES_RADIUS / -log_miss
                    lo, hi = 0, m
                    while lo < hi:
                        mid = (lo + hi) // 2
                        if ts[mid] <= limit:
                            lo = mid + 1
                        else:
                            hi = mid
                    a = lo
                    limit = _SATURATION / -log_miss
                    hi = m
                    while lo < hi:
                        mid = (lo + hi) // 2
                        if ts[mid] < limit:
                            lo = mid + 1
                        else:
                            hi = mid
                    b = lo
                    if a > 0:
                        y = log_miss * ts[a - 1]
                        power = y
                        for q in range(_SERIES_TERMS):
                            block_moments[a, q] += power
                            power *= y
                    miss = 0.0  # (1 - p)^T_j = e^x_j
                    factor, factor_gap, chain = 0.0, -1.0, 0
                    for j in range(a, b):
                        step = steps[j] if j > a and chain < _REANCHOR else _STEP_DIRECT
                        if step == _STEP_DOUBLE:
                            miss *= miss
                            chain += 1
                        elif step == _STEP_REPEAT:
                            gap = ts[j] - ts[j - 1]
                            if gap != factor_gap:
                                factor, factor_gap = math.exp(log_miss * gap), gap
                            miss *= factor
                            chain += 1
                        else:
                            miss = math.exp(log_miss * ts[j])
                            chain = 0
                        block_direct[j] += 1.0 - miss
                    block_saturated[b] += 1.0
                for j in range(m + 1):
                    saturated[c, j] += block_saturated[j]
                    for q in range(_SERIES_TERMS):
                        moments[c, j, q] += block_moments[j, q]
                for j in range(m):
                    direct[c, j] += block_direct[j]
        return moments, direct, saturated  # per-chunk partial sums, reduced by the caller

    return kernel


def _combine_kernel_output(
    moments: FloatArray, direct: FloatArray, saturated: FloatArray, ts: FloatArray
) -> FloatArray:
    """Assemble E[U](T_j) from the kernel's three partial sums.

    Series part for T_j: -sum_n S_j[n] / n! with S_j[n] = sum_{a > j} (T_j / T_(a-1))^n * moments[a, n],
    built from the largest T down by S_j = moments[j+1] + (T_j / T_(j+1))^n * S_(j+1): ratios <= 1, so
    nothing overflows whatever the range of T, and every sum adds terms of one sign.
    """
    moments, direct, saturated = moments.sum(axis=0), direct.sum(axis=0), saturated.sum(axis=0)
    m = ts.size
    powers = np.arange(1, _SERIES_TERMS + 1)
    inverse_factorials = np.array([1.0 / math.factorial(int(q)) for q in powers])
    out = np.cumsum(saturated[:m]) + direct
    scaled = np.zeros(_SERIES_TERMS)
    for j in range(m - 1, -1, -1):
        ratio = ts[j] / ts[j + 1] if j + 1 < m else 1.0
        scaled = moments[j + 1] + ratio**powers * scaled
        out[j] -= float(np.dot(scaled, inverse_factorials))
    return out


def numba_available() -> bool:
    """True when the numba kernel of distinct_from_probs can be used (numba importable)."""
    return _build_numba_kernel() is not None


def distinct_from_probs(probs: ArrayLike, tokens: ArrayLike, *, backend: Backend = "auto") -> FloatArray:
    """Expected distinct items read by T independent tokens with per-item inclusion probabilities pi_i.

    E[U] = sum_i [1 - (1 - pi_i)^T]  (cost-reference.md section 2.3; exact for any popularity and any
    correlation between the items of one token: only the marginals pi_i enter the mean).

    backend: "numba" (parallel compiled kernel, see _build_numba_kernel), "numpy" (direct term-by-term
    reference, also the fallback), or "auto" (numba when importable). The two agree to ~1e-13 relative.
    """
    p = _vector("probs", probs, upper=1.0)
    t = _tokens(tokens)
    if backend not in ("auto", "numba", "numpy"):
        raise ConfigError(f"backend={_show(backend)} must be 'auto', 'numba' or 'numpy'")
    kernel = None if backend == "numpy" else _build_numba_kernel()
    if backend == "numba" and kernel is None:
        raise ConfigError("backend='numba' requested but numba is not importable")
    # Work on the sorted distinct positive T only; T = 0 reads nothing.
    ts, inverse = np.unique(t.ravel(), return_inverse=True)
    values = np.zeros(ts.size)
    positive = ts > 0
    if positive.any():
        grid = np.ascontiguousarray(ts[positive])
        if kernel is None:
            values[positive] = _distinct_from_probs_numpy(p, grid)
        else:
            values[positive] = _combine_kernel_output(*kernel(p, grid, _grid_steps(grid)), grid)
    return _out(values[inverse.ravel()].reshape(t.shape))


def _water_fill(weights: FloatArray, k: float, *, ordered: bool = False) -> FloatArray:
    """Inclusion probabilities pi_i = min(1, c * w_i) with c such that sum(pi) = k, in place on weights.

    This is the fixed point of the water-filling of section 2.3: normalise the weights to sum k, pin every
    item whose share would exceed 1 at 1, spread the remaining mass k - (pinned) over the others in
    proportion to their weights, and repeat until no pi exceeds 1. The pinned items are the largest
    weights, at most floor(k) of them, so only the floor(k) + 1 largest are candidates: with ordered=True
    the weights are already non-increasing (Zipf) and those are the first ones; otherwise they are found by
    a partial sort (O(N)). The prefix of pinned candidates is then solved for directly. The caller
    guarantees at least k positive weights (otherwise no pi <= 1 sums to k).
    """
    n = weights.size
    last = min(int(k), n - 1)
    if ordered:
        top = np.arange(last + 1)
    else:
        top = np.argpartition(weights, n - 1 - last)[n - 1 - last :]  # the last + 1 largest weights
        top = top[np.argsort(-weights[top], kind="stable")]
    head = weights[top]
    # tails[c] = the weights from the c-th largest on. Summed from one pairwise sum of the rest upwards
    # (a running total minus a prefix would cancel badly under heavy skew).
    weights[top] = 0.0
    rest = float(weights.sum())
    weights[top] = head
    tails = np.empty(last + 1)
    tails[last] = rest + head[last]
    for c in range(last - 1, -1, -1):
        tails[c] = tails[c + 1] + head[c]
    # Pin the shortest prefix after which the next item's proportional share fits: w_c (k - c) <= tail_c.
    # c = last always qualifies (then k - c <= 1, or c = N - 1 and w_c = tail_c).
    pinned = next(c for c in range(last + 1) if head[c] * (k - c) <= tails[c] * (1.0 + 1e-15))
    if tails[pinned] > 0.0:
        weights *= (k - pinned) / tails[pinned]
        weights[top[:pinned]] = 1.0
    else:
        # The remaining weights are all 0 (Zipf weights underflowed, s in the thousands): the limit of the
        # water-filling is to pin whole items in weight order and give the fractional rest to the next one.
        whole = int(k)
        weights[:] = 0.0
        weights[top[:whole]] = 1.0
        if whole < n:
            weights[top[whole]] = k - whole
    return np.minimum(weights, 1.0, out=weights)


def zipf_probs(n_items: int, k: float, s: float) -> FloatArray:
    """Per-token inclusion probabilities of a Zipf popularity law (section 2.3).

    pi_i proportional to i^(-s) (i = 1..N, most popular first), normalised so that sum(pi) = k, then
    water-filled at 1 (_water_fill): items whose share would exceed 1 are pinned at 1 and the remaining
    mass k - c is spread over the rest in proportion to i^(-s), repeated until no pi exceeds 1. Because the
    weights fall with i, the pinned items are a prefix. k may be fractional (an effective k); s = 0 is
    uniform.
    """
    n = _whole("n_items", n_items)
    kk = _real("k", k, 0.0, strict=True)
    _not_above("k", kk, "n_items", n)
    ss = _real("s", s)
    probs = np.arange(1, n + 1, dtype=np.float64)
    np.power(probs, -ss, out=probs)  # the weights i^-s, turned into pi in place (N may be 1e8)
    return _water_fill(probs, kk, ordered=True)


def probs_from_histogram(
    counts: ArrayLike,
    k: int,
    tokens_observed: float | None = None,
    *,
    prior: float = 0.0,
    source: str | None = None,
) -> FloatArray:
    """Per-token inclusion probabilities from a measured routing histogram (section 2.3 recipe).

    counts[i] = how often item i was selected over a run in which every token chose k distinct items.
    The weights count_i + prior are water-filled (_water_fill, as zipf_probs does) to a total of k:
    pi_i = min(1, c * (count_i + prior)), c such that sum(pi) = k. While no pi reaches 1 this is the plug-in
    estimate (count_i + prior) / (n_tokens + prior * N / k) with n_tokens = sum(counts) / k; an item counted
    more often than there were tokens (a histogram recorded with another k, or written by hand) is pinned
    at 1 and its excess spread over the others, so that sum(pi) = k still holds, as it must when every token
    reads k distinct items. With tokens_observed, the total is (sum(counts) + prior N) / (tokens_observed +
    prior N / k) instead (at most k: the counts may not hold more than k selections per token), which is
    below k when the histogram recorded only part of the selections.

    A top-k layer reads k distinct items per token, so fewer than k items with a positive weight cannot
    describe it: that is a ConfigError naming `source` (the file the counts came from) when given.

    Caveat: the plug-in estimate under-estimates E[U]. Items never seen get pi = 0 although their true
    probability is positive, and since 1 - (1 - pi)^T is concave in pi, noise in the estimated pi lowers
    the expected sum as well (Jensen). prior > 0 adds that many pseudo-selections to every item (and the
    matching N*prior/k pseudo-tokens, so sum(pi) stays k), giving unseen items prior / (n_tokens + ...).
    """
    c = _vector("counts", counts, upper=None)
    kk = _whole("k", k)
    _not_above("k", kk, "len(counts)", c.size)
    alpha = _real("prior", prior)
    total = float(c.sum())
    if tokens_observed is None:
        if total == 0.0 and alpha == 0.0:
            raise ConfigError("counts are all zero; give tokens_observed or a prior > 0")
        mass = float(kk)
    else:
        n_tokens = _real("tokens_observed", tokens_observed, 0.0, strict=True)
        if total > kk * n_tokens * (1.0 + 1e-12):
            raise ConfigError(
                f"counts hold {_number(total)} selections, more than k={kk} per token over "
                f"tokens_observed={_number(n_tokens)}"
            )
        mass = min(float(kk), (total + alpha * c.size) / (n_tokens + alpha * c.size / kk))
    weights = c + alpha
    positive = int(np.count_nonzero(weights))
    if positive < kk:
        raise ConfigError(_too_few_items(source, positive, kk))
    return _water_fill(weights, mass)


def _too_few_items(source: str | None, items: int, k: int, *, per_layer: bool = False) -> str:
    where = f"routing.histogram: {source}" if source else "the routing histogram"
    which = " in its sparsest layer" if per_layer else ""
    return (
        f"{where} has {items} item{'' if items == 1 else 's'} with a nonzero count{which}, but the layer "
        f"picks {k} distinct items (experts or rows) per token"
    )


# --------------------------------------------------------------------------------------------------
# The routing model a layer config carries.


@dataclass(frozen=True, eq=False)
class RoutingModel:
    """Which popularity law the distinct-item count of a sparse layer assumes (section 2.3).

    kind = "uniform" (balanced routing), "zipf" (needs s >= 0) or "histogram" (needs counts, the measured
    selections per item id; tokens_observed and prior as in probs_from_histogram). A histogram shorter
    than the layer's n_items is padded with zero counts (ids past the last one ever chosen); a longer one
    is an error. counts is stored as a read-only float64 copy, so the model stays immutable; equality
    compares the values.

    For a histogram, source names where the counts came from (a file, for error messages) and layer_items
    is the fewest items with a nonzero count in any one recorded layer, for counts averaged over several
    layers (whose average has as many nonzero items as the widest layer). Both default to the attributes
    of the same names of counts when it has them, as simulator.routing_io.load_histogram's result does.
    A layer that picks k distinct items per token refuses a histogram with fewer than k items ever chosen
    (unless a prior gives every item a pseudo-count): no top-k routing can have produced it.
    """

    kind: Literal["uniform", "zipf", "histogram"] = "uniform"
    s: float | None = None
    counts: FloatArray | None = None
    tokens_observed: float | None = None
    prior: float = 0.0
    source: str | None = None
    layer_items: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("uniform", "zipf", "histogram"):
            raise ConfigError(f"kind={_show(self.kind)} must be 'uniform', 'zipf' or 'histogram'")
        if self.kind == "zipf":
            if self.s is None:
                raise ConfigError("s is required for kind='zipf' (the Zipf exponent, >= 0)")
            object.__setattr__(self, "s", _real("s", self.s))
        elif self.s is not None:
            raise ConfigError(f"s={_show(self.s)} applies only to kind='zipf', not kind='{self.kind}'")
        if self.kind == "histogram":
            if self.counts is None:
                raise ConfigError("counts is required for kind='histogram' (selections per item)")
            for name in ("source", "layer_items"):  # carried by a loaded histogram (routing_io)
                if getattr(self, name) is None:
                    object.__setattr__(self, name, getattr(self.counts, name, None))
            if self.source is not None and not isinstance(self.source, str):
                raise ConfigError(f"source={_show(self.source)} must be a string")
            if self.layer_items is not None:
                object.__setattr__(self, "layer_items", _whole("layer_items", self.layer_items, 0))
            frozen = _vector("counts", self.counts, upper=None).copy()
            frozen.flags.writeable = False
            object.__setattr__(self, "counts", frozen)
            if self.tokens_observed is not None:
                _real("tokens_observed", self.tokens_observed, 0.0, strict=True)
        else:
            for name in ("counts", "tokens_observed", "source", "layer_items"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"{name} applies only to kind='histogram', not kind='{self.kind}'")
        _real("prior", self.prior)

    def _key(self) -> tuple[Any, ...]:
        counts = None if self.counts is None else self.counts.tobytes()
        return (self.kind, self.s, counts, self.tokens_observed, self.prior, self.source, self.layer_items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RoutingModel):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def distinct(self, n_items: int, k: int, heads: int, tokens: ArrayLike) -> FloatArray:
        """Expected distinct items read by T tokens, each with `heads` independent top-k selections.

        uniform: distinct_uniform (heads = 1) or distinct_multihead. zipf / histogram: per-head marginals
        pi_i from zipf_probs / probs_from_histogram, per token pi_i' = 1 - (1 - pi_i)^heads (independent
        heads with the same popularity, section 2.2), then distinct_from_probs.
        """
        n = _whole("n_items", n_items)
        kk = _whole("k", k)
        _not_above("k", kk, "n_items", n)
        h = _whole("heads", heads)
        t = _tokens(tokens)
        if self.kind == "uniform":
            return _out(_distinct_uniform(n, kk, h * t))
        if self.kind == "zipf":
            assert self.s is not None  # checked in __post_init__
            probs = zipf_probs(n, kk, self.s)
        else:
            assert self.counts is not None
            counts = self.counts
            if counts.size > n:
                raise ConfigError(
                    f"the routing histogram names item {counts.size - 1}, beyond the {n} items "
                    f"(experts or rows) of a layer it is applied to"
                )
            if counts.size < n:  # a histogram indexed by item id ends at the last item ever chosen
                counts = np.concatenate([counts, np.zeros(n - counts.size)])
            if self.prior == 0.0 and self.layer_items is not None and self.layer_items < kk:
                raise ConfigError(_too_few_items(self.source, self.layer_items, kk, per_layer=True))
            probs = probs_from_histogram(
                counts, kk, self.tokens_observed, prior=self.prior, source=self.source
            )
        if h > 1:
            with np.errstate(divide="ignore"):
                probs = -np.expm1(h * np.log1p(-probs))
        return distinct_from_probs(probs, t)


# --------------------------------------------------------------------------------------------------
# Expert parallelism, section 2.5.


def expected_max_load(
    tokens: ArrayLike, k: int, n_experts: int, devices: int
) -> tuple[FloatArray, FloatArray]:
    """Mean and expected maximum token-expert pairs per device under expert parallelism (section 2.5).

    G devices hold N/G experts each; with uniform top-k routing a device receives mean = T*k/G pairs, and
    the step waits for the most loaded one, approximated (Gaussian, [D] in the reference) as
    E[max] ~ mean + std * sqrt(2 ln G), with
    std^2 = T * k * (1/G) * (1 - 1/G) * (N - k)/(N - 1), the exact variance (a token's pairs on one device
    are hypergeometric). The reference's T*k/G*(1 - 1/G) omits the last factor, which matters only when k
    is a sizeable fraction of N (OLMoE: 56/63).
    When G does not divide N, the largest shards hold ceil(N/G) experts; E[max] then uses that shard's
    mean and std (share e/N in place of 1/G) while `mean` stays the average T*k/G. E[max] is capped at
    T * min(k, e), the most one device can receive, and floored by the expected maximum of distinct experts
    read per device (exact, see expected_max_distinct_per_device): each expert a device reads was sent at
    least one pair, so the busiest device by pairs is never below the busiest by experts read, and a MoE
    layer's FLOPs (from this) never describe a lighter busiest device than its weight bytes do. The floor
    binds at small T, where the Gaussian is poor: one token of top-1 routing over 32 devices of one expert
    each sends its one pair to one device (E[max] = 1), where the Gaussian gives 0.49. Returns (mean,
    expected_max), each shaped like tokens.
    """
    t = _tokens(tokens)
    n = _whole("n_experts", n_experts)
    kk = _whole("k", k)
    _not_above("k", kk, "n_experts", n)
    g = _whole("devices", devices)
    _not_above("devices", g, "n_experts", n)  # a device without experts is a config mistake
    largest_shard = -(-n // g)
    share = largest_shard / n
    finite_population = (n - kk) / (n - 1) if n > 1 else 0.0
    std = np.sqrt(t * kk * share * (1.0 - share) * finite_population)
    expected_max = np.minimum(t * kk * share + std * math.sqrt(2.0 * math.log(g)), t * min(kk, largest_shard))
    if g > 1:
        expected_max = np.maximum(expected_max, _busiest_at_tokens(n, kk, g, t))
    mean = t * kk / g
    return _out(mean), _out(expected_max)


def _log_factorials(n: int) -> FloatArray:
    """ln(i!) for i = 0..n (lgamma per entry: a cumulative sum of logs would drift by ~n ulps)."""
    return np.array([math.lgamma(i + 1.0) for i in range(n + 1)])


def _shard_sizes(n_items: int, devices: int) -> list[int]:
    """Whole items per device, largest shards first (ceil(N/G) on the first N mod G devices)."""
    size, larger = divmod(n_items, devices)
    return [size + 1] * larger + [size] * (devices - larger)


def _busiest_given_touched(n_items: int, devices: int) -> FloatArray:
    """M[u] = E[max over shards of the touched items on a shard], u touched items placed uniformly at random.

    E[max] = sum_{x >= 1} P(max >= x) = sum_x (1 - R_x(u)) with R_x(u) = P(every shard holds < x of them).
    R_x is built by adding the shards one at a time: with s slots so far holding v of the touched items,
    a new shard of b slots holds j of the v + j touched items of the s + b slots with the hypergeometric
    probability C(s, v) C(b, j) / C(s + b, v + j), so
    R'_x(v + j) = sum_{j < x} R_x(v) C(s, v) C(b, j) / C(s + b, v + j). Every term is a probability, so
    nothing cancels or overflows; cost ~ N^2 ceil(N/G) / 2 multiply-adds in numpy rows of N.
    """
    sizes = _shard_sizes(n_items, devices)
    top = sizes[0]
    lf = _log_factorials(n_items)
    below = np.zeros((top, n_items + 1))  # below[x - 1, v] = R_x(v) over the shards added so far
    below[:, 0] = 1.0
    slots = 0
    for size in sizes:
        grown = np.zeros_like(below)
        v = np.arange(slots + 1)
        old = lf[slots] - lf[v] - lf[slots - v]  # ln C(s, v)
        for j in range(min(size, top - 1) + 1):  # j new touched items keep only the x > j maxima below x
            new = lf[size] - lf[j] - lf[size - j]  # ln C(b, j)
            total = lf[slots + size] - lf[v + j] - lf[slots + size - v - j]  # ln C(s + b, v + j)
            grown[j:, j : j + slots + 1] += below[j:, : slots + 1] * np.exp(old + new - total)
        below = grown
        slots += size
    return (1.0 - below).sum(axis=0)


@functools.lru_cache(maxsize=64)
def _busiest_shard_curve(n_items: int, k: int, devices: int) -> FloatArray:
    """E[max over the G shards of the distinct items touched on a shard] at T = 0, 1, 2, ... whole tokens,
    under uniform top-k routing, up to the T where it is within 1e-12 of ceil(N/G) (read-only, cached).

    Exact: under uniform routing every item is alike, so given U = u distinct items touched in all, the
    touched set is a uniformly random u-subset and the busiest shard holds M[u] of them on average
    (_busiest_given_touched); U itself follows a Markov chain over tokens (from u touched, a token adds j
    new items with probability C(N - u, j) C(u, k - j) / C(N, k)), stepped exactly, and
    E[max](T) = sum_u P(U_T = u) M[u]. Steps: until some shard is certainly full, roughly
    (N / (G k)) (ln C(N, G) + 28): 202 for DeepSeek-V3 at G = 8 (256 experts, top-8), 2 for Mixtral at
    G = 8. Once per (N, k, G) and process: ~7 ms for DeepSeek-V3 at G = 8, ~0.1-0.2 s for 1024 experts.
    """
    touched_max = _busiest_given_touched(n_items, devices)
    top = float(-(-n_items // devices))
    lf = _log_factorials(n_items)
    u = np.arange(n_items + 1)[:, None]
    j = np.arange(k + 1)[None, :]
    valid = (j <= n_items - u) & (k - j <= u)

    def log_comb(a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]) -> FloatArray:
        a, b = np.where(valid, a, 0), np.where(valid, b, 0)  # indices kept in range where invalid
        return lf[a] - lf[b] - lf[a - b]

    log_step = log_comb(n_items - u, j) + log_comb(u, k - j) - (lf[n_items] - lf[k] - lf[n_items - k])
    step = np.exp(log_step)[valid]  # P(u -> u + j), flattened over the valid (u, j)
    source, target = np.nonzero(valid)[0], (u + j)[valid]
    dist = np.zeros(n_items + 1)
    dist[0] = 1.0
    values = [0.0]
    while top - values[-1] > 1e-12 * top:
        dist = np.bincount(target, weights=dist[source] * step, minlength=n_items + 1)
        dist /= dist.sum()  # rows of the chain sum to 1 up to rounding; keep that from drifting
        values.append(float(dist @ touched_max))
    curve = np.array(values)
    curve.flags.writeable = False
    return curve


def expected_max_distinct_per_device(n_items: int, k: int, devices: int, distinct: ArrayLike) -> FloatArray:
    """Expected distinct items on the busiest of `devices` shards, given E[U] over all N items.

    In memory-bound decode the step waits for the device that reads the most weights. Under uniform top-k
    routing and whole T this is exact (_busiest_shard_curve): the G shards are not independent (one token
    touches exactly k items in all), which is what makes one token over 8 devices of one expert each always
    load exactly one expert on the busiest device, for any k. Approximations, for the other cases:
      * any routing is replaced by uniform routing at the token count T' that touches as many items on
        average, T' = ln(1 - E[U]/N) / ln(1 - k/N) (T' = T for uniform routing; T' = 1 at one token for any
        routing, since every token reads k distinct items). This keeps the count of items touched but
        places them as if at random: with skew, the devices that happen to hold the popular items are not
        singled out.
      * fractional T' is interpolated linearly between whole token counts.
    Shards are whole items, ceil(N/G) on the largest. Cost: a per-(N, k, G) table computed once, then one
    interpolation per point.
    """
    n = _whole("n_items", n_items)
    kk = _whole("k", k)
    _not_above("k", kk, "n_items", n)
    g = _whole("devices", devices)
    _not_above("devices", g, "n_items", n)
    u = np.minimum(_tokens(distinct, "distinct"), float(n))  # rounding may put E[U] a hair above N
    if g == 1:
        return _out(u)
    if kk == n:  # every token reads every item
        tokens = np.where(u > 0, np.inf, 0.0)
    else:
        with np.errstate(divide="ignore"):  # E[U] = N: T' = inf, every shard full
            tokens = np.log1p(-u / n) / math.log1p(-kk / n)
    return _out(_busiest_at_tokens(n, kk, g, tokens))


def _busiest_at_tokens(n_items: int, k: int, devices: int, tokens: FloatArray) -> FloatArray:
    """_busiest_shard_curve at (possibly fractional or infinite) token counts, linear between whole ones."""
    curve = _busiest_shard_curve(n_items, k, devices)
    top = float(-(-n_items // devices))
    return np.interp(tokens, np.arange(curve.size, dtype=np.float64), curve, right=top)

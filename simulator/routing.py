"""Expected number of distinct experts or memory rows touched by T tokens in one forward step.

Every function here is a closed form from shared/docs/cost-reference.md section 2 ("Distinct items touched
by T tokens"). All are pure and vectorised over an array of token counts: numpy arrays (or scalars) in,
float64 arrays with the shape of ``tokens`` out (a numpy float64 scalar for a scalar, as ufuncs return).
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


def zipf_probs(n_items: int, k: float, s: float) -> FloatArray:
    """Per-token inclusion probabilities of a Zipf popularity law (section 2.3).

    pi_i proportional to i^(-s) (i = 1..N, most popular first), normalised so that sum(pi) = k, then
    water-filled at 1: items whose share would exceed 1 are pinned at 1 and the remaining mass k - c is
    spread over the rest in proportion to i^(-s), repeated until no pi exceeds 1. Because the weights fall
    with i, the pinned items are a prefix; this solves for the prefix length c directly (the fixed point of
    the clip-and-renormalise iteration) in O(N). k may be fractional (an effective k); s = 0 is uniform.
    """
    n = _whole("n_items", n_items)
    kk = _real("k", k, 0.0, strict=True)
    _not_above("k", kk, "n_items", n)
    ss = _real("s", s)
    probs = np.arange(1, n + 1, dtype=np.float64)
    np.power(probs, -ss, out=probs)  # the weights i^-s, turned into pi in place (N may be 1e8)
    # tails[c] = sum of the weights from c on, for the candidate prefix lengths c <= floor(k), accumulated
    # upwards from one pairwise sum (a running total minus a prefix would cancel badly under heavy skew).
    last = min(int(kk), n - 1)
    tails = np.empty(last + 1)
    tails[last] = probs[last:].sum()
    for c in range(last - 1, -1, -1):
        tails[c] = tails[c + 1] + probs[c]
    # Pin the shortest prefix after which the next item's proportional share fits: w_c (k - c) <= tail_c.
    # c = last always qualifies (then k - c <= 1, or c = N - 1 and w_c = tail_c).
    pinned = next(c for c in range(last + 1) if probs[c] * (kk - c) <= tails[c] * (1.0 + 1e-15))
    if tails[pinned] > 0.0:
        probs[pinned:] *= (kk - pinned) / tails[pinned]
        probs[:pinned] = 1.0
    else:
        # The remaining weights underflowed to 0 (s in the thousands); the water-filling limit is to pin
        # whole items in popularity order and give the fractional rest to the next one.
        whole = int(kk)
        probs[:] = 0.0
        probs[:whole] = 1.0
        if whole < n:
            probs[whole] = kk - whole
    return np.minimum(probs, 1.0, out=probs)


def probs_from_histogram(
    counts: ArrayLike, k: int, tokens_observed: float | None = None, *, prior: float = 0.0
) -> FloatArray:
    """Per-token inclusion probabilities from a measured routing histogram (section 2.3 recipe).

    counts[i] = how often item i was selected over a run in which every token chose k items.
    pi_i = (count_i + prior) / (n_tokens + prior * N / k), clipped to 1, with n_tokens = tokens_observed,
    or sum(counts) / k when it is not given. With prior = 0 this is the plug-in estimate count_i / n_tokens.

    Caveat: the plug-in estimate under-estimates E[U]. Items never seen get pi = 0 although their true
    probability is positive, and since 1 - (1 - pi)^T is concave in pi, noise in the estimated pi lowers
    the expected sum as well (Jensen). prior > 0 adds that many pseudo-selections to every item (and the
    matching N*prior/k pseudo-tokens, so sum(pi) stays k), giving unseen items prior / (n_tokens + ...).
    """
    c = _vector("counts", counts, upper=None)
    kk = _whole("k", k)
    _not_above("k", kk, "len(counts)", c.size)
    alpha = _real("prior", prior)
    if tokens_observed is None:
        total = float(c.sum())
        if total == 0.0 and alpha == 0.0:
            raise ConfigError("counts are all zero; give tokens_observed or a prior > 0")
        n_tokens = total / kk
    else:
        n_tokens = _real("tokens_observed", tokens_observed, 0.0, strict=True)
    return np.minimum((c + alpha) / (n_tokens + alpha * c.size / kk), 1.0)


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
    """

    kind: Literal["uniform", "zipf", "histogram"] = "uniform"
    s: float | None = None
    counts: FloatArray | None = None
    tokens_observed: float | None = None
    prior: float = 0.0

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
            frozen = _vector("counts", self.counts, upper=None).copy()
            frozen.flags.writeable = False
            object.__setattr__(self, "counts", frozen)
            if self.tokens_observed is not None:
                _real("tokens_observed", self.tokens_observed, 0.0, strict=True)
        else:
            for name in ("counts", "tokens_observed"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"{name} applies only to kind='histogram', not kind='{self.kind}'")
        _real("prior", self.prior)

    def _key(self) -> tuple[Any, ...]:
        counts = None if self.counts is None else self.counts.tobytes()
        return (self.kind, self.s, counts, self.tokens_observed, self.prior)

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
            probs = probs_from_histogram(counts, kk, self.tokens_observed, prior=self.prior)
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
    T * min(k, e), the most one device can receive. Returns (mean, expected_max), each shaped like tokens.
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
    mean = t * kk / g
    return _out(mean), _out(expected_max)


def expected_max_distinct_per_device(n_items: int, devices: int, distinct: ArrayLike) -> FloatArray:
    """Expected distinct items on the busiest of `devices` shards, given E[U] over all N items.

    Each item is touched with probability p = E[U]/N (the mean over items, whatever the routing); a
    shard of e = ceil(N/G) items then holds X ~ Binomial(e, p) touched items, and treating the G shards
    as independent, E[max] = sum_{x=1..e} (1 - P(X < x)^G), computed exactly from the binomial pmf.
    In memory-bound decode the step waits for that device.
    """
    n = _whole("n_items", n_items)
    g = _whole("devices", devices)
    _not_above("devices", g, "n_items", n)
    u = np.asarray(distinct, dtype=np.float64)
    if g == 1:
        return _out(u)
    shard = -(-n // g)
    p = np.clip(u / n, 0.0, 1.0)
    q = 1.0 - p
    pmf = q**shard  # P(X = 0), then the recurrence pmf(x+1) = pmf(x) (e - x)/(x + 1) p/q
    cdf = pmf.copy()
    expected = np.zeros_like(p)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(q > 0, p / np.where(q > 0, q, 1.0), 0.0)
    for x in range(1, shard + 1):
        expected += 1.0 - np.clip(cdf, 0.0, 1.0) ** g  # P(max >= x)
        pmf = pmf * (shard - x + 1) / x * ratio
        cdf = cdf + pmf
    return _out(np.where(q > 0, expected, float(shard)))

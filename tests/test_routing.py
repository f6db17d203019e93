"""simulator.routing against sources that do not share its code.

- Monte Carlo of real top-k draws (uniform, and Zipf-skewed by the Gumbel-top-k trick), each estimate with
  its own standard error checked before the formula is compared to it.
- An exact dynamic programme over the number of distinct items (no sampling noise) for mean and variance.
- The worked numbers printed in shared/docs/cost-reference.md section 2.9, to their printed precision.
- The defining properties of each function (hypothesis), and the one-line errors of bad inputs.
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Callable
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator import routing
from simulator.errors import ConfigError
from simulator.routing import (
    RoutingModel,
    distinct_from_probs,
    distinct_multihead,
    distinct_uniform,
    distinct_uniform_var,
    expected_max_load,
    min_bound,
    numba_available,
    probs_from_histogram,
    zipf_probs,
)

NO_NUMBA = pytest.mark.skipif(not numba_available(), reason="numba is not importable")
BACKENDS = ["numpy", pytest.param("numba", marks=NO_NUMBA)]
MAX_KEYS = 1 << 22  # random keys per Monte Carlo batch (32 MB of float64)


# --------------------------------------------------------------------------------------------------
# Samplers. Each returns the k distinct items chosen by each of `rows` tokens, shape (rows, k).


def uniform_topk(rng: np.random.Generator, n: int, k: int, rows: int) -> np.ndarray:
    """Uniformly random k-subsets: the k smallest of N random keys, or whole-row rejection for large N."""
    if n <= 4096:
        return np.argpartition(rng.random((rows, n)), k - 1, axis=1)[:, :k]
    # Draw k with replacement and redraw every row that repeated an item: an accepted row is a uniform
    # k-subset (every ordered k-tuple of distinct items is equally likely).
    out = rng.integers(0, n, size=(rows, k))
    while True:
        ordered = np.sort(out, axis=1)
        repeated = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
        if not repeated.any():
            return out
        out[repeated] = rng.integers(0, n, size=(int(repeated.sum()), k))


def gumbel_topk(rng: np.random.Generator, log_weights: np.ndarray, k: int, rows: int) -> np.ndarray:
    """k distinct items per token, drawn successively without replacement in proportion to the weights."""
    keys = log_weights - np.log(-np.log(rng.random((rows, log_weights.size))))
    return np.argpartition(-keys, k - 1, axis=1)[:, :k]


def distinct_counts(sample: Callable[[int], np.ndarray], n: int, tokens: int, trials: int) -> np.ndarray:
    """Distinct items read by `tokens` tokens, for each of `trials` independent steps."""
    counts = np.empty(trials)
    per_batch = max(1, MAX_KEYS // (tokens * max(n, 1024)))
    for start in range(0, trials, per_batch):
        batch = min(per_batch, trials - start)
        chosen = sample(batch * tokens).reshape(batch, -1)
        seen = np.zeros((batch, n), dtype=bool)
        seen[np.arange(batch)[:, None], chosen] = True
        counts[start : start + batch] = seen.sum(axis=1)
    return counts


def assert_matches_mc(predicted: float, samples: np.ndarray, rel: float = 0.01) -> None:
    mean = samples.mean()
    standard_error = samples.std(ddof=1) / math.sqrt(samples.size)
    assert standard_error <= 0.003 * mean, f"Monte Carlo too noisy: SE {standard_error / mean:.2%}"
    assert predicted == pytest.approx(mean, rel=rel), f"SE {standard_error:.3g}"


# --------------------------------------------------------------------------------------------------
# Uniform top-k: Monte Carlo, exact DP, and the paper's numbers.


@pytest.mark.parametrize(
    ("n", "k", "tokens", "trials"),
    [
        (64, 8, [1, 4, 16, 64], 3000),
        (8, 2, [1, 2, 4, 8], 12000),
        (128, 8, [4, 16, 64], 1500),
        (278784, 128, [64, 1024, 8192], 4),  # UltraMemV2-1B/7B rows; Var[U] is tiny, few trials do
    ],
)
def test_distinct_uniform_matches_monte_carlo(n: int, k: int, tokens: list[int], trials: int) -> None:
    rng = np.random.default_rng(n * 1000 + k)
    predicted = distinct_uniform(n, k, tokens)
    for t, value in zip(tokens, predicted, strict=True):
        samples = distinct_counts(lambda rows: uniform_topk(rng, n, k, rows), n, t, trials)
        assert_matches_mc(float(value), samples)


def exact_distinct_moments(n: int, k: int, tokens: int) -> tuple[float, float]:
    """Mean and variance of U by propagating its exact distribution token by token.

    From u distinct items, a uniform k-subset adds j new ones with probability C(N-u, j) C(u, k-j) / C(N, k)
    (hypergeometric). Shares nothing with the closed forms under test.
    """
    dist = np.zeros(n + 1)
    dist[0] = 1.0
    for _ in range(tokens):
        step = np.zeros(n + 1)
        for u in np.nonzero(dist)[0]:
            for j in range(max(0, k - u), min(k, n - u) + 1):
                step[u + j] += dist[u] * math.comb(n - u, j) * math.comb(u, k - j) / math.comb(n, k)
        dist = step
    values = np.arange(n + 1)
    mean = float(dist @ values)
    return mean, float(dist @ (values - mean) ** 2)


@pytest.mark.parametrize(("n", "k"), [(8, 2), (10, 3), (64, 8), (5, 4), (7, 7), (1, 1)])
def test_mean_and_variance_equal_exact_distribution(n: int, k: int) -> None:
    tokens = [0, 1, 2, 3, 5, 8, 13, 20]
    mean = distinct_uniform(n, k, tokens)
    var = distinct_uniform_var(n, k, tokens)
    for t, m, v in zip(tokens, mean, var, strict=True):
        exact_mean, exact_var = exact_distinct_moments(n, k, t)
        assert m == pytest.approx(exact_mean, rel=1e-12, abs=1e-12)
        assert v == pytest.approx(exact_var, rel=1e-9, abs=1e-10)


@pytest.mark.parametrize(("n", "k", "tokens"), [(8, 2, 3), (64, 8, 8), (128, 8, 16), (34, 2, 12)])
def test_variance_matches_monte_carlo(n: int, k: int, tokens: int) -> None:
    rng = np.random.default_rng(7 * n + tokens)
    samples = distinct_counts(lambda rows: uniform_topk(rng, n, k, rows), n, tokens, 20000)
    # Sample variance of 20,000 draws has ~1 % relative standard error; 5 % is a wide margin.
    assert float(distinct_uniform_var(n, k, tokens)) == pytest.approx(samples.var(ddof=1), rel=0.05)


def test_uniform_is_accurate_for_huge_tables() -> None:
    # Small-T expansion E[U] = kT - C(T,2) k^2/N + C(T,3) k^3/N^2 - ...; the naive 1 - (1 - k/N)^T would
    # lose ~1e-8 relative at N = 1e8.
    n, k = 100_000_000, 4
    for t in (1, 10, 1000):
        series = sum((-1) ** (j + 1) * math.comb(t, j) * k**j / n ** (j - 1) for j in range(1, 5))
        assert float(distinct_uniform(n, k, t)) == pytest.approx(series, rel=1e-13)
    big = distinct_uniform(n, k, 10_000_000)
    assert float(big) == pytest.approx(n * (1 - math.exp(10_000_000 * math.log1p(-k / n))), rel=1e-12)


# The table of section 2.9, as printed: (N, k) -> values at T = 1, 4, 16, 64, 256.
MOE_TABLE = {
    (8, 2): ["2", "5.5", "7.9", "8", "8"],  # Mixtral 8x7B
    (34, 2): ["2", "7.3", "21.1", "33.3", "34"],  # UltraMem's MoE-1.6B-2in34
    (60, 4): ["4", "14.5", "40.1", "59.3", "60"],  # Qwen1.5-MoE-A2.7B
    (64, 8): ["8", "26.5", "56.4", "64", "64"],  # OLMoE-1B-7B
    (64, 6): ["6", "20.8", "50.8", "63.9", "64"],  # DeepSeekMoE-16B / V2-Lite
    (128, 8): ["8", "29.1", "82.4", "125.9", "128"],  # Qwen3-30B-A3B / 235B-A22B
    (256, 8): ["8", "30.5", "102.0", "222.4", "255.9"],  # DeepSeek-V3
}


def assert_printed(value: float, printed: str) -> None:
    """value rounds to the printed figure: within half a unit of its last printed digit."""
    exponent = Decimal(printed.replace(",", "")).as_tuple().exponent
    assert isinstance(exponent, int)
    assert abs(value - float(printed.replace(",", ""))) <= 0.5 * 10.0**exponent, (value, printed)


@pytest.mark.parametrize(("model", "printed"), MOE_TABLE.items())
def test_worked_moe_numbers(model: tuple[int, int], printed: list[str]) -> None:
    for value, text in zip(distinct_uniform(*model, [1, 4, 16, 64, 256]), printed, strict=True):
        assert_printed(float(value), text)


@pytest.mark.parametrize(
    ("n", "rows_per_token", "tokens", "distinct", "ratio"),
    [
        (1_048_576, 128, 64, "8,161", "0.996"),  # Memory+ (H*m = 128)
        (1_048_576, 128, 1024, "123,218", "0.94"),
        (1_048_576, 128, 16384, "906,684", "0.43"),
        (262_144, 128, 1024, "103,165", "0.79"),  # PKM default
        (278_784, 128, 64, "8,075", "0.99"),  # UltraMemV2-1B/7B per-layer table, H = 1, m = 128
        (278_784, 128, 1024, "104,589", "0.80"),
    ],
)
def test_worked_memory_numbers(n: int, rows_per_token: int, tokens: int, distinct: str, ratio: str) -> None:
    # The reference treats the H*m rows of a token as one uniform subset: heads = 1, m = H*m.
    value = float(distinct_multihead(n, rows_per_token, 1, tokens))
    assert_printed(value, distinct)
    assert_printed(value / (tokens * rows_per_token), ratio)
    assert value == pytest.approx(float(distinct_uniform(n, rows_per_token, tokens)), rel=1e-15)


def test_multihead_counts_heads_as_extra_draws() -> None:
    # H independent heads of m rows = H*T uniform m-subsets of the shared table (section 2.2).
    rng = np.random.default_rng(11)
    n, m, heads, tokens = 512, 16, 4, 8
    samples = distinct_counts(lambda rows: uniform_topk(rng, n, m, rows), n, heads * tokens, 2000)
    assert_matches_mc(float(distinct_multihead(n, m, heads, tokens)), samples)
    assert float(distinct_multihead(n, m, heads, tokens)) < float(distinct_uniform(n, heads * m, tokens))


# --------------------------------------------------------------------------------------------------
# Skewed popularity.


@pytest.mark.parametrize(
    ("n", "k", "s", "trials"),  # trials at T = 2, 8, 32, 128, sized for a standard error of ~0.2 %
    [
        (64, 8, 1.0, [2000, 2000, 800, 100]),
        (8, 2, 1.0, [12000, 7000, 800, 100]),
        (128, 8, 1.2, [2000, 2500, 1200, 400]),
    ],
)
def test_distinct_from_probs_matches_gumbel_topk(n: int, k: int, s: float, trials: list[int]) -> None:
    rng = np.random.default_rng(n + k)
    log_weights = -s * np.log(np.arange(1, n + 1))

    def sample(rows: int) -> np.ndarray:
        return gumbel_topk(rng, log_weights, k, rows)

    # Marginal inclusion probabilities of one token, from a histogram of 100,000 single-token draws (for
    # successive sampling they are not the normalised weights, so they must be measured).
    single = 100_000
    counts = np.zeros(n)
    per_batch = MAX_KEYS // n
    for start in range(0, single, per_batch):
        counts += np.bincount(sample(min(per_batch, single - start)).ravel(), minlength=n)
    marginals = probs_from_histogram(counts, k)
    np.testing.assert_allclose(marginals, counts / single, rtol=1e-12)
    for tokens, runs in zip((2, 8, 32, 128), trials, strict=True):
        samples = distinct_counts(sample, n, tokens, runs)
        assert_matches_mc(float(distinct_from_probs(marginals, tokens)), samples)


def test_mean_depends_only_on_marginals() -> None:
    # Items drawn independently (Poisson sampling, a random number of items per token) with the Zipf
    # marginals: the same formula holds, as it does for the correlated Gumbel-top-k draws above.
    rng = np.random.default_rng(5)
    n, k, s = 96, 6, 1.1
    probs = zipf_probs(n, k, s)
    model = RoutingModel("zipf", s=s)
    for tokens, trials in ((3, 12000), (12, 4000), (48, 1200)):
        hits = rng.random((trials, tokens, n)) < probs
        samples = hits.any(axis=1).sum(axis=1).astype(float)
        assert_matches_mc(float(model.distinct(n, k, 1, tokens)), samples)


def iterative_water_filling(weights: np.ndarray, k: float) -> np.ndarray:
    """The definition in section 2.3, literally: normalise to k, clip at 1, renormalise the rest, repeat."""
    probs = weights * k / weights.sum()
    pinned = np.zeros(weights.size, dtype=bool)
    while (probs > 1 + 1e-13).any():
        pinned |= probs >= 1
        if pinned.all():
            return np.ones(weights.size)
        probs = np.where(pinned, 1.0, weights * (k - pinned.sum()) / weights[~pinned].sum())
    return probs


@pytest.mark.parametrize(
    ("n", "k", "s"),
    [(64, 8, 1.0), (8, 2, 0.5), (128, 8, 1.2), (1000, 100, 1.5), (50, 49.5, 2.0), (10, 3, 0), (20, 20, 1.0)],
)
def test_zipf_probs_definition(n: int, k: float, s: float) -> None:
    probs = zipf_probs(n, k, s)
    assert probs.sum() == pytest.approx(k, abs=1e-12)
    assert probs.max() <= 1.0 and probs.min() >= 0.0
    assert (np.diff(probs) <= 0).all()
    free = np.nonzero(probs < 1.0)[0]
    if free.size > 1 and s > 0:
        i = free[:-1] + 1.0  # 1-based rank of the left neighbour
        np.testing.assert_allclose(probs[free[1:]] / probs[free[:-1]], ((i + 1) / i) ** -s, rtol=1e-12)
    reference = iterative_water_filling(np.arange(1, n + 1) ** -float(s), k)
    np.testing.assert_allclose(probs, reference, rtol=1e-12)


def test_zipf_probs_extreme_skew_pins_the_top_items() -> None:
    probs = zipf_probs(10, 3.25, 5000.0)  # weights past the first underflow to 0
    np.testing.assert_allclose(probs[:4], [1.0, 1.0, 1.0, 0.25])
    assert probs.sum() == pytest.approx(3.25, abs=1e-12) and probs[4:].max() == 0.0


def test_probs_from_histogram_options() -> None:
    counts = np.array([30.0, 10.0, 0.0, 0.0])  # 20 tokens x k = 2 selections
    np.testing.assert_allclose(probs_from_histogram(counts, 2), [1.0, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(probs_from_histogram(counts, 2, tokens_observed=40), [0.75, 0.25, 0, 0])
    smoothed = probs_from_histogram(counts, 2, prior=1.0)  # 4 pseudo-selections = 2 pseudo-tokens
    np.testing.assert_allclose(smoothed, [1.0, 11 / 22, 1 / 22, 1 / 22])
    assert (smoothed[2:] > 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_agree_with_direct_sum(backend: str) -> None:
    rng = np.random.default_rng(3)
    probs = np.concatenate(
        [[0.0, 1.0, 1e-300, 1e-12, 0.999999, 0.5], rng.random(500) ** 6, zipf_probs(20000, 64, 1.1)]
    )
    grids = [
        np.array([[0, 3, 1.5], [1e7, 3, 0]]),  # zero, fractional, duplicates, unsorted, 2-D
        2.0 ** np.arange(30),  # doubling steps
        np.arange(1.0, 400.0) * 100,  # equal steps, chains past the re-anchoring length
        np.geomspace(1, 1e8, 37),
    ]
    log_miss = np.log1p(-probs[probs < 1])
    for tokens in grids:
        expected = np.zeros(tokens.shape)
        for index, t in np.ndenumerate(tokens):  # term by term, in plain float64
            expected[index] = (probs == 1).sum() * (t > 0) - np.expm1(t * log_miss).sum()
        got = distinct_from_probs(probs, tokens, backend=backend)
        assert got.shape == tokens.shape
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert distinct_from_probs(probs, 5.0, backend=backend).shape == ()


def test_falls_back_to_numpy_without_numba(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def import_without_numba(name: str, *args: object, **kwargs: object) -> object:
        if name.split(".")[0] == "numba":
            raise ImportError("numba hidden by the test")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", import_without_numba)
    routing._build_numba_kernel.cache_clear()
    try:
        assert not numba_available()
        np.testing.assert_allclose(distinct_from_probs([0.5, 0.25], [0, 2]), [0.0, 0.75 + 0.4375])
        with pytest.raises(ConfigError, match="numba is not importable"):
            distinct_from_probs([0.5], 1, backend="numba")
    finally:
        monkeypatch.undo()
        routing._build_numba_kernel.cache_clear()  # later tests find numba again


# --------------------------------------------------------------------------------------------------
# Properties (hypothesis).

sizes = st.integers(1, 200_000)
token_lists = st.lists(st.integers(0, 10**6), min_size=1, max_size=8)
FAST = settings(max_examples=40, deadline=None)


@st.composite
def layers(draw: st.DrawFn) -> tuple[int, int]:
    n = draw(sizes)
    return n, draw(st.integers(1, min(n, 512)))


@FAST
@given(layers(), st.integers(1, 8), st.floats(0.0, 3.0), token_lists)
def test_never_exceeds_min_bound(layer: tuple[int, int], heads: int, s: float, tokens: list[int]) -> None:
    n, k = layer
    t = np.array(tokens, dtype=float)
    bound = min_bound(n, k, t)
    np.testing.assert_array_equal(bound, np.minimum(t * k, n))
    slack = 1e-9 * np.maximum(bound, 1.0)
    counts = np.random.default_rng(n).integers(0, 5, n) * 1.0 + (np.arange(n) < k)
    for estimate in (
        distinct_uniform(n, k, t),
        distinct_from_probs(zipf_probs(n, k, s), t),
        distinct_from_probs(probs_from_histogram(counts, k), t),
        RoutingModel("histogram", counts=counts, prior=0.5).distinct(n, k, 1, t),
    ):
        assert (estimate <= bound + slack).all() and (estimate >= 0).all()
    assert (distinct_multihead(n, k, heads, t) <= np.minimum(t * k * heads, n) * (1 + 1e-9)).all()


@FAST
@given(layers(), st.floats(0.0, 3.0), token_lists)
def test_non_decreasing_in_tokens(layer: tuple[int, int], s: float, tokens: list[int]) -> None:
    n, k = layer
    t = np.sort(np.array(tokens, dtype=float))
    for estimate in (distinct_uniform(n, k, t), distinct_from_probs(zipf_probs(n, k, s), t)):
        assert (np.diff(estimate) >= -1e-9 * estimate[1:]).all()


@FAST
@given(layers(), token_lists)
def test_uniform_probs_reduce_to_distinct_uniform(layer: tuple[int, int], tokens: list[int]) -> None:
    n, k = layer
    via_probs = distinct_from_probs(np.full(n, k / n), tokens)
    np.testing.assert_allclose(via_probs, distinct_uniform(n, k, tokens), rtol=1e-12, atol=1e-12)


@FAST
@given(layers(), st.floats(0.0, 3.0), token_lists)
def test_skew_lowers_distinct_items(layer: tuple[int, int], s: float, tokens: list[int]) -> None:
    n, k = layer
    skewed = RoutingModel("zipf", s=s).distinct(n, k, 1, tokens)
    uniform = distinct_uniform(n, k, tokens)
    assert (skewed <= uniform * (1 + 1e-12) + 1e-12).all()


# --------------------------------------------------------------------------------------------------
# RoutingModel and expert parallelism.


def test_routing_model_dispatch() -> None:
    t = np.array([0, 1, 7, 300])
    np.testing.assert_array_equal(RoutingModel().distinct(64, 8, 1, t), distinct_uniform(64, 8, t))
    np.testing.assert_array_equal(RoutingModel().distinct(4096, 8, 4, t), distinct_multihead(4096, 8, 4, t))
    zipf = RoutingModel("zipf", s=1.0)
    np.testing.assert_allclose(zipf.distinct(64, 8, 1, t), distinct_from_probs(zipf_probs(64, 8, 1.0), t))
    per_token = 1 - (1 - zipf_probs(4096, 8, 1.0)) ** 4  # 4 independent heads
    np.testing.assert_allclose(zipf.distinct(4096, 8, 4, t), distinct_from_probs(per_token, t), rtol=1e-12)
    counts = np.arange(64.0)
    histogram = RoutingModel("histogram", counts=counts)
    np.testing.assert_allclose(
        histogram.distinct(64, 8, 1, t), distinct_from_probs(probs_from_histogram(counts, 8), t)
    )
    short = RoutingModel("histogram", counts=counts[:40])  # ids 40..63 never chosen
    np.testing.assert_array_equal(
        short.distinct(64, 8, 1, t),
        RoutingModel("histogram", counts=np.r_[counts[:40], [0] * 24]).distinct(64, 8, 1, t),
    )
    assert histogram == RoutingModel("histogram", counts=list(range(64)))
    assert hash(histogram) == hash(RoutingModel("histogram", counts=counts.copy()))
    assert histogram != RoutingModel("histogram", counts=counts, prior=1.0)
    assert histogram.counts is not None and not histogram.counts.flags.writeable


@pytest.mark.parametrize(("n", "k", "devices"), [(64, 8, 8), (60, 4, 8)])  # 60/8: shards of 8 and 7
def test_expected_max_load_matches_monte_carlo(n: int, k: int, devices: int) -> None:
    rng = np.random.default_rng(n + devices)
    tokens, trials, batch = 256, 2000, 250
    mean, expected_max = expected_max_load(tokens, k, n, devices)
    sizes = np.full(devices, n // devices) + (np.arange(devices) < n % devices)
    owner = np.repeat(np.arange(devices), sizes)  # expert -> device, largest shards first
    loads = np.zeros((trials, devices))
    for start in range(0, trials, batch):
        device = owner[uniform_topk(rng, n, k, batch * tokens)].reshape(batch, -1)
        slot = device + devices * np.arange(batch)[:, None]  # one bincount for the whole batch
        loads[start : start + batch] = np.bincount(slot.ravel(), minlength=batch * devices).reshape(batch, -1)
    assert float(mean) == pytest.approx(loads.mean(), rel=0.003)
    # The std implied by the returned maximum is the exact standard deviation of a largest shard's load ...
    largest = loads[:, sizes == sizes.max()]
    std = (float(expected_max) - largest.mean()) / math.sqrt(2 * math.log(devices))
    assert std == pytest.approx(largest.std(ddof=1), rel=0.05)
    # ... and mean + std sqrt(2 ln G) bounds the expected maximum of G Gaussians from above.
    observed_max = loads.max(axis=1).mean()
    assert float(mean) < observed_max <= float(expected_max)
    one_device = expected_max_load([0, 5], k, n, 1)
    np.testing.assert_array_equal(one_device[0], one_device[1])


# --------------------------------------------------------------------------------------------------
# Bad inputs: one ConfigError line naming the argument.


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: distinct_uniform(8, 9, 1), "k=9 exceeds n_items=8"),
        (lambda: distinct_uniform(0, 1, 1), "n_items=0"),
        (lambda: distinct_uniform(8.5, 2, 1), "n_items=8.5"),
        (lambda: distinct_uniform(True, 1, 1), "n_items=True"),
        (lambda: distinct_uniform(8, 2, -1), "tokens contains a negative value"),
        (lambda: distinct_uniform(8, 2, [1, float("nan")]), "tokens contains a non-finite value"),
        (lambda: distinct_uniform(8, 2, "many"), "tokens="),
        (lambda: distinct_uniform_var(8, 0, 1), "k=0"),
        (lambda: distinct_multihead(8, 9, 1, 1), "m=9 exceeds n_items=8"),
        (lambda: distinct_multihead(8, 2, 0, 1), "heads=0"),
        (lambda: min_bound(8, 9, 1), "k=9 exceeds n_items=8"),
        (lambda: distinct_from_probs([0.5, 1.5], 1), "probs[1]=1.5"),
        (lambda: distinct_from_probs([-0.1], 1), "probs[0]=-0.1"),
        (lambda: distinct_from_probs([], 1), "probs must be a non-empty 1-D array"),
        (lambda: distinct_from_probs(np.full((2, 2), 0.1), 1), "probs must be a non-empty 1-D array"),
        (lambda: distinct_from_probs([0.5], -2), "tokens contains a negative value"),
        (lambda: distinct_from_probs([0.5], 1, backend="gpu"), "backend='gpu'"),  # type: ignore[arg-type]
        (lambda: zipf_probs(8, 9, 1.0), "k=9 exceeds n_items=8"),
        (lambda: zipf_probs(8, 0, 1.0), "k=0"),
        (lambda: zipf_probs(8, 2, -1.0), "s=-1"),
        (lambda: zipf_probs(8, 2, float("inf")), "s=inf"),
        (lambda: probs_from_histogram([1, -1], 1), "counts[1]=-1"),
        (lambda: probs_from_histogram([1, 2], 3), "k=3 exceeds len(counts)=2"),
        (lambda: probs_from_histogram([0, 0], 1), "counts are all zero"),
        (lambda: probs_from_histogram([1, 2], 1, tokens_observed=0), "tokens_observed=0"),
        (lambda: probs_from_histogram([1, 2], 1, prior=-1), "prior=-1"),
        (lambda: RoutingModel("sparse"), "kind='sparse'"),  # type: ignore[arg-type]
        (lambda: RoutingModel("zipf"), "s is required"),
        (lambda: RoutingModel("zipf", s=-0.5), "s=-0.5"),
        (lambda: RoutingModel("uniform", s=1.0), "s=1.0 applies only to kind='zipf'"),
        (lambda: RoutingModel("histogram"), "counts is required"),
        (lambda: RoutingModel("uniform", counts=np.ones(4)), "counts applies only"),
        (lambda: RoutingModel("histogram", counts=[1, 2, 3]).distinct(2, 1, 1, 4), "beyond the 2 items"),
        (lambda: RoutingModel().distinct(8, 2, 0, 4), "heads=0"),
        (lambda: RoutingModel().distinct(8, 9, 1, 4), "k=9 exceeds n_items=8"),
        (lambda: expected_max_load(4, 9, 8, 2), "k=9 exceeds n_experts=8"),
        (lambda: expected_max_load(4, 2, 8, 9), "devices=9 exceeds n_experts=8"),
        (lambda: expected_max_load(4, 2, 8, 0), "devices=0"),
        (lambda: expected_max_load(-4, 2, 8, 2), "tokens contains a negative value"),
    ],
)
def test_bad_inputs_raise_one_line_config_error(call: Callable[[], object], fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        call()
    message = str(caught.value)
    assert fragment in message and "\n" not in message


def test_histogram_from_a_run_directory(tmp_path) -> None:
    import pandas as pd

    from simulator.errors import ConfigError
    from simulator.routing_io import load_histogram

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # one layer's records of two steps: item 3 picked 2 + 1 times, item 0 once
    rows = {"batch": [4, 4, 4], "step": [0, 1, 1], "layer": ["block0.moe"] * 3, "item": [3, 3, 0]}
    pd.DataFrame({**rows, "count": [2, 1, 1]}).to_parquet(run_dir / "routing.parquet")
    assert load_histogram(run_dir).tolist() == [1.0, 0.0, 0.0, 3.0]  # one layer: indexed by item id
    assert load_histogram(run_dir / "routing.parquet").tolist() == [1.0, 0.0, 0.0, 3.0]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="folder without a routing table"):
        load_histogram(empty)


def test_histogram_of_several_layers_keeps_each_layers_skew(tmp_path) -> None:
    import pandas as pd

    from simulator.routing_io import load_histogram

    # two layers of 10 experts, each with one hot expert (90 of 99 selections), a different one per layer;
    # summed by id the two hot experts would look half as hot and the rest twice as popular
    rows = [
        {"layer": layer, "item": item, "count": 90 if item == hot else 1}
        for layer, hot in (("block0.moe", 0), ("block1.moe", 9))
        for item in range(10)
    ]
    path = tmp_path / "h.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    profile = load_histogram(path)
    assert profile.tolist() == [90.0] + [1.0] * 9  # each layer's profile, rank by rank
    skewed = RoutingModel(kind="histogram", counts=profile).distinct(10, 1, 1, 10)
    by_id = RoutingModel(kind="histogram", counts=[91.0] + [2.0] * 8 + [91.0]).distinct(10, 1, 1, 10)
    # by hand, 10 tokens: sum_i 1 - (1 - p_i)^10 with p = 90/99 and 9 x 1/99, against p = 91/198 x 2
    # and 8 x 2/198
    p_hot, p_cold = 90 / 99, 1 / 99
    assert skewed == pytest.approx(1 - (1 - p_hot) ** 10 + 9 * (1 - (1 - p_cold) ** 10), rel=1e-9)
    q_hot, q_cold = 91 / 198, 2 / 198
    assert by_id == pytest.approx(2 * (1 - (1 - q_hot) ** 10) + 8 * (1 - (1 - q_cold) ** 10), rel=1e-9)
    assert skewed < by_id

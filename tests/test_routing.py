"""simulator.routing against sources that do not share its code.

- Monte Carlo of real top-k draws (uniform, and Zipf-skewed by the Gumbel-top-k trick), each estimate with
  its own standard error checked before the formula is compared to it.
- An exact dynamic programme over the number of distinct items (no sampling noise) for mean and variance.
- The worked numbers printed in shared/docs/cost-reference.md section 2.9, to their printed precision.
- The defining properties of each function (hypothesis), and the one-line errors of bad inputs.
"""

from __future__ import annotations

import builtins
import itertools
import math
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal

import numpy as np
import numpy.typing as npt
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
    expected_max_distinct_per_device,
    expected_max_load,
    min_bound,
    numba_available,
    probs_from_histogram,
    zipf_probs,
)

ArrayLike = npt.ArrayLike
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
    # item 0 counted 30 times in 20 tokens: pinned at 1, and its excess goes to item 1 (only two were seen,
    # and every token picks two distinct items)
    np.testing.assert_allclose(probs_from_histogram(counts, 2), [1.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(probs_from_histogram([20.0, 10.0, 6.0, 4.0], 2), [1.0, 0.5, 0.3, 0.2])
    np.testing.assert_allclose(probs_from_histogram(counts, 2, tokens_observed=40), [0.75, 0.25, 0, 0])
    # by hand: weights 31, 11, 1, 1 (4 pseudo-selections = 2 pseudo-tokens) scaled to sum 2 give item 0
    # 62/44 > 1; pinned, the remaining 1 is spread over 11, 1, 1 in proportion
    smoothed = probs_from_histogram(counts, 2, prior=1.0)
    np.testing.assert_allclose(smoothed, [1.0, 11 / 13, 1 / 13, 1 / 13])
    assert (smoothed[2:] > 0).all()
    # too few items ever chosen for top-2, unless a prior lets the others be chosen
    with pytest.raises(ConfigError, match="has 1 item with a nonzero count, but the layer picks 2"):
        probs_from_histogram([5.0, 0.0, 0.0], 2)
    assert probs_from_histogram([5.0, 0.0, 0.0], 2, prior=0.5).sum() == pytest.approx(2.0)


# A histogram with one very popular expert: counted more often (1000) than there were tokens (1756 / 8),
# so its plug-in probability is above 1; only ten of OLMoE's 64 experts were ever chosen.
SKEWED_COUNTS = np.array([1000.0, 500, 100, 50, 40, 30, 20, 10, 5, 1] + [0.0] * 54)


@pytest.mark.parametrize(
    ("counts", "k"),
    [
        (SKEWED_COUNTS, 8),
        (np.array([7.0, 7.0, 7.0, 1.0, 0.0, 3.0]), 4),  # three tied items, pinned together
        (np.random.default_rng(4).pareto(0.7, 500) + (np.arange(500) < 40), 32),
        (np.array([3.0, 0.0, 1.0, 1.0]), 3),  # every item ever chosen is chosen by every token
    ],
)
def test_histogram_probs_are_water_filled(counts: np.ndarray, k: int) -> None:
    probs = probs_from_histogram(counts, k)
    # the literal definition of section 2.3 (normalise, clip at 1, renormalise the rest, repeat)
    np.testing.assert_allclose(probs, iterative_water_filling(counts, k), rtol=1e-12, atol=1e-15)
    assert probs.sum() == pytest.approx(k, rel=1e-12) and probs.max() <= 1.0
    np.testing.assert_array_equal(probs > 0, counts > 0)  # never-seen items stay unseen
    order = np.argsort(-counts, kind="stable")
    assert (np.diff(probs[order]) <= 1e-15).all()  # more counts, no lower probability


def systematic_topk(rng: np.random.Generator, probs: np.ndarray, rows: int) -> np.ndarray:
    """Exactly k = sum(probs) distinct items per token, item i with probability probs[i] (systematic
    sampling: the items laid end to end on [0, k) as intervals of length probs[i], hit at u, u + 1, ...,
    u + k - 1 for one uniform u; no interval is longer than 1, so none is hit twice)."""
    k = round(probs.sum())
    edges = np.cumsum(probs)
    edges[-1] = k  # rounding must not leave the last point past the end
    points = rng.random((rows, 1)) + np.arange(k)
    return np.searchsorted(edges, points, side="right")


def test_skewed_histogram_matches_monte_carlo_of_top_k_routing() -> None:
    rng = np.random.default_rng(21)
    n, k = SKEWED_COUNTS.size, 8
    model = RoutingModel("histogram", counts=SKEWED_COUNTS)
    tokens = np.array([1, 2, 4, 16, 64])
    predicted = model.distinct(n, k, 1, tokens)
    # One token reads k distinct experts, whatever the skew; many tokens read at most the ten ever seen.
    assert predicted[0] == pytest.approx(k, rel=1e-12)
    assert (np.diff(predicted) > 0).all() and predicted[-1] <= 10
    assert float(model.distinct(n, k, 1, 10**6)) == pytest.approx(10, rel=1e-12)
    # Tokens drawn with exactly k distinct experts each, with the water-filled marginals of the test's own
    # definition: the formula's E[U] is exact for any routing with those marginals (section 2.3), so it must
    # agree to within the sampling error.
    marginals = iterative_water_filling(SKEWED_COUNTS, k)
    for t, value in zip(tokens, predicted, strict=True):
        chosen = systematic_topk(rng, marginals, 20000 * t).reshape(20000, t * k)
        assert (np.sort(chosen[:, :k], axis=1)[:, 1:] != np.sort(chosen[:, :k], axis=1)[:, :-1]).all()
        seen = np.zeros((20000, n), dtype=bool)
        seen[np.arange(20000)[:, None], chosen] = True
        samples = seen.sum(axis=1)
        standard_error = samples.std(ddof=1) / math.sqrt(samples.size)
        assert abs(value - samples.mean()) <= 4 * standard_error + 1e-12, (t, value, samples.mean())
    # Successive sampling in proportion to the counts (Gumbel top-k) is another routing with the same
    # counts: its marginals are flatter (about 0.71, 0.40, 0.09 for the last three experts, against
    # 0.625, 0.3125, 0.0625), so it reads more distinct experts: 8.71 against 8.51 at T = 2 (+2.3 %), the
    # largest gap. Both read exactly k at one token and the formula stays below it, within 3 %.
    log_weights = np.log(SKEWED_COUNTS[:10])
    for t, value in zip(tokens, predicted, strict=True):
        samples = distinct_counts(lambda rows: gumbel_topk(rng, log_weights, k, rows), 10, int(t), 20000)
        assert value <= samples.mean() + 4 * samples.std(ddof=1) / math.sqrt(samples.size) + 1e-12
        assert value >= 0.97 * samples.mean()


def test_histogram_with_fewer_items_than_top_k_is_refused(tmp_path) -> None:
    import pandas as pd

    from simulator.routing_io import load_histogram

    # The reviewer's file: three experts ever chosen, applied to OLMoE (top-8 of 64)
    path = tmp_path / "h.csv"
    pd.DataFrame({"item": [0, 1, 2], "count": [100, 50, 10]}).to_csv(path, index=False)
    model = RoutingModel("histogram", counts=load_histogram(path))
    assert model.source == str(path)
    with pytest.raises(ConfigError) as caught:
        model.distinct(64, 8, 1, [1, 4])
    message = str(caught.value)
    assert message == (
        f"routing.histogram: {path} has 3 items with a nonzero count, but the layer picks 8 distinct "
        "items (experts or rows) per token"
    )
    # the same file describes a top-2 or top-3 layer, and a prior makes every item possible
    assert float(model.distinct(64, 3, 1, 1)) == pytest.approx(3.0)
    assert float(RoutingModel("histogram", counts=[100, 50, 10], prior=0.1).distinct(64, 8, 1, 1)) == (
        pytest.approx(8.0)
    )
    # Several layers: averaged rank by rank, the profile has as many items as the widest layer, so the
    # sparsest layer's count is what a top-k layer is checked against.
    rows = [{"layer": "block0.moe", "item": i, "count": 10 + i} for i in range(10)]
    rows += [{"layer": "block1.moe", "item": i, "count": c} for i, c in enumerate([100, 50, 10])]
    rows += [{"layer": "block2.moe", "item": 5, "count": 0}]  # a layer without selections: left out
    layers = tmp_path / "layers.csv"
    pd.DataFrame(rows).to_csv(layers, index=False)
    profile = load_histogram(layers)
    assert np.count_nonzero(profile) == 10 and profile.layer_items == 3
    with pytest.raises(ConfigError, match="has 3 items with a nonzero count in its sparsest layer, but"):
        RoutingModel("histogram", counts=profile).distinct(64, 8, 1, 1)
    assert float(RoutingModel("histogram", counts=profile).distinct(64, 3, 1, 1)) == pytest.approx(3.0)


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


def shard_sizes(n: int, devices: int) -> np.ndarray:
    """Experts per device, the first N mod G devices holding one more (as the simulator shards them)."""
    return np.full(devices, n // devices) + (np.arange(devices) < n % devices)


def exact_busiest_shard(n: int, k: int, devices: int, tokens: int) -> float:
    """E[max over devices of the distinct experts a device reads] by enumeration: the distribution of the
    touched set (a bit mask) carried token by token over all C(N, k) equally likely choices of a token."""
    owner = np.repeat(np.arange(devices), shard_sizes(n, devices))
    choices = [sum(1 << i for i in chosen) for chosen in itertools.combinations(range(n), k)]
    dist = {0: 1.0}
    for _ in range(tokens):
        step: defaultdict[int, float] = defaultdict(float)
        for mask, p in dist.items():
            for chosen in choices:
                step[mask | chosen] += p / len(choices)
        dist = step
    expected = 0.0
    for mask, p in dist.items():
        touched = [i for i in range(n) if mask >> i & 1]
        expected += p * (np.bincount(owner[touched], minlength=devices).max() if touched else 0)
    return expected


def busiest_shard_samples(
    rng: np.random.Generator, n: int, k: int, devices: int, tokens: int, trials: int
) -> np.ndarray:
    """Distinct experts read by the busiest device in each of `trials` steps of uniform top-k routing."""
    starts = np.r_[0, np.cumsum(shard_sizes(n, devices))[:-1]]
    out = np.empty(trials)
    per_batch = max(1, MAX_KEYS // (tokens * n))
    for start in range(0, trials, per_batch):
        batch = min(per_batch, trials - start)
        chosen = uniform_topk(rng, n, k, batch * tokens).reshape(batch, tokens * k)
        seen = np.zeros((batch, n), dtype=np.int64)
        seen[np.arange(batch)[:, None], chosen] = 1
        out[start : start + batch] = np.add.reduceat(seen, starts, axis=1).max(axis=1)
    return out


def busiest(n: int, k: int, devices: int, tokens: ArrayLike) -> np.ndarray:
    return expected_max_distinct_per_device(n, k, devices, distinct_uniform(n, k, tokens))


def test_busiest_shard_by_hand() -> None:
    # Mixtral-8x7B over 8 devices (one expert each), one token: its two experts sit on two devices, one
    # each, so the busiest device reads exactly one expert (independent shards would say 1 - (3/4)^8 = 0.90)
    assert float(busiest(8, 2, 8, 1)) == pytest.approx(1.0, rel=1e-12)
    # one expert per device: one token's k experts, on k devices, for any k
    for n, k in ((8, 1), (8, 8), (64, 8), (256, 8)):
        assert float(busiest(n, k, n, 1)) == pytest.approx(1.0, rel=1e-12)
    # 8 experts on 4 devices: one token's two experts share a device with probability 4 / C(8, 2) = 1/7
    assert float(busiest(8, 2, 4, 1)) == pytest.approx(8 / 7, rel=1e-12)
    # top-1: one token reads one expert; no tokens, none
    np.testing.assert_allclose(busiest(64, 1, 8, [0, 1]), [0.0, 1.0], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    ("n", "k", "devices", "tokens"),
    [
        (8, 2, 8, [1, 2, 3]),
        (8, 2, 4, [1, 2, 3, 4]),
        (7, 2, 3, [1, 2, 3]),  # shards of 3, 2 and 2
        (9, 3, 3, [1, 2, 3]),
        (6, 1, 2, [1, 2, 3, 5]),
        (8, 4, 2, [1, 2, 3]),
        (5, 5, 2, [1, 2]),  # every token reads every expert
    ],
)
def test_busiest_shard_equals_exact_enumeration(n: int, k: int, devices: int, tokens: list[int]) -> None:
    for t, value in zip(tokens, busiest(n, k, devices, tokens), strict=True):
        assert value == pytest.approx(exact_busiest_shard(n, k, devices, t), rel=1e-12)


@pytest.mark.parametrize(
    ("n", "k", "devices", "tokens", "trials"),
    [
        (8, 2, 8, [1, 3], 2000),  # Mixtral-8x7B, one expert per device
        (8, 2, 4, [1, 2, 3], 20000),
        (64, 8, 8, [1, 4, 16], 20000),  # OLMoE
        (60, 4, 8, [1, 8, 32], 20000),  # Qwen1.5-MoE: shards of 8 and 7
        (256, 8, 8, [1, 4, 64], 5000),  # DeepSeek-V3
        (32, 1, 4, [3, 20], 20000),
        (16, 4, 2, [2, 5], 20000),
    ],
)
def test_busiest_shard_matches_monte_carlo(
    n: int, k: int, devices: int, tokens: list[int], trials: int
) -> None:
    rng = np.random.default_rng(n * 100 + k * 10 + devices)
    for t, value in zip(tokens, busiest(n, k, devices, tokens), strict=True):
        samples = busiest_shard_samples(rng, n, k, devices, t, trials)
        standard_error = samples.std(ddof=1) / math.sqrt(trials)
        # 4 standard errors: the formula is exact, so only sampling noise separates them
        assert abs(value - samples.mean()) <= 4 * standard_error + 1e-12, (t, value, samples.mean())


@st.composite
def sharded_layers(draw: st.DrawFn) -> tuple[int, int, int]:
    n = draw(st.integers(1, 300))
    return n, draw(st.integers(1, min(n, 16))), draw(st.integers(1, n))


@FAST
@given(sharded_layers(), st.lists(st.integers(0, 3000), min_size=1, max_size=8))
def test_busiest_shard_bounds(layer: tuple[int, int, int], tokens: list[int]) -> None:
    n, k, devices = layer
    t = np.sort(np.array(tokens, dtype=float))
    distinct = distinct_uniform(n, k, t)
    value = expected_max_distinct_per_device(n, k, devices, distinct)
    assert (np.diff(value) >= -1e-12).all()  # more tokens never touch fewer experts
    # the busiest device holds at least the average and at most its shard, and no more than all touched
    assert (value >= distinct / devices * (1 - 1e-9)).all()
    assert (value <= np.minimum(distinct, -(-n // devices)) * (1 + 1e-9) + 1e-12).all()


def test_busiest_shard_under_skew() -> None:
    # Skewed routing is costed as uniform routing at the token count T' touching as many experts (the
    # experts placed on devices as if at random). At one token both read k distinct experts: exact.
    n, k, devices = 64, 8, 8
    zipf = RoutingModel("zipf", s=1.2).distinct(n, k, 1, [1, 16])
    skewed = expected_max_distinct_per_device(n, k, devices, zipf)
    assert skewed[0] == pytest.approx(float(busiest(n, k, devices, 1)), rel=1e-12)
    assert skewed[1] < float(busiest(n, k, devices, 16))
    # Against successive Zipf-weighted draws, each step's experts shuffled over the devices, given the E[U]
    # of the same draws: the gap is the approximation's (U's spread under skew is not uniform routing's at
    # T'), measured at most 1.3 % over these points; 2 % bounds it.
    rng = np.random.default_rng(8)
    log_weights = -1.2 * np.log(np.arange(1, n + 1))
    starts = np.r_[0, np.cumsum(shard_sizes(n, devices))[:-1]]
    for tokens in (2, 4, 16):
        trials = 10000
        chosen = gumbel_topk(rng, log_weights, k, trials * tokens).reshape(trials, tokens * k)
        seen = np.zeros((trials, n), dtype=np.int64)
        seen[np.arange(trials)[:, None], chosen] = 1
        seen = np.take_along_axis(seen, np.argsort(rng.random((trials, n)), axis=1), axis=1)
        samples = np.add.reduceat(seen, starts, axis=1).max(axis=1)
        predicted = float(expected_max_distinct_per_device(n, k, devices, seen.sum(axis=1).mean()))
        assert predicted == pytest.approx(samples.mean(), rel=0.02)


def test_pairs_and_experts_describe_one_busiest_device() -> None:
    # Each expert a device reads was sent at least one token-expert pair: the FLOPs' busiest device
    # (expected_max_load) never has fewer pairs than the weight bytes' busiest has experts.
    layers = [(8, 2, 8), (8, 2, 4), (32, 1, 32), (60, 4, 8), (64, 8, 8), (64, 8, 2), (256, 8, 64)]
    for n, k, devices in layers:
        tokens = np.array([1, 2, 3, 4, 8, 16, 64, 256, 4096], dtype=float)
        _, pairs = expected_max_load(tokens, k, n, devices)
        assert (pairs >= busiest(n, k, devices, tokens) * (1 - 1e-12)).all(), (n, k, devices)
    # At one token pairs and experts read are the same on every device. One expert per device: exactly 1.
    # (The Gaussian alone gives 0.49 for top-1 over 32 devices, and the capped one 1 for Mixtral.)
    for n, k in [(8, 2), (32, 1), (64, 8)]:
        assert float(expected_max_load(1, k, n, n)[1]) == pytest.approx(1.0, rel=1e-12)
        assert float(busiest(n, k, n, 1)) == pytest.approx(1.0, rel=1e-12)


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
        (lambda: expected_max_distinct_per_device(8, 9, 2, 1), "k=9 exceeds n_items=8"),
        (lambda: expected_max_distinct_per_device(8, 2, 9, 1), "devices=9 exceeds n_items=8"),
        (lambda: expected_max_distinct_per_device(8, 2, 2, -1), "distinct contains a negative value"),
        (lambda: probs_from_histogram([5, 0, 0], 2), "has 1 item with a nonzero count, but the layer"),
        (lambda: probs_from_histogram([30, 10], 1, tokens_observed=20), "counts hold 40 selections"),
        (lambda: RoutingModel("uniform", source="h.csv"), "source applies only"),
        (lambda: RoutingModel("histogram", counts=[1], layer_items=-1), "layer_items=-1"),
        (lambda: RoutingModel("histogram", counts=[1], source=3), "source=3 must be a string"),  # type: ignore[arg-type]
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

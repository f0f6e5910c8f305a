"""common/judge/stats.py against published values, hand-computed cases and small seeded simulations."""
import numpy as np
import pytest

from common.judge import stats

# Newcombe (1998), Statistics in Medicine 17:857-872, Table I: method 3 (Wilson score).
NEWCOMBE = [  # k, n, Wilson
    (81, 263, (0.2553, 0.3662)),
    (15, 148, (0.0624, 0.1605)),
    (0, 20, (0.0, 0.1611)),
    (1, 29, (0.0061, 0.1718)),
]


@pytest.mark.parametrize("k,n,wilson", NEWCOMBE)
def test_intervals_match_newcombes_table(k, n, wilson):
    assert stats.wilson_interval(k, n) == pytest.approx(wilson, abs=5e-5)


def test_no_zero_width_interval_at_zero_or_all():
    for k in (0, 40):
        interval = stats.wilson_interval(k, 40)
        assert interval[1] - interval[0] > 0.05
    assert stats.wilson_interval(0, 40)[0] == 0.0 and stats.wilson_interval(40, 40)[1] == 1.0
    assert stats.wilson_interval(3, 40) == pytest.approx((0.026, 0.199), abs=1e-3)  # the example
    with pytest.raises(ValueError):
        stats.wilson_interval(5, 4)


def test_mcnemar_exact_against_hand_computed_p_values():
    # 6 one-way flips: p = 2 * 0.5^6 = 1/32; 5 flips: 1/16; 2 vs 7: 2 * (1 + 9 + 36) / 512.
    a = [1] * 6 + [0] * 34
    b = [0] * 40
    result = stats.mcnemar_exact(b, a)
    assert (result.only_a, result.only_b, result.n) == (0, 6, 40)
    assert result.p_value == pytest.approx(1 / 32) and result.difference == pytest.approx(0.15)
    assert stats.mcnemar_p(5, 0) == pytest.approx(1 / 16)
    assert stats.mcnemar_p(2, 7) == pytest.approx(92 / 512) == stats.mcnemar_p(7, 2)
    assert stats.mcnemar_p(3, 3) == 1.0 and stats.mcnemar_p(0, 0) == 1.0
    # Concordant problems do not change the test.
    both = stats.mcnemar_exact([1, 1, 0, 1], [1, 0, 0, 1])
    assert (both.only_a, both.only_b, both.p_value) == (1, 0, 1.0)


def test_power_and_minimum_detectable_difference():
    assert stats.min_one_way_flips(0.05) == 6
    # All one way: power = P(Bin(40, delta) >= 6); at delta = 0.15 the expected count is exactly 6.
    by_hand = 1 - stats.binomial_cdf(5, 40, 0.15)
    assert stats.mcnemar_power(40, 0.15, 0.15) == pytest.approx(by_hand)
    floor = stats.minimum_detectable_difference(40)
    assert 0.15 < floor < 0.3 and stats.mcnemar_power(40, floor, floor) >= 0.8
    assert stats.mcnemar_power(40, floor - 0.005, floor - 0.005) < 0.8
    # More disagreement in both directions means more noise, so a bigger detectable gain.
    assert stats.minimum_detectable_difference(164, 0.3) > stats.minimum_detectable_difference(164, 0.1)
    assert stats.minimum_detectable_difference(40, 0.05) is None    # no gain within 5% discordance is detectable
    assert stats.mcnemar_power(40, 0.0, 0.2) < 0.05                  # the test keeps its level
    n = stats.problems_needed(0.05, 0.1)
    assert stats.mcnemar_power(n, 0.05, 0.1) >= 0.8 > stats.mcnemar_power(n - 1, 0.05, 0.1)


def test_perplexity_interval_covers_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    true_rate = 1.5                                    # nats per token: true perplexity e^1.5
    covered = 0
    trials = 200
    for t in range(trials):
        tokens = rng.integers(5, 60, size=80)
        nll = rng.gamma(shape=tokens * 2.0, scale=true_rate / 2.0)  # E[nll_i] = 1.5 t_i, skewed per example
        value, low, high = stats.perplexity_ci(nll, tokens, n_resamples=400, seed=t)
        assert low <= value <= high
        covered += low <= np.exp(true_rate) <= high
    assert 0.90 <= covered / trials <= 0.99


def test_perplexity_is_token_weighted():
    value, _, _ = stats.perplexity_ci([10.0, 2.0], [10, 1])
    assert value == pytest.approx(np.exp(12 / 11))
    diff, _, high = stats.paired_perplexity_difference([10.0, 2.0], [5.0, 1.0], [10, 1])
    assert diff == pytest.approx(np.exp(6 / 11) - np.exp(12 / 11)) and high < 0


def test_paired_bootstrap_sees_a_consistent_small_gain_that_unpaired_intervals_miss():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 100, size=50)
    b = a + 1.0 + rng.normal(0, 0.5, size=50)
    diff, low, high = stats.paired_bootstrap(a, b)
    assert diff == pytest.approx(np.mean(b - a)) and 0 < low < high
    _, a_low, a_high = stats.bootstrap_mean_ci(a)
    _, b_low, b_high = stats.bootstrap_mean_ci(b)
    assert a_low < b_high and b_low < a_high                  # the unpaired intervals overlap


def test_cluster_bootstrap_on_two_seeds_carries_the_seed_spread():
    rng = np.random.default_rng(0)
    problems = rng.uniform(0, 1, size=60)                    # problem difficulty shared by both seeds
    seed0 = (problems < 0.3).astype(float)
    seed1 = (problems < 0.5).astype(float)                   # a different run: far more passes
    mean, low, high = stats.cluster_bootstrap_ci([seed0, seed1], n_resamples=1000)
    assert mean == pytest.approx((seed0.mean() + seed1.mean()) / 2)
    # Either seed's mean is a possible draw (both seeds resampled as one), so the interval spans both.
    assert low <= seed0.mean() and high >= seed1.mean()
    _, p_low, p_high = stats.bootstrap_mean_ci(np.concatenate([seed0, seed1]))
    assert high - low > p_high - p_low                       # wider than pooling the runs as if independent
    assert stats.seed_spread([seed0.mean(), seed1.mean()]) == pytest.approx(abs(seed1.mean() - seed0.mean()) / 2 ** 0.5)
    diff, d_low, d_high = stats.paired_cluster_bootstrap([seed0], [seed0, seed1])
    assert diff == pytest.approx((seed1.mean() - seed0.mean()) / 2) and d_low >= 0 and d_high > 0
    with pytest.raises(ValueError):
        stats.cluster_bootstrap_ci([seed0, seed1[:10]])


def test_cluster_proportion_interval_is_never_zero_width():
    zeros = [[0.0] * 40, [0.0] * 40]
    mean, low, high = stats.cluster_proportion_ci(zeros)
    assert mean == 0 and low == 0 and high == pytest.approx(stats.wilson_interval(0, 40)[1])
    ones = [[1.0] * 40, [1.0] * 40]
    assert stats.cluster_proportion_ci(ones)[1] == pytest.approx(stats.wilson_interval(40, 40)[0])


def test_paired_nll_difference_is_token_weighted_and_seed_aware():
    tokens = [10, 1, 5, 20]
    a = [[20.0, 3.0, 10.0, 40.0]]                                  # 2 nats/token, but 3 on the short one
    b = [[10.0, 3.0, 5.0, 20.0]]
    value, low, high = stats.paired_nll_difference(a, b, tokens)
    assert value == pytest.approx((38.0 - 73.0) / 36)               # totals over tokens, not a mean of ratios
    assert low <= value <= high < 0
    # Three seeds of B that agree give the same estimate; seeds that disagree widen the interval.
    same = stats.paired_nll_difference(a, b * 3, tokens)
    spread = stats.paired_nll_difference(a, [[x * f for x in b[0]] for f in (0.5, 1.0, 1.5)], tokens)
    assert same[0] == pytest.approx(value) and spread[0] == pytest.approx(value)
    assert spread[2] - spread[1] > same[2] - same[1]
    with pytest.raises(ValueError):
        stats.paired_nll_difference(a, b, tokens[:3])


def test_crossed_functions_take_two_dimensional_arrays():
    a, b = np.array([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]]), np.array([[2.0, 3.0, 4.0]])
    tokens = np.array([1, 2, 3])
    assert stats.cluster_bootstrap_ci(a, n_resamples=50)[0] == pytest.approx(2.0)
    assert stats.paired_cluster_bootstrap(a, b, n_resamples=50)[0] == pytest.approx(1.0)
    assert stats.paired_nll_difference(a, b, tokens, n_resamples=50)[0] == pytest.approx(9 / 6 - 6 / 6)
    with pytest.raises(ValueError, match="equally long"):
        stats.cluster_bootstrap_ci(np.zeros((0, 3)))


def _clustered_null(rng: np.random.Generator, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two configs' scores on references from files: a shared file effect on the B - A difference, mean 0."""
    groups = np.repeat(np.arange(sizes.size), sizes)
    a = rng.normal(2.0, 0.3, size=groups.size)
    b = a + rng.normal(0, 0.2, size=sizes.size)[groups] + rng.normal(0, 0.05, size=groups.size)
    return a, b, groups


def test_clustered_interval_covers_a_null_difference_at_the_nominal_rate_where_the_per_example_one_does_not():
    rng = np.random.default_rng(7)
    sizes = np.array([40, 35, 30, 29] + [4] * 21)                # 218 references in 25 files, 4 files hold most
    trials, per_example, clustered = 300, 0, 0
    for t in range(trials):
        a, b, groups = _clustered_null(rng, sizes)
        _, low, high = stats.paired_cluster_bootstrap([a], [b], n_resamples=300, seed=t)
        per_example += low <= 0 <= high
        _, low, high = stats.paired_cluster_bootstrap([a], [b], n_resamples=300, seed=t, groups=groups)
        clustered += low <= 0 <= high
    assert clustered / trials >= 0.88                               # nominal 0.95, a little less with 25 clusters
    assert per_example / trials <= 0.6                              # references treated as independent


def test_clusters_group_examples_for_the_nll_too():
    tokens = [10, 10, 10, 10]
    a, b = [[10.0, 10.0, 10.0, 10.0]], [[5.0, 6.0, 14.0, 15.0]]    # one file gains, the other loses
    _, low, high = stats.paired_nll_difference(a, b, tokens, n_resamples=400)
    _, c_low, c_high = stats.paired_nll_difference(a, b, tokens, n_resamples=400, groups=["x", "x", "y", "y"])
    assert c_high - c_low > high - low
    value, _, _ = stats.nll_per_token_ci([[1.0, 3.0], [3.0, 5.0]], [1, 3], groups=["f", "g"])
    assert value == pytest.approx((4 / 4 + 8 / 4) / 2)
    with pytest.raises(ValueError, match="one group per example"):
        stats.nll_per_token_ci([[1.0, 3.0]], [1, 3], groups=["f"])


def test_bootstrap_z_test_interval_and_detectable_difference_agree():
    estimates = np.random.default_rng(0).normal(0.1, 0.05, size=4000)
    test = stats.bootstrap_z_test(0.1, estimates)
    assert test.se == pytest.approx(0.05, rel=0.05)
    assert test.p_value == pytest.approx(2 * stats.NormalDist().cdf(-0.1 / test.se))
    assert (test.low > 0) == (test.p_value < 0.05)
    assert stats.z_detectable(test.se) == pytest.approx(2.8016 * test.se, rel=1e-3)
    assert stats.bootstrap_z_test(0.0, np.zeros(10)).p_value == 1.0


def test_sign_flip_p_equals_an_exact_enumeration_on_a_small_case():
    import itertools

    rng = np.random.default_rng(3)
    a = rng.integers(0, 2, size=(2, 11)).astype(float)              # 2 seeds of A, 3 of B, 11 problems
    b = (rng.random((3, 11)) < 0.7).astype(float)
    result = stats.sign_flip_test(a, b)
    d = b.mean(axis=0) - a.mean(axis=0)
    observed = abs(d.sum())
    flips = [abs(sum(s * x for s, x in zip(signs, d))) >= observed - 1e-12
             for signs in itertools.product((1, -1), repeat=d.size)]
    assert result.p_value == pytest.approx(sum(flips) / len(flips))
    assert result.value == pytest.approx(d.mean()) and result.n == 11
    # One seed a side: the exact McNemar test.
    one_a, one_b = [1, 0, 0, 0, 1, 0, 1, 0, 0], [1, 1, 1, 1, 1, 0, 0, 1, 1]
    assert stats.sign_flip_test([one_a], [one_b]).p_value == pytest.approx(stats.mcnemar_exact(one_a, one_b).p_value)
    with pytest.raises(ValueError, match="0/1"):
        stats.sign_flip_test([[0.5, 1.0]], [[1.0, 1.0]])


def test_sign_flip_detectable_is_the_normal_approximation_of_its_own_null():
    d = [1.0] * 10 + [0.0] * 30
    assert stats.sign_flip_detectable(d) == pytest.approx(stats.z_detectable(np.sqrt(10) / 40))


def test_holm_and_benjamini_hochberg_match_hand_computed_values():
    # statsmodels is not installed; multipletests(p, method="holm" / "fdr_bh") gives these (checked by hand).
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 -> Holm x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max
    assert stats.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: 4p/k = 0.02, 0.02, 0.04, 0.04 -> running min from the top
    assert stats.benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and stats.benjamini_hochberg([0.5, 0.9]) == [0.9, 0.9]
    assert stats.holm([]) == [] and stats.benjamini_hochberg([0.02]) == [0.02]

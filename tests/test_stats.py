"""common/judge/stats.py against published values, hand-computed cases and small seeded simulations."""
import numpy as np
import pytest

from common.judge import stats

# Newcombe (1998), Statistics in Medicine 17:857-872, Table I: methods 3 (Wilson score) and 5 (Clopper-Pearson).
NEWCOMBE = [  # k, n, Wilson, Clopper-Pearson
    (81, 263, (0.2553, 0.3662), (0.2527, 0.3676)),
    (15, 148, (0.0624, 0.1605), (0.0578, 0.1617)),
    (0, 20, (0.0, 0.1611), (0.0, 0.1684)),
    (1, 29, (0.0061, 0.1718), (0.0009, 0.1776)),
]


@pytest.mark.parametrize("k,n,wilson,exact", NEWCOMBE)
def test_intervals_match_newcombes_table(k, n, wilson, exact):
    assert stats.wilson_interval(k, n) == pytest.approx(wilson, abs=5e-5)
    assert stats.clopper_pearson_interval(k, n) == pytest.approx(exact, abs=5e-5)


def test_no_zero_width_interval_at_zero_or_all():
    for k in (0, 40):
        for interval in (stats.wilson_interval(k, 40), stats.clopper_pearson_interval(k, 40)):
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


def test_paired_corpus_bootstrap_for_chrf():
    refs = [f"def f{i}(x):\n    return x + {i}\n" for i in range(20)]
    worse = ["pass"] * 20
    diff, low, high = stats.paired_corpus_bootstrap(worse, refs, refs, "chrf", n_resamples=200)
    assert diff > 50 and low > 0
    same, low, high = stats.paired_corpus_bootstrap(refs, refs, refs, "bleu", n_resamples=50)
    assert same == 0 and low == high == 0


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

"""Statistics for comparing evaluations: intervals, paired tests, power, and a cluster bootstrap over seeds.

Pure functions of numbers (numpy and the standard library; no scipy). Every interval is two-sided at
`confidence` (0.95 by default); every bootstrap is seeded, so the same input gives the same numbers.

    from common.judge.stats import wilson_interval, mcnemar_exact, minimum_detectable_difference
    wilson_interval(3, 40)                      # (0.0258, 0.1987): 3 of 40 problems passed
    mcnemar_exact([1, 0, 1, ...], [1, 1, 1, ...])  # paired pass/fail of two systems on the same problems
    minimum_detectable_difference(40, 0.2)      # smallest pass@1 gain 40 problems can detect at 80% power

Proportions (pass rates, compile rates) get Wilson intervals, which never have zero
width at 0/n or n/n (a percentile bootstrap collapses to [0, 0] there). Paired pass/fail outcomes get the
exact McNemar test (one seed a side) or the exact sign-flip permutation test on per-problem pass rates
averaged over seeds (sign_flip_test). Continuous scores and NLL per token get a crossed bootstrap over
seeds x clusters (crossed_bootstrap, paired_crossed_bootstrap): the cluster is the unit the data were
drawn by (held-out references: their split group, e.g. the source file), so correlated examples of one
group are not counted as independent evidence. A comparison's family (a suite's comparisons of one
metric) is corrected with holm (family-wise error) and benjamini_hochberg (false discovery rate).

    holm([0.01, 0.04, 0.03, 0.005])             # [0.03, 0.06, 0.06, 0.02]
    sign_flip_test(seeds_a, seeds_b).p_value    # 0/1 outcomes, seeds x problems per side
"""
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

ALPHA = 0.05
POWER = 0.8


# ---------------------------------------------------------------------------- proportions

def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _check_counts(k: int, n: int) -> None:
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"a proportion needs 0 <= k <= n and n >= 1, got k={k}, n={n}")


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (Wilson 1927; Newcombe 1998, method 3).

        p = k/n, z = Phi^-1((1 + confidence)/2)
        centre = (p + z^2 / 2n) / (1 + z^2/n)
        half   = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2 / 4n^2)

    The interval inverts the score test, so at k = 0 it is [0, z^2/(n + z^2)] rather than [0, 0].
    """
    _check_counts(k, n)
    z = _z(confidence)
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At k = 0 (k = n) the bound is exactly 0 (1); the formula leaves float residue there.
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def _log_factorials(n: int) -> np.ndarray:
    """log(k!) for k = 0..n."""
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=float)))])


def binomial_pmf(n: int, p: float) -> np.ndarray:
    """P(X = k) for k = 0..n, X ~ Binomial(n, p), computed in log space (no overflow for large n)."""
    k = np.arange(n + 1)
    if p <= 0.0 or p >= 1.0:
        return (k == (0 if p <= 0.0 else n)).astype(float)
    lf = _log_factorials(n)
    return np.exp(lf[n] - lf[k] - lf[n - k] + k * math.log(p) + (n - k) * math.log1p(-p))


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed exactly."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return float(min(1.0, binomial_pmf(n, p)[:k + 1].sum()))


# ---------------------------------------------------------------------------- bootstrap

def _percentiles(estimates: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2
    low, high = np.quantile(estimates, [tail, 1 - tail])
    return float(low), float(high)


def bootstrap_mean_ci(values: Sequence[float], n_resamples: int = 2000, confidence: float = 0.95,
                      seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap of the mean over len(values) draws with replacement."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("cannot bootstrap an empty sample")
    rows = np.random.default_rng(seed).integers(0, x.size, size=(n_resamples, x.size))
    return float(x.mean()), *_percentiles(x[rows].mean(axis=1), confidence)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_resamples: int = 2000, confidence: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """(mean(b - a), low, high) for per-problem scores of two systems on the same problems, in the same order.

    Resampling problems keeps each pair (a_i, b_i) together: the bootstrap of d_i = b_i - a_i.
    """
    if len(a) != len(b):
        raise ValueError(f"paired scores need equal lengths, got {len(a)} and {len(b)}")
    return bootstrap_mean_ci(np.asarray(b, dtype=float) - np.asarray(a, dtype=float), n_resamples, confidence, seed)


def perplexity_ci(nll_sums: Sequence[float], tokens: Sequence[int], n_resamples: int = 2000,
                  confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(perplexity, low, high) over examples, token-weighted.

        perplexity = exp(sum_i nll_i / sum_i t_i)

    with nll_i the summed negative log-likelihood (nats) of example i's t_i tokens. Each resample draws
    examples with replacement and recomputes the ratio of sums, so long examples weigh as much as
    their tokens, exactly as in the point estimate.
    """
    nll, t = np.asarray(nll_sums, dtype=float), np.asarray(tokens, dtype=float)
    if nll.size == 0 or nll.size != t.size or t.sum() <= 0:
        raise ValueError("perplexity_ci needs one (nll sum, token count) per example and some tokens")
    rows = np.random.default_rng(seed).integers(0, nll.size, size=(n_resamples, nll.size))
    estimates = np.exp(nll[rows].sum(axis=1) / t[rows].sum(axis=1))
    return float(np.exp(nll.sum() / t.sum())), *_percentiles(estimates, confidence)


def paired_perplexity_difference(nll_a: Sequence[float], nll_b: Sequence[float], tokens: Sequence[int],
                                 n_resamples: int = 2000, confidence: float = 0.95,
                                 seed: int = 0) -> tuple[float, float, float]:
    """(ppl_b - ppl_a, low, high) on the same examples (same tokens), token-weighted, examples resampled jointly."""
    a, b, t = (np.asarray(x, dtype=float) for x in (nll_a, nll_b, tokens))
    if not a.size == b.size == t.size or a.size == 0:
        raise ValueError("paired perplexity needs equally long, non-empty per-example sums")
    rows = np.random.default_rng(seed).integers(0, a.size, size=(n_resamples, a.size))
    total = t[rows].sum(axis=1)
    estimates = np.exp(b[rows].sum(axis=1) / total) - np.exp(a[rows].sum(axis=1) / total)
    return float(np.exp(b.sum() / t.sum()) - np.exp(a.sum() / t.sum())), *_percentiles(estimates, confidence)


# ---------------------------------------------------------------------------- seeds x clusters

def _seed_problem_matrix(per_seed: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """per_seed as a float matrix (seeds x examples); a list of lists and a 2-D array alike."""
    try:
        x = np.asarray(per_seed, dtype=float)
    except ValueError:  # ragged lists
        x = np.empty((0, 0))
    if x.ndim != 2 or 0 in x.shape:
        raise ValueError("a cluster bootstrap needs one equally long, non-empty score list per seed")
    return x


def _clusters(groups: Sequence[object] | None, size: int) -> tuple[np.ndarray, int]:
    """(cluster index of each example, number of clusters); every example is its own cluster without groups."""
    if groups is None:
        return np.arange(size), size
    if len(groups) != size:
        raise ValueError(f"need one group per example, got {len(groups)} groups for {size} examples")
    _, inverse = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    return inverse.ravel(), int(inverse.max()) + 1


def _draw_counts(rng: np.random.Generator, size: int, n_resamples: int) -> np.ndarray:
    """How often each of `size` items is drawn in each resample of `size` draws with replacement."""
    return rng.multinomial(size, np.full(size, 1 / size), size=n_resamples)


def _example_counts(rng: np.random.Generator, groups: Sequence[object] | None, size: int,
                    n_resamples: int) -> np.ndarray:
    """Per resample, how often each example is drawn when whole clusters are drawn with replacement."""
    inverse, n_clusters = _clusters(groups, size)
    return _draw_counts(rng, n_clusters, n_resamples)[:, inverse]


def _resampled_means(x: np.ndarray, seed_counts: np.ndarray, example_counts: np.ndarray,
                     weights: np.ndarray) -> np.ndarray:
    """Seed-averaged weighted mean of each resample: sum_sj c_s x_sj k_j / (S sum_j k_j w_j).

    x holds per-example sums (NLL sums, with weights = token counts) or per-example scores (weights = 1),
    so the estimate is a ratio of sums, as the point estimate is, whatever sizes the drawn clusters have.
    """
    return np.einsum("rs,sj,rj->r", seed_counts, x, example_counts) / (x.shape[0] * (example_counts @ weights))


def _weights(weights: Sequence[float] | None, size: int) -> np.ndarray:
    w = np.ones(size) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (size,) or w.sum() <= 0:
        raise ValueError("need one positive weight (token count) per example")
    return w


def crossed_bootstrap(per_seed: Sequence[Sequence[float]] | np.ndarray, weights: Sequence[float] | None = None,
                      groups: Sequence[object] | None = None, n_resamples: int = 2000,
                      seed: int = 0) -> tuple[float, np.ndarray]:
    """(estimate, resampled estimates) of a seeds x examples matrix, resampling seeds and clusters, crossed.

    per_seed[s][j] is seed s's score (or summed NLL, with weights = tokens) on example j, the same examples
    in the same order for every seed. Each resample draws S seeds and, independently, as many clusters as
    there are (groups: the unit the split was drawn by, e.g. the source file; None: each example) with
    replacement, and recomputes the weighted mean. With few seeds the seed draw is coarse (2 seeds: 3
    distinct draws), which widens the interval rather than hiding the spread.
    """
    x = _seed_problem_matrix(per_seed)
    w = _weights(weights, x.shape[1])
    rng = np.random.default_rng(seed)
    seeds = _draw_counts(rng, x.shape[0], n_resamples)
    examples = _example_counts(rng, groups, x.shape[1], n_resamples)
    return float(x.sum() / (x.shape[0] * w.sum())), _resampled_means(x, seeds, examples, w)


def paired_crossed_bootstrap(per_seed_a: Sequence[Sequence[float]] | np.ndarray,
                             per_seed_b: Sequence[Sequence[float]] | np.ndarray,
                             weights: Sequence[float] | None = None, groups: Sequence[object] | None = None,
                             n_resamples: int = 2000, seed: int = 0) -> tuple[float, np.ndarray]:
    """(mean(B) - mean(A), resampled differences) for two configs on the same examples, each with its own seeds.

    Clusters are drawn once per resample and shared by both sides (the pairing); each side's seeds are
    drawn with replacement on their own. A side with one seed contributes only the cluster sampling.
    """
    a, b = _seed_problem_matrix(per_seed_a), _seed_problem_matrix(per_seed_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired configs need the same examples, got {a.shape[1]} and {b.shape[1]}")
    w = _weights(weights, a.shape[1])
    rng = np.random.default_rng(seed)
    examples = _example_counts(rng, groups, a.shape[1], n_resamples)
    seeds_a, seeds_b = _draw_counts(rng, a.shape[0], n_resamples), _draw_counts(rng, b.shape[0], n_resamples)
    estimates = _resampled_means(b, seeds_b, examples, w) - _resampled_means(a, seeds_a, examples, w)
    return float((b.sum() / b.shape[0] - a.sum() / a.shape[0]) / w.sum()), estimates


def cluster_bootstrap_ci(per_seed: Sequence[Sequence[float]] | np.ndarray, n_resamples: int = 2000,
                         confidence: float = 0.95, seed: int = 0,
                         groups: Sequence[object] | None = None) -> tuple[float, float, float]:
    """(grand mean, low, high) of a seeds x problems score matrix: percentile interval of crossed_bootstrap."""
    value, estimates = crossed_bootstrap(per_seed, None, groups, n_resamples, seed)
    return value, *_percentiles(estimates, confidence)


def nll_per_token_ci(per_seed_nll: Sequence[Sequence[float]] | np.ndarray, tokens: Sequence[int],
                     groups: Sequence[object] | None = None, n_resamples: int = 2000, confidence: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """(NLL per token, low, high) of one config: per-seed summed NLL per reference, seeds x clusters resampled."""
    value, estimates = crossed_bootstrap(per_seed_nll, tokens, groups, n_resamples, seed)
    return value, *_percentiles(estimates, confidence)


def paired_cluster_bootstrap(per_seed_a: Sequence[Sequence[float]] | np.ndarray,
                             per_seed_b: Sequence[Sequence[float]] | np.ndarray, n_resamples: int = 2000,
                             confidence: float = 0.95, seed: int = 0,
                             groups: Sequence[object] | None = None) -> tuple[float, float, float]:
    """(mean(B) - mean(A), low, high): percentile interval of paired_crossed_bootstrap."""
    value, estimates = paired_crossed_bootstrap(per_seed_a, per_seed_b, None, groups, n_resamples, seed)
    return value, *_percentiles(estimates, confidence)


def paired_nll_difference(per_seed_a: Sequence[Sequence[float]] | np.ndarray,
                          per_seed_b: Sequence[Sequence[float]] | np.ndarray, tokens: Sequence[int],
                          n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0,
                          groups: Sequence[object] | None = None) -> tuple[float, float, float]:
    """(NLL/token of B - NLL/token of A, low, high) on the same references, each config with its own seeds.

    per_seed_x[s][j] is seed s's summed NLL of reference j, which has tokens[j] tokens on both sides; the
    estimate is token-weighted (total NLL / total tokens, averaged over seeds).
    """
    value, estimates = paired_crossed_bootstrap(per_seed_a, per_seed_b, tokens, groups, n_resamples, seed)
    return value, *_percentiles(estimates, confidence)


@dataclass(frozen=True)
class ZTest:
    """A difference judged by a z test whose standard error is that of a (clustered, crossed) bootstrap."""
    value: float
    se: float
    low: float       # value -/+ z se: the interval this test inverts, so it excludes 0 exactly when p < alpha
    high: float
    p_value: float


def bootstrap_z_test(value: float, estimates: np.ndarray, confidence: float = 0.95) -> ZTest:
    """Two-sided z test of value = 0 with se = the bootstrap standard deviation; p = 1 when se = 0 and value = 0.

    The same standard error gives the detectable difference (z_detectable), so the verdict and the power
    statement come from one test.
    """
    se = float(np.std(estimates, ddof=1))
    z = _z(confidence)
    if se == 0:
        return ZTest(value, 0.0, value, value, 1.0 if value == 0 else 0.0)
    return ZTest(value, se, value - z * se, value + z * se, 2 * NormalDist().cdf(-abs(value) / se))


def z_detectable(se: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true difference a two-sided z test with this standard error detects with the given power.

        delta = (z_{1 - alpha/2} + z_{power}) * se        (2.80 se at alpha 0.05, power 0.8)
    """
    return (NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)) * se


def cluster_proportion_ci(per_seed: Sequence[Sequence[float]] | np.ndarray, n_resamples: int = 2000,
                          confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(pass rate, low, high) of 0/1 outcomes over seeds x problems, never zero-width at 0 or 1.

    The hull of the crossed cluster bootstrap (cluster_bootstrap_ci) and the Wilson interval of the
    seed-averaged rate with n = the number of problems (the seeds add no new problems). The bootstrap
    alone collapses to [0, 0] when no seed passes anything; Wilson alone ignores the seed spread.
    """
    mean, low, high = cluster_bootstrap_ci(per_seed, n_resamples, confidence, seed)
    problems = _seed_problem_matrix(per_seed).shape[1]
    w_low, w_high = wilson_interval(round(mean * problems), problems, confidence)
    return mean, min(low, w_low), max(high, w_high)


def seed_spread(per_seed_means: Sequence[float]) -> float | None:
    """Sample standard deviation (n - 1) of the per-seed means; None for fewer than two seeds."""
    x = np.asarray(per_seed_means, dtype=float)
    return float(x.std(ddof=1)) if x.size > 1 else None


# ---------------------------------------------------------------------------- binary outcomes over seeds

@dataclass(frozen=True)
class SignFlip:
    """Paired sign-flip permutation test on per-problem pass rates averaged over each side's seeds."""
    value: float             # mean over problems of (rate_B - rate_A)
    p_value: float           # exact two-sided: P(|T| >= |t|) over all 2^n sign flips
    n: int
    differences: tuple[float, ...]   # per-problem rate_B - rate_A


def sign_flip_test(per_seed_a: Sequence[Sequence[float]] | np.ndarray,
                   per_seed_b: Sequence[Sequence[float]] | np.ndarray) -> SignFlip:
    """Exact paired permutation test for 0/1 outcomes of two configs, each with its own seeds, on the same problems.

    Per problem j, d_j = mean over B's seeds - mean over A's seeds. Under H0 (the configs are exchangeable
    on every problem) each d_j is as likely as -d_j, so T = sum_j d_j is compared with its distribution
    over all 2^n sign flips. The d_j are multiples of 1 / (S_a S_b), so that distribution is computed
    exactly by convolution on that lattice. With one seed a side this is the exact McNemar test.
    """
    a, b = _seed_problem_matrix(per_seed_a), _seed_problem_matrix(per_seed_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired configs need the same problems, got {a.shape[1]} and {b.shape[1]}")
    if not np.isin(a, (0, 1)).all() or not np.isin(b, (0, 1)).all():
        raise ValueError("the sign-flip test here is exact for 0/1 outcomes only")
    # Integer lattice: S_a S_b d_j = S_a (passes of B) - S_b (passes of A).
    steps = (a.shape[0] * b.sum(axis=0) - b.shape[0] * a.sum(axis=0)).round().astype(int)
    d = steps / (a.shape[0] * b.shape[0])
    return SignFlip(float(d.mean()), sign_flip_p(steps), a.shape[1], tuple(float(x) for x in d))


def sign_flip_p(steps: Sequence[int] | np.ndarray) -> float:
    """Exact two-sided p of sum(steps) under independent random signs: P(|sum +-|s_j|| >= |sum s_j|)."""
    s = np.abs(np.asarray(steps, dtype=int))
    s = s[s > 0]
    observed = abs(int(np.sum(steps)))
    distribution = np.ones(1)                  # P(T = t) for t = -total..total, built one problem at a time
    for step in s:
        kernel = np.zeros(2 * step + 1)
        kernel[0] = kernel[-1] = 0.5
        distribution = np.convolve(distribution, kernel)
    t = np.arange(distribution.size) - (distribution.size - 1) // 2
    return float(min(1.0, distribution[np.abs(t) >= observed].sum()))


def sign_flip_detectable(differences: Sequence[float], alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest mean difference the sign-flip test detects with the given power, in the normal approximation.

    Under H0 the mean of sign-flipped d_j has standard error sqrt(sum d_j^2) / n; a true shift of delta is
    found with the given power when delta >= (z_{1 - alpha/2} + z_{power}) * that standard error.
    """
    d = np.asarray(differences, dtype=float)
    return z_detectable(float(np.sqrt((d * d).sum())) / d.size, alpha, power)


# ---------------------------------------------------------------------------- families

def holm(p_values: Sequence[float]) -> list[float]:
    """Holm (1979) step-down adjusted p-values: controls the family-wise error rate under any dependence.

        sorted p_(1) <= ... <= p_(m):  adj_(i) = max_{k <= i} min(1, (m - k + 1) p_(k))
    """
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    m = p.size
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out.tolist()


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg (1995) q-values: controls the false discovery rate (independent or positively dependent).

        sorted p_(1) <= ... <= p_(m):  q_(i) = min_{k >= i} min(1, m p_(k) / k)
    """
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    m = p.size
    scaled = m * p[order] / np.arange(1, m + 1)
    adjusted = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    out = np.empty(m)
    out[order] = adjusted
    return out.tolist()


# ---------------------------------------------------------------------------- McNemar and power

@dataclass(frozen=True)
class McNemar:
    only_a: int      # problems A passes and B fails
    only_b: int      # problems B passes and A fails
    n: int           # problems compared
    p_value: float

    @property
    def difference(self) -> float:
        """pass@1(B) - pass@1(A) = (only_b - only_a) / n."""
        return (self.only_b - self.only_a) / self.n


def mcnemar_exact(passed_a: Sequence[bool], passed_b: Sequence[bool]) -> McNemar:
    """Exact McNemar test on paired pass/fail outcomes of two systems on the same problems.

    Only discordant problems carry information. Under H0 (equal pass rates) each of the
    d = only_a + only_b discordant problems favours B with probability 1/2, so

        p = min(1, 2 * P(X <= min(only_a, only_b))),  X ~ Binomial(d, 1/2)

    (two-sided, doubling the smaller tail); p = 1 when d = 0.
    """
    if len(passed_a) != len(passed_b) or not passed_a:
        raise ValueError(f"McNemar needs equally long, non-empty outcome lists, got {len(passed_a)}, {len(passed_b)}")
    only_a = sum(bool(x) and not bool(y) for x, y in zip(passed_a, passed_b))
    only_b = sum(bool(y) and not bool(x) for x, y in zip(passed_a, passed_b))
    return McNemar(only_a, only_b, len(passed_a), mcnemar_p(only_a, only_b))


def mcnemar_p(only_a: int, only_b: int) -> float:
    """The exact two-sided McNemar p-value from the discordant counts (see mcnemar_exact)."""
    d = only_a + only_b
    return 1.0 if d == 0 else min(1.0, 2 * binomial_cdf(min(only_a, only_b), d, 0.5))


@functools.cache
def _critical_count(d: int, alpha: float) -> int:
    """The largest k with 2 P(X <= k) <= alpha, X ~ Bin(d, 1/2): reject when min(only_a, only_b) <= k; -1 if none."""
    tails = 2 * np.cumsum(binomial_pmf(d, 0.5))[:d // 2 + 1]
    return int(np.searchsorted(tails, alpha * (1 + 1e-12), side="right")) - 1


def min_one_way_flips(alpha: float = ALPHA) -> int:
    """Fewest discordant problems, all in one direction, for which the exact McNemar p <= alpha: 2 * 2^-d <= alpha."""
    return max(1, math.ceil(math.log2(2 / alpha)))


def mcnemar_power(n: int, difference: float, discordance: float, alpha: float = ALPHA) -> float:
    """Power of the exact McNemar test at level alpha for n problems.

    discordance = P(the two systems disagree on a problem) = p10 + p01, difference = p10 - p01 (the
    pass@1 gain), so 0 <= |difference| <= discordance <= 1. With D ~ Bin(n, discordance) discordant
    problems and, given D = d, B ~ Bin(d, q), q = (discordance + difference) / (2 discordance):

        power = sum_d P(D = d) * P(min(B, d - B) <= k_d),  k_d the critical count of _critical_count(d)
    """
    if not 0 <= abs(difference) <= discordance <= 1 or n < 1:
        raise ValueError(f"need 0 <= |difference| <= discordance <= 1 and n >= 1, got {difference}, {discordance}, {n}")
    if discordance == 0:
        return 0.0
    q = (discordance + difference) / (2 * discordance)
    weights = binomial_pmf(n, discordance)
    power = 0.0
    for d in range(min_one_way_flips(alpha), n + 1):
        if weights[d] < 1e-15:
            continue
        k = _critical_count(d, alpha)
        if k < 0:
            continue
        tails = np.cumsum(binomial_pmf(d, q))
        # Reject when B <= k or B >= d - k (disjoint since k < d/2).
        power += weights[d] * (tails[k] + 1 - tails[d - k - 1])
    return min(1.0, power)


def minimum_detectable_difference(n: int, discordance: float | None = None, alpha: float = ALPHA,
                                  power: float = POWER, step: float = 0.005) -> float | None:
    """The smallest pass@1 difference the exact McNemar test detects with the given power, on a grid of `step`.

    discordance: the share of problems on which the two systems disagree (observed, or assumed); None
    means every disagreement goes one way (discordance = difference), the most favourable case, which
    gives the floor no design with n problems can beat. None when no difference up to the discordance
    reaches the power.
    """
    grid = np.arange(step, (discordance if discordance is not None else 1.0) + 1e-12, step)
    for delta in (round(float(x), 10) for x in grid):  # no 0.04999999 from the float grid
        if mcnemar_power(n, delta, delta if discordance is None else discordance, alpha) >= power:
            return delta
    return None


def mcnemar_detectable(n: int, discordance: float, alpha: float = ALPHA, power: float = POWER,
                       step: float = 0.005) -> float | None:
    """The smallest pass@1 difference delta the exact McNemar test on n problems detects with the given power,
    when the two systems disagree on max(discordance, delta) of the problems (a difference of delta needs at
    least delta disagreement). discordance = 0 gives the floor (every disagreement one way). None: none up to 1.
    """
    for delta in (round(float(x), 10) for x in np.arange(step, 1.0 + 1e-12, step)):
        if mcnemar_power(n, delta, max(discordance, delta), alpha) >= power:
            return delta
    return None


def problems_needed(difference: float, discordance: float | None = None, alpha: float = ALPHA,
                    power: float = POWER, max_n: int = 5000) -> int | None:
    """The fewest problems n for which mcnemar_power(n, difference, discordance) >= power (None above max_n).

    Found by doubling, then bisection. Power of an exact test is not strictly monotone in n (the
    critical counts jump), so the answer is an n that reaches the power where n - 1 does not: the
    smallest such n up to a saw-tooth of a few problems.
    """
    discordance = difference if discordance is None else discordance

    def enough(n: int) -> bool:
        return mcnemar_power(n, difference, discordance, alpha) >= power

    high = min_one_way_flips(alpha)
    while not enough(high):
        if high >= max_n:
            return None
        high = min(max_n, high * 2)
    low = max(0, high // 2)      # not enough(low) holds, or low = 0
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high

"""Tests for common.judge.metrics: pass@k against brute force, syntax categories, BLEU/chrF, bootstrap."""
import math
from itertools import combinations

import numpy as np
import pytest

from common.errors import UserError
from common.judge.metrics import (
    bleu,
    bootstrap_ci,
    chrf,
    corpus_metric_ci,

    paired_difference,
    pass_at_k,
    perplexity,
    sentence_chrf,
    syntax_error_category,
)


def test_pass_at_k_matches_the_binomial_formula():
    for n in range(1, 30):
        for c in range(n + 1):
            for k in range(1, n + 1):
                expected = 1.0 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)


def test_pass_at_k_is_the_chance_that_k_draws_contain_a_correct_sample():
    # Enumerate every draw of k samples out of n, c of them correct.
    n, c = 7, 2
    samples = [True] * c + [False] * (n - c)
    for k in range(1, n + 1):
        draws = list(combinations(samples, k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(map(any, draws)) / len(draws))


def test_pass_at_k_edge_cases():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 10, 10) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 1, 10) == 1.0  # n - c < k: every draw holds the correct one
    assert pass_at_k(200, 1, 100) == pytest.approx(0.5)
    assert 0.0 < pass_at_k(1000, 1, 1) < 1e-2  # large n stays finite (no huge binomials)
    for n, c, k in [(5, 1, 6), (5, 1, 0), (5, 6, 1), (5, -1, 1)]:
        with pytest.raises(UserError):
            pass_at_k(n, c, k)


@pytest.mark.parametrize(
    "code, category",
    [
        ("def add(a, b):\n    return a + b\n", None),
        ("def add(a, b)\n    return a + b\n", "SyntaxError"),
        ("return 1\n", "SyntaxError"),  # compiles in ast.parse, not in compile()
        ("def add(a, b):\nreturn a + b\n", "IndentationError"),
        ("def f():\n    x = 1\n  y = 2\n", "IndentationError"),
        ("if True:\n\tx = 1\n        y = 2\n", "TabError"),
        ("s = 'abc\n", "unterminated string"),
        ('def f():\n    """Docstring that never ends.\n    return 1\n', "unterminated string"),
        ("def f(xs):\n    return sorted(xs, key=lambda x: (x[0],\n", "unexpected EOF"),
        ("x = (1, 2]\n", "unmatched bracket"),
        ("x = 1)\n", "unmatched bracket"),
        ("print(“hello”)\n", "invalid character"),
        ("x = 1\x00\n", "null bytes"),
        ("x = " + "(" * 300 + ")" * 300 + "\n", "too deeply nested"),
        ("x = " + "-" * 10**6 + "1\n", "too deeply nested"),
    ],
)
def test_syntax_error_category(code, category):
    assert syntax_error_category(code) == category


def test_syntax_error_category_never_runs_code(tmp_path):
    marker = tmp_path / "ran"
    assert syntax_error_category(f"open({str(marker)!r}, 'w').close()\n") is None
    assert not marker.exists()


CODE = [
    "def add(a, b):\n    return a + b",
    "for i in range(10):\n    print(i * i)",
    "result = [x for x in items if x is not None]",
]


def test_bleu_and_chrf_are_100_for_identical_and_lower_for_different_code():
    different = ["def sub(a, b):\n    return a - b", "while True:\n    break", "result = list(filter(None, items))"]
    assert bleu(CODE, CODE) == pytest.approx(100.0)
    assert chrf(CODE, CODE) == pytest.approx(100.0)
    assert 0.0 <= bleu(different, CODE) < 50.0
    assert 0.0 <= chrf(different, CODE) < 70.0
    assert bleu(CODE[:1] + different[1:], CODE) > bleu(different, CODE)
    assert chrf(CODE[:1] + different[1:], CODE) > chrf(different, CODE)
    assert bleu([], []) == chrf([], []) == 0.0
    with pytest.raises(ValueError):
        bleu(CODE, CODE[:2])


def test_sentence_chrf():
    assert sentence_chrf(CODE[0], CODE[0]) == pytest.approx(100.0)
    assert sentence_chrf(CODE[0], CODE[1]) < sentence_chrf(CODE[0].replace("add", "plus"), CODE[0]) < 100.0


def test_bootstrap_ci_contains_the_mean_is_deterministic_and_shrinks_with_data():
    rng = np.random.default_rng(1)
    small, large = rng.normal(5.0, 2.0, 50), rng.normal(5.0, 2.0, 5000)
    mean, low, high = bootstrap_ci(small)
    assert mean == pytest.approx(small.mean())
    assert low < mean < high
    assert bootstrap_ci(small, seed=3) == bootstrap_ci(small, seed=3)
    assert bootstrap_ci(small, seed=3) != bootstrap_ci(small, seed=4)
    large_mean, large_low, large_high = bootstrap_ci(large)
    assert large_high - large_low < (high - low) / 5  # width ~ 1/sqrt(n): 10x narrower here
    assert large_low < 5.0 < large_high
    # A wider confidence gives a wider interval.
    _, low99, high99 = bootstrap_ci(small, confidence=0.99)
    assert low99 < low and high99 > high
    assert bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_paired_difference_sign_and_significance():
    rng = np.random.default_rng(2)
    a = rng.uniform(0, 1, 200)
    better = a + 0.1 + rng.normal(0, 0.05, 200)
    mean, low, high = paired_difference(a, better)
    assert mean == pytest.approx(np.mean(better - a))
    assert 0.0 < low < mean < high  # b beats a
    mean, low, high = paired_difference(better, a)
    assert low < mean < high < 0.0
    _, low, high = paired_difference(a, a + rng.normal(0, 0.05, 200))
    assert low < 0.0 < high  # no real difference
    with pytest.raises(ValueError):
        paired_difference([1.0, 2.0], [1.0])


def test_corpus_metric_ci():
    references = CODE * 10
    hypotheses = [h if i % 3 else h.replace("a", "b") for i, h in enumerate(references)]
    score, low, high = corpus_metric_ci(hypotheses, references, chrf, n_resamples=200)
    assert score == pytest.approx(chrf(hypotheses, references))
    assert low <= score <= high < 100.0
    assert corpus_metric_ci(hypotheses, references, chrf, n_resamples=200) == (score, low, high)
    assert corpus_metric_ci(references, references, bleu, n_resamples=50) == pytest.approx((100.0, 100.0, 100.0))


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(7.0)) == pytest.approx(7.0)
    assert perplexity(1e6) == math.inf


def test_example_nlls_split_the_batched_mean_exactly(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    from common.train.example_nll import example_nlls
    from common.text.prompts import IGNORE_INDEX
    from common.judge.stats import perplexity_ci
    from common.train.steps import CompletionLoss, mean_nll

    g = torch.Generator().manual_seed(0)
    examples = []
    for _ in range(6):
        ids = torch.randint(10, 1000, (int(torch.randint(8, 30, (1,), generator=g)),), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * 4 + ids[4:]})
    loss_fn = CompletionLoss(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32))
    pairs = example_nlls(loss_fn, examples, 0, torch.device("cpu"), torch.float32)
    mean, tokens = mean_nll(loss_fn, examples, 4, 0, torch.device("cpu"), torch.float32)
    assert [t for _, t in pairs] == [len(e["input_ids"]) - 4 for e in examples] and sum(t for _, t in pairs) == tokens
    assert sum(n for n, _ in pairs) / tokens == pytest.approx(mean, rel=1e-5)
    value, low, high = perplexity_ci([n for n, _ in pairs], [t for _, t in pairs])
    assert value == pytest.approx(math.exp(mean), rel=1e-5) and low < value < high

"""Scores of one evaluation from its per-sample records, and paired differences against the base model.

A record is one generated sample as the tracker stores it (task_id, sample_index, result,
reference, details with code, syntax category and sentence chrF). Scores are
name -> (value, n, ci_low, ci_high):

    pass@K            unbiased pass@k (Chen et al. 2021) over problems with tests; CI: Wilson when
                      every problem has one sample (pass@1 is then a proportion), else bootstrap
    fail.<status>     counts of failed/error/timeout/memory/syntax_error programs (n = programs)
    error.<Type>      counts by exception or signal name; syntax.<category> counts of compile errors
    syntax_ok         share of programs that compile; Wilson CI with one sample per problem, else bootstrap
    empty, ended.<how>  counts of samples with no code, and of generations ended by eos / stop / length
    test_case_avg     the APPS test-case average: mean over problems of the share of its assertions (or
                      stdin/stdout cases) a sample passes (common/judge/testcases.py); bootstrap CI over problems
    nll, perplexity   held-out: token-weighted over the references; CI: bootstrap over examples
    bleu, chrf        corpus scores of the code against the references, bootstrap CI
    delta.<metric>    adapter minus base on the same problems, paired bootstrap CI (perplexity: token-
                      weighted, examples resampled jointly)
"""
from collections import Counter

import numpy as np

FAIL_STATUSES = ("failed", "error", "timeout", "memory", "syntax_error")


def by_problem(records: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["task_id"], []).append(r)
    return groups


def problem_values(rows: list[dict]) -> dict[str, float | None]:
    """Per-problem pass@1 (None without tests), compile rate and mean sentence chrF (None without reference)."""
    tested = [r for r in rows if r["result"] is not None]
    chrfs = [r["details"]["chrf"] for r in rows if r["details"].get("chrf") is not None]
    return {"pass@1": sum(r["result"] == "passed" for r in tested) / len(tested) if tested else None,
            "syntax_ok": float(np.mean([r["details"]["syntax"] is None for r in rows])),
            "test_case_avg": test_case_avg(rows),
            "chrf": float(np.mean(chrfs)) if chrfs else None}


def score_records(records: list[dict], ks: list[int]) -> dict[str, tuple]:
    """Scores of one benchmark as name -> (value, n, ci_low, ci_high)."""
    from common.judge.metrics import bootstrap_ci, pass_at_k

    scores: dict[str, tuple] = {}
    records = generated(records)
    if not records:
        return scores
    groups = by_problem(records)
    tested = {t: rows for t, rows in groups.items() if rows[0]["result"] is not None}
    if tested:
        per_problem = [(len(rows), sum(r["result"] == "passed" for r in rows)) for rows in tested.values()]
        for k in ks:
            if all(n == 1 for n, _ in per_problem):
                mean, low, high = proportion(sum(c for _, c in per_problem), len(per_problem))
            else:
                mean, low, high = bootstrap_ci([pass_at_k(n, c, k) for n, c in per_problem])
            scores[f"pass@{k}"] = (mean, len(per_problem), low, high)
        programs = [r for rows in tested.values() for r in rows]
        statuses = Counter(r["result"] for r in programs)
        for status in FAIL_STATUSES:
            scores[f"fail.{status}"] = (statuses[status], len(programs), None, None)
        errors = Counter(r["details"]["error_type"] for r in programs
                         if r["result"] != "passed" and r["details"].get("error_type"))
        for error_type, count in sorted(errors.items()):
            scores[f"error.{error_type}"] = (count, len(programs), None, None)
    graded = [v for rows in groups.values() if (v := test_case_avg(rows)) is not None]
    if graded:
        mean, low, high = bootstrap_ci(graded)
        scores["test_case_avg"] = (mean, len(graded), low, high)
    compiled = [problem_values(rows)["syntax_ok"] for rows in groups.values()]
    if all(len(rows) == 1 for rows in groups.values()):
        mean, low, high = proportion(int(sum(compiled)), len(compiled))
    else:
        mean, low, high = bootstrap_ci(compiled)
    scores["syntax_ok"] = (mean, len(groups), low, high)
    # Empty answers and how generation ended tell a model that writes no code from one that writes wrong code.
    scores["empty"] = (sum(not (r["details"].get("code") or "").strip() for r in records), len(records), None, None)
    ended = Counter(r["details"]["ended"].split(" ")[0] for r in records if r["details"].get("ended"))
    for how, count in sorted(ended.items()):
        scores[f"ended.{how}"] = (count, len(records), None, None)
    categories = Counter(r["details"]["syntax"] for r in records if r["details"]["syntax"])
    for category, count in sorted(categories.items()):
        scores[f"syntax.{category.replace(' ', '_')}"] = (count, len(records), None, None)
    pairs = [(r["details"]["code"], r["reference"]) for r in records if r["reference"]]
    if pairs:
        from common.judge.metrics import sacrebleu_corpus_ci
        hypotheses, references = [h for h, _ in pairs], [ref for _, ref in pairs]
        for metric_name in ("bleu", "chrf"):
            value, low, high = sacrebleu_corpus_ci(hypotheses, references, metric_name)
            scores[metric_name] = (value, len(pairs), low, high)
    return scores


def generated(records: list[dict]) -> list[dict]:
    """The records with a generation (not the heldout examples scored by NLL alone)."""
    return [r for r in records if not (r.get("details") or {}).get("nll_only")]


def test_case_avg(rows: list[dict]) -> float | None:
    """Mean over a problem's samples of the share of its test cases passed; None when it was not graded."""
    shares = [r["details"]["tests_passed"] / r["details"]["tests_total"] for r in rows
              if (r.get("details") or {}).get("tests_total")]
    return float(np.mean(shares)) if shares else None


def proportion(k: int, n: int) -> tuple[float, float, float]:
    """k/n with its 95% Wilson interval (never zero-width, also at 0/n and n/n)."""
    from common.judge.stats import wilson_interval

    return (k / n, *wilson_interval(k, n))


def heldout_nll(per_example: list[tuple[float, int]]) -> dict[str, tuple]:
    """nll and perplexity of (summed NLL, tokens) per example: token-weighted, bootstrap CI over examples."""
    import math

    from common.judge.stats import perplexity_ci

    tokens = sum(t for _, t in per_example)
    ppl, low, high = perplexity_ci([n for n, _ in per_example], [t for _, t in per_example])
    return {"nll": (math.log(ppl), tokens, math.log(low), math.log(high)), "perplexity": (ppl, tokens, low, high)}


def paired_deltas(records: list[dict], base_records: list[dict]) -> dict[str, tuple]:
    """Adapter minus base on the problems both answered (matched by task_id), paired bootstrap CIs."""
    from common.judge.metrics import paired_difference

    mine = {t: problem_values(rows) for t, rows in by_problem(generated(records)).items()}
    base = {t: problem_values(rows) for t, rows in by_problem(generated(base_records)).items()}
    deltas: dict[str, tuple] = {}
    for metric in ("pass@1", "test_case_avg", "syntax_ok", "chrf"):
        pairs = [(base[t][metric], mine[t][metric]) for t in mine
                 if t in base and base[t][metric] is not None and mine[t][metric] is not None]
        if pairs:
            mean, low, high = paired_difference([b for b, _ in pairs], [a for _, a in pairs])
            deltas[f"delta.{metric}"] = (mean, len(pairs), low, high)
    deltas.update(paired_perplexity(records, base_records))
    return deltas


def paired_perplexity(records: list[dict], base_records: list[dict]) -> dict[str, tuple]:
    """delta.perplexity with a paired bootstrap on the held-out references both runs scored (same tokens)."""
    from common.judge.stats import paired_perplexity_difference

    def nlls(rows: list[dict]) -> dict[str, tuple[float, int]]:
        return {r["task_id"]: (r["details"]["nll_sum"], r["details"]["tokens"]) for r in rows
                if (r.get("details") or {}).get("nll_sum") is not None}

    mine, base = nlls(records), nlls(base_records)
    common = [t for t in mine if t in base and mine[t][1] == base[t][1]]
    if not common:
        return {}
    diff, low, high = paired_perplexity_difference([base[t][0] for t in common], [mine[t][0] for t in common],
                                                   [mine[t][1] for t in common])
    return {"delta.perplexity": (diff, len(common), low, high)}


def delta_aggregates(scores: dict[str, tuple], base_scores: dict[str, dict]) -> dict[str, tuple]:
    out = {}
    for metric in ("nll", "perplexity"):
        if f"delta.{metric}" in scores:
            continue  # the paired one, with its interval
        if metric in scores and metric in base_scores and base_scores[metric]["value"] is not None:
            out[f"delta.{metric}"] = (scores[metric][0] - base_scores[metric]["value"], scores[metric][1], None, None)
    return out

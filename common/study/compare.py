"""Comparisons within a suite: paired differences vs the reference config and the base model, power, Pareto fronts.

Everything returns data (report.py renders it). Two evaluations are paired only when they share a
benchmark identity (Study.benchmark_identity: benchmark, data key, protocol, and the same problem ids).

    diffs = differences(study, row, reference_row)       # B = row, A = reference; B - A per metric
    family = suite_family(study, "rank")                 # every comparison the report makes, Holm-adjusted
    power = suite_power(all_differences)                 # what "no difference" means for this design

Tests (alpha = 0.05, two-sided), decided before any data were seen:
- pass@1 and syntax ok, one sample per problem: exact McNemar with one evaluation a side; otherwise the
  exact sign-flip permutation test on per-problem pass rates averaged over each side's seeds (McNemar
  per seed pair is kept beside it). No percentile bootstrap decides a pass/fail verdict.
- test-case average, chrF, several samples per problem: z test with the standard error of the crossed
  bootstrap over seeds x problems.
- held-out NLL per token (token-weighted): the same z test, resampling seeds x split groups (the source
  file for stdlib, --group-key for user data): the split drew groups, so the bootstrap draws groups.
- no per-problem samples in the database: evaluate.py's stored paired delta is shown, never starred.

A verdict (`beyond_noise`, the star) needs all of: a seed-aware design (>= 2 seeds on every trained side;
a base model has no training seed), a non-degenerate comparison (not identical per-problem scores, not
every answer empty on both sides), and a Holm-adjusted p < alpha within its family: the suite's
comparisons (each config vs the reference, each config vs its base) of one metric. Each difference
carries the smallest difference its own test detects at 80% power (`detectable`).
"""
from dataclasses import dataclass, replace

import numpy as np

from common.judge import stats
from common.study.rows import Cell, Metric, Problem, Row, Study, build_rows, metric_for, reference_groups
from common.study.suites import CENTRAL

COMPARED = ["pass@1", "test_case_avg", "syntax_ok", "chrf", "nll"]
ONE_SEED = "one seed: seed variation not measured"
STORED = "stored per-seed delta: no per-problem records for a seed-aware, corrected test"


@dataclass(frozen=True)
class Difference:
    """B - A on one metric, with its test."""
    key: str                       # "<benchmark>.<metric>"
    value: float
    low: float | None              # 95% CI of the difference (the interval the z test inverts)
    high: float | None
    test: str                      # "McNemar" | "sign-flip permutation" | "bootstrap z" | "stored"
    beyond_noise: bool | None      # the verdict (see the module docstring); None: no test to judge by
    p_value: float | None = None   # raw two-sided p of the test
    only_a: int | None = None      # McNemar discordant counts: problems only A passes, only B passes
    only_b: int | None = None
    n: int | None = None           # problems (references) paired
    p_adjusted: float | None = None    # Holm within the family (None: not in a family)
    q_value: float | None = None       # Benjamini-Hochberg within the family
    family_size: int | None = None
    seeds: tuple[int, int] = (1, 1)    # evaluations of A and of B
    seed_aware: bool = False           # >= 2 seeds on every trained side
    degenerate: str | None = None      # why the comparison carries no information, when it does not
    unit: str = ""                     # what the test treats as independent (what a bootstrap resampled)
    detectable: float | None = None    # smallest difference this test detects at 80% power (alpha 0.05)
    seed_pair_p: tuple[float, ...] = ()   # exact McNemar p per (seed of A, seed of B), when several
    note: str = ""


@dataclass(frozen=True)
class Power:
    """What a McNemar test on n problems could detect (alpha = 0.05, 80% power)."""
    n: int
    discordance: float | None      # observed share of problems where two configs disagree (pooled)
    detectable: float | None       # smallest pass@1 difference at the observed discordance (None: none)
    floor: float                   # smallest difference in the most favourable case (all flips one way)
    min_flips: int                 # one-way flips needed for p < 0.05 at all
    needed: dict[float, int | None]  # target difference -> problems needed at the observed discordance


def reference_row(rows: list[Row]) -> Row | None:
    """The suite's reference config: the central one (every suite is compared around it)."""
    wanted = {k: v for k, v in CENTRAL.items() if k != "seed"}
    for row in rows:
        if all(row.config.get(k) == v for k, v in wanted.items()) and CENTRAL["seed"] in row.seeds:
            return row
    return None


def matching_base(study: Study, row: Row, bases: list[Row]) -> Row | None:
    """The base evaluation whose settings best match the row's (newest eval) settings; the newest on a tie."""
    if not bases or not row.eval_ids:
        return bases[0] if bases else None
    config = study.runs[row.eval_ids[-1]]["config"]
    keys = ("model", "quant", "benchmarks", "benchmark", "eval_limit", "n_samples", "temperature", "max_new_tokens")
    return max(bases, key=lambda b: (sum(b.config.get(k) == config.get(k) for k in keys if k in config),
                                     b.eval_ids[0]))


def suite_pairs(study: Study, suite: str) -> list[tuple[Row, Row, str]]:
    """(config, comparison, "reference" | "base"): every comparison a suite's report makes, the reference's first."""
    rows, bases = build_rows(study, suite)
    reference = reference_row(rows)
    pairs = []
    for row in sorted(rows, key=lambda r: r is not reference):
        if reference and row is not reference:
            pairs.append((row, reference, "reference"))
        base = matching_base(study, row, bases)
        if base is not None:
            pairs.append((row, base, "base"))
    return pairs


def _pair_key(a: Row, b: Row) -> tuple:
    return a.kind, tuple(a.eval_ids), tuple(b.eval_ids)


def suite_family(study: Study, suite: str) -> dict[tuple, dict[str, Difference]]:
    """Every comparison of the suite (suite_pairs), by pair, with Holm and BH adjustment per metric.

    The family of a metric is the suite's distinct, non-degenerate comparisons of it that have a p-value
    (one-seed ones included: they cannot be starred, but they were made, so they count).
    """
    memo_key = ("family", suite)
    if memo_key not in study.memo:
        raw: dict[tuple, dict[str, Difference]] = {}
        for row, other, _ in suite_pairs(study, suite):
            raw.setdefault(_pair_key(other, row), _memo_differences(study, other, row))
        study.memo[memo_key] = adjust_families(raw)
    return study.memo[memo_key]


def adjust_families(raw: dict[tuple, dict[str, Difference]]) -> dict[tuple, dict[str, Difference]]:
    """Holm-adjusted p and BH q per metric over the pairs; the star only where Holm survives."""
    members: dict[str, list[tuple[tuple, Difference]]] = {}
    for pair, diffs in raw.items():
        for key, d in diffs.items():
            if d.p_value is not None and d.degenerate is None:
                members.setdefault(key, []).append((pair, d))
    out = {pair: dict(diffs) for pair, diffs in raw.items()}
    for key, family in members.items():
        p = [d.p_value for _, d in family]
        for (pair, d), holm, q in zip(family, stats.holm(p), stats.benjamini_hochberg(p)):
            out[pair][key] = replace(d, p_adjusted=holm, q_value=q, family_size=len(p),
                                     beyond_noise=d.seed_aware and holm < stats.ALPHA)
    return out


def differences(study: Study, a: Row, b: Row) -> dict[str, Difference]:
    """B - A for every compared metric on every benchmark both rows share; stored deltas when A is a base row.

    A pair the suite's report makes is judged within its family (suite_family); any other pair (the
    runner-up for bold, budgets) by its own raw test, with the same seed and degeneracy rules.
    """
    family = suite_family(study, a.suite) if a.suite in study.members and a is not b else {}
    found = family.get(_pair_key(a, b))
    return found if found is not None else _memo_differences(study, a, b)


def _memo_differences(study: Study, a: Row, b: Row) -> dict[str, Difference]:
    memo_key = ("differences", a.kind, tuple(a.eval_ids), tuple(b.eval_ids))
    if memo_key not in study.memo:
        study.memo[memo_key] = _differences(study, a, b)
    return study.memo[memo_key]


def _paired_grids(study: Study, a: Row, b: Row, bench: str) -> tuple[list, list] | None:
    """Per-seed problem lists of both rows on `bench`, in the same problem order; None when not comparable."""
    if not a.eval_ids or not b.eval_ids or a is b:
        return None
    identities = {study.benchmark_identity(e, bench) for e in a.eval_ids + b.eval_ids}
    if len(identities) != 1 or not next(iter(identities))[3]:
        return None
    tasks = next(iter(identities))[3]
    return tuple([[study.problems(e, bench)[t] for t in tasks] for e in row.eval_ids] for row in (a, b))


def _differences(study: Study, a: Row, b: Row) -> dict[str, Difference]:
    out: dict[str, Difference] = {}
    shared = set(study.benchmarks(a.eval_ids[0])) & set(study.benchmarks(b.eval_ids[0])) \
        if a.eval_ids and b.eval_ids else set()
    trained = (a.kind == "adapter", b.kind == "adapter")
    for bench in sorted(shared):
        grids = _paired_grids(study, a, b, bench)
        if grids is None:
            continue
        for name in COMPARED:
            diff = _difference(f"{bench}.{name}", *grids, trained)
            if diff:
                out[diff.key] = diff
    if a.kind == "base":
        for key, cell in b.cells.items():
            bench, _, name = key.partition(".")
            if name.startswith("delta.") and f"{bench}.{name[6:]}" not in out and cell.values:
                out[f"{bench}.{name[6:]}"] = _stored(f"{bench}.{name[6:]}", cell)
    return out


_ATTRIBUTES = {"pass@1": "passed", "test_case_avg": "graded", "syntax_ok": "compiled", "chrf": "chrf", "nll": "nll"}


def _difference(key: str, grid_a: list[list[Problem]], grid_b: list[list[Problem]],
                trained: tuple[bool, bool]) -> Difference | None:
    attr = _ATTRIBUTES[key.split(".", 1)[1]]
    if attr == "nll":  # examples dropped as too long carry no NLL on either side
        kept = [j for j in range(len(grid_a[0])) if all(s[j].nll is not None for s in grid_a + grid_b)]
        grid_a, grid_b = [[s[j] for j in kept] for s in grid_a], [[s[j] for j in kept] for s in grid_b]
        if not kept:
            return None
    values_a = [[getattr(p, attr) for p in seed] for seed in grid_a]
    values_b = [[getattr(p, attr) for p in seed] for seed in grid_b]
    if any(v is None for seed in values_a + values_b for v in seed):
        return None
    seeds = (len(values_a), len(values_b))
    seed_aware = all(n >= 2 for n, is_trained in zip(seeds, trained) if is_trained)
    common = dict(n=len(values_a[0]), seeds=seeds, seed_aware=seed_aware, note="" if seed_aware else ONE_SEED)
    if attr == "nll":
        return _nll_difference(key, grid_a, grid_b, values_a, values_b, common)
    degenerate = _degenerate(grid_a, grid_b, values_a, values_b)
    binary = attr in ("passed", "compiled") and all(p.n_samples == 1 for seed in grid_a + grid_b for p in seed)
    if binary:
        diff = _binary_difference(key, values_a, values_b, common)
    else:
        value, estimates = stats.paired_crossed_bootstrap(values_a, values_b)
        diff = _z_difference(key, value, estimates, ("seeds x " if max(seeds) > 1 else "") + "problems", common)
    return replace(diff, degenerate=degenerate, beyond_noise=diff.beyond_noise and degenerate is None)


def _degenerate(grid_a: list[list[Problem]], grid_b: list[list[Problem]], values_a: list, values_b: list) -> str | None:
    """Why a generation metric's comparison carries no information: every answer empty, or the same scores."""
    if all(p.empty for seed in grid_a + grid_b for p in seed):
        return "every answer empty"
    if np.allclose(np.mean(values_a, axis=0), np.mean(values_b, axis=0), rtol=0, atol=1e-12):
        return "identical per-problem scores"
    return None


def _nll_difference(key: str, grid_a: list[list[Problem]], grid_b: list[list[Problem]], values_a: list,
                    values_b: list, common: dict) -> Difference | None:
    """Token-weighted NLL per token; the seeds of one config share the split, so its tokens and groups."""
    tokens = [p.tokens for p in grid_a[0]]
    if any([p.tokens for p in seed] != tokens for seed in grid_a + grid_b):
        return None
    groups = reference_groups(grid_a[0])
    value, estimates = stats.paired_crossed_bootstrap(values_a, values_b, tokens, groups)
    unit = f"{len(set(groups))} split groups" if groups else "references (no split groups recorded)"
    return _z_difference(key, value, estimates, ("seeds x " if max(common["seeds"]) > 1 else "") + unit, common)


def _z_difference(key: str, value: float, estimates: np.ndarray, unit: str, common: dict) -> Difference:
    test = stats.bootstrap_z_test(value, estimates)
    return Difference(key, value, test.low, test.high, "bootstrap z",
                      common["seed_aware"] and test.p_value < stats.ALPHA, test.p_value, unit=unit,
                      detectable=stats.z_detectable(test.se), **common)


def _binary_difference(key: str, values_a: list, values_b: list, common: dict) -> Difference:
    """Exact McNemar with one evaluation a side, else the sign-flip test with McNemar per seed pair beside it."""
    n = common["n"]
    if common["seeds"] == (1, 1):
        m = stats.mcnemar_exact(values_a[0], values_b[0])
        return Difference(key, m.difference, None, None, "McNemar", common["seed_aware"] and m.p_value < stats.ALPHA,
                          m.p_value, m.only_a, m.only_b, unit="problems (exact)",
                          detectable=stats.mcnemar_detectable(n, (m.only_a + m.only_b) / n), **common)
    flip = stats.sign_flip_test(values_a, values_b)
    pairs = tuple(stats.mcnemar_exact(a, b).p_value for a in values_a for b in values_b)
    return Difference(key, flip.value, None, None, "sign-flip permutation",
                      common["seed_aware"] and flip.p_value < stats.ALPHA, flip.p_value,
                      unit="problems (pass rates averaged over seeds)",
                      detectable=stats.sign_flip_detectable(flip.differences), seed_pair_p=pairs, **common)


def _stored(key: str, cell: Cell) -> Difference:
    """evaluate.py's paired delta vs the base model: shown with its interval, never starred (no p, no family)."""
    low, high = cell.ci if cell.ci else (None, None)
    return Difference(key, cell.mean, low, high, "stored", None, seeds=(1, len(cell.values)), note=STORED)


def suite_power(diffs: list[Difference], targets: tuple[float, ...] = (0.05, 0.10)) -> Power | None:
    """Power of the suite's design from its McNemar pass@1 comparisons (pooled discordance); None without any."""
    mcnemar = [d for d in diffs if d.test == "McNemar" and d.key.endswith(".pass@1")]
    if not mcnemar:
        return None
    n = max(d.n for d in mcnemar)
    discordance = sum(d.only_a + d.only_b for d in mcnemar) / sum(d.n for d in mcnemar)
    detectable = stats.minimum_detectable_difference(n, discordance) if discordance > 0 else None
    needed = {t: stats.problems_needed(t, max(discordance, t)) for t in targets}
    return Power(n, discordance, detectable, stats.minimum_detectable_difference(n) or 1.0,
                 stats.min_one_way_flips(), needed)


# ---------------------------------------------------------------------------- choosing

def better(metric: Metric, a: float, b: float) -> bool:
    return a < b if metric.better == "lower" else a > b


def separated(study: Study, a: Row, b: Row, key: str) -> bool | None:
    """Whether rows a and b differ on `key` beyond noise: the paired test when there is one, else whether
    both have intervals (95% CI, or mean ± std over seeds) and they are disjoint; None when either has none."""
    diff = differences(study, a, b).get(key) if key.split(".", 1)[0] != "train" else None
    if diff is not None:
        return diff.beyond_noise
    ia, ib = (a.get(key) and a.get(key).interval()), (b.get(key) and b.get(key).interval())
    if not ia or not ib:
        return None
    return ia[1] < ib[0] or ib[1] < ia[0]


def best_row(study: Study, rows: list[Row], key: str) -> Row | None:
    """The best row on `key` when it beats the runner-up beyond noise; None otherwise (ties, noise, no direction)."""
    metric = metric_for(key)
    ranked = sorted([r for r in rows if r.get(key)], key=lambda r: (
        -r.mean(key) if metric.better == "higher" else r.mean(key), r.label))
    if metric.better is None or len(ranked) < 2 or ranked[0].mean(key) == ranked[1].mean(key):
        return None
    return ranked[0] if separated(study, ranked[0], ranked[1], key) else None


def quality_metric(rows: list[Row], bases: list[Row]) -> tuple[str | None, str]:
    """Held-out NLL per token when every config has it (the sensitive signal: at 135M-1B parameters strict
    pass@1 is a few percent and mostly ties), else pass@1 when anything solves something, else chrF, else
    validation loss; and why."""
    everything = rows + bases
    if rows and all(r.get("heldout.nll") for r in rows):
        return "heldout.nll", "held-out NLL per token (lower is better)"
    if any((r.mean("humaneval.pass@1") or 0) > 0 for r in everything):
        return "humaneval.pass@1", "pass@1 on HumanEval"
    for key, name in (("humaneval.chrf", "chrF on HumanEval"), ("heldout.chrf", "chrF on the held-out split")):
        if any(r.get(key) for r in rows):
            has_pass = any(r.get("humaneval.pass@1") for r in everything)
            why = " (pass@1 is 0 for every configuration, so it cannot rank them)" if has_pass else ""
            return key, name + why
    if any(r.get("train.final_val_loss") for r in rows):
        return "train.final_val_loss", "validation loss (lower is better; no evaluation scores)"
    return None, "no quality score"


def pareto(rows: list[Row], quality: str, cost: str) -> list[Row]:
    """Rows no other row beats on both quality (higher, or lower for a loss) and cost (lower), by cost. Costs are
    Row.cost's: a row whose runs were all contended (or of unknown load) has none, so it is left out."""
    q = metric_for(quality)
    points = [r for r in rows if r.mean(quality) is not None and r.cost_mean(cost) is not None]

    def dominates(o: Row, r: Row) -> bool:
        at_least = not better(q, r.mean(quality), o.mean(quality)) and o.cost_mean(cost) <= r.cost_mean(cost)
        return at_least and (better(q, o.mean(quality), r.mean(quality)) or o.cost_mean(cost) < r.cost_mean(cost))
    front = [r for r in points if not any(dominates(o, r) for o in points if o is not r)]
    return sorted(front, key=lambda r: (r.cost_mean(cost), r.label))


@dataclass(frozen=True)
class Budget:
    """What to train within a memory budget: the best config by quality that fits when its gain over the cheapest
    that fits is a finding, else the cheapest (equivalent within what the design detects)."""
    text: str                      # "1.1 GiB"
    pick: Row                      # the recommendation
    cheapest: Row                  # the config that fits with the lowest (uncontended) peak memory
    best: Row                      # the best by quality among those that fit (may be the cheapest)
    verdict: Difference | None     # best - cheapest on quality, with its test (None: the same row, or no test)
    caveat: str = ""               # QUANT_CAVEAT when the two differ in quant and the verdict is a finding

    @property
    def margin(self) -> float | None:
        """D: the smallest difference the verdict's test detects at 80% power (the figure the summary prints)."""
        return self.verdict.detectable if self.verdict else None


def budgets(study: Study, rows: list[Row], quality: str) -> list[Budget]:
    """For each uncontended peak memory on the Pareto front (rounded up), among the configs that fit: the best by
    quality when it beats the cheapest beyond noise (budget_verdicts), else the cheapest."""
    from common.study.rows import nice_budget

    metric = metric_for(quality)
    scored = [r for r in rows if r.mean(quality) is not None and r.cost_mean("train.peak_mb") is not None]
    levels = sorted({nice_budget(r.cost_mean("train.peak_mb")) for r in pareto(scored, quality, "train.peak_mb")})
    picks = []
    for limit, text in levels:
        fits = [r for r in scored if r.cost_mean("train.peak_mb") <= limit + 1e-9]
        cheapest = min(fits, key=lambda r: (r.cost_mean("train.peak_mb"), r.label))
        best = min(fits, key=lambda r: (-r.mean(quality) if metric.better != "lower" else r.mean(quality),
                                        r.cost_mean("train.peak_mb"), r.label))
        picks.append((text, cheapest, best))
    verdicts = budget_verdicts(study, [(c, b) for _, c, b in picks if c is not b], quality)
    out = []
    for text, cheapest, best in picks:
        verdict = verdicts.get(_pair_key(cheapest, best)) if cheapest is not best else None
        found = bool(verdict and verdict.beyond_noise)
        out.append(Budget(text, best if found else cheapest, cheapest, best, verdict,
                          quant_caveat(study, cheapest, best) if found else ""))
    return out


def budget_verdicts(study: Study, pairs: list[tuple[Row, Row]], key: str) -> dict[tuple, Difference]:
    """B - A on `key` for each (A, B) pair, judged as the report judges its own comparisons: a pair the suite's
    report already makes keeps its family's verdict; the others join the suite's family of `key` for the Holm
    correction, so asking the budget question adds comparisons rather than escaping the correction."""
    if not pairs:
        return {}
    suite = pairs[0][0].suite
    family = suite_family(study, suite) if suite in study.members else {}
    raw = {_pair_key(o, r): _memo_differences(study, o, r) for r, o, _ in suite_pairs(study, suite)} if family else {}
    made = [family.get(_pair_key(a, b)) or family.get(_pair_key(b, a)) for a, b in pairs]
    extended = adjust_families({**raw, **{_pair_key(a, b): _memo_differences(study, a, b)
                                          for (a, b), m in zip(pairs, made) if m is None}})
    out = {}
    for (a, b), m in zip(pairs, made):
        own, judged = _memo_differences(study, a, b).get(key), (m or extended[_pair_key(a, b)]).get(key)
        if own is not None and judged is not None:   # the family's p, in this pair's direction
            out[_pair_key(a, b)] = replace(judged, value=own.value, low=own.low, high=own.high, only_a=own.only_a,
                                           only_b=own.only_b)
    return out


QUANT_CAVEAT = "(base weights dequantized from a 4-bit GGUF; memory is CPU RSS)"


def quant_caveat(study: Study, a: Row, b: Row) -> str:
    """The limit a finding about quantization carries: for arms that differ in quant whose every run loaded its
    base weights from a GGUF (already quantized once, so "16-bit" is a dequantized 4-bit model) on a CPU (where
    peak memory is process RSS, not GPU allocation); "" otherwise."""
    if a.config.get("quant") == b.config.get("quant"):
        return ""
    runs = [study.runs[i] for i in a.train_ids + a.eval_ids + b.train_ids + b.eval_ids]
    sources = {gguf_source(run["config"]) for run in runs}
    if not runs or None in sources or not all(on_cpu(run) for run in runs):
        return ""
    return QUANT_CAVEAT if sources == {"a 4-bit GGUF"} else QUANT_CAVEAT.replace("a 4-bit GGUF", "a GGUF")


def gguf_source(config: dict) -> str | None:
    """Where a run's base weights came from when it was a GGUF file: the embedded models are (4-bit ones); a
    --model path to a .gguf file, or a recorded gguf_file, too."""
    from common.model.resolve import EMBEDDED

    spec = EMBEDDED.get(str(config.get("model")))
    if spec is not None:
        return "a 4-bit GGUF" if "q4" in spec.gguf_file.lower() else "a GGUF"
    return "a GGUF" if str(config.get("model", "")).endswith(".gguf") or config.get("gguf_file") else None


def on_cpu(run: dict) -> bool:
    """The run recorded its hardware and it had no GPU (train runs also record the device they used)."""
    hardware = run["hardware"] or {}
    return bool(hardware) and not hardware.get("gpu") and run["config"].get("device", "cpu") == "cpu"


@dataclass(frozen=True)
class Examples:
    row: Row                       # the best config by the quality metric
    adapter_eval: int
    base_eval: int
    pairs: list[tuple[tuple[str, str], dict, dict]]   # ((benchmark, task_id), adapter sample, base sample)


def pick_examples(study: Study, rows: list[Row], bases: list[Row], quality: str | None, n: int = 3) -> Examples | None:
    """Before/after samples of the best config against its base: up to n problems whose outcome differs (fixed
    first, then broken), one HumanEval problem both fail with different outputs, one held-out example."""
    if not rows or not bases or quality is None:
        return None
    metric = metric_for(quality)
    scored = [r for r in rows if r.mean(quality) is not None and r.eval_ids]
    if not scored:
        return None
    best = min(scored, key=lambda r: (-r.mean(quality) if metric.better != "lower" else r.mean(quality), r.label))
    adapter_eval, base_eval = best.eval_ids[-1], matching_base(study, best, bases).eval_ids[0]
    adapter, base = ({(s["benchmark"], s["task_id"]): s for s in study.tracker.samples(run)
                      if s["sample_index"] == 0 and s["generation"] is not None} for run in (adapter_eval, base_eval))

    def kind(k: tuple[str, str]) -> int:
        passed_a, passed_b = adapter[k]["result"] == "passed", base[k]["result"] == "passed"
        if passed_a != passed_b:
            return 0 if passed_a else 1
        return 2 if adapter[k]["generation"] != base[k]["generation"] else 3

    ranked = sorted(set(adapter) & set(base), key=lambda k: (kind(k), k[0] != "humaneval", k[0], _natural(k[1])))
    if not ranked:
        return None
    picked = [k for k in ranked if kind(k) < 2][:n]
    picked += [k for k in ranked if kind(k) == 2 and k[0] == "humaneval"][:1]
    picked += [k for k in ranked if k[0] != "humaneval" and k not in picked][:1]
    return Examples(best, adapter_eval, base_eval, [(k, adapter[k], base[k]) for k in picked])


def _natural(text: str) -> tuple:
    import re
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text))

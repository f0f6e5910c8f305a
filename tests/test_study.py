"""The study model (common/study/rows.py, common/study/compare.py) on a hand-written database: numbers, not prose."""
import math

import pytest
from study_db import PROBLEMS, build_study, eval_run, train_run

from common.study import compare

from common.judge import stats
from common.study.rows import Study, build_rows, nice_budget
from common.tracker import Tracker


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "study.db"
    ids = build_study(path)
    study = Study(Tracker(path))
    rows, bases = build_rows(study, "rank")
    return study, {r.label: r for r in rows}, bases, ids


def test_rows_group_seeds_and_recompute_pass_rates_with_wilson_intervals(study):
    _, rows, bases, ids = study
    assert list(rows) == ["rank=4", "rank=8", "rank=16"]           # failed r32 has no row; sorted by rank
    r8 = rows["rank=8"].get("humaneval.pass@1")
    assert r8.mean == pytest.approx(8 / PROBLEMS) and r8.ci == pytest.approx(stats.wilson_interval(8, PROBLEMS))
    base = bases[0].get("humaneval.pass@1")
    assert base.mean == 0 and base.ci[0] == 0 and base.ci[1] == pytest.approx(stats.wilson_interval(0, PROBLEMS)[1])
    r16 = rows["rank=16"]
    assert r16.seeds == [0, 1] and r16.train_ids == ids["r16"] and r16.eval_ids == ids["r16_evals"]
    cell = r16.get("humaneval.pass@1")
    assert [v for v, _, _ in cell.values] == pytest.approx([0.30, 0.35])
    assert cell.mean == pytest.approx(0.325) and cell.std == pytest.approx(0.05 / math.sqrt(2))
    assert cell.ci[0] < 0.30 and cell.ci[1] > 0.35                 # the cluster interval spans both seeds
    # Cost cells come from the train runs: peak RSS as peak memory, averaged over seeds.
    assert r16.mean("train.peak_mb") == pytest.approx(1510)


def test_test_case_average_of_several_seeds_gets_the_crossed_bootstrap_interval(study):
    _, rows, _, _ = study
    r8, r16 = rows["rank=8"].get("humaneval.test_case_avg"), rows["rank=16"].get("humaneval.test_case_avg")
    assert r8.ci == pytest.approx((r8.mean - 0.05, r8.mean + 0.05))  # one seed: the stored interval
    per_seed = [v for v, _, _ in r16.values]
    assert per_seed[0] != per_seed[1] and r16.ci[0] < min(per_seed) and r16.ci[1] > max(per_seed)


def test_perplexity_is_recomputed_token_weighted_with_an_interval(study):
    _, _, bases, _ = study
    cell = bases[0].get("heldout.perplexity")
    tokens = [10 + j for j in range(10)]
    nll = [2.0 * t * (1 + 0.05 * (j % 3)) for j, t in enumerate(tokens)]
    assert cell.mean == pytest.approx(math.exp(sum(nll) / sum(tokens)))
    assert cell.ci[0] < cell.mean < cell.ci[1]


def test_paired_differences_against_the_base_use_exact_mcnemar(study):
    s, rows, bases, _ = study
    r8 = compare.differences(s, bases[0], rows["rank=8"])
    d = r8["humaneval.pass@1"]
    assert (d.test, d.only_a, d.only_b, d.n) == ("McNemar", 0, 8, PROBLEMS)
    assert d.p_value == pytest.approx(2 * 0.5 ** 8) and d.beyond_noise and d.value == pytest.approx(0.4)
    r4 = compare.differences(s, bases[0], rows["rank=4"])["humaneval.pass@1"]
    assert (r4.only_b, r4.p_value, r4.beyond_noise) == (2, 0.5, False)
    nll = r8["heldout.nll"]
    assert nll.test == "bootstrap" and nll.value < 0 and nll.high < 0 and nll.beyond_noise
    assert r8["humaneval.chrf"].low > 0                           # +15 on every problem, +10 more where it passes


def test_differences_against_a_multi_seed_reference_use_the_cluster_bootstrap(study):
    s, rows, _, _ = study
    reference = compare.reference_row(list(rows.values()))
    assert reference is rows["rank=16"]
    d = compare.differences(s, reference, rows["rank=4"])["humaneval.pass@1"]
    assert d.test == "cluster bootstrap" and d.value == pytest.approx(0.10 - 0.325)
    assert d.high < 0 and d.beyond_noise
    nll = compare.differences(s, reference, rows["rank=4"])["heldout.nll"]  # seeds x references, token-weighted
    assert nll.test == "cluster bootstrap" and nll.low < nll.value < nll.high
    assert compare.differences(s, reference, reference) == {}


def test_only_evaluations_with_the_same_benchmark_identity_are_paired(tmp_path):
    db = Tracker(tmp_path / "p.db")
    eval_run(db, "p", None, "base", set(), nll_per_token=2.0)
    r = train_run(db, "p", 4, "16bit", 0, peak=1, seconds=1)
    eval_run(db, "p", r, "chat", set(range(10)), nll_per_token=1.0, protocol="chat")
    r2 = train_run(db, "p", 8, "16bit", 0, peak=1, seconds=1)
    eval_run(db, "p", r2, "other-split", set(range(10)), nll_per_token=1.0, split_seed=1)
    db.close()
    s = Study(Tracker(tmp_path / "p.db"))
    rows, bases = build_rows(s, "p")
    assert compare.differences(s, bases[0], rows[0]) == {}          # completion vs chat: not the same benchmark
    other_split = compare.differences(s, bases[0], rows[1])         # same HumanEval, another held-out split
    assert "humaneval.pass@1" in other_split and not any(k.startswith("heldout.") for k in other_split)


def test_power_of_the_design(study):
    s, rows, bases, _ = study
    diffs = [d for r in rows.values() for d in compare.differences(s, bases[0], r).values()]
    power = compare.suite_power(diffs)
    # Against the base (which passes nothing), discordance = each config's passes: (2 + 8) / 40 single-seed pairs.
    assert power.n == PROBLEMS and power.discordance == pytest.approx(10 / 40) and power.min_flips == 6
    assert power.floor == stats.minimum_detectable_difference(PROBLEMS)
    assert power.detectable == stats.minimum_detectable_difference(PROBLEMS, 0.25)
    assert power.needed[0.05] == stats.problems_needed(0.05, 0.25)
    assert compare.suite_power([d for d in diffs if d.test != "McNemar"]) is None


def test_bold_only_beyond_noise_pareto_and_budgets(study):
    s, rows, _, _ = study
    adapters = list(rows.values())
    # r8 passes 8 of 20, the reference 6.5 on average: not separable; but its chrF gain is consistent.
    assert compare.best_row(s, adapters, "humaneval.pass@1") is None
    assert compare.best_row(s, adapters, "humaneval.chrf") is rows["rank=8"]
    assert compare.pareto(adapters, "humaneval.pass@1", "train.peak_mb") == [rows["rank=4"], rows["rank=8"]]
    budgets = compare.budgets(s, adapters, "humaneval.pass@1")
    assert [(b.text, b.pick.label) for b in budgets] == [("1000 MB", "rank=4"), ("1.1 GB", "rank=8")]
    assert budgets[1].previous is rows["rank=4"] and budgets[1].separated   # 6 one-way flips: p = 1/32
    assert nice_budget(493.5) == (500, "500 MB") and nice_budget(3.21 * 1024)[1] == "3.3 GB"


def test_shared_config_belongs_to_both_suites(study):
    s, _, _, ids = study
    rows, _ = build_rows(s, "quant")
    shared = next(r for r in rows if r.config["quant"] == "16bit")
    assert shared.train_ids == ids["r16"] and compare.reference_row(rows) is shared


def test_before_after_examples_pick_fixed_then_both_failed_then_heldout(study):
    s, rows, bases, _ = study
    picked = compare.pick_examples(s, list(rows.values()), bases, "humaneval.pass@1")
    assert picked.row is rows["rank=8"]
    keys = [k for k, _, _ in picked.pairs]
    assert keys[:3] == [("humaneval", "HumanEval/0"), ("humaneval", "HumanEval/1"), ("humaneval", "HumanEval/2")]
    assert keys[3] == ("humaneval", "HumanEval/10")                 # both fail, different outputs
    assert keys[4][0] == "heldout" and len(keys) == 5


def test_without_samples_the_stored_delta_decides(tmp_path):
    db = Tracker(tmp_path / "s.db")
    base = db.start_run("base", "eval", {"model": "tiny"}, suite="s")
    db.log_scores(base, "humaneval", {"pass@1": (0.1, 10, 0.0, 0.3)})
    db.finish_run(base, "completed")
    for rank, delta in ((4, (0.2, 0.05, 0.35)), (8, (0.1, -0.1, 0.3)), (16, (0.1, None, None))):
        r = train_run(db, "s", rank, "16bit", 0, peak=1, seconds=1)
        e = db.start_run(f"e{rank}", "eval", {"model": "tiny"}, suite="s", parent_id=r)
        db.log_scores(e, "humaneval", {"pass@1": (0.1 + delta[0], 10, None, None),
                                       "delta.pass@1": (delta[0], 10, delta[1], delta[2])})
        db.finish_run(e, "completed")
    db.close()
    s = Study(Tracker(tmp_path / "s.db"))
    rows, bases = build_rows(s, "s")
    verdicts = [compare.differences(s, bases[0], r)["humaneval.pass@1"].beyond_noise for r in rows]
    assert verdicts == [True, False, None]


def test_a_value_without_an_interval_is_never_called_separated(study):
    s, rows, _, _ = study
    # val loss: one seed, no CI, against a two-seed mean ± std: nothing to judge the single seed's noise by.
    assert compare.separated(s, rows["rank=8"], rows["rank=16"], "train.final_val_loss") is None
    assert compare.best_row(s, list(rows.values()), "train.final_val_loss") is None


def test_examples_without_nll_are_left_out_of_perplexity_on_both_sides(tmp_path):
    db = Tracker(tmp_path / "n.db")
    eval_run(db, "n", None, "base", set(), nll_per_token=2.0, too_long=9)
    r = train_run(db, "n", 4, "16bit", 0, peak=1, seconds=1)
    eval_run(db, "n", r, "adapter", set(), nll_per_token=1.5)
    db.close()
    s = Study(Tracker(tmp_path / "n.db"))
    rows, bases = build_rows(s, "n")
    tokens = [10 + j for j in range(9)]
    nll = [2.0 * t * (1 + 0.05 * (j % 3)) for j, t in enumerate(tokens)]
    assert bases[0].mean("heldout.perplexity") == pytest.approx(math.exp(sum(nll) / sum(tokens)))
    assert compare.differences(s, bases[0], rows[0])["heldout.nll"].n == 9


def test_tracker_memberships_and_scores(tmp_path):
    db = Tracker(tmp_path / "m.db")
    run = db.start_run("r", "train", {}, suite="rank")
    other = db.start_run("o", "train", {})
    db.log_scores(run, "train", {"peak_rss_mb": 5.0})
    db.log_membership(run, ["quant", "seeds"])
    db.log_membership(other, ["quant"])
    assert db.memberships() == {"rank": {run}, "quant": {run, other}, "seeds": {run}}
    assert db.all_scores() == {run: {"train.peak_rss_mb": {"value": 5.0, "n": None, "low": None, "high": None}}}

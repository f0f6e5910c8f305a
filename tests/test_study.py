"""The study model (common/study/rows.py, common/study/compare.py) on a hand-written database: numbers, not prose."""
import math

import pytest
from study_db import PROBLEMS, build_study, eval_run, humaneval_sample, train_run

from common.study import compare

from common.judge import stats
from common.study.rows import Problem, Study, build_rows, nice_budget
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


def test_paired_differences_against_the_base_use_exact_mcnemar_but_one_seed_gets_no_star(study):
    s, rows, bases, _ = study
    r8 = compare.differences(s, bases[0], rows["rank=8"])
    d = r8["humaneval.pass@1"]
    assert (d.test, d.only_a, d.only_b, d.n, d.seeds) == ("McNemar", 0, 8, PROBLEMS, (1, 1))
    assert d.p_value == pytest.approx(2 * 0.5 ** 8) and d.value == pytest.approx(0.4)
    assert not d.beyond_noise and d.note == compare.ONE_SEED        # p < 0.05, but seed variation not measured
    assert d.detectable == stats.mcnemar_detectable(PROBLEMS, 8 / PROBLEMS)
    # The suite's pass@1 family: r4 and r8 vs the reference and vs the base, r16 vs the base.
    assert d.family_size == 5 and d.p_adjusted >= d.p_value and d.q_value <= d.p_adjusted
    r4 = compare.differences(s, bases[0], rows["rank=4"])["humaneval.pass@1"]
    assert (r4.only_b, r4.p_value, r4.beyond_noise) == (2, 0.5, False)
    nll = r8["heldout.nll"]
    assert nll.test == "bootstrap z" and nll.value < 0 and nll.high < 0 and not nll.beyond_noise
    assert nll.unit == "references (no split groups recorded)" and nll.p_value < 0.05
    assert nll.detectable == pytest.approx(2.8016 * (nll.high - nll.low) / (2 * 1.96), rel=1e-3)
    assert r8["humaneval.chrf"].low > 0                           # +15 on every problem, +10 more where it passes


def test_differences_against_a_multi_seed_reference_use_the_sign_flip_test(study):
    s, rows, _, _ = study
    reference = compare.reference_row(list(rows.values()))
    assert reference is rows["rank=16"]
    d = compare.differences(s, reference, rows["rank=4"])["humaneval.pass@1"]
    assert d.test == "sign-flip permutation" and d.value == pytest.approx(0.10 - 0.325) and d.seeds == (2, 1)
    # Per-problem rate differences -1 (problems 2-5) and -1/2 (problem 6): |T| >= 4.5 in 2 of 2^5 sign flips,
    # where a percentile bootstrap of the same data excludes zero.
    assert d.p_value == pytest.approx(2 / 32) and not d.beyond_noise and d.note == compare.ONE_SEED
    assert len(d.seed_pair_p) == 2 and d.seed_pair_p[0] == pytest.approx(stats.mcnemar_p(4, 0))
    nll = compare.differences(s, reference, rows["rank=4"])["heldout.nll"]  # seeds x references, token-weighted
    assert nll.test == "bootstrap z" and nll.low < nll.value < nll.high and nll.unit.startswith("seeds x ")
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
    # r8 passes 8 of 20, the reference 6.5 on average: not separable; its chrF gain is consistent but one seed.
    assert compare.best_row(s, adapters, "humaneval.pass@1") is None
    assert compare.best_row(s, adapters, "humaneval.chrf") is None
    assert compare.pareto(adapters, "humaneval.pass@1", "train.peak_mb") == [rows["rank=4"], rows["rank=8"]]
    budgets = compare.budgets(s, adapters, "humaneval.pass@1")
    # rank=8 is best within 1.1 GiB, but one seed a side: no finding, so the cheapest that fits.
    assert [(b.text, b.pick.label, b.best.label) for b in budgets] == [("1000 MiB", "rank=4", "rank=4"),
                                                                       ("1.1 GiB", "rank=4", "rank=8")]
    assert budgets[0].verdict is None and budgets[1].cheapest is rows["rank=4"]
    assert budgets[1].verdict.test == "McNemar" and not budgets[1].verdict.seed_aware
    assert budgets[1].verdict.value == pytest.approx(0.3) and budgets[1].margin > 0   # best - cheapest, and its D
    assert nice_budget(493.5) == (500, "500 MiB") and nice_budget(3.21 * 1024)[1] == "3.3 GiB"


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


def test_without_samples_the_stored_delta_is_shown_but_never_starred(tmp_path):
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
    diffs = [compare.differences(s, bases[0], r)["humaneval.pass@1"] for r in rows]
    assert [(d.test, d.beyond_noise, d.note) for d in diffs] == [("stored", None, compare.STORED)] * 3
    assert (diffs[0].value, diffs[0].low, diffs[0].high) == pytest.approx((0.2, 0.05, 0.35))  # CI excludes 0


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


def _seeded_eval(db: Tracker, suite: str, train: int | None, name: str, passes: set[int], nll_per_token: float,
                 empty: bool = False) -> int:
    """An evaluation whose held-out references come from 4 source files, recorded with their split group."""
    run = db.start_run(name, "eval", {"model": "tiny", "benchmark_keys": {"heldout": {"group_key": "file"}}},
                       suite=suite, parent_id=train)
    samples = [humaneval_sample(i, i in passes) for i in range(PROBLEMS)]
    for sample in samples if empty else []:
        sample["generation"], sample["details"]["code"] = "", ""
    heldout = [{"task_id": f"stdlib:file{j % 4}.py:fn{j}", "generation": None, "result": None,
                "details": {"nll_sum": nll_per_token * (10 + j), "tokens": 10 + j, "group": f"file{j % 4}.py"}}
               for j in range(12)]
    db.log_scores(run, "humaneval", {"pass@1": len(passes) / PROBLEMS})
    db.log_scores(run, "heldout", {"nll": nll_per_token})
    db.log_samples(run, "humaneval", samples)
    db.log_samples(run, "heldout", heldout)
    db.finish_run(run, "completed")
    return run


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """rank=4: 3 seeds, clearly better than the base; rank=8 and rank=16: one seed each, 10 passes apart by
    seed noise alone (same config family, different runs); suite `e`: everything empty."""
    path = tmp_path_factory.mktemp("seeded") / "s.db"
    db = Tracker(path)
    _seeded_eval(db, "s", None, "base", set(), 2.0)
    for seed, nll in enumerate((1.50, 1.52, 1.48)):
        _seeded_eval(db, "s", train_run(db, "s", 4, "16bit", seed, peak=1, seconds=1), f"r4-{seed}",
                     set(range(10 + seed)), nll)
    _seeded_eval(db, "s", train_run(db, "s", 8, "16bit", 0, peak=1, seconds=1), "r8", set(range(12)), 1.6)
    _seeded_eval(db, "s", train_run(db, "s", 16, "16bit", 0, peak=1, seconds=1), "r16", set(range(2)), 1.61)
    _seeded_eval(db, "e", None, "base", set(), 2.0, empty=True)
    for seed in (0, 1):
        _seeded_eval(db, "e", train_run(db, "e", 4, "16bit", seed, peak=1, seconds=1), f"e{seed}", set(), 1.9,
                     empty=True)
    db.close()
    study = Study(Tracker(path))
    rows, bases = build_rows(study, "s")
    return study, {r.label: r for r in rows}, bases


def test_one_seed_a_side_gets_no_star_however_small_its_p(seeded):
    s, rows, bases = seeded
    # Seed noise planted between two one-seed runs: 10 one-way flips, p = 2^-9, and an NLL gap.
    d = compare.differences(s, rows["rank=16"], rows["rank=8"])
    assert d["humaneval.pass@1"].p_value == pytest.approx(2 * 0.5 ** 10)
    assert d["heldout.nll"].p_value < 0.05
    for diff in d.values():
        assert diff.beyond_noise is False and diff.note == compare.ONE_SEED and diff.seeds == (1, 1)
    against_base = compare.differences(s, bases[0], rows["rank=8"])["humaneval.pass@1"]
    assert against_base.p_adjusted < 0.05 and not against_base.beyond_noise


def test_several_seeds_a_side_can_be_starred_after_holm(seeded):
    s, rows, bases = seeded
    d = compare.differences(s, bases[0], rows["rank=4"])
    flip = d["humaneval.pass@1"]
    assert flip.test == "sign-flip permutation" and flip.seeds == (1, 3) and flip.seed_aware
    # The family: rank=4 and rank=8 vs the reference (rank=16), all three vs the base.
    assert flip.family_size == 5 and flip.beyond_noise and flip.p_value < flip.p_adjusted <= 5 * flip.p_value < 0.05
    nll = d["heldout.nll"]
    assert nll.unit == "seeds x 4 split groups" and nll.beyond_noise and nll.value == pytest.approx(-0.5, abs=1e-9)
    family = compare.suite_family(s, "s")
    for diffs in family.values():
        for diff in diffs.values():
            if diff.p_adjusted is not None:
                assert diff.beyond_noise == (diff.seed_aware and diff.p_adjusted < 0.05)


def test_split_groups_are_resampled_for_the_nll_cells(seeded):
    _, rows, _ = seeded
    cell = rows["rank=4"].get("heldout.nll")
    per_seed = [v for v, _, _ in cell.values]
    assert per_seed == pytest.approx([1.50, 1.52, 1.48]) and cell.ci[0] < 1.50 < cell.ci[1]
    assert rows["rank=4"].get("heldout.perplexity").mean == pytest.approx(sum(math.exp(x) for x in per_seed) / 3)


def test_degenerate_comparisons_stay_out_of_the_family(seeded):
    s, _, _ = seeded
    rows, bases = build_rows(s, "e")
    d = compare.differences(s, bases[0], rows[0])
    assert d["humaneval.pass@1"].degenerate == "every answer empty" and d["humaneval.pass@1"].family_size is None
    assert d["humaneval.pass@1"].beyond_noise is False
    assert d["heldout.nll"].degenerate is None and d["heldout.nll"].family_size == 1   # NLL needs no answer
    same = compare._difference("humaneval.pass@1", [[Problem(1.0, 1.0, 1.0), Problem(0.0, 1.0, 1.0)]] * 2,
                               [[Problem(1.0, 1.0, 1.0), Problem(0.0, 1.0, 1.0)]] * 2, (True, True))
    assert same.degenerate == "identical per-problem scores" and same.p_value == 1.0


def test_a_run_recorded_before_an_option_existed_groups_with_runs_recording_what_it_did():
    from common.study.rows import group_key
    old = {"rank": 16, "seed": 0, "quant": "16bit"}                      # before --lora-kernel existed: PEFT's layers
    assert group_key(old) == group_key({**old, "seed": 1, "lora_kernel": "peft"})
    assert group_key(old) != group_key({**old, "lora_kernel": "fused"})


def test_the_machine_load_an_eval_run_records_is_not_a_benchmark(tmp_path):
    db = Tracker(tmp_path / "e.db")
    run = db.start_run("e", "eval", {})
    db.log_scores(run, "humaneval", {"pass@1": 0.5})
    db.log_scores(run, "load", {"cpu_foreign_share": 0.2, "cpu_own_share": 0.8, "loadavg_start": 1.0})
    study = Study(db)
    assert study.benchmarks(run) == ["humaneval"] and study.foreign_share(run) == 0.2

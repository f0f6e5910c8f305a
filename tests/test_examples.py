"""report.py --export-examples / --from-examples (common/study/examples.py): the export alone rebuilds the report
byte for byte, holds one row per run x problem with its group and seed, and bad folders are one-line errors."""
import gzip
import shutil

import pytest
from study_db import ENV, build_study, humaneval_sample, train_run

import report
from common.errors import UserError
from common.study.examples import ExampleTracker, database_argv, read_lines
from common.tracker import Tracker

COMPARED = ("RESULTS.md", "summary.json", "model_comparison.csv", "model_comparison.json")


def grouped_suite(path) -> dict[str, int]:
    """Beyond tests/study_db.py: held-out references with split groups, a run with its memory and step-time
    prediction and per-step rates (the predicted-vs-measured table), and a run skipped for the budget."""
    db = Tracker(path)
    train = train_run(db, "grouped", 8, "16bit", 3, peak=900, seconds=90)
    db.log_scores(train, "train", {"predicted_peak_mb": 950.0, "predicted_step_s": 0.4})
    for step in range(1, 5):
        db.log_metrics(train, step, {"tokens_seen": 100.0 * step, "tokens_per_s": 200.0 + step})
    evaluated = db.start_run("grouped-eval", "eval", {"model": "tiny", "quant": "16bit"}, suite="grouped",
                             parent_id=train, environment=ENV)
    db.log_samples(evaluated, "humaneval", [humaneval_sample(i, i < 4) for i in range(20)])
    db.log_samples(evaluated, "heldout", [{"task_id": f"stdlib:file{j % 3}.py:fn{j}", "generation": "    pass\n",
                                           "details": {"nll_sum": 1.5 * (10 + j), "tokens": 10 + j, "syntax": None,
                                                       "group": f"file{j % 3}.py", "ended": "eos"}}
                                          for j in range(9)])
    db.log_scores(evaluated, "humaneval", {"pass@1": 0.2})
    db.log_scores(evaluated, "heldout", {"nll": 1.5})
    db.finish_run(evaluated, "completed")
    skipped = db.start_run("r64-skipped", "train", {"sweep_flags": {"rank": 64}, "name": "r64-skipped"},
                           suite="grouped")
    db.log_scores(skipped, "train", {"predicted_peak_mb": 4000.0})
    db.finish_run(skipped, "skipped", error="skipped for budget: predicted peak 4000 MB > --budget-mb 1000")
    db.close()
    return {"grouped_train": train, "grouped_eval": evaluated}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    ids = build_study(root / "study.db")
    ids.update(grouped_suite(root / "study.db"))
    assert report.main(["--db", str(root / "study.db"), "--export-examples", str(root / "export")]) == 0
    return root, ids


def test_the_export_alone_rebuilds_the_report_byte_for_byte(exported):
    root, _ = exported
    out = root / "report"
    # Figures (drawn from the same curves the stand-in serves, tested below) are left out for time.
    assert report.main(["--db", str(root / "study.db"), "--output-dir", str(out), "--no-figures"]) == 0
    from_db = {name: (out / name).read_bytes() for name in COMPARED}
    text = from_db["RESULTS.md"].decode()
    # The paths this test adds are in the report: predicted vs measured (from per-step rates), the skipped run.
    assert "### Predicted vs measured" in text and "### Skipped for the memory budget" in text
    assert "| r8-qkvo-16bit-s3 " in text and "### Before and after" in text   # and the sample texts it quotes
    shutil.rmtree(out)
    (root / "study.db").rename(root / "moved.db")   # from those files alone
    try:
        assert report.main(["--from-examples", str(root / "export"), "--output-dir", str(out), "--no-figures"]) == 0
    finally:
        (root / "moved.db").rename(root / "study.db")
    for name in COMPARED:
        assert (out / name).read_bytes() == from_db[name], name


def test_the_export_holds_per_example_rows_with_groups_and_seeds(exported):
    root, ids = exported
    rows = read_lines(root / "export" / "examples.jsonl.gz")
    db = Tracker(root / "study.db")
    assert len(rows) == sum(len(db.samples(r["id"])) for r in db.runs())
    db.close()
    by = {(r["run_id"], r["task_id"]): r for r in rows}
    # rank=16 seed 1 passes problems 0-6: pass, test-case fraction, seed and its config's key.
    s0, s1 = ids["r16_evals"]
    assert by[(s1, "HumanEval/6")]["passed"] is True and by[(s0, "HumanEval/6")]["passed"] is False
    assert by[(s1, "HumanEval/6")]["test_fraction"] == 1.0 and by[(s0, "HumanEval/7")]["test_fraction"] == 0.5
    assert (by[(s0, "HumanEval/6")]["seed"], by[(s1, "HumanEval/6")]["seed"]) == (0, 1)
    assert by[(s0, "HumanEval/6")]["config_key"] == by[(s1, "HumanEval/6")]["config_key"] \
        != by[(ids["r8_eval"], "HumanEval/6")]["config_key"]
    assert by[(ids["base"], "HumanEval/6")]["seed"] is None and by[(ids["base"], "HumanEval/6")]["train_run_id"] is None
    # Held-out references: NLL sum, tokens and the split group; how the generation ended where it was recorded.
    grouped = [r for r in rows if r["run_id"] == ids["grouped_eval"] and r["benchmark"] == "heldout"]
    assert [r["group"] for r in grouped] == [f"file{int(r['task_id'].rsplit('fn', 1)[1]) % 3}.py" for r in grouped]
    assert {r["seed"] for r in grouped} == {3} and {r["ended"] for r in grouped} == {"eos"}
    fn4 = next(r for r in grouped if r["task_id"].endswith(":fn4"))
    assert (fn4["nll_sum"], fn4["tokens"]) == (1.5 * 14, 14)
    # The code and the program stay in the database; the texts the report quotes are in texts.jsonl.gz.
    assert not {"code", "program", "details"} & {k for r in rows for k in r}
    texts = read_lines(root / "export" / "texts.jsonl.gz")
    assert {t["generation"] for t in texts if t["run_id"] == ids["r8_eval"]} >= {"    return x - 1\n"}


def test_the_stand_in_answers_the_trackers_queries(exported):
    root, ids = exported
    db, served = Tracker(root / "study.db"), ExampleTracker(root / "export")
    assert served.database == str(root / "study.db")
    assert served.memberships() == db.memberships() and served.all_scores() == db.all_scores()
    for run in db.runs():
        assert served.scores(run["id"]) == db.scores(run["id"]) and served.metrics(run["id"]) == db.metrics(run["id"])
        kept = [{k: v for k, v in r.items() if k != "id"} for r in served.runs(kind=run["kind"], name=run["name"])]
        assert kept == [{k: v for k, v in r.items() if k not in ("host", "pid", "process_start", "output_dir", "id")}
                        for r in db.runs(kind=run["kind"], name=run["name"])]
    sample = served.samples(ids["grouped_eval"], "heldout")[0]
    assert sample["details"] == {"nll_sum": 15.0, "tokens": 10, "syntax": None, "group": "file0.py", "ended": "eos"}
    db.close()
    assert database_argv(["--from-examples", "x", "--out", "o"], "a.db") == ["--db", "a.db", "--out", "o"]
    assert database_argv(["--from-examples=x"], "a.db") == ["--db", "a.db"]


def test_bad_export_folders_are_one_line_errors(exported, tmp_path):
    root, _ = exported
    with pytest.raises(UserError, match="no manifest.json"):
        report.main(["--from-examples", str(tmp_path / "nothing")])
    with pytest.raises(UserError, match="either --db or --from-examples"):
        report.main(["--from-examples", str(root / "export"), "--db", str(root / "study.db")])
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        report.main(["--db", str(root / "study.db"), "--export-examples", str(tmp_path / "file")])
    broken = tmp_path / "broken"
    shutil.copytree(root / "export", broken)
    (broken / "scores.jsonl.gz").write_bytes(gzip.compress(b"{not json\n"))
    with pytest.raises(UserError, match="scores.jsonl.gz is not a readable export"):
        report.main(["--from-examples", str(broken)])
    (broken / "scores.jsonl.gz").unlink()
    with pytest.raises(UserError, match="scores.jsonl.gz is missing"):
        report.main(["--from-examples", str(broken)])

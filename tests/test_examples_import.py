"""sweep.py --import-examples (common/study/imports.py): an export loaded into a fresh database gives back the same
export and the same report byte for byte, importing twice adds nothing, a sweep whose runs the export holds runs
nothing, and a clash or a broken folder is a one-line error that writes nothing."""
import gzip
import json
import shutil
from pathlib import Path

import pytest
from study_db import ENV, build_study, humaneval_sample
from test_examples import COMPARED, grouped_suite

import report
import sweep
from common.errors import UserError
from common.study import suites as S
from common.study.imports import import_examples
from common.study.plan import plan
from common.study.runner import Sweep
from common.tracker import Tracker

ROOT = Path(__file__).resolve().parent.parent
FILES = ("manifest.json", "runs.jsonl.gz", "scores.jsonl.gz", "metrics.jsonl.gz", "examples.jsonl.gz",
         "texts.jsonl.gz")


def dump(path) -> dict:
    """Everything a database holds per run, as the Tracker reads it back (sample row ids left out)."""
    db = Tracker(path)
    out = {run["id"]: {"run": run, "scores": db.scores(run["id"]), "metrics": db.metrics(run["id"]),
                       "samples": [{k: v for k, v in s.items() if k != "id"} for s in db.samples(run["id"])]}
           for run in db.runs()}
    db.close()
    return out


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """a/study.db (tests/study_db.py and the export tests' grouped suite), its export a/export, and b/study.db
    made from that export alone; every path is relative to a or b, so both name their database study.db."""
    root = tmp_path_factory.mktemp("import")
    (root / "a").mkdir()
    (root / "b").mkdir()
    build_study(root / "a" / "study.db")
    grouped_suite(root / "a" / "study.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root / "a")
        assert report.main(["--db", "study.db", "--export-examples", "export"]) == 0
    imported = Tracker(root / "b" / "study.db")
    counts = import_examples(root / "a" / "export", imported)
    imported.close()
    return root, counts


def test_an_imported_database_exports_the_same_bytes_and_holds_the_same_runs(study, monkeypatch):
    root, counts = study
    original = dump(root / "a" / "study.db")
    assert counts == {"imported": len(original), "present": 0} and len(original) == 16
    monkeypatch.chdir(root / "b")
    assert report.main(["--db", "study.db", "--export-examples", "export"]) == 0
    for name in FILES:
        assert (root / "b" / "export" / name).read_bytes() == (root / "a" / "export" / name).read_bytes(), name
    # Same ids, parents, statuses, configs, times, scores, curves and samples; what the export leaves out is
    # where a run ran and each sample's code and program.
    local = ("host", "pid", "process_start", "output_dir")
    copy = dump(root / "b" / "study.db")
    assert copy.keys() == original.keys()
    for run_id, was in original.items():
        now = copy[run_id]
        assert {k: v for k, v in now["run"].items() if k not in local} \
            == {k: v for k, v in was["run"].items() if k not in local}
        assert now["run"]["host"] is None and was["run"]["host"] is not None
        assert (now["scores"], now["metrics"]) == (was["scores"], was["metrics"])
        assert len(now["samples"]) == len(was["samples"])
        for s, t in zip(now["samples"], was["samples"]):
            assert {k: v for k, v in s.items() if k != "details"} == {k: v for k, v in t.items() if k != "details"}
            assert "code" not in (s["details"] or {}) and (s["details"] or {}).get("chrf") == (t["details"] or
                                                                                               {}).get("chrf")


def test_a_report_from_the_imported_database_is_the_same_bytes(study, monkeypatch):
    root, _ = study
    reports = {}
    for side in ("a", "b"):
        monkeypatch.chdir(root / side)
        assert report.main(["--db", "study.db", "--output-dir", "report", "--no-figures"]) == 0
        reports[side] = {name: (root / side / "report" / name).read_bytes() for name in COMPARED}
    assert "| r8-qkvo-16bit-s3 " in reports["b"]["RESULTS.md"].decode()
    assert reports["a"] == reports["b"]


def test_importing_twice_or_into_the_source_adds_nothing(study):
    root, counts = study
    before = dump(root / "b" / "study.db")
    for side in ("a", "b"):
        db = Tracker(root / side / "study.db")
        assert import_examples(root / "a" / "export", db) == {"imported": 0, "present": counts["imported"]}
        db.close()
    assert dump(root / "b" / "study.db") == before


def test_an_import_cut_short_is_completed_by_the_next(study, tmp_path):
    """Each run goes in whole with its rows, so an import stopped half-way leaves runs that are complete, and
    the next import adds the rest (parents first: an eval whose train run is not in yet waits for it)."""
    root, counts = study
    export = root / "a" / "export"
    partial = tmp_path / "partial"
    shutil.copytree(export, partial)
    runs = [json.loads(line) for line in gzip.open(partial / "runs.jsonl.gz", "rt")]
    first = [r for r in runs if r["id"] <= 5]
    (partial / "runs.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in first).encode()))
    db = Tracker(tmp_path / "c.db")
    assert import_examples(partial, db) == {"imported": 5, "present": 0}
    assert import_examples(export, db) == {"imported": counts["imported"] - 5, "present": 5}
    db.close()
    assert dump(tmp_path / "c.db") == dump(root / "b" / "study.db")


def test_a_clash_or_a_broken_folder_is_a_one_line_error_that_writes_nothing(study, tmp_path):
    root, _ = study
    export = root / "a" / "export"
    db = Tracker(tmp_path / "other.db")
    mine = db.start_run("my-own-run", "train", {"rank": 4})
    db.finish_run(mine, "completed")
    with pytest.raises(UserError, match=r"run 1 is eval 'base-16bit-eval' there but train 'my-own-run' here; "
                                        r"import into a fresh --db") as caught:
        import_examples(export, db)
    assert "\n" not in str(caught.value) and [r["name"] for r in db.runs()] == ["my-own-run"]
    db.close()
    fresh = str(tmp_path / "fresh.db")
    with pytest.raises(UserError, match="no such folder"):
        sweep.main(["--suite", "smoke", "--db", fresh, "--import-examples", str(tmp_path / "nothing")])
    broken = tmp_path / "broken"
    shutil.copytree(export, broken)
    (broken / "metrics.jsonl.gz").unlink()
    with pytest.raises(UserError, match="metrics.jsonl.gz is missing"):
        sweep.main(["--suite", "smoke", "--db", fresh, "--import-examples", str(broken)])
    shutil.copyfile(export / "metrics.jsonl.gz", broken / "metrics.jsonl.gz")
    (broken / "runs.jsonl.gz").write_bytes(gzip.compress(b'{"id": 1, "name": "x", "kind": "train"}\n'))
    with pytest.raises(UserError, match=r"runs.jsonl.gz: run 1 lacks status, config, config_hash, parent_id, "
                                        r"started_at; export the database again"):
        sweep.main(["--suite", "smoke", "--db", fresh, "--import-examples", str(broken)])
    with pytest.raises(UserError, match="not --merge"):
        sweep.main(["--merge", fresh, "--db", str(tmp_path / "m.db"), "--import-examples", str(export)])
    assert Tracker(fresh).runs() == []


def completed_plan(path, planned, unevaluated: str | None = None) -> None:
    """A database holding each planned run completed under the name the sweep gives it: train then eval (except
    the evaluation of train run `unevaluated`)."""
    db = Tracker(path)
    for p in planned:
        parent = None
        if p.kind == "adapter":
            parent = db.start_run(p.name, "train", {"sweep_flags": p.flags, "name": p.name}, suite=p.suites[0],
                                  environment=ENV)
            db.log_metrics(parent, 1, {"loss": 2.0})
            db.finish_run(parent, "completed")
        if p.name == unevaluated:
            continue
        evaluated = db.start_run(p.eval_name, "eval", {"sweep_flags": p.flags}, suite=p.suites[0], parent_id=parent,
                                 environment=ENV)
        db.log_samples(evaluated, "humaneval", [humaneval_sample(0, True)])
        db.log_scores(evaluated, "humaneval", {"pass@1": 1.0})
        db.finish_run(evaluated, "completed")
        db.log_membership(evaluated, p.suites)
    db.close()


def test_a_sweep_resumed_from_an_export_runs_only_what_it_lacks(tmp_path, monkeypatch, capsys):
    planned = plan(S.suite_parts(S.builtin_suite("smoke")), {}, None)
    assert [p.kind for p in planned] == ["base", "adapter", "adapter"]
    completed_plan(tmp_path / "done.db", planned)
    completed_plan(tmp_path / "partial.db", planned[:2])   # the r8 adapter neither trained nor evaluated
    for name in ("done", "partial"):
        assert report.main(["--db", str(tmp_path / f"{name}.db"), "--export-examples", str(tmp_path / name)]) == 0
    capsys.readouterr()
    fresh = str(tmp_path / "fresh.db")
    assert sweep.main(["--suite", "smoke", "--db", fresh, "--import-examples", str(tmp_path / "partial"),
                       "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"imported 3 runs from {tmp_path / 'partial'} (0 already present)" in out
    assert out.count("train done (run 2), eval done (run 3)") == 1 and out.count("eval done (run 1)") == 1
    (r8,) = [line for line in out.splitlines() if f"| {planned[2].name} | smoke" in line]
    assert "rank=8" in r8 and "train pending, eval pending" in r8

    def no_child(*args, **kwargs):
        raise AssertionError(f"the sweep started a child: {args}")
    monkeypatch.setattr(Sweep, "run_child", no_child)
    again = str(tmp_path / "again.db")
    assert sweep.main(["--suite", "smoke", "--db", again, "--import-examples", str(tmp_path / "done"),
                       "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "imported 5 runs" in out and "(0 already present)" in out and "suite smoke: all 3 run(s) done" in out
    assert sweep.main(["--suite", "smoke", "--db", again, "--import-examples", str(tmp_path / "done"),
                       "--quiet"]) == 0
    assert "imported 0 runs" in capsys.readouterr().out and len(Tracker(again).runs()) == 5


def test_a_train_run_imported_without_its_evaluation_is_trained_again(tmp_path, monkeypatch, capsys):
    """Its adapter stayed on the machine that trained it: evaluate.py --run-id would find none here."""
    planned = plan(S.suite_parts(S.builtin_suite("smoke")), {}, None)
    completed_plan(tmp_path / "cut.db", planned, unevaluated=planned[2].name)
    assert report.main(["--db", str(tmp_path / "cut.db"), "--export-examples", str(tmp_path / "cut")]) == 0
    children = []

    def failing_child(self, cmd, prefix, gpu):
        children.append(cmd)
        return 1, 999_999_999, "error: not run in this test"
    monkeypatch.setattr(Sweep, "run_child", failing_child)
    db = str(tmp_path / "fresh.db")
    assert sweep.main(["--suite", "smoke", "--db", db, "--import-examples", str(tmp_path / "cut"), "--quiet"]) == 1
    assert "imported 4 runs" in capsys.readouterr().out
    assert len(children) == 1, children
    assert children[0][children[0].index("--name") + 1] == planned[2].name
    assert any(arg.endswith("train.py") for arg in children[0])


def test_the_committed_study_export_imports_and_exports_the_same_bytes(tmp_path, monkeypatch):
    """results/examples, the third edition's finished runs, is what the next session resumes from: it must load."""
    shipped = ROOT / "results" / "examples"
    if not (shipped / "manifest.json").is_file():
        pytest.skip("no committed study export")
    tracker = Tracker(tmp_path / "experiments.db")
    counts = import_examples(shipped, tracker)
    tracker.close()
    assert counts["imported"] == json.loads((shipped / "manifest.json").read_text())["rows"]["runs"]
    monkeypatch.chdir(tmp_path)
    assert report.main(["--export-examples", "again"]) == 0
    for name in FILES:
        assert (tmp_path / "again" / name).read_bytes() == (shipped / name).read_bytes(), name

"""Bad input and unreliable surroundings (issue 29 item 6): each is a one-line error before any long work,
or a visible note recorded with the run, and nothing already recorded is overwritten or lost."""
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import UserError
from common.tracker import Tracker

ROOT = Path(__file__).resolve().parent.parent


def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message.strip(), message
    return message


# ---------------------------------------------------------------------------- the tracker database

def test_a_corrupt_page_is_refused_at_open_and_the_file_left_alone(tmp_path):
    path = tmp_path / "e.db"
    tracker = Tracker(path)
    run = tracker.start_run("a", "eval", {})
    tracker.log_samples(run, "humaneval", [{"task_id": f"T/{i}", "generation": "x" * 500} for i in range(200)])
    tracker.close()
    conn = sqlite3.connect(path)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    index_page = conn.execute("SELECT rootpage FROM sqlite_master WHERE name='sqlite_autoindex_samples_1'").fetchone()[0]
    conn.close()
    with open(path, "r+b") as f:  # the samples index: opening reads only meta and runs, the first write here fails
        f.seek(page_size * (index_page - 1))
        f.write(b"\xff" * 16)
    damaged = path.read_bytes()
    with pytest.raises(UserError) as e:
        Tracker(path)
    assert "is damaged" in one_line(e) and ".recover" in str(e.value) and f"Page {index_page}" in str(e.value)
    assert path.read_bytes() == damaged


def test_a_killed_run_is_marked_interrupted_by_the_next_open(tmp_path, capsys):
    db = tmp_path / "e.db"
    mine = Tracker(db).start_run("alive", "eval", {})
    code = ("import os, signal, sys; sys.path.insert(0, sys.argv[1]); from common.tracker import Tracker;"
            "Tracker(sys.argv[2]).start_run('killed', 'train', {}); os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT), str(db)], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    tracker = Tracker(db)
    runs = {r["name"]: r for r in tracker.runs()}
    assert runs["killed"]["status"] == "interrupted" and "process gone" in runs["killed"]["error"]
    assert runs["alive"]["status"] == "running" and runs["alive"]["id"] == mine
    assert f"run(s) {runs['killed']['id']} were left 'running'" in capsys.readouterr().err
    Tracker(db)  # nothing left to mark: no second note
    assert capsys.readouterr().err == ""


def test_a_pid_reused_by_another_process_does_not_keep_a_run_running(tmp_path):
    tracker = Tracker(tmp_path / "e.db")
    run = tracker.start_run("old", "train", {})
    assert tracker.run(run)["process_start"]  # recorded with the pid
    # The same pid, alive, but a process that started at another time: the recorded one is gone.
    tracker.conn.execute("UPDATE runs SET process_start='another-boot:1' WHERE id=?", (run,))
    assert Tracker(tmp_path / "e.db").run(run)["status"] == "interrupted"


@pytest.mark.parametrize("content, message", [(b"", "is empty"), (b"not a database\n" * 4, "not an SQLite database"),
                                              (None, "not an experiments database")])
def test_merge_refuses_files_that_are_not_our_databases(tmp_path, capsys, content, message):
    import sweep
    source = tmp_path / "shard.db"
    if content is None:
        sqlite3.connect(source).execute("CREATE TABLE users (id INTEGER)")
    else:
        source.write_bytes(content)
    before = source.read_bytes()
    target = tmp_path / "merged.db"
    with pytest.raises(UserError) as e:
        sweep.main(["--merge", str(source), "--db", str(target)])
    assert message in one_line(e) and "pass a shard's --db file" in str(e.value)
    assert source.read_bytes() == before and not target.exists()


# ---------------------------------------------------------------------------- sweep --budget-mb

@pytest.mark.parametrize("budget", ["-1", "nan", "0", "inf"])
def test_budget_must_be_a_positive_finite_number(tmp_path, budget):
    import sweep
    db = tmp_path / "s.db"
    with pytest.raises(UserError) as e:
        sweep.main(["--suite", "rank", "--dry-run", "--budget-mb", budget, "--db", str(db)])
    assert "--budget-mb must be a positive number of MiB" in one_line(e)
    assert not db.exists()


def test_the_plan_table_and_the_sweep_agree_on_the_budget(tiny_model, tmp_path, capsys):
    import dataclasses
    import json

    from common.study import runner
    from common.config import SweepConfig
    from common.study import suites as S
    from common.study.plan import plan
    data = tmp_path / "data.jsonl"
    ops = [(fn, op) for fn in ("abs", "len", "str", "int", "float", "sorted", "max", "min") for op in "+-*%"]
    data.write_text("".join(json.dumps({"prompt": f"def f_{i}(x):\n    \"\"\"Return {fn}(x) {op} {i}.\"\"\"\n",
                                        "completion": f"    return {fn}(x) {op} {i}\n"}) + "\n"
                            for i, (fn, op) in enumerate(ops)))
    suite = tmp_path / "budget.json"
    suite.write_text(json.dumps({"name": "budget", "base": {"model": tiny_model, "dataset": str(data),
                                                              "max_steps": 2, "quant": "32bit"},
                                 "axes": {"batch_size": [1, 8]}}))
    planned = plan([S.load_suite_file(str(suite))], {}, None)
    from common.study.budget import plan_estimates
    peaks = sorted(e.peak_mb for e in plan_estimates(planned, __import__("torch").device("cpu")).values())
    assert peaks[0] < peaks[1]
    for budget in (peaks[0], (peaks[0] + peaks[1]) / 2, peaks[1]):  # equal to a peak: it fits, in both
        for p in planned:
            p.outcome = "pending"
        capsys.readouterr()
        runner.apply_budget(dataclasses.replace(SweepConfig(), budget_mb=budget), Tracker(tmp_path / "b.db"), planned,
                           record=False)
        table = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines()
                 if line.startswith("| ") and "budget" not in line.split("|")[1]}
        for p in (p for p in planned if p.kind == "adapter"):  # base evaluations are not predicted
            assert ("over: skipped" in table[p.name]) == (p.outcome == "skipped"), (budget, table[p.name])
            assert ("fits" in table[p.name]) == (p.outcome == "pending")
        assert [p.outcome for p in planned].count("skipped") == (1 if budget < peaks[1] else 0)


# ---------------------------------------------------------------------------- --columns

@pytest.mark.parametrize("spec, message", [
    ("prompt=question,completion=answer,completion=repo", "maps completion twice (completion=answer and "
                                                          "completion=repo); keep one"),
    ("prompt=text,completion=text", "maps the column 'text' twice (onto prompt and completion); keep one"),
])
def test_columns_mapping_a_field_twice_is_an_error(spec, message):
    from common.corpus.formats import parse_columns
    with pytest.raises(UserError) as e:
        parse_columns(spec)
    assert message in one_line(e)
    assert parse_columns("prompt=question,completion=answer") == {"question": "prompt", "answer": "completion"}


# ---------------------------------------------------------------------------- data that filtering empties

def test_emptied_data_says_what_each_filter_removed_and_the_fix(tiny_model, tmp_path):
    import json

    import train
    from common.corpus.splits import load_humaneval
    first = load_humaneval()[0]
    rows = [{"prompt": "def plus(a, b):\n    \"\"\"Return the sum.\"\"\"\n", "completion": "    return a + b\n"}] * 4
    rows += [{"prompt": f"def plus_{i}(x, y):\n    \"\"\"Return the sum.\"\"\"\n", "completion": "    return x + y\n"}
             for i in range(3)]
    rows += [{"prompt": first.prompt, "completion": first.completion}]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    db = tmp_path / "t.db"
    with pytest.raises(UserError) as e:
        train.main(["--model", tiny_model, "--dataset", str(data), "--db", str(db), "--quant", "32bit", "--quiet"])
    message = one_line(e)
    assert "only 1 usable examples after filtering (8 read; removed 3 exact duplicates, " in message
    assert "3 duplicates up to names and literals" in message and "1 HumanEval overlaps" in message
    assert message.endswith("need at least 3 (one each for train, validation and test): add distinct examples")
    assert not Tracker(db).runs()


# ---------------------------------------------------------------------------- adapters without a training record

@pytest.fixture(scope="module")
def bare_adapter(tiny_model, tmp_path_factory) -> Path:
    """A PEFT adapter directory as another tool saves it: no run_config.json."""
    from transformers import AutoModelForCausalLM

    from common.model.lora import attach_lora
    out = tmp_path_factory.mktemp("bare") / "adapter"
    attach_lora(AutoModelForCausalLM.from_pretrained(tiny_model), 4, None, 0.0, "qkvo").save_pretrained(out)
    return out


@pytest.mark.parametrize("given, missing", [([], "pass --quant and --protocol explicitly"),
                                            (["--quant", "32bit"], "pass --protocol explicitly"),
                                            (["--protocol", "completion"], "pass --quant explicitly")])
def test_an_adapter_without_run_config_needs_its_settings_named(bare_adapter, tmp_path, given, missing):
    import evaluate
    db = tmp_path / "e.db"
    Tracker(db).start_run("earlier", "eval", {})
    with pytest.raises(UserError) as e:
        evaluate.main(["--adapter", str(bare_adapter), *given, "--db", str(db), "--output-dir", str(tmp_path / "out"),
                       "--quiet"])
    assert "has no run_config.json" in one_line(e) and missing in str(e.value)
    assert [r["name"] for r in Tracker(db).runs()] == ["earlier"] and not (tmp_path / "out").exists()


def test_an_adapter_without_run_config_is_evaluated_as_named(bare_adapter, tmp_path, monkeypatch):
    import evaluate
    from common.evaluation import runs

    def stop(model_name, quant, adapter, device, dtype):
        raise RuntimeError(f"loading {quant}")
    monkeypatch.setattr(runs, "load_eval_model", stop)
    with pytest.raises(RuntimeError, match="loading 32bit"):
        evaluate.main(["--adapter", str(bare_adapter), "--quant", "32bit", "--protocol", "completion", "--benchmark",
                       "humaneval", "--eval-limit", "1", "--db", str(tmp_path / "e.db"), "--output-dir",
                       str(tmp_path / "out"), "--quiet"])


# ---------------------------------------------------------------------------- export destinations

def unwritable_targets(tmp_path: Path) -> list[tuple[str, str]]:
    """(path, expected message) pairs that fail for root too, and a read-only folder when not root."""
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me\n")
    cases = [(str(blocker / "out" / "model.gguf"), "is a file, not a directory")]
    if os.geteuid() != 0:  # root writes into a read-only folder
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cases.append((str(locked / "model.gguf"), "cannot be written (Permission denied"))
    return cases


def test_export_gguf_to_an_unwritable_path_fails_before_loading(tiny_model, tmp_path, monkeypatch):
    import infer
    monkeypatch.setattr("common.model.load.load_model", lambda *a, **k: pytest.fail("loaded before the check"))
    for target, message in [*unwritable_targets(tmp_path), (str(tmp_path), "is a directory; pass a file name")]:
        with pytest.raises(UserError) as e:
            infer.main(["--model", tiny_model, "--export-gguf", target])
        assert message in one_line(e) and "--export-gguf" in str(e.value)
    assert (tmp_path / "a-file").read_text() == "keep me\n"


def test_merge_to_an_unwritable_path_fails_before_loading(bare_adapter, tiny_model, tmp_path, monkeypatch):
    import infer
    monkeypatch.setattr("common.model.load.load_model", lambda *a, **k: pytest.fail("loaded before the check"))
    for target, message in unwritable_targets(tmp_path):
        merged = str(Path(target).parent / "merged")
        with pytest.raises(UserError) as e:
            infer.main(["--adapter", str(bare_adapter), "--model", tiny_model, "--quant", "32bit", "--merge-to", merged])
        assert message.split(" (")[0] in one_line(e) and "--merge-to" in str(e.value)
    assert (tmp_path / "a-file").read_text() == "keep me\n"


# ---------------------------------------------------------------------------- samples.json of runs sharing a name

def test_evaluations_sharing_a_name_keep_each_others_samples(tmp_path):
    import json

    import evaluate
    from common.corpus.splits import load_humaneval
    problems = load_humaneval()[:2]
    db = tmp_path / "e.db"
    for answer in ("right", "wrong"):
        rows = [{"task_id": p.id, "completion": p.completion if answer == "right" else "    return 0\n"}
                for p in problems]
        samples = tmp_path / f"{answer}.jsonl"
        samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
        assert evaluate.main(["--samples", str(samples), "--name", "same", "--db", str(db), "--quiet"]) == 0
    right, wrong = Tracker(db).runs(kind="eval")
    folder = Path(right["output_dir"])
    assert Path(wrong["output_dir"]) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["samples-run2.json", "samples.json"]
    first = json.loads((folder / "samples.json").read_text())
    second = json.loads((folder / "samples-run2.json").read_text())
    assert (first["run_id"], second["run_id"]) == (right["id"], wrong["id"]) == (1, 2)
    assert first["scores"]["humaneval"]["pass@1"]["value"] == 1.0
    assert second["scores"]["humaneval"]["pass@1"]["value"] == 0.0


def test_samples_files_of_one_run_id_from_several_databases_never_replace_each_other(tmp_path):
    import json

    from common.judge.samples import write_samples_json
    paths = [write_samples_json(tmp_path, 1, f"db{i}", {}, {}, {}, {"humaneval": [i]}) for i in range(3)]
    assert [p.name for p in paths[:2]] == ["samples.json", "samples-run1.json"]
    assert paths[2].name.startswith("samples-run1-") and len(set(paths)) == 3
    assert [json.loads(p.read_text())["name"] for p in paths] == ["db0", "db1", "db2"]
    assert sorted(tmp_path.iterdir()) == sorted(paths)  # no temporary file left behind

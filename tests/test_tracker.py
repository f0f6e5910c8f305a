"""The run tracker: schema versioning, refusal of foreign files, orphan detection, export."""
import json
import os
import sqlite3
import subprocess
import sys

import pytest

from common.errors import UserError
from common.tracker import SCHEMA_VERSION, Tracker


def test_records_a_run_with_metrics_scores_and_samples(tmp_path):
    db = Tracker(tmp_path / "e.db")
    run = db.start_run("r1", "train", {"rank": 8, "lr": 1e-4}, suite="rank", environment={"git_commit": "abc"})
    db.log_metrics(run, 1, {"loss": 2.0, "lr": 1e-4})
    db.log_metrics(run, 1, {"loss": 1.5})  # a resumed run re-logging a step replaces, never duplicates
    db.log_scores(run, "humaneval", {"pass@1": (0.25, 164, 0.2, 0.3), "syntax_ok": 0.9, "nan": float("nan")})
    db.log_samples(run, "humaneval", [{"task_id": "HumanEval/0", "prompt": "p", "generation": "g", "result": "passed",
                                       "details": {"error_type": None}}])
    db.finish_run(run, "completed", wall_seconds=3.0)
    again = Tracker(tmp_path / "e.db")
    row = again.run(run)
    assert row["status"] == "completed" and row["config"] == {"rank": 8, "lr": 1e-4} and row["git_commit"] == "abc"
    assert again.metrics(run, "loss") == [{"step": 1, "name": "loss", "value": 1.5}]
    scores = {s["name"]: s for s in again.scores(run, "humaneval")}
    assert scores["pass@1"]["ci_low"] == 0.2 and scores["nan"]["value"] is None
    assert again.samples(run)[0]["details"] == {"error_type": None}
    assert [r["id"] for r in again.runs_of_process(os.getpid())] == [run]
    assert sqlite3.connect(tmp_path / "e.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_running_row_whose_process_is_gone_is_marked_interrupted(tmp_path):
    db = Tracker(tmp_path / "e.db")
    code = ("import sys; sys.path.insert(0, '.'); from common.tracker import Tracker;"
            f"Tracker({str(tmp_path / 'e.db')!r}).start_run('dead', 'train', {{}})")
    subprocess.run([sys.executable, "-c", code], check=True)
    mine = db.start_run("alive", "train", {})
    assert len(db.mark_orphans_interrupted()) == 1
    statuses = {r["name"]: r["status"] for r in db.runs()}
    assert statuses == {"dead": "interrupted", "alive": "running"}
    assert mine


def test_corrupt_file_is_refused(tmp_path):
    path = tmp_path / "e.db"
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(UserError, match="not a usable experiments database"):
        Tracker(path)


def test_foreign_sqlite_database_is_refused(tmp_path):
    path = tmp_path / "other.db"
    sqlite3.connect(path).execute("CREATE TABLE customers (id INTEGER)")
    with pytest.raises(UserError, match="another program .*customers"):
        Tracker(path)


def test_newer_or_unmigratable_schema_is_refused(tmp_path):
    path = tmp_path / "e.db"
    Tracker(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    with pytest.raises(UserError, match="newer than this toolkit"):
        Tracker(path)
    conn.execute("UPDATE meta SET value='0' WHERE key='schema_version'")
    conn.commit()
    with pytest.raises(UserError, match="cannot be migrated"):
        Tracker(path)


def test_export_json_and_csv(tmp_path):
    db = Tracker(tmp_path / "e.db")
    run = db.start_run("r1", "train", {"rank": 8})
    db.log_scores(run, "train", {"adapter_mb": 7.0})
    db.log_metrics(run, 1, {"loss": 2.0})
    data = json.loads(db.export(tmp_path / "runs.json").read_text())
    assert data[0]["scores"][0]["name"] == "adapter_mb" and data[0]["metrics"][0]["value"] == 2.0
    header = (db.export(tmp_path / "runs.csv")).read_text().splitlines()[0].split(",")
    assert "config.rank" in header and "train.adapter_mb" in header
    with pytest.raises(UserError, match=".json or .csv"):
        db.export(tmp_path / "runs.xlsx")


def test_run_directories_follow_their_database(tmp_path):
    """A fresh database never meets another database's adapters; reopening one finds its own."""
    first = Tracker(tmp_path / "experiments.db")
    adapter_dir = first.run_dir("train", "demo")
    assert adapter_dir.parent.parent.parent == tmp_path / "runs" and adapter_dir.name == "demo"
    first.close()
    again = Tracker(tmp_path / "experiments.db")
    assert again.run_dir("train", "demo") == adapter_dir
    again.close()  # a closed WAL database is one file, safe to rename
    (tmp_path / "experiments.db").rename(tmp_path / "old.db")
    fresh = Tracker(tmp_path / "experiments.db")
    assert fresh.run_dir("train", "demo") != adapter_dir
    assert Tracker(tmp_path / "old.db").database_id != fresh.database_id


def test_recording_finishes_the_run_as_failed_or_interrupted(tmp_path):
    db = Tracker(tmp_path / "e.db")
    for error, status in ((ValueError("boom"), "failed"), (KeyboardInterrupt(), "interrupted")):
        run = db.start_run("r", "eval", {})
        with pytest.raises(type(error)):
            with db.recording(run):
                raise error
        row = db.run(run)
        assert row["status"] == status and row["wall_seconds"] is not None
        assert (row["error"] == "ValueError: boom") if status == "failed" else row["error"] is None
    run = db.start_run("r", "eval", {})
    with db.recording(run):
        db.finish_run(run, "completed")
    assert db.run(run)["status"] == "completed"

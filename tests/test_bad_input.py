"""Bad input and unreliable surroundings (issue 29 item 6): each is a one-line error before any long work,
or a visible note recorded with the run, and nothing already recorded is overwritten or lost."""
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

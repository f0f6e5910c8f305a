"""Hostile completions scored end to end by `evaluate.py --samples`: all score 0, the run completes, no file changes.

The completions know where the database and a copy of it are (a model that has
seen this repository knows `experiments.db`), and attack them, the harness and
the machine. Runs under `--isolation auto` as a user would, once with
bubblewrap (skipped when it is not usable) and once with bubblewrap hidden so
that auto picks Landlock (skipped without Landlock).
"""
import json
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import pytest

import evaluate
from common.sandbox import landlock
from common.sandbox import execute as sandbox
from common.corpus.splits import load_humaneval
from common.tracker import Tracker

ATTACKS = [
    # the database, through SQLite, then through libc
    "    import sqlite3\n    c = sqlite3.connect(DB)\n    c.execute('DELETE FROM runs')\n    c.commit()\n",
    "    import ctypes\n    ctypes.CDLL(None).fopen(COPY.encode(), b'w')\n",
    "    open(COPY, 'w').write('gone')\n",
    # the harness
    "    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n",
    # a process that outlives the program, then writes
    "    import os, time\n    if os.fork() == 0:\n        os.setsid()\n        time.sleep(1)\n"
    "        open(COPY, 'w').write('late')\n        os._exit(0)\n",
]


@pytest.fixture
def workspace():
    base = Path(tempfile.mkdtemp(prefix="sandbox-e2e-", dir="/var/tmp" if os.access("/var/tmp", os.W_OK) else None))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow  # evaluate.py imports torch (~10 s here)
@pytest.mark.parametrize("mode", ["bwrap", "landlock"])
def test_hostile_samples_score_zero_and_change_nothing(mode, workspace, monkeypatch):
    if mode == "bwrap" and sandbox._bwrap() is None:
        pytest.skip("bubblewrap not usable here (apt-get install -y bubblewrap)")
    if mode == "landlock":
        if not landlock.abi_version():
            pytest.skip("this kernel has no Landlock")
        monkeypatch.setattr(sandbox, "_bwrap", lambda: None)
    db, copy = workspace / "experiments.db", workspace / "copy.db"
    tracker = Tracker(db)
    victim = tracker.start_run("victim", "train", {"rank": 16})
    tracker.finish_run(victim, "completed")
    tracker.close()
    shutil.copy(db, copy)
    copy.chmod(0o644)
    copy_bytes = copy.read_bytes()

    problems = load_humaneval()[: len(ATTACKS)]
    header = f"    DB, COPY = {str(db)!r}, {str(copy)!r}\n"
    rows = [{"task_id": p.id, "completion": header + f"    try:\n{_indent(attack)}    except Exception:\n"
             "        pass\n    return None\n"} for p, attack in zip(problems, ATTACKS, strict=True)]
    samples = workspace / "hostile.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))

    out = workspace / "out"
    assert evaluate.main(["--samples", str(samples), "--db", str(db), "--output-dir", str(out), "--quiet",
                          "--isolation", "auto", "--workers", "1"]) == 0
    time.sleep(1.5)  # past the late writer's moment
    assert copy.read_bytes() == copy_bytes
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    tracker = Tracker(db)
    runs = {r["name"]: r for r in tracker.runs()}
    assert runs["victim"]["status"] == "completed"
    [run] = [r for r in runs.values() if r["kind"] == "eval"]
    assert run["status"] == "completed"
    assert run["config"]["isolation"] == sandbox.isolation_name("auto")
    assert run["config"]["isolation"].startswith("bubblewrap" if mode == "bwrap" else "landlock")
    scores = {s["name"]: s["value"] for s in tracker.scores(run["id"], "humaneval")}
    assert scores["pass@1"] == 0.0
    results = [s["result"] for s in tracker.samples(run["id"], "humaneval")]
    assert len(results) == len(ATTACKS) and "passed" not in results


def _indent(code: str) -> str:
    return "".join("    " + line + "\n" for line in code.splitlines())

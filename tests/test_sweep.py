"""sweep.py and common/study/suites.py: suite expansion, --set, planning, and real sweeps with the tiny model.

The end-to-end tests run the real train.py and evaluate.py as the sweep's children (tiny
2-layer model, 2-40 steps, 2 HumanEval problems, 8 new tokens): two sweeps writing one
database at once (then report.py on it), and a sweep killed with SIGKILL and run again.
"""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import sweep
from common.study import runner
from common.study import suites as S
from common.study.plan import Planned, plan
from common.errors import UserError
from common.tracker import Tracker

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------- suites and --set

def write_suite(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data, sort_keys=False) if path.suffix == ".yaml" else json.dumps(data))
    return str(path)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_suite_file_expands_axes_times_groups(tmp_path, suffix):
    path = write_suite(tmp_path / f"s{suffix}", {
        "name": "grid", "base": {"max-steps": 10, "eval_limit": 5},
        "axes": {"rank": [8, 16], "lr": ["1e-4", 2e-4]},
        "groups": [[{"quant": "4bit", "optim": "paged_adamw_8bit"}, {"quant": "16bit"}]]})
    suite = S.load_suite_file(path)
    runs = S.expand(suite)
    assert len(runs) == 2 * 2 * 2
    assert runs[0] == {"max_steps": 10, "eval_limit": 5, "rank": 8, "lr": 1e-4, "quant": "4bit",
                       "optim": "paged_adamw_8bit"}
    assert runs[1] == {"max_steps": 10, "eval_limit": 5, "rank": 8, "lr": 1e-4, "quant": "16bit"}
    assert [r["lr"] for r in runs[:4]] == [1e-4, 1e-4, 2e-4, 2e-4]  # the last axis varies fastest, then groups
    assert {(r["rank"], r["lr"], r["quant"]) for r in runs} == {
        (rank, lr, q) for rank in (8, 16) for lr in (1e-4, 2e-4) for q in ("4bit", "16bit")}
    names = {S.train_name(r) for r in runs}
    assert len(names) == 8 and S.train_name(runs[0]).startswith("r8-qkvo-4bit-s0-")


def test_suite_file_errors_are_one_line_user_errors(tmp_path):
    cases = [
        ({"axes": {"rnak": [4]}}, "unknown key 'rnak'; known keys: alpha"),
        ({"axes": {"rank": 4}}, "axes.rank must be a non-empty list"),
        ({"axes": {"rank": ["four"]}}, "bad value 'four' for rank"),
        ({"axes": {"quant": ["4bit"]}, "groups": [[{"quant": "8bit"}]]}, "quant is set by both axes.quant"),
        ({"groups": [{"quant": "8bit"}]}, "groups must be a list of groups"),
        ({"name": "rank"}, "is a built-in suite"),
        ({"bases": {}}, "unknown section(s) bases"),
    ]
    for i, (data, message) in enumerate(cases):
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
            S.load_suite_file(write_suite(tmp_path / f"bad{i}.yaml", data))
    (tmp_path / "broken.yaml").write_text("axes: [rank: 4\n")
    with pytest.raises(UserError, match="not valid YAML"):
        S.load_suite_file(str(tmp_path / "broken.yaml"))


def test_set_parsing_types_and_errors():
    values = S.parse_set(["max_steps=50", "lr=2e-4", "max-new-tokens=16", "packing=true", "model=/m/tiny",
                          "eval_limit=none", "benchmark=humaneval"])
    assert values == {"max_steps": 50, "lr": 2e-4, "max_new_tokens": 16, "packing": True, "model": "/m/tiny",
                      "eval_limit": None, "benchmark": "humaneval"}
    assert S.parse_set(["rank=8", "rank=16"]) == {"rank": 16}
    with pytest.raises(UserError, match=r"unknown key 'foo'; known keys: alpha, batch_size, benchmark"):
        S.parse_set(["foo=1"])
    with pytest.raises(UserError, match="expected key=value"):
        S.parse_set(["max_steps"])
    with pytest.raises(UserError, match="bad value 'many' for max_steps"):
        S.parse_set(["max_steps=many"])


def test_flags_go_to_the_right_script():
    flags = {"rank": 8, "packing": True, "truncate": False, "eval_limit": 2, "max_new_tokens": 8, "model": "m",
             "eval_batch_size": 4, "max_seq_len": 256}
    assert S.to_argv(flags, S.TRAIN_FLAGS) == ["--max-seq-len", "256", "--model", "m", "--packing", "--rank", "8"]
    assert S.to_argv(flags, S.EVAL_FLAGS) == ["--eval-batch-size", "4", "--eval-limit", "2", "--max-new-tokens", "8",
                                              "--max-seq-len", "256"]
    both = {**S.TRAIN_FLAGS, **S.EVAL_FLAGS}
    assert S.to_argv({"merge": False, "truncate": True}, both) == ["--truncate"]
    assert S.to_argv({"truncate": False}, {"truncate": (bool, True)}) == ["--no-truncate"]


def test_all_runs_shared_configs_once_with_every_suite():
    planned = plan(S.suite_parts(S.builtin_suite("all")), {"max_steps": 5}, None)
    bases = [p for p in planned if p.kind == "base"]
    runs = [p for p in planned if p.kind == "adapter"]
    assert len(bases) == 1 and bases[0].suites == ["rank", "modules", "quant"]
    assert len(runs) == 5 + 4 + 3 - 2
    assert len({p.name for p in runs}) == len(runs)
    shared = [p for p in runs if p.suites == ["rank", "modules", "quant"]]
    assert len(shared) == 1 and shared[0].name.startswith("r16-qkvo-16bit-s0-")
    assert planned[0].kind == "base"  # base model first: adapter evaluations reuse it


def test_study_trains_each_config_once_and_scores_it_under_each_protocol():
    planned = plan(S.suite_parts(S.builtin_suite("study")), {}, None)
    runs = [p for p in planned if p.kind == "adapter"]
    # rank x 3 seeds, Gemma, modules qv/all x 3 seeds, 4-bit x 3 seeds + 8-bit x 1 (qkvo / 16-bit are rank's r16)
    assert len({p.name for p in runs}) == 9 + 3 + 6 + 4
    for suite in ("study-modules", "study-quant"):       # every config a headline compares: three seeds
        seeds = {}
        for p in runs:
            if suite in p.suites:
                seeds.setdefault((p.flags["modules"], p.flags["quant"]), set()).add(p.flags["seed"])
        assert {k: v for k, v in seeds.items() if k != ("qkvo", "8bit")} == \
            {k: {0, 1, 2} for k in seeds if k != ("qkvo", "8bit")}
    central = [p for p in runs if p.name.startswith("r16-qkvo-16bit-s0-") and p.flags.get("model") is None]
    assert len({p.name for p in central}) == 1                  # one training ...
    assert [(p.flags["protocol"], p.suites) for p in central] == [  # ... scored under three protocols
        ("instruct", ["study-rank", "study-modules", "study-quant"]), ("completion", ["study-completion"]),
        ("fewshot", ["study-fewshot"])]
    bases = [p for p in planned if p.kind == "base"]
    assert planned[:len(bases)] == bases and len(bases) == 4      # SmolLM2 under 3 protocols, Gemma under 1
    gemma = [p for p in runs if p.flags.get("model") == "gemma3-270m"]
    assert {p.flags["format"] for p in gemma} == {"completion"} and {p.flags["protocol"] for p in gemma} == {"completion"}
    with pytest.raises(UserError, match="suite study-rank already varies seed"):
        plan(S.suite_parts(S.builtin_suite("study")), {}, 2)


def test_seeds_and_set_conflicts():
    planned = plan([S.builtin_suite("quant")], {}, 2)
    runs = [p for p in planned if p.kind == "adapter"]
    assert len(runs) == 6 and {p.flags["seed"] for p in runs} == {0, 1}
    assert sum(p.kind == "base" for p in planned) == 1
    assert any("-s1-" in p.name for p in runs)
    with pytest.raises(UserError, match="suite rank varies rank"):
        plan([S.builtin_suite("rank")], {"rank": 8}, None)
    with pytest.raises(UserError, match="either --seeds or --set seed"):
        plan([S.builtin_suite("rank")], {"seed": 1}, 2)


def test_names_are_deterministic_and_ignore_default_values():
    assert S.train_name({"rank": 16, "quant": "16bit"}) == S.train_name({})
    assert S.train_name({"rank": 16, "lr": 1e-4}) != S.train_name({"rank": 16})
    assert S.eval_name("x", {"eval_limit": None}) == S.eval_name("x", {"rank": 4})
    assert S.eval_name("x", {"eval_limit": 2}) != S.eval_name("x", {})


def test_dry_run_lists_runs_and_their_state(tmp_path, capsys):
    from common.study.plan import plan
    db = tmp_path / "d.db"
    assert sweep.main(["--suite", "all", "--dry-run", "--db", str(db), "--set", "max_steps=3"]) == 0
    out = capsys.readouterr().out
    assert "suite all: 11 run(s)" in out
    assert "rank,modules,quant" in out and "modules=qv" in out and "quant=4bit" in out
    assert out.count("train pending, eval pending") == 10
    # Seeds per compared config, labelled within each suite, and the comparisons that get no verdict.
    assert "seeds in suite modules: modules=qkvo (reference) 1, modules=qv 1, modules=qkv 1, modules=all 1." in out
    assert "no verdict for lack of seeds (one seed: seed variation not measured) in 5 of 5 comparisons: " \
           "quant=4bit vs quant=16bit; quant=8bit vs quant=16bit; quant=16bit vs base model;" in out
    # the cost of the plan: each run's predicted train time, and eval time "unknown" with nothing measured here
    assert "| train (predicted)   | eval (predicted)   | total" in out
    assert "Eval: unknown, no evaluation has completed on this machine in this database yet" in out
    # A completed train run of one of them shows up as done.
    planned = plan([S.builtin_suite("rank")], {"max_steps": 3}, None)
    r4 = next(p for p in planned if p.flags.get("rank") == 4)
    t = Tracker(db)
    run = t.start_run(r4.name, "train", {"rank": 4})
    t.finish_run(run, "completed")
    crashed = t.start_run(next(p for p in planned if p.flags.get("rank") == 8).name, "train", {"rank": 8})
    t.conn.execute("UPDATE runs SET pid=999999999 WHERE id=?", (crashed,))
    t.close()
    assert sweep.main(["--suite", "rank", "--dry-run", "--db", str(db), "--set", "max_steps=3"]) == 0
    out = capsys.readouterr().out
    assert f"train done (run {run}), eval pending" in out
    assert f"train interrupted (run {crashed})" in out  # the dead process's row was marked interrupted


def test_dry_run_says_which_comparisons_lack_seeds(tmp_path, capsys):
    from common.study.plan import plan, seed_lines
    assert sweep.main(["--suite", "rank", "--seeds", "2", "--dry-run", "--db", str(tmp_path / "d.db")]) == 0
    out = capsys.readouterr().out
    assert "seeds in suite rank: rank=4 2, rank=8 2, rank=16 (reference) 2, rank=32 2, rank=64 2." in out
    assert "every comparison (9) has >= 2 seeds on each trained side." in out and "no verdict" not in out
    # One seed of rank=4 dropped: only its two comparisons lose their verdict.
    planned = [p for p in plan([S.builtin_suite("rank")], {}, 2)
               if not (p.flags.get("rank") == 4 and p.flags["seed"] == 1)]
    lines = seed_lines(planned)
    assert lines[0].startswith("seeds in suite rank: rank=4 1, rank=8 2, rank=16 (reference) 2")
    assert lines[1].endswith("in 2 of 9 comparisons: rank=4 vs rank=16; rank=4 vs base model. --seeds 2 (or more) "
                             "gives each one.")


def test_eval_time_is_predicted_from_the_evaluations_recorded_on_this_machine(tmp_path, capsys, monkeypatch):
    from common.study import budget
    t = Tracker(tmp_path / "d.db")
    here = t.start_run("e", "eval", {"n_samples": 2})
    t.log_scores(here, "humaneval", {"seconds_per_problem": (3.0, 10, None, None)})
    t.log_scores(here, "heldout", {"seconds_per_problem": (1.0, 40, None, None)})
    t.finish_run(here, "completed")
    elsewhere = t.start_run("e2", "eval", {"n_samples": 1})
    t.log_scores(elsewhere, "humaneval", {"seconds_per_problem": (100.0, 164, None, None)})
    t.finish_run(elsewhere, "completed")
    t.conn.execute("UPDATE runs SET host='another-machine' WHERE id=?", (elsewhere,))
    rates = budget.recorded_eval_rates(t)
    assert rates == {"humaneval": budget.EvalRate(1.5, 10, 1), "heldout": budget.EvalRate(0.5, 40, 1)}
    assert budget.predicted_eval_seconds({}, rates) == 164 * 1.5 + 40 * 0.5   # all of HumanEval, heldout as seen
    assert budget.predicted_eval_seconds({"eval_limit": 20, "heldout_gen": 5, "n_samples": 4}, rates) \
        == 20 * 4 * 1.5 + 5 * 4 * 0.5
    assert budget.predicted_eval_seconds({"benchmark": "humaneval,mbpp.jsonl"}, rates) is None   # never run here
    monkeypatch.setattr(budget, "predicted_train_seconds", lambda p, device: 600.0 if p.kind == "adapter" else 0.0)
    budget.print_plan_costs(t, plan([S.builtin_suite("rank")], {}, None), None)
    out = capsys.readouterr().out
    # 5 adapters x 10 min of training; 6 evaluations (5 adapters + the base) x 266 s
    assert "time: train 50 min + eval 27 min = 77 min, one run at a time" in out
    assert "humaneval 1.5 s/sample (median of 1)" in out and out.count("| 10 min ") == 5


@pytest.mark.parametrize("content", [os.urandom(4096), b"SQLite format 3\x00" + os.urandom(4080), None])
def test_corrupt_or_foreign_db_is_a_one_line_error(tmp_path, content):
    db = tmp_path / "x.db"
    if content is None:  # someone else's SQLite database
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE users (id INTEGER)")
        conn.commit()
        conn.close()
    else:
        db.write_bytes(content)
    for script in ("sweep.py", "report.py"):
        args = ["--suite", "smoke", "--dry-run"] if script == "sweep.py" else []
        done = subprocess.run([sys.executable, str(ROOT / script), "--db", str(db), *args],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, (script, done.stderr)
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
        assert "Traceback" not in done.stderr and str(db) in done.stderr


# ---------------------------------------------------------------------------- real sweeps

@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("sweeps")
    # 40 functions that differ in structure, not only in names and literals: near-duplicates are removed.
    bodies = [f"{fn}(x) {op} {i}" for i, (fn, op) in enumerate(
        (fn, op) for fn in ("abs", "len", "str", "int", "float", "sorted", "max", "min")
        for op in ("+", "-", "*", "//", "%"))]
    with open(root / "data.jsonl", "w") as f:
        for i, body in enumerate(bodies):
            f.write(json.dumps({"prompt": f"def f_{i}(x):\n    \"\"\"Return {body}.\"\"\"\n",
                                "completion": f"    return {body}\n"}) + "\n")
    return root


def common_sets(workdir: Path, tiny_model: str) -> list[str]:
    sets = {"model": tiny_model, "dataset": str(workdir / "data.jsonl"), "benchmark": "humaneval",
            "max_new_tokens": 8, "eval_gen": 0, "exec_workers": 2}
    return [arg for k, v in sets.items() for arg in ("--set", f"{k}={v}")]


def sweep_cmd(workdir: Path, tiny_model: str, db: Path, *which: str) -> list[str]:
    return [sys.executable, str(ROOT / "sweep.py"), *which, "--db", str(db), "--output-dir", str(workdir / "runs"),
            "--quiet", *common_sets(workdir, tiny_model)]


def child_env(workdir: Path) -> dict:
    return dict(os.environ, LORA_STUDY_CACHE=str(workdir / "cache"), PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def two_sweeps(workdir, tiny_model):
    """The smoke suite (two runs at a time) and a suite file, started together on one database.

    The suite file shares the smoke suite's rank-4 config (one run, member of both suites),
    adds a qv run, and a run that fails (max_seq_len 0) to show the sweep goes on.
    """
    db = workdir / "shared.db"
    suite_file = write_suite(workdir / "pair.yaml", {
        "name": "pair", "base": dict(S.builtin_suite("smoke").base), "axes": {"rank": [4]},
        "groups": [[{"modules": "qkvo"}, {"modules": "qv"}, {"modules": "qkv", "max_seq_len": 0}]]})
    procs = {}
    began = time.monotonic()
    # The smoke sweep runs two at a time (worker threads), the suite file one at a time.
    for label, which in (("smoke", ["--suite", "smoke", "--workers", "2"]), ("pair", ["--suite-file", suite_file])):
        log = open(workdir / f"{label}.log", "w")
        procs[label] = (subprocess.Popen(sweep_cmd(workdir, tiny_model, db, *which), stdout=log,
                                         stderr=subprocess.STDOUT, env=child_env(workdir), cwd=workdir), log)
    codes = {}
    for label, (proc, log) in procs.items():
        codes[label] = proc.wait(timeout=600)
        log.close()
    logs = {label: (workdir / f"{label}.log").read_text() for label in procs}
    return {"db": db, "codes": codes, "logs": logs, "seconds": time.monotonic() - began, "suite_file": suite_file}


def rows(db: Path, query: str, args=()) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(query, args).fetchall()
    finally:
        conn.close()


@pytest.mark.slow
def test_two_sweeps_on_one_db_lose_nothing(two_sweeps):
    db, codes, logs = two_sweeps["db"], two_sweeps["codes"], two_sweeps["logs"]
    assert codes["smoke"] == 0, logs["smoke"][-3000:]
    assert codes["pair"] == 1, logs["pair"][-3000:]  # one run of the suite file fails on purpose
    for log in logs.values():
        assert "database is locked" not in log and "Traceback" not in log
    assert "max-seq-len must be positive" in logs["pair"]
    assert rows(db, "SELECT COUNT(*) FROM runs WHERE status='running'") == [(0,)]
    trains = rows(db, "SELECT name, status FROM runs WHERE kind='train' ORDER BY id")
    completed = [name for name, status in trains if status == "completed"]
    assert len(completed) == len(set(completed)) == 3          # r4-qkvo (shared), r8-qkvo, r4-qv
    assert sum(1 for name, _ in trains if name.startswith("r4-qkvo-16bit-s0-")) == 1
    failed = [name for name, status in trains if status == "failed"]
    assert len(failed) == 1 and failed[0].startswith("r4-qkv-16bit-s0-")
    evals = rows(db, "SELECT parent_id FROM runs WHERE kind='eval' AND status='completed'")
    train_ids = {i for (i,) in rows(db, "SELECT id FROM runs WHERE kind='train' AND status='completed'")}
    assert {p for (p,) in evals if p is not None} == train_ids  # every trained run evaluated
    assert sum(1 for (p,) in evals if p is None) == 1           # one base-model evaluation, shared
    for run_id in train_ids:  # every step's metrics arrived
        steps = rows(db, "SELECT step FROM metrics WHERE run_id=? AND name='loss' ORDER BY step", (run_id,))
        assert steps == [(1,), (2,)]
    # The shared config and the base evaluation are members of both suites.
    shared = rows(db, "SELECT id FROM runs WHERE kind='train' AND name LIKE 'r4-qkvo-16bit-s0-%'")[0][0]
    members = {name for (name,) in rows(db, "SELECT name FROM scores WHERE run_id=? AND benchmark='suite'",
                                        (shared,))}
    assert members == {"smoke", "pair"}


@pytest.mark.slow
def test_rerun_of_a_finished_sweep_runs_nothing(two_sweeps, workdir, tiny_model):
    db = two_sweeps["db"]
    before = rows(db, "SELECT COUNT(*) FROM runs")
    done = subprocess.run(sweep_cmd(workdir, tiny_model, db, "--suite", "smoke"), capture_output=True, text=True,
                          env=child_env(workdir), cwd=workdir, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "all 3 run(s) done" in done.stdout
    assert rows(db, "SELECT COUNT(*) FROM runs") == before
    dry = subprocess.run(sweep_cmd(workdir, tiny_model, db, "--suite-file", two_sweeps["suite_file"]) + ["--dry-run"],
                         capture_output=True, text=True, env=child_env(workdir), cwd=workdir, timeout=300)
    assert dry.returncode == 0 and "train failed" in dry.stdout and dry.stdout.count("eval done") == 3


@pytest.mark.slow
def test_report_of_the_sweeps(two_sweeps, tmp_path):
    import matplotlib.image

    out = tmp_path / "report"
    # every run counts whatever the load of the machine running the tests (the frontier needs costs)
    limit = ["--contention-limit", "1"]
    done = subprocess.run([sys.executable, str(ROOT / "report.py"), "--db", str(two_sweeps["db"]), "--out", str(out),
                           *limit], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    text = (out / "RESULTS.md").read_text()
    smoke = text[text.index("## Suite `smoke`"):]
    assert "| rank=4 " in smoke and "| rank=8 " in smoke and "| base model " in smoke
    pair = text[text.index("## Suite `pair`"):text.index("## Suite `smoke`")]
    assert "| modules=qkvo " in pair and "| modules=qv " in pair       # the shared run is in both suites
    assert "r4-qkv-16bit-s0-" in pair and "max-seq-len must be positive" in pair  # the failed run is listed
    pngs = sorted(out.glob("*.png"))
    assert {p.name for p in pngs} >= {"smoke_loss.png", "smoke_quality.png", "smoke_frontier.png",
                                      "smoke_rank.png", "pair_loss.png"}
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert matplotlib.image.imread(png).shape[0] > 100
    rows_json = json.loads((out / "model_comparison.json").read_text())
    assert {(r["suite"], r["config"]) for r in rows_json} >= {("smoke", "rank=4"), ("smoke", "rank=8"),
                                                            ("smoke", "base model"), ("pair", "modules=qv")}
    again = subprocess.run([sys.executable, str(ROOT / "report.py"), "--db", str(two_sweeps["db"]), "--out",
                            str(tmp_path / "again"), *limit], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0     # the same bytes, but for the report command it quotes (its output directory)
    assert (tmp_path / "again" / "RESULTS.md").read_text().replace(str(tmp_path / "again"), str(out)) == text


def wait_for(condition, proc, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None and not condition():
        time.sleep(0.02)


def kill_while_a_run_is_running(proc: subprocess.Popen, db: Path) -> None:
    """SIGKILL the sweep's process group at a moment when a run is `running`. On a fast machine a run
    can be `running` for well under a second, so the group is frozen (SIGSTOP) the moment a running
    row is seen, and the row is checked again while nothing can change it."""
    def running() -> int:
        return rows(db, "SELECT COUNT(*) FROM runs WHERE status='running'")[0][0]

    while proc.poll() is None:
        wait_for(lambda: running() > 0, proc)
        try:
            os.killpg(proc.pid, signal.SIGSTOP)
        except ProcessLookupError:  # the whole sweep exited while we looked
            break
        if running() > 0:
            os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up
            proc.wait()
            return
        os.killpg(proc.pid, signal.SIGCONT)
    raise AssertionError("the sweep finished before a run could be killed")


@pytest.mark.slow
def test_ctrl_c_then_kill_9_then_rerun_completes(workdir, tiny_model):
    """SIGINT stops the sweep after the child saves a checkpoint; SIGKILL of the sweep and its child
    leaves a `running` row; the same command then finishes the suite with one completed row per run."""
    db = workdir / "killed.db"
    base = {**S.builtin_suite("smoke").base, "max_steps": 24, "save_every": 3}
    suite_file = write_suite(workdir / "killme.yaml", {"name": "killme", "base": base, "axes": {"rank": [4]}})
    cmd = sweep_cmd(workdir, tiny_model, db, "--suite-file", suite_file)
    planned = plan([S.load_suite_file(suite_file)], S.parse_set(cmd[cmd.index("--set"):][1::2]), None)
    name = planned[1].name
    checkpoint = workdir / "runs" / "train" / name / "checkpoint" / "state.pt"
    finished = workdir / "runs" / "train" / name / "run_config.json"

    def start(log_name: str) -> subprocess.Popen:
        return subprocess.Popen(cmd, stdout=open(workdir / log_name, "w"), stderr=subprocess.STDOUT,
                                env=child_env(workdir), cwd=workdir, start_new_session=True)

    # 1. Ctrl-C (SIGINT to the sweep alone): the child is asked to stop, saves a checkpoint, exit 130.
    proc = start("interrupted.log")
    wait_for(lambda: checkpoint.exists() or finished.exists(), proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=300) == 130, (workdir / "interrupted.log").read_text()[-2000:]
    assert rows(db, "SELECT COUNT(*) FROM runs WHERE status='running'") == [(0,)]
    interrupted_after_finish = finished.exists()  # the training was done before the signal (a very fast machine)
    if not interrupted_after_finish:
        assert rows(db, "SELECT status FROM runs WHERE kind='train' AND name=?", (name,)) == [("interrupted",)]
        assert checkpoint.exists()
        assert "re-run the same command to resume" in (workdir / "interrupted.log").read_text()

    # 2. kill -9 of the sweep and its child while the training resumes (or, if it is done, while evaluating).
    proc = start("killed.log")
    kill_while_a_run_is_running(proc, db)
    assert proc.returncode == -signal.SIGKILL, (workdir / "killed.log").read_text()[-2000:]
    assert rows(db, "SELECT COUNT(*) FROM runs WHERE status='running'")[0][0] == 1  # left behind by the kill

    # 3. The same command again completes the suite.
    done = subprocess.run(cmd, capture_output=True, text=True, env=child_env(workdir), cwd=workdir, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "marked interrupted" in done.stderr
    assert rows(db, "SELECT COUNT(*) FROM runs WHERE status='running'") == [(0,)]
    trains = rows(db, "SELECT id, status FROM runs WHERE kind='train' AND name=?", (name,))
    statuses = [s for _, s in trains]
    assert statuses.count("completed") == 1 and set(statuses) <= {"completed", "interrupted"}
    if not interrupted_after_finish:  # went on from the checkpoint, before or after the kill
        assert "resuming at step" in (workdir / "killed.log").read_text() + done.stdout + done.stderr
    train_id = next(i for i, s in trains if s == "completed")
    assert rows(db, "SELECT value FROM scores WHERE run_id=? AND name='steps'", (train_id,)) == [(24.0,)]
    evals = rows(db, "SELECT status FROM runs WHERE kind='eval' AND parent_id=?", (train_id,))
    assert [s for (s,) in evals].count("completed") == 1
    base_evals = "SELECT COUNT(*) FROM runs WHERE kind='eval' AND parent_id IS NULL AND status='completed'"
    assert rows(db, base_evals) == [(1,)]


def test_workers_pin_one_gpu_each_on_a_faked_device_list(tmp_path, monkeypatch):
    """--workers 2 on two (faked) GPUs: every child sees one GPU, and no two running children share one."""
    import threading

    from common.config import SweepConfig

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    runs = [Planned("adapter", ["s"], {}, "", f"run{i}", f"run{i}-eval") for i in range(6)]
    job = runner.Sweep(SweepConfig(db=str(tmp_path / "e.db"), workers=2, quiet=True), runs)
    seen, running, clashes, lock = [], set(), [], threading.Lock()

    def execute(p, gpu):
        with lock:
            clashes.extend([gpu] if gpu in running else [])
            running.add(gpu)
        child = [sys.executable, "-c", "import os, time; print(os.environ['CUDA_VISIBLE_DEVICES']); time.sleep(0.2)"]
        code, _, tail = job.run_child(child, p.name, gpu)
        with lock:
            running.discard(gpu)
            seen.append(tail.strip().splitlines()[-1].split()[-1])
        p.outcome = "done" if code == 0 else "failed"

    monkeypatch.setattr(job, "execute", execute)
    try:
        job.run()
    finally:
        job.close()
    assert sorted(seen) == ["3", "3", "3", "5", "5", "5"] and not clashes
    assert all(p.outcome == "done" for p in runs)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    three = runner.Sweep(SweepConfig(db=str(tmp_path / "e.db"), workers=3, quiet=True), [])
    assert three.gpus == ["7", "7", "7"]  # more workers than GPUs share them, and say so
    three.close()


def test_shards_partition_the_plan_stably_and_evenly():
    from common.study.plan import parse_shard, plan, shard, training_cost

    planned = plan(S.suite_parts(S.builtin_suite("study")), {}, None)
    parts = [shard(planned, i, 3) for i in range(3)]
    trained = [{p.name for p in part if p.kind == "adapter"} for part in parts]
    assert set().union(*trained) == {p.name for p in planned if p.kind == "adapter"}
    assert sum(map(len, trained)) == len(set().union(*trained))  # an adapter trains in one shard only, with all
    assert any(sum(p.name == name for p in part) > 1 for part, names in zip(parts, trained)
               for name in names)  # its evaluations
    bases = {p.name for p in planned if p.kind == "base"}
    assert all({p.name for p in part if p.kind == "base"} == bases for part in parts)  # each shard has its baselines
    assert [[p.name for p in part] for part in parts] == [[p.name for p in shard(planned, i, 3)] for i in range(3)]
    costs = {p.name: training_cost(p.flags) for p in planned if p.kind == "adapter"}
    loads = [sum(costs[n] for n in names) for names in trained]
    assert max(loads) - min(loads) <= max(costs.values())  # greedy by cost: within one run of each other
    for bad in ("3/3", "x/2", "1", "0/0"):
        with pytest.raises(UserError, match="expected I/N"):
            parse_shard(bad)


def test_shards_balance_cost_not_count():
    from common.study.plan import shard

    planned = [Planned("adapter", ["s"], {"rank": r}, "", f"r{r}", f"r{r}-eval") for r in range(1, 12)]
    cost = {"r1": 10.0}
    parts = [shard(planned, i, 2, cost=lambda flags: cost.get(f"r{flags['rank']}", 1.0)) for i in range(2)]
    assert [[p.name for p in part] for part in parts] == [["r1"], [f"r{r}" for r in range(2, 12)]]


def test_merge_remaps_ids_adds_nothing_twice_and_takes_a_finished_resume(tmp_path):
    shard = Tracker(tmp_path / "shard.db")
    train = shard.start_run("r16", "train", {"rank": 16}, suite="rank")
    shard.log_metrics(train, 1, {"loss": 2.0})
    shard.log_scores(train, "train", {"adapter_mb": 7.0})
    shard.finish_run(train, "interrupted")
    evaluation = shard.start_run("r16-eval", "eval", {"adapter": "x"}, suite="rank")
    shard.log_samples(evaluation, "humaneval", [{"task_id": "HumanEval/0", "result": "passed", "details": {}}])
    shard.finish_run(evaluation, "completed")
    merged = Tracker(tmp_path / "all.db")
    merged.start_run("other", "train", {}, suite="x")  # ids in the target are taken already
    assert merged.merge_from(shard) == {"added": 2, "updated": 0, "duplicate": 0, "conflict": 0}
    assert merged.merge_from(shard) == {"added": 0, "updated": 0, "duplicate": 2, "conflict": 0}
    shard.resume_run(train)  # the shard resumes and finishes the training after the first merge
    shard.finish_run(train, "completed")
    assert merged.merge_from(shard)["updated"] == 1
    runs = {r["name"]: r for r in merged.runs()}
    assert len(runs) == 3 and runs["r16"]["status"] == "completed"
    assert merged.metrics(runs["r16"]["id"], "loss") == [{"step": 1, "name": "loss", "value": 2.0}]
    assert merged.samples(runs["r16-eval"]["id"])[0]["result"] == "passed"


def run_summary(db: str) -> list[tuple]:
    """Every run's name, kind, status and quality scores: what must agree however the suite was run."""
    t = Tracker(db)
    quality = ("pass@1", "syntax_ok", "chrf", "bleu", "test_case_avg", "perplexity", "final_val_loss")
    return sorted((r["name"], r["kind"], r["status"],
                   tuple(sorted((s["benchmark"], s["name"], round(s["value"], 6)) for s in t.scores(r["id"])
                                if s["name"] in quality and s["value"] is not None)))
                  for r in t.runs())


@pytest.mark.slow
def test_smoke_suite_in_three_slurm_shards_merges_to_the_one_process_report(workdir, tiny_model, tmp_path):
    """docs/sweeps.md's SLURM script, run as SLURM would (array tasks 0-2), then merged: same runs and scores."""
    import re

    page = (ROOT / "docs" / "sweeps.md").read_text()
    script = re.search(r"```bash\n(#!/bin/bash\n#SBATCH.*?)```", page, re.S).group(1)
    script = script.replace("python sweep.py", f"{sys.executable} {ROOT / 'sweep.py'}")
    (tmp_path / "shards.sbatch").write_text(script)
    args = ["--suite", "smoke", "--quiet", *common_sets(workdir, tiny_model)]
    env = child_env(workdir)
    for task in range(3):
        done = subprocess.run(["bash", "shards.sbatch", *args], cwd=tmp_path, capture_output=True, text=True,
                              env={**env, "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": "3"})
        assert done.returncode == 0, done.stderr[-2000:]
    shards = sorted(str(p) for p in tmp_path.glob("shard-*.db"))
    merge = [sys.executable, str(ROOT / "sweep.py"), "--merge", *shards, "--db", str(tmp_path / "study.db")]
    for _ in range(2):  # merging again adds nothing
        assert subprocess.run(merge, cwd=tmp_path, env=env, capture_output=True).returncode == 0
    single = subprocess.run([sys.executable, str(ROOT / "sweep.py"), *args, "--db", str(tmp_path / "one.db")],
                            cwd=tmp_path, capture_output=True, text=True, env=env)
    assert single.returncode == 0, single.stderr[-2000:]

    assert run_summary(str(tmp_path / "study.db")) == run_summary(str(tmp_path / "one.db"))
    for db in ("study.db", "one.db"):
        out = tmp_path / f"report-{db}"
        assert subprocess.run([sys.executable, str(ROOT / "report.py"), "--db", str(tmp_path / db), "--output-dir",
                               str(out), "--no-figures"], capture_output=True).returncode == 0
    assert "## Suite `smoke`" in (tmp_path / "report-study.db" / "RESULTS.md").read_text()


def test_ray_launcher_without_ray_is_one_line_error(workdir, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(UserError, match=r"needs Ray, which is not installed: pip install -r requirements-ray.txt"):
        sweep.main(["--suite", "smoke", "--launcher", "ray", "--db", str(tmp_path / "r.db"),
                    *common_sets(workdir, tiny_model)])
    assert not Tracker(tmp_path / "r.db").runs()  # nothing ran


@pytest.mark.slow
def test_ray_launcher_runs_the_smoke_suite_and_survives_a_killed_task(workdir, tiny_model, tmp_path):
    """A local Ray cluster; the worker running the first training is SIGKILLed; Ray re-runs the task."""
    pytest.importorskip("ray", reason="Ray is optional: pip install -r requirements-ray.txt (CI does)")
    import psutil

    db = tmp_path / "ray.db"
    cmd = [sys.executable, str(ROOT / "sweep.py"), "--suite", "smoke", "--quiet", *common_sets(workdir, tiny_model),
           "--launcher", "ray", "--ray-cpus", "1", "--db", str(db)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=child_env(workdir), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    killed = None
    deadline = time.time() + 600
    while killed is None and proc.poll() is None and time.time() < deadline:
        for child in psutil.process_iter(["cmdline", "ppid"]):
            argv = child.info["cmdline"] or []
            if any(a.endswith("train.py") for a in argv) and str(tmp_path) in " ".join(argv):
                worker = psutil.Process(child.info["ppid"])
                if "sweep.py" not in " ".join(worker.cmdline()):  # the Ray worker, not our driver
                    worker.kill()
                    killed = worker.pid
                    break
        time.sleep(0.05)
    output, _ = proc.communicate(timeout=900)
    assert killed is not None, "no training was seen to kill:\n" + output[-3000:]
    assert proc.returncode == 0, output[-3000:]
    runs = Tracker(db).runs()
    assert sorted((r["kind"], r["status"]) for r in runs) == [("eval", "completed")] * 3 + [("train", "completed")] * 2
    for run in runs:  # the files came back to the driver's run root, where the runs say they are
        assert (Path(run["output_dir"]) / ("adapter_config.json" if run["kind"] == "train" else "samples.json")).is_file()
    again = subprocess.run(cmd, cwd=tmp_path, env=child_env(workdir), capture_output=True, text=True)
    assert again.returncode == 0 and len(Tracker(db).runs()) == 5  # done runs are not submitted again

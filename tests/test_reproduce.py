"""The reproduction commands report.py writes (common/study/reproduce.py) are commands the scripts accept.

A hand-written study (tests/study_db.py: built-in suites `rank` and `quant`) plus direct train.py/evaluate.py
runs recorded as those scripts record them (`unassigned`): the sweep command plans in a subprocess, and the
direct runs' commands parse back to the recorded settings.
"""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from study_db import build_study

import report
from common.config import EvalConfig, TrainConfig
from common.options import parse_config, recorded
from common.study.reproduce import direct_commands, reproduction_sentence
from common.study.rows import Study
from common.tracker import Tracker

ROOT = Path(__file__).resolve().parent.parent


def add_direct_runs(path: Path) -> TrainConfig:
    """A train run and its evaluation started by hand (no --suite), and a base-model evaluation."""
    db = Tracker(path)
    cfg = TrainConfig(rank=8, max_steps=3, lr=1e-4, modules="qv", format="instruct", name="by-hand")
    train = db.start_run(cfg.name, "train", {**recorded(cfg), "target_modules": ["q_proj", "v_proj"]})
    db.finish_run(train, "completed")
    scoring = {"model": "smollm2-135m", "quant": "16bit", "dtype": "bfloat16", "benchmarks": ["humaneval"],
               "benchmark_keys": {"humaneval": {"decode": "bfloat16, batch 16"}}, "eval_limit": 2, "n_samples": 1,
               "k": [1], "temperature": 0.0, "top_p": 0.95, "max_new_tokens": 16, "eval_batch_size": 16, "seed": 0,
               "split_seed": 0, "dataset": None, "max_seq_len": 512, "merge": False, "isolation": "bwrap",
               "landlock_abi": None, "timeout": 10.0, "memory_mb": 2048, "protocol": "instruct"}
    evaluation = db.start_run("by-hand-eval", "eval", {**scoring, "adapter": "/x/by-hand"}, parent_id=train)
    db.finish_run(evaluation, "completed")
    base = db.start_run("base-eval", "eval", {**scoring, "quant": "4bit", "adapter": None, "seed": 3})
    db.finish_run(base, "completed")
    db.close()
    return cfg


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    path = tmp_path_factory.mktemp("db") / "study.db"
    build_study(path)
    cfg = add_direct_runs(path)
    out = tmp_path_factory.mktemp("report")
    assert report.main(["--db", str(path), "--output-dir", str(out), "--no-figures"]) == 0
    return path, (out / "RESULTS.md").read_text(), cfg


def test_the_sweep_command_plans_in_a_subprocess(results, tmp_path):
    path, text, _ = results
    sweep_part = re.search(r"To reproduce: `([^`]*)`", text).group(1)
    assert sweep_part == "python sweep.py --suite quant && python sweep.py --suite rank"  # no `--suite unassigned`
    for command in sweep_part.split(" && "):
        argv = shlex.split(command)[2:]
        done = subprocess.run([sys.executable, str(ROOT / "sweep.py"), *argv, "--dry-run", "--db", str(path)],
                              capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert f"suite {argv[1]}:" in done.stdout


def test_direct_runs_get_the_commands_that_repeat_them(results):
    _, text, cfg = results
    assert "and the commands under \"Runs outside the built-in suites\", then" in text
    assert "`unassigned` holds runs started directly, not by a sweep" in text
    block = text.split("## Runs outside the built-in suites")[1].split("```sh\n")[1].split("```")[0]
    train, evaluation, base = block.strip().splitlines()
    assert train.startswith("python train.py ") and evaluation.startswith("python evaluate.py ")
    parsed = parse_config(TrainConfig, shlex.split(train)[2:], "")
    assert recorded(parsed) == recorded(cfg)   # every recorded setting, and nothing else
    adapter = parse_config(EvalConfig, shlex.split(evaluation)[2:], "")
    assert (adapter.run_name, adapter.name, adapter.eval_limit, adapter.benchmark, adapter.protocol) == (
        "by-hand", "by-hand-eval", 2, "humaneval", "instruct")
    assert adapter.fp32_decoding is False and adapter.max_new_tokens == 16 and adapter.eval_batch_size == 16
    assert adapter.quant is None and adapter.isolation == "auto"  # the adapter's quant; this machine's sandbox
    scratch = parse_config(EvalConfig, shlex.split(base)[2:], "")
    assert (scratch.run_name, scratch.quant, scratch.seed, scratch.name) == (None, "4bit", 3, "base-eval")


def test_builtin_suites_alone_keep_the_one_sweep_command(results):
    study = Study(Tracker(results[0]))
    parts = ["study-completion", "study-fewshot", "study-gemma", "study-modules", "study-quant", "study-rank"]
    assert reproduction_sentence(study, parts, "python report.py") == (
        "To reproduce: `python sweep.py --suite study` (resumable: run it again after an interruption), "
        "then `python report.py`.")
    assert reproduction_sentence(study, ["my-data"], "python report.py") == "To rebuild this report: `python report.py`."
    assert direct_commands(study, ["my-data"]) == []   # a suite with no completed run has nothing to repeat

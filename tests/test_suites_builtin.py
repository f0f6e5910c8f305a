"""The built-in suites (data/suites/builtin/*.yaml): each expands to exactly the runs pinned in tests/fixtures/suite_expansion.json.

The fixture was written from the suites as Python dicts, before they became YAML files, so it pinned that the
move changed no run's name, flags or command line; it was re-pinned once on purpose, when `--format auto` became
train.py's default (base evaluations of suites that leave the format unset now keep `--protocol auto`, which
follows the same choice). Also: unknown names and composite suite files.
"""
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from common.config import SweepConfig
from common.errors import UserError
from common.study import suites as S
from common.study.plan import plan, selected_suites

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "suite_expansion.json"


def expansion(name: str) -> list[dict[str, Any]]:
    """What `sweep.py --suite NAME` plans: every run's kind, suites, names, flags and both scripts' arguments."""
    return [{"kind": p.kind, "suites": p.suites, "name": p.name, "eval_name": p.eval_name, "diff": p.diff,
             "flags": p.flags, "train_argv": S.to_argv(p.flags, S.TRAIN_FLAGS),
             "eval_argv": S.to_argv(p.flags, S.EVAL_FLAGS)}
            for p in plan(selected_suites(SweepConfig(suite=name)), {}, None)]


PINNED: dict[str, list[dict[str, Any]]] = json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("name", sorted(PINNED))
def test_builtin_suite_expands_to_the_pinned_runs(name):
    assert expansion(name) == PINNED[name]


def test_every_builtin_suite_file_is_pinned():
    assert sorted(PINNED) == S.builtin_names()


@pytest.mark.parametrize("name", ["nope", "unassigned", "Rank", "rank.yaml", "../suites/rank"])
def test_an_unknown_suite_name_is_a_user_error_listing_the_valid_names(name):
    with pytest.raises(UserError, match=r"no built-in suite .*; valid names: all, modules, quant, rank, seeds, smoke, "
                                        r"study, study-completion"):
        selected_suites(SweepConfig(suite=name))


def test_sweep_with_an_unknown_suite_exits_with_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "sweep.py"), "--suite", "unassigned", "--db",
                           str(tmp_path / "x.db"), "--dry-run"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "valid names: all, modules" in done.stderr
    assert not (tmp_path / "x.db").exists()  # nothing planned, nothing written


def test_a_suite_file_may_compose_builtin_suites(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nparts: [rank, quant]\n")
    planned = plan(selected_suites(SweepConfig(suite_file=str(path))), {}, None)
    assert {s for p in planned for s in p.suites} == {"rank", "quant"}
    assert len(planned) == 1 + 5 + 2  # one shared base evaluation; r16 qkvo 16bit is in both
    cases = [("parts: [rank, nope]\n", "no built-in suite 'nope'; valid names: all,"),
             ("parts: [rank]\naxes: {seed: [0, 1]}\n", "a suite with parts has no base, axes or groups"),
             ("parts: []\n", "parts must be a non-empty list"),
             ("name: study\nparts: [rank]\n", r"is a built-in suite \(run it with --suite study\)")]
    for i, (text, message) in enumerate(cases):
        (tmp_path / f"bad{i}.yaml").write_text(text)
        with pytest.raises(UserError, match=message):
            S.load_suite_file(str(tmp_path / f"bad{i}.yaml"))


def test_builtin_files_say_what_each_run_costs():
    for name in S.builtin_names():
        text = (S.BUILTIN_DIR / f"{name}.yaml").read_text()
        assert f"python sweep.py --suite {name}" in text, name   # how to run it
        assert "Runs:" in text and ("batch 4" in text), name     # the arithmetic of the budget

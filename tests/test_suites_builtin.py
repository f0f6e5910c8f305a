"""The built-in suites: each expands to exactly the runs pinned in tests/fixtures/suite_expansion.json.

The fixture was written from the suites as Python dicts, before they became YAML files, so it pins that the
move changed no run's name, flags or command line.
"""
import json
from pathlib import Path
from typing import Any

import pytest

from common.config import SweepConfig
from common.study import suites as S
from common.study.plan import plan, selected_suites

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "suite_expansion.json"


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

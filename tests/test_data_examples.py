"""Every example file in data/ loads as data/README.md says, and the example suites expand."""
from pathlib import Path

import pytest

from common.study import suites
from common.corpus.splits import load_splits, read_apps, read_benchmark_file

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.mark.parametrize("name, columns, group_key, style, rows", [
    ("alpaca.jsonl", None, None, "instruction", 6),
    ("prompt_completion.csv", None, None, "completion", 6),
    ("question_answer.csv", "prompt=question,completion=answer", "repo", "completion", 6),
    ("messages.jsonl", None, None, "instruction", 6),
    ("sharegpt.jsonl", None, None, "instruction", 6),
])
def test_training_examples_load(name, columns, group_key, style, rows):
    splits = load_splits(str(DATA / name), columns=columns, group_key=group_key)
    examples = splits.train + splits.validation + splits.test
    assert len(examples) == rows and {e.style for e in examples} == {style}
    assert sum(splits.dropped.values()) == 0, splits.dropped   # the examples are distinct and clean
    if name == "alpaca.jsonl":   # 'output' and 'response' rows alike
        assert all(e.completion.strip() for e in examples)
    if name in ("messages.jsonl", "sharegpt.jsonl"):
        assert all(e.turns for e in examples)
        assert name != "messages.jsonl" or max(sum(r == "assistant" for r, _ in e.turns) for e in examples) == 2


def test_apps_example_loads():
    given, dropped, _ = read_apps(DATA / "apps.jsonl")
    assert len(given["train"]) == 4 and sum(dropped.values()) == 0
    assert given["train"][0].tests == {"inputs": ["1 2\n", "10 -3\n"], "outputs": ["3\n", "7\n"]}


@pytest.mark.parametrize("name, style", [("bench_humaneval.jsonl", "completion"), ("bench_stdio.jsonl", "instruction")])
def test_benchmark_examples_load(name, style):
    problems = read_benchmark_file(str(DATA / name))
    assert len(problems) == 2 and {p.style for p in problems} == {style} and all(p.completion for p in problems)


@pytest.mark.parametrize("name, runs", [("rank.yaml", 2), ("my_data.yaml", 8)])
def test_example_suites_expand(name, runs):
    assert len(suites.expand(suites.load_suite_file(str(DATA / "suites" / name)))) == runs


def test_benchmark_reference_solutions_pass():
    import subprocess
    import sys
    for p in read_benchmark_file(str(DATA / "bench_humaneval.jsonl")):
        scope: dict = {}
        exec(p.prompt + p.completion + "\n" + p.tests["test"], scope)   # our own example file, not user code
        scope["check"](scope[p.tests["entry_point"]])
    for p in read_benchmark_file(str(DATA / "bench_stdio.jsonl")):
        for given, expected in zip(p.tests["inputs"], p.tests["outputs"]):
            out = subprocess.run([sys.executable, "-c", p.completion], input=given, capture_output=True, text=True)
            assert out.stdout == expected

"""Hub benchmark loaders (mbpp, humaneval+, mbpp+) on small fixtures in the hub's schemas."""
import json
from pathlib import Path

import pytest

from common.corpus.hub_benchmarks import is_hub_benchmark, load_hub_benchmark
from common.errors import UserError
from common.text.generation import cut_completion
from common.text.protocols import MODULE_STOPS, program, render
from common.model.load import load_tokenizer
from common.sandbox.execute import humaneval_program

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m")


def passes(code: str, problem) -> bool:
    """Run a trusted program with the problem's tests in process, as humaneval_program builds it."""
    try:
        exec(compile(humaneval_program("", code, problem.tests["test"], problem.tests["entry_point"]), "<p>", "exec"),
             {})
    except Exception:  # an assertion, or the wrong answer's TypeError and the like
        return False
    return True


@pytest.mark.parametrize("name, file, ids", [
    ("mbpp", "mbpp_full.jsonl", ["Mbpp/11", "Mbpp/12"]),   # task 5 is outside the test split 11-510
    ("humaneval+", "humanevalplus.jsonl", ["HumanEval/0", "HumanEval/1"]),
    ("mbpp+", "mbppplus.jsonl", ["Mbpp/2", "Mbpp/3"]),
])
def test_local_copies_load_as_runnable_humaneval_shaped_problems(name, file, ids):
    spec = f"{name}:{FIXTURES / file}"
    assert is_hub_benchmark(spec) and is_hub_benchmark(name) and not is_hub_benchmark("humaneval")
    problems, key = load_hub_benchmark(spec)
    assert [p.id for p in problems] == ids
    assert key["benchmark"] == name and key["problems"] == len(ids) and len(key["sha256"]) == 64
    for p in problems:
        assert p.style == "completion" and set(p.tests) == {"test", "entry_point"}
        reference = program(p, "completion", p.completion)
        assert passes(reference, p)  # the reference passes its tests
        assert not passes(reference + f"\n\ndef {p.tests['entry_point']}(*args):\n    return None\n", p)


def test_mbpp_prompts_follow_evalplus():
    problems, _ = load_hub_benchmark(f"mbpp+:{FIXTURES / 'mbppplus.jsonl'}")
    assert problems[0].prompt == ('"""\nWrite a function to find the shared elements from the given two lists.\n'
                                  'assert set(similar((3, 4, 5), (5, 7, 4))) == set((4, 5))\n"""\n')
    assert problems[0].tests["entry_point"] == "similar" and problems[1].tests["entry_point"] == "is_not_prime"
    mbpp, _ = load_hub_benchmark(f"mbpp:{FIXTURES / 'mbpp_full.jsonl'}")
    assert mbpp[1].tests["test"].startswith("SAMPLE = ")  # test_setup_code runs before the tests


def test_offline_hub_load_fails_in_one_line_naming_the_local_file(monkeypatch):
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", True)
    expected = (r"could not load mbpp\+ from the Hugging Face hub \(evalplus/mbppplus: .*"
                r"offline\? pass a local copy in the hub's schema: --benchmark mbpp\+:PATH.jsonl")
    with pytest.raises(UserError, match=expected):
        load_hub_benchmark("mbpp+")


def test_rows_outside_the_schema_are_refused(tmp_path):
    bad = tmp_path / "mbppplus.jsonl"
    bad.write_text(json.dumps({"task_id": 2, "prompt": "x", "code": "y"}) + "\n")
    with pytest.raises(UserError, match="mbpp\\+ row 0: missing field 'test_imports'"):
        load_hub_benchmark(f"mbpp+:{bad}")
    with pytest.raises(UserError, match="benchmark file .*missing.jsonl not found"):
        load_hub_benchmark(f"mbpp:{tmp_path / 'missing.jsonl'}")
    with pytest.raises(UserError, match="unknown benchmark 'apps'"):
        load_hub_benchmark("apps")


def test_a_docstring_prompt_is_continued_by_a_whole_function(tokenizer):
    """MBPP's prompt has no function to finish: "\\ndef" must not end its completion."""
    problem = load_hub_benchmark(f"mbpp+:{FIXTURES / 'mbppplus.jsonl'}")[0][0]
    prompt = render(tokenizer, problem, "completion")
    assert prompt.stops == MODULE_STOPS and "\ndef" not in prompt.stops
    completion = "def similar(a, b):\n    return tuple(set(a) & set(b))\n\nassert similar((1,), (1,)) == (1,)"
    assert cut_completion(prompt.text, completion, prompt.stops) == completion[:completion.index("\nassert")]

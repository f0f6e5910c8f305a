"""Evaluation protocols: rendering per template, auto resolution, programs that run, mismatch refused."""
import copy

import pytest

from common.corpus.splits import Example, load_humaneval
from common.errors import UserError
from common.text.generation import STOP_SEQUENCES
from common.text.prompts import INSTRUCTION, RESPONSE, STDIO_INSTRUCTION
from common.text.protocols import (SHOT, answer_code, program, reference_code, render,
                              resolve_protocol, train_format_of)
from common.model.load import load_tokenizer

STDIO = Example("apps:1", "Read n and print n squared.", "```python\nn = int(input())\nprint(n * n)\n```",
                "instruction", tests={"inputs": ["3\n"], "outputs": ["9\n"]})


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="module")
def humaneval():
    return {p.id: p for p in load_humaneval()}


def run_tests(code: str, problem: Example) -> None:
    """Execute a trusted program (a canonical solution) with its HumanEval tests, in process."""
    exec(compile(code + "\n" + problem.tests["test"] + f"\ncheck({problem.tests['entry_point']})\n", "<p>", "exec"),
         {})


def test_auto_follows_the_training_format_then_the_chat_template(tokenizer):
    no_chat = copy.deepcopy(tokenizer)
    no_chat.chat_template = None
    assert resolve_protocol("auto", tokenizer, None) == "instruct"
    assert resolve_protocol("auto", no_chat, None) == "completion"
    assert resolve_protocol("auto", tokenizer, "completion") == "completion"
    assert resolve_protocol("auto", no_chat, "instruct") == "instruct"
    assert resolve_protocol("fewshot", tokenizer, "instruct") == "fewshot"
    # train.py records --format auto resolved; were "auto" ever recorded, it would mean the same rule
    assert resolve_protocol("auto", tokenizer, "auto") == "instruct" and resolve_protocol("auto", no_chat, "auto") \
        == "completion"
    assert train_format_of({"template": "plain"}) == "completion"
    assert train_format_of({"template": "plain", "format": "instruct"}) == "instruct"
    with pytest.raises(UserError, match="unknown --protocol 'chat'; choose one of auto, completion, instruct"):
        resolve_protocol("chat", tokenizer, None)


def test_completion_protocol_is_the_plain_continuation(tokenizer, humaneval):
    problem = humaneval["HumanEval/0"]
    prompt = render(tokenizer, problem, "completion")
    assert (prompt.text, prompt.stops, prompt.template) == (problem.prompt, STOP_SEQUENCES, "plain")
    assert program(problem, "completion", problem.completion) == problem.prompt + problem.completion
    assert reference_code(problem, "completion") == problem.completion


def test_instruct_protocol_renders_the_evalplus_chat_turns(tokenizer, humaneval):
    problem = humaneval["HumanEval/0"]
    prompt = render(tokenizer, problem, "instruct")
    assert prompt.template == "chat" and prompt.stops == ("\n```",)
    assert f"<|im_start|>user\n{INSTRUCTION}\n```python\n{problem.prompt.strip()}\n```\n<|im_end|>" in prompt.text
    assert prompt.text.endswith(f"<|im_start|>assistant\n{RESPONSE}\n```python\n")
    no_chat = copy.deepcopy(tokenizer)
    no_chat.chat_template = None
    alpaca = render(no_chat, problem, "instruct")
    assert alpaca.template == "alpaca" and "\n### Instruction:" in alpaca.stops
    assert alpaca.text.endswith(f"### Response:\n{RESPONSE}\n```python\n")


def test_instruct_answer_without_the_prompts_import_still_runs(tokenizer, humaneval):
    """The answer drops `from typing import List` and prints a demo: the program gets the import back."""
    problem = humaneval["HumanEval/0"]
    function = problem.prompt[problem.prompt.index("def "):] + problem.completion
    answer = f"{function}\n\nprint(has_close_elements([1.0, 2.0], 0.5))\n"
    code = program(problem, "instruct", answer)
    assert code.startswith("from typing import List\n") and "print(" not in code
    run_tests(code, problem)
    assert answer_code(problem, "instruct", answer) == function
    assert reference_code(problem, "instruct") == problem.prompt + problem.completion


def test_instruct_keeps_a_helper_the_prompt_defines(humaneval):
    problem = humaneval["HumanEval/10"]  # make_palindrome calls is_palindrome, defined in the prompt
    entry = problem.prompt.index("def make_palindrome")
    code = program(problem, "instruct", problem.prompt[entry:] + problem.completion)
    assert "def is_palindrome" in code
    run_tests(code, problem)


def test_fewshot_shows_one_solved_problem_and_scores_the_problem_alone(tokenizer, humaneval):
    problem = humaneval["HumanEval/2"]
    prompt = render(tokenizer, problem, "fewshot")
    assert prompt.text.startswith(SHOT.prompt + SHOT.completion) and prompt.text.endswith(problem.prompt)
    assert prompt.stops == STOP_SEQUENCES
    assert program(problem, "fewshot", problem.completion) == problem.prompt + problem.completion
    assert SHOT.tests is None and SHOT.prompt not in "".join(p.prompt for p in humaneval.values())
    namespace: dict = {}
    exec(SHOT.prompt + SHOT.completion, namespace)  # the shot's solution is correct
    assert namespace["interleave_words"]("a b c", "x y") == "a x b y c"


def test_stdio_problems_get_an_instruct_prompt_and_run_as_scripts(tokenizer):
    prompt = render(tokenizer, STDIO, "instruct")
    assert f"{STDIO_INSTRUCTION}\n{STDIO.prompt}\n" in prompt.text and prompt.text.endswith("```python\n")
    answer = "n = int(input())\nprint(n * n)\n```\nThis reads n."
    assert program(STDIO, "instruct", answer) == "n = int(input())\nprint(n * n)"
    fewshot = render(tokenizer, STDIO, "fewshot")
    assert fewshot.text.count("<|im_start|>user") == 2 and fewshot.text.count("<|im_start|>assistant") == 2
    assert fewshot.text.endswith("```python\n")
    assert program(STDIO, "fewshot", answer) == program(STDIO, "instruct", answer)
    assert reference_code(STDIO, "instruct") == "n = int(input())\nprint(n * n)"


def test_render_needs_a_resolved_protocol(tokenizer, humaneval):
    with pytest.raises(UserError, match="call resolve_protocol first"):
        render(tokenizer, humaneval["HumanEval/0"], "auto")

"""The AST sanitizer: fenced, unfenced, multi-block, prose-around-code and truncated answers."""
from common.text.sanitize import fenced_blocks, longest_parsable, sanitize, with_prompt_context

FUNC = "def add(a, b):\n    return a + b\n"


def test_unfenced_code_keeps_imports_and_what_the_entry_point_reaches():
    answer = ("import math\n\nSCALE = 2\nUNUSED = 3\n\ndef helper(x):\n    return x * SCALE\n\n"
              "def other():\n    return 1\n\ndef area(r):\n    return math.pi * helper(r)\n\n"
              "print(area(1))\nif __name__ == '__main__':\n    area(2)\n")
    code = sanitize(answer, "area")
    assert code == ("import math\n\nSCALE = 2\n\ndef helper(x):\n    return x * SCALE\n\n"
                    "def area(r):\n    return math.pi * helper(r)\n")


def test_fenced_answer_with_prose_around_it():
    answer = f"Sure! Here is the function:\n```python\n{FUNC}```\nIt adds `a` and `b`.\n```\nadd(1, 2)\n```"
    assert sanitize(answer, "add") == FUNC


def test_multi_block_answer_takes_the_block_that_defines_the_entry_point():
    answer = ("First the imports:\n```python\nimport os\n```\nThen:\n```python\n"
              f"{FUNC}```\nUsage:\n```python\nprint(add(1, 2))\n```\n")
    assert fenced_blocks(answer) == ["import os", FUNC.rstrip("\n"), "print(add(1, 2))"]
    assert sanitize(answer, "add") == FUNC
    # Without an entry point (a stdin/stdout script) the blocks are the program, in order.
    assert sanitize(answer) == "import os\n\ndef add(a, b):\n    return a + b\n\nprint(add(1, 2))"


def test_a_block_indented_as_a_whole_is_dedented():
    answer = "1. Define the function:\n\n    ```python\n    def add(a, b):\n        return a + b\n    ```\n"
    assert sanitize(answer, "add") == FUNC


def test_unfenced_prose_around_code_falls_away():
    answer = f"Here is my solution, it is short.\n\n{FUNC}\nThis works because addition is commutative."
    assert sanitize(answer, "add") == FUNC


def test_truncated_answer_drops_the_unparsable_tail_and_keeps_what_parses():
    answer = f"import re\n\n{FUNC}\ndef sub(a, b):\n    return a -"
    assert longest_parsable(answer) == f"import re\n\n{FUNC}".rstrip("\n")
    assert sanitize(answer, "add") == f"import re\n\n{FUNC}"
    # An unclosed fence (generation hit its token limit inside the block) is a block too.
    assert sanitize(f"```python\n{FUNC}\ndef sub(a,", "add") == FUNC
    assert sanitize("def add(a, b):\n    return (a +", "add") == ""


def test_decorators_and_classes_are_kept_whole():
    answer = ("import functools\n\n@functools.cache\ndef fib(n):\n"
              "    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\n"
              "class Box:\n    size = 3\n\ndef solve(n):\n    return fib(n) + Box.size\n")
    assert sanitize(answer, "solve") == answer


def test_missing_entry_point_keeps_every_definition():
    answer = "def helper(x):\n    return x\n\nprint(helper(1))\n"
    assert sanitize(answer, "solve") == "def helper(x):\n    return x\n"


def test_prompt_imports_and_helpers_are_put_back_unless_the_answer_has_them():
    prompt = ('from typing import List\n\n\ndef is_palindrome(s: str) -> bool:\n    return s == s[::-1]\n\n\n'
              'def make_palindrome(xs: List[str]) -> str:\n    """Doc."""\n')
    answer = "def make_palindrome(xs: List[str]) -> str:\n    return ''.join(xs)\n"
    program = with_prompt_context(answer, prompt, "make_palindrome")
    assert program.startswith("from typing import List\ndef is_palindrome(s: str) -> bool:\n")
    assert program.endswith(answer) and program.count("def make_palindrome") == 1
    own_helper = "def is_palindrome(s):\n    return True\n\n" + answer
    assert "s[::-1]" not in with_prompt_context(own_helper, prompt, "make_palindrome")
    exec(compile(program, "<program>", "exec"), {})  # it runs: List is defined

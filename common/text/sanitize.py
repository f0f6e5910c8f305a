"""Turn a model's answer (code, fenced code, code among prose, truncated code) into a program.

    from common.text.sanitize import sanitize, with_prompt_context
    code = sanitize(answer, entry_point="has_close_elements")
    program = with_prompt_context(code, humaneval_prompt, "has_close_elements")

`sanitize` follows EvalPlus's sanitizer, with the standard library's `ast` in place of tree-sitter:

1. Choose the code. Fenced blocks (```python ... ```, the last one may be unclosed) are the
   candidates when there are any, else the whole text. Of several blocks, the first that defines
   the entry point wins; without an entry point (stdin/stdout programs) the blocks are joined.
2. Keep what parses: the longest run of consecutive lines that `ast.parse` accepts, preferring
   the earliest on ties. Prose before and after code fails to parse and falls away; a truncated
   answer loses its unparsable tail.
3. With an entry point, keep only top-level imports and the definitions (functions, classes,
   assignments to names) the entry point reaches through the names it uses; test calls, prints
   and `if __name__ == "__main__":` blocks go. When the code does not define the entry point,
   every import and definition is kept so the failure is the test's NameError, not ours.
   Without an entry point the parsed code is kept whole: a stdin/stdout script is its top level.

`with_prompt_context` puts back what the answer relies on from the prompt: HumanEval answers
often drop the prompt's `from typing import List` (bigcode-evaluation-harness prepends the
prompt's imports for this reason) or call a helper the prompt defines (HumanEval/10's
`is_palindrome`). The prompt's imports always come first; its other definitions only when
the answer does not define that name itself.
"""
import ast
import re
import textwrap

_FENCE_OPEN = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[ \t]*$")
_FENCE_CLOSE = re.compile(r"^[ \t]*```[ \t]*$")
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_IMPORTS = (ast.Import, ast.ImportFrom)


def fenced_blocks(text: str) -> list[str]:
    """The contents of the markdown code blocks in `text`; an unclosed last block runs to the end."""
    blocks, current = [], None
    for line in text.splitlines():
        if current is None:
            if _FENCE_OPEN.match(line):
                current = []
        elif _FENCE_CLOSE.match(line):
            blocks.append("\n".join(current))
            current = None
        else:
            current.append(line)
    if current is not None:
        blocks.append("\n".join(current))
    return blocks


def parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):  # ValueError: source contains a null byte
        return False
    return True


def longest_parsable(code: str) -> str:
    """The longest run of consecutive lines that parses (earliest on ties); "" when none does.

    Quadratic in lines at worst, but the common cases return at once: the whole text parses,
    or only a truncated tail has to go.
    """
    if parses(code):
        return code
    lines = code.splitlines()
    best = (0, 0)
    for start in range(len(lines)):
        if len(lines) - start <= best[1] - best[0]:
            break
        if not lines[start].strip() or lines[start][0] in " \t":  # a run starts at a top-level line
            continue
        for end in range(len(lines), start + (best[1] - best[0]), -1):
            if parses("\n".join(lines[start:end])):
                best = (start, end)
                break
    return "\n".join(lines[best[0]:best[1]]).strip("\n")


def defines(code: str, name: str) -> bool:
    """Whether `code` (parsable) defines `name` at its top level."""
    return name in _top_level_names(ast.parse(code))


def choose_code(text: str, entry_point: str | None) -> str:
    """Step 1 and 2: the parsable code of the block that defines the entry point, or of all blocks."""
    # dedent: a block inside a markdown list item is indented as a whole
    blocks = [longest_parsable(textwrap.dedent(b)) for b in fenced_blocks(text) or [text]]
    blocks = [b for b in blocks if b.strip()]
    if entry_point:
        for block in blocks:
            if defines(block, entry_point):
                return block
    return "\n\n".join(blocks)


def sanitize(text: str, entry_point: str | None = None) -> str:
    """The program in a model's answer: see the module docstring for the exact rules."""
    code = choose_code(text, entry_point)
    if not entry_point or not code:
        return code
    tree = ast.parse(code)
    names = _top_level_names(tree)
    wanted = _reachable(entry_point, names) if entry_point in names else set(names)
    lines = code.splitlines()
    kept = [_source(lines, node) for node in tree.body
            if isinstance(node, _IMPORTS) or (_defined_name(node) in wanted)]
    return "\n\n".join(kept) + "\n" if kept else ""


def with_prompt_context(code: str, prompt: str, entry_point: str | None) -> str:
    """`code` preceded by the prompt's imports and the prompt's definitions the code lacks."""
    tree = _parse_prompt(prompt)
    if tree is None:
        return code
    own = _top_level_names(ast.parse(code)) if parses(code) else {}
    lines = prompt.splitlines()
    context = [_source(lines, node) for node in tree.body
               if isinstance(node, _IMPORTS)
               or (_defined_name(node) not in (None, entry_point) and _defined_name(node) not in own)]
    return "\n".join(context) + "\n\n\n" + code if context else code


def _parse_prompt(prompt: str) -> ast.Module | None:
    """A HumanEval prompt parses as is (its entry point's body is the docstring); else try a `pass` body."""
    for candidate in (prompt, prompt.rstrip() + "\n    pass\n"):
        try:
            return ast.parse(candidate)
        except (SyntaxError, ValueError):
            continue
    return None


def _defined_name(node: ast.stmt) -> str | None:
    """The single name a top-level definition binds (def, class, `x = ...`, `x: T = ...`), else None."""
    if isinstance(node, _DEFINITIONS):
        return node.name
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id
    return None


def _top_level_names(tree: ast.Module) -> dict[str, ast.stmt]:
    """Name -> its last top-level definition (a later definition replaces an earlier one, as at run time)."""
    return {name: node for node in tree.body if (name := _defined_name(node))}


def _reachable(entry_point: str, names: dict[str, ast.stmt]) -> set[str]:
    """The entry point and every top-level name it uses, transitively."""
    seen, todo = set(), [entry_point]
    while todo:
        name = todo.pop()
        if name in seen or name not in names:
            continue
        seen.add(name)
        todo.extend(n.id for n in ast.walk(names[name]) if isinstance(n, ast.Name) and n.id in names)
    return seen


def _source(lines: list[str], node: ast.stmt) -> str:
    """A top-level statement's exact source lines, its decorators included."""
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return "\n".join(lines[first - 1:node.end_lineno])

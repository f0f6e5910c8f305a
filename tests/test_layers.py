"""The house's shape: common/ is grouped by stage of a run, imports only go down, scripts stay thin.

Stages, lowest first (each package's __init__.py lists its modules):
    0 core         common/*.py: errors, paths, env, options, config, tracker
    1 sandbox, corpus, model
    2 text
    3 judge
    4 train
    5 evaluation, inference
    6 study
A module may import its own stage's package and any lower stage, never a higher one, nor a sibling package of
its own stage; no module of common/ imports a script; and the module graph has no circle. Every import counts,
the ones inside functions too (they still tie the modules together).
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = {"sandbox": 1, "corpus": 1, "model": 1, "text": 2, "judge": 3, "train": 4, "evaluation": 5,
          "inference": 5, "study": 6}
SCRIPTS = {p.stem for p in ROOT.glob("*.py")}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Modules `path` imports: `from common.x import y` names common.x.y when that is a module, else common.x."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if _is_module(candidate) else node.module)
    return found


def _is_module(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def stage_of(module: str) -> tuple[int, str]:
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and parts[1] in STAGES):
        return STAGES[parts[1]], parts[1]
    return 0, "core"


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in (ROOT / "common").rglob("*.py")}
    return {m: {i for i in imports_of(p) if i in modules or i.split(".")[0] in SCRIPTS} for m, p in modules.items()}


def test_every_package_is_a_known_stage():
    packages = {p.parent.name for p in (ROOT / "common").glob("*/__init__.py")}
    assert packages == set(STAGES)


def test_imports_only_go_down_and_never_to_a_script():
    wrong = []
    for module, imported in graph().items():
        stage, package = stage_of(module)
        for other in imported:
            if other.split(".")[0] in SCRIPTS:
                wrong.append(f"{module} imports the script {other}")
                continue
            other_stage, other_package = stage_of(other)
            if other_stage > stage or (other_stage == stage and other_package != package):
                wrong.append(f"{module} (stage {stage} {package}) imports {other} (stage {other_stage} {other_package})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(path[path.index(nxt):] + [nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert not circles, "\n".join(circles)


def test_the_checker_sees_a_planted_upward_import(tmp_path, monkeypatch):
    """The walk itself: an upward import planted in a copy is found (a checker that saw nothing would pass)."""
    fake = tmp_path / "common"
    for package in ("judge", "study"):
        (fake / package).mkdir(parents=True)
        (fake / package / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "judge" / "low.py").write_text("from common.study.high import x\n")
    (fake / "study" / "high.py").write_text("from common.judge.low import y\nx = 1\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    edges = graph()
    assert edges["common.judge.low"] == {"common.study.high"}
    try:
        test_imports_only_go_down_and_never_to_a_script()
    except AssertionError as e:
        assert "common.judge.low (stage 3 judge) imports common.study.high" in str(e)
    else:
        raise AssertionError("the planted upward import was not found")
    try:
        test_no_import_circle()
    except AssertionError as e:
        assert "common.judge.low" in str(e) and "common.study.high" in str(e)
    else:
        raise AssertionError("the planted circle was not found")


def test_scripts_only_wire_and_functions_stay_small():
    """Scripts parse, wire and print (<= 300 lines); no function outside tests passes 60 lines."""
    long_scripts = [f"{p.name}: {len(p.read_text().splitlines())} lines" for p in ROOT.glob("*.py")
                    if len(p.read_text().splitlines()) > 300]
    assert not long_scripts
    long_functions = []
    for path in [*ROOT.glob("*.py"), *(ROOT / "common").rglob("*.py"), *(ROOT / "bench").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not long_functions, "\n".join(long_functions)

"""README.md stays a short front page, and its links and the docs/ pages' links lead somewhere.

The depth lives in docs/, one page per topic; the README indexes them. A moved or renamed page, a link written
relative to the wrong folder, or a module path from before common/ was regrouped fails here.
"""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
# [text](target) outside code; the target up to a space or the closing parenthesis.
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
MODULE = re.compile(r"`((?:common|bench|tests)/[\w/]+\.py)`")


def relative_links(page: Path) -> list[str]:
    """The link targets of a markdown page that point into the repository (not a URL, not an in-page anchor)."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_readme_is_a_front_page():
    assert len(README.read_text().splitlines()) <= 260
    assert PAGES, "docs/ has no pages"


def test_every_docs_page_is_in_the_readme_index_and_every_linked_page_exists():
    linked = {(README.parent / t.split("#")[0]).resolve() for t in relative_links(README) if t.startswith("docs/")}
    assert linked == {p.resolve() for p in PAGES}


def test_every_relative_link_in_readme_and_docs_resolves():
    broken = [f"{page.relative_to(ROOT)}: {target}" for page in [README, *PAGES]
              for target in relative_links(page) if not (page.parent / target.split("#")[0]).exists()]
    assert not broken


def test_every_module_path_named_in_readme_and_docs_exists():
    named = {m for page in [README, *PAGES] for m in MODULE.findall(page.read_text())}
    assert "common/judge/stats.py" in named       # the pattern does find the paths the pages name
    assert not [m for m in named if not (ROOT / m).is_file()]

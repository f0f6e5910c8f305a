"""Tests for common/corpus/dedup.py: normalisation, planted near-copies found, different functions kept."""
import pytest

from common.corpus.splits import load_humaneval
from common.corpus.dedup import jaccard, near_duplicates, normalise, shingle_hashes

ORIGINAL = '''def parse_header(line, default_charset="utf-8"):
    """Split a header line into its value and a dict of parameters."""
    parts = [p.strip() for p in line.split(";")]
    value = parts[0].lower()
    params = {}
    for part in parts[1:]:
        if "=" not in part:
            continue
        key, _, raw = part.partition("=")
        params[key.strip().lower()] = raw.strip().strip('"')
    if "charset" not in params:
        params["charset"] = default_charset
    return value, params
'''

RENAMED = '''def split_header(text, fallback="utf-8"):
    """Split a header line into its value and a dict of parameters."""
    pieces = [q.strip() for q in text.split(";")]
    head = pieces[0].lower()
    options = {}
    for piece in pieces[1:]:
        if "=" not in piece:
            continue
        name, _, rest = piece.partition("=")
        options[name.strip().lower()] = rest.strip().strip('"')
    if "charset" not in options:
        options["charset"] = fallback
    return head, options
'''

NEW_LITERALS = '''def parse_header(line, default_charset='latin-1'):
    # Parameters are separated by commas in this dialect.
    """Parse a header into (value, params)."""
    parts = [p.strip() for p in line.split(",")]
    value = parts[0].lower()
    params = {}
    for part in parts[1:]:
        if ":" not in part:
            continue
        key, _, raw = part.partition(":")
        params[key.strip().lower()] = raw.strip().strip("'")
    if "encoding" not in params:
        params["encoding"] = default_charset
    return value, params
'''

# One statement more and renamed: not the same tokens, but most shingles shared.
EDITED = '''def parse_header(line, default="utf-8"):
    """Split a header line into its value and a dict of parameters."""
    parts = [p.strip() for p in line.split(";")]
    value = parts[0].lower()
    params = {}
    for part in parts[1:]:
        if "=" not in part:
            continue
        key, _, raw = part.partition("=")
        params[key.strip().lower()] = raw.strip().strip('"')
    if "charset" not in params:
        params["charset"] = default
    params.pop("", None)
    return value, params
'''

DIFFERENT = [
    "def total(xs):\n    t = 0\n    for x in xs:\n        t += x\n    return t\n",
    ("def largest(xs):\n    best = xs[0]\n    for x in xs[1:]:\n        if x > best:\n"
     "            best = x\n    return best\n"),
    "def turtles(self):\n    return self._turtles\n",
    "def blocked_domains(self):\n    return self._blocked_domains\n",
    "def path_of(name):\n    return os.path.join(BASE, name)\n",
    "def quoted(name):\n    return shlex.quote(name)\n",
    "def is_dir(mode):\n    return S_IFMT(mode) == S_IFDIR\n",
    "def words(text):\n    return [w for w in text.split() if w.isalpha()]\n",
]


def test_normalise_masks_literals_and_renames_bound_names_only():
    tokens = normalise('def f(path, n=3):\n    """Doc."""\n    x = os.sep + path  # why\n    return x * n, self.path\n')
    assert tokens == ["def", "v1", "(", "v2", ",", "v3", "=", "N", ")", ":", "S",
                      "v4", "=", "os", ".", "sep", "+", "v2", "return", "v4", "*", "v3", ",", "self", ".", "path"]
    # Code that does not parse (a bare method body) still has its assignments renamed.
    assert normalise("    y = 'a'\n    return y.upper(\n") == ["v1", "=", "S", "return", "v1", ".", "upper", "("]


def test_planted_near_copies_are_found_with_their_reason():
    reasons = near_duplicates([ORIGINAL, RENAMED, NEW_LITERALS, EDITED])
    assert reasons == [None, "normalised_duplicate", "normalised_duplicate", "near_duplicate"]
    similarity = jaccard(shingle_hashes(normalise(ORIGINAL)), shingle_hashes(normalise(EDITED)))
    assert 0.8 <= similarity < 1


def test_genuinely_different_functions_are_kept():
    assert near_duplicates(DIFFERENT + [ORIGINAL]) == [None] * (len(DIFFERENT) + 1)


def test_earlier_texts_win_and_only_kept_texts_count():
    assert near_duplicates([EDITED, ORIGINAL]) == [None, "near_duplicate"]
    assert near_duplicates([DIFFERENT[0], ORIGINAL, RENAMED]) == [None, None, "normalised_duplicate"]


def test_near_copies_of_a_benchmark_are_dropped():
    problem = next(p for p in load_humaneval() if p.id == "HumanEval/12")  # longest(strings)
    code = problem.prompt + problem.completion
    renamed = code.replace("strings", "words").replace("maxlen", "top").replace("None", "None  # empty")
    assert renamed != code
    reasons = near_duplicates([renamed, ORIGINAL], benchmarks=[code, RENAMED.replace("-8", "-16")])
    assert reasons == ["benchmark_near_duplicate", "benchmark_near_duplicate"]
    assert near_duplicates(DIFFERENT, benchmarks=[code, ORIGINAL]) == [None] * len(DIFFERENT)


def test_threshold_is_checked():
    with pytest.raises(ValueError, match="threshold"):
        near_duplicates([ORIGINAL], threshold=0)

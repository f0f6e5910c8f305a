"""Near-duplicate detection for code: normalised tokens, shingles, MinHash-LSH, exact Jaccard.

Two pieces of code are near-duplicates when they differ only in literals, in the
names of what they bind, in layout and comments, or in a few tokens beyond that:

    normalise   tokens of the code with every string literal (docstrings included)
                replaced by "S", every number by "N", comments and whitespace dropped,
                and every name the code binds (parameters, assignment and loop targets,
                def/class/import/except/with names) renamed "v1", "v2", ... in order of
                first appearance. Attributes (after "."), keywords, builtins and names the
                code only reads (globals, called helpers) are kept: `return os.sep` and
                `return self._lock` stay different, `x = 1; return x` and `n = 2; return n`
                become the same.
    shingles    the set of SHINGLE-token windows of the normalised tokens (the whole
                sequence when shorter).
    similarity  Jaccard |A & B| / |A | B| of two shingle sets. A pair with
                Jaccard >= THRESHOLD is a near-duplicate; identical normalised token
                sequences are "normalised duplicates".

Comparing every pair is quadratic, so candidates come from MinHash-LSH: NUM_PERM hash
functions h_k(x) = (a_k x + b_k) mod (2^31 - 1) over 32-bit shingle hashes, cut into
BANDS bands of NUM_PERM / BANDS rows; two texts are candidates when one band agrees.
A pair with Jaccard s is missed with probability (1 - s^ROWS)^BANDS (4.7e-8 at
s = 0.8). Every candidate is verified with the exact Jaccard, so there are no false
positives, and all hashes are seeded, so results are the same on every run.

This is our own ~150 lines rather than `datasketch`: it needs only numpy, the
normalisation is code-specific anyway, and the exact check makes the choice of hash
family irrelevant to the result.

Usage:
    reasons = near_duplicates(texts, benchmark_texts)   # None = keep, else why to drop
"""
import ast
import builtins
import hashlib
import keyword
import re
from collections import defaultdict

import numpy as np

SHINGLE = 5           # tokens per shingle
THRESHOLD = 0.8       # Jaccard at or above which two texts are near-duplicates
NUM_PERM = 128
BANDS = 32            # ROWS = NUM_PERM // BANDS = 4 rows per band
PRIME = (1 << 31) - 1
HASH_SEED = 20261130  # fixed: the permutations, hence the candidate pairs, never change

TOKEN = re.compile(r"""
    (?P<string>[rRbBuUfF]{0,2}(?:'''[\s\S]*?'''|\"\"\"[\s\S]*?\"\"\"|'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*"))
  | (?P<comment>\#[^\n]*)
  | (?P<number>0[xXoObB][0-9a-fA-F_]+|(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][+-]?\d+)?[jJ]?)
  | (?P<name>[^\W\d]\w*)
  | (?P<op>\*\*=?|//=?|>>=?|<<=?|->|:=|[-+*/%&|^@<>=!]=|[^\s\w])
""", re.VERBOSE)
KEPT_NAMES = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset(dir(builtins))
BINDERS = frozenset({"def", "class", "for", "as", "import", "global", "nonlocal"})


def bound_names(code: str) -> set[str]:
    """Names the code binds. From the AST when the code parses; else from `def x`, `for x`, `x =` and the like."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return fallback_bound_names(code)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            names.add(node.name)
    return names


def fallback_bound_names(code: str) -> set[str]:
    tokens = [m.group() for m in TOKEN.finditer(code) if m.lastgroup in ("name", "op")]
    names = set()
    for i, token in enumerate(tokens):
        if not token.isidentifier() or token in KEPT_NAMES:
            continue
        previous, following = tokens[i - 1] if i else "", tokens[i + 1] if i + 1 < len(tokens) else ""
        if previous in BINDERS or following in ("=", "+=", "-=", "*=", "/=", "|=", "&="):
            names.add(token)
    return names


def normalise(code: str) -> list[str]:
    """The normalised token sequence of `code` (see the module docstring)."""
    bound = bound_names(code)
    renamed: dict[str, str] = {}
    tokens: list[str] = []
    for match in TOKEN.finditer(code):
        kind, text = match.lastgroup, match.group()
        if kind == "comment":
            continue
        if kind == "string":
            tokens.append("S")
        elif kind == "number":
            tokens.append("N")
        elif kind == "name" and text in bound and text not in KEPT_NAMES and (not tokens or tokens[-1] != "."):
            tokens.append(renamed.setdefault(text, f"v{len(renamed) + 1}"))
        else:
            tokens.append(text)
    return tokens


def shingle_hashes(tokens: list[str], n: int = SHINGLE) -> frozenset[int]:
    """32-bit hashes of the n-token windows of `tokens` (one window when it is shorter)."""
    windows = [tokens[i:i + n] for i in range(max(1, len(tokens) - n + 1))]
    return frozenset(int.from_bytes(hashlib.blake2b("\x1f".join(w).encode(), digest_size=4).digest(), "little")
                     for w in windows)


def jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def minhash_signatures(sets: list[frozenset[int]]) -> np.ndarray:
    """(len(sets), NUM_PERM) MinHash signatures; an empty set gets the all-PRIME signature."""
    rng = np.random.default_rng(HASH_SEED)
    a = rng.integers(1, PRIME, NUM_PERM, dtype=np.int64)[:, None]
    b = rng.integers(0, PRIME, NUM_PERM, dtype=np.int64)[:, None]
    signatures = np.full((len(sets), NUM_PERM), PRIME, dtype=np.int64)
    for i, hashes in enumerate(sets):
        if hashes:
            x = np.fromiter(hashes, dtype=np.int64, count=len(hashes))[None, :]
            signatures[i] = ((a * x + b) % PRIME).min(axis=1)  # a, x < 2^32: no int64 overflow
    return signatures


def candidate_pairs(signatures: np.ndarray) -> set[tuple[int, int]]:
    """Index pairs (i < j) whose signatures agree on at least one band."""
    rows = NUM_PERM // BANDS
    pairs: set[tuple[int, int]] = set()
    for band in range(BANDS):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        for i, key in enumerate(signatures[:, band * rows:(band + 1) * rows]):
            buckets[key.tobytes()].append(i)
        for members in buckets.values():
            pairs.update((members[x], members[y]) for x in range(len(members)) for y in range(x + 1, len(members)))
    return pairs


def near_duplicates(texts: list[str], benchmarks: list[str] = (), threshold: float = THRESHOLD) -> list[str | None]:
    """For each text, in priority order, why to drop it, or None to keep it.

    "benchmark_near_duplicate"  Jaccard >= threshold with some benchmark text
    "normalised_duplicate"      the same normalised tokens as an earlier kept text
    "near_duplicate"            Jaccard >= threshold with an earlier kept text

    Earlier texts win: a text is compared with those kept before it, so of a cluster of
    near-copies the first is kept. Pass the held-out splits first to keep their copies.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    tokens = [normalise(t) for t in list(texts) + list(benchmarks)]
    sets = [shingle_hashes(t) for t in tokens]
    n = len(texts)
    neighbours: dict[int, list[int]] = defaultdict(list)
    for i, j in candidate_pairs(minhash_signatures(sets)):
        if jaccard(sets[i], sets[j]) >= threshold:
            neighbours[j].append(i)
            neighbours[i].append(j)
    reasons: list[str | None] = []
    kept_by_tokens: dict[tuple[str, ...], int] = {}
    kept: set[int] = set()
    for i in range(n):
        if any(j >= n for j in neighbours[i]):
            reasons.append("benchmark_near_duplicate")
        elif tuple(tokens[i]) in kept_by_tokens:
            reasons.append("normalised_duplicate")
        elif any(j in kept for j in neighbours[i] if j < i):
            reasons.append("near_duplicate")
        else:
            reasons.append(None)
            kept.add(i)
            kept_by_tokens[tuple(tokens[i])] = i
    return reasons

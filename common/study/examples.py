"""Per-example export of a study database, and a read-only stand-in for the Tracker that serves it back.

    export_examples(tracker, Path("results/examples"), "experiments.db")   # report.py --export-examples DIR
    study = Study(ExampleTracker(Path("results/examples")))                # report.py --from-examples DIR

The export holds what common/study/rows.py `Study` and the report read from the Tracker, and nothing else:
the runs (configs, status, environment), every score, every logged metric (loss curves, step rates), and
one row per run x benchmark x problem (x sample) with the numbers the report recomputes from (pass, test-case
counts, NLL sum, tokens, split group, how the generation ended), plus the texts of each sample in a file of
their own. `ExampleTracker` answers the Tracker's read queries from those files, so a report built from an
export runs the same code as one built from the database and gives the same bytes. No database, no weights.

Files (gzip'd JSON lines, written byte-for-byte the same for the same database; docs/reports.md):
    manifest.json      format, the database it came from, counts
    runs.jsonl.gz      one run a line, as Tracker.runs() gives it (host, pid and output_dir left out)
    scores.jsonl.gz    run_id, benchmark, name, value, n, ci_low, ci_high (suite memberships: benchmark "suite")
    metrics.jsonl.gz   run_id, step, name, value
    examples.jsonl.gz  run_id, benchmark, task_id, sample_index, seed, config_key, train_run_id, result, passed,
                       test_fraction, and the recorded details the report reads (tests_passed, tests_total,
                       nll_sum, tokens, group, syntax, chrf, ended, new_tokens, error_type); keys absent from a
                       record stay absent
    texts.jsonl.gz     run_id, benchmark, task_id, sample_index, prompt, generation, reference, ordered by problem
                       so that the prompts and references repeated across runs compress away
"""
import copy
import gzip
import json
from pathlib import Path
from typing import Any, Iterable

from common.errors import UserError
from common.study.rows import IDENTITY_KEYS, split_group
from common.tracker import MEMBERSHIP, Tracker, config_hash

FORMAT = 1
FILES = ("runs", "scores", "metrics", "examples", "texts")
# Run columns that say where and by which process a run ran, not what it did: the report reads none of them.
_LOCAL_RUN_KEYS = ("host", "pid", "process_start", "output_dir")
# The recorded details the report (and a re-analysis) reads; code, program and error text stay in the database.
DETAIL_KEYS = ("tests_passed", "tests_total", "nll_sum", "tokens", "group", "syntax", "chrf", "ended", "new_tokens",
               "error_type", "nll_only")
_TEXT_KEYS = ("prompt", "generation", "reference")
_SAMPLE_KEY = ("run_id", "benchmark", "task_id", "sample_index")


# ---------------------------------------------------------------------------- writing

def export_examples(tracker: Tracker, out: Path, database: str) -> dict[str, int]:
    """Write the export of everything `tracker` holds to folder `out`; returns the row count of each file."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--export-examples {out} is a file; pass a folder (it is created if missing)")
    out.mkdir(parents=True, exist_ok=True)
    runs = tracker.runs()
    by_id = {r["id"]: r for r in runs}
    examples, texts = [], []
    for run in runs:
        for sample in tracker.samples(run["id"]):
            examples.append(example_row(sample, by_id))
            texts.append({k: sample[k] for k in _SAMPLE_KEY + _TEXT_KEYS})
    texts.sort(key=lambda t: (t["benchmark"], t["task_id"], t["sample_index"], t["run_id"]))
    tables = {"runs": [{k: v for k, v in r.items() if k not in _LOCAL_RUN_KEYS} for r in runs],
              "scores": [{"run_id": r["id"], **s} for r in runs for s in tracker.scores(r["id"])],
              "metrics": [{"run_id": r["id"], **m} for r in runs for m in tracker.metrics(r["id"])],
              "examples": examples, "texts": texts}
    for name, rows in tables.items():
        write_lines(out / f"{name}.jsonl.gz", rows)
    counts = {name: len(rows) for name, rows in tables.items()}
    manifest = {"format": FORMAT, "database": database, "rows": counts,
                "written_by": "report.py --export-examples (common/study/examples.py)"}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return counts


def example_row(sample: dict[str, Any], runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One sample as a flat row: what it scored, the seed and config of the adapter evaluated (none for a base
    model), and the recorded details the report reads, the split group resolved as the report resolves it."""
    run = runs[sample["run_id"]]
    trained = runs.get(run["parent_id"]) if run["parent_id"] is not None else None
    config = trained["config"] if trained else run["config"]
    details = dict(sample["details"] or {})
    group = split_group(sample)
    if group is not None:
        details["group"] = group
    row = {k: sample[k] for k in _SAMPLE_KEY}
    row.update(seed=config.get("seed") if trained else None, train_run_id=trained["id"] if trained else None,
               config_key=config_hash({k: v for k, v in config.items() if k not in IDENTITY_KEYS}),
               result=sample["result"], passed=None if sample["result"] is None else sample["result"] == "passed",
               test_fraction=details["tests_passed"] / details["tests_total"] if details.get("tests_total") else None)
    row.update({k: details[k] for k in DETAIL_KEYS if k in details})
    return row


def write_lines(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """JSON lines, gzip'd with no name or time in the header, so the same rows give the same bytes."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
        for row in rows:
            f.write((json.dumps(row, sort_keys=True) + "\n").encode())


# ---------------------------------------------------------------------------- reading

def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise UserError(f"{path} is missing; pass a folder `report.py --export-examples` wrote")
    try:
        with gzip.open(path, "rt") as f:
            return [json.loads(line) for line in f]
    except (OSError, EOFError, ValueError) as e:
        raise UserError(f"{path} is not a readable export ({e}); export it again with "
                        "`report.py --db DB --export-examples DIR`") from e


class ExampleTracker:
    """The Tracker's read queries (runs, scores, memberships, samples, metrics, export), answered from an export."""

    def __init__(self, folder: Path):
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            raise UserError(f"no manifest.json in {folder}; pass a folder `report.py --export-examples` wrote")
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError as e:
            raise UserError(f"{manifest_path} is not valid JSON ({e}); export the database again") from e
        found = manifest.get("format") if isinstance(manifest, dict) else None
        if found != FORMAT:
            raise UserError(f"{manifest_path}: export format {found}, this toolkit reads format {FORMAT}; export "
                            "the database again with this version")
        self.path = folder
        self.database = str(manifest["database"])
        tables = {name: read_lines(folder / f"{name}.jsonl.gz") for name in FILES}
        self._runs = {r["id"]: r for r in tables["runs"]}
        self._scores: dict[int, list[dict[str, Any]]] = {}
        for s in sorted(tables["scores"], key=lambda s: (s["run_id"], s["benchmark"], s["name"])):
            self._scores.setdefault(s.pop("run_id"), []).append(s)
        self._metrics: dict[int, list[dict[str, Any]]] = {}
        for m in sorted(tables["metrics"], key=lambda m: (m["run_id"], m["name"], m["step"])):
            self._metrics.setdefault(m.pop("run_id"), []).append(m)
        texts = {tuple(t[k] for k in _SAMPLE_KEY): t for t in tables["texts"]}
        self._samples: dict[int, list[dict[str, Any]]] = {}
        for row in sorted(tables["examples"], key=lambda r: tuple(r[k] for k in _SAMPLE_KEY)):
            text = texts.get(tuple(row[k] for k in _SAMPLE_KEY))
            self._samples.setdefault(row["run_id"], []).append(_sample(row, text))

    def runs(self, suite: str | None = None, status: str | None = None, kind: str | None = None,
             name: str | None = None) -> list[dict[str, Any]]:
        wanted = {"suite": suite, "status": status, "kind": kind, "name": name}
        return [copy.deepcopy(r) for _, r in sorted(self._runs.items())
                if all(v is None or r[k] == v for k, v in wanted.items())]

    def run(self, run_id: int) -> dict[str, Any] | None:
        return copy.deepcopy(self._runs[run_id]) if run_id in self._runs else None

    def scores(self, run_id: int, benchmark: str | None = None) -> list[dict[str, Any]]:
        return [dict(s) for s in self._scores.get(run_id, []) if benchmark is None or s["benchmark"] == benchmark]

    def all_scores(self) -> dict[int, dict[str, dict[str, Any]]]:
        return {run_id: {f"{s['benchmark']}.{s['name']}": dict(value=s["value"], n=s["n"], low=s["ci_low"],
                                                                 high=s["ci_high"])
                         for s in scores if s["benchmark"] != MEMBERSHIP}
                for run_id, scores in sorted(self._scores.items())
                if any(s["benchmark"] != MEMBERSHIP for s in scores)}

    def memberships(self) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for run in self._runs.values():
            if run["suite"] is not None:
                out.setdefault(run["suite"], set()).add(run["id"])
        for run_id, scores in self._scores.items():
            for s in scores:
                if s["benchmark"] == MEMBERSHIP:
                    out.setdefault(s["name"], set()).add(run_id)
        return out

    def samples(self, run_id: int, benchmark: str | None = None) -> list[dict[str, Any]]:
        return [copy.deepcopy(s) for s in self._samples.get(run_id, [])
                if benchmark is None or s["benchmark"] == benchmark]

    def metrics(self, run_id: int, name: str | None = None) -> list[dict[str, Any]]:
        return [dict(m) for m in self._metrics.get(run_id, []) if name is None or m["name"] == name]

    export = Tracker.export   # the same .json/.csv dump, from the methods above

    def close(self) -> None:
        """Nothing to close: the files were read whole."""


def _sample(row: dict[str, Any], text: dict[str, Any] | None) -> dict[str, Any]:
    """A sample as Tracker.samples() gives it: texts, result, and the details the export kept."""
    details = {k: row[k] for k in DETAIL_KEYS if k in row}
    return {**{k: row[k] for k in _SAMPLE_KEY}, **{k: (text or {}).get(k) for k in _TEXT_KEYS},
            "result": row["result"], "details": details or None}


def database_argv(argv: list[str], database: str) -> list[str]:
    """report.py's arguments with `--from-examples DIR` as `--db DATABASE`: a report rebuilt from an export names
    the command that builds it from its database, as the report made from the database does (a reproduction
    starts from a sweep, which makes a database)."""
    out: list[str] = []
    rest = iter(argv)
    for arg in rest:
        if arg == "--from-examples":
            next(rest, None)
            out += ["--db", database]
        elif arg.startswith("--from-examples="):
            out += ["--db", database]
        else:
            out.append(arg)
    return out

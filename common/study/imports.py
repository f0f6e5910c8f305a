"""Load a per-example export (common/study/examples.py) back into a database, so a study resumes on another machine.

    counts = import_examples(Path("results/examples"), Tracker("experiments.db"))   # sweep.py --import-examples DIR

Only the export under results/ is committed; a session on a new machine starts with an empty database. Importing it
puts back every run with its id, name, kind, config, status, parent, suite, times and environment, its scores
(suite memberships included), its metrics and its samples (result, the recorded details the export kept, texts),
so sweep.py finds those runs completed by name (common/study/plan.py) and runs only what the export lacks. Ids
are kept, so a later export of the database gives the same bytes for these runs, and a score naming a run
(base_run_id) still names it. What the export leaves out stays out: where a run ran (host, pid, output
directory), the extracted code and executed program of each sample, and every file (adapters, checkpoints).

A run whose id the database already holds under the same name and kind is skipped, so importing twice adds
nothing; the same id holding another run is a clash, refused before anything is written. Each run goes in with
its rows in one transaction, parents first.
"""
import sqlite3
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.study.examples import ExampleTracker
from common.tracker import STATUSES, Tracker

_REQUIRED = ("id", "name", "kind", "status", "config", "config_hash", "parent_id", "started_at")
_FIX = "export the database again with `report.py --db DB --export-examples DIR`"


def import_examples(folder: Path, tracker: Tracker) -> dict[str, int]:
    """Add the runs of export `folder` that `tracker` lacks; returns counts: imported, present (already there)."""
    source = read_export(folder)
    runs = source.runs()
    for run in runs:
        check_run(run, folder)
    present = present_ids(runs, tracker, folder)
    for run in parents_first([r for r in runs if r["id"] not in present], present, folder):
        try:
            tracker.add_run(run, source.metrics(run["id"]), source.scores(run["id"]), source.samples(run["id"]))
        except (sqlite3.IntegrityError, KeyError, TypeError) as e:
            raise UserError(f"{folder}: run {run['id']} cannot be imported ({e}); {_FIX}") from e
    return {"imported": len(runs) - len(present), "present": len(present)}


def read_export(folder: Path) -> ExampleTracker:
    """The export, read whole and checked before anything is written; a folder that is none is a UserError."""
    if not folder.is_dir():
        raise UserError(f"--import-examples {folder}: no such folder; pass a folder `report.py --export-examples` "
                        "wrote (results/examples)")
    try:
        return ExampleTracker(folder)
    except (KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{folder} is not a readable export (a row lacks {e}); {_FIX}") from e


def check_run(run: dict[str, Any], folder: Path) -> None:
    missing = [k for k in _REQUIRED if k not in run]
    if missing or run["kind"] not in ("train", "eval") or run["status"] not in STATUSES \
            or not isinstance(run["id"], int) or not isinstance(run["config"], dict):
        what = f"lacks {', '.join(missing)}" if missing else "has a bad id, kind, status or config"
        raise UserError(f"{folder}/runs.jsonl.gz: run {run.get('id')!r} {what}; {_FIX}")


def present_ids(runs: list[dict[str, Any]], tracker: Tracker, folder: Path) -> set[int]:
    """Ids of the export's runs that the database already holds (same name and kind); a clash is a UserError."""
    present, clashes = set(), []
    for run in runs:
        here = tracker.run(run["id"])
        if here is None:
            continue
        if (here["name"], here["kind"]) == (run["name"], run["kind"]):
            present.add(run["id"])
        else:
            clashes.append(f"run {run['id']} is {run['kind']} '{run['name']}' there but {here['kind']} "
                           f"'{here['name']}' here")
    if clashes:
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise UserError(f"cannot import {folder} into {tracker.path}: {clashes[0]}{more}; import into a fresh "
                        "--db (the export keeps its run ids)")
    return present


def parents_first(runs: list[dict[str, Any]], present: set[int], folder: Path) -> list[dict[str, Any]]:
    """`runs` ordered so that each run's parent is already in the database when it goes in."""
    order: list[dict[str, Any]] = []
    placed = set(present)
    pending = sorted(runs, key=lambda r: r["id"])
    while pending:
        ready = [r for r in pending if r["parent_id"] is None or r["parent_id"] in placed]
        if not ready:
            run = pending[0]
            raise UserError(f"{folder}: run {run['id']}'s parent run {run['parent_id']} is not in the export; "
                            f"{_FIX}")
        order += ready
        placed |= {r["id"] for r in ready}
        pending = [r for r in pending if r["id"] not in placed]
    return order

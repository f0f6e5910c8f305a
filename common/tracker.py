"""The run tracker: every train and eval run, its config, curve, scores and samples in SQLite.

One file (`experiments.db` by default) holds everything `report.py` reads. It is
opened in WAL mode with a busy timeout so several sweeps and evaluations can
write at once; every write is its own short transaction, so a crash or kill -9
loses at most the row being written. The schema is versioned: an older file is
migrated in place, a newer or foreign file is refused rather than misread.

    db = Tracker("experiments.db")
    run = db.start_run("r16-4bit", kind="train", config={...}, suite="rank")
    db.log_metrics(run, step=10, values={"loss": 1.2, "lr": 2e-4})
    db.log_scores(run, "train", {"best_val_loss": 1.1})
    db.finish_run(run, "completed")

    with db.recording(run) as began:   # failed / interrupted on any exception, with its wall time
        ...

A run's files (adapter, checkpoints, samples.json) live in `run_dir(db, kind, name)`:
`runs/<db stem>-<db id>/<kind>/<name>` beside the database file, where the id is drawn
once when the database is created. A fresh database therefore starts with fresh
directories, and an old one (renamed or moved with its runs/ folder) finds its own.
"""
import contextlib
import csv
import json
import os
import socket
import sqlite3
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator

from common.errors import UserError

SCHEMA_VERSION = 3
APPLICATION = "lora-code-study"
# skipped: planned by a sweep but not run, the reason in `error` (e.g. predicted over --budget-mb).
STATUSES = ("running", "completed", "failed", "interrupted", "skipped")
# Suite membership is recorded as score rows under this benchmark (name = suite, value = 1), so a run
# shared by several suites belongs to each (sweep.py writes them, report.py reads them).
MEMBERSHIP = "suite"

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    suite TEXT,
    kind TEXT NOT NULL CHECK (kind IN ('train', 'eval')),
    status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'interrupted', 'skipped')),
    config TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    parent_id INTEGER REFERENCES runs(id),
    output_dir TEXT,
    started_at REAL NOT NULL,
    finished_at REAL,
    wall_seconds REAL,
    error TEXT,
    host TEXT,
    pid INTEGER,
    git_commit TEXT,
    versions TEXT,
    hardware TEXT,
    process_start TEXT
);
CREATE INDEX runs_by_hash ON runs (config_hash, kind);
CREATE INDEX runs_by_suite ON runs (suite);
CREATE TABLE metrics (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, name, step)
);
CREATE TABLE scores (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    benchmark TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    n INTEGER,
    ci_low REAL,
    ci_high REAL,
    PRIMARY KEY (run_id, benchmark, name)
);
CREATE TABLE samples (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    benchmark TEXT NOT NULL,
    task_id TEXT NOT NULL,
    sample_index INTEGER NOT NULL DEFAULT 0,
    prompt TEXT,
    generation TEXT,
    reference TEXT,
    result TEXT,
    details TEXT,
    UNIQUE (run_id, benchmark, task_id, sample_index)
);
"""

def _allow_skipped(conn: sqlite3.Connection) -> None:
    """Version 1 -> 2: the runs.status constraint admits 'skipped'.

    Widening a CHECK changes no stored row, so the table's SQL is edited in place, as SQLite's
    documentation describes for such changes (ALTER TABLE, "other kinds of table schema changes");
    rebuilding the table instead would trip the foreign keys of metrics/scores/samples inside this
    transaction. The schema cookie is bumped so every open connection re-reads the schema.
    """
    version = conn.execute("PRAGMA schema_version").fetchone()[0]
    conn.execute("PRAGMA writable_schema=ON")
    conn.execute("UPDATE sqlite_master SET sql=replace(sql, ?, ?) WHERE type='table' AND name='runs'",
                 ("'interrupted')", "'interrupted', 'skipped')"))
    conn.execute(f"PRAGMA schema_version={version + 1}")
    conn.execute("PRAGMA writable_schema=OFF")


def _add_process_start(conn: sqlite3.Connection) -> None:
    """Version 2 -> 3: runs.process_start, which tells a run's live process from a later one reusing its pid."""
    if "process_start" not in {row[1] for row in conn.execute("PRAGMA table_info(runs)")}:
        conn.execute("ALTER TABLE runs ADD COLUMN process_start TEXT")


# Migration N upgrades a database from schema version N to N+1 (SQL statements, or a function of the connection).
_MIGRATIONS: dict[int, Any] = {1: _allow_skipped, 2: _add_process_start}


def config_hash(config: dict[str, Any]) -> str:
    """Stable digest of a resolved config, used to find a run already done."""
    import hashlib
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class Tracker:
    def __init__(self, path: str | os.PathLike = "experiments.db"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we open transactions ourselves (BEGIN IMMEDIATE),
        # so a writer waits for the lock up front instead of failing mid-way.
        self.conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        try:
            self.conn.execute("PRAGMA busy_timeout = 60000")
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA foreign_keys = ON")
            self._check_integrity()
            self._ensure_schema()
        except sqlite3.DatabaseError as e:
            self.conn.close()
            # SQLite itself recognises a non-database file; no header pre-check of ours, since opening
            # and closing the file from Python would drop this process's SQLite locks on it.
            raise UserError(f"{self.path} is not a usable experiments database ({e}); "
                            "pass another --db or move the file away") from e
        except UserError:
            self.conn.close()
            raise
        marked = self.mark_orphans_interrupted()
        if marked:
            print(f"note: {self.path}: run(s) {', '.join(map(str, marked))} were left 'running' by a process that "
                  "is gone (killed?) and are now marked interrupted", file=sys.stderr)

    def _check_integrity(self) -> None:
        """Refuse a damaged file now: SQLite reads only the pages a query touches, so a corrupt page
        would otherwise surface as a traceback at the first write there, after a run's work is done.
        quick_check reads every page (about 0.05 s for 100 MB) but skips the costlier index checks."""
        problems = [row[0] for row in self.conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            detail = "; ".join(line for p in problems for line in p.splitlines() if not line.startswith("***"))
            raise UserError(f"{self.path} is damaged (SQLite quick_check: {detail[:200]}); recover what it holds "
                            f"with `sqlite3 {self.path} .recover | sqlite3 recovered.db`, or pass another --db")

    def _ensure_schema(self) -> None:
        with self._write():
            tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not tables:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                self.conn.execute("INSERT INTO meta VALUES ('application', ?), ('schema_version', ?)",
                                  (APPLICATION, str(SCHEMA_VERSION)))
                self.conn.execute("INSERT INTO meta VALUES ('database_id', ?)", (uuid.uuid4().hex,))
                return
            if "meta" not in tables:
                raise UserError(f"{self.path} is an SQLite database of another program "
                                f"(tables: {', '.join(sorted(tables))}); pass another --db")
            meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("application") != APPLICATION:
                raise UserError(f"{self.path} belongs to {meta.get('application')!r}, not {APPLICATION}; "
                                "pass another --db")
            version = int(meta.get("schema_version", 0))
            if version > SCHEMA_VERSION:
                raise UserError(f"{self.path} has schema version {version}, newer than this toolkit's "
                                f"{SCHEMA_VERSION}; update the toolkit (git pull)")
            while version < SCHEMA_VERSION:
                if version not in _MIGRATIONS:
                    raise UserError(f"{self.path} has schema version {version}, which cannot be migrated; "
                                    "start a new --db")
                migration = _MIGRATIONS[version]
                if callable(migration):
                    migration(self.conn)
                else:
                    for statement in migration.split(";"):
                        if statement.strip():
                            self.conn.execute(statement)
                version += 1
                self.conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
            # Databases made before run directories followed their database get their id now.
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('database_id', ?)", (uuid.uuid4().hex,))

    @property
    def database_id(self) -> str:
        return self.conn.execute("SELECT value FROM meta WHERE key='database_id'").fetchone()[0]

    def run_dir(self, kind: str, name: str) -> Path:
        """Where run `name` of `kind` (train | eval) keeps its files: beside the database, keyed by its id."""
        return runs_root(self) / kind / name

    def _write(self):
        return _Transaction(self.conn)

    def close(self) -> None:
        self.conn.close()

    # ---- runs -------------------------------------------------------------

    def start_run(self, name: str, kind: str, config: dict[str, Any], suite: str | None = None,
                  parent_id: int | None = None, output_dir: str | None = None,
                  environment: dict[str, Any] | None = None) -> int:
        env = environment or {}
        with self._write():
            cur = self.conn.execute(
                "INSERT INTO runs (name, suite, kind, status, config, config_hash, parent_id, output_dir,"
                " started_at, host, pid, git_commit, versions, hardware, process_start)"
                " VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, suite, kind, json.dumps(config, sort_keys=True, default=str), config_hash(config),
                 parent_id, output_dir, time.time(), socket.gethostname(), os.getpid(),
                 env.get("git_commit"), json.dumps(env.get("versions", {}), sort_keys=True),
                 json.dumps(env.get("hardware", {}), sort_keys=True), process_start(os.getpid())))
            return int(cur.lastrowid)

    def resume_run(self, run_id: int) -> None:
        """Mark an interrupted run as running again in this process."""
        with self._write():
            self.conn.execute("UPDATE runs SET status='running', error=NULL, finished_at=NULL, host=?, pid=?,"
                              " process_start=? WHERE id=?",
                              (socket.gethostname(), os.getpid(), process_start(os.getpid()), run_id))

    def finish_run(self, run_id: int, status: str, error: str | None = None,
                   wall_seconds: float | None = None) -> None:
        if status not in STATUSES[1:]:
            raise ValueError(f"finish status must be one of {STATUSES[1:]}, got {status!r}")
        with self._write():
            self.conn.execute("UPDATE runs SET status=?, error=?, finished_at=?,"
                              " wall_seconds=COALESCE(?, wall_seconds) WHERE id=?",
                              (status, error, time.time(), wall_seconds, run_id))

    def run(self, run_id: int) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return _run_dict(row) if row else None

    def runs(self, suite: str | None = None, status: str | None = None, kind: str | None = None,
             name: str | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM runs WHERE 1=1", []
        for column, value in (("suite", suite), ("status", status), ("kind", kind), ("name", name)):
            if value is not None:
                query += f" AND {column}=?"
                args.append(value)
        return [_run_dict(r) for r in self.conn.execute(query + " ORDER BY id", args)]

    def runs_of_process(self, pid: int, host: str | None = None) -> list[dict[str, Any]]:
        """Runs started by process `pid` on `host` (default: this one), oldest first."""
        rows = self.conn.execute("SELECT * FROM runs WHERE pid=? AND host=? ORDER BY id",
                                 (pid, host or socket.gethostname()))
        return [_run_dict(r) for r in rows]

    @contextlib.contextmanager
    def recording(self, run_id: int, began: float | None = None) -> Iterator[float]:
        """Finish `run_id` as interrupted (Ctrl-C, SIGTERM) or failed (any other exception) if the body raises.

        Yields the start time (time.perf_counter()) the wall time is measured from; the
        exception propagates. Completing the run stays the body's job.
        """
        began = time.perf_counter() if began is None else began
        try:
            yield began
        except BaseException as e:
            interrupted = isinstance(e, KeyboardInterrupt)
            self.finish_run(run_id, "interrupted" if interrupted else "failed",
                            error=None if interrupted else f"{type(e).__name__}: {e}",
                            wall_seconds=time.perf_counter() - began)
            raise

    def mark_orphans_interrupted(self) -> list[int]:
        """Mark `running` rows whose process is gone (see run_process_alive) interrupted; returns their ids.

        Every Tracker does this when it opens, so a kill -9'd run is resumable (train.py) and re-planned
        (sweep.py) at once. The update repeats what was read, so a run resumed meanwhile is left alone."""
        rows = self.conn.execute("SELECT id, host, pid, process_start FROM runs WHERE status='running' AND host=?",
                                 (socket.gethostname(),)).fetchall()
        stale = [r for r in rows if not run_process_alive(dict(r))]
        if not stale:
            return []
        with self._write():
            for r in stale:
                self.conn.execute("UPDATE runs SET status='interrupted', error='process gone (killed?)',"
                                  " finished_at=? WHERE id=? AND status='running' AND pid IS ? AND process_start IS ?",
                                  (time.time(), r["id"], r["pid"], r["process_start"]))
        return [r["id"] for r in stale]

    # ---- metrics, scores, samples ----------------------------------------

    def log_metrics(self, run_id: int, step: int, values: dict[str, float]) -> None:
        with self._write():
            self.conn.executemany("INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?)",
                                  [(run_id, step, k, _num(v)) for k, v in values.items()])

    def metrics(self, run_id: int, name: str | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT step, name, value FROM metrics WHERE run_id=?", [run_id]
        if name:
            query += " AND name=?"
            args.append(name)
        return [dict(r) for r in self.conn.execute(query + " ORDER BY name, step", args)]

    def log_scores(self, run_id: int, benchmark: str, values: dict[str, Any]) -> None:
        """values: name -> number, or name -> (value, n, ci_low, ci_high)."""
        rows = []
        for name, v in values.items():
            value, n, low, high = (v if isinstance(v, (tuple, list)) else (v, None, None, None))
            rows.append((run_id, benchmark, name, _num(value), n, _num(low), _num(high)))
        with self._write():
            self.conn.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def scores(self, run_id: int, benchmark: str | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT benchmark, name, value, n, ci_low, ci_high FROM scores WHERE run_id=?", [run_id]
        if benchmark:
            query += " AND benchmark=?"
            args.append(benchmark)
        return [dict(r) for r in self.conn.execute(query + " ORDER BY benchmark, name", args)]

    def all_scores(self) -> dict[int, dict[str, dict[str, Any]]]:
        """Every score: run id -> "<benchmark>.<name>" -> {value, n, low, high} (membership rows excluded)."""
        out: dict[int, dict[str, dict[str, Any]]] = {}
        for r in self.conn.execute("SELECT run_id, benchmark, name, value, n, ci_low, ci_high FROM scores"
                                   " WHERE benchmark != ? ORDER BY run_id, benchmark, name", (MEMBERSHIP,)):
            out.setdefault(r[0], {})[f"{r[1]}.{r[2]}"] = dict(value=r[3], n=r[4], low=r[5], high=r[6])
        return out

    def log_membership(self, run_id: int, suites: list[str]) -> None:
        """Record that a run belongs to these suites (besides the one it was started under)."""
        self.log_scores(run_id, MEMBERSHIP, {s: 1 for s in suites})

    def memberships(self) -> dict[str, set[int]]:
        """suite -> run ids: runs started under the suite and runs recorded as its members."""
        out: dict[str, set[int]] = {}
        for suite, run_id in self.conn.execute("SELECT suite, id FROM runs WHERE suite IS NOT NULL UNION"
                                               " SELECT name, run_id FROM scores WHERE benchmark = ?", (MEMBERSHIP,)):
            out.setdefault(suite, set()).add(run_id)
        return out

    def log_samples(self, run_id: int, benchmark: str, samples: Iterable[dict[str, Any]]) -> None:
        rows = [_sample_values(run_id, benchmark, s) for s in samples]
        with self._write():
            self.conn.executemany(_INSERT_SAMPLE, rows)

    def samples(self, run_id: int, benchmark: str | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM samples WHERE run_id=?", [run_id]
        if benchmark:
            query += " AND benchmark=?"
            args.append(benchmark)
        rows = [dict(r) for r in self.conn.execute(query + " ORDER BY benchmark, task_id, sample_index", args)]
        for r in rows:
            r["details"] = json.loads(r["details"]) if r["details"] else None
        return rows

    # ---- merging shards ---------------------------------------------------

    def merge_from(self, other: "Tracker") -> dict[str, int]:
        """Copy every run of `other` (with its metrics, scores and samples) that this database lacks.

        A run is the same run in both when its name, kind and start time agree (a resumed run keeps its
        start time), or when both completed the same work (name, kind and config: the base-model evaluation
        every shard runs); an identical one is skipped, so merging a shard twice adds nothing. One that
        finished since the last merge (completed there, not here) replaces the copy here. Any other
        difference is a conflict: the copy here is kept and counted. Ids are remapped (parents first,
        as ids grow). Returns counts: added, updated, duplicate, conflict.
        """
        counts = {"added": 0, "updated": 0, "duplicate": 0, "conflict": 0}
        ids: dict[int, int] = {}
        mine = {_identity(r): r for r in self.runs()}
        done = {_work(r): r for r in self.runs(status="completed")}
        for run in other.runs():
            here = mine.get(_identity(run)) or (done.get(_work(run)) if run["status"] == "completed" else None)
            if here is not None:
                ids[run["id"]] = here["id"]
                if (here["status"], here["config"]) == (run["status"], run["config"]):
                    counts["duplicate"] += 1
                elif run["status"] == "completed" and here["status"] != "completed" and here["config"] == run["config"]:
                    self._delete_run(here["id"])
                    ids[run["id"]] = self._copy_run(other, run, ids.get(run["parent_id"]), ids)
                    counts["updated"] += 1
                else:
                    counts["conflict"] += 1
                continue
            ids[run["id"]] = self._copy_run(other, run, ids.get(run["parent_id"]), ids)
            counts["added"] += 1
        return counts

    def _delete_run(self, run_id: int) -> None:
        with self._write():
            for table in ("metrics", "scores", "samples"):
                self.conn.execute(f"DELETE FROM {table} WHERE run_id=?", (run_id,))
            self.conn.execute("UPDATE runs SET parent_id=NULL WHERE parent_id=?", (run_id,))
            self.conn.execute("DELETE FROM runs WHERE id=?", (run_id,))

    def _copy_run(self, other: "Tracker", run: dict[str, Any], parent_id: int | None, ids: dict[int, int]) -> int:
        with self._write():
            cur = self.conn.execute(_INSERT_RUN, [None, *_run_values(run), parent_id])   # id None: a new one
            new = int(cur.lastrowid)
            self.conn.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?)",
                                  [(new, m["step"], m["name"], m["value"]) for m in other.metrics(run["id"])])
            self.conn.executemany("INSERT INTO scores VALUES (?, ?, ?, ?, ?, ?, ?)",
                                  [(new, s["benchmark"], s["name"], _remapped(s, ids), s["n"], s["ci_low"],
                                    s["ci_high"]) for s in other.scores(run["id"])])
        samples = other.samples(run["id"])
        for bench in sorted({s["benchmark"] for s in samples}):
            self.log_samples(new, bench, [s for s in samples if s["benchmark"] == bench])
        return new

    def add_run(self, run: dict[str, Any], metrics: list[dict[str, Any]], scores: list[dict[str, Any]],
                samples: list[dict[str, Any]]) -> None:
        """Insert a run recorded elsewhere under its own id (`run` as runs() gives it; a column it lacks is NULL),
        with its metrics, scores and samples, in one transaction: an import stopped half-way leaves no run
        without its rows. The caller checks the id is free and the parent is here (common/study/imports.py)."""
        with self._write():
            self.conn.execute(_INSERT_RUN, [run["id"], *_run_values(run), run["parent_id"]])
            self.conn.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?)",
                                  [(run["id"], m["step"], m["name"], m["value"]) for m in metrics])
            self.conn.executemany("INSERT INTO scores VALUES (?, ?, ?, ?, ?, ?, ?)",
                                  [(run["id"], s["benchmark"], s["name"], s["value"], s["n"], s["ci_low"],
                                    s["ci_high"]) for s in scores])
            self.conn.executemany(_INSERT_SAMPLE, [_sample_values(run["id"], s["benchmark"], s) for s in samples])

    # ---- export -----------------------------------------------------------

    def export(self, path: str | os.PathLike, run_ids: list[int] | None = None) -> Path:
        """Write runs (all, or the given ids) with their scores to .json (full) or .csv (flat)."""
        path = Path(path)
        runs = [r for r in self.runs() if run_ids is None or r["id"] in run_ids]
        for r in runs:
            r["scores"] = self.scores(r["id"])
        if path.suffix == ".json":
            for r in runs:
                r["metrics"] = self.metrics(r["id"])
            path.write_text(json.dumps(runs, indent=2, sort_keys=True, default=str) + "\n")
        elif path.suffix == ".csv":
            flat = [flatten_run(r) for r in runs]
            columns = sorted({k for row in flat for k in row}, key=_column_order)
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(flat)
        else:
            raise UserError(f"cannot export to {path}: use a .json or .csv file name")
        return path


SQLITE_HEADER = b"SQLite format 3\x00"


def check_merge_source(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Refuse a --merge source that is not an experiments database, before anything opens it read-write
    (a Tracker would turn an empty or foreign file into a database of ours)."""
    path = Path(source)
    if not path.is_file():
        raise UserError(f"--merge {source}: no such database; pass a shard's --db file")
    if path.resolve() == Path(target).resolve():
        raise UserError(f"--merge {source} is --db itself; merge into another file")
    with open(path, "rb") as f:
        header = f.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        what = "is empty" if not header else "is not an SQLite database"
        raise UserError(f"--merge {source} {what}; pass a shard's --db file (made by train.py, evaluate.py "
                        "or sweep.py)")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            app = conn.execute("SELECT value FROM meta WHERE key='application'").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise UserError(f"--merge {source} is not an experiments database ({e}); pass a shard's --db file") from e
    if not app or app[0] != APPLICATION:
        raise UserError(f"--merge {source} is an SQLite database of another program; pass a shard's --db file")


def runs_root(tracker: Tracker) -> Path:
    """`runs/<db stem>-<first 8 hex of the database id>` in the database's folder."""
    return tracker.path.resolve().parent / "runs" / f"{tracker.path.stem}-{tracker.database_id[:8]}"


def flatten_run(run: dict[str, Any]) -> dict[str, Any]:
    """One flat row: run columns, config.<key>, and <benchmark>.<score> columns."""
    row = {k: v for k, v in run.items() if k not in ("config", "scores", "metrics", "versions", "hardware")}
    row.update({f"config.{k}": v for k, v in run["config"].items()})
    for s in run.get("scores", []):
        row[f"{s['benchmark']}.{s['name']}"] = s["value"]
    return row


def _column_order(name: str) -> tuple[int, str]:
    return (name.count("."), name)


class _Transaction:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
        return False


_RUN_COLUMNS = ("name", "suite", "kind", "status", "config_hash", "output_dir", "started_at", "finished_at",
                "wall_seconds", "error", "host", "pid", "git_commit", "process_start")
_INSERT_RUN = (f"INSERT INTO runs (id, {', '.join(_RUN_COLUMNS)}, config, versions, hardware, parent_id)"
               f" VALUES ({', '.join('?' * (len(_RUN_COLUMNS) + 5))})")
_INSERT_SAMPLE = ("INSERT OR REPLACE INTO samples (run_id, benchmark, task_id, sample_index, prompt, generation,"
                  " reference, result, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")


def _run_values(run: dict[str, Any]) -> list[Any]:
    """A run's columns in _INSERT_RUN's order, between the id and the parent id."""
    return [run.get(c) for c in _RUN_COLUMNS] + [json.dumps(run["config"], sort_keys=True, default=str),
                                                 json.dumps(run.get("versions") or {}, sort_keys=True),
                                                 json.dumps(run.get("hardware") or {}, sort_keys=True)]


def _sample_values(run_id: int, benchmark: str, s: dict[str, Any]) -> tuple:
    details = s.get("details")
    return (run_id, benchmark, str(s["task_id"]), s.get("sample_index", 0), s.get("prompt"), s.get("generation"),
            s.get("reference"), s.get("result"),
            json.dumps(details, sort_keys=True, default=str) if details is not None else None)


def _remapped(score: dict[str, Any], ids: dict[int, int]) -> Any:
    """A score's value; a base_run_id names a run of the other database, so it follows the id remapping."""
    if score["name"] == "base_run_id" and score["value"] is not None:
        return ids.get(int(score["value"]), score["value"])
    return score["value"]


def _work(run: dict[str, Any]) -> tuple:
    """What makes two completed runs the same work: the same name, kind and config (e.g. the base-model
    evaluation every shard of a sweep runs)."""
    return run["name"], run["kind"], run["config_hash"]


def _identity(run: dict[str, Any]) -> tuple:
    """What makes two rows the same run across databases: what it is and when it started."""
    return run["name"], run["kind"], run["started_at"]


def _run_dict(row: sqlite3.Row) -> dict[str, Any]:
    run = dict(row)
    run["config"] = json.loads(run["config"])
    run["versions"] = json.loads(run["versions"] or "{}")
    run["hardware"] = json.loads(run["hardware"] or "{}")
    return run


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if value == value else None  # NaN is stored as NULL


def pid_alive(pid: int | None) -> bool:
    """True while the process exists and is not a zombie (killed but not yet reaped)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True  # no /proc (macOS): trust kill(0)


def process_start(pid: int) -> str | None:
    """When process `pid` started, as "<boot id>:<clock ticks since boot>" (Linux), else None.

    A pid is reused once its process is gone; the start time tells the process that started a
    run from a later one that happens to have the same pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = f.read().rsplit(")", 1)[1].split()[19]
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f"{f.read().strip()}:{ticks}"
    except (OSError, IndexError):
        return None


def run_process_alive(run: dict[str, Any]) -> bool:
    """Whether the process that recorded a run still runs (callers check that the run's host is this one);
    a live process whose start time differs from the recorded one reuses the pid of a dead run."""
    if not pid_alive(run["pid"]):
        return False
    recorded = run.get("process_start")
    return recorded is None or process_start(run["pid"]) in (None, recorded)

"""sweep.py --launcher ray: each adapter of the plan a Ray task, its results merged into the driver's database.

    python sweep.py --suite rank --launcher ray                       # a local Ray instance on this machine
    RAY_ADDRESS=auto python sweep.py --suite rank --launcher ray      # the cluster this node belongs to
    python sweep.py --suite quant --launcher ray --ray-address ray://head:10001 --ray-cpus 8

A task runs sweep.py's own Sweep (train.py, then evaluate.py, as child processes) for one adapter and all
of its evaluations, in a scratch directory on its node, against a copy of the driver's database: the
base-model evaluations run first, as tasks of their own, and are merged before the adapters start, so
every adapter task finds them there and pairs with them. A task reserves --ray-cpus CPUs, and one GPU
when the cluster has GPUs. It returns its database and the files it wrote (adapters, samples; not the
resumable checkpoints); the driver merges the database (Tracker.merge_from: runs added with new ids,
nothing twice) and unpacks the files under its run root, the path the runs recorded. Only the driver
writes the driver's database, so SQLite is never shared between machines.

A task whose worker process or node dies is run again by Ray (up to --ray-retries times); on the same
node a half-done training resumes from its checkpoint. The code must be at the same path on every
node (a shared checkout or image): the driver puts its checkout on the workers' PYTHONPATH. Ray is
imported only here, and only when --launcher ray asks for it.
"""
import io
import sqlite3
import tarfile
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from common.config import SweepConfig
from common.errors import UserError, first_line
from common.study.plan import Planned, completed_ids
from common.tracker import Tracker

ROOT = Path(__file__).resolve().parents[2]
INSTALL = "pip install -r requirements-ray.txt"


def import_ray():
    try:
        import ray
    except ImportError as e:
        raise UserError(f"--launcher ray needs Ray, which is not installed: {INSTALL}") from e
    return ray


def run_on_ray(cfg: SweepConfig, planned: list[Planned], root: Path, log: Callable[[str], None]) -> None:
    """Run the plan on Ray: base evaluations first, then one task per adapter; outcomes are set on `planned`."""
    ray = import_ray()
    try:
        ray.init(address=cfg.ray_address, include_dashboard=False, log_to_driver=not cfg.quiet,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UserError(f"cannot start or join a Ray cluster (--ray-address {cfg.ray_address}): "
                        f"{first_line(e)}") from e
    try:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        task = ray.remote(num_cpus=cfg.ray_cpus, num_gpus=gpus, max_retries=cfg.ray_retries)(run_task)
        groups: dict[str, list[Planned]] = {}
        for p in planned:
            if p.kind == "adapter":
                groups.setdefault(p.name, []).append(p)
        fields = asdict(cfg)
        for batch in ([[p] for p in planned if p.kind == "base"], list(groups.values())):
            batch = not_done(cfg.db, batch)
            snapshot = ray.put(database_bytes(cfg.db))
            pending = {task.remote(fields, group, snapshot, str(root)): group for group in batch}
            for group in pending.values():
                log(f"ray: submitted {group[0].name}" + (f" ({group[0].diff})" if group[0].kind == "adapter" else ""))
            while pending:
                [ready], _ = ray.wait(list(pending), num_returns=1)
                group = pending.pop(ready)
                try:
                    result = ray.get(ready)
                except ray.exceptions.RayError as e:  # retries used up, or the task raised
                    for p in group:
                        p.outcome, p.error = "failed", f"Ray task failed: {first_line(e)}"
                    log(f"ray: {group[0].name} failed: {first_line(e)}")
                    continue
                absorb(cfg.db, root, result, group)
                log(f"ray: {group[0].name} " + ", ".join(sorted({p.outcome for p in group})))
    finally:
        ray.shutdown()


def run_task(fields: dict[str, Any], group: list[Planned], snapshot: bytes, root: str) -> dict[str, Any]:
    """On a Ray worker: run `group` (one adapter's train + evaluations, or a base evaluation) with sweep.py's
    Sweep against a copy of the driver's database; return that database, the outcomes and the files written."""
    from common.study.runner import Sweep  # the checkout, on PYTHONPATH

    with tempfile.TemporaryDirectory(prefix="lora-ray-") as scratch:
        db = Path(scratch) / "task.db"
        db.write_bytes(snapshot)
        cfg = SweepConfig(**{**fields, "db": str(db), "output_dir": root, "workers": 1, "launcher": "local",
                             "quiet": True})
        runner = Sweep(cfg, group)
        try:
            for p in group:
                runner.execute(p, None)
        finally:
            runner.close()
        dirs = {("train", p.name) for p in group if p.kind == "adapter"} | {("eval", p.eval_name) for p in group}
        return {"db": database_bytes(str(db)), "planned": group, "files": pack(Path(root), sorted(dirs))}


def absorb(db: str, root: Path, result: dict[str, Any], group: list[Planned]) -> None:
    """Merge a task's database into the driver's, unpack its files, and read the outcomes back by name."""
    with tempfile.TemporaryDirectory(prefix="lora-ray-") as scratch:
        path = Path(scratch) / "task.db"
        path.write_bytes(result["db"])
        target, other = Tracker(db), Tracker(path)
        try:
            target.merge_from(other)
            unpack(result["files"], root)
            for p, done in zip(group, result["planned"]):
                p.train_id, p.eval_id = completed_ids(target, p)
                p.outcome, p.error = ("done", "") if p.eval_id else (done.outcome, done.error)
        finally:
            other.close()
            target.close()


def not_done(db: str, batch: list[list[Planned]]) -> list[list[Planned]]:
    """The groups the driver's database has not completed (the completed ones are marked done, not submitted)."""
    tracker = Tracker(db)
    try:
        pending = []
        for group in batch:
            ids = [completed_ids(tracker, p) for p in group]
            if all(eval_id is not None for _, eval_id in ids):
                for p, (train_id, eval_id) in zip(group, ids):
                    p.train_id, p.eval_id, p.outcome = train_id, eval_id, "done"
            else:
                pending.append(group)
        return pending
    finally:
        tracker.close()


def database_bytes(path: str) -> bytes:
    """A consistent copy of a SQLite database (WAL included), as bytes."""
    with tempfile.TemporaryDirectory(prefix="lora-ray-") as scratch:
        copy = Path(scratch) / "copy.db"
        source, target = sqlite3.connect(path), sqlite3.connect(copy)
        try:
            source.backup(target)
        finally:
            source.close()
            target.close()
        return copy.read_bytes()


def pack(root: Path, dirs: list[tuple[str, str]]) -> bytes:
    """The run directories root/<kind>/<name> as a tar.gz, without resumable checkpoints."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for kind, name in dirs:
            if (root / kind / name).is_dir():
                tar.add(root / kind / name, arcname=f"{kind}/{name}",
                        filter=lambda info: None if "/checkpoint" in info.name else info)
    return buffer.getvalue()


def unpack(data: bytes, root: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(root, filter="data")  # refuses absolute paths, links out of root, devices

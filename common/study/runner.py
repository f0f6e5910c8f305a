"""Run a sweep's plan on this machine: per adapter, train.py then evaluate.py as child processes writing one
database, a worker slot (one GPU each with --workers N) per running adapter, resumable and interruptible.

    sweep = Sweep(cfg, planned)      # cfg: common.config.SweepConfig; planned: common/study/plan.py
    sweep.run()                      # Ctrl-C / SIGTERM go to sweep.on_signal: the child checkpoints, the sweep stops
    sweep.close()

The Ray launcher (common/study/ray_launcher.py) runs the same `Sweep` for one adapter per Ray task.
"""
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common.study import suites as S
from common.study.plan import (Planned, completed_eval, completed_train, record_membership,
                               running_elsewhere)
from common.tracker import Tracker, runs_root

ROOT = Path(__file__).resolve().parents[2]   # the checkout: train.py and evaluate.py run from here
INTERRUPTED_CODES = (130, -signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGTERM)


class Sweep:
    def __init__(self, cfg, planned: list[Planned]):
        self.cfg = cfg
        # Every database access runs on one thread with one Tracker: an sqlite connection belongs to
        # the thread that opened it, and a second Tracker opened in this process while the first is
        # in use would drop SQLite's file locks (POSIX locks are per process and go with any close()).
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db")
        self._tracker = self._db.submit(Tracker, cfg.db).result()
        # Run directories follow the database unless --output-dir names a root.
        self.root = Path(cfg.output_dir).resolve() if cfg.output_dir else self.call(runs_root)
        self.out_lock = threading.RLock()   # re-entrant: the signal handler logs from the main thread
        self.planned = planned
        self.children: set[subprocess.Popen] = set()
        self.stops = 0
        self.gpus = self._gpu_slots()

    def call(self, fn, *cfg):
        """fn(tracker, *cfg) on the database thread."""
        return self._db.submit(lambda: fn(self._tracker, *cfg)).result()

    def close(self) -> None:
        self.call(lambda t: t.close())
        self._db.shutdown()

    @property
    def stopping(self) -> bool:
        return self.stops > 0

    def _gpu_slots(self) -> list[str | None]:
        """One CUDA_VISIBLE_DEVICES value per worker slot (None: leave the environment alone)."""
        if self.cfg.workers <= 1:
            return [None]
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            ids = [v for v in visible.split(",") if v.strip()]
        else:
            try:
                import torch
                ids = [str(i) for i in range(torch.cuda.device_count())]
            except ImportError:
                ids = []
        if not ids:
            return [None] * self.cfg.workers
        if self.cfg.workers > len(ids):
            self.log(f"note: {self.cfg.workers} workers share {len(ids)} GPU(s)")
        return [ids[i % len(ids)] for i in range(self.cfg.workers)]

    def log(self, message: str) -> None:
        with self.out_lock:
            from tqdm import tqdm
            tqdm.write(message, file=sys.stderr)

    def on_signal(self, signum, frame) -> None:
        self.stops += 1
        # Children share our process group, so a terminal Ctrl-C reached them already; SIGTERM
        # asks train.py for the same graceful stop without counting as a second Ctrl-C.
        forward = signal.SIGTERM if self.stops == 1 else signal.SIGINT
        self.log(f"\n{signal.Signals(signum).name}: stopping the sweep"
                 + (" after the running child saves its state" if self.stops == 1 else " now"))
        for child in list(self.children):
            try:
                child.send_signal(forward)
            except ProcessLookupError:
                pass

    def run_child(self, cmd: list[str], prefix: str, gpu: str | None) -> tuple[int, int, str]:
        """Run a script, streaming its output; returns (exit code, pid, last lines of output)."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        proc = subprocess.Popen(orphan_guard(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                cwd=os.getcwd())
        self.children.add(proc)
        tail = b""
        pending = b""
        raw = self.cfg.workers <= 1
        try:
            while True:
                chunk = proc.stdout.read1(65536)
                if not chunk:
                    break
                tail = (tail + chunk)[-4000:]
                if raw:
                    with self.out_lock:
                        sys.stdout.buffer.write(chunk)
                        sys.stdout.buffer.flush()
                    continue
                pending += chunk
                *lines, pending = pending.replace(b"\r", b"\n").split(b"\n")
                for line in lines:
                    if line.strip():
                        self.log(f"[{prefix}] {line.decode(errors='replace')}")
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            self.children.discard(proc)
        if pending.strip() and not raw:
            self.log(f"[{prefix}] {pending.decode(errors='replace')}")
        return code, proc.pid, tail.decode(errors="replace")

    def settle(self, pid: int, code: int, message: str) -> list[int]:
        """Rows the child left `running` become failed/interrupted; returns the ids of its rows."""
        def work(tracker: Tracker) -> list[int]:
            runs = tracker.runs_of_process(pid)
            for run in runs:
                if run["status"] == "running":
                    interrupted = code in INTERRUPTED_CODES
                    tracker.finish_run(run["id"], "interrupted" if interrupted else "failed",
                                       error=None if interrupted else message)
            return [run["id"] for run in runs]
        return self.call(work)

    def record_failure(self, p: Planned, kind: str, name: str, message: str, parent_id: int | None) -> int:
        """A child that failed before recording a run (bad flag, missing file): record it ourselves."""
        def work(tracker: Tracker) -> int:
            run_id = tracker.start_run(name, kind, config={"sweep_flags": p.flags, "name": name},
                                       suite=p.suites[0], parent_id=parent_id)
            tracker.finish_run(run_id, "failed", error=message)
            return run_id
        return self.call(work)

    # ---- one planned run ---------------------------------------------------

    def lock(self, name: str):
        directory = self.root / ".locks"
        directory.mkdir(parents=True, exist_ok=True)
        handle = open(directory / f"{name}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.log(f"{name}: another sweep is running it; waiting for it to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        return handle

    def execute(self, p: Planned, gpu: str | None) -> None:
        handle = self.lock(p.name)
        try:
            if p.kind == "base":
                self._evaluate(p, None, gpu)
            else:
                self._train_and_evaluate(p, gpu)
        finally:
            # A run stopped before its evaluation joins no suite yet: its suites' report rows would
            # otherwise show an evaluation made for another suite (another protocol, say).
            shared = [p.train_id, p.eval_id] if p.eval_id is not None else []
            self.call(record_membership, p.attempt_ids + shared, p.suites)
            handle.close()

    def _train_and_evaluate(self, p: Planned, gpu: str | None) -> None:
        train = self.call(completed_train, p)
        # Imported from an export (sweep.py --import-examples) with no evaluation: its adapter stayed on the machine
        # that trained it, so it cannot be evaluated here. Train again: the report counts a config's newest run.
        stale = train["id"] if train is not None and train["output_dir"] is None \
            and self.call(completed_eval, p, train["id"]) is None else None
        if stale is not None:
            self.log(f"{p.name}: train run {stale} came without its adapter (trained elsewhere); training again")
            train = None
        busy = None if train else self.call(running_elsewhere, p.name, "train")
        if busy:
            p.outcome, p.error = "running elsewhere", f"train run {busy['id']} is running in process {busy['pid']}"
            return
        if train is None:
            if self.stopping:
                p.outcome = "not started"
                return
            train = self._train(p, gpu, stale)
            if train is None:
                return
        p.train_id = train["id"]
        self._evaluate(p, train["id"], gpu)

    def _train(self, p: Planned, gpu: str | None, stale: int | None = None) -> dict[str, Any] | None:
        """A completed train run of `p` made by train.py now (not `stale`, a run without its adapter), or None."""
        out = self.root / "train" / p.name
        cmd = [sys.executable, str(ROOT / "train.py"), *S.to_argv(p.flags, S.TRAIN_FLAGS), "--name", p.name,
               "--output-dir", str(out), "--db", self.cfg.db, "--suite", p.suites[0]]
        if self.cfg.quiet or self.cfg.workers > 1:
            cmd.append("--quiet")
        for attempt in range(2):
            self.log(f"train {p.name} ({p.diff})")
            code, pid, tail = self.run_child(cmd, p.name, gpu)
            message = failure_message("train.py", code, tail)
            p.attempt_ids += self.settle(pid, code, message)
            train = self.call(completed_train, p)
            if train is not None and train["id"] != stale:
                return train
            if code == 0 and attempt == 0 and not self.stopping and self._stale_completion(out):
                continue  # killed between writing run_config.json and recording completion: train again
            break
        if code == 0:
            message = (f"train.py exited 0 but {self.cfg.db} has no completed run '{p.name}'; "
                       f"{out} may hold a run recorded in another database: pass another --output-dir")
        if code in INTERRUPTED_CODES:
            p.outcome = "interrupted"
        else:
            p.outcome, p.error = "failed", message
            if not p.attempt_ids:
                p.attempt_ids.append(self.record_failure(p, "train", p.name, message, None))
        return None

    def _stale_completion(self, out: Path) -> bool:
        """run_config.json says completed for a run this db does not have completed: move it aside."""
        import json
        config = out / "run_config.json"
        try:
            info = json.loads(config.read_text())
        except (OSError, ValueError):
            return False
        if Path(info.get("db", "")).resolve() != Path(self.cfg.db).resolve():
            return False
        config.rename(out / "run_config.incomplete.json")
        return True

    def _evaluate(self, p: Planned, train_id: int | None, gpu: str | None) -> None:
        done = self.call(completed_eval, p, train_id)
        busy = None if done else self.call(running_elsewhere, p.eval_name, "eval")
        if done:
            p.eval_id, p.outcome = done["id"], "done"
            return
        if busy:
            p.outcome, p.error = "running elsewhere", f"eval run {busy['id']} is running in process {busy['pid']}"
            return
        if self.stopping:
            p.outcome = "not started"
            return
        cmd = [sys.executable, str(ROOT / "evaluate.py"), "--db", self.cfg.db, "--suite", p.suites[0],
               "--name", p.eval_name, "--output-dir", str(self.root / "eval" / p.eval_name),
               *S.to_argv(p.flags, S.EVAL_FLAGS)]
        if train_id is None:
            cmd += S.to_argv({k: v for k, v in p.flags.items() if k in S.SHARED_FLAGS}, S.TRAIN_FLAGS)
        else:
            cmd += ["--run-id", str(train_id)]
        if self.cfg.quiet or self.cfg.workers > 1:
            cmd.append("--quiet")
        self.log(f"evaluate {p.eval_name}" + (f" (train run {train_id})" if train_id else " (base model)"))
        code, pid, tail = self.run_child(cmd, p.eval_name, gpu)
        message = failure_message("evaluate.py", code, tail)
        p.attempt_ids += self.settle(pid, code, message)
        done = self.call(completed_eval, p, train_id)
        if done:
            p.eval_id, p.outcome = done["id"], "done"
        elif code in INTERRUPTED_CODES:
            p.outcome = "interrupted"
        else:
            p.outcome, p.error = "failed", message
            mine = [i for i in p.attempt_ids if self.call(Tracker.run, i)["name"] == p.eval_name]
            if not mine:
                p.attempt_ids.append(self.record_failure(p, "eval", p.eval_name, message, train_id))

    # ---- the whole sweep ---------------------------------------------------

    def run(self) -> None:
        from tqdm import tqdm
        tqdm.monitor_interval = 0  # no background redraws in the middle of a child's output
        bar = tqdm(total=len(self.planned), desc="sweep", unit="run", disable=self.cfg.quiet, file=sys.stderr,
                   dynamic_ncols=True)
        bases = [p for p in self.planned if p.kind == "base"]
        adapters = [p for p in self.planned if p.kind == "adapter"]
        slots = list(range(len(self.gpus)))   # GPU slots free right now; every run gives its slot back
        slot_lock = threading.Lock()

        def work(p: Planned) -> None:
            with slot_lock:
                slot = slots.pop()
            try:
                self.execute(p, self.gpus[slot])
            finally:
                with slot_lock:
                    slots.append(slot)
                bar.update(1)

        try:
            # Base evaluations first: an adapter's evaluation reuses the matching one.
            for group in (bases, adapters):
                if self.cfg.workers <= 1:
                    for p in group:
                        self.execute(p, self.gpus[0])
                        bar.update(1)
                    continue
                with ThreadPoolExecutor(max_workers=self.cfg.workers) as pool:
                    for future in [pool.submit(work, p) for p in group]:
                        while not future.done():
                            time.sleep(0.2)  # keeps the main thread free to take Ctrl-C
                        future.result()
        finally:
            bar.close()


def orphan_guard(cmd: list[str]) -> list[str]:
    """`cmd`, started so that it gets SIGTERM (train.py: checkpoint, then exit) when this process dies.

    Without it a sweep killed with SIGKILL (or a Ray worker lost with its task) leaves its child training on,
    and a retry would write the same run directory at the same time. prctl(PR_SET_PDEATHSIG) survives the exec;
    checking the parent after setting it closes the race with a parent that died first. Linux only.
    """
    if not sys.platform.startswith("linux"):
        return cmd
    guard = ("import ctypes, os, signal, sys; parent = int(sys.argv[1]); "
             "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM); "
             "os.getppid() == parent or sys.exit(143); os.execv(sys.argv[2], sys.argv[2:])")
    return [sys.executable, "-c", guard, str(os.getpid()), *cmd]


def apply_budget(cfg, tracker: Tracker, planned: list[Planned], record: bool) -> None:
    """Print every planned train run's prediction; with --budget-mb, mark those over it skipped (and
    `record` them as skipped runs, members of their suites); the base evaluations stay planned."""
    from common.env import default_device
    from common.study.budget import budget_reason, plan_estimates, print_plan_estimates, record_skipped
    estimates = plan_estimates(planned, default_device())
    print_plan_estimates(planned, estimates, cfg.budget_mb)
    for p in planned:
        reason = budget_reason(estimates[p.name], cfg.budget_mb) if p.name in estimates else None
        if reason:
            p.outcome, p.error = "skipped", reason
        if reason and record:
            p.train_id = record_skipped(tracker, p.name, p.suites[0], p.flags, estimates[p.name], reason)
            record_membership(tracker, [p.train_id], p.suites)


def failure_message(script: str, code: int, tail: str) -> str:
    lines = [line.strip() for line in tail.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or "Error" in line.split(":")[0]]
    last = (errors or lines or ["no output"])[-1]
    return f"{script} exited with code {code}: {last[:300]}"

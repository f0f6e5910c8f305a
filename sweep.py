"""Run a suite of LoRA/QLoRA configurations: train each, evaluate each, plus the base model once.

    python sweep.py --suite rank                        # rank 4..64 at qkvo, 16bit (data/suites/builtin/rank.yaml)
    python sweep.py --suite all --set max_steps=200 --set eval_limit=40
    python sweep.py --suite quant --seeds 2              # every config over seeds 0 and 1
    python sweep.py --suite-file my_suite.yaml --dry-run # what would run, and what is already done
    python sweep.py --suite smoke --set model=/path/to/tiny-model --quiet
    python sweep.py --suite modules --workers 2          # two runs at once, one GPU each
    python sweep.py --suite rank --launcher ray          # one Ray task per adapter (common/study/ray_launcher.py)
    python sweep.py --suite study --import-examples results/examples   # resume from the committed export

Suites (data/suites/builtin/NAME.yaml): `rank` (r = 4, 8, 16, 32, 64 at qkvo, 16bit), `modules` (qv, qkv,
qkvo, all at r16, 16bit), `quant` (4bit, 8bit, 16bit at r16, qkvo), `smoke` (r4 and r8, 2 steps,
2 problems: checks the pipeline in minutes), `all` (= rank + modules + quant), `seeds` (r16,
qkvo, 16bit at seeds 0 and 1: run-to-run spread), `variants` (LoRA, rsLoRA, DoRA, PiSSA, LoRA+ at r16)
and `study` (the reference study in
results/: its parts `study-*` fix every setting, see data/suites/builtin/ and the README). The built-in
suites keep train.py's defaults (one epoch); set the budget with e.g. `--set max_steps=200`.
A `--suite-file` is YAML or JSON:

    name: lr-rank                     # the runs' suite label
    base: {max_steps: 200, eval_limit: 40}          # flags of every run
    axes: {rank: [8, 16], lr: [1e-4, 2e-4]}         # cartesian product (last axis fastest)
    groups:                           # optional: alternatives that set several flags together;
      - - {quant: 4bit, optim: paged_adamw_8bit}    # each group multiplies the runs by its
        - {quant: 16bit}                            # number of alternatives

(2 x 2 x 2 = 8 runs). `--set key=value` overrides an option for every run: the keys are the
train.py and evaluate.py options marked for sweeps in common/config.py, spelled as there
(`eval_limit` is evaluate.py's `--eval-limit`); model, quant, dataset and seed go to both (the
base-model evaluation gets them explicitly; a trained run's evaluation takes them from the
train run). An unknown key is an error that lists the known ones.

Each run is `train.py` then `evaluate.py --run-id <id>`, as child processes writing the same
--db; adapters go to <root>/train/<name>, evaluation samples to <root>/eval/<name>, where the
root is the database's run directory (runs/<db>-<db id>/ beside it; --output-dir names another).
Runs are named from their config (`r16-qkvo-16bit-s0-<hash>`), so re-running the same
command resumes: a run trained and evaluated with the same config is skipped, an
interrupted training resumes from its checkpoint, a failed one is tried again. A run that
fails is recorded as failed and the sweep goes on; failures are listed at the end and the
exit code is 1. Ctrl-C asks the running child to save a checkpoint and stops the sweep
(exit 130); a second Ctrl-C stops the child at once. On another machine, whose database is
empty, `--import-examples results/examples` first loads the runs of a `report.py
--export-examples` folder into --db under their ids (common/study/imports.py; importing twice adds
nothing), so only the runs the export lacks are run.

Shared configs: a config in several suites (rank 16 / qkvo / 16bit is in rank, modules and
quant) is trained and evaluated once. Its runs carry the first suite as their `suite` label
and are recorded as members of every suite they belong to, as score rows under the
benchmark "suite" (name = the suite, value 1) on the train run and the eval run; report.py
shows a run in each suite it is a member of. The same holds for the base-model
evaluation, which every suite with the same evaluation settings shares.
"""
import signal
import sys
from pathlib import Path

from common.config import SweepConfig
from common.errors import UserError, run_cli
from common.options import parse_config


def merge_databases(sources: list[str], db: str) -> int:
    """One database from the shards' (see Tracker.merge_from); report.py, evaluate.py and infer.py read it."""
    from common.tracker import Tracker, check_merge_source
    for source in sources:
        check_merge_source(source, db)  # every shard before anything is written
    target = Tracker(db)
    for source in sources:
        other = Tracker(source)
        counts = target.merge_from(other)
        other.close()
        print(f"{source}: {counts['added']} run(s) added, {counts['updated']} updated, {counts['duplicate']} "
              f"already there" + (f", {counts['conflict']} in conflict (kept as in {db})" if counts["conflict"]
                                  else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(SweepConfig, argv, __doc__.split("\n\n")[0])
    if cfg.workers < 1:
        raise UserError(f"--workers must be at least 1, got {cfg.workers}")
    if cfg.seeds is not None and cfg.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {cfg.seeds}")
    if cfg.budget_mb is not None:  # refused before the database is opened
        from common.study.budget import check_budget_mb
        check_budget_mb(cfg.budget_mb)
    if cfg.merge:
        if cfg.import_examples:
            raise UserError("--import-examples goes with a sweep, not --merge: merge first, then run the sweep")
        return merge_databases(cfg.merge, cfg.db)
    # Imported after parsing, so that --help and option errors answer before torch loads.
    from common.study import suites as S
    from common.env import default_device
    from common.study.budget import print_plan_costs
    from common.study.plan import parse_shard, plan, power_note, print_plan, selected_suites, shard
    from common.study.runner import ROOT, apply_budget
    from common.tracker import Tracker, runs_root
    suites = selected_suites(cfg)
    planned = plan(suites, S.parse_set(cfg.set), cfg.seeds)
    if cfg.shard:
        planned = shard(planned, *parse_shard(cfg.shard))
    tracker = Tracker(cfg.db)  # marks runs left 'running' by a process that is gone interrupted
    if cfg.import_examples:  # before the database is asked what is done (common/study/imports.py)
        from common.study.imports import import_examples
        counts = import_examples(Path(cfg.import_examples), tracker)
        print(f"imported {counts['imported']} runs from {cfg.import_examples} ({counts['present']} already present)")
    label = cfg.suite or suites[0].name
    if cfg.estimate or cfg.budget_mb is not None:  # predictions (common/study/budget.py), before anything runs
        apply_budget(cfg, tracker, planned, record=not (cfg.estimate or cfg.dry_run))
        if cfg.estimate:
            return 0
    if cfg.dry_run:
        print(f"suite {label}: {len(planned)} run(s) in {cfg.db}")
        print_plan(tracker, planned)
        print(power_note(planned))
        print_plan_costs(tracker, planned, default_device())
        return 0
    if not (ROOT / "evaluate.py").is_file():
        raise UserError(f"{ROOT / 'evaluate.py'} is missing; the sweep needs it to evaluate each run")
    if cfg.launcher == "ray":
        from common.study.ray_launcher import import_ray, run_on_ray
        import_ray()  # a missing Ray is a one-line error before anything runs
        root = Path(cfg.output_dir).resolve() if cfg.output_dir else runs_root(tracker)
        tracker.close()
        run_on_ray(cfg, [p for p in planned if p.outcome != "skipped"], root, lambda m: print(m, file=sys.stderr))
        return finish(cfg, planned, label, stopping=False)
    tracker.close()  # the sweep opens its own, on its database thread
    return run_here(cfg, planned, label)


def run_here(cfg: SweepConfig, planned: list, label: str) -> int:
    """The plan's runs on this machine, with Ctrl-C / SIGTERM passed to the running child."""
    from common.study.runner import Sweep
    sweep = Sweep(cfg, [p for p in planned if p.outcome != "skipped"])
    previous = {sig: signal.signal(sig, sweep.on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        sweep.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sweep.close()
    return finish(cfg, planned, label, sweep.stopping)


def finish(cfg: SweepConfig, planned: list, label: str, stopping: bool) -> int:
    """Print what happened to every planned run; the exit code: 0 all done, 130 interrupted, 1 some not done."""
    from common.study.plan import print_summary
    for p in planned:
        if p.outcome == "pending":
            p.outcome = "not started"
    print_summary(planned)
    bad = [p for p in planned if p.outcome not in ("done", "skipped")]
    if stopping:
        print(f"sweep interrupted: {len(bad)} of {len(planned)} run(s) not done; re-run the same command to resume",
              file=sys.stderr)
        return 130
    if bad:
        print(f"{len(bad)} of {len(planned)} run(s) did not complete: "
              + "; ".join(f"{p.name}: {p.outcome}" + (f" ({p.error})" if p.error else "") for p in bad),
              file=sys.stderr)
        return 1
    print(f"suite {label}: all {len(planned)} run(s) done; `python report.py --db {cfg.db}` writes the report")
    return 0


if __name__ == "__main__":
    run_cli(main)

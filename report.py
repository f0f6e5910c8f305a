"""Turn the run tracker into a results report: tables, paired comparisons, power, Pareto fronts, figures.

    python report.py                                  # every suite in experiments.db -> reports/
    python report.py --db sweep.db --suite rank --out reports/rank
    python report.py --list [--suite rank] [--status failed]
    python report.py --export csv --out runs.csv      # all runs with their scores (Tracker.export)
    python report.py --export-examples results/examples   # per-example tables, configs, scores, curves (gzip)
    python report.py --from-examples results/examples --out results   # the same report, from those files alone

Writes to --out: RESULTS.md (per suite: one table per question: cost; quality on each benchmark with 95%
CIs; paired differences against the suite's reference config and against the base model, each with its
test; what the design could detect; Pareto fronts; a recommendation per memory budget; before/after
examples; failed runs; the environment), model_comparison.csv/.json (the rows as numbers) and PNG figures.

The numbers come from common/study/rows.py (rows, cells, intervals) and common/study/compare.py (paired tests,
power, fronts); this file only renders them. A value is bold only when it beats the runner-up beyond
noise (see common/study/compare.py for the tests). The same database gives byte-identical markdown.

Planning a study (common/judge/stats.py): with 40 problems an exact McNemar test needs 6 one-way flips
(15 points) for p < 0.05, and 80% power needs a ~20-point gain even if every flip goes one way; where
configs disagree on 20% of problems, 80% power for a 10-point pass@1 gain needs ~168 problems
(`python -c "from common.judge.stats import problems_needed; print(problems_needed(0.10, 0.20))"`).
"""
import shlex
import sys
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

from common.config import DEFAULT_DB, ReportConfig
from common.errors import UserError, run_cli
from common.options import parse_config
from common.study.rows import Study
from common.tracker import Tracker


# ---------------------------------------------------------------------------- outputs

def list_runs(study: Study, suite: str | None, status: str | None) -> str:
    from tabulate import tabulate

    ids = sorted(study.members.get(suite, set())) if suite else sorted(study.runs)
    memberships: dict[int, list[str]] = defaultdict(list)
    for s in study.suites():
        for i in study.members[s]:
            memberships[i].append(s)
    body = []
    for run_id in [i for i in ids if not status or study.runs[i]["status"] == status]:
        run, c = study.runs[run_id], study.runs[run_id]["config"]
        if run["kind"] == "train":
            key_config = f"r{c.get('rank')} {c.get('modules')} {c.get('quant')} s{c.get('seed')}"
            scores = [("val", "train.final_val_loss", 3), ("peak MB", "train.peak_rss_mb", 0),
                      ("GPU MB", "train.peak_gpu_allocated_mb", 0)]
        else:
            key_config = f"{'adapter of run ' + str(run['parent_id']) if run['parent_id'] else 'base model'}"
            scores = [("pass@1", "humaneval.pass@1", 3), ("chrF", "humaneval.chrf", 1),
                      ("ppl", "heldout.perplexity", 2)]
        shown = " ".join(f"{label} {study.score(run_id, key)['value']:.{d}f}" for label, key, d in scores
                         if study.score(run_id, key))
        started = datetime.fromtimestamp(run["started_at"], timezone.utc).strftime("%Y-%m-%d %H:%M")
        body.append([run_id, run["name"], ",".join(sorted(memberships.get(run_id, []))), run["kind"], run["status"],
                     started, key_config, shown or "—"])
    return tabulate(body, headers=["id", "name", "suite", "kind", "status", "started (UTC)", "config", "scores"],
                    tablefmt="github")


def export(study: Study, args: ReportConfig) -> int:
    out = Path(args.output_dir or f"reports/runs.{args.export}")
    if out.suffix != f".{args.export}":
        out = out / f"runs.{args.export}"
    out.parent.mkdir(parents=True, exist_ok=True)
    ids = sorted(study.members[args.suite]) if args.suite else None
    study.tracker.export(out, ids)
    print(f"wrote {len(ids) if ids is not None else len(study.runs)} run(s) to {out}")
    return 0


def open_study(args: ReportConfig) -> tuple[Study, str]:
    """The study of --db, or of a --from-examples folder (common/study/examples.py); and its database's name."""
    if not 0 <= args.contention_limit <= 1:
        raise UserError(f"--contention-limit is a share of the machine's CPU, 0 to 1, not {args.contention_limit}")
    if args.from_examples:
        if args.db != DEFAULT_DB:
            raise UserError("pass either --db or --from-examples DIR, not both")
        from common.study.examples import ExampleTracker
        tracker = ExampleTracker(Path(args.from_examples))
        return Study(tracker, args.contention_limit), tracker.database
    if not Path(args.db).is_file():
        raise UserError(f"no database at {args.db}; run sweep.py (or train.py/evaluate.py) first, or pass --db")
    return Study(Tracker(args.db), args.contention_limit), args.db


def export_examples(study: Study, folder: str, database: str) -> int:
    from common.study.examples import export_examples
    counts = export_examples(study.tracker, Path(folder), database)
    print(f"wrote {counts['runs']} run(s), {counts['examples']} per-example row(s) and {counts['metrics']} "
          f"metric point(s) to {folder}; rebuild the report with `python report.py --from-examples {folder}`")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_config(ReportConfig, argv, __doc__.split("\n\n")[0])
    study, database = open_study(args)
    source = args.from_examples or args.db
    if args.suite and args.suite not in study.members:
        known = ", ".join(study.suites()) or "none"
        print(f"no runs in suite {args.suite!r} in {source} (suites: {known})", file=sys.stderr)
        return 1
    if args.export_examples:
        return export_examples(study, args.export_examples, database)
    if args.export:
        return export(study, args)
    if args.list:
        if not study.runs:
            print(f"no runs in {source} yet", file=sys.stderr)
            return 0
        print(list_runs(study, args.suite, args.status))
        return 0
    if not study.runs:
        print(f"no runs in {source} yet: run sweep.py (or train.py and evaluate.py) first", file=sys.stderr)
        return 1
    suites = [args.suite] if args.suite else study.suites()
    out = Path(args.output_dir or "reports")
    if args.readme:
        from common.study.summary import check_readme
        check_readme(Path(args.readme))
    given = sys.argv[1:] if argv is None else argv
    if args.from_examples:  # the report names the database its numbers came from, as the one made from it does
        from common.study.examples import database_argv
        given = database_argv(given, database)
    command = " ".join(["python report.py", *(shlex.quote(a) for a in given)])
    from common.study.document import write_report
    summary = write_report(study, suites, out, Path(database).name, figures=args.figures,
                           readme=Path(args.readme) if args.readme else None, command=command)
    if summary["configs"] == 0 and summary["rows"] == 0:
        print(f"no completed runs in {', '.join(suites)}; {out / 'RESULTS.md'} lists the failed and interrupted ones",
              file=sys.stderr)
        return 1
    print(f"wrote {out / 'RESULTS.md'}, model_comparison.csv/.json and figures for {len(suites)} suite(s)")
    return 0


if __name__ == "__main__":
    run_cli(main)

"""Turn the run tracker into a results report: tables, paired comparisons, power, Pareto fronts, figures.

    python report.py                                  # every suite in experiments.db -> reports/
    python report.py --db sweep.db --suite rank --out reports/rank
    python report.py --list [--suite rank] [--status failed]
    python report.py --export csv --out runs.csv      # all runs with their scores (Tracker.export)

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
import json
import shlex
import sys
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common.study import compare
from common.config import ReportConfig
from common.errors import UserError, run_cli
from common.options import parse_config
from common.study.rows import COST_KEYS, Cell, Metric, Row, Study, build_rows, metric_for
from common.tracker import Tracker

QUALITY_TABLES = [  # (title, columns)
    ("Quality on HumanEval", ["humaneval.pass@1", "humaneval.test_case_avg", "humaneval.syntax_ok", "humaneval.bleu",
                              "humaneval.chrf"]),
    ("Quality on held-out code", ["train.final_val_loss", "heldout.nll", "heldout.perplexity", "heldout.syntax_ok",
                                  "heldout.bleu", "heldout.chrf"]),
]
DIFFERENCE_KEYS = ["heldout.nll", "humaneval.test_case_avg", "humaneval.pass@1", "humaneval.syntax_ok",
                   "humaneval.chrf", "heldout.chrf"]


# ---------------------------------------------------------------------------- formatting

def fmt(value: float | None, metric: Metric, signed: bool = False) -> str:
    if value is None:
        return "—"
    if metric.percent:
        value *= 100
    if metric.key.endswith("trainable_params"):
        return f"{value:,.0f}"
    text = f"{value:+.{metric.digits}f}" if signed else f"{value:.{metric.digits}f}"
    if float(text) == 0:  # no "-0.0"
        text = text.replace("-", "+" if signed else "")
    return text


def fmt_cell(cell: Cell | None, metric: Metric) -> str:
    """`mean [low, high]`, with `sd x` (the seed spread) for several seeds."""
    if cell is None:
        return "—"
    text = fmt(cell.mean, metric)
    if cell.ci:
        text += f" [{fmt(cell.ci[0], metric)}, {fmt(cell.ci[1], metric)}]"
    if cell.std is not None:
        text += f" sd {fmt(cell.std, metric)}"
    return text


def fmt_difference(d: compare.Difference | None) -> str:
    """`+7.5 (0 vs 3, p=0.25)` for McNemar, `+2.1 [-1.0, +5.2]` for a bootstrap; `*` when beyond noise."""
    if d is None:
        return "—"
    metric = metric_for(d.key)
    text = fmt(d.value, metric, signed=True)
    if d.test == "McNemar":
        text += f" ({d.only_a} vs {d.only_b}, p={d.p_value:.2g})"
    elif d.low is not None:
        text += f" [{fmt(d.low, metric, True)}, {fmt(d.high, metric, True)}]"
    if d.test == "cluster bootstrap":
        text += " (seeds)"
    return text + (" *" if d.beyond_noise else "")


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    from tabulate import tabulate
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def compact_ids(ids: list[int]) -> str:
    ids = sorted(set(ids))
    parts, start = [], None
    for i, x in enumerate(ids):
        if start is None:
            start = x
        if i + 1 == len(ids) or ids[i + 1] != x + 1:
            parts.append(str(start) if start == x else f"{start}-{x}")
            start = None
    return ",".join(parts)


def seeds_text(row: Row) -> str:
    if row.kind == "base":
        return "—"
    seeds = [str(s) for s in row.seeds if s is not None]
    return f"{len(row.seeds)} ({','.join(seeds)})" if len(row.seeds) > 1 else (seeds[0] if seeds else "1")


def title_with_unit(metric: Metric) -> str:
    return metric.title + (" (%)" if metric.percent and "%" not in metric.title else "")


# ---------------------------------------------------------------------------- tables

def cost_table(rows: list[Row], bases: list[Row]) -> str:
    keys = [k for k in COST_KEYS if any(r.get(k) for r in rows + bases)]
    body = []
    for r in bases + rows:
        cells = []
        for k in keys:
            pct = r.get("train.trainable_pct") if k == "train.trainable_params" else None
            cells.append(fmt(r.mean(k), metric_for(k)) + (f" ({pct.mean:.3f}%)" if pct else ""))
        body.append([r.label, seeds_text(r)] + cells)
    return md_table(["config", "seeds"] + [metric_for(k).title for k in keys], body)


def quality_table(study: Study, rows: list[Row], bases: list[Row], keys: list[str]) -> str:
    keys = [k for k in keys if any(r.get(k) for r in rows + bases)]
    best = {k: compare.best_row(study, rows, k) for k in keys}
    body = [[r.label, seeds_text(r)] + [(f"**{fmt_cell(r.get(k), metric_for(k))}**" if best[k] is r
                                         else fmt_cell(r.get(k), metric_for(k))) for k in keys]
            for r in bases + rows]
    return md_table(["config", "seeds"] + [title_with_unit(metric_for(k)) for k in keys], body)


def difference_table(pairs: list[tuple[Row, Row | None]], diffs: dict[int, dict[str, compare.Difference]]) -> str:
    """One row per config: B - A on each compared metric (A = the reference or the base)."""
    keys = [k for k in DIFFERENCE_KEYS if any(k in d for d in diffs.values())]
    headers = ["config", "against"] + [f"Δ {title_with_unit(metric_for(k))}" for k in keys]
    body = [[b.label, a.label] + [fmt_difference(diffs[i].get(k)) for k in keys]
            for i, (b, a) in enumerate(pairs) if a is not None and diffs[i]]
    return md_table(headers, body) if body else ""


def differences_section(study: Study, suite: str, rows: list[Row], bases: list[Row]) -> tuple[list[str], list]:
    """The two difference tables (vs reference, vs base) and every Difference computed, for the power."""
    reference = compare.reference_row(rows)
    lines, every = [], []
    for title, pairs in (
            (f"vs the reference config ({reference.label})" if reference else "", [(r, reference) for r in rows
                                                                                   if r is not reference]),
            ("vs the base model", [(r, compare.matching_base(study, r, bases)) for r in rows])):
        if not title:
            continue
        diffs = {i: compare.differences(study, a, b) if a else {} for i, (b, a) in enumerate(pairs)}
        every += [d for ds in diffs.values() for d in ds.values()]
        table = difference_table(pairs, diffs)
        if table:
            lines += [f"#### Paired differences {title}", "", table, ""]
    if lines:
        lines = ["### Paired differences", "",
                 "Config minus the comparison, on the same problems. pass@1 and syntax ok: exact McNemar test, "
                 "shown as (problems only the comparison passes vs only the config passes, p); chrF (mean "
                 "per-problem sentence chrF), test-case average and held-out NLL per token (token-weighted): "
                 "95% paired bootstrap CI; (seeds): cluster bootstrap over seeds x problems. "
                 "* = beyond noise (p < 0.05, or the CI excludes 0); — = not paired "
                 "(different problems or protocol, or no per-problem records).", ""] + lines
    return lines, every


def power_lines(power: compare.Power | None) -> list[str]:
    if power is None:
        return []

    def pts(x: float) -> str:
        return f"{100 * x:.1f}"
    seen = (f"a difference of {pts(power.detectable)} points with 80% power" if power.detectable else
            "no difference up to that discordance with 80% power")
    needed = "; ".join(f"{pts(t)} points needs about {n} problems" if n else f"{pts(t)} points needs over 5000"
                       for t, n in power.needed.items())
    return ["### What this design can detect", "",
            f"With n = {power.n} problems and the observed discordance of {pts(power.discordance)}% (the share of "
            f"problems on which two configurations disagree), an exact McNemar test at α = 0.05 detects {seen}. "
            f"Even with every disagreement in one direction, {power.n} problems cannot detect less than "
            f"{pts(power.floor)} points at 80% power, and p < 0.05 needs at least {power.min_flips} one-way flips "
            f"({pts(power.min_flips / power.n)} points). So a pass@1 difference reported as within noise is not "
            f"evidence that two configurations are equal: smaller real differences would mostly go undetected. "
            f"At this discordance, detecting {needed}.", ""]


def pareto_lines(study: Study, rows: list[Row], quality: str, quality_name: str) -> list[str]:
    metric = metric_for(quality)
    lines = ["### Pareto front", "", f"Quality = {quality_name}.", ""]
    for cost, cost_name in (("train.peak_mb", "peak memory"), ("train.wall_seconds", "train time")):
        front = compare.pareto(rows, quality, cost)
        if front:
            lines.append(f"- vs {cost_name}: " + "; ".join(
                f"{r.label} ({metric.title} {fmt(r.mean(quality), metric)}{'%' if metric.percent else ''}, "
                f"{fmt(r.mean(cost), metric_for(cost))} {'MB' if cost.endswith('mb') else 's'})" for r in front))
    budgets = compare.budgets(study, rows, quality)
    if not budgets:
        return lines + [""]
    lines += ["", "### Recommendation by memory budget", "",
              f"Budgets are the measured peak memories rounded up; each names the best configuration by "
              f"{quality_name.split(' (')[0]} whose peak fits. A configuration whose training recorded no "
              f"measured peak is placed by its predicted peak (common/train/estimate.py), and says so.", "",
              f"- below {budgets[0].text}: none of the measured configurations fits"]
    for b in budgets:
        peak = fmt(b.pick.mean("train.peak_mb"), metric_for("train.peak_mb"))
        source = " (predicted: no measured peak)" if b.pick.get("train.peak_is_predicted") else ""
        line = (f"- up to {b.text}: **{b.pick.label}** — {metric.title} {fmt_cell(b.pick.get(quality), metric)}"
                f"{'%' if metric.percent else ''}, peak {peak} MB{source}")
        if b.previous is not None:
            line += {None: f"; no CI, so whether it beats {b.previous.label} beyond noise is unknown",
                     False: f"; within noise of {b.previous.label}, so the extra memory buys no measurable gain",
                     True: f"; better than {b.previous.label} beyond noise"}[b.separated]
        lines.append(line)
    return lines + [""]


# ---------------------------------------------------------------------------- sections

def failure_table(study: Study, suite: str) -> list[list[str]]:
    body = []
    for run_id in sorted(study.members[suite]):
        run = study.runs[run_id]
        if run["status"] in ("completed", "skipped"):  # skipped runs have their own table
            continue
        done = [r["id"] for r in study.runs.values() if r["name"] == run["name"] and r["kind"] == run["kind"]
                and r["status"] == "completed"]
        error = " ".join((run["error"] or "").split())
        body.append([str(run_id), run["kind"], run["name"], run["status"], error[:160] or "—",
                     compact_ids(done) if done else "—"])
    return body


def environment_lines(study: Study, run_ids: list[int]) -> list[str]:
    combos: dict[str, list[int]] = defaultdict(list)
    for run_id in run_ids:
        run = study.runs[run_id]
        hw = run["hardware"] or {}
        hardware = ", ".join(x for x in [
            f"GPU {hw['gpu']} x{hw.get('gpu_count', 1)} ({hw.get('gpu_memory_gb')} GB)" if hw.get("gpu") else "",
            f"CPU {hw.get('cpu', '?')} ({hw.get('cpu_count', '?')} cores"
            + (f", {hw['cpu_kind']}" if hw.get("cpu_kind") else "") + f", {hw.get('memory_gb', '?')} GB RAM)",
            hw.get("platform", "")] if x)
        versions = ", ".join(f"{k} {v}" for k, v in sorted((run["versions"] or {}).items()))
        sandbox = f"; generated code ran under {run['config']['isolation']}" \
            if run["kind"] == "eval" and run["config"].get("isolation") else ""
        combos[f"git {run['git_commit'] or 'unknown'}; {hardware}; {versions or 'versions unknown'}{sandbox}"].append(
            run_id)
    lines = [f"- runs {compact_ids(ids)}: {key}" for key, ids in sorted(combos.items(), key=lambda kv: min(kv[1]))]
    from common.model.resolve import EMBEDDED
    models = sorted({study.runs[i]["config"].get("model") for i in run_ids} & set(EMBEDDED))
    return lines + [f"- model {m}: {EMBEDDED[m].description}" for m in models]


def prediction_lines(study: Study, suite: str) -> list[str]:
    """train.py's memory and step-time prediction (common/train/estimate.py) next to what each run measured;
    runs a sweep skipped as predicted over its --budget-mb."""
    from common.train.predictions import predicted_vs_measured, skipped_runs

    def pct(x: float | None) -> str:
        return "—" if x is None else f"{100 * x:+.0f}%"

    lines = []
    rows = [r for r in predicted_vs_measured(study.tracker) if r["run_id"] in study.members[suite]]
    if rows:
        lines += ["### Predicted vs measured", "", md_table(
            ["run", "predicted peak MB", "measured peak MB", "error", "predicted step s", "measured step s", "error"],
            [[r["name"], f"{r['predicted_peak_mb']:.0f}",
              f"{r['measured_peak_mb']:.0f}" if r["measured_peak_mb"] else "—", pct(r["peak_error"]),
              f"{r['predicted_step_s']:.2f}" if r["predicted_step_s"] else "—",
              f"{r['measured_step_s']:.2f}" if r["measured_step_s"] else "—", pct(r["step_error"])] for r in rows]),
            ""]
    skipped = [r for r in skipped_runs(study.tracker) if r["run_id"] in study.members[suite]]
    if skipped:
        lines += ["### Skipped for the memory budget", "", md_table(
            ["run", "predicted peak MB", "reason"],
            [[r["name"], f"{r['predicted_peak_mb']:.0f}" if r["predicted_peak_mb"] else "—", r["reason"] or ""]
             for r in skipped]), ""]
    return lines


def data_lines(study: Study, run_ids: list[int]) -> list[str]:
    """Per training data and split: examples used and what cleaning removed, by reason (train.py's run config)."""
    combos: dict[str, list[int]] = defaultdict(list)
    for run_id in run_ids:
        c = study.runs[run_id]["config"]
        if study.runs[run_id]["kind"] != "train" or "data_dropped" not in c:
            continue
        removed = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(c["data_dropped"].items()) if n)
        split = f"split seed {c.get('split_seed', 0)}, grouped by {c.get('group_key') or 'source file'}" \
            if c.get("dataset") == "stdlib" else f"split seed {c.get('split_seed', 0)}, group key " \
            f"{c.get('group_key') or 'none'}"
        combos[f"{c.get('dataset_source', c.get('dataset'))} ({split}): {c.get('train_examples')} train / "
               f"{c.get('val_examples')} validation examples used; removed before splitting: "
               f"{removed or 'nothing'}"].append(run_id)
    return [f"- runs {compact_ids(ids)}: {key}" for key, ids in sorted(combos.items(), key=lambda kv: min(kv[1]))]


def examples_lines(study: Study, rows: list[Row], bases: list[Row], quality: str | None) -> list[str]:
    picked = compare.pick_examples(study, rows, bases, quality)
    if picked is None:
        return []
    out = ["### Before and after", "",
           f"Base model (eval run {picked.base_eval}) against the best configuration by {metric_for(quality).title}, "
           f"{picked.row.label} (eval run {picked.adapter_eval}): up to 3 problems where the outcome differs, one "
           "HumanEval problem both fail, one held-out example.", ""]
    for (bench, task), a, b in picked.pairs:
        out += [f"#### {bench} {task}", "",
                f"Result: base **{b.get('result') or '—'}**, adapter **{a.get('result') or '—'}**", "",
                "Prompt:", "", _block(a.get("prompt") or b.get("prompt") or "", tail=True), "",
                "Base model output:", "", _block(b.get("generation") or ""), "",
                f"Adapter output ({picked.row.label}):", "", _block(a.get("generation") or ""), ""]
        if a.get("reference") and a.get("result") != "passed":
            out += ["Reference:", "", _block(a["reference"]), ""]
    return out


def _block(text: str, tail: bool = False, max_lines: int = 20) -> str:
    lines = text.rstrip("\n").splitlines() or [""]
    if len(lines) > max_lines:
        lines = (["..."] + lines[-max_lines:]) if tail else (lines[:max_lines] + ["..."])
    return "````python\n" + "\n".join(line.replace("````", "` ` ` `") for line in lines) + "\n````"


def suite_section(study: Study, suite: str, out: Path, figures: bool) -> tuple[list[str], list[Row]]:
    rows, bases = build_rows(study, suite)
    lines = [f"## Suite `{suite}`", ""]
    if not rows and not bases:
        lines += ["No completed runs in this suite.", ""]
    else:
        n_seeds = max((len(r.seeds) for r in rows), default=0)
        lines += [f"{len(rows)} trained configuration(s)" + (f", up to {n_seeds} seeds each" if n_seeds > 1 else "")
                  + f", {len(bases)} base-model evaluation(s). Brackets: 95% CIs (pass and compile rates from one "
                  "sample per problem: Wilson; "
                  "several seeds: cluster bootstrap over seeds x problems); sd: the spread across seeds. "
                  "Bold: best in its column beyond noise.", "",
                  "### Cost", "", cost_table(rows, bases), "",
                  "Peak memory: torch max allocated on GPU runs, peak process RSS on CPU runs. "
                  "Train time is wall-clock including evaluation during training.", ""]
        for title, keys in QUALITY_TABLES:
            if any(r.get(k) for r in rows + bases for k in keys):
                lines += [f"### {title}", "", quality_table(study, rows, bases, keys), ""]
        section, diffs = differences_section(study, suite, rows, bases)
        lines += section + power_lines(compare.suite_power(diffs))
        quality, quality_name = compare.quality_metric(rows, bases)
        if quality and rows:
            lines += pareto_lines(study, rows, quality, quality_name)
        lines += examples_lines(study, rows, bases, quality)
        if figures:
            from common.study.figures import suite_figures
            written = suite_figures(study, suite, rows, bases, quality, out)
            if written:
                lines += ["### Figures", ""] + [f"![{title}]({path.name})" for title, path in written] + [""]
    failures = failure_table(study, suite)
    if failures:
        lines += ["### Failed, interrupted and running runs", "",
                  md_table(["id", "kind", "name", "status", "error", "completed run(s) of that name"], failures), ""]
    env_ids = sorted(i for i in study.members[suite] if study.runs[i]["status"] == "completed")
    lines += prediction_lines(study, suite)
    data = data_lines(study, env_ids)
    if data:
        lines += ["### Data", "", *data, ""]
    if env_ids:
        lines += ["### Environment", "", *environment_lines(study, env_ids), ""]
    return lines, bases + rows


# ---------------------------------------------------------------------------- outputs

def comparison_records(study: Study, rows: list[Row]) -> list[dict[str, Any]]:
    keys = COST_KEYS + ["train.trainable_pct"] + [k for _, ks in QUALITY_TABLES for k in ks]
    records = []
    for r in rows:
        evaluated = study.runs[r.eval_ids[-1]]["config"] if r.eval_ids else {}
        rec: dict[str, Any] = {"suite": r.suite, "config": r.label, "kind": r.kind, "n_seeds": len(r.seeds),
                               "model": evaluated.get("model"), "protocol": evaluated.get("protocol"),
                               "seeds": ",".join(str(s) for s in r.seeds), "train_run_ids": compact_ids(r.train_ids),
                               "eval_run_ids": compact_ids(r.eval_ids)}
        for key in [k for k in keys if r.get(k)]:
            cell = r.get(key)
            rec[key] = cell.mean
            if cell.std is not None:
                rec[f"{key}.std"] = cell.std
            if cell.ci:
                rec[f"{key}.ci_low"], rec[f"{key}.ci_high"] = cell.ci
        records.append(rec)
    return records


def write_comparison(records: list[dict[str, Any]], out: Path) -> None:
    import csv
    columns: list[str] = []
    for rec in records:
        columns += [k for k in rec if k not in columns]
    with open(out / "model_comparison.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for rec in records:
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in rec.items()})
    (out / "model_comparison.json").write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")


def write_report(study: Study, suites: list[str], out: Path, db_name: str, figures: bool = True,
                 readme: Path | None = None, command: str = "python report.py") -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    from common.study.reproduce import direct_commands, reproduction_sentence
    from common.study.summary import summary_entries, summary_lines, update_readme

    lines = ["# LoRA / QLoRA study results", "",
             f"Generated by report.py from `{db_name}`: {len(study.runs)} run(s) in the database, "
             f"suite(s) {', '.join(f'`{s}`' for s in suites)}. {reproduction_sentence(study, suites, command)}", "",
             *direct_commands(study, suites)]
    entries = summary_entries(study, suites)
    if entries:
        lines += ["## Summary", "", *summary_lines(entries)]
    (out / "summary.json").write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
    # A pre-registration kept beside the results (written before the runs) is quoted unchanged, then what the
    # study did differently from it, so the registered text itself never needs editing.
    for name in ("PREREGISTRATION.md", "DEVIATIONS.md"):
        if (out / name).is_file():
            lines += [(out / name).read_text().rstrip("\n"), ""]
    all_rows: list[Row] = []
    for suite in suites:
        section, rows = suite_section(study, suite, out, figures)
        lines += section
        all_rows += rows
    (out / "RESULTS.md").write_text("\n".join(lines).rstrip("\n") + "\n")
    records = comparison_records(study, all_rows)
    write_comparison(records, out)
    if readme:   # from the file just written, so README quotes exactly what the committed JSON holds
        update_readme(readme, entries, json.loads((out / "model_comparison.json").read_text()))
    return {"rows": len(all_rows), "configs": sum(1 for r in all_rows if r.kind == "adapter")}


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


def main(argv: list[str] | None = None) -> int:
    args = parse_config(ReportConfig, argv, __doc__.split("\n\n")[0])
    if not Path(args.db).is_file():
        raise UserError(f"no database at {args.db}; run sweep.py (or train.py/evaluate.py) first, or pass --db")
    study = Study(Tracker(args.db))
    if args.suite and args.suite not in study.members:
        known = ", ".join(study.suites()) or "none"
        print(f"no runs in suite {args.suite!r} in {args.db} (suites: {known})", file=sys.stderr)
        return 1
    if args.export:
        return export(study, args)
    if args.list:
        if not study.runs:
            print(f"no runs in {args.db} yet", file=sys.stderr)
            return 0
        print(list_runs(study, args.suite, args.status))
        return 0
    if not study.runs:
        print(f"no runs in {args.db} yet: run sweep.py (or train.py and evaluate.py) first", file=sys.stderr)
        return 1
    suites = [args.suite] if args.suite else study.suites()
    out = Path(args.output_dir or "reports")
    if args.readme:
        from common.study.summary import check_readme
        check_readme(Path(args.readme))
    command = " ".join(["python report.py", *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))])
    summary = write_report(study, suites, out, Path(args.db).name, figures=args.figures,
                           readme=Path(args.readme) if args.readme else None, command=command)
    if summary["configs"] == 0 and summary["rows"] == 0:
        print(f"no completed runs in {', '.join(suites)}; {out / 'RESULTS.md'} lists the failed and interrupted ones",
              file=sys.stderr)
        return 1
    print(f"wrote {out / 'RESULTS.md'}, model_comparison.csv/.json and figures for {len(suites)} suite(s)")
    return 0


if __name__ == "__main__":
    run_cli(main)

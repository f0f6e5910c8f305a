"""The results document: RESULTS.md, model_comparison.csv/.json and summary.json of the suites in a database.

    write_report(study, suites, out, db_name, figures=True, readme=None, command="python report.py")

Per suite: one table per question (cost; quality on each benchmark with 95% CIs), paired differences against
the suite's reference config and the base model with their tests, what the design could detect, Pareto fronts,
a recommendation per memory budget, before/after examples, failed runs, the environment. The numbers come from
common/study/rows.py and common/study/compare.py; this module only arranges them.
"""
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from common.study import compare
from common.study.markdown import (QUALITY_TABLES, block, compact_ids, cost_cell, cost_table, difference_table,
                                   fmt, fmt_cell, md_table, quality_table)
from common.study.rows import COST_KEYS, Row, Study, build_rows, metric_for
from common.study.serving import serving_lines
from common.study.summary import CONTENDED_MARK, budget_why

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
        table = difference_table(pairs, diffs, {i: compare.quant_caveat(study, a, b) for i, (b, a) in enumerate(pairs)
                                                if a is not None})
        if table:
            lines += [f"#### Paired differences {title}", "", table, ""]
    if lines:
        lines = ["### Paired differences", "",
                 "Config minus the comparison, on the same problems; each cell names its test, with its raw p and "
                 "its Holm-adjusted p (Holm: within the suite's comparisons of that metric). pass@1 and syntax ok: "
                 "exact McNemar with one evaluation a side, shown as (problems only the comparison passes vs only "
                 "the config passes), else the exact sign-flip permutation test on per-problem pass rates averaged "
                 "over seeds; chrF (mean per-problem sentence chrF), test-case average and held-out NLL per token "
                 "(token-weighted): z, a z test with the standard error of a paired bootstrap over seeds x problems "
                 "(held-out references: seeds x their split groups), its 95% CI in brackets; stored: evaluate.py's "
                 "delta, without per-problem records, never starred. * = Holm p < 0.05 with at least 2 seeds on "
                 f"every trained side; † = {compare.ONE_SEED}, never starred; — = not paired (different problems "
                 "or protocol, or no per-problem records).", ""] + lines
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
    """Pareto fronts on uncontended costs, the configs left out of them, and the answer per memory budget."""
    metric = metric_for(quality)
    lines = ["### Pareto front", "", f"Quality = {quality_name}.", ""]
    for cost, cost_name in (("train.peak_mb", "peak memory"), ("train.wall_seconds", "train time")):
        front = compare.pareto(rows, quality, cost)
        if front:
            lines.append(f"- vs {cost_name}: " + "; ".join(
                f"{r.label} ({metric.title} {fmt(r.mean(quality), metric)}{'%' if metric.percent else ''}, "
                f"{cost_cell(r, cost)} {'MiB' if cost.endswith('mb') else 's'})" for r in front))
    lines += left_out_lines(rows)
    budgets = compare.budgets(study, rows, quality)
    if not budgets:
        return lines + [""]
    lines += ["", "### Recommendation by memory budget", "",
              f"Budgets are the uncontended peak memories on the front, rounded up. Each names the best configuration "
              f"by {quality_name.split(' (')[0]} that fits when its gain over the cheapest that fits is a finding (the "
              f"paired test, Holm-adjusted with the suite's comparisons), else the cheapest: equivalent within D, the "
              f"smallest difference that test detects at 80% power. A configuration whose training recorded no "
              f"measured peak is placed by its predicted peak (common/train/estimate.py), and says so.", "",
              f"- below {budgets[0].text}: none of the measured configurations fits"]
    for b in budgets:
        source = " (predicted: no measured peak)" if b.pick.get("train.peak_is_predicted") else ""
        lines.append(f"- up to {b.text}: **{b.pick.label}** — {metric.title} {fmt_cell(b.pick.get(quality), metric)}"
                     f"{'%' if metric.percent else ''}, peak {cost_cell(b.pick, 'train.peak_mb')} MiB{source}; "
                     f"{budget_why(b, quality)}")
    return lines + [""]


def left_out_lines(rows: list[Row]) -> list[str]:
    """The sentence naming the configs whose costs cannot be ranked: every run contended, or of unknown load."""
    out = [f"{r.label} ({r.cost_excluded(k)})" for r in rows for k in ("train.peak_mb",) if r.cost_excluded(k)]
    if not out:
        return []
    return ["", f"Left out of the Pareto fronts and the memory budgets, for want of an uncontended run to rank its "
                f"cost by: {', '.join(out)}."]


def load_sentence(study: Study) -> str:
    """How the machine's load decided which runs' costs count."""
    if not study.load_recorded:
        return ("No run in this database recorded the machine's load (other processes' CPU share), so every run is "
                "treated as uncontended: a time or peak may include other processes' load.")
    return (f"Costs (mean, sd over seeds) and every cost ranking use uncontended runs only: a run is contended "
            f"({CONTENDED_MARK}) when other processes used more than {study.contention_limit:.0%} of the machine's CPU "
            f"capacity while it ran; a run that recorded no load counts as \"load not recorded\" and is left out "
            f"too, since this database records the load of others.")


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
    from common.study.budget import predicted_vs_measured, skipped_runs

    def pct(x: float | None) -> str:
        return "—" if x is None else f"{100 * x:+.0f}%"

    lines = []
    rows = [r for r in predicted_vs_measured(study.tracker) if r["run_id"] in study.members[suite]]
    if rows:
        lines += ["### Predicted vs measured", "", md_table(
            ["run", "predicted peak MiB", "measured peak MiB", "error", "predicted step s", "measured step s", "error"],
            [[r["name"], f"{r['predicted_peak_mb']:.0f}",
              f"{r['measured_peak_mb']:.0f}" if r["measured_peak_mb"] else "—", pct(r["peak_error"]),
              f"{r['predicted_step_s']:.2f}" if r["predicted_step_s"] else "—",
              f"{r['measured_step_s']:.2f}" if r["measured_step_s"] else "—", pct(r["step_error"])] for r in rows]),
            ""]
    skipped = [r for r in skipped_runs(study.tracker) if r["run_id"] in study.members[suite]]
    if skipped:
        lines += ["### Skipped for the memory budget", "", md_table(
            ["run", "predicted peak MiB", "reason"],
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
                "Prompt:", "", block(a.get("prompt") or b.get("prompt") or "", tail=True), "",
                "Base model output:", "", block(b.get("generation") or ""), "",
                f"Adapter output ({picked.row.label}):", "", block(a.get("generation") or ""), ""]
        if a.get("reference") and a.get("result") != "passed":
            out += ["Reference:", "", block(a["reference"]), ""]
    return out


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
                  "Train time is wall-clock including evaluation during training. " + load_sentence(study), ""]
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


def comparison_records(study: Study, rows: list[Row]) -> list[dict[str, Any]]:
    keys = COST_KEYS + ["train.trainable_pct"] + [k for _, ks in QUALITY_TABLES for k in ks]
    records = []
    for r in rows:
        evaluated = study.runs[r.eval_ids[-1]]["config"] if r.eval_ids else {}
        rec: dict[str, Any] = {"suite": r.suite, "config": r.label, "kind": r.kind, "n_seeds": len(r.seeds),
                               "model": evaluated.get("model"), "protocol": evaluated.get("protocol"),
                               "seeds": ",".join(str(s) for s in r.seeds), "train_run_ids": compact_ids(r.train_ids),
                               "eval_run_ids": compact_ids(r.eval_ids)}
        if r.runs_with_load("contended"):
            rec["contended_runs"] = compact_ids(r.runs_with_load("contended"))
        for key in [k for k in keys if r.get(k)]:
            if r.cost_excluded(key):
                rec[f"{key}.excluded"] = r.cost_excluded(key)
                continue
            cell = r.cost(key)
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


def edition_files(out: Path) -> list[Path]:
    """The latest edition's registration and deviations in `out`: PREREGISTRATION-N.md / DEVIATIONS-N.md with the
    highest N, else the unnumbered first files. Earlier editions' files stay beside them, unquoted."""
    numbers = [p.stem.removeprefix("PREREGISTRATION-") for p in out.glob("PREREGISTRATION-*.md")]
    editions = [int(n) for n in numbers if n.isdigit()]
    suffix = f"-{max(editions)}" if editions else ""
    return [p for p in (out / f"PREREGISTRATION{suffix}.md", out / f"DEVIATIONS{suffix}.md") if p.is_file()]


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
    # Q5 of the study (inference speed as served) is a side-by-side bench, not a run: its copy beside the results
    serving = serving_lines(out / "serve_speed.json")
    lines += [*serving, ""] if serving else []
    (out / "summary.json").write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
    # A pre-registration kept beside the results (written before the runs) is quoted unchanged, then what the
    # study did differently from it, so the registered text itself never needs editing.
    for path in edition_files(out):
        lines += [path.read_text().rstrip("\n"), ""]
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

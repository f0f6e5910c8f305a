"""The one-screen summary of a study: each config against its suite's reference and its base, on the primary metrics.

report.py writes it at the top of RESULTS.md and, as data, to results/summary.json; README quotes the
table (docs/study.md quotes it and the per-config table, docs/evaluation.md the base models'), and
tests/test_results.py re-renders them from the JSON to check that README, docs and RESULTS.md still say
what the data says. Verdicts are common/study/compare.py's: seed-aware tests, Holm within each suite's
family of one metric, degenerate comparisons apart.

    entries = summary_entries(study, suites)     # data: one per (config, comparison), then one per memory budget
                                                 # (kind "budget": the config to train within it, and why)
    table = summary_table(entries)               # markdown, the same text every time for the same data
    update_readme(Path("README.md"), entries, records)   # report.py --readme: the quoted tables, re-rendered
                                                         # in README.md and in every docs/*.md beside it
"""
import re
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.study import compare
from common.study.rows import CONTENTION_LIMIT, Row, Study, build_rows, metric_for

# Primary first (pre-registered: held-out NLL per token), then the graded and the strict execution metric.
SUMMARY_KEYS = ["heldout.nll", "humaneval.test_case_avg", "humaneval.pass@1"]
_HEADERS = {"heldout.nll": "Δ NLL/token", "humaneval.test_case_avg": "Δ tests passed (pp)",
            "humaneval.pass@1": "Δ pass@1 (pp)"}
_SHORT_TEST = {"McNemar": "McNemar", "sign-flip permutation": "sign-flip", "bootstrap z": "z", "stored": "stored"}


def summary_entries(study: Study, suites: list[str]) -> list[dict[str, Any]]:
    """Every adapter config vs its base model, and vs its suite's reference config when it has one (the
    reference first), with the verdicts of the suite's families; then each suite's answer per memory budget."""
    entries = []
    for suite in suites:
        for row, other, versus in compare.suite_pairs(study, suite):
            diffs = compare.differences(study, other, row)
            found = {k: _as_dict(diffs[k]) for k in SUMMARY_KEYS if k in diffs}
            if found:
                entries.append({"suite": suite, "config": row.label, "versus": other.label, "kind": versus,
                                "seeds": f"{len(row.seeds) or 1} vs {len(other.seeds) or 1}"
                                if other.kind == "adapter" else f"{len(row.seeds) or 1}",
                                "runs": [other.eval_ids, row.eval_ids], "differences": found,
                                "caveat": compare.quant_caveat(study, other, row), "params": _params(study, row)})
    for suite in suites:
        entries += budget_entries(study, suite)
    return entries


def _params(study: Study, row: Row) -> int | None:
    """The trained model's total parameter count, as train.py recorded it."""
    score = study.score(row.train_ids[0], "train.total_params") if row.train_ids else None
    return int(score["value"]) if score else None


def budget_entries(study: Study, suite: str) -> list[dict[str, Any]]:
    """The suite's answer per memory budget (compare.budgets), as summary entries of kind "budget"."""
    rows, bases = build_rows(study, suite)
    quality, _ = compare.quality_metric(rows, bases)
    if not quality or not rows:
        return []
    return [{"suite": suite, "kind": "budget", "budget": b.text, "config": b.pick.label, "why": budget_why(b, quality),
             "runs": [b.cheapest.eval_ids, b.best.eval_ids], "differences": {}}
            for b in compare.budgets(study, rows, quality)]


def budget_why(b: compare.Budget, quality: str) -> str:
    """Why the budget's pick: the best is better than the cheapest beyond noise (the test, its p and Holm), or
    the two are equivalent within D, the smallest difference that test detects at 80% power. No finding is not
    equivalence where the test could not judge (one seed) or the gap exceeds D: the cheapest, saying so."""
    name = metric_for(quality).title.split(" (")[0]
    if b.cheapest is b.best:
        return f"the cheapest that fits is also the best by {name}"
    if b.verdict is None:
        return (f"no paired test of {name} against {b.best.label} (the best by it), so no finding: take the "
                f"cheapest; the difference the design detects is unknown")
    d = _as_dict(b.verdict)
    if b.verdict.beyond_noise:
        return (f"better than {b.cheapest.label} (the cheapest that fits) on {name} beyond noise: "
                f"{cell(quality, d)}" + (f" {b.caveat}" if b.caveat else ""))
    against = f"{b.best.label}, the best by {name}, vs it: {cell(quality, d)}"
    if not b.verdict.seed_aware:
        return f"no verdict ({against}; {compare.ONE_SEED}), so take the cheapest until more seeds tell them apart"
    if b.margin is None or abs(b.verdict.value) > b.margin:
        return f"no finding after the family correction ({against}), though not shown equivalent: take the cheapest"
    return f"equivalent within D = {margin_text(b.margin, quality)} ({against}), take the cheapest"


def margin_text(value: float, key: str) -> str:
    """D in the metric's unit: `0.050 nats/token`, `10.5 points`."""
    if key.endswith(".nll"):
        return f"{value:.3f} nats/token"
    metric = metric_for(key)
    return f"{100 * value:.1f} points" if metric.percent else f"{value:.{metric.digits}f}"


def _as_dict(d: compare.Difference) -> dict[str, Any]:
    out: dict[str, Any] = {"value": d.value, "low": d.low, "high": d.high, "test": d.test,
                           "beyond_noise": d.beyond_noise, "n": d.n, "p_value": d.p_value,
                           "p_adjusted": d.p_adjusted, "q_value": d.q_value, "family_size": d.family_size,
                           "seed_aware": d.seed_aware, "degenerate": d.degenerate, "unit": d.unit,
                           "detectable": d.detectable, "note": d.note}
    if d.test == "McNemar":
        out.update(only_versus=d.only_a, only_config=d.only_b)
    if d.seed_pair_p:
        out["mcnemar_per_seed_pair"] = list(d.seed_pair_p)
    return out


def _p(p: float) -> str:
    return f"={p:.2g}" if p >= 0.001 else "<0.001"


def cell(key: str, d: dict[str, Any] | None) -> str:
    """`-0.012 [-0.020, -0.004] z p=0.003, Holm=0.02 *`: the difference (pass@1 and test-case average in
    percentage points), its interval or McNemar counts, the test's name, raw and Holm-adjusted p; `*` when
    beyond noise, `†` when a trained side has one seed; degenerate comparisons say why instead."""
    if d is None:
        return "—"
    scale, digits = (1.0, 3) if key.endswith(".nll") else (100.0, 1)
    text = f"{scale * d['value']:+.{digits}f}"
    if d.get("degenerate"):
        return f"{text} ({d['degenerate']})"
    if d["test"] == "McNemar":
        text += f" ({d['only_versus']} vs {d['only_config']})"
    elif d["low"] is not None:
        text += f" [{scale * d['low']:+.{digits}f}, {scale * d['high']:+.{digits}f}]"
    return text + verdict_text(d["test"], d.get("p_value"), d.get("p_adjusted"), d.get("seed_aware"),
                               d["beyond_noise"])


def verdict_text(test: str, p_value: float | None, p_adjusted: float | None, seed_aware: bool | None,
                 beyond_noise: bool | None) -> str:
    """` z p=0.003, Holm=0.02 *`: the test's short name, its raw and Holm-adjusted p, `†` when a trained side has
    one seed (seed variation not measured, never starred), `*` when beyond noise. The report's difference
    tables (common/study/markdown.py) print the same after their own numbers."""
    text = f" {_SHORT_TEST.get(test, test)}"
    if p_value is not None:
        text += f" p{_p(p_value)}" + (f", Holm{_p(p_adjusted)}" if p_adjusted is not None else "")
    if test != "stored" and not seed_aware:
        text += " †"
    return text + (" *" if beyond_noise else "")


def summary_table(entries: list[dict[str, Any]]) -> str:
    """The comparisons' table, then the answer per memory budget and the model sizes nothing is generalised past:
    the block README quotes. A finding about quantization carries its limit in its own cell."""
    header = ["suite", "config", "vs", "seeds", *(_HEADERS[k] for k in SUMMARY_KEYS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in [e for e in entries if e.get("kind") != "budget"]:
        cells = [e["suite"], e["config"], e["versus"], e["seeds"],
                 *(cell(k, e["differences"].get(k)) + _caveat(e, e["differences"].get(k)) for k in SUMMARY_KEYS)]
        lines.append("| " + " | ".join(cells) + " |")
    answers = [f"- For {e['budget']} (suite {e['suite']}): {e['config']} - {e['why']}"
               for e in entries if e.get("kind") == "budget"]
    if answers:
        lines += ["", "What to train within a memory budget (peak memory of uncontended runs): the best configuration "
                  "by the suite's quality metric that fits, when it beats the cheapest that fits beyond noise (its "
                  "test, Holm-adjusted with the suite's comparisons); else the cheapest, equivalent within D, the "
                  "smallest difference that test detects at 80% power.", "", *answers]
    return "\n".join(lines + scope_lines(entries))


def _caveat(entry: dict[str, Any], d: dict[str, Any] | None) -> str:
    return f" {entry['caveat']}" if d is not None and d["beyond_noise"] and entry.get("caveat") else ""


def scope_lines(entries: list[dict[str, Any]]) -> list[str]:
    """Once: the model sizes the study trained, past which nothing here is generalised."""
    sizes = sorted({e["params"] for e in entries if e.get("params")})
    if not sizes:
        return []
    return ["", f"Nothing here is generalised past the model sizes studied: "
                f"{' / '.join(params_text(n) for n in sizes)} parameters."]


def params_text(n: int) -> str:
    """`135M`, `1.2B`, `900K`: a parameter count as people say it."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{unit}" if value >= 10 else f"{value:.1f}".rstrip("0").rstrip(".") + unit
    return str(n)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


LEGEND = ("Config minus the comparison on the same problems. Tests, fixed before the data: pass@1 with one "
          "evaluation a side, exact McNemar (shown as problems only the comparison passes vs only the config "
          "passes); with several seeds, an exact sign-flip permutation test on per-problem pass rates averaged "
          "over seeds; test-case average and held-out NLL/token, a z test with the standard error of a bootstrap "
          "that resamples seeds x problems (held-out references: seeds x their split groups, the unit the split "
          "drew). p: raw; Holm: adjusted within the suite's comparisons of that metric. * = Holm p < 0.05 with "
          "at least 2 seeds on every trained side; † = one seed: seed variation not measured, never starred. "
          "NLL/token: nats, lower is better. pp: percentage points, higher is better.")


def distinct(entries: list[dict[str, Any]], key: str) -> tuple[list[tuple[dict, dict]], list[tuple[dict, dict]]]:
    """(counted, degenerate): each comparison of `key` once (suites share configs), degenerate ones apart. A
    comparison made in several suites counts as beyond noise only when it is so in every suite's family."""
    first: dict[str, tuple[dict, dict]] = {}
    beyond: dict[str, bool] = {}
    for e in entries:
        d = e["differences"].get(key)   # budget entries have none
        if d is None:
            continue
        pair = repr(e.get("runs") or (e["suite"], e["config"], e["versus"]))
        first.setdefault(pair, (e, d))
        beyond[pair] = beyond.get(pair, True) and bool(d["beyond_noise"])
    counted = [(e, {**d, "beyond_noise": beyond[p]}) for p, (e, d) in first.items() if not d.get("degenerate")]
    return counted, [(e, d) for e, d in first.values() if d.get("degenerate")]


def summary_lines(entries: list[dict[str, Any]]) -> list[str]:
    """The table, then one screen of verdicts over distinct, non-degenerate comparisons: how many are beyond
    noise per metric, what the nulls' own tests could have detected, and the degenerate comparisons apart."""
    if not entries:
        return []
    lines = [LEGEND, "", summary_table(entries), ""]
    counts, null_nll, tail, apart = [], [], [], []
    for key in SUMMARY_KEYS:
        ds, degenerate = distinct(entries, key)
        name = _HEADERS[key].removeprefix("Δ ")
        counts.append(f"{name} {sum(bool(d['beyond_noise']) for _, d in ds)} of {len(ds)}")
        apart += [f"- {e['config']} vs {e['versus']} ({e['suite']}), {name}: {d['degenerate']}" for e, d in degenerate]
        nulls = [(e, d) for e, d in ds if not d["beyond_noise"]]
        if key == "heldout.nll":
            null_nll = [f"- {e['config']} vs {e['versus']} ({e['suite']}): {cell(key, d)}; " + (
                f"the design detects about ±{d['detectable']:.3f} nats/token (resampled: {d['unit']})"
                if d.get("seed_aware") else compare.ONE_SEED) for e, d in nulls if d.get("detectable") is not None]
            continue
        tail += _null_line("Test-case average" if key.endswith("test_case_avg") else "Pass@1", [d for _, d in nulls])
    lines += [f"Beyond noise (* above), distinct comparisons that carry information: {'; '.join(counts)}.", ""]
    if null_nll:
        lines += ["Held-out NLL comparisons without a finding, with the smallest difference the same z test detects "
                  "at 80% power (2.8 standard errors, before the family correction), or why none is claimed:", "",
                  *null_nll, ""]
    lines += tail
    if apart:
        lines += ["Degenerate comparisons (not counted above and outside every family):", "", *apart, ""]
    return lines


def _null_line(name: str, nulls: list[dict[str, Any]]) -> list[str]:
    """What the tests of comparisons without a finding could have detected, per test (each its own power)."""
    parts = []
    for test in ("McNemar", "sign-flip permutation", "bootstrap z"):
        found = sorted(100 * d["detectable"] for d in nulls if d["test"] == test and d.get("detectable") is not None)
        if found:
            parts.append(f"{_count(len(found), _SHORT_TEST[test] + ' test')} that could have detected "
                         f"{found[0]:.1f} to {found[-1]:.1f} pp (median {found[len(found) // 2]:.1f}) at 80% power")
    one_seed = sum(1 for d in nulls if d["test"] != "stored" and not d.get("seed_aware"))
    if one_seed:
        parts.append(f"{one_seed} of them with one seed on a trained side (†)")
    return [f"{name} comparisons without a finding: {'; '.join(parts)}.", ""] if parts else []


# Columns of the per-config table README quotes: (header, comparison-record key, format).
CONFIG_COLUMNS = [("NLL/token", "heldout.nll", "nll"), ("tests passed %", "humaneval.test_case_avg", "pct"),
                  ("pass@1 %", "humaneval.pass@1", "pct"), ("peak MiB", "train.peak_mb", "int"),
                  ("train s", "train.wall_seconds", "int")]


def value_text(record: dict[str, Any], key: str, kind: str) -> str:
    """A comparison record's value with its 95% CI: `16.7 [12.6, 21.2]`, `1.310 [1.224, 1.401]`; a measured cost
    with its spread over seeds, `5972 sd 40`, or why it has no number (`contended`, `load not recorded`)."""
    if record.get(f"{key}.excluded"):
        return record[f"{key}.excluded"]
    if record.get(key) is None:
        return "—"
    scale, digits = {"nll": (1.0, 3), "pct": (100.0, 1), "int": (1.0, 0)}[kind]
    text = f"{scale * record[key]:.{digits}f}"
    if record.get(f"{key}.ci_low") is not None and kind != "int":
        text += f" [{scale * record[key + '.ci_low']:.{digits}f}, {scale * record[key + '.ci_high']:.{digits}f}]"
    if kind == "int" and record.get(f"{key}.std") is not None:
        text += f" sd {record[key + '.std']:.{digits}f}"
    return text


CONTENDED_MARK = "‡"   # not †: the summary's † means one seed


def contention_note(marked: list[tuple[str, str]]) -> str:
    """The footnote of a table whose (label, run ids) rows are marked contended."""
    runs = "; ".join(f"{label}: run(s) {ids}" for label, ids in marked)
    return (f"{CONTENDED_MARK} contended: other processes used more than the contention limit (report.py "
            f"--contention-limit, {CONTENTION_LIMIT:.0%} by default) of the machine's CPU capacity during these "
            f"runs ({runs}); their times and memory are left out of the cost columns and of every cost ranking, "
            f"and a cost with no uncontended run reads \"contended\".")


def config_table(records: list[dict[str, Any]]) -> str:
    """Every config and base of the comparison records: model, protocol, seeds and the primary metrics; configs
    with a contended run marked, with a footnote."""
    header = ["suite", "config", "model", "protocol", "seeds", *(h for h, _, _ in CONFIG_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        seeds = r.get("seeds") or "—"
        label = r["config"] + (f" {CONTENDED_MARK}" if r.get("contended_runs") else "")
        cells = [r["suite"], label, r.get("model") or "—", r.get("protocol") or "—", seeds,
                 *(value_text(r, key, kind) for _, key, kind in CONFIG_COLUMNS)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    marked = [(f"{r['config']} ({r['suite']})", r["contended_runs"]) for r in records if r.get("contended_runs")]
    return "\n".join(lines + (["", contention_note(marked)] if marked else []))


def base_table(records: list[dict[str, Any]]) -> str:
    """The base-model rows of the comparison records, once per evaluation (suites share one), by model and protocol."""
    seen, bases = set(), []
    for r in records:
        if r["kind"] == "base" and r.get("eval_run_ids") not in seen:
            seen.add(r.get("eval_run_ids"))
            bases.append(r)
    return config_table(sorted(bases, key=lambda r: (str(r.get("model")), str(r.get("protocol")))))


README_TABLES = ("summary", "configs", "bases")


def _marked(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", re.S)


def quoting_files(readme: Path) -> list[Path]:
    """The README and the markdown pages of the docs/ folder beside it: the files whose marked tables
    `report.py --readme README.md` refreshes, so a table keeps being re-rendered whichever page holds it."""
    return [readme, *sorted((readme.parent / "docs").glob("*.md"))]


def check_readme(path: Path) -> None:
    """Fail before any work when no file update_readme would rewrite holds a marker pair it needs."""
    if not path.is_file():
        raise UserError(f"no file at --readme {path}; pass the markdown file whose tables to refresh")
    texts = [file.read_text() for file in quoting_files(path)]
    for name in README_TABLES:
        if not any(_marked(name).search(text) for text in texts):
            raise UserError(f"neither {path} nor {path.parent / 'docs'}/*.md has <!-- {name}:begin --> ... "
                            f"<!-- {name}:end --> markers; add them where the {name} table belongs, or leave out "
                            f"--readme")


def update_readme(path: Path, entries: list[dict[str, Any]], records: list[dict[str, Any]]) -> None:
    """Replace the text between each `<!-- NAME:begin -->` and `<!-- NAME:end -->` marker pair of the README and
    of every docs/*.md beside it with the table of that name (summary, configs, bases), so that what each page
    quotes is what the data says. Files without markers are left untouched."""
    check_readme(path)
    tables = {"summary": summary_table(entries), "configs": config_table(records), "bases": base_table(records)}
    for file in quoting_files(path):
        text = new = file.read_text()
        for name in README_TABLES:
            new = _marked(name).sub(lambda m, table=tables[name]: m.group(1) + table + "\n" + m.group(2), new)
        if new != text:
            file.write_text(new)

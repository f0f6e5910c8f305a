"""The one-screen summary of a study: each config against its suite's reference and its base, on the primary metrics.

report.py writes it at the top of RESULTS.md and, as data, to results/summary.json; README quotes the
table, and tests/test_results.py re-renders it from the JSON to check that README and RESULTS.md still say
what the data says.

    entries = summary_entries(study, suites)     # data: one per (config, comparison)
    table = summary_table(entries)               # markdown, the same text every time for the same data
    update_readme(Path("README.md"), entries, records)   # report.py --readme: the quoted tables, re-rendered
"""
import re
from pathlib import Path
from typing import Any

from common.study import compare
from common.errors import UserError
from common.study.rows import Row, Study, build_rows

# Primary first (pre-registered: held-out NLL per token), then the graded and the strict execution metric.
SUMMARY_KEYS = ["heldout.nll", "humaneval.test_case_avg", "humaneval.pass@1"]
_HEADERS = {"heldout.nll": "Δ NLL/token", "humaneval.test_case_avg": "Δ tests passed (pp)",
            "humaneval.pass@1": "Δ pass@1 (pp)"}
# The detectable difference at 80% power and two-sided alpha 0.05 is (1.96 + 0.84) standard errors.
_DETECTABLE_SE = 2.8


def summary_entries(study: Study, suites: list[str]) -> list[dict[str, Any]]:
    """Every adapter config vs its base model, and vs its suite's reference config when it has one (the
    reference first)."""
    entries = []
    for suite in suites:
        rows, bases = build_rows(study, suite)
        reference = compare.reference_row(rows)
        pairs: list[tuple[Row, Row | None, str]] = []
        for row in sorted(rows, key=lambda r: r is not reference):
            if reference and row is not reference:
                pairs.append((row, reference, "reference"))
            pairs.append((row, compare.matching_base(study, row, bases), "base"))
        for row, other, versus in pairs:
            if other is None:
                continue
            diffs = compare.differences(study, other, row)
            found = {k: _as_dict(diffs[k]) for k in SUMMARY_KEYS if k in diffs}
            if found:
                entries.append({"suite": suite, "config": row.label, "versus": other.label, "kind": versus,
                                "seeds": f"{len(row.seeds) or 1} vs {len(other.seeds) or 1}"
                                if other.kind == "adapter" else f"{len(row.seeds) or 1}",
                                "differences": found})
    return entries


def _as_dict(d: compare.Difference) -> dict[str, Any]:
    out: dict[str, Any] = {"value": d.value, "low": d.low, "high": d.high, "test": d.test,
                           "beyond_noise": d.beyond_noise, "n": d.n}
    if d.test == "McNemar":
        out.update(p_value=d.p_value, only_versus=d.only_a, only_config=d.only_b)
    if d.low is not None and d.high is not None:
        out["detectable"] = _DETECTABLE_SE * (d.high - d.low) / (2 * 1.96)
    return out


def cell(key: str, d: dict[str, Any] | None) -> str:
    """`+0.012 [+0.004, +0.020] *`; pass@1 and test-case average in percentage points; McNemar as counts and p."""
    if d is None:
        return "—"
    scale, digits = (1.0, 3) if key.endswith(".nll") else (100.0, 1)
    star = " *" if d["beyond_noise"] else ""
    if d["test"] == "McNemar":
        counts = f"{d['only_versus']} vs {d['only_config']}, p={d['p_value']:.2f}"
        return f"{scale * d['value']:+.{digits}f} ({counts}){star}"
    if d["low"] is None:
        return f"{scale * d['value']:+.{digits}f}"
    return f"{scale * d['value']:+.{digits}f} [{scale * d['low']:+.{digits}f}, {scale * d['high']:+.{digits}f}]{star}"


def summary_table(entries: list[dict[str, Any]]) -> str:
    header = ["suite", "config", "vs", "seeds", *(_HEADERS[k] for k in SUMMARY_KEYS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in entries:
        cells = [e["suite"], e["config"], e["versus"], e["seeds"],
                 *(cell(k, e["differences"].get(k)) for k in SUMMARY_KEYS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def summary_lines(entries: list[dict[str, Any]]) -> list[str]:
    """The table, then one screen of verdicts: how many comparisons are beyond noise per metric, and for those
    that are not, what the design could have detected (each NLL comparison; the test-case average and pass@1
    in aggregate, as most of them are nulls at this model size)."""
    if not entries:
        return []
    lines = ["Config minus the comparison on the same problems; * = the 95% paired interval (or the exact McNemar "
             "test, shown as problems only the comparison passes vs only the config passes) excludes zero. "
             "NLL/token: held-out references, nats, lower is better. pp: percentage points, higher is better.", "",
             summary_table(entries), ""]
    counts, null_nll, tail = [], [], []
    for key in SUMMARY_KEYS:
        ds = [(e, e["differences"][key]) for e in entries if key in e["differences"]]
        counts.append(f"{_HEADERS[key].removeprefix('Δ ')} {sum(bool(d['beyond_noise']) for _, d in ds)} of {len(ds)}")
        nulls = [d for _, d in ds if not d["beyond_noise"]]
        if key == "heldout.nll":
            null_nll = [f"- {e['config']} vs {e['versus']} ({e['suite']}): {cell(key, d)}; the design detects "
                        f"about ±{d['detectable']:.3f} nats/token"
                        for e, d in ds if not d["beyond_noise"] and d.get("detectable") is not None]
            continue
        name = "Test-case average" if key.endswith("test_case_avg") else "Pass@1"
        same = sum(1 for d in nulls if d["value"] == 0 and d.get("detectable") == 0.0)
        mcnemar = [d for d in nulls if d["test"] == "McNemar"]
        bootstrap = sorted(100 * d["detectable"] for d in nulls if d.get("detectable"))
        parts = []
        if bootstrap:
            parts.append(f"{_count(len(bootstrap), 'paired interval')} that could have detected {bootstrap[0]:.1f} to "
                         f"{bootstrap[-1]:.1f} pp (median {bootstrap[len(bootstrap) // 2]:.1f}) at 80% power")
        if mcnemar:
            smallest = min(d["p_value"] for d in mcnemar)
            parts.append(f"{_count(len(mcnemar), 'exact McNemar test')} (smallest p = {smallest:.2f}; "
                         "each suite's \"What this design can detect\" gives the difference they resolve)")
        if same:
            parts.append(f"{_count(same, 'comparison')} of identical per-problem scores")
        if parts:
            tail.append(f"{name} comparisons without a difference: {'; '.join(parts)}.")
    lines += [f"Beyond noise (* above): {'; '.join(counts)}.", ""]
    if null_nll:
        lines += ["Held-out NLL comparisons that did not reach significance, with the smallest difference the design "
                  "detects at 80% power (2.8 standard errors of the paired difference):", "", *null_nll, ""]
    for line in tail:
        lines += [line, ""]
    return lines


# Columns of the per-config table README quotes: (header, comparison-record key, format).
CONFIG_COLUMNS = [("NLL/token", "heldout.nll", "nll"), ("tests passed %", "humaneval.test_case_avg", "pct"),
                  ("pass@1 %", "humaneval.pass@1", "pct"), ("peak MB", "train.peak_mb", "int"),
                  ("train s", "train.wall_seconds", "int")]


def value_text(record: dict[str, Any], key: str, kind: str) -> str:
    """A comparison record's value with its 95% CI: `16.7 [12.6, 21.2]`, `1.310 [1.224, 1.401]`, `5972`."""
    if record.get(key) is None:
        return "—"
    scale, digits = {"nll": (1.0, 3), "pct": (100.0, 1), "int": (1.0, 0)}[kind]
    text = f"{scale * record[key]:.{digits}f}"
    if record.get(f"{key}.ci_low") is not None and kind != "int":
        text += f" [{scale * record[key + '.ci_low']:.{digits}f}, {scale * record[key + '.ci_high']:.{digits}f}]"
    return text


def config_table(records: list[dict[str, Any]]) -> str:
    """Every config and base of the comparison records: model, protocol, seeds and the primary metrics."""
    header = ["suite", "config", "model", "protocol", "seeds", *(h for h, _, _ in CONFIG_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        seeds = r.get("seeds") or "—"
        cells = [r["suite"], r["config"], r.get("model") or "—", r.get("protocol") or "—", seeds,
                 *(value_text(r, key, kind) for _, key, kind in CONFIG_COLUMNS)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


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


def check_readme(path: Path) -> None:
    """Fail before any work when the file lacks a marker pair update_readme needs."""
    text = path.read_text() if path.is_file() else None
    if text is None:
        raise UserError(f"no file at --readme {path}; pass the markdown file whose tables to refresh")
    for name in README_TABLES:
        if not _marked(name).search(text):
            raise UserError(f"{path} has no <!-- {name}:begin --> ... <!-- {name}:end --> markers; add them where "
                            f"the {name} table belongs, or leave out --readme")


def update_readme(path: Path, entries: list[dict[str, Any]], records: list[dict[str, Any]]) -> None:
    """Replace the text between each `<!-- NAME:begin -->` and `<!-- NAME:end -->` marker pair of the file with
    the table of that name (summary, configs, bases), so that what it quotes is what the data says."""
    check_readme(path)
    text = path.read_text()
    tables = {"summary": summary_table(entries), "configs": config_table(records), "bases": base_table(records)}
    for name in README_TABLES:
        text = _marked(name).sub(lambda m, table=tables[name]: m.group(1) + table + "\n" + m.group(2), text)
    path.write_text(text)

"""The one-screen summary of a study: each config against its suite's reference and its base, on the primary metrics.

report.py writes it at the top of RESULTS.md and, as data, to results/summary.json; README quotes the
table, and tests/test_results.py re-renders it from the JSON to check that README and RESULTS.md still say
what the data says.

    entries = summary_entries(study, suites)     # data: one per (config, comparison)
    table = summary_table(entries)               # markdown, the same text every time for the same data
"""
from typing import Any

from common import compare
from common.study import Row, Study, build_rows

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
        reference = compare.reference_row(rows, suite)
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


def summary_lines(entries: list[dict[str, Any]]) -> list[str]:
    """The findings (paired interval or test excludes zero) and what the design could have detected otherwise."""
    if not entries:
        return []
    found, null = [], []
    for e in entries:
        for key in SUMMARY_KEYS:
            d = e["differences"].get(key)
            if d is None:
                continue
            what = f"{e['config']} vs {e['versus']} ({e['suite']}), {_HEADERS[key]}: {cell(key, d)}"
            if d["beyond_noise"]:
                found.append(what)
            elif key == "heldout.nll" and d.get("detectable") is not None:
                null.append(f"{e['config']} vs {e['versus']} ({e['suite']}): NLL/token {cell(key, d)}; the design "
                            f"detects about ±{d['detectable']:.3f} nats/token")
    lines = ["Config minus the comparison on the same problems; * = the 95% paired interval (or the exact McNemar "
             "test, shown as problems only the comparison passes vs only the config passes) excludes zero. "
             "NLL/token: held-out references, nats, lower is better. pp: percentage points, higher is better.", "",
             summary_table(entries), ""]
    lines += ["Differences beyond noise:", ""] + ([f"- {f}" for f in found] or ["- none"]) + [""]
    if null:
        lines += ["Primary-metric comparisons that did not reach significance, with the smallest NLL difference "
                  "the design detects at 80% power (2.8 standard errors of the paired difference):", ""]
        lines += [f"- {n}" for n in null] + [""]
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

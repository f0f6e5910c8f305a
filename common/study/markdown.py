"""Markdown pieces of the report: numbers with their intervals, paired differences, and the tables built of them.

A value is bold only when it beats the runner-up beyond noise (common/study/compare.py decides); the same rows
always give byte-identical text.
"""
from common.study import compare
from common.study.rows import COST_KEYS, Cell, Metric, Row, Study, is_measured_cost, metric_for
from common.study.summary import CONTENDED_MARK, contention_note, verdict_text

QUALITY_TABLES = [  # (title, columns)
    ("Quality on HumanEval", ["humaneval.pass@1", "humaneval.test_case_avg", "humaneval.syntax_ok", "humaneval.bleu",
                              "humaneval.chrf"]),
    ("Quality on held-out code", ["train.final_val_loss", "heldout.nll", "heldout.perplexity", "heldout.syntax_ok",
                                  "heldout.bleu", "heldout.chrf"]),
]


DIFFERENCE_KEYS = ["heldout.nll", "humaneval.test_case_avg", "humaneval.pass@1", "humaneval.syntax_ok",
                   "humaneval.chrf", "heldout.chrf"]


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
    """`+40.0 (0 vs 8) McNemar p=0.0078, Holm=0.039 †`, `-0.418 [-0.429, -0.408] z p<0.001, Holm<0.001 *`: the
    difference, its McNemar counts or 95% CI, then the test, raw and Holm-adjusted p, `†` for one seed and `*`
    beyond noise as the summary prints them (common/study/summary.py); degenerate comparisons say why instead."""
    if d is None:
        return "—"
    metric = metric_for(d.key)
    text = fmt(d.value, metric, signed=True)
    if d.test == "McNemar":
        text += f" ({d.only_a} vs {d.only_b})"
    elif d.low is not None:
        text += f" [{fmt(d.low, metric, True)}, {fmt(d.high, metric, True)}]"
    if d.degenerate:
        return f"{text} ({d.degenerate})"
    return text + verdict_text(d.test, d.p_value, d.p_adjusted, d.seed_aware, d.beyond_noise)


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


def cost_cell(row: Row, key: str) -> str:
    """A cost's mean over the runs fit to rank by (Row.cost), with its spread over seeds; why there is none."""
    if row.cost_excluded(key):
        return row.cost_excluded(key)
    cell, metric = row.cost(key), metric_for(key)
    pct = row.get("train.trainable_pct") if key == "train.trainable_params" else None
    text = fmt(cell.mean if cell else None, metric) + (f" ({pct.mean:.3f}%)" if pct else "")
    if cell is not None and is_measured_cost(key) and cell.std is not None:
        text += f" sd {fmt(cell.std, metric)}"
    return text


def cost_table(rows: list[Row], bases: list[Row]) -> str:
    """Costs per config over its uncontended runs; a config with a contended run marked, with a footnote."""
    keys = [k for k in COST_KEYS if any(r.get(k) for r in rows + bases)]
    body = [[r.label + (f" {CONTENDED_MARK}" if r.runs_with_load("contended") else ""), seeds_text(r)]
            + [cost_cell(r, k) for k in keys] for r in bases + rows]
    marked = [(r.label, compact_ids(r.runs_with_load("contended"))) for r in bases + rows
              if r.runs_with_load("contended")]
    table = md_table(["config", "seeds"] + [metric_for(k).title for k in keys], body)
    return table + ("\n\n" + contention_note(marked) if marked else "")


def quality_table(study: Study, rows: list[Row], bases: list[Row], keys: list[str]) -> str:
    keys = [k for k in keys if any(r.get(k) for r in rows + bases)]
    best = {k: compare.best_row(study, rows, k) for k in keys}
    body = [[r.label, seeds_text(r)] + [(f"**{fmt_cell(r.get(k), metric_for(k))}**" if best[k] is r
                                         else fmt_cell(r.get(k), metric_for(k))) for k in keys]
            for r in bases + rows]
    return md_table(["config", "seeds"] + [title_with_unit(metric_for(k)) for k in keys], body)


def difference_table(pairs: list[tuple[Row, Row | None]], diffs: dict[int, dict[str, compare.Difference]],
                     caveats: dict[int, str] | None = None) -> str:
    """One row per config: B - A on each compared metric (A = the reference or the base); a finding carries its
    pair's caveat (compare.quant_caveat) in its cell."""
    keys = [k for k in DIFFERENCE_KEYS if any(k in d for d in diffs.values())]
    headers = ["config", "against"] + [f"Δ {title_with_unit(metric_for(k))}" for k in keys]

    def text(i: int, d: compare.Difference | None) -> str:
        caveat = (caveats or {}).get(i) if d is not None and d.beyond_noise else None
        return fmt_difference(d) + (f" {caveat}" if caveat else "")
    body = [[b.label, a.label] + [text(i, diffs[i].get(k)) for k in keys]
            for i, (b, a) in enumerate(pairs) if a is not None and diffs[i]]
    return md_table(headers, body) if body else ""


def block(text: str, tail: bool = False, max_lines: int = 20) -> str:
    lines = text.rstrip("\n").splitlines() or [""]
    if len(lines) > max_lines:
        lines = (["..."] + lines[-max_lines:]) if tail else (lines[:max_lines] + ["..."])
    return "````python\n" + "\n".join(line.replace("````", "` ` ` `") for line in lines) + "\n````"

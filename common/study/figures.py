"""The figures of one suite's report section, from its rows: which plots, with which numbers and error bars.

common/study/plots.py draws; this module chooses what to draw from the study model (common/study/rows.py).
Error bars are the rows' 95% CIs (for several seeds, the cluster-bootstrap CI, else ± 1 std).

    written = suite_figures(study, "rank", adapters, bases, "humaneval.pass@1", Path("reports"))
"""
import json
import re
from pathlib import Path

from common.study import plots
from common.study import compare
from common.study.rows import Cell, Metric, Row, Study, metric_for


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def axis_label(metric: Metric) -> str:
    """An axis label with its unit: `pass@1 (%)`, `chrF (0-100)`, `perplexity (per token)`."""
    name = metric.title.replace(" %", "")
    base, _, where = name.partition(" (")
    where = f" {where.rstrip(')')}" if where else ""
    unit = ("%" if metric.percent else "0-100" if base in ("chrF", "BLEU") else
            "per token" if base == "perplexity" else "nats/token" if base == "NLL" else "")
    return f"{base}{where}" + (f" ({unit})" if unit else "")


def error_bar(cell: Cell | None, scale: float) -> tuple[float, float] | None:
    """(below, above) the mean: the CI, else ± 1 std over seeds, else None (no bar)."""
    if cell is None:
        return None
    if cell.ci:
        return max(0.0, (cell.mean - cell.ci[0]) * scale), max(0.0, (cell.ci[1] - cell.mean) * scale)
    if cell.std is not None:
        return cell.std * scale, cell.std * scale
    return None


def _scaled(rows: list[Row], key: str) -> tuple[float, list[float | None]]:
    scale = 100.0 if metric_for(key).percent else 1.0
    return scale, [None if r.mean(key) is None else r.mean(key) * scale for r in rows]


def curves_of(study: Study, rows: list[Row], names: tuple[str, ...]) -> dict[str, dict[str, list]]:
    """label (+ seed) -> metric -> [(step, value)] of each row's training runs, for the named metrics."""
    curves = {}
    for r in rows:
        for seed, train_id in zip(r.seeds, r.train_ids):
            metrics = study.tracker.metrics(train_id)
            name = r.label + (f" s{seed}" if len(r.seeds) > 1 else "")
            curves[name] = {k: [(m["step"], m["value"]) for m in metrics if m["name"] == k and m["value"] is not None]
                            for k in names}
    return curves


def loss_curves(study: Study, suite: str, rows: list[Row], out: Path) -> list[tuple[str, Path]]:
    curves = curves_of(study, rows, ("loss", "val_loss"))
    if not any(c["loss"] or c["val_loss"] for c in curves.values()):
        return []
    return [("loss curves", plots.loss_curves(out / f"{safe_name(suite)}_loss.png", f"{suite}: loss curves", curves))]


def generation_curves(study: Study, suite: str, rows: list[Row], out: Path) -> list[tuple[str, Path]]:
    """chrF and syntax-valid share of the validation generations train.py scores at each evaluation."""
    curves = curves_of(study, rows, ("val_chrf", "val_syntax_ok"))
    if not any(c["val_chrf"] or c["val_syntax_ok"] for c in curves.values()):
        return []
    panels = [("val_chrf", "validation chrF (0-100)", 1.0), ("val_syntax_ok", "validation syntax ok (%)", 100.0)]
    return [("generation quality during training",
             plots.training_curves(out / f"{safe_name(suite)}_generation.png",
                                   f"{suite}: validation generations during training", panels, curves))]


def quality_bars(suite: str, rows: list[Row], bases: list[Row], out: Path) -> list[tuple[str, Path]]:
    panels, baseline = {}, {}
    for key in [k for k in ("humaneval.pass@1", "humaneval.chrf", "humaneval.syntax_ok", "heldout.chrf",
                            "heldout.nll") if any(r.get(k) for r in rows)]:
        metric = metric_for(key)
        scale, values = _scaled(rows, key)
        panels[metric.title] = (axis_label(metric), values, [error_bar(r.get(key), scale) for r in rows])
        b = next((x.mean(key) for x in bases if x.get(key)), None)
        baseline[metric.title] = None if b is None else b * scale
    if not panels or not rows:
        return []
    return [("quality with 95% CIs", plots.metric_intervals(
        out / f"{safe_name(suite)}_quality.png", f"{suite}: quality (95% CI or ±1 std; axes zoomed to the data)",
        [r.label for r in rows], panels, baseline))]


def quality_vs_cost(suite: str, rows: list[Row], quality: str, out: Path) -> list[tuple[str, Path]]:
    written = []
    stem, metric = safe_name(suite), metric_for(quality)
    ranked = [r for r in rows if isinstance(r.config.get("rank"), int)]
    others = {json.dumps({k: v for k, v in r.config.items() if k not in ("rank", "alpha")}, sort_keys=True,
                         default=str) for r in ranked}
    if len({r.config["rank"] for r in ranked}) > 1 and len(others) == 1:
        ranked.sort(key=lambda r: r.config["rank"])
        scale, values = _scaled(ranked, quality)
        written.append(("rank vs quality and memory", plots.rank_plot(
            out / f"{stem}_rank.png", f"{suite}: LoRA rank", [r.config["rank"] for r in ranked], values,
            [error_bar(r.get(quality), scale) for r in ranked], axis_label(metric),
            [r.mean("train.peak_mb") for r in ranked])))
    # The frontier ranks costs: a config without an uncontended run (Row.cost_excluded) is not drawn on it.
    pts = [r for r in rows if r.mean(quality) is not None
           and not any(r.cost_excluded(c) for c in ("train.peak_mb", "train.wall_seconds"))]
    scale, values = _scaled(pts, quality)
    costs = {}
    for cost, name, unit in (("train.peak_mb", "peak memory", "peak memory (MiB)"),
                             ("train.wall_seconds", "train time", "train time (s)")):
        if pts and all(r.cost_mean(cost) is not None for r in pts):
            front = compare.pareto(pts, quality, cost)
            costs[name] = (unit, [r.cost_mean(cost) for r in pts], {pts.index(r) for r in front})
    if costs and len(pts) >= 2:  # one configuration is no trade-off
        written.append(("efficiency frontier", plots.frontier(
            out / f"{stem}_frontier.png", f"{suite}: quality vs cost (Pareto front starred)",
            [r.label for r in pts], values, axis_label(metric), costs,
            [error_bar(r.get(quality), scale) for r in pts])))
    return written


def difference_figure(study: Study, suite: str, rows: list[Row], bases: list[Row], quality: str,
                      out: Path) -> list[tuple[str, Path]]:
    """Each config minus the reference, then minus its base model, on the quality metric with the paired 95%
    interval: the figure that says which differences are real (marginal intervals overlap even when the
    paired difference is far from zero, because both configs are scored on the same problems)."""
    reference = compare.reference_row(rows)
    pairs = [(r, reference) for r in rows if reference and r is not reference]
    pairs += [(r, compare.matching_base(study, r, bases)) for r in rows]
    scale = 100.0 if metric_for(quality).percent else 1.0
    labels, values, intervals = [], [], []
    for b, a in pairs:
        d = compare.differences(study, a, b).get(quality) if a else None
        if d is None or d.low is None or d.high is None:
            continue
        labels.append(f"{b.label} − {a.label}")
        values.append(d.value * scale)
        intervals.append((d.low * scale, d.high * scale))
    if not labels:
        return []
    return [("paired differences", plots.paired_differences(
        out / f"{safe_name(suite)}_differences.png",
        f"{suite}: config minus comparison (red: the paired 95% interval excludes 0)",
        labels, values, intervals, f"Δ {axis_label(metric_for(quality))}, paired 95% CI"
        + (f" ({metric_for(quality).better} is better)" if metric_for(quality).better else "")))]


def cost_bars(suite: str, rows: list[Row], bases: list[Row], out: Path) -> list[tuple[str, Path]]:
    stem, labels, written = safe_name(suite), [r.label for r in rows], []
    if rows and any(r.get("train.wall_seconds") for r in rows):
        written.append(("train time and throughput", plots.bars(
            out / f"{stem}_train_cost.png", f"{suite}: training cost", labels,
            {"train time": ("wall-clock time (s)", [r.mean("train.wall_seconds") for r in rows]),
             "train throughput": ("tokens per second (tok/s)", [r.mean("train.train_tokens_per_s") for r in rows])})))
    latency_rows = bases + rows
    if any(r.get("humaneval.seconds_per_problem") for r in latency_rows):
        written.append(("generation latency", plots.bars(
            out / f"{stem}_latency.png", f"{suite}: generation latency on HumanEval", [r.label for r in latency_rows],
            {"latency": ("seconds per problem (s)", [r.mean("humaneval.seconds_per_problem") for r in latency_rows])})))
    if rows and any(r.get("train.adapter_mb") for r in rows):
        written.append(("adapter size", plots.bars(
            out / f"{stem}_adapter_size.png", f"{suite}: adapter size on disk", labels,
            {"adapter size": ("adapter file size (MiB)", [r.mean("train.adapter_mb") for r in rows])})))
    return written


def suite_figures(study: Study, suite: str, rows: list[Row], bases: list[Row], quality: str | None,
                  out: Path) -> list[tuple[str, Path]]:
    """Write the suite's PNGs into `out`; returns (title, path) per figure written, the headline first: the paired
    differences, which say which configurations differ beyond noise."""
    headline = difference_figure(study, suite, rows, bases, quality, out) if quality and rows else []
    written = headline + loss_curves(study, suite, rows, out) + generation_curves(study, suite, rows, out)
    written += quality_bars(suite, rows, bases, out)
    if quality and rows:
        written += quality_vs_cost(suite, rows, quality, out)
    return written + cost_bars(suite, rows, bases, out)

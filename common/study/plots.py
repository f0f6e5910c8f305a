"""Figures for report.py: smoothed loss curves, metric dots with intervals on zoomed axes, rank, efficiency and
paired-difference plots.

Every function takes plain numbers (no database access), writes one PNG with titled,
labelled axes (units in the labels) and returns its path. matplotlib runs headless (Agg).
"""
import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_DPI = 110
_METADATA = {"Software": None}  # no version/date stamps in the files


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI, metadata=_METADATA)
    plt.close(fig)
    return path


def _nan(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def ema(values: Sequence[float], weight: float) -> list[float]:
    """Exponential moving average: s_0 = v_0, s_t = weight * s_(t-1) + (1 - weight) * v_t (weight 0: the values)."""
    smoothed: list[float] = []
    for v in values:
        smoothed.append(v if not smoothed else weight * smoothed[-1] + (1 - weight) * v)
    return smoothed


def smoothing_weight(points: int) -> float:
    """The EMA weight for a curve of this many points: it averages over about a twentieth of the curve
    (1 / (1 - weight) points), and leaves curves of 20 points or fewer raw."""
    return max(0.0, 1.0 - 20.0 / points) if points else 0.0


def loss_curves(path: Path, title: str, curves: dict[str, dict[str, list[tuple[int, float]]]]) -> Path:
    """curves: run label -> {"loss": [(step, value)], "val_loss": [(step, value)]}.

    Training loss: the EMA (smoothing_weight) over the raw curve drawn faint in the same colour. Validation
    loss: a line through each evaluation, on the training steps' axis (shared), so one evaluation at the last
    step is a point at the end of training, not alone on an axis of its own."""
    fig, (train_ax, val_ax) = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for i, (label, series) in enumerate(curves.items()):
        color = f"C{i % 10}"
        if series.get("loss"):
            steps, values = zip(*series["loss"])
            train_ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
            train_ax.plot(steps, ema(values, smoothing_weight(len(values))), color=color, linewidth=1.5, label=label)
        if series.get("val_loss"):
            steps, values = zip(*series["val_loss"])
            val_ax.plot(steps, values, "o-", color=color, label=label, linewidth=1.5, markersize=4)
    train_ax.set(title="training loss (EMA; raw curve faint)", xlabel="optimizer step", ylabel="loss (nats/token)")
    val_ax.set(title="validation loss at each evaluation", xlabel="optimizer step", ylabel="loss (nats/token)")
    for ax in (train_ax, val_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def training_curves(path: Path, title: str, panels: list[tuple[str, str, float]],
                    curves: dict[str, dict[str, list[tuple[int, float]]]]) -> Path:
    """One subplot per (metric, axis label, scale) panel; one line per run label, values x scale.

    curves: run label -> {metric: [(step, value)]}; a run without points for a metric is left out there.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (metric, label, scale) in zip(axes[0], panels):
        for run, series in curves.items():
            if series.get(metric):
                steps, values = zip(*series[metric])
                ax.plot(steps, [v * scale for v in values], marker="o", label=run, linewidth=1.2)
        ax.set(title=label, xlabel="optimizer step", ylabel=label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def zoomed_range(points: Sequence[float], margin: float = 0.08) -> tuple[float, float] | None:
    """An axis range spanning the finite points with a margin of `margin` x their spread: a 0.03-nat gap fills
    the axis instead of hiding at the top of a bar from 0. None when no point is finite."""
    finite = [p for p in points if math.isfinite(p)]
    if not finite:
        return None
    low, high = min(finite), max(finite)
    pad = (high - low) * margin or abs(high) * 0.05 or 1.0
    return low - pad, high + pad


def metric_intervals(path: Path, title: str, labels: Sequence[str],
                     metrics: dict[str, tuple[str, list[float | None], list[tuple[float, float] | None]]],
                     baseline: dict[str, float | None] | None = None) -> Path:
    """metrics: name -> (axis label with unit, values, (err_low, err_high) per configuration or None).

    One subplot per metric: a dot per configuration with its interval, the base model a dashed line, the
    axis zoomed to the dots, intervals and base line (zoomed_range), not started at 0."""
    n = len(metrics)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(4.0, 0.6 * len(labels) + 2.5) * cols, 4.4 * rows),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    x = list(range(len(labels)))
    for ax, (name, (unit, values, errors)) in zip(axes.flat, metrics.items()):
        ys = [_nan(v) for v in values]
        low = [e[0] if e else 0.0 for e in errors]  # 0: a bare dot, where no CI was recorded
        high = [e[1] if e else 0.0 for e in errors]
        ax.errorbar(x, ys, yerr=[low, high], fmt="o", capsize=4, color="tab:blue")
        base = baseline.get(name) if baseline else None
        if base is not None:
            ax.axhline(base, color="tab:red", linestyle="--", linewidth=1.2, label="base model")
            ax.legend(fontsize=7)
        limits = zoomed_range([y - d for y, d in zip(ys, low)] + [y + d for y, d in zip(ys, high)]
                              + ([base] if base is not None else []))
        if limits:
            ax.set_ylim(*limits)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.set(title=name, ylabel=unit, xlabel="configuration")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def rank_plot(path: Path, title: str, ranks: Sequence[int], quality: Sequence[float | None],
              quality_err: Sequence[tuple[float, float] | None], quality_label: str,
              memory_mb: Sequence[float | None]) -> Path:
    """LoRA rank against quality (with error bars) and against peak memory."""
    fig, (q_ax, m_ax) = plt.subplots(1, 2, figsize=(10, 4.2))
    low = [e[0] if e else 0.0 for e in quality_err]
    high = [e[1] if e else 0.0 for e in quality_err]
    q_ax.errorbar(ranks, [_nan(v) for v in quality], yerr=[low, high], marker="o", capsize=4)
    q_ax.set(title=f"rank vs {quality_label}", xlabel="LoRA rank r (log scale)", ylabel=quality_label)
    m_ax.plot(ranks, [_nan(v) for v in memory_mb], marker="s", color="tab:orange")
    m_ax.set(title="rank vs peak memory", xlabel="LoRA rank r (log scale)", ylabel="peak memory (MiB)")
    for ax in (q_ax, m_ax):
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(ranks))
        ax.set_xticklabels([str(r) for r in ranks])
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def frontier(path: Path, title: str, labels: Sequence[str], quality: Sequence[float], quality_label: str,
             costs: dict[str, tuple[str, Sequence[float], set[int]]],
             quality_err: Sequence[tuple[float, float] | None] | None = None) -> Path:
    """Quality (with its 95% CI as error bars) against each cost (axis label, values, indices on the
    Pareto front); front points marked."""
    n = len(costs)
    errors = quality_err or [None] * len(quality)
    low = [e[0] if e else math.nan for e in errors]
    high = [e[1] if e else math.nan for e in errors]
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4.4), squeeze=False)
    for ax, (name, (unit, values, front)) in zip(axes[0], costs.items()):
        ax.errorbar(values, quality, yerr=[low, high], fmt="o", color="tab:gray", capsize=3,
                    label="configuration (95% CI)")
        for i, label in enumerate(labels):
            ax.annotate(label, (values[i], quality[i]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        points = sorted((values[i], quality[i]) for i in front)
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, color="tab:red", marker="*", markersize=11, linestyle="-", label="Pareto front")
        ax.set(title=f"{quality_label} vs {name}", xlabel=unit, ylabel=quality_label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def paired_differences(path: Path, title: str, labels: Sequence[str], values: Sequence[float],
                       intervals: Sequence[tuple[float, float]], axis_label: str) -> Path:
    """Config minus the reference, one row per config, with the paired 95% interval; zero is marked and the
    differences whose interval excludes it are drawn in red (the only ones the report calls a difference)."""
    fig, ax = plt.subplots(figsize=(7.0, 0.55 * len(labels) + 1.9))
    for y, (v, (lo, hi)) in enumerate(zip(values, intervals)):
        beyond = lo > 0 or hi < 0
        ax.errorbar([v], [y], xerr=[[v - lo], [hi - v]], fmt="o", capsize=4,
                    color="tab:red" if beyond else "tab:gray")
    ax.axvline(0.0, color="black", linewidth=0.9)
    ax.set_yticks(list(range(len(labels))))
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_ylim(-0.6, len(labels) - 0.4)
    ax.invert_yaxis()
    ax.set(xlabel=axis_label)
    ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def bars(path: Path, title: str, labels: Sequence[str], panels: dict[str, tuple[str, Sequence[float | None]]]) -> Path:
    """Plain bar charts side by side: panel title -> (axis label with unit, values)."""
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(max(4.0, 0.6 * len(labels) + 2.5) * n, 4.4), squeeze=False)
    x = list(range(len(labels)))
    for ax, (name, (unit, values)) in zip(axes[0], panels.items()):
        heights = [_nan(v) for v in values]
        ax.bar(x, heights, color="tab:green", alpha=0.8)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set(title=name, ylabel=unit, xlabel="configuration")
        ax.grid(axis="y", alpha=0.3)
        if any(not math.isnan(h) for h in heights):
            ax.set_ylim(bottom=0)
    fig.suptitle(title)
    return _save(fig, path)

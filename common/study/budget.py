"""A sweep's costs before and after: the predicted peak memory and step time of every planned run
(sweep.py --estimate / --budget-mb, runs over the budget recorded as skipped), and predicted-vs-measured rows
for the report. The prediction itself is common/train/estimate.py; train.py records it with every run.

    sweep.py --estimate/--budget-mb   check_budget_mb(...), plan_estimates(planned, device), over_budget(...),
                                      budget_reason(...), record_skipped(...)
    report.py                         predicted_vs_measured(tracker), skipped_runs(tracker)
"""
import dataclasses
import math
import statistics
from typing import Any

import torch

from common.config import TrainConfig
from common.errors import UserError
from common.train.estimate import Estimate, estimate_run, fixed_mb, training_peak_mb
from common.train.predictions import relative_error

def train_config(flags: dict[str, Any]) -> TrainConfig:
    """The TrainConfig a sweep's planned run gives train.py (flags it does not set keep their defaults)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in flags.items() if k in names and v is not None})


def plan_estimates(planned: list, device: torch.device) -> dict[str, Estimate]:
    """Planned run name -> its estimate, for the planned train runs (kind "adapter") of a sweep."""
    return {p.name: estimate_run(train_config(p.flags), device) for p in planned if p.kind == "adapter"}


def print_plan_estimates(planned: list, estimates: dict[str, Estimate], budget_mb: float | None) -> None:
    from tabulate import tabulate
    rows = []
    for p in planned:
        est = estimates.get(p.name)
        if est is None:
            continue
        over = () if budget_mb is None else ("over: skipped" if over_budget(est, budget_mb) else "fits",)
        rows.append((p.name, p.diff, f"{est.peak_mb:.0f}", f"{est.weights_mb:.0f}",
                     f"{training_peak_mb(est) - fixed_mb(est):.0f}", f"{est.step_s:.2f}",
                     f"{est.tokens_per_s:.0f}", f"{est.steps * est.step_s / 60:.1f}", *over))
    where = "max_memory_allocated" if any(e.device == "cuda" for e in estimates.values()) else "peak RSS"
    print(tabulate(rows, headers=("run", "config", f"peak MB ({where})", "weights MB", "activations MB",
                                  "step s", "tokens/s", "train min", *(("budget",) if budget_mb is not None else ())),
                   tablefmt="github"))


def check_budget_mb(budget_mb: float | None) -> None:
    """--budget-mb is a positive number of MB (nan compares false with everything, so the plan's
    table and the runs would disagree)."""
    if budget_mb is not None and not (math.isfinite(budget_mb) and budget_mb > 0):
        raise UserError(f"--budget-mb must be a positive number of MB, got {budget_mb}; e.g. --budget-mb 8000, "
                        "or leave it out to run every planned run")


def over_budget(est: Estimate, budget_mb: float | None) -> bool:
    """The one test both the plan's table and the sweep apply: predicted peak above the budget."""
    return budget_mb is not None and est.peak_mb > budget_mb


def budget_reason(est: Estimate, budget_mb: float | None) -> str | None:
    """Why a run is skipped for --budget-mb, or None when it is predicted to fit (or there is no budget)."""
    if not over_budget(est, budget_mb):
        return None
    return (f"skipped for budget: predicted peak {est.peak_mb:.0f} MB > --budget-mb {budget_mb:.0f} "
            f"(common/train/estimate.py; weights {est.weights_mb:.0f} MB, activations+logits "
            f"{training_peak_mb(est) - fixed_mb(est):.0f} MB)")


def record_skipped(tracker, name: str, suite: str, flags: dict[str, Any], est: Estimate, reason: str) -> int:
    """A train run with status 'skipped', the reason as its error and the prediction as its scores.
    Re-planning the same sweep with the same budget finds it instead of adding another."""
    for run in tracker.runs(name=name, kind="train", status="skipped"):
        if run["error"] == reason:
            return run["id"]
    run_id = tracker.start_run(name, "train", {"sweep_flags": flags, "name": name}, suite=suite)
    tracker.log_scores(run_id, "train", est.scores())
    tracker.finish_run(run_id, "skipped", error=reason)
    return run_id


def step_seconds(tracker, run_id: int) -> list[float]:
    """Seconds of each optimizer step of a run, from its per-step tokens_seen and tokens_per_s ([] when they
    were not recorded step by step)."""
    seen = [m["value"] for m in tracker.metrics(run_id, "tokens_seen")]
    rates = [m["value"] for m in tracker.metrics(run_id, "tokens_per_s")]
    if not seen or len(seen) != len(rates):
        return []
    tokens = [b - a for a, b in zip([0.0] + seen, seen)]
    return [t / r for t, r in zip(tokens, rates) if r]


def measured_step_s(tracker, run_id: int) -> float | None:
    """Median seconds per optimizer step of a run (the first step, a warm-up, left out when there are more)."""
    seconds = step_seconds(tracker, run_id)
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds) if seconds else None


def predicted_vs_measured(tracker, suite: str | None = None) -> list[dict[str, Any]]:
    """One row per completed train run that recorded a prediction: predicted and measured peak memory
    (peak_gpu_allocated_mb on CUDA, else peak_rss_mb) and step time, and their relative errors
    (predicted - measured) / measured. The median step time is compared with the mean prediction."""
    rows = []
    for run in tracker.runs(suite=suite, status="completed", kind="train"):
        scores = {s["name"]: s["value"] for s in tracker.scores(run["id"], "train")}
        if scores.get("predicted_peak_mb") is None:
            continue
        peak = scores.get("peak_gpu_allocated_mb") or scores.get("peak_rss_mb")
        step = measured_step_s(tracker, run["id"])
        rows.append({"run_id": run["id"], "name": run["name"], "suite": run["suite"],
                     "predicted_peak_mb": scores["predicted_peak_mb"], "measured_peak_mb": peak,
                     "peak_error": relative_error(scores["predicted_peak_mb"], peak) if peak else None,
                     "predicted_step_s": scores.get("predicted_step_s"), "measured_step_s": step,
                     "step_error": relative_error(scores["predicted_step_s"], step)
                     if step and scores.get("predicted_step_s") else None})
    return rows


def skipped_runs(tracker, suite: str | None = None) -> list[dict[str, Any]]:
    """Runs a sweep skipped (status 'skipped'), with their reason and predicted peak, for report.py."""
    rows = []
    for run in tracker.runs(suite=suite, status="skipped"):
        scores = {s["name"]: s["value"] for s in tracker.scores(run["id"], "train")}
        rows.append({"run_id": run["id"], "name": run["name"], "suite": run["suite"], "reason": run["error"],
                     "predicted_peak_mb": scores.get("predicted_peak_mb")})
    return rows



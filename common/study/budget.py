"""A sweep's costs before and after: the predicted peak memory and step time of every planned run
(sweep.py --estimate / --budget-mb, runs over the budget recorded as skipped), the predicted train and
evaluation time of a plan (sweep.py --dry-run), and predicted-vs-measured rows for the report. The training
prediction itself is common/train/estimate.py; train.py records it with every run. Memory is in MiB (2^20 bytes).

    sweep.py --estimate/--budget-mb   check_budget_mb(...), plan_estimates(planned, device), over_budget(...),
                                      budget_reason(...), record_skipped(...)
    sweep.py --dry-run                print_plan_costs(tracker, planned, device)
    report.py                         predicted_vs_measured(tracker), skipped_runs(tracker)

An evaluation's time is predicted from this machine's record, not from a model: problems x samples x the median
seconds (generation + execution) per sample that completed evaluations of the same benchmark took on this host
(their `seconds_per_problem` score). With no such evaluation recorded the prediction is "unknown".
"""
import dataclasses
import math
import socket
import statistics
from typing import Any

import torch

from common.config import TrainConfig
from common.errors import UserError
from common.study import suites as S
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
    print(tabulate(rows, headers=("run", "config", f"peak MiB ({where})", "weights MiB", "activations MiB",
                                  "step s", "tokens/s", "train min", *(("budget",) if budget_mb is not None else ())),
                   tablefmt="github"))


def check_budget_mb(budget_mb: float | None) -> None:
    """--budget-mb is a positive number of MiB (nan compares false with everything, so the plan's
    table and the runs would disagree)."""
    if budget_mb is not None and not (math.isfinite(budget_mb) and budget_mb > 0):
        raise UserError(f"--budget-mb must be a positive number of MiB, got {budget_mb}; e.g. --budget-mb 8000, "
                        "or leave it out to run every planned run")


def over_budget(est: Estimate, budget_mb: float | None) -> bool:
    """The one test both the plan's table and the sweep apply: predicted peak above the budget."""
    return budget_mb is not None and est.peak_mb > budget_mb


def budget_reason(est: Estimate, budget_mb: float | None) -> str | None:
    """Why a run is skipped for --budget-mb, or None when it is predicted to fit (or there is no budget)."""
    if not over_budget(est, budget_mb):
        return None
    return (f"skipped for budget: predicted peak {est.peak_mb:.0f} MiB > --budget-mb {budget_mb:.0f} "
            f"(common/train/estimate.py; weights {est.weights_mb:.0f} MiB, activations+logits "
            f"{training_peak_mb(est) - fixed_mb(est):.0f} MiB)")


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


# ---------------------------------------------------------------------------- a plan's time (--dry-run)

HUMANEVAL_PROBLEMS = 164


@dataclasses.dataclass(frozen=True)
class EvalRate:
    """What this machine's completed evaluations of one benchmark took."""
    seconds_per_sample: float    # median generation + execution seconds per generated sample
    problems: int                # the most problems one of them generated for (heldout: its test split, or less)
    runs: int


def recorded_eval_rates(tracker, host: str | None = None) -> dict[str, EvalRate]:
    """Benchmark -> its EvalRate, from the completed evaluations run on `host` (default: this machine)."""
    host = host or socket.gethostname()
    seen: dict[str, list[tuple[float, int]]] = {}
    for run in tracker.runs(kind="eval", status="completed"):
        if run["host"] != host:
            continue
        samples = (run["config"] or {}).get("n_samples") or 1
        for score in tracker.scores(run["id"]):
            if score["name"] == "seconds_per_problem" and score["value"] and score["n"]:
                seen.setdefault(score["benchmark"], []).append((score["value"] / samples, int(score["n"])))
    return {bench: EvalRate(statistics.median(s for s, _ in xs), max(n for _, n in xs), len(xs))
            for bench, xs in seen.items()}


def predicted_eval_seconds(flags: dict[str, Any], rates: dict[str, EvalRate]) -> float | None:
    """Seconds the planned evaluation of `flags` will take here, or None when a benchmark of it has no record."""
    def get(key: str) -> Any:
        return flags[key] if flags.get(key) is not None else S.EVAL_FLAGS[key][1]

    total = 0.0
    for bench in [b.strip() for b in (get("benchmark") or "humaneval,heldout").split(",") if b.strip()]:
        rate = rates.get(bench)
        if rate is None:
            return None
        limits = [get("eval_limit"), *([get("heldout_gen")] if bench == "heldout" else [])]
        problems = min([HUMANEVAL_PROBLEMS if bench == "humaneval" else rate.problems]
                       + [x for x in limits if x is not None])
        total += problems * get("n_samples") * rate.seconds_per_sample
    return total


def predicted_train_seconds(p, device: torch.device) -> float | None:
    """The planned train run's predicted time (estimate.py, an idle machine), None when it cannot be estimated
    here (a hub model not on this machine, say)."""
    if p.kind != "adapter":
        return 0.0
    try:
        est = estimate_run(train_config(p.flags), device)
    except (UserError, OSError, ValueError):
        return None
    return est.steps * est.step_s


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    minutes = seconds / 60
    return f"{minutes / 60:.1f} h" if minutes >= 90 else f"{minutes:.0f} min" if minutes >= 1 else "< 1 min"


def print_plan_costs(tracker, planned: list, device: torch.device) -> None:
    """Each planned run's predicted train and evaluation time, the total, and where the figures come from."""
    from tabulate import tabulate
    rates = recorded_eval_rates(tracker)
    rows, totals = [], [0.0, 0.0]
    for p in planned:
        costs = [predicted_train_seconds(p, device), predicted_eval_seconds(p.flags, rates)]
        totals = [None if t is None or c is None else t + c for t, c in zip(totals, costs)]
        both = None if None in costs else sum(costs)
        rows.append((p.eval_name if p.kind == "base" else p.name, "-" if p.kind == "base" else duration(costs[0]),
                     duration(costs[1]), duration(both)))
    print(tabulate(rows, headers=("run", "train (predicted)", "eval (predicted)", "total"), tablefmt="github"))
    whole = None if None in totals else sum(totals)
    print(f"time: train {duration(totals[0])} + eval {duration(totals[1])} = {duration(whole)}, one run at a time. "
          "Train: common/train/estimate.py for an idle machine (train.py --estimate --probe times real steps here). "
          + eval_source(rates))


def eval_source(rates: dict[str, EvalRate]) -> str:
    if not rates:
        return ("Eval: unknown, no evaluation has completed on this machine in this database yet (the prediction "
                "is problems x samples x the seconds per sample measured here).")
    seen = ", ".join(f"{bench} {r.seconds_per_sample:.1f} s/sample (median of {r.runs})" for bench, r in rates.items())
    return (f"Eval: problems x samples x seconds per sample that completed evaluations took on this machine: {seen}; "
            "unknown for a benchmark not evaluated here yet.")


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

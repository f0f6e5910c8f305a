"""Predictions at work: train.py --estimate/--probe, the prediction recorded with every run, the sweep's
--estimate/--budget-mb, and predicted-vs-measured rows for report.py. The model is common/train/estimate.py.

    train.py --estimate [--probe]      common/train/build.py estimate(...) -> probe_and_refine(...)
    train.py (every run)              prediction_scores(...) -> scores predicted_peak_mb, predicted_step_s
    sweep.py --estimate/--budget-mb   check_budget_mb(...), plan_estimates(planned, device), over_budget(...),
                                      budget_reason(...), record_skipped(...)
    report.py                         predicted_vs_measured(tracker) -> rows with the relative errors
"""
import dataclasses
import math
import statistics
import sys
import time
from typing import Any, Callable

import torch

from common.config import TrainConfig
from common.errors import UserError, first_line
from common.train.estimate import MB, Estimate, estimate_run, fixed_mb, refine, training_peak_mb

PROBE_STEPS = 3


def lengths_of(encoded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Encoded examples (train.py's train_set) reduced to what the estimate reads."""
    from common.text.prompts import IGNORE_INDEX
    return [{"input_ids": range(len(e["input_ids"])), "labelled": sum(x != IGNORE_INDEX for x in e["labels"][1:])}
            for e in encoded]


def probe_and_refine(cfg: TrainConfig, est: Estimate, train_set: list[dict[str, Any]], device: torch.device,
                     step: Callable[[list], Any]) -> Estimate:
    """Run the run's first PROBE_STEPS optimizer steps through `step(rows)`, print predicted vs measured
    (peak memory over the steps; step time over all but the first, a warm-up), return `est` rescaled."""
    from common.train.batching import epoch_batches
    examples = lengths_of(train_set)
    probe = estimate_run(dataclasses.replace(cfg, max_steps=PROBE_STEPS), device, examples)
    batches = epoch_batches(train_set, cfg.batch_size, cfg.seed, 0, cfg.packing, cfg.max_seq_len)
    if len(batches) < PROBE_STEPS * cfg.grad_accum:
        raise UserError(f"--probe needs {PROBE_STEPS} steps in one epoch; lower --batch-size or add data")
    reset_peak_memory(device)
    seconds = []
    for i in range(probe.steps):
        began = time.perf_counter()
        step(batches[i * cfg.grad_accum:(i + 1) * cfg.grad_accum])
        seconds.append(time.perf_counter() - began)
    peak = peak_memory_mb(device)
    timed = slice(1, None) if len(seconds) > 1 else slice(None)
    measured_s = sum(seconds[timed]) / len(seconds[timed])
    predicted_s = sum(probe.step_seconds[timed]) / len(probe.step_seconds[timed])
    predicted_peak = training_peak_mb(probe)  # the probe's peak counts from after loading (reset_peak_memory)
    print(f"probe, {probe.steps} steps: peak {peak:.0f} MB measured vs {predicted_peak:.0f} predicted "
          f"({relative_error(predicted_peak, peak):+.0%}); step {measured_s:.2f} s measured vs {predicted_s:.2f} "
          f"predicted ({relative_error(predicted_s, measured_s):+.0%}, first step left out)")
    probe = dataclasses.replace(probe, step_s=predicted_s)
    return refine(est, peak, measured_s, probe)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator counter, or the kernel's VmHWM of this process (clear_refs 5)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # no reset possible: the peak then includes loading the model


def peak_memory_mb(device: torch.device) -> float:
    """Peak since `reset_peak_memory`: max_memory_allocated on CUDA, VmHWM (peak RSS) on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MB
    from common.env import peak_memory
    try:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return peak_memory(device)["peak_rss_mb"]


def relative_error(predicted: float, measured: float) -> float:
    """(predicted - measured) / measured."""
    return (predicted - measured) / measured if measured else float("nan")


def prediction_scores(cfg: TrainConfig, train_set: list[dict[str, Any]], device: torch.device,
                      world: int = 1) -> dict[str, float]:
    """The run's predicted_peak_mb / predicted_step_s / predicted_tokens_per_s, or {} (with a note) when the
    architecture cannot be estimated: a prediction is never a reason for a training run to fail. Runs in a
    forked RNG: the estimate initialises a small random model, and training (and its exact resume) must
    see the random stream it would have seen without it."""
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return estimate_run(cfg, device, lengths_of(train_set), world).scores()
    except Exception as e:  # noqa: BLE001  any failure of the estimate leaves the run itself alone
        print(f"note: no prediction recorded ({type(e).__name__}: {first_line(e)})", file=sys.stderr)
        return {}


# ---------------------------------------------------------------------------- sweeps

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


# ---------------------------------------------------------------------------- report

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

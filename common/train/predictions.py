"""Predictions at work in a training run: train.py --estimate/--probe, and the prediction recorded with every run
(beside the measured peak and step time). The model is common/train/estimate.py; a sweep's use of it is
common/study/budget.py.

    train.py --estimate [--probe]      common/train/build.py estimate(...) -> probe_and_refine(...)
    train.py (every run)              prediction_scores(...) -> scores predicted_peak_mb, predicted_step_s
"""
import dataclasses
import sys
import time
from typing import Any, Callable

import torch

from common.config import TrainConfig
from common.errors import UserError, first_line
from common.train.estimate import MIB, Estimate, estimate_run, refine, training_peak_mb

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
    print(f"probe, {probe.steps} steps: peak {peak:.0f} MiB measured vs {predicted_peak:.0f} predicted "
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
        return torch.cuda.max_memory_allocated(device) / MIB
    from common.env import peak_memory
    try:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024  # VmHWM is in KiB
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


# ---------------------------------------------------------------------------- report

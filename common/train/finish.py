"""The end of a training run: the final adapter (the best validation checkpoint with --load-best), whose
adapter_config.json names the base by its public id and whose README.md is a model card of the run, its scores in
the tracker, run_config.json beside it, and the resume state removed.
"""
import json
import shlex
import shutil
import sys
import time
from typing import Any

from common.env import cpu_contention
from common.model.adapters import publish_base_model
from common.model.lora import save_adapter
from common.train.card import write_model_card
from common.train.loop import Run, TrainState, run_peak_memory
from common.train.steps import load_best_adapter


def finish(run: Run, state: TrainState, ddp_drift: float | None) -> None:
    """Save the final adapter (with --load-best: the best validation checkpoint) and tokenizer, record scores."""
    out, tracker = run.output_dir, run.tracker
    wall = time.perf_counter() - run.started
    final_step = state.step
    if run.cfg.load_best and state.best_step is not None and state.best_step != state.step:
        load_best_adapter(run.model, out / "best")
        final_step = state.best_step
    stop_reason = "early_stopping" if state.step < run.total_steps else "all_steps"
    save_adapter(run.model, out)  # PiSSA/OLoRA: converted for the original base
    publish_base_model(out, run.cfg.model)
    run.tokenizer.save_pretrained(out)
    scores = final_scores(run, state, final_step, stop_reason, wall)
    write_model_card(out, state.config, {**scores, "stop_reason": stop_reason.replace("_", " ")},
                     "python " + shlex.join(sys.argv))
    if ddp_drift is not None:
        scores["ddp_weight_drift"] = ddp_drift
        print(f"DDP: adapter weights across ranks differ by at most {ddp_drift:.3g}")
    scores.update(cpu_contention(run.cpu_start))
    tracker.log_scores(state.run_id, "train", scores)
    (out / "run_config.json").write_text(json.dumps(
        {"run_id": state.run_id, "db": str(tracker.path.resolve()), "status": "completed", "config": state.config,
         "best_dir": str(out / "best"), "best_step": state.best_step, "final_step": final_step,
         "final_adapter": "best" if final_step == state.best_step else "last", "stop_reason": stop_reason},
        indent=2, sort_keys=True) + "\n")
    tracker.finish_run(state.run_id, "completed", wall_seconds=wall)
    run.reporters.close(scores)
    shutil.rmtree(out / "checkpoint", ignore_errors=True)  # resume state is no longer needed
    print(completion_line(state.run_id, scores, stop_reason, out))


def rounded(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def completion_line(run_id: int, scores: dict[str, Any], stop_reason: str, out) -> str:
    """The run's last line: figures rounded, memory in MiB (2^20 bytes, as every stored *_mb score)."""
    peak = scores.get("peak_gpu_allocated_mb", scores["peak_rss_mb"])
    return (f"run {run_id} completed in {scores['wall_seconds']:.0f} s ({stop_reason.replace('_', ' ')}, step "
            f"{scores['steps']}): final adapter = step {scores['final_step']}, val loss "
            f"{rounded(scores['final_val_loss'])}, best {rounded(scores['best_val_loss'])} at step "
            f"{scores['best_step'] if scores['best_step'] is not None else '-'}; adapter "
            f"{scores['adapter_mb']:.1f} MiB in {out}; peak memory {peak:,.0f} MiB")


def final_scores(run: Run, state: TrainState, final_step: int, stop_reason: str, wall: float) -> dict[str, Any]:
    """The train scores; final_val_loss is the saved adapter's validation loss, last_val_loss the last step's."""
    losses = run.tracker.metrics(state.run_id, "loss")
    val = run.tracker.metrics(state.run_id, "val_loss")
    last_val = val[-1]["value"] if val else None
    final_is_best = final_step == state.best_step
    return {"adapter_mb": sum(f.stat().st_size for f in run.output_dir.glob("adapter_model.*")) / 2**20,
            "wall_seconds": wall, "tokens_seen": state.tokens_seen,
            "train_tokens_per_s": state.tokens_seen / max(wall, 1e-9), "steps": state.step,
            "final_train_loss": losses[-1]["value"] if losses else None,
            "final_val_loss": state.best_val_loss if final_is_best else last_val, "last_val_loss": last_val,
            "best_val_loss": state.best_val_loss, "best_step": state.best_step, "final_step": final_step,
            "final_is_best": float(final_is_best), "early_stopped": float(stop_reason == "early_stopping"),
            **({"skipped_steps": state.skipped_steps} if run.scaler else {}), **run_peak_memory(state, run.device),
            "sessions": state.sessions, "mmap_threshold_kb": run.cfg.mmap_threshold_kb}

"""The end of a training run: the final adapter (the best validation checkpoint with --load-best), its scores in
the tracker, run_config.json beside it, and the resume state removed.
"""
import json
import shutil
import time
from typing import Any

from common.train.loop import Run, TrainState, run_peak_memory
from common.model.lora import save_adapter
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
    run.tokenizer.save_pretrained(out)
    scores = final_scores(run, state, final_step, stop_reason, wall)
    if ddp_drift is not None:
        scores["ddp_weight_drift"] = ddp_drift
        print(f"DDP: adapter weights across ranks differ by at most {ddp_drift:.3g}")
    tracker.log_scores(state.run_id, "train", scores)
    (out / "run_config.json").write_text(json.dumps(
        {"run_id": state.run_id, "db": str(tracker.path.resolve()), "status": "completed", "config": state.config,
         "best_dir": str(out / "best"), "best_step": state.best_step, "final_step": final_step,
         "final_adapter": "best" if final_step == state.best_step else "last", "stop_reason": stop_reason},
        indent=2, sort_keys=True) + "\n")
    tracker.finish_run(state.run_id, "completed", wall_seconds=wall)
    run.reporters.close(scores)
    shutil.rmtree(out / "checkpoint", ignore_errors=True)  # resume state is no longer needed
    peak = scores.get("peak_gpu_allocated_mb", scores["peak_rss_mb"])
    print(f"run {state.run_id} completed in {wall:.0f}s ({stop_reason.replace('_', ' ')}, step {state.step}): "
          f"final adapter = step {final_step}, val loss {scores['final_val_loss']}, best {state.best_val_loss} "
          f"at step {state.best_step}; adapter {scores['adapter_mb']:.1f} MB in {out}; peak memory {peak:.0f} MB")


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



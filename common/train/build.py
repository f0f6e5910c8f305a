"""Build a training run: validate the options, load data, weights and LoRA, make the optimizer and schedule, and
restore the state of an interrupted run; `estimate` is train.py --estimate [--probe].

    validate_config(cfg)                                   # bad options fail before anything loads
    run, state = build_run(cfg, tracker, world, rank, device, out)
"""
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import get_scheduler

from common.config import TrainConfig
from common.corpus.splits import load_splits
from common.env import environment
from common.errors import UserError
from common.model.load import compute_dtype, load_model, load_tokenizer
from common.model.lora import attach_lora, parameter_counts, validate_lora_args, validate_variant
from common.model.resolve import resolve_model
from common.options import recorded
from common.text.prompts import choose_template, encode_examples, resolve_format
from common.tracker import Tracker
from common.train.batching import epoch_batches
from common.train.distributed import StopFlag, wrap_ddp
from common.train.estimate import estimate_run, format_estimate
from common.train.lora_kernel import use_fused_lora
from common.train.loop import Run, TrainState, optimizer_step
from common.train.mirrors import parse_report_to
from common.train.predictions import prediction_scores, probe_and_refine
from common.train.steps import CompletionLoss, load_checkpoint, make_optimizer


def validate_config(cfg: TrainConfig) -> None:
    """Every option that can be checked without loading anything; a missing tracker package fails here too."""
    validate_lora_args(cfg.rank, 2 * cfg.rank if cfg.alpha is None else cfg.alpha, cfg.dropout)
    validate_variant(cfg.quant, cfg.init, cfg.dora, cfg.lora_plus_ratio)
    for name in ("batch_size", "grad_accum", "max_seq_len"):
        if getattr(cfg, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    if cfg.max_steps is not None and cfg.max_steps <= 0:
        raise UserError(f"--max-steps must be positive, got {cfg.max_steps}")
    if cfg.train_limit is not None and cfg.train_limit <= 0:
        raise UserError(f"--train-limit must be positive, got {cfg.train_limit}")
    if cfg.epochs <= 0:
        raise UserError(f"--epochs must be positive, got {cfg.epochs}")
    if cfg.lr <= 0:
        raise UserError(f"--lr must be positive, got {cfg.lr}")
    if min(cfg.eval_every, cfg.save_every, cfg.eval_gen, cfg.val_limit, cfg.early_stopping) < 0:
        raise UserError("--eval-every, --save-every, --eval-gen, --val-limit and --early-stopping must be >= 0")
    parse_report_to(cfg.report_to, cfg.tensorboard)  # a missing package fails before the model loads


def build_run(cfg: TrainConfig, tracker: Tracker | None, world: int, rank: int, device: torch.device,
              out: Path) -> tuple[Run, TrainState]:
    """Data, model with LoRA, optimizer and schedule; the state restored from a checkpoint if there is one."""
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model)
    splits = load_splits(cfg.dataset, split_seed=cfg.split_seed, limit=cfg.train_limit, group_key=cfg.group_key,
                         benchmark_files=[f for f in cfg.decontaminate.split(",") if f.strip()],
                         columns=cfg.columns, skip_bad_rows=cfg.skip_bad_rows)
    cfg.format = training_format(cfg.format, tokenizer, announce=rank == 0)  # recorded resolved, for evaluate.py
    template = choose_template(tokenizer, splits.train[0].style, cfg.format)
    train_set, dropped_train = encode_examples(tokenizer, splits.train, template, cfg.max_seq_len, cfg.truncate,
                                               cfg.format)
    val_set, dropped_val = encode_examples(tokenizer, splits.validation[:cfg.val_limit], template,
                                           cfg.max_seq_len, cfg.truncate, cfg.format)
    if not train_set:
        raise UserError(f"no training example fits --max-seq-len {cfg.max_seq_len}; raise it or pass --truncate")
    model = load_model(cfg.model, cfg.quant, device, cfg.dtype)
    dtype = compute_dtype(cfg.quant, device, cfg.dtype)
    if cfg.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = attach_lora(model, cfg.rank, cfg.alpha, cfg.dropout, cfg.modules, rslora=cfg.rslora, dora=cfg.dora,
                        init=cfg.init)
    fused = use_fused_lora(model, cfg.seed) if cfg.lora_kernel == "fused" else None
    cfg.lora_kernel = "fused" if fused else "peft"  # recorded resolved: 4/8-bit bases and DoRA train on peft's
    # A loadable directory (not the embedded alias), so peft finds the base config.json instead of
    # asking the hub for it; run_config.json keeps the name the user gave.
    model.peft_config["default"].base_model_name_or_path = resolve_model(cfg.model)
    config = recorded(cfg)
    config.update(alpha=2 * cfg.rank if cfg.alpha is None else cfg.alpha, template=template,
                  target_modules=sorted(model.peft_config["default"].target_modules), world_size=world,
                  device=device.type, dtype=str(dtype).replace("torch.", ""), dataset_source=splits.source,
                  train_examples=len(train_set), val_examples=len(val_set), data_dropped=splits.dropped)
    loss_fn = CompletionLoss(model, head_chunk=cfg.head_chunk or None)
    optimizer = make_optimizer(model, cfg)
    batches = epoch_batches(train_set, cfg.batch_size, cfg.seed, 0, cfg.packing, cfg.max_seq_len, cfg.max_tokens)
    steps_per_epoch = len(batches) // (cfg.grad_accum * world)
    if steps_per_epoch == 0:
        raise UserError(f"{len(train_set)} training examples make no full step of batch {cfg.batch_size} x "
                        f"grad-accum {cfg.grad_accum} x {world} processes; lower them or add data")
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    warmup = int(cfg.warmup * total_steps) if cfg.warmup < 1 else int(cfg.warmup)
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    state = TrainState(config=config)
    checkpoint = out / "checkpoint"
    if (checkpoint / "state.pt").is_file():
        state = restore(checkpoint, config, model, optimizer, scheduler)
    # fp16 (GPUs without bf16) needs loss scaling; bf16 has fp32's exponent range and does not.
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    if scaler and state.scaler:
        scaler.load_state_dict(state.scaler)
    run = Run(cfg, model, loss_fn, wrap_ddp(loss_fn) if world > 1 else loss_fn, optimizer, scheduler, tokenizer,
              train_set, val_set, splits.validation, template, total_steps, device, dtype, world, rank, out,
              tracker, scaler, StopFlag(), time.perf_counter() - state.wall_seconds, fused_lora=fused)
    if tracker:
        start_recording(run, state, splits.dropped, dropped_train + dropped_val)
    return run, state


def training_format(format: str, tokenizer, announce: bool) -> str:
    """--format resolved (common/text/prompts.py resolve_format); `auto` says on stderr what it chose and why."""
    chosen = resolve_format(tokenizer, format)
    if format == "auto" and announce:
        why = ("the model has a chat template: chat turns, as evaluate.py's instruct protocol prompts; "
               "--format completion trains plain continuation") if chosen == "instruct" else \
              "the model has no chat template: plain continuation; --format instruct trains instruct turns"
        print(f"format: {chosen} (--format auto; {why})", file=sys.stderr)
    return chosen


def restore(checkpoint: Path, config: dict[str, Any], model, optimizer, scheduler) -> TrainState:
    saved = torch.load(checkpoint / "state.pt", weights_only=False, map_location="cpu")["progress"]
    old = saved.get("config") or {}
    if old and "lora_kernel" not in old:
        old = {**old, "lora_kernel": "peft"}  # checkpoints from before --lora-kernel trained on PEFT's layers
    if old != config:
        changed = sorted(k for k in set(config) | set(old) if config.get(k) != old.get(k))
        hint = f"--lora-kernel {old['lora_kernel']} continues it, or " if changed == ["lora_kernel"] else ""
        raise UserError(f"{checkpoint} holds a run with a different config ({', '.join(changed)}); "
                        f"{hint}pass another --name or --output-dir, or delete the checkpoint")
    try:
        return TrainState(**load_checkpoint(checkpoint, model, optimizer, scheduler))
    except TypeError as e:
        raise UserError(f"{checkpoint} was written by another version of train.py ({e}); delete it to start "
                        "fresh") from e


def start_recording(run: Run, state: TrainState, dropped_data: dict[str, int], dropped_long: int) -> None:
    """A new tracker run, or the interrupted one this checkpoint belongs to, marked running again."""
    tracker, cfg = run.tracker, run.cfg
    previous = tracker.run(state.run_id) if state.run_id is not None else None
    resuming = previous is not None and previous["name"] == cfg.name
    if resuming:
        tracker.resume_run(state.run_id)
        state.sessions += 1
    else:
        state.run_id = tracker.start_run(cfg.name, "train", state.config, suite=cfg.suite,
                                         output_dir=str(run.output_dir), environment=environment())
    counts = parameter_counts(run.model)
    dropped = {f"dropped_{k}": v for k, v in dropped_data.items()}
    predicted = prediction_scores(cfg, run.train_set, run.device, run.world)  # beside the measured peak and steps
    tracker.log_scores(state.run_id, "train", {**counts, "dropped_too_long": dropped_long, **dropped, **predicted})
    print(f"run {state.run_id} '{cfg.name}': {counts['trainable_params']:,} trainable of "
          f"{counts['total_params']:,} params ({counts['trainable_pct']:.2f}%), {len(run.train_set)} train / "
          f"{len(run.val_set)} val examples ({dropped_long} dropped as longer than {cfg.max_seq_len} tokens), "
          f"{run.total_steps} steps" + (f", resuming at step {state.step}" if state.step else ""), flush=True)
    print(plan_line(run.total_steps - state.step, predicted), flush=True)


def plan_line(steps: int, predicted: dict[str, float]) -> str:
    """What the run is about to cost, said before its first step: steps, predicted time and peak memory."""
    if not predicted:
        return f"plan: {steps:,} steps to go (no prediction for this model; train.py --estimate --probe measures one)"
    minutes = steps * predicted["predicted_step_s"] / 60
    took = f"{minutes / 60:.1f} h" if minutes >= 90 else f"{minutes:.0f} min" if minutes >= 1 else "under a minute"
    return (f"plan: {steps:,} steps to go, predicted {predicted['predicted_step_s']:.2f} s/step = {took} on an idle "
            f"machine, peak memory {predicted['predicted_peak_mb']:,.0f} MiB (common/train/estimate.py; "
            "train.py --estimate --probe measures a few steps here; --max-steps N runs fewer)")


def estimate(cfg: TrainConfig, device: torch.device, world: int, rank: int) -> int:
    """train.py --estimate: print the prediction; with --probe, build the run in a scratch directory and rescale
    the prediction by its first optimizer steps."""
    est = estimate_run(cfg, device, world=world)
    print(format_estimate(est, f"estimate for {cfg.name}"))
    if cfg.probe:
        if world > 1:
            raise UserError("--probe runs on one process; run it without torchrun/accelerate")
        with tempfile.TemporaryDirectory() as tmp:
            run, state = build_run(cfg, None, world, rank, device, Path(tmp))
            est = probe_and_refine(cfg, est, run.train_set, device, lambda rows: optimizer_step(run, state, rows))
        print(format_estimate(est, "refined by the probe"))
    return 0

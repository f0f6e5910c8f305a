"""Fine-tune a causal LM for Python code with LoRA (16-bit), QLoRA (4-bit NF4) or 8-bit base weights.

    python train.py --rank 16 --quant 4bit                  # embedded SmolLM2-135M, stdlib pairs, CPU ok
    python train.py --model Qwen/Qwen2.5-Coder-1.5B --quant 4bit --dataset data.jsonl
    torchrun --nproc_per_node 2 train.py --rank 16          # DDP; `accelerate launch train.py` works too
    python train.py --config run.yaml --lr 1e-4             # file supplies defaults, flags win

Saves a standard PEFT adapter (adapter_config.json + adapter_model.safetensors,
tokenizer, run_config.json) in --output-dir (default: the run directory beside the
--db file, runs/<db>-<db id>/train/<name>; see common/tracker.py), the best
validation checkpoint (adapter + tokenizer) in <output-dir>/best, and resumable state in
<output-dir>/checkpoint. With --load-best (the default) the final adapter is the best
validation checkpoint; --early-stopping N stops after N evaluations without a lower
validation loss (run_config.json records final_step and stop_reason). --report-to
tensorboard,wandb,mlflow mirrors the tracker's scalars and config (common/train/mirrors.py).
Everything is recorded in the run tracker (--db): resolved config, parameter counts,
per-step loss/lr/grad-norm/tokens-per-second/memory, validation loss and generation
quality over training, peak memory and wall time. Ctrl-C or SIGTERM saves a checkpoint and marks the run interrupted;
re-running the same command (or --resume) continues where it stopped.
"""
import contextlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import common  # noqa: F401  before transformers: it silences log lines bitsandbytes prints on import
import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers import get_scheduler

from common.study import suites
from common.model.adapters import completed_run
from common.train.batching import collate, epoch_batches, label_tokens, real_tokens
from common.config import TrainConfig
from common.corpus.splits import load_splits
from common.train.distributed import StopFlag, ddp_weight_drift, stop_requested, wrap_ddp
from common.env import current_memory_mb, default_device, environment, peak_memory, set_mmap_threshold
from common.errors import UserError, run_cli
from common.text.generation import generate
from common.train.predictions import estimate_main, prediction_scores
from common.model.lora import attach_lora, parameter_counts, save_adapter, validate_lora_args, validate_variant
from common.judge.metrics import chrf, perplexity, syntax_error_category
from common.options import parse_config, recorded
from common.paths import check_writable
from common.text.prompts import choose_template, encode_examples
from common.text.protocols import answer_code, program, reference_code, render
from common.model.load import check_quant, compute_dtype, load_model, load_tokenizer
from common.model.resolve import resolve_model
from common.tracker import Tracker
from common.train.mirrors import Reporters, open_reporters, parse_report_to
from common.train.steps import (CompletionLoss, autocast, early_stopping_due, load_best_adapter, load_checkpoint,
                             make_optimizer, mean_nll, save_best, save_checkpoint)


@dataclass
class TrainState:
    """Where training stands. Saved in every checkpoint: resuming restores exactly this."""
    step: int = 0                        # optimizer steps done
    epoch: int = 0
    batch: int = 0                       # micro-batches of this epoch consumed (on this process)
    tokens_seen: int = 0                 # real (non-pad) tokens, all processes
    best_val_loss: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0            # validations since the best one (for --early-stopping)
    run_id: int | None = None            # the tracker run this training writes to
    wall_seconds: float = 0.0            # time spent before the last interruption
    skipped_steps: int = 0               # fp16: steps the gradient scaler skipped for inf/NaN gradients
    scaler: dict[str, Any] | None = None  # fp16: the gradient scaler's state (scale, growth tracker)
    sessions: int = 1                    # processes that have trained this run (1 + resumes)
    # Peak memory (MB) of the earlier sessions, as of their last checkpoint: a resumed run reports the whole run's
    # peak, not just its last process's
    peak_memory: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)   # the recorded config it was started with


@dataclass
class Run:
    """Everything the loop works on, built once by `main`."""
    cfg: TrainConfig
    model: Any                           # PeftModel
    loss_fn: CompletionLoss
    ddp: torch.nn.Module                 # loss_fn, DDP-wrapped when world > 1
    optimizer: torch.optim.Optimizer
    scheduler: Any
    tokenizer: Any
    train_set: list[dict[str, Any]]
    val_set: list[dict[str, Any]]
    val_examples: list                   # common.corpus.splits.Example, for generation quality
    template: str
    total_steps: int
    device: torch.device
    dtype: torch.dtype
    world: int
    rank: int
    output_dir: Path
    tracker: Tracker | None              # None off the main process
    scaler: torch.amp.GradScaler | None  # fp16 only: loss scaling so small gradients do not flush to zero
    stop: StopFlag
    started: float                       # perf_counter at (virtual) start, including earlier sessions
    reporters: Reporters | None = None   # TensorBoard / W&B / MLflow mirrors of the tracker (rank 0)


def validate(cfg: TrainConfig) -> None:
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


def default_name(cfg: TrainConfig) -> str:
    """The name sweep.py gives the same config: `r16-qkvo-16bit-s0-<hash of the non-default options>`."""
    return suites.train_name(asdict(cfg))


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(TrainConfig, argv, __doc__.split("\n\n")[0])
    validate(cfg)
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    device = default_device()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    check_quant(cfg.quant, device)
    if not set_mmap_threshold(cfg.mmap_threshold_kb):
        cfg.mmap_threshold_kb = 0  # recorded with the peak memory: glibc's dynamic default was in effect
    if cfg.optim == "paged_adamw_8bit" and device.type != "cuda":
        print("note: --optim paged_adamw_8bit pages optimizer state only on CUDA; here it runs as 8-bit AdamW "
              "without paging", file=sys.stderr)
    if cfg.estimate:  # the prediction, before any weight is loaded; --probe: a few real steps rescale it
        return estimate_main(cfg, device, world, lambda out: build_run(cfg, None, world, rank, device, out),
                             lambda run, state, rows: optimizer_step(run, state, rows))
    # Every process opens the tracker (for the run directory, which follows the database); only rank 0 writes.
    # Rank 0 creates the database first: concurrent first opens race for SQLite's WAL switch.
    tracker = Tracker(cfg.db) if rank == 0 else None
    if world > 1:
        dist.barrier()
    tracker = tracker or Tracker(cfg.db)
    cfg.name = cfg.name or default_name(cfg)
    out = Path(cfg.output_dir) if cfg.output_dir else tracker.run_dir("train", cfg.name)
    cfg.output_dir = str(out)
    if rank == 0:
        check_writable(out)
    done = completed_run(out, tracker)
    if done is not None and not cfg.resume:
        print(f"run '{cfg.name}' already completed (run {done['run_id']} in {done['db']}); adapter in {out}. "
              "Pass another --name to train again.")
        return 0
    checkpoint = out / "checkpoint" / "state.pt"
    if cfg.resume and not checkpoint.is_file():
        raise UserError(f"--resume: no checkpoint in {checkpoint.parent}; drop --resume to start fresh")
    run, state = build_run(cfg, tracker if rank == 0 else None, world, rank, device, out)
    if rank != 0:
        tracker.close()
    status = train(run, state)
    if status == "interrupted":
        return 130
    drift = ddp_weight_drift(run.model) if world > 1 else None
    if rank == 0:
        finish(run, state, drift)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


def build_run(cfg: TrainConfig, tracker: Tracker | None, world: int, rank: int, device: torch.device,
              out: Path) -> tuple[Run, TrainState]:
    """Data, model with LoRA, optimizer and schedule; the state restored from a checkpoint if there is one."""
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model)
    splits = load_splits(cfg.dataset, split_seed=cfg.split_seed, limit=cfg.train_limit, group_key=cfg.group_key,
                         benchmark_files=[f for f in cfg.decontaminate.split(",") if f.strip()],
                         columns=cfg.columns, skip_bad_rows=cfg.skip_bad_rows)
    template = choose_template(tokenizer, splits.train[0].style, cfg.format)
    train_set, dropped_train = encode_examples(tokenizer, splits.train, template, cfg.max_seq_len, cfg.truncate,
                                               cfg.format)
    val_set, dropped_val = encode_examples(tokenizer, splits.validation[:cfg.val_limit], template,
                                           cfg.max_seq_len, cfg.truncate, cfg.format)
    if not train_set:
        raise UserError(f"no training example fits --max-seq-len {cfg.max_seq_len}; raise it or pass --truncate")
    model = load_model(cfg.model, cfg.quant, device)
    dtype = compute_dtype(cfg.quant, device)
    if cfg.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = attach_lora(model, cfg.rank, cfg.alpha, cfg.dropout, cfg.modules, rslora=cfg.rslora, dora=cfg.dora,
                        init=cfg.init)
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
              tracker, scaler, StopFlag(), time.perf_counter() - state.wall_seconds)
    if tracker:
        start_recording(run, state, splits.dropped, dropped_train + dropped_val)
    return run, state


def restore(checkpoint: Path, config: dict[str, Any], model, optimizer, scheduler) -> TrainState:
    saved = torch.load(checkpoint / "state.pt", weights_only=False, map_location="cpu")["progress"]
    if saved.get("config") != config:
        old = saved.get("config") or {}
        changed = sorted(k for k in set(config) | set(old) if config.get(k) != old.get(k))
        raise UserError(f"{checkpoint} holds a run with a different config ({', '.join(changed)}); "
                        "pass another --name or --output-dir, or delete the checkpoint")
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


def train(run: Run, state: TrainState) -> str:
    """The loop, with the run finished as failed/interrupted on any exception; saves a checkpoint on a stop."""
    recording = run.tracker.recording(state.run_id, run.started) if run.tracker else contextlib.nullcontext()
    if run.tracker:
        run.reporters = open_reporters(run.cfg.report_to, run.cfg.name, state.config, run.cfg.tensorboard,
                                       run.output_dir, run.tracker.path.parent / "mlruns")
    status = "failed"
    try:
        with recording:
            status = train_loop(run.cfg, state, run)
    finally:
        run.stop.restore()
        if run.reporters and status != "completed":
            run.reporters.close(status=status)
    if status == "interrupted" and run.tracker:
        checkpoint(run, state)
        run.tracker.finish_run(state.run_id, "interrupted", wall_seconds=state.wall_seconds)
        print(f"interrupted at step {state.step}; checkpoint saved, re-run the same command to resume")
    return status


def train_loop(cfg: TrainConfig, state: TrainState, run: Run) -> str:
    """Optimizer steps until `run.total_steps`; "completed", or "interrupted" when a stop was asked for."""
    bar = tqdm(total=run.total_steps, initial=state.step, desc="train", unit="step",
               disable=cfg.quiet or run.tracker is None, dynamic_ncols=True)
    run.model.train()
    while state.step < run.total_steps:
        batches = epoch_batches(run.train_set, cfg.batch_size, cfg.seed, state.epoch, cfg.packing, cfg.max_seq_len,
                                cfg.max_tokens)
        per_rank = len(batches) // run.world
        batches = batches[run.rank * per_rank:(run.rank + 1) * per_rank]  # equal shards keep DDP in lockstep
        while state.batch + cfg.grad_accum <= len(batches) and state.step < run.total_steps:
            values = optimizer_step(run, state, batches[state.batch:state.batch + cfg.grad_accum])
            log_step(run, state, values, bar)
            if (cfg.eval_every and state.step % cfg.eval_every == 0) or state.step == run.total_steps:
                run_validation(run, state)
                if early_stopping_due(state.evals_since_best, cfg.early_stopping, run.world):
                    bar.close()
                    return "completed"
            if stop_requested(run.stop, run.world):
                bar.close()
                return "interrupted"
            if run.tracker and cfg.save_every and state.step % cfg.save_every == 0 and state.step < run.total_steps:
                checkpoint(run, state)
        if state.step < run.total_steps:
            state.epoch += 1
            state.batch = 0
    bar.close()
    return "completed"


def checkpoint(run: Run, state: TrainState) -> None:
    state.wall_seconds = time.perf_counter() - run.started
    state.peak_memory = run_peak_memory(state, run.device)
    state.scaler = run.scaler.state_dict() if run.scaler else None
    save_checkpoint(run.output_dir / "checkpoint", run.model, run.optimizer, run.scheduler, asdict(state))


def optimizer_step(run: Run, state: TrainState, rows: list[list[list[int]]]) -> dict[str, float]:
    """One optimizer step over `rows` (grad-accum micro-batches); returns the step's logged values."""
    step_start = time.perf_counter()
    micro = [collate(run.train_set, r, run.tokenizer.pad_token_id, run.cfg.packing) for r in rows]
    for m, r in zip(micro, rows):
        if label_tokens(m) == 0:
            ids = [run.train_set[i]["id"] for row in r for i in row]
            raise UserError(f"every label is masked in a batch of {', '.join(ids[:3])}...: the completions "
                            "are empty or truncated away; check the dataset or raise --max-seq-len")
    # Normalise by the tokens of the whole optimizer step on all processes, not per micro-batch.
    n_labels = torch.tensor(sum(label_tokens(m) for m in micro), dtype=torch.float64)
    if run.world > 1:
        dist.all_reduce(n_labels)
    loss_sum = torch.zeros((), device=run.device)
    for i, m in enumerate(micro):
        sync = i == len(micro) - 1 or run.world == 1
        with (contextlib.nullcontext() if sync else run.ddp.no_sync()), autocast(run.device, run.dtype):
            loss, _ = run.ddp(**{k: v.to(run.device) for k, v in m.items()})
            # DDP averages gradients over processes, so scale back up by world size.
            scaled = loss * run.world / n_labels.item()
            (run.scaler.scale(scaled) if run.scaler else scaled).backward()
        loss_sum += loss.detach()
    grad_norm, stepped = clip_and_step(run)
    if stepped:
        run.scheduler.step()
    else:
        state.skipped_steps += 1
    run.optimizer.zero_grad(set_to_none=True)
    if run.world > 1:
        dist.all_reduce(loss_sum)
    state.step += 1
    state.batch += len(rows)
    tokens = sum(real_tokens(run.train_set, r) for r in rows) * run.world
    state.tokens_seen += tokens
    values = {"loss": loss_sum.item() / n_labels.item(), "lr": run.scheduler.get_last_lr()[0],
              "grad_norm": float(grad_norm), "tokens_per_s": tokens / (time.perf_counter() - step_start),
              "tokens_seen": state.tokens_seen, "memory_mb": current_memory_mb(run.device)}
    if run.scaler:
        values.update(loss_scale=run.scaler.get_scale(), skipped_steps=state.skipped_steps)
    return values


def clip_and_step(run: Run) -> tuple[torch.Tensor, bool]:
    """Clip the true (unscaled) gradients, then step; (grad norm, whether the optimizer stepped).

    With an fp16 scaler a step whose gradients hold inf/NaN is skipped and the scale halved
    (the scaler's own rule), so an overflow costs one step, never the weights.
    """
    params = [p for p in run.model.parameters() if p.requires_grad]
    if run.scaler is None:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, run.cfg.max_grad_norm or float("inf"))
        run.optimizer.step()
        return grad_norm, True
    run.scaler.unscale_(run.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, run.cfg.max_grad_norm or float("inf"))
    scale = run.scaler.get_scale()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return grad_norm, run.scaler.get_scale() >= scale


def log_step(run: Run, state: TrainState, values: dict[str, float], bar: tqdm) -> None:
    if not run.tracker:
        return
    run.tracker.log_metrics(state.run_id, state.step, values)
    run.reporters.log(values, state.step, "train")
    bar.set_postfix(loss=f"{values['loss']:.3f}", tok_s=f"{values['tokens_per_s']:.0f}")
    bar.update(1)
    if run.cfg.quiet and (state.step % 10 == 0 or state.step == run.total_steps):
        print(f"step {state.step}/{run.total_steps} loss {values['loss']:.4f} lr {values['lr']:.2e} "
              f"tok/s {values['tokens_per_s']:.0f}", flush=True)


def run_validation(run: Run, state: TrainState) -> None:
    """Held-out loss/perplexity and a few generations scored for chrF and syntax; best adapter (+ tokenizer) kept."""
    if run.rank == 0 and run.val_set:
        val_loss, _ = mean_nll(run.loss_fn, run.val_set, run.cfg.batch_size * 2, run.tokenizer.pad_token_id,
                               run.device, run.dtype)
        values = {"val_loss": val_loss, "val_ppl": perplexity(val_loss)}
        if run.cfg.eval_gen:
            values.update(generation_quality(run, run.val_examples[:run.cfg.eval_gen]))
        run.tracker.log_metrics(state.run_id, state.step, values)
        run.reporters.log(values, state.step, "val")
        if state.best_val_loss is None or val_loss < state.best_val_loss:
            state.best_val_loss, state.best_step, state.evals_since_best = val_loss, state.step, 0
            save_best(run.output_dir / "best", run.model, run.tokenizer)
        else:
            state.evals_since_best += 1
        tqdm.write(f"step {state.step}: val loss {val_loss:.4f} (ppl {values['val_ppl']:.2f})"
                   + (f", chrF {values['val_chrf']:.1f}, syntax ok {values['val_syntax_ok']:.0%}"
                      if "val_chrf" in values else ""))
    if run.world > 1:
        dist.barrier()


def generation_quality(run: Run, examples: list) -> dict[str, float]:
    """chrF and compile rate of a few validation prompts, under the protocol matching the training format."""
    protocol = "instruct" if run.cfg.format == "instruct" else "completion"
    prompts = [render(run.tokenizer, ex, protocol) for ex in examples]
    texts: list[str] = [""] * len(prompts)
    with autocast(run.device, run.dtype):
        for template, stops in {(p.template, p.stops) for p in prompts}:
            group = [i for i, p in enumerate(prompts) if (p.template, p.stops) == (template, stops)]
            outputs = generate(run.model, run.tokenizer, [prompts[i].text for i in group], template,
                               max_new_tokens=128, batch_size=len(group), stop=stops)
            for i, out in zip(group, outputs):
                texts[i] = out.text
    codes = [answer_code(ex, protocol, text) for ex, text in zip(examples, texts)]
    programs = [program(ex, protocol, text) for ex, text in zip(examples, texts)]
    syntax_ok = sum(syntax_error_category(p) is None for p in programs) / len(programs)
    return {"val_chrf": chrf(codes, [reference_code(ex, protocol) for ex in examples]), "val_syntax_ok": syntax_ok}


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


def run_peak_memory(state: TrainState, device: torch.device) -> dict[str, float]:
    """This process's peaks merged with those of the run's earlier sessions."""
    now = peak_memory(device)
    return {k: max(now.get(k, 0.0), state.peak_memory.get(k, 0.0)) for k in now.keys() | state.peak_memory.keys()}


if __name__ == "__main__":
    run_cli(main)

"""The training loop of one LoRA/QLoRA run: optimizer steps, validation, checkpoints, and the stop on a signal.

    run, state = build_run(cfg, tracker, world, rank, device, out)   # common/train/build.py
    status = train(run, state)          # "completed", "interrupted" (checkpoint saved) or raises (run marked failed)
    finish(run, state, drift)           # common/train/finish.py: the final adapter, scores, run_config.json

`TrainState` is everything a checkpoint restores; `Run` is what the loop works on. A step normalises the loss by
the label tokens of the whole optimizer step on all processes, so gradient accumulation and DDP give the same
update as one large batch.
"""
import contextlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from common.config import TrainConfig
from common.env import CpuSnapshot, cpu_snapshot, current_memory_mb, peak_memory
from common.errors import UserError
from common.judge.metrics import chrf, perplexity, syntax_error_category
from common.text.generation import generate
from common.text.protocols import answer_code, program, reference_code, render
from common.tracker import Tracker
from common.train.batching import collate, epoch_batches, label_tokens, real_tokens
from common.train.distributed import StopFlag, stop_requested
from common.train.lora_kernel import FusedLoRA
from common.train.mirrors import Reporters, open_reporters
from common.train.steps import CompletionLoss, autocast, early_stopping_due, mean_nll, save_best, save_checkpoint


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
    # Peak memory (MiB) of the earlier sessions, as of their last checkpoint: a resumed run reports the whole run's
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
    cpu_start: CpuSnapshot | None = field(default_factory=cpu_snapshot)  # this session's, for cpu_contention
    fused_lora: FusedLoRA | None = None  # --lora-kernel fused: its dropout masks are keyed by (step, micro-batch)


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
        if run.fused_lora:  # masks keyed by position, not generator state: a resumed run draws the same ones
            run.fused_lora.at(state.step, run.rank * len(micro) + i)
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
                               run.device, run.dtype, progress=not run.cfg.quiet)
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


def run_peak_memory(state: TrainState, device: torch.device) -> dict[str, float]:
    """This process's peaks merged with those of the run's earlier sessions."""
    now = peak_memory(device)
    return {k: max(now.get(k, 0.0), state.peak_memory.get(k, 0.0)) for k in now.keys() | state.peak_memory.keys()}

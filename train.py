"""Fine-tune a causal LM for Python code with LoRA (16-bit), QLoRA (4-bit NF4) or 8-bit base weights.

    python train.py --rank 16 --quant 4bit                  # embedded SmolLM2-135M, stdlib pairs, CPU ok
    python train.py --model Qwen/Qwen2.5-Coder-1.5B --quant 4bit --dataset data.jsonl
    torchrun --nproc_per_node 2 train.py --rank 16          # DDP; `accelerate launch train.py` works too
    python train.py --config run.yaml --lr 1e-4             # file supplies defaults, flags win

Saves a standard PEFT adapter (adapter_config.json + adapter_model.safetensors,
tokenizer, run_config.json) in --output-dir (default runs/<name>), the best
validation checkpoint in <output-dir>/best, and resumable state in
<output-dir>/checkpoint. Everything is recorded in the run tracker (--db):
resolved config, parameter counts, per-step loss/lr/grad-norm/tokens-per-second/
memory, validation loss and generation quality over training, peak memory and
wall time. Ctrl-C or SIGTERM saves a checkpoint and marks the run interrupted;
re-running the same command (or --resume) continues where it stopped.
"""
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import common  # noqa: F401  before transformers: it silences log lines bitsandbytes prints on import
import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers import get_scheduler

from common.batching import collate, epoch_batches, label_tokens, real_tokens
from common.cli import Parser, parse_args
from common.data import load_splits
from common.env import current_memory_mb, default_device, environment, peak_memory
from common.errors import UserError, run_cli
from common.generation import extract_code, generate, stops_for_template
from common.lora import attach_lora, parameter_counts, validate_lora_args
from common.metrics import chrf, perplexity, syntax_error_category
from common.models import DEFAULT_MODEL, model_slug
from common.paths import check_writable
from common.prompts import choose_template, encode_examples, render_prompt
from common.quant import QUANT_MODES, check_quant, compute_dtype, load_model, load_tokenizer
from common.tracker import Tracker
from common.training import CompletionLoss, autocast, load_checkpoint, mean_nll, save_checkpoint

# Flags that do not change what is trained; left out of the recorded config.
_RUNTIME_FLAGS = {"db", "quiet", "tensorboard", "config", "resume"}


def build_parser() -> Parser:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="YAML/JSON file of flag defaults (command line wins)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="embedded name, local model directory, or hub id")
    p.add_argument("--dataset", default="stdlib", help="stdlib | data.jsonl/.json/.csv | hf:owner/name | apps:path")
    p.add_argument("--limit", type=int, default=None, help="use at most this many training examples")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank r")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: 2 x rank)")
    p.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout")
    p.add_argument("--modules", default="qkvo", help="preset qv|qkv|qkvo|mlp|all, or a comma list of module names")
    p.add_argument("--quant", default="16bit", choices=QUANT_MODES,
                   help="base weights: 4bit NF4 (QLoRA), 8bit int8, 16bit bf16/fp16, 32bit fp32")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the training split (ignored with --max-steps)")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps to run (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=4, help="examples (or packed rows) per micro-batch per process")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate")
    p.add_argument("--warmup", type=float, default=0.05, help="warm-up steps, or a fraction of all steps when < 1")
    p.add_argument("--scheduler", default="cosine", choices=("cosine", "linear", "constant"), help="LR schedule after warm-up")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm (0 = off)")
    p.add_argument("--optim", default="adamw", choices=("adamw", "paged_adamw_8bit"),
                   help="optimizer; paged_adamw_8bit (bitsandbytes) needs CUDA")
    p.add_argument("--max-seq-len", type=int, default=512, help="longest example in tokens")
    p.add_argument("--truncate", action="store_true", help="truncate over-long examples instead of dropping them")
    p.add_argument("--seed", type=int, default=0, help="seed for data split, order, and init")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute activations: less memory, ~30%% slower")
    p.add_argument("--packing", action="store_true",
                   help="pack examples into max-seq-len rows (no cross-example attention or loss)")
    p.add_argument("--eval-every", type=int, default=50, help="validation every N steps (0: only at the end)")
    p.add_argument("--val-limit", type=int, default=100, help="validation examples used for periodic evaluation")
    p.add_argument("--eval-gen", type=int, default=4, help="validation prompts generated at each evaluation (0: none)")
    p.add_argument("--save-every", type=int, default=50, help="checkpoint every N steps (0: only on interrupt)")
    p.add_argument("--resume", action="store_true", help="continue from <output-dir>/checkpoint (error if none)")
    p.add_argument("--output-dir", default=None, help="where the adapter goes (default: runs/<name>)")
    p.add_argument("--db", default="experiments.db", help="run tracker SQLite file")
    p.add_argument("--name", default=None, help="run name (default: derived from the config)")
    p.add_argument("--suite", default=None, help="suite label recorded with the run (sweep.py sets it)")
    p.add_argument("--tensorboard", default=None, metavar="DIR", help="also write TensorBoard event files here")
    p.add_argument("--quiet", action="store_true", help="no progress bar; a log line every 10 steps")
    return p


def validate(args) -> None:
    validate_lora_args(args.rank, 2 * args.rank if args.alpha is None else args.alpha, args.dropout)
    for flag in ("batch_size", "grad_accum", "max_seq_len"):
        if getattr(args, flag) <= 0:
            raise UserError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if args.max_steps is not None and args.max_steps <= 0:
        raise UserError(f"--max-steps must be positive, got {args.max_steps}")
    if args.epochs <= 0:
        raise UserError(f"--epochs must be positive, got {args.epochs}")
    if args.lr <= 0:
        raise UserError(f"--lr must be positive, got {args.lr}")
    if min(args.eval_every, args.save_every, args.eval_gen, args.val_limit) < 0:
        raise UserError("--eval-every, --save-every, --eval-gen and --val-limit must be >= 0")


def default_name(args) -> str:
    return f"{model_slug(args.model)}-r{args.rank}-{args.modules.replace(',', '+')}-{args.quant}-s{args.seed}"


class StopFlag:
    """First Ctrl-C/SIGTERM asks to stop at the next step boundary; a second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    validate(args)
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    is_main = rank == 0
    device = default_device()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    check_quant(args.quant, device)
    if args.optim == "paged_adamw_8bit" and device.type != "cuda":
        raise UserError("--optim paged_adamw_8bit needs a CUDA GPU; use --optim adamw")
    args.name = args.name or default_name(args)
    out = Path(args.output_dir or Path("runs") / args.name)
    args.output_dir = str(out)
    if is_main:
        check_writable(out)
    checkpoint_dir = out / "checkpoint"
    done = completed_run(out)
    if done is not None and not args.resume:
        print(f"run '{args.name}' already completed (run {done['run_id']} in {done['db']}); adapter in {out}. "
              "Pass another --name to train again.")
        return 0
    if args.resume and not (checkpoint_dir / "state.pt").is_file():
        raise UserError(f"--resume: no checkpoint in {checkpoint_dir}; drop --resume to start fresh")
    resuming = (checkpoint_dir / "state.pt").is_file()

    torch.manual_seed(args.seed)
    tokenizer = load_tokenizer(args.model)
    splits = load_splits(args.dataset, seed=args.seed, limit=args.limit)
    template = choose_template(tokenizer, splits.train[0].style)
    train_set, dropped_train = encode_examples(tokenizer, splits.train, template, args.max_seq_len, args.truncate)
    val_set, dropped_val = encode_examples(tokenizer, splits.validation[:args.val_limit], template,
                                           args.max_seq_len, args.truncate)
    if not train_set:
        raise UserError(f"no training example fits --max-seq-len {args.max_seq_len}; raise it or pass --truncate")
    model = load_model(args.model, args.quant, device)
    dtype = compute_dtype(args.quant, device)
    if args.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = attach_lora(model, args.rank, args.alpha, args.dropout, args.modules)
    model.peft_config["default"].base_model_name_or_path = args.model

    config = {k: v for k, v in vars(args).items() if k not in _RUNTIME_FLAGS}
    config.update(alpha=2 * args.rank if args.alpha is None else args.alpha, template=template,
                  target_modules=sorted(model.peft_config["default"].target_modules), world_size=world,
                  device=device.type, dtype=str(dtype).replace("torch.", ""), dataset_source=splits.source,
                  train_examples=len(train_set), val_examples=len(val_set))
    counts = parameter_counts(model)
    loss_fn = CompletionLoss(model)
    ddp = wrap_ddp(loss_fn) if world > 1 else loss_fn
    optimizer = make_optimizer(model, args)
    steps_per_epoch = len(epoch_batches(train_set, args.batch_size, args.seed, 0, args.packing, args.max_seq_len)) \
        // (args.grad_accum * world)
    if steps_per_epoch == 0:
        raise UserError(f"{len(train_set)} training examples make no full step of batch {args.batch_size} x "
                        f"grad-accum {args.grad_accum} x {world} processes; lower them or add data")
    total_steps = args.max_steps or max(1, math.ceil(args.epochs * steps_per_epoch))
    warmup = int(args.warmup * total_steps) if args.warmup < 1 else int(args.warmup)
    scheduler = get_scheduler(args.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    progress = {"step": 0, "epoch": 0, "batch": 0, "tokens_seen": 0, "best_val_loss": None, "best_step": None,
                "run_id": None, "wall_seconds": 0.0, "config": config}
    if resuming:
        saved = torch.load(checkpoint_dir / "state.pt", weights_only=False, map_location="cpu")["progress"]
        if saved["config"] != config:
            changed = sorted(k for k in set(config) | set(saved["config"]) if config.get(k) != saved["config"].get(k))
            raise UserError(f"{checkpoint_dir} holds a run with a different config ({', '.join(changed)}); "
                            "pass another --name or --output-dir, or delete the checkpoint")
        progress = load_checkpoint(checkpoint_dir, model, optimizer, scheduler)

    tracker = Tracker(args.db) if is_main else None
    run_id = progress["run_id"]
    if tracker:
        previous = tracker.run(run_id) if run_id is not None else None
        if previous and previous["name"] == args.name:
            tracker.resume_run(run_id)
        else:
            run_id = tracker.start_run(args.name, "train", config, suite=args.suite, output_dir=str(out),
                                       environment=environment())
        progress["run_id"] = run_id
        dropped = {f"dropped_{k}": v for k, v in splits.dropped.items()}
        tracker.log_scores(run_id, "train", {**counts, "dropped_too_long": dropped_train + dropped_val, **dropped})
        print(f"run {run_id} '{args.name}': {counts['trainable_params']:,} trainable of "
              f"{counts['total_params']:,} params ({counts['trainable_pct']:.2f}%), {len(train_set)} train / "
              f"{len(val_set)} val examples ({dropped_train + dropped_val} dropped as longer than "
              f"{args.max_seq_len} tokens), {total_steps} steps" + (f", resuming at step {progress['step']}"
                                                                     if resuming else ""), flush=True)
    stop = StopFlag()
    started = time.perf_counter() - progress["wall_seconds"]
    try:
        status = train_loop(args, model, ddp, loss_fn, optimizer, scheduler, tokenizer, train_set, val_set,
                            splits.validation, template, progress, total_steps, device, dtype, world, rank,
                            tracker, stop, started)
    except BaseException as e:
        stop.restore()
        if tracker:
            interrupted = isinstance(e, KeyboardInterrupt)
            tracker.finish_run(run_id, "interrupted" if interrupted else "failed",
                               error=None if interrupted else f"{type(e).__name__}: {e}",
                               wall_seconds=time.perf_counter() - started)
        raise
    stop.restore()
    wall = time.perf_counter() - started
    if status == "interrupted":
        if is_main:
            progress["wall_seconds"] = wall
            save_checkpoint(checkpoint_dir, model, optimizer, scheduler, progress)
            tracker.finish_run(run_id, "interrupted", wall_seconds=wall)
            print(f"interrupted at step {progress['step']}; checkpoint saved, re-run the same command to resume")
        return 130
    drift = ddp_weight_drift(model) if world > 1 else None
    if is_main:
        finish(args, model, tokenizer, tracker, run_id, config, progress, out, wall, device, drift)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


def wrap_ddp(loss_fn: CompletionLoss) -> torch.nn.Module:
    """DDP over the LoRA weights only: frozen (possibly 4-bit) base weights are identical by construction."""
    frozen = [name for name, p in loss_fn.named_parameters() if not p.requires_grad]
    frozen += [name for name, _ in loss_fn.named_buffers()]
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(loss_fn, frozen)
    return torch.nn.parallel.DistributedDataParallel(loss_fn)


def ddp_weight_drift(model: torch.nn.Module) -> float:
    """Largest difference between any rank's adapter weights and rank 0's: 0.0 when DDP kept them in sync."""
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters() if p.requires_grad]).cpu()
    reference = flat.clone()
    dist.broadcast(reference, 0)
    drift = (flat - reference).abs().max()
    dist.all_reduce(drift, op=dist.ReduceOp.MAX)
    return float(drift)


def completed_run(out: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((out / "run_config.json").read_text())
    except (OSError, ValueError):
        return None
    return info if info.get("status") == "completed" else None


def make_optimizer(model: torch.nn.Module, args) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if args.optim == "paged_adamw_8bit":
        import bitsandbytes as bnb
        return bnb.optim.PagedAdamW8bit(params, lr=args.lr, weight_decay=args.weight_decay)
    return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)


def train_loop(args, model, ddp, loss_fn, optimizer, scheduler, tokenizer, train_set, val_set, val_examples,
               template, progress, total_steps, device, dtype, world, rank, tracker, stop, started) -> str:
    pad_id = tokenizer.pad_token_id
    writer = tensorboard_writer(args.tensorboard) if tracker and args.tensorboard else None
    bar = tqdm(total=total_steps, initial=progress["step"], desc="train", unit="step",
               disable=args.quiet or tracker is None, dynamic_ncols=True)
    model.train()
    while progress["step"] < total_steps:
        batches = epoch_batches(train_set, args.batch_size, args.seed, progress["epoch"], args.packing,
                                args.max_seq_len)
        per_rank = len(batches) // world
        batches = batches[rank * per_rank:(rank + 1) * per_rank]  # equal shards keep DDP in lockstep
        while progress["batch"] + args.grad_accum <= len(batches) and progress["step"] < total_steps:
            step_start = time.perf_counter()
            rows = batches[progress["batch"]:progress["batch"] + args.grad_accum]
            micro = [collate(train_set, r, pad_id, args.packing) for r in rows]
            for m, r in zip(micro, rows):
                if label_tokens(m) == 0:
                    ids = [train_set[i]["id"] for row in r for i in row]
                    raise UserError(f"every label is masked in a batch of {', '.join(ids[:3])}...: the completions "
                                    "are empty or truncated away; check the dataset or raise --max-seq-len")
            # Normalise by the tokens of the whole optimizer step on all processes, not per micro-batch.
            n_labels = torch.tensor(sum(label_tokens(m) for m in micro), dtype=torch.float64)
            if world > 1:
                dist.all_reduce(n_labels)
            loss_sum = torch.zeros((), device=device)
            for i, m in enumerate(micro):
                sync = i == len(micro) - 1 or world == 1
                with (contextlib.nullcontext() if sync else ddp.no_sync()), autocast(device, dtype):
                    loss, _ = ddp(**{k: v.to(device) for k, v in m.items()})
                    # DDP averages gradients over processes, so scale back up by world size.
                    (loss * world / n_labels.item()).backward()
                loss_sum += loss.detach()
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.requires_grad], args.max_grad_norm or float("inf"))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if world > 1:
                dist.all_reduce(loss_sum)
            progress["step"] += 1
            progress["batch"] += args.grad_accum
            tokens = sum(real_tokens(train_set, r) for r in rows) * world
            progress["tokens_seen"] += tokens
            seconds = time.perf_counter() - step_start
            values = {"loss": loss_sum.item() / n_labels.item(), "lr": scheduler.get_last_lr()[0],
                      "grad_norm": float(grad_norm), "tokens_per_s": tokens / seconds,
                      "tokens_seen": progress["tokens_seen"], "memory_mb": current_memory_mb(device)}
            step = progress["step"]
            if tracker:
                tracker.log_metrics(progress["run_id"], step, values)
                if writer:
                    for k, v in values.items():
                        writer.add_scalar(f"train/{k}", v, step)
                bar.set_postfix(loss=f"{values['loss']:.3f}", tok_s=f"{values['tokens_per_s']:.0f}")
                bar.update(1)
                if args.quiet and (step % 10 == 0 or step == total_steps):
                    print(f"step {step}/{total_steps} loss {values['loss']:.4f} lr {values['lr']:.2e} "
                          f"tok/s {values['tokens_per_s']:.0f}", flush=True)
            if (args.eval_every and step % args.eval_every == 0) or step == total_steps:
                run_validation(args, model, loss_fn, tokenizer, val_set, val_examples, template, progress,
                               device, dtype, tracker, writer, rank, world)
            stopping = stop.requested
            if world > 1:
                flag = torch.tensor(int(stopping))
                dist.all_reduce(flag)
                stopping = bool(flag.item())
            if stopping:
                bar.close()
                return "interrupted"
            if tracker and args.save_every and step % args.save_every == 0 and step < total_steps:
                progress["wall_seconds"] = time.perf_counter() - started
                save_checkpoint(Path(args.output_dir) / "checkpoint", model, optimizer, scheduler, progress)
        if progress["step"] < total_steps:
            progress["epoch"] += 1
            progress["batch"] = 0
    bar.close()
    if writer:
        writer.close()
    return "completed"


def run_validation(args, model, loss_fn, tokenizer, val_set, val_examples, template, progress, device, dtype,
                   tracker, writer, rank, world) -> None:
    """Held-out loss/perplexity and a few generations scored for chrF and syntax; best adapter kept."""
    if rank == 0 and val_set:
        val_loss, _ = mean_nll(loss_fn, val_set, args.batch_size * 2, tokenizer.pad_token_id, device, dtype)
        values = {"val_loss": val_loss, "val_ppl": perplexity(val_loss)}
        if args.eval_gen:
            values.update(generation_quality(model, tokenizer, val_examples[:args.eval_gen], template, device, dtype))
        step = progress["step"]
        tracker.log_metrics(progress["run_id"], step, values)
        if writer:
            for k, v in values.items():
                writer.add_scalar(f"val/{k}", v, step)
        if progress["best_val_loss"] is None or val_loss < progress["best_val_loss"]:
            progress["best_val_loss"], progress["best_step"] = val_loss, step
            model.save_pretrained(Path(args.output_dir) / "best")
        tqdm.write(f"step {step}: val loss {val_loss:.4f} (ppl {values['val_ppl']:.2f})"
                   + (f", chrF {values['val_chrf']:.1f}, syntax ok {values['val_syntax_ok']:.0%}"
                      if "val_chrf" in values else ""))
    if world > 1:
        dist.barrier()


def generation_quality(model, tokenizer, examples, template, device, dtype) -> dict[str, float]:
    prompts = [render_prompt(tokenizer, ex.prompt, template, ex.input) for ex in examples]
    with autocast(device, dtype):
        outputs = generate(model, tokenizer, prompts, template, max_new_tokens=128, batch_size=len(prompts),
                           stop=stops_for_template(template))
    codes = [o.text if ex.style == "completion" else extract_code(o.text) for ex, o in zip(examples, outputs)]
    programs = [ex.prompt + c if ex.style == "completion" else c for ex, c in zip(examples, codes)]
    syntax_ok = sum(syntax_error_category(p) is None for p in programs) / len(programs)
    return {"val_chrf": chrf(codes, [ex.completion for ex in examples]), "val_syntax_ok": syntax_ok}


def finish(args, model, tokenizer, tracker, run_id, config, progress, out: Path, wall: float, device,
           ddp_drift: float | None) -> None:
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    adapter_mb = sum(f.stat().st_size for f in out.glob("adapter_model.*")) / 2**20
    losses = tracker.metrics(run_id, "loss")
    final_val = tracker.metrics(run_id, "val_loss")
    scores = {"adapter_mb": adapter_mb, "wall_seconds": wall, "tokens_seen": progress["tokens_seen"],
              "train_tokens_per_s": progress["tokens_seen"] / max(wall, 1e-9), "steps": progress["step"],
              "final_train_loss": losses[-1]["value"] if losses else None,
              "final_val_loss": final_val[-1]["value"] if final_val else None,
              "best_val_loss": progress["best_val_loss"], "best_step": progress["best_step"],
              **peak_memory(device)}
    if ddp_drift is not None:
        scores["ddp_weight_drift"] = ddp_drift
        print(f"DDP: adapter weights across ranks differ by at most {ddp_drift:.3g}")
    tracker.log_scores(run_id, "train", scores)
    (out / "run_config.json").write_text(json.dumps(
        {"run_id": run_id, "db": str(Path(args.db).resolve()), "status": "completed", "config": config,
         "best_dir": str(out / "best"), "best_step": progress["best_step"]}, indent=2, sort_keys=True) + "\n")
    tracker.finish_run(run_id, "completed", wall_seconds=wall)
    shutil.rmtree(out / "checkpoint", ignore_errors=True)  # resume state is no longer needed
    peak = scores.get("peak_gpu_allocated_mb", scores["peak_rss_mb"])
    print(f"run {run_id} completed in {wall:.0f}s: final val loss {scores['final_val_loss']}, best "
          f"{progress['best_val_loss']} at step {progress['best_step']}; adapter {adapter_mb:.1f} MB in {out}; "
          f"peak memory {peak:.0f} MB")


def tensorboard_writer(directory: str):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from e
    return SummaryWriter(directory)


if __name__ == "__main__":
    run_cli(main)

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
import sys
from pathlib import Path

from common.config import TrainConfig
from common.errors import UserError, run_cli
from common.options import parse_config


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(TrainConfig, argv, __doc__.split("\n\n")[0])
    # Imported after parsing, so that --help and option errors answer before torch loads (~10 s).
    import common  # noqa: F401  before transformers: it silences log lines bitsandbytes prints on import
    from common.model.load import check_quant
    from common.train.build import estimate, validate_config
    from common.train.distributed import init_processes

    validate_config(cfg)
    world, rank, device = init_processes()
    check_quant(cfg.quant, device)
    prepare_process(cfg, device)
    cfg.name = cfg.name or default_name(cfg)
    if cfg.estimate:  # the prediction, before any weight is loaded; --probe: a few real steps rescale it
        return estimate(cfg, device, world, rank)
    return train_run(cfg, world, rank, device)


def default_name(cfg: TrainConfig) -> str:
    """The name sweep.py gives the same config: `r16-qkvo-16bit-s0-<hash of the non-default options>`."""
    from dataclasses import asdict

    from common.study.suites import train_name
    return train_name(asdict(cfg))


def prepare_process(cfg: TrainConfig, device) -> None:
    """Process-wide settings that must precede loading: the allocator's mmap threshold, and a note on paging."""
    from common.env import set_mmap_threshold
    if not set_mmap_threshold(cfg.mmap_threshold_kb):
        cfg.mmap_threshold_kb = 0  # recorded with the peak memory: glibc's dynamic default was in effect
    if cfg.optim == "paged_adamw_8bit" and device.type != "cuda":
        print("note: --optim paged_adamw_8bit pages optimizer state only on CUDA; here it runs as 8-bit AdamW "
              "without paging", file=sys.stderr)


def train_run(cfg: TrainConfig, world: int, rank: int, device) -> int:
    """Open the tracker, skip a completed run, build, train and finish; 130 when interrupted."""
    import torch.distributed as dist

    from common.model.adapters import completed_run
    from common.paths import check_writable
    from common.tracker import Tracker
    from common.train.build import build_run
    from common.train.distributed import ddp_weight_drift
    from common.train.finish import finish
    from common.train.loop import train

    # Every process opens the tracker (for the run directory, which follows the database); only rank 0 writes.
    # Rank 0 creates the database first: concurrent first opens race for SQLite's WAL switch.
    tracker = Tracker(cfg.db) if rank == 0 else None
    if world > 1:
        dist.barrier()
    tracker = tracker or Tracker(cfg.db)
    out = Path(cfg.output_dir) if cfg.output_dir else tracker.run_dir("train", cfg.name)
    cfg.output_dir = str(out)
    if rank == 0:
        check_writable(out)
    done = completed_run(out, tracker)
    if done is not None and not cfg.resume:
        print(f"run '{cfg.name}' already completed (run {done['run_id']} in {done['db']}); adapter in {out}. "
              "Pass another --name to train again.")
        return 0
    if cfg.resume and not (out / "checkpoint" / "state.pt").is_file():
        raise UserError(f"--resume: no checkpoint in {out / 'checkpoint'}; drop --resume to start fresh")
    run, state = build_run(cfg, tracker if rank == 0 else None, world, rank, device, out)
    if rank != 0:
        tracker.close()
    if train(run, state) == "interrupted":
        return 130
    drift = ddp_weight_drift(run.model) if world > 1 else None
    if rank == 0:
        finish(run, state, drift)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    run_cli(main)

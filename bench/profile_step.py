"""Where a train.py step spends its time: torch profiler over a few LoRA steps, top operators by self time.

    python bench/profile_step.py                      # embedded model, r16 q/k/v/o, batch 4, 3 profiled steps
    python bench/profile_step.py --quant 4bit --rows 30
    python bench/profile_step.py --dtype fp32          # the AVX2 machines' fp32 path, on any machine

Builds the batches exactly as train.py does (stdlib pairs, length-grouped,
dynamic padding) and runs train.py's step (CompletionLoss, backward, AdamW)
directly, so the profile has no tracker or progress-bar noise. Two warm-up
steps, then tokens/s and MFU over --timed steps, then --profiled steps under
the profiler. MFU is model FLOPs (bench/flops.py) over the measured matmul
peak of the dtype the step computes in. Prints the machine it ran on (device,
CPU kind from the CPU flags, dtype) first. Notes on what the profiles showed
and what moved what are in bench/PROFILE.md.
"""
import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.train.batching import collate, epoch_batches  # noqa: E402
from common.corpus.splits import load_splits  # noqa: E402
from common.env import default_device  # noqa: E402
from common.model.lora import attach_lora  # noqa: E402
from common.text.prompts import choose_template, encode_examples  # noqa: E402
from common.model.load import compute_dtype, load_model, load_tokenizer  # noqa: E402
from common.train.steps import CompletionLoss, autocast  # noqa: E402
from flops import training_flops  # noqa: E402
from machine import add_dtype_flag, dtype_name, machine_line, matmul_gflops, sync, train_quant_flag  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--quant", default="16bit")
    add_dtype_flag(p)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--modules", default="qkvo")
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--examples", type=int, default=256, help="stdlib pairs the batches are drawn from")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--timed", type=int, default=6)
    p.add_argument("--profiled", type=int, default=3)
    p.add_argument("--rows", type=int, default=20, help="operators listed")
    p.add_argument("--peak-seconds", type=float, default=5.0, help="time budget for the matmul peak")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.dtype == "fp32" and args.quant != "32bit":
        if args.quant != "16bit":
            sys.exit(f"--dtype fp32 needs --quant 16bit or 32bit: {args.quant} computes in the half dtype")
        args.quant = train_quant_flag(torch.float32)
    device = default_device()
    dtype = compute_dtype(args.quant, device)
    print(machine_line(device, dtype))
    tokenizer = load_tokenizer(args.model)
    splits = load_splits("stdlib", split_seed=0, limit=args.examples)
    template = choose_template(tokenizer, splits.train[0].style)
    examples, _ = encode_examples(tokenizer, splits.train, template, 512)
    model = attach_lora(load_model(args.model, args.quant, device), args.rank, 2 * args.rank, args.dropout,
                        args.modules)
    loss_fn = CompletionLoss(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    batches = iter(epoch_batches(examples, args.batch_size, 0, 0, False, 512))
    needed = 2 + args.timed + args.profiled
    if len(examples) < needed * args.batch_size:
        sys.exit(f"--examples {args.examples} gives {len(examples)} examples, fewer than the {needed} steps of "
                 f"--batch-size {args.batch_size} need: raise --examples")

    def step() -> list[dict]:
        rows = next(batches)
        batch = {k: v.to(device) for k, v in collate(examples, rows, tokenizer.pad_token_id, False).items()}
        with autocast(device, dtype):
            loss, n = loss_fn(**batch)
            (loss / n).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return [examples[i] for row in rows for i in row]

    step(), step()
    sync(device)
    began = time.perf_counter()
    timed = [e for _ in range(args.timed) for e in step()]
    sync(device)
    seconds = time.perf_counter() - began
    peak = matmul_gflops(dtype, device, args.peak_seconds)["gflops"]
    flops_per_s = training_flops(model.config, timed, args.rank) / seconds
    print(f"{sum(len(e['input_ids']) for e in timed) / seconds:.1f} real tokens/s over {args.timed} steps "
          f"({torch.get_num_threads()} threads, {dtype_name(dtype)}); model {flops_per_s / 1e9:.1f} GFLOP/s = "
          f"{flops_per_s / (peak * 1e9):.1%} MFU of the {dtype_name(dtype)} matmul peak {peak:.1f} GFLOP/s"
          + ("" if args.modules == "qkvo" else " (model FLOPs count LoRA on q/k/v/o only)"))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.profiled):
            step()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=args.rows))


if __name__ == "__main__":
    main()

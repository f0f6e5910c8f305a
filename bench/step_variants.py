"""Candidate throughput changes to a train.py step, timed side by side on the same batches in one process.

    python bench/step_variants.py                       # embedded model, r16 q/k/v/o, dropout 0.05, batch 4
    python bench/step_variants.py --rounds 4 --variants baseline,fused-head --dtype fp32
    python bench/step_variants.py --variants fused-head --rounds 6   # alone: its own peak RSS

Variants (each its own AdamW state over the same LoRA weights; all but no-dropout and fused-lora train
identically, see tests/test_bench.py):

    baseline     CompletionLoss (LM head at labelled positions), torch AdamW default, PEFT's LoRA layers
    fused-adamw  common.train.steps.adamw: AdamW(fused=True), one kernel over all LoRA tensors
    fused-head   CompletionLoss(head_chunk=--head-chunk): LM head + cross-entropy fused, chunked, gradient
                 computed in the forward pass (no logits kept for backward)
    both         fused-head and fused-adamw
    fused-lora   the baseline with LoRA layers on common.train.lora_kernel (train.py --lora-kernel fused, opt-in
                 for now): dropout masks from a counter-based hash, redrawn in backward instead of saved; the
                 same training in distribution, not the same masks (tests/test_fused_lora.py)
    no-dropout   LoRA dropout modules replaced by identity: NOT the same training, shown only to say what
                 dropout's mask draws cost (train.py --dropout 0 gets it)

Every round takes the next length-grouped batch (as train.py builds them) and runs one step of every variant on
it, in an order rotated each round, so machine load drifts over all alike; the first --warmup rounds are not
timed. Reports per variant the median step seconds, real tokens/s over the timed rounds and the ratio of
medians to baseline; and the process's peak RSS, which is only a variant's own when it runs alone. Prints the
machine (device, CPU kind from the CPU flags, dtype) and writes bench/results/step_variants.json.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.train.batching import collate, epoch_batches  # noqa: E402
from common.corpus.splits import load_splits  # noqa: E402
from common.env import default_device, environment, peak_memory  # noqa: E402
from common.model.lora import attach_lora  # noqa: E402
from common.text.prompts import choose_template, encode_examples  # noqa: E402
from common.model.load import load_model, load_tokenizer  # noqa: E402
from common.train.lora_kernel import use_fused_lora  # noqa: E402
from common.train.steps import CompletionLoss, adamw, autocast  # noqa: E402
from machine import add_dtype_flag, bench_dtype, dtype_name, machine_line, machine_record, sync  # noqa: E402
from machine import train_quant_flag  # noqa: E402

VARIANTS = ("baseline", "fused-adamw", "fused-head", "both", "no-dropout", "fused-lora")


def lora_dropouts(model: torch.nn.Module) -> list[tuple[torch.nn.ModuleDict, str, torch.nn.Module]]:
    """(peft's lora_dropout ModuleDict, adapter name, its dropout module) for every adapted layer."""
    return [(m.lora_dropout, name, d) for m in model.modules() if isinstance(getattr(m, "lora_dropout", None),
                                                                              torch.nn.ModuleDict)
            for name, d in m.lora_dropout.items()]


def make_step(variant: str, model, params, lr: float, head_chunk: int, dropouts, device, dtype):
    """One optimizer step of `variant` on a collated batch."""
    loss_fn = CompletionLoss(model, head_chunk=head_chunk if variant in ("fused-head", "both") else None)
    optimizer = (adamw(params, lr, 0.0) if variant in ("fused-adamw", "both")
                 else torch.optim.AdamW(params, lr=lr, weight_decay=0.0))
    steps_done = [0]

    def step(batch: dict[str, torch.Tensor]) -> None:
        fused = use_fused_lora(model, seed=0) if variant == "fused-lora" else None  # only for its own steps
        if fused:
            fused.at(steps_done[0], 0)
        steps_done[0] += 1
        if variant == "no-dropout":
            for modules, name, _ in dropouts:
                modules[name] = torch.nn.Identity()
        with autocast(device, dtype):
            loss, n = loss_fn(**batch)
            (loss / n).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if fused:
            fused.remove()
        if variant == "no-dropout":
            for modules, name, dropout in dropouts:
                modules[name] = dropout
    return step


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    add_dtype_flag(p)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--examples", type=int, default=256, help="stdlib pairs the batches are drawn from")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--head-chunk", type=int, default=256, help="labelled positions per fused head chunk")
    p.add_argument("--rounds", type=int, default=8, help="timed rounds (one step of every variant each)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "step_variants.json"))
    args = p.parse_args(argv)
    variants = args.variants.split(",")
    if set(variants) - set(VARIANTS):
        sys.exit(f"unknown variants {', '.join(sorted(set(variants) - set(VARIANTS)))}; choose from "
                 f"{', '.join(VARIANTS)}")
    device = default_device()
    dtype = bench_dtype(args.dtype, device)
    print(machine_line(device, dtype), file=sys.stderr)
    tokenizer = load_tokenizer(args.model)
    splits = load_splits("stdlib", split_seed=0, limit=args.examples)
    examples, _ = encode_examples(tokenizer, splits.train, choose_template(tokenizer, splits.train[0].style), 512)
    batches = epoch_batches(examples, args.batch_size, 0, 0, False, 512)
    if len(batches) < args.warmup + args.rounds:
        sys.exit(f"{len(batches)} batches for {args.warmup + args.rounds} rounds: raise --examples")
    model = attach_lora(load_model(args.model, train_quant_flag(dtype), device), 16, 32, args.dropout, "qkvo")
    params = [q for q in model.parameters() if q.requires_grad]
    dropouts = lora_dropouts(model)
    steps = {v: make_step(v, model, params, 2e-4, args.head_chunk, dropouts, device, dtype) for v in variants}
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    tokens = 0
    for r, rows in enumerate(batches[:args.warmup + args.rounds]):
        batch = {k: v.to(device) for k, v in collate(examples, rows, tokenizer.pad_token_id, False).items()}
        for v in variants[r % len(variants):] + variants[:r % len(variants)]:
            sync(device)
            began = time.perf_counter()
            steps[v](batch)
            sync(device)
            if r >= args.warmup:
                seconds[v].append(time.perf_counter() - began)
        if r >= args.warmup:
            tokens += sum(len(examples[i]["input_ids"]) for row in rows for i in row)
        print(f"round {r + 1}/{args.warmup + args.rounds} done", file=sys.stderr, flush=True)
    base = statistics.median(seconds[variants[0]])
    table = [{"variant": v, "median step s": round(statistics.median(s), 3),
              "real tokens/s": round(tokens / sum(s), 1),
              f"vs {variants[0]} (median ratio)": round(base / statistics.median(s), 3),
              "steps": len(s)} for v, s in seconds.items()]
    result = {"model": args.model, "batch_size": args.batch_size, "dropout": args.dropout,
              "head_chunk": args.head_chunk, "rounds": args.rounds, "warmup": args.warmup,
              "machine": machine_record(device, dtype), "environment": environment(),
              "peak_memory_of_process": peak_memory(device), "rows": table, "step_seconds": seconds}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    from tabulate import tabulate
    print(machine_line(device, dtype))
    print(tabulate(table, headers="keys", tablefmt="github"))
    print(f"peak RSS of the process: {peak_memory(device)['peak_rss_mb']:.0f} MB ({dtype_name(dtype)}; a variant's "
          "own only when it ran alone)")


if __name__ == "__main__":
    main()

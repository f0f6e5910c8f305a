"""Where a train.py step spends its time: torch profiler over a few LoRA steps, top operators by self time.

    python bench/profile_step.py                      # embedded model, r16 q/k/v/o, batch 4, 3 profiled steps
    python bench/profile_step.py --quant 4bit --rows 30

Builds the batches exactly as train.py does (stdlib pairs, length-grouped,
dynamic padding) and runs train.py's step (CompletionLoss, backward, AdamW)
directly, so the profile has no tracker or progress-bar noise. Two warm-up
steps, then tokens/s over --timed steps, then --profiled steps under the
profiler. Notes on what the profiles showed and what moved what are in
bench/PROFILE.md.
"""
import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.batching import collate, epoch_batches, real_tokens  # noqa: E402
from common.data import load_splits  # noqa: E402
from common.lora import attach_lora  # noqa: E402
from common.prompts import choose_template, encode_examples  # noqa: E402
from common.quant import compute_dtype, load_model, load_tokenizer  # noqa: E402
from common.training import CompletionLoss, autocast  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--quant", default="16bit")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--modules", default="qkvo")
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--timed", type=int, default=6)
    p.add_argument("--profiled", type=int, default=3)
    p.add_argument("--rows", type=int, default=20, help="operators listed")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(args.model)
    splits = load_splits("stdlib", seed=0, limit=256)
    template = choose_template(tokenizer, splits.train[0].style)
    examples, _ = encode_examples(tokenizer, splits.train, template, 512)
    model = attach_lora(load_model(args.model, args.quant, device), args.rank, 2 * args.rank, args.dropout,
                        args.modules)
    dtype = compute_dtype(args.quant, device)
    loss_fn = CompletionLoss(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    batches = iter(epoch_batches(examples, 4, 0, 0, False, 512))

    def step() -> int:
        rows = next(batches)
        batch = {k: v.to(device) for k, v in collate(examples, rows, tokenizer.pad_token_id, False).items()}
        with autocast(device, dtype):
            loss, n = loss_fn(**batch)
            (loss / n).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return real_tokens(examples, rows)

    step(), step()
    began = time.perf_counter()
    tokens = sum(step() for _ in range(args.timed))
    print(f"{tokens / (time.perf_counter() - began):.1f} real tokens/s over {args.timed} steps "
          f"({torch.get_num_threads()} threads, {dtype})")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.profiled):
            step()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=args.rows))


if __name__ == "__main__":
    main()

"""The LM head + cross-entropy alone, plain against fused-chunked (common.train.steps), time and memory.

    python bench/head_loss.py                         # SmolLM2-135M's head: V 49152, d 576; 1000 labelled rows
    python bench/head_loss.py --rows 325 --chunks 128,512 --dtype fp32

A whole training step on a shared 2-core machine varies 10x between repeats (bench/PROFILE.md), which hides a
change to a few % of it; this times only the part that changes. Per variant, forward + backward of the summed
cross-entropy over --rows labelled hidden states (random, fixed seed) through a frozen V x d head, in the
compute dtype: `plain` is CompletionLoss's path (logits of all rows, .float(), F.cross_entropy), `fused-N` is
`fused_head_cross_entropy` with chunks of N rows. Variants alternate over --repeats rounds; the table gives
median seconds and the ratio to plain. Then each variant runs once more with the kernel's peak-RSS count reset
just before (Linux: /proc/self/clear_refs), and its peak above the RSS it started from is reported: the memory
the head and loss need (large buffers are returned to the system when freed, so runs do not inherit them).
"""
import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.train.steps import fused_head_cross_entropy  # noqa: E402
from machine import add_dtype_flag, bench_dtype, dtype_name, machine_line, machine_record  # noqa: E402


def inputs(rows: int, vocab: int, hidden: int, dtype: torch.dtype):
    generator = torch.Generator().manual_seed(0)
    h = (torch.randn(rows, hidden, generator=generator)).to(dtype).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=generator) * hidden ** -0.5).to(dtype)
    t = torch.randint(0, vocab, (rows,), generator=generator)
    return h, w, t


def run(variant: str, h: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> None:
    h.grad = None
    if variant == "plain":
        loss = F.cross_entropy((h @ w.T).float(), t, reduction="sum")
    else:
        loss = fused_head_cross_entropy(h, w, t, int(variant.split("-")[1]))
    loss.backward()


def peak_above_start(variant: str, h: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> float:
    """MB the peak RSS (VmHWM) rises above the RSS at the start of one forward + backward of `variant`."""
    gc.collect()
    before = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    run(variant, h, w, t)
    return _status_mb("VmHWM") - before


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1000, help="labelled positions (a 4 x 512 step has up to ~2000)")
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--chunks", default="256,1024")
    p.add_argument("--repeats", type=int, default=7)
    add_dtype_flag(p)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "head_loss.json"))
    args = p.parse_args(argv)
    device = torch.device("cpu")
    dtype = bench_dtype(args.dtype, device)
    print(machine_line(device, dtype), file=sys.stderr)
    variants = ["plain"] + [f"fused-{c}" for c in args.chunks.split(",")]
    h, w, t = inputs(args.rows, args.vocab, args.hidden, dtype)
    for v in variants:
        run(v, h, w, t)  # warm-up
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.repeats):
        for v in variants[r % len(variants):] + variants[:r % len(variants)]:
            began = time.perf_counter()
            run(v, h, w, t)
            seconds[v].append(time.perf_counter() - began)
    base = statistics.median(seconds["plain"])
    table = [{"variant": v, "median s": round(statistics.median(seconds[v]), 4),
              "vs plain (median ratio)": round(base / statistics.median(seconds[v]), 3),
              "peak MB above start": round(peak_above_start(v, h, w, t), 1)} for v in variants]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": args.rows, "vocab": args.vocab, "hidden": args.hidden,
                                          "repeats": args.repeats, "machine": machine_record(device, dtype),
                                          "table": table, "seconds": seconds}, indent=2) + "\n")
    from tabulate import tabulate
    print(machine_line(device, dtype) + f"; {args.rows} rows, V {args.vocab}, d {args.hidden}, {dtype_name(dtype)}")
    print(tabulate(table, headers="keys", tablefmt="github"))


if __name__ == "__main__":
    main()

"""Peak memory and throughput of train.py under glibc allocator settings, side by side in one run.

    python bench/allocator.py                               # study config: chat format, r16 qkvo, batch 4, 30 steps
    python bench/allocator.py --variants 0,256,256+thp --steps 40 --repeats 3
    python bench/allocator.py --dtype fp32                  # the AVX2 machines' path, on any CPU

A variant is train.py's `--mmap-threshold-kb N` (0: glibc's dynamic default, which raises the threshold
after each large free and then serves activations from a heap that keeps freed memory), with `+thp`
also setting THP_MEM_ALLOC_ENABLE=1 (torch then asks for transparent huge pages on allocations of 2 MiB
and more, so an mmapped tensor costs one page fault per 2 MiB rather than per 4 KiB). Every variant
runs train.py itself in a fresh process on the same data, seed and batches, in an order rotated each round
so drift in machine load hits all alike. Reports per variant the median real tokens/s over the steps
after --warmup and its ratio to the first variant, the peak RSS and the RSS after the last step (medians
over rounds). Prints the machine (device, CPU kind from the CPU flags, dtype) and writes
bench/results/allocator.json.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.env import default_device  # noqa: E402
from machine import add_dtype_flag, bench_dtype, machine_line, machine_record, run_train_py  # noqa: E402
from machine import train_quant_flag  # noqa: E402


def parse_variant(text: str) -> tuple[int, bool]:
    """'256+thp' -> (256, True): the mmap threshold in KiB and whether torch asks for huge pages."""
    threshold, _, extra = text.partition("+")
    if not threshold.isdigit() or extra not in ("", "thp"):
        sys.exit(f"--variants: {text!r} is not N or N+thp (N: mmap threshold in KiB, 0 for glibc's default)")
    return int(threshold), extra == "thp"


def run_variant(variant: str, args, quant: str, workdir: Path, tag: str) -> dict:
    threshold, thp = parse_variant(variant)
    train_args = ["--model", args.model, "--quant", quant, "--rank", "16", "--modules", "qkvo",
                  "--format", args.format, "--max-steps", str(args.steps), "--batch-size", "4",
                  "--eval-every", "0", "--eval-gen", "0", "--val-limit", "1", "--save-every", "0", "--quiet",
                  "--mmap-threshold-kb", str(threshold), "--output-dir", str(workdir / tag)]
    train_args += ["--train-limit", str(args.limit)] if args.limit else []
    env = {**os.environ, **({"THP_MEM_ALLOC_ENABLE": "1"} if thp else {})}
    run, scores, metric = run_train_py(train_args, workdir / f"{tag}.db", variant, env)
    return {"tokens_per_s": metric("tokens_per_s"), "peak_rss_mb": scores["peak_rss_mb"],
            "last_rss_mb": metric("memory_mb")[-1], "dtype": run["config"]["dtype"]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--format", default="instruct", choices=("instruct", "completion"))
    p.add_argument("--variants", default="0,256,256+thp")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="train.py --train-limit (default all)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "allocator.json"))
    add_dtype_flag(p)
    args = p.parse_args(argv)
    variants = args.variants.split(",")
    for v in variants:
        parse_variant(v)
    device = default_device()
    dtype = bench_dtype(args.dtype, device)
    quant = train_quant_flag(dtype)
    print(machine_line(device, dtype), file=sys.stderr)
    results: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for v in variants[r % len(variants):] + variants[:r % len(variants)]:
                results[v].append(run_variant(v, args, quant, Path(tmp), f"{v.replace('+', '-')}-{r}"))
    base = statistics.median(t for res in results[variants[0]] for t in res["tokens_per_s"][args.warmup:])
    rows = []
    for v in variants:
        speeds = [t for res in results[v] for t in res["tokens_per_s"][args.warmup:]]
        rows.append({"variant": v, "median_tokens_per_s": round(statistics.median(speeds), 1),
                     f"vs {variants[0]}": round(statistics.median(speeds) / base, 3),
                     "steps_measured": len(speeds),
                     "peak_rss_mb": round(statistics.median(res["peak_rss_mb"] for res in results[v])),
                     "rss_after_last_step_mb": round(statistics.median(res["last_rss_mb"] for res in results[v]))})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "format": args.format, "rank": 16, "modules": "qkvo",
                               "batch_size": 4, "steps": args.steps, "warmup": args.warmup,
                               "repeats": args.repeats, "machine": machine_record(device, dtype), "rows": rows,
                               "runs": results}, indent=2) + "\n")
    from tabulate import tabulate
    print(machine_line(device, dtype))
    print(tabulate(rows, headers="keys", tablefmt="github"))


if __name__ == "__main__":
    main()

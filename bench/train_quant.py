"""Training throughput and peak memory of train.py per quantization mode, side by side in one run.

    python bench/train_quant.py                      # embedded model, r16 qkvo, 16bit/8bit/4bit
    python bench/train_quant.py --steps 12 --modes 16bit,4bit --model <dir or hub id>
    python bench/train_quant.py --modes 32bit,16bit      # fp32 (the AVX2 machines' path) next to the half dtype

Each mode runs train.py itself in a fresh process (so peak RSS is that mode's
own), on the same data, seed and LoRA config. The first --warmup steps are
discarded; the headline is the median real (non-padding) tokens/s over the
remaining steps and its ratio to the first mode. Modes are interleaved over
--repeats rounds so drift in machine load hits all of them alike. 16bit, 8bit
and 4bit compute in bf16 on a GPU or an AVX512-BF16/AMX CPU and in fp32 on an
AVX2 CPU; 32bit is fp32 everywhere; the table shows each mode's dtype. Prints
the machine it ran on (device, CPU kind from the CPU flags) and a markdown
table; writes both to bench/results/train_quant.json.
"""
import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.env import default_device  # noqa: E402
from machine import machine_line, machine_record, run_train_py  # noqa: E402


def run_mode(model: str, quant: str, steps: int, limit: int | None, workdir: Path, tag: str) -> dict:
    args = ["--model", model, "--quant", quant, "--rank", "16", "--modules", "qkvo", "--max-steps", str(steps),
            "--batch-size", "4", "--max-seq-len", "512", "--eval-every", "0", "--eval-gen", "0", "--val-limit", "1",
            "--save-every", "0", "--quiet", "--output-dir", str(workdir / tag)] + \
        (["--train-limit", str(limit)] if limit else [])
    run, scores, metric = run_train_py(args, workdir / f"{tag}.db", f"--quant {quant}")
    return {"tokens_per_s": metric("tokens_per_s"), "peak_rss_mb": scores["peak_rss_mb"],
            "dtype": run["config"]["dtype"]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--modes", default="16bit,8bit,4bit")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--limit", type=int, default=None,
                   help="train.py --train-limit: training pairs loaded (default all)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_quant.json"))
    args = p.parse_args(argv)
    device = default_device()
    print(machine_line(device), file=sys.stderr)
    modes = args.modes.split(",")
    samples: dict[str, list[float]] = {m: [] for m in modes}
    peaks: dict[str, list[float]] = {m: [] for m in modes}
    dtypes: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for mode in modes:
                result = run_mode(args.model, mode, args.steps, args.limit, Path(tmp), f"{mode}-{r}")
                samples[mode] += result["tokens_per_s"][args.warmup:]
                peaks[mode].append(result["peak_rss_mb"])
                dtypes[mode] = result["dtype"]
    rows = []
    base = statistics.median(samples[modes[0]])
    for mode in modes:
        median = statistics.median(samples[mode])
        rows.append({"quant": mode, "compute_dtype": dtypes[mode], "median_tokens_per_s": round(median, 1),
                     "ratio_vs_" + modes[0]: round(median / base, 3), "steps_measured": len(samples[mode]),
                     "peak_rss_mb": round(statistics.median(peaks[mode]))})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "rank": 16, "modules": "qkvo", "batch_size": 4,
                               "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
                               "machine": machine_record(device), "rows": rows}, indent=2) + "\n")
    from tabulate import tabulate
    print(machine_line(device))
    print(tabulate(rows, headers="keys", tablefmt="github"))


if __name__ == "__main__":
    main()

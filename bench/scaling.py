"""Training tokens/s and peak memory of train.py as the sequence length and the LoRA rank grow.

    python bench/scaling.py                                         # full run (~9 min on a quiet machine)
    python bench/scaling.py --steps 3 --warmup 1 --seq-lens 128,256 --ranks 4,16 --rank-seq-len 256   # smoke
    python bench/scaling.py --dtype fp32      # the AVX2 machines' fp32 path, on any machine

Every point runs train.py itself in a fresh process (so peak RSS is that run's
own) on the embedded model and stdlib pairs, 16bit, LoRA on q/k/v/o, fixed
--batch-size rows per step. Rows are packed (`--packing --max-seq-len L`):
examples are concatenated into rows of at most L tokens with per-example
position ids, so each row holds ~L real tokens (--dtype auto: 16bit, i.e. bf16
where the hardware has it and fp32 on an AVX2 CPU; --dtype fp32: 32bit); the measured fill (real tokens
/ batch x L) is reported. Examples longer than L are dropped, so a short L
trains on the shorter examples only (`train_examples` says how many fit). The
sequence-length sweep runs at rank 16, the rank sweep at --rank-seq-len; a
point both sweeps share runs once per round.

Per point, from train.py's tracker DB: median real tokens/s over the steps after
the first --warmup, peak RSS of the process (includes loading the model), the
largest RSS seen after a step, trainable parameters and adapter file size.
Points alternate over --repeats rounds. Prints the machine it ran on (device,
CPU kind from the CPU flags, dtype). Writes bench/results/scaling.json,
bench/scaling_seq_len.png and bench/scaling_rank.png, and prints markdown tables.
"""
import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.env import default_device  # noqa: E402
from machine import add_dtype_flag, bench_dtype, machine_line, machine_record, run_train_py  # noqa: E402
from machine import train_quant_flag  # noqa: E402

SWEEP_RANK = 16  # rank of the sequence-length sweep


def run_point(model: str, quant: str, seq_len: int, rank: int, batch_size: int, steps: int, limit: int | None,
              workdir: Path, tag: str) -> dict:
    args = ["--model", model, "--quant", quant, "--rank", str(rank), "--modules", "qkvo", "--packing",
            "--max-seq-len", str(seq_len), "--batch-size", str(batch_size), "--max-steps", str(steps),
            "--eval-every", "0", "--eval-gen", "0", "--val-limit", "1", "--save-every", "0", "--quiet",
            "--output-dir", str(workdir / tag)] + (["--train-limit", str(limit)] if limit else [])
    run, scores, metric = run_train_py(args, workdir / f"{tag}.db", f"L={seq_len} r={rank}")
    seen = metric("tokens_seen")
    return {"tokens_per_s": metric("tokens_per_s"),
            "step_tokens": [b - a for a, b in zip([0.0] + seen, seen)],
            "step_rss_mb": metric("memory_mb"),
            "peak_rss_mb": scores["peak_rss_mb"], "trainable_params": int(scores["trainable_params"]),
            "adapter_mb": scores["adapter_mb"], "dtype": run["config"]["dtype"],
            "train_examples": run["config"]["train_examples"]}


def summarise(seq_len: int, rank: int, batch_size: int, results: list[dict], warmup: int) -> dict:
    """One table row from a point's repeats: medians over the measured steps of all rounds."""
    measured = [v for r in results for v in r["tokens_per_s"][warmup:]]
    tokens = [v for r in results for v in r["step_tokens"][warmup:]]
    return {"seq_len": seq_len, "rank": rank, "median_tokens_per_s": round(statistics.median(measured), 1),
            "row_fill": round(statistics.median(tokens) / (batch_size * seq_len), 3),
            "peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in results)),
            "max_step_rss_mb": round(statistics.median(max(r["step_rss_mb"]) for r in results)),
            "trainable_params": results[0]["trainable_params"],
            "adapter_mb": round(results[0]["adapter_mb"], 2), "train_examples": results[0]["train_examples"],
            "steps_measured": len(measured)}


def plot_sweep(path: Path, title: str, xlabel: str, rows: list[dict], key: str) -> None:
    """Tokens/s over memory, two panels on a shared log2 x axis."""
    xs = [row[key] for row in rows]
    fig, (speed_ax, memory_ax) = plt.subplots(2, 1, figsize=(6.5, 6.5), sharex=True)
    speed_ax.plot(xs, [row["median_tokens_per_s"] for row in rows], marker="o")
    speed_ax.set(ylabel="median real tokens/s")
    memory_ax.plot(xs, [row["peak_rss_mb"] for row in rows], marker="s", color="tab:orange",
                   label="peak RSS of the process")
    memory_ax.plot(xs, [row["max_step_rss_mb"] for row in rows], marker="^", color="tab:green",
                   label="largest RSS after a step")
    memory_ax.set(xlabel=xlabel, ylabel="memory (MB)")
    memory_ax.legend(fontsize=8)
    memory_ax.set_xscale("log", base=2)
    memory_ax.set_xticks(xs)
    memory_ax.set_xticklabels([str(x) for x in xs])
    for ax in (speed_ax, memory_ax):
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--seq-lens", default="128,256,512,1024", help="packed row lengths, at rank 16")
    p.add_argument("--ranks", default="4,8,16,32,64", help="LoRA ranks, at --rank-seq-len")
    p.add_argument("--rank-seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=2, help="packed rows per step")
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--limit", type=int, default=None,
                   help="train.py --train-limit: training pairs loaded (default all)")
    add_dtype_flag(p)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "scaling.json"))
    p.add_argument("--plots", default=str(ROOT / "bench"),
                   help="directory for scaling_seq_len.png and scaling_rank.png")
    args = p.parse_args(argv)
    device = default_device()
    quant = train_quant_flag(bench_dtype(args.dtype, device))
    print(machine_line(device, bench_dtype(args.dtype, device)), file=sys.stderr)
    seq_points = [(int(L), SWEEP_RANK) for L in args.seq_lens.split(",")]
    rank_points = [(args.rank_seq_len, int(r)) for r in args.ranks.split(",")]
    points = list(dict.fromkeys(seq_points + rank_points))
    results: dict[tuple[int, int], list[dict]] = {pt: [] for pt in points}
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        for r in range(args.repeats):
            for seq_len, rank in points:
                results[seq_len, rank].append(run_point(args.model, quant, seq_len, rank, args.batch_size,
                                                        args.steps, args.limit, Path(tmp), f"L{seq_len}-r{rank}-{r}"))
                print(f"L={seq_len} r={rank} round {r + 1} done", file=sys.stderr, flush=True)
    rows = {pt: summarise(*pt, args.batch_size, results[pt], args.warmup) for pt in points}
    seq_rows = [rows[pt] for pt in seq_points]
    rank_rows = [rows[pt] for pt in rank_points]
    dtype = next(iter(results.values()))[0]["dtype"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "model": args.model, "quant": quant, "dtype": dtype, "machine": machine_record(device), "modules": "qkvo",
        "layout": "packed",
        "batch_size": args.batch_size, "rank_seq_len": args.rank_seq_len, "steps": args.steps,
        "warmup": args.warmup, "repeats": args.repeats, "seq_len_sweep": seq_rows, "rank_sweep": rank_rows,
        "raw": [{"seq_len": L, "rank": k, "runs": results[L, k]} for L, k in points]}, indent=2) + "\n")
    plots = Path(args.plots)
    plots.mkdir(parents=True, exist_ok=True)
    setup = f"{args.model}, {dtype}, LoRA qkvo, {args.batch_size} packed rows/step"
    plot_sweep(plots / "scaling_seq_len.png", f"train.py vs sequence length (rank {SWEEP_RANK})\n{setup}",
               "packed row length L (tokens, log scale)", seq_rows, "seq_len")
    plot_sweep(plots / "scaling_rank.png", f"train.py vs LoRA rank (L={args.rank_seq_len})\n{setup}",
               "LoRA rank r (log scale)", rank_rows, "rank")
    from tabulate import tabulate
    print(machine_line(device, bench_dtype(args.dtype, device)) + "\n")
    print(f"Sequence length (rank {SWEEP_RANK}, {setup}):\n")
    print(tabulate(seq_rows, headers="keys", tablefmt="github"))
    print(f"\nLoRA rank (L={args.rank_seq_len}, {setup}):\n")
    print(tabulate(rank_rows, headers="keys", tablefmt="github"))


if __name__ == "__main__":
    main()

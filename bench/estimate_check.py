"""Predicted (common/estimate.py) against measured (bench/estimate_measure.py) peak memory and step time.

    python bench/estimate_measure.py        # short train.py runs of the configs (slow: minutes each)
    python bench/estimate_check.py          # the table: prediction per config vs what was measured
    python bench/estimate_check.py --fit    # also the least-squares fit of K_ACT, and the time ratio

Each measured run is predicted for exactly the steps it ran (same data, seed and batches). Memory: the
process's peak RSS against the predicted peak; time: the mean seconds of the steps after the first (a
warm-up) against the mean prediction for the same steps. Errors are (predicted - measured) / measured.
Writes bench/results/estimate_check.json and prints a markdown table.
"""
import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from common import estimate as E  # noqa: E402
from common.config import TrainConfig  # noqa: E402
from common.predictions import relative_error  # noqa: E402
from estimate_measure import COMMON, LLAMA, write_llama_1b  # noqa: E402

MEASURED = ROOT / "bench" / "results" / "estimate_measured.json"
OUT = ROOT / "bench" / "results" / "estimate_check.json"


def describe(config: dict) -> str:
    extra = "+".join(k.replace("grad_checkpointing", "ckpt") for k in ("packing", "grad_checkpointing")
                     if config.get(k))
    model = "1.1B llama " if config.get("model") == LLAMA else ""
    return (f"{model}{config['quant']} r{config['rank']} {config['modules']} b{config['batch_size']} "
            f"L{config['max_seq_len']}" + (f" {extra}" if extra else ""))


def compare(row: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        config = row["config"]
        if config.get("model") == LLAMA:  # predicted from its config alone: the weights are never made
            config = {**config, "model": str(write_llama_1b(Path(tmp) / LLAMA, weights=False))}
        cfg = TrainConfig(**{**COMMON, **config, "max_steps": row["steps"]})
        est = E.estimate_run(cfg, torch.device("cpu"))
    measured_s = statistics.mean(row["step_s"][1:])
    predicted_s = statistics.mean(est.step_seconds[1:])
    return {"config": describe(row["config"]), "dtype": est.dtype, "largest": f"{est.largest.rows}x{est.largest.width}",
            "weights_mb": est.weights_mb, "act_logits_mb": est.activations_mb + est.logits_mb, "load_mb": est.load_mb,
            "predicted_peak_mb": est.peak_mb, "measured_peak_mb": row["peak_rss_mb"],
            "peak_error": relative_error(est.peak_mb, row["peak_rss_mb"]),
            "predicted_step_s": predicted_s, "measured_step_s": measured_s,
            "step_error": relative_error(predicted_s, measured_s), "load_avg": row.get("load_avg"),
            "fixed_mb": est.baseline_mb + est.weights_mb + est.lora_mb}


def fit(rows: list[dict]) -> None:
    """K_ACT by least squares through the origin, BASELINE_MB held at its measured value:
    measured peak - (baseline + weights + LoRA) = K * (activations + logits), over the runs whose
    training part exceeds their loading peak. Time: the median predicted/measured ratio (a load factor
    on a shared machine, not a hardware constant)."""
    train_rows = [r for r in rows if r["predicted_peak_mb"] > r["load_mb"] + 1]
    xs = [r["act_logits_mb"] for r in train_rows]
    ys = [r["measured_peak_mb"] - r["fixed_mb"] for r in train_rows]
    if xs:
        k = sum(x * y for x, y in zip(xs, ys)) / sum(x * x for x in xs)
        print(f"fit over {len(xs)} runs ({', '.join(r['config'] for r in train_rows)}): K_ACT = {k:.3f}")
    ratio = statistics.median(r["predicted_step_s"] / r["measured_step_s"] for r in rows)
    print(f"time: median predicted/measured {ratio:.3f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fit", action="store_true")
    p.add_argument("--measured", default=str(MEASURED), help="what bench/estimate_measure.py wrote")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    rows = [compare(r) for r in json.loads(Path(args.measured).read_text())]
    print("| config | dtype | largest micro-batch | predicted peak MB | measured peak MB | error | predicted step s "
          "| measured step s | error |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['config']} | {r['dtype']} | {r['largest']} | {r['predicted_peak_mb']:.0f} | "
              f"{r['measured_peak_mb']:.0f} | {r['peak_error']:+.1%} | {r['predicted_step_s']:.1f} | "
              f"{r['measured_step_s']:.1f} | {r['step_error']:+.1%} |")
    errors = [abs(r["peak_error"]) for r in rows]
    print(f"\nmemory: {sum(e <= 0.15 for e in errors)}/{len(rows)} within 15%, max |error| {max(errors):.1%}; "
          f"time: {sum(abs(r['step_error']) <= 0.30 for r in rows)}/{len(rows)} within 30%")
    if args.fit:
        fit(rows)
    result = {"rows": rows, "constants": {"BASELINE_MB": E.BASELINE_MB, "K_ACT": E.K_ACT, "EFFICIENCY": E.EFFICIENCY}}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

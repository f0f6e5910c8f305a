"""Predicted (common/train/estimate.py) against measured (bench/estimate_measure.py) peak memory and step time.

    python bench/estimate_measure.py        # short train.py runs of the configs (slow: minutes each)
    python bench/estimate_check.py          # the table: prediction per config vs what was measured
    python bench/estimate_check.py --fit    # also the least-squares fit of K_ACT, and the time ratio
    python bench/estimate_check.py --db /path/study.db --exclude 19,29 --fit   # and a study's 100-step runs

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

from common.train import estimate as E  # noqa: E402
from common.config import TrainConfig  # noqa: E402
from common.study.budget import step_seconds  # noqa: E402
from common.train.predictions import relative_error  # noqa: E402
from estimate_measure import COMMON, LLAMA, write_llama_1b  # noqa: E402

MEASURED = ROOT / "bench" / "results" / "estimate_measured.json"
OUT = ROOT / "bench" / "results" / "estimate_check.json"


def describe(config: dict) -> str:
    extra = "+".join(k.replace("grad_checkpointing", "ckpt") for k in ("packing", "grad_checkpointing")
                     if config.get(k))
    model = ("1.1B llama " if config.get("model") == LLAMA else "") + (
        f"{config['format']} " if config.get("format") else "")
    return (f"{model}{config['quant']} r{config['rank']} {config['modules']} b{config['batch_size']} "
            f"L{config['max_seq_len']}" + (f" {extra}" if extra else ""))


def compare(row: dict) -> dict:
    """A short run of estimate_measure.py against its prediction."""
    with tempfile.TemporaryDirectory() as tmp:
        config = row["config"]
        if config.get("model") == LLAMA:  # predicted from its config alone: the weights are never made
            config = {**config, "model": str(write_llama_1b(Path(tmp) / LLAMA, weights=False))}
        cfg = TrainConfig(**{**COMMON, **config, "max_steps": row["steps"]})
        est = E.estimate_run(cfg, torch.device("cpu"))
    return table_row(describe(row["config"]), est, row["peak_rss_mb"], row["step_s"], seed=None,
                     load_avg=row.get("load_avg"))


def compare_db(db: Path, exclude: set[int]) -> list[dict]:
    """Every completed train run of a tracker database (e.g. the study's 100-step runs) against a prediction
    made now for its recorded config, in the dtype it ran in."""
    from common.tracker import Tracker
    tracker = Tracker(db)
    fields = set(TrainConfig.__dataclass_fields__)
    rows = []
    for run in tracker.runs(kind="train", status="completed"):
        scores = {s["name"]: s["value"] for s in tracker.scores(run["id"], "train")}
        if run["id"] in exclude or scores.get("sessions", 1) > 1:  # a resumed run's peak may miss a session
            continue
        cfg = TrainConfig(**{k: v for k, v in run["config"].items() if k in fields})
        est = E.estimate_run(cfg, torch.device("cpu"), dtype=getattr(torch, run["config"]["dtype"]))
        rows.append(table_row(f"run {run['id']} {run['name']} ({cfg.model})", est, scores["peak_rss_mb"],
                              step_seconds(tracker, run["id"]), seed=cfg.seed, load_avg=None))
    return rows


def table_row(label: str, est: E.Estimate, measured_peak_mb: float, step_s: list[float], seed: int | None,
              load_avg: list | None) -> dict:
    measured_s = statistics.mean(step_s[1:])
    predicted_s = statistics.mean(est.step_seconds[1:])
    return {"config": label, "dtype": est.dtype, "largest": f"{est.largest.rows}x{est.largest.width}",
            "steps": est.steps, "seed": seed, "weights_mb": est.weights_mb, "acts_mb": est.activations_mb,
            "logits_mb": est.logits_mb, "load_mb": est.load_mb, "fixed_mb": E.fixed_mb(est),
            "predicted_peak_mb": est.peak_mb, "measured_peak_mb": measured_peak_mb,
            "peak_error": relative_error(est.peak_mb, measured_peak_mb),
            "predicted_step_s": predicted_s, "measured_step_s": measured_s,
            "step_error": relative_error(predicted_s, measured_s), "load_avg": load_avg}


def fit(short: list[dict], long: list[dict]) -> None:
    """How the memory constants are obtained (least squares, BASELINE_MB held at its measured value):
    K_LOGITS and K_act(n) from the long runs of seed 0, measured peak - fixed = K_LOGITS * logits +
    K_act(n) * acts, then K_ACT_GROWTH = (K_act(n) - K_ACT) / ln(n / 3); and, for comparison, K_ACT
    through the origin over the short runs whose training part exceeds their loading peak. Time: the median
    predicted/measured ratio (a load factor on a shared machine, not a hardware constant)."""
    train_rows = [r for r in short if r["predicted_peak_mb"] > r["load_mb"] + 1]
    if train_rows:
        ys = [r["measured_peak_mb"] - r["fixed_mb"] - E.K_LOGITS * r["logits_mb"] for r in train_rows]
        k = sum(r["acts_mb"] * y for r, y in zip(train_rows, ys)) / sum(r["acts_mb"] ** 2 for r in train_rows)
        print(f"short runs ({len(train_rows)} training-bound): K_ACT = {k:.3f} (the constant: {E.K_ACT})")
    fit_rows = [r for r in long if r["seed"] == 0]
    if fit_rows:
        import numpy as np
        a = np.array([[r["logits_mb"], r["acts_mb"]] for r in fit_rows])
        y = np.array([r["measured_peak_mb"] - r["fixed_mb"] for r in fit_rows])
        (k_logits, k_act_n), *_ = np.linalg.lstsq(a, y, rcond=None)
        n = statistics.median(r["steps"] for r in fit_rows)
        growth = (k_act_n - E.K_ACT) / np.log(n / 3)
        print(f"long runs of seed 0 ({len(fit_rows)}, {n:.0f} steps): K_LOGITS = {k_logits:.3f}, K_act({n:.0f}) = "
              f"{k_act_n:.3f}, so K_ACT_GROWTH = {growth:.3f} (the constants: {E.K_LOGITS}, {E.K_ACT_GROWTH})")
    ratio = statistics.median(r["predicted_step_s"] / r["measured_step_s"] for r in short + long)
    print(f"time: median predicted/measured {ratio:.3f}")


def print_table(rows: list[dict], title: str) -> None:
    print(f"\n{title}\n")
    print("| run | dtype | steps | largest micro-batch | predicted peak MB | measured peak MB | error "
          "| predicted step s | measured step s | error |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['config']} | {r['dtype']} | {r['steps']} | {r['largest']} | {r['predicted_peak_mb']:.0f} | "
              f"{r['measured_peak_mb']:.0f} | {r['peak_error']:+.1%} | {r['predicted_step_s']:.1f} | "
              f"{r['measured_step_s']:.1f} | {r['step_error']:+.1%} |")
    errors = [abs(r["peak_error"]) for r in rows]
    print(f"\nmemory: {sum(e <= 0.15 for e in errors)}/{len(rows)} within 15%, max |error| {max(errors):.1%}; "
          f"time: {sum(abs(r['step_error']) <= 0.30 for r in rows)}/{len(rows)} within 30%")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fit", action="store_true")
    p.add_argument("--measured", default=str(MEASURED), help="what bench/estimate_measure.py wrote")
    p.add_argument("--db", default=None, help="also every completed train run of this tracker database")
    p.add_argument("--exclude", default="", help="comma list of run ids of --db to leave out")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    short = [compare(r) for r in json.loads(Path(args.measured).read_text())]
    print_table(short, f"short runs ({args.measured})")
    long = compare_db(Path(args.db), {int(i) for i in args.exclude.split(",") if i}) if args.db else []
    if long:
        print_table(long, f"runs of {args.db}; the seed-0 runs are the fit's, the others held out")
    if args.fit:
        fit(short, long)
    result = {"rows": short, "db_rows": long,
              "constants": {"BASELINE_MB": E.BASELINE_MB, "K_ACT": E.K_ACT, "K_LOGITS": E.K_LOGITS,
                            "K_ACT_GROWTH": E.K_ACT_GROWTH, "EFFICIENCY": E.EFFICIENCY}}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

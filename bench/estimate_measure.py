"""Measure short train.py runs for checking common/estimate.py (raw figures only; estimate_check.py compares).

    python bench/estimate_measure.py                 # every config in CONFIGS not yet in the results file
    python bench/estimate_measure.py --only 0,3      # these configs (indices), again

Each config runs train.py in a fresh process (so its peak RSS is its own) with --max-steps STEPS,
no validation, no generation, no checkpoints, on the embedded SmolLM2-135M and the stdlib pairs.
Per run it records the peak RSS (getrusage, the whole process: imports, data, model load, training),
the per-step seconds (step tokens / the step's tokens_per_s from the tracker) and the step tokens.
Appends to bench/results/estimate_measured.json, keyed by the config.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.tracker import Tracker  # noqa: E402

STEPS = 3   # the first 3 configs were measured with 4
COMMON = {"train_limit": 400, "eval_every": 0, "val_limit": 0, "eval_gen": 0, "save_every": 0}
# The ranges: 16/8/4-bit, ranks 4-64, qv..all, batch 1-8, sequence 128-512, checkpointing, packing.
CONFIGS = [
    {"quant": "16bit", "rank": 16, "modules": "qkvo", "batch_size": 4, "max_seq_len": 512},
    {"quant": "16bit", "rank": 4, "modules": "qv", "batch_size": 1, "max_seq_len": 128},
    {"quant": "16bit", "rank": 64, "modules": "all", "batch_size": 8, "max_seq_len": 256},
    {"quant": "16bit", "rank": 16, "modules": "all", "batch_size": 2, "max_seq_len": 512, "packing": True},
    {"quant": "16bit", "rank": 16, "modules": "all", "batch_size": 2, "max_seq_len": 512, "packing": True,
     "grad_checkpointing": True},
    {"quant": "8bit", "rank": 16, "modules": "qkvo", "batch_size": 4, "max_seq_len": 256},
    {"quant": "4bit", "rank": 16, "modules": "qkvo", "batch_size": 4, "max_seq_len": 512},
    {"quant": "4bit", "rank": 8, "modules": "all", "batch_size": 8, "max_seq_len": 128},
    {"quant": "4bit", "rank": 64, "modules": "qv", "batch_size": 1, "max_seq_len": 512, "packing": True,
     "grad_checkpointing": True},
]
OUT = ROOT / "bench" / "results" / "estimate_measured.json"


def argv_of(config: dict) -> list[str]:
    args = []
    for key, value in {**COMMON, **config}.items():
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    return args


def measure(config: dict, workdir: Path, tag: str) -> dict:
    db = workdir / f"{tag}.db"
    cmd = [sys.executable, str(ROOT / "train.py"), *argv_of(config), "--max-steps", str(STEPS), "--quiet",
           "--db", str(db), "--output-dir", str(workdir / tag)]
    began = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    tracker = Tracker(db)
    (run,) = tracker.runs()
    scores = {s["name"]: s["value"] for s in tracker.scores(run["id"], "train")}
    rates = [m["value"] for m in tracker.metrics(run["id"], "tokens_per_s")]
    seen = [m["value"] for m in tracker.metrics(run["id"], "tokens_seen")]
    tokens = [b - a for a, b in zip([0.0] + seen, seen)]
    rss_after = [m["value"] for m in tracker.metrics(run["id"], "memory_mb")]
    return {"config": config, "steps": STEPS, "peak_rss_mb": scores["peak_rss_mb"], "dtype": run["config"]["dtype"],
            "step_tokens": tokens, "step_s": [t / r for t, r in zip(tokens, rates)], "rss_after_step_mb": rss_after,
            "trainable_params": scores["trainable_params"], "wall_s": time.time() - began,
            "load_avg": open("/proc/loadavg").read().split()[:3], "measured_at": time.strftime("%Y-%m-%d %H:%M")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=None, help="comma list of config indices (default: those not measured yet)")
    args = p.parse_args()
    results = json.loads(OUT.read_text()) if OUT.is_file() else []
    done = [json.dumps(r["config"], sort_keys=True) for r in results]
    todo = ([int(i) for i in args.only.split(",")] if args.only else
            [i for i, c in enumerate(CONFIGS) if json.dumps(c, sort_keys=True) not in done])
    with tempfile.TemporaryDirectory() as tmp:
        for i in todo:
            row = measure(CONFIGS[i], Path(tmp), f"c{i}")
            print(json.dumps({k: row[k] for k in ("config", "peak_rss_mb", "step_s", "wall_s")}), flush=True)
            results.append(row)
            OUT.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

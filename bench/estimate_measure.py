"""Measure short train.py runs for checking common/train/estimate.py (raw figures only; estimate_check.py compares).

    python bench/estimate_measure.py                 # every config in CONFIGS not yet in the results file
    python bench/estimate_measure.py --only 0,3      # these configs (indices), again
    python bench/estimate_measure.py --only 9,10,11  # the 1.1B llama at 16/8/4-bit (builds it: ~1 min, 2.3 GB)
    python bench/estimate_measure.py --only 12 --steps 10   # the study's reference run, its first 10 steps
    python bench/estimate_measure.py --model DIR --only 1 --steps 2 --out /tmp/m.json   # another model

Each config runs train.py in a fresh process (so its peak RSS is its own) with --max-steps STEPS,
no validation, no generation, no checkpoints, on the stdlib pairs: the embedded SmolLM2-135M, and a
1.1B llama (model "llama-1.1b": TinyLlama-1.1B's layer shape with the embedded tokenizer's 49,152-token
vocabulary, 1.17B parameters) built from its config with random weights, saved as bf16 in a temp dir.
Per run it records the peak RSS (getrusage, the whole process: imports, data, model load, training),
the per-step seconds (step tokens / the step's tokens_per_s from the tracker) and the step tokens.
Appends to bench/results/estimate_measured.json (or --out), keyed by the config; a config names its
model only when it is not the embedded default. Every row records the machine it ran on.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine import machine_record, run_train_py  # noqa: E402

STEPS = 3
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
] + [{"model": "llama-1.1b", "quant": quant, "rank": 16, "modules": "qkvo", "batch_size": 1, "max_seq_len": 256}
     for quant in ("16bit", "8bit", "4bit")] + [
    # the study's reference run (sweep.py --suite study, rank question): instruct format, the whole training
    # split (train_limit None), r16 qkvo, batch 4, length 512; measured with --steps 10
    {"format": "instruct", "train_limit": None, "quant": "16bit", "rank": 16, "modules": "qkvo", "batch_size": 4,
     "max_seq_len": 512},
]
LLAMA = "llama-1.1b"
TINYLLAMA_SHAPE = {"num_hidden_layers": 22, "hidden_size": 2048, "intermediate_size": 5632,
                   "num_attention_heads": 32, "num_key_value_heads": 4, "max_position_embeddings": 2048,
                   "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
OUT = ROOT / "bench" / "results" / "estimate_measured.json"


def argv_of(config: dict) -> list[str]:
    args = []
    for key, value in {**COMMON, **config}.items():
        flag = "--" + key.replace("_", "-")
        if value is not None:  # None: train.py's default
            args += [flag] if value is True else [flag, str(value)]
    return args


def write_llama_1b(directory: Path, weights: bool) -> Path:
    """The 1.1B llama with the embedded tokenizer: config and tokenizer, plus random bf16 weights if asked
    (config only is all common/train/estimate.py reads)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from common.model.load import load_tokenizer
    tokenizer = load_tokenizer("smollm2-135m")
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         dtype="bfloat16", **TINYLLAMA_SHAPE)
    if weights:
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(directory)
    else:
        config.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def measure(config: dict, steps: int, workdir: Path, tag: str) -> dict:
    ran = config
    if config.get("model") == LLAMA:  # built once per invocation, shared by its 16/8/4-bit configs
        built = workdir / LLAMA
        ran = {**config, "model": str(built if built.is_dir() else write_llama_1b(built, weights=True))}
    args = [*argv_of(ran), "--max-steps", str(steps), "--quiet", "--output-dir", str(workdir / tag)]
    began = time.time()
    run, scores, metric = run_train_py(args, workdir / f"{tag}.db", tag)
    seen = metric("tokens_seen")
    tokens = [b - a for a, b in zip([0.0] + seen, seen)]
    return {"config": config, "steps": steps, "peak_rss_mb": scores["peak_rss_mb"], "dtype": run["config"]["dtype"],
            "step_tokens": tokens, "step_s": [t / r for t, r in zip(tokens, metric("tokens_per_s"))],
            "rss_after_step_mb": metric("memory_mb"), "trainable_params": scores["trainable_params"],
            "wall_s": time.time() - began, "load_avg": open("/proc/loadavg").read().split()[:3],
            "machine": machine_record(torch.device("cpu")), "measured_at": time.strftime("%Y-%m-%d %H:%M")}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=None, help="comma list of config indices (default: those not measured yet)")
    p.add_argument("--model", default=None, help="a model other than the embedded default (name or directory)")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    out = Path(args.out)
    configs = [{**c, "model": args.model} if args.model and "model" not in c else c for c in CONFIGS]
    results = json.loads(out.read_text()) if out.is_file() else []
    done = [json.dumps(r["config"], sort_keys=True) for r in results]
    todo = ([int(i) for i in args.only.split(",")] if args.only else
            [i for i, c in enumerate(configs) if json.dumps(c, sort_keys=True) not in done])
    with tempfile.TemporaryDirectory() as tmp:
        for i in todo:
            row = measure(configs[i], args.steps, Path(tmp), f"c{i}")
            print(json.dumps({k: row[k] for k in ("config", "peak_rss_mb", "step_s", "wall_s")}), flush=True)
            results.append(row)
            out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

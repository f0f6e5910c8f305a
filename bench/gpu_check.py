"""Check everything CUDA-specific in about ten minutes on one GPU: one line per check, a JSON summary.

    python bench/gpu_check.py                    # on a CUDA machine (make gpu-check does the same)
    python bench/gpu_check.py --allow-cpu        # the same checks on a CPU (what CI runs, at tiny size)

Checks, each on a small llama built from config with the embedded tokenizer (no hub access):
  train-16bit / train-8bit / train-4bit   train.py 20 steps; loss falls; peak from max_memory_allocated
  paged-adamw-8bit                        train.py --optim paged_adamw_8bit (paged on CUDA)
  resume-after-sigterm                    SIGTERM mid-run, rerun, the run completes from its checkpoint
  batched-generation                      common.text.generation.generate at batch 8 == model.generate one at a time
  sweep-gpu-pinning                       sweep.py --workers 2: each child sees one CUDA device
  train-bench-smoke                       bench/train_compare.py at smoke size
Exit code 0 when every check passed. The summary goes to --out (bench/results/gpu_check.json).
"""
import argparse
import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_model(directory: Path, on_gpu: bool) -> str:
    """A randomly initialised llama, wider on a GPU, with the embedded model's real tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from common.model.load import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    width, layers = (512, 4) if on_gpu else (64, 2)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                         num_hidden_layers=layers, num_attention_heads=8 if on_gpu else 4, num_key_value_heads=4 if
                         on_gpu else 2, max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def train_cmd(model: str, work: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "--model", model, "--db", str(work / "e.db"), "--name", name,
            "--train-limit", "64", "--max-seq-len", "256", "--eval-gen", "0", "--val-limit", "8", "--quiet",
            "--lr", "1e-2", "--format", "completion", *extra]


def run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def train_scores(work: Path, name: str) -> dict[str, Any]:
    with sqlite3.connect(work / "e.db") as db:
        (run_id, status), = db.execute("SELECT id, status FROM runs WHERE name=? AND kind='train' ORDER BY id DESC "
                                       "LIMIT 1", (name,))
        scores = dict(db.execute("SELECT name, value FROM scores WHERE run_id=?", (run_id,)).fetchall())
        losses = [v for (v,) in db.execute("SELECT value FROM metrics WHERE run_id=? AND name='loss' ORDER BY step",
                                           (run_id,))]
    return {"status": status, "losses": losses, **scores}


def check_training(model: str, work: Path, quant: str, *extra: str) -> dict[str, Any]:
    name = f"{quant}{'-' + extra[-1] if extra else ''}"
    done = run(train_cmd(model, work, name, "--quant", quant, "--max-steps", "20", "--eval-every", "0", *extra))
    if done.returncode != 0:
        return {"ok": False, "detail": done.stderr.strip().splitlines()[-1:]}
    s = train_scores(work, name)
    falls = sum(s["losses"][-5:]) / 5 < sum(s["losses"][:5]) / 5
    peak = s.get("peak_gpu_allocated_mb", s.get("peak_rss_mb"))
    return {"ok": s["status"] == "completed" and falls, "peak_mb": peak, "first_loss": s["losses"][0],
            "last_loss": s["losses"][-1], "tokens_per_s": s.get("train_tokens_per_s"),
            "skipped_steps": s.get("skipped_steps")}


def check_resume(model: str, work: Path) -> dict[str, Any]:
    cmd = train_cmd(model, work, "resume", "--max-steps", "400", "--save-every", "0", "--eval-every", "0")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    for line in proc.stdout:  # --quiet logs every 10 steps
        if line.startswith("step 20/"):
            proc.send_signal(signal.SIGTERM)
            break
    proc.wait(timeout=300)
    again = run(cmd)
    s = train_scores(work, "resume")
    return {"ok": proc.returncode == 130 and again.returncode == 0 and s["status"] == "completed"
            and "resuming at step" in again.stdout, "first_exit": proc.returncode, "steps": s.get("steps")}


def check_generation(model: str) -> dict[str, Any]:
    import torch

    from common.env import default_device
    from common.text.generation import STOP_SEQUENCES, generate
    from common.model.load import compute_dtype, load_model, load_tokenizer

    device = default_device()
    tokenizer, lm = load_tokenizer(model), load_model(model, "16bit", device)
    prompts = [f"def f{i}(x):\n    \"\"\"Return x times {i}.\"\"\"\n" * (1 + i % 3) for i in range(8)]
    with torch.autocast(device.type, dtype=compute_dtype("16bit", device)):
        batched = [g.text for g in generate(lm, tokenizer, prompts, max_new_tokens=32, batch_size=8)]
        single = [g.text for p in prompts for g in generate(lm, tokenizer, [p], max_new_tokens=32, batch_size=1)]
    same = sum(a == b for a, b in zip(batched, single))
    return {"ok": same == len(prompts), "identical": f"{same}/{len(prompts)}", "stops": len(STOP_SEQUENCES)}


def check_pinning(model: str, work: Path) -> dict[str, Any]:
    cmd = [sys.executable, str(ROOT / "sweep.py"), "--suite", "smoke", "--workers", "2", "--db", str(work / "s.db"),
           "--quiet", "--set", f"model={model}", "--set", "benchmark=humaneval", "--set", "max_new_tokens=8"]
    done = run(cmd, timeout=900)
    with sqlite3.connect(work / "s.db") as db:
        rows = db.execute("SELECT hardware FROM runs").fetchall()
    devices = {json.loads(h or "{}").get("cuda_visible_devices") for (h,) in rows}
    return {"ok": done.returncode == 0, "visible_devices_seen": sorted(str(d) for d in devices)}


def check_bench(model: str, work: Path) -> dict[str, Any]:
    """bench/train_compare.py at smoke size: train.py and the padded Trainer recipe, one round."""
    out = work / "train_compare.json"
    done = run([sys.executable, str(ROOT / "bench" / "train_compare.py"), "--model", model, "--examples", "24",
                "--repeats", "1", "--warmup", "1", "--peak-seconds", "1", "--variants", "ours,a-trainer-pad512",
                "--out", str(out)], 900)
    if done.returncode != 0:
        return {"ok": False, "detail": (done.stderr.strip().splitlines() or [""])[-1]}
    medians = json.loads(out.read_text())["medians"]
    return {"ok": True, **{f"{r['variant']}_tokens_per_s": round(r["tokens_per_s"], 1) for r in medians}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--allow-cpu", action="store_true", help="run the checks on a CPU (tiny sizes)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_check.json"))
    p.add_argument("--skip", default="", help="comma list of checks to leave out")
    args = p.parse_args(argv)
    import torch

    on_gpu = torch.cuda.is_available()
    if not on_gpu and not args.allow_cpu:
        print("no CUDA device: this script checks the GPU paths (pass --allow-cpu to run it on a CPU)",
              file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = build_model(work / "model", on_gpu)
    checks: dict[str, Callable[[], dict[str, Any]]] = {
        "train-16bit": lambda: check_training(model, work, "16bit"),
        "train-8bit": lambda: check_training(model, work, "8bit"),
        "train-4bit": lambda: check_training(model, work, "4bit"),
        "paged-adamw-8bit": lambda: check_training(model, work, "4bit", "--optim", "paged_adamw_8bit"),
        "resume-after-sigterm": lambda: check_resume(model, work),
        "batched-generation": lambda: check_generation(model),
        "sweep-gpu-pinning": lambda: check_pinning(model, work),
        "train-bench-smoke": lambda: check_bench(model, work),
    }
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    results: dict[str, Any] = {}
    for name, check in checks.items():
        if name in skip:
            continue
        began = time.perf_counter()
        try:
            result = check()
        except Exception as e:  # a check that crashes is a failed check, and the others still run
            result = {"ok": False, "detail": f"{type(e).__name__}: {e}"[:300]}
        result["seconds"] = round(time.perf_counter() - began, 1)
        results[name] = result
        shown = " ".join(f"{k}={v}" for k, v in result.items() if k != "ok")
        print(f"{'PASS' if result['ok'] else 'FAIL'} {name}: {shown}", flush=True)
    device = torch.cuda.get_device_name(0) if on_gpu else f"CPU ({platform.processor() or platform.machine()})"
    summary = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda, "checks": results,
               "passed": sum(r["ok"] for r in results.values()), "total": len(results)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{summary['passed']}/{summary['total']} checks passed on {device}; summary in {args.out}")
    return 0 if summary["passed"] == summary["total"] else 1


if __name__ == "__main__":
    sys.exit(main())

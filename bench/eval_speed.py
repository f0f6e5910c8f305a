"""Evaluation generation: today's continuous batching vs the batch-at-a-time decoder it replaced, side by side.

    python bench/eval_speed.py                 # the study's settings: 164 HumanEval instruct prompts, 256 tokens,
                                               # batch 16, greedy, fp32 decoding, 3 repeats
    python bench/eval_speed.py --prompts 8 --max-new-tokens 32 --repeats 1      # a smoke run

The baseline is `common/text/generation.py` as it stood at --baseline-rev (default: the last commit before
continuous batching), read with `git show` and loaded as a module, so the product keeps one decoder and the
bench still times the old one exactly. Both paths get the same rendered prompts (the embedded model's
instruct protocol, as evaluate.py renders them), the same stops, batch size and decoding precision
(evaluate.py's default: a 16-bit model decoded in fp32, so greedy outputs do not depend on the batching).
After a warm-up of both on two prompts, the two paths alternate --repeats times (load on a shared machine
falls on both alike); the headline `speedup` is the ratio of median wall times. Also reported: model forward
calls per path (sequential steps, prefills included), completion tokens, and for how many prompts the two
texts are identical. Writes bench/results/eval_speed.json.
"""
import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.corpus.splits import load_humaneval  # noqa: E402
from common.env import default_device  # noqa: E402
from common.model.load import load_model, load_tokenizer  # noqa: E402
from common.text import generation  # noqa: E402
from common.text.protocols import render  # noqa: E402
from machine import add_dtype_flag, bench_dtype, machine_line, machine_record, train_quant_flag  # noqa: E402

BASELINE_REV = "759a298"  # h2-engine's base: batches of batch_size prompts, each run to its longest row


def baseline_generation(rev: str) -> ModuleType:
    """common/text/generation.py at git revision `rev`, as a module of its own."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:common/text/generation.py"], check=True,
                            capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader(f"generation_{rev}", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    exec(compile(source, f"{rev}:common/text/generation.py", "exec"), module.__dict__)
    return module


def timed_run(module: ModuleType, model, tokenizer, prompts, args) -> dict:
    """One generate() call of `module`: wall seconds, model forward calls, texts and completion tokens."""
    calls = [0]
    hook = model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    began = time.perf_counter()
    try:
        out = module.generate(model, tokenizer, [p.text for p in prompts], prompts[0].template,
                              max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, stop=prompts[0].stops,
                              fp32=args.fp32_decoding)
    finally:
        hook.remove()
    return {"seconds": time.perf_counter() - began, "forward_calls": calls[0], "texts": [g.text for g in out],
            "tokens": sum(g.new_tokens for g in out)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompts", type=int, default=164)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-fp32-decoding", dest="fp32_decoding", action="store_false",
                   help="decode in the model's own dtype (evaluate.py --no-fp32-decoding)")
    p.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision of the decoder to compare against")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "eval_speed.json"))
    add_dtype_flag(p)
    args = p.parse_args(argv)
    device = default_device()
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, train_quant_flag(bench_dtype(args.dtype, device)), device).eval()
    dtype = next(model.parameters()).dtype
    args.fp32_decoding = args.fp32_decoding and dtype.is_floating_point and dtype.itemsize < 4
    print(machine_line(device, dtype), flush=True)
    prompts = [render(tokenizer, problem, "instruct") for problem in load_humaneval()[:args.prompts]]
    paths = {"batch at a time (before)": baseline_generation(args.baseline_rev), "continuous (now)": generation}
    for module in paths.values():  # warm-up
        module.generate(model, tokenizer, [q.text for q in prompts[:2]], prompts[0].template, max_new_tokens=4,
                        batch_size=2, stop=prompts[0].stops, fp32=args.fp32_decoding)
    runs: dict[str, list[dict]] = {name: [] for name in paths}
    for _ in range(args.repeats):
        for name, module in paths.items():
            runs[name].append(timed_run(module, model, tokenizer, prompts, args))
            print(f"{name}: {runs[name][-1]['seconds']:.1f} s, {runs[name][-1]['forward_calls']} forward calls",
                  flush=True)
    print(json.dumps(write_result(args, runs, machine_record(device, dtype)), indent=1))


def write_result(args, runs: dict[str, list[dict]], machine: dict) -> dict:
    """Medians per path, the speedup, the agreement of the texts; written to args.out and returned."""
    rows = {name: {"median_s": round(statistics.median(r["seconds"] for r in rs), 2),
                   "runs_s": [round(r["seconds"], 2) for r in rs], "forward_calls": rs[-1]["forward_calls"],
                   "completion_tokens": rs[-1]["tokens"],
                   "tokens_per_s": round(rs[-1]["tokens"] / statistics.median(r["seconds"] for r in rs), 1)}
            for name, rs in runs.items()}
    before, now = (runs[name][-1]["texts"] for name in runs)
    (old, new) = (rows[name]["median_s"] for name in rows)
    result = {"model": args.model, "machine": machine, "protocol": "instruct", "prompts": args.prompts,
              "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "greedy": True,
              "fp32_decoding": args.fp32_decoding, "repeats": args.repeats, "baseline_rev": args.baseline_rev,
              "paths": rows, "speedup": round(old / new, 2),
              "identical_outputs": sum(a == b for a, b in zip(before, now)), "outputs": len(now)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()

"""Batched generation vs one prompt at a time (the usual evaluation loop), side by side in one run.

    python bench/generation_speed.py                    # embedded model, 16 HumanEval prompts, 64 new tokens
    python bench/generation_speed.py --prompts 32 --batch-size 8 --repeats 3

Both paths call common.generation.generate on the same prompts, greedy, with
stop sequences off so every prompt decodes the same number of tokens (the base
model would otherwise stop at once on many HumanEval prompts and we would time
prompt reading). After one warm-up pass of each, the two are alternated
--repeats times; the headline is the ratio of median wall times. The outputs
of the two paths are compared for equality. Writes
bench/results/generation_speed.json and prints a markdown table.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.data import load_humaneval  # noqa: E402
from common.env import default_device  # noqa: E402
from common.generation import generate  # noqa: E402
from common.quant import load_model, load_tokenizer  # noqa: E402


def timed(fn) -> tuple[float, list]:
    began = time.perf_counter()
    out = fn()
    return time.perf_counter() - began, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--quant", default="16bit")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "generation_speed.json"))
    args = p.parse_args()
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, args.quant, default_device())
    prompts = [ex.prompt for ex in load_humaneval()[:args.prompts]]
    kwargs = {"max_new_tokens": args.max_new_tokens, "stop": None}
    batched = lambda: generate(model, tokenizer, prompts, batch_size=args.batch_size, **kwargs)  # noqa: E731
    sequential = lambda: [generate(model, tokenizer, [q], batch_size=1, **kwargs)[0] for q in prompts]  # noqa: E731
    batched(), sequential()  # warm-up
    times = {"batched": [], "sequential": []}
    outputs = {}
    for _ in range(args.repeats):
        for name, fn in (("batched", batched), ("sequential", sequential)):
            seconds, outputs[name] = timed(fn)
            times[name].append(seconds)
    tokens = sum(g.new_tokens for g in outputs["batched"])
    same = sum(a.text == b.text for a, b in zip(outputs["batched"], outputs["sequential"]))
    rows = [{"path": name, "median_s": round(statistics.median(t), 2),
             "tokens_per_s": round(tokens / statistics.median(t), 1)} for name, t in times.items()]
    ratio = statistics.median(times["sequential"]) / statistics.median(times["batched"])
    result = {"model": args.model, "dtype": str(next(model.parameters()).dtype), "prompts": args.prompts,
              "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
              "threads": torch.get_num_threads(), "rows": rows, "speedup_batched_vs_sequential": round(ratio, 2),
              "identical_outputs": f"{same}/{len(prompts)}"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    from tabulate import tabulate
    print(tabulate(rows, headers="keys", tablefmt="github"))
    print(f"batched is {ratio:.2f}x faster; identical greedy outputs: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()

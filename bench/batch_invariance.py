"""Do greedy outputs depend on the batch size? bf16 vs fp32 decoding, batched vs one at a time.

    python bench/batch_invariance.py                       # 8 HumanEval instruct prompts, 128 tokens, 3 repeats
    python bench/batch_invariance.py --prompts 16 --max-new-tokens 256 --repeats 1

For each decoding precision (bf16 weights as `--quant 16bit` loads them on a CPU with native
bf16, and the same weights decoded in fp32 by `generate(..., fp32=True)`), the prompts are
generated at --batch-size and at batch size 1, alternating, --repeats times. Reported: how
many prompts give identical text at the two batch sizes, and the median wall time of each.
Writes bench/results/batch_invariance.json and prints a markdown table.
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
from common.protocols import render  # noqa: E402
from common.quant import cpu_has_native_bf16, load_model, load_tokenizer  # noqa: E402


def run(model, tokenizer, prompts, batch_size: int, max_new_tokens: int, fp32: bool) -> tuple[float, list[str]]:
    began = time.perf_counter()
    out = generate(model, tokenizer, [p.text for p in prompts], prompts[0].template, max_new_tokens=max_new_tokens,
                   batch_size=batch_size, stop=prompts[0].stops, fp32=fp32)
    return time.perf_counter() - began, [g.text for g in out]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "batch_invariance.json"))
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    device = default_device()
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, "16bit", device).eval()
    prompts = [render(tokenizer, problem, "instruct") for problem in load_humaneval()[:args.prompts]]
    rows = []
    for fp32 in (False, True):
        label = "fp32 decode of bf16 weights" if fp32 else str(next(model.parameters()).dtype).replace("torch.", "")
        run(model, tokenizer, prompts[:2], 2, 8, fp32)  # warm-up
        times: dict[int, list[float]] = {args.batch_size: [], 1: []}
        texts: dict[int, list[str]] = {}
        for _ in range(args.repeats):
            for bs in (args.batch_size, 1):
                seconds, texts[bs] = run(model, tokenizer, prompts, bs, args.max_new_tokens, fp32)
                times[bs].append(seconds)
        same = sum(a == b for a, b in zip(texts[args.batch_size], texts[1]))
        rows.append({"decode": label, "fp32": fp32, "equal": same, "prompts": len(prompts),
                     f"median_s_batch{args.batch_size}": round(statistics.median(times[args.batch_size]), 2),
                     "median_s_batch1": round(statistics.median(times[1]), 2),
                     "times": {str(k): [round(t, 2) for t in v] for k, v in times.items()},
                     "texts_batched": texts[args.batch_size], "texts_single": texts[1]})
        print(f"{label}: {same}/{len(prompts)} equal; medians {rows[-1]}", flush=True)
    agree = sum(a == b for a, b in zip(rows[0]["texts_single"], rows[1]["texts_single"]))
    result = {"model": args.model, "cpu_native_bf16": cpu_has_native_bf16(), "threads": torch.get_num_threads(),
              "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "repeats": args.repeats,
              "bf16_vs_fp32_single_equal": agree, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"| decode | equal b{args.batch_size} vs b1 | median s b{args.batch_size} | median s b1 |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['decode']} | {r['equal']}/{r['prompts']} | {r[f'median_s_batch{args.batch_size}']} "
              f"| {r['median_s_batch1']} |")
    print(f"bf16 and fp32 one-at-a-time outputs equal for {agree}/{len(prompts)} prompts")


if __name__ == "__main__":
    main()

"""Do greedy outputs depend on the batch size? bf16 vs fp32 decoding, batched vs one at a time.

    python bench/batch_invariance.py                       # 8 HumanEval instruct prompts, 128 tokens, 3 repeats
    python bench/batch_invariance.py --prompts 16 --max-new-tokens 256 --repeats 1

For each decoding precision (bf16 weights as `--quant 16bit` loads them on a CPU with native
bf16, and the same weights decoded in fp32 by `generate(..., fp32=True)`), the prompts are
generated at --batch-size --repeats times (the two precisions alternating) and once at batch
size 1. Reported: how many prompts give identical text at the two batch sizes, the median
batched wall time, and the one-at-a-time wall time.
Writes bench/results/batch_invariance.json and prints a markdown table.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.corpus.splits import load_humaneval  # noqa: E402
from common.env import default_device  # noqa: E402
from common.text.generation import generate  # noqa: E402
from common.text.protocols import render  # noqa: E402
from common.model.load import load_model, load_tokenizer  # noqa: E402
from machine import dtype_name, machine_line, machine_record  # noqa: E402


def run(model, tokenizer, prompts, batch_size: int, max_new_tokens: int, fp32: bool) -> tuple[float, list[str]]:
    began = time.perf_counter()
    out = generate(model, tokenizer, [p.text for p in prompts], prompts[0].template, max_new_tokens=max_new_tokens,
                   batch_size=batch_size, stop=prompts[0].stops, fp32=fp32)
    return time.perf_counter() - began, [g.text for g in out]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="timed batched runs per precision (one-at-a-time runs once)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "batch_invariance.json"))
    args = p.parse_args(argv)
    tokenizer = load_tokenizer(args.model)
    device = default_device()
    model = load_model(args.model, "16bit", device).eval()
    prompts = [render(tokenizer, problem, "instruct") for problem in load_humaneval()[:args.prompts]]
    dtype = next(model.parameters()).dtype
    half = dtype_name(dtype)
    print(machine_line(device, dtype), flush=True)
    result = {"model": args.model, "machine": machine_record(device, dtype),
              "prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
              "repeats": args.repeats, "runs": {}}

    def record(label: str, fp32: bool, batch_size: int) -> None:
        seconds, texts = run(model, tokenizer, prompts, batch_size, args.max_new_tokens, fp32)
        entry = result["runs"].setdefault(label, {"seconds": [], "texts": None})
        entry["seconds"].append(round(seconds, 2))
        entry["texts"] = texts
        print(f"{label}: {seconds:.1f} s", flush=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")  # partial results survive an interrupt

    run(model, tokenizer, prompts[:2], 2, 4, False)  # warm-up
    names = {False: half, True: "fp32"}
    for _ in range(args.repeats):  # alternate, so load on a shared machine falls on both alike
        for fp32 in (False, True):
            record(f"{names[fp32]} batch {args.batch_size}", fp32, args.batch_size)
    for fp32 in (False, True):
        record(f"{names[fp32]} batch 1", fp32, 1)
    print(f"| decode | equal b{args.batch_size} vs b1 | median s b{args.batch_size} (n) | s b1 |\n|---|---|---|---|")
    for fp32 in (False, True):
        batched, single = (result["runs"][f"{names[fp32]} batch {bs}"] for bs in (args.batch_size, 1))
        equal = sum(a == b for a, b in zip(batched["texts"], single["texts"]))
        result[f"equal_{names[fp32]}"] = equal
        print(f"| {names[fp32]} | {equal}/{len(prompts)} | {statistics.median(batched['seconds']):.1f} "
              f"({len(batched['seconds'])}) | {single['seconds'][0]:.1f} |")
    single = [result["runs"][f"{names[fp32]} batch 1"]["texts"] for fp32 in (False, True)]
    result["equal_bf16_vs_fp32_single"] = sum(a == b for a, b in zip(*single))
    print(f"{half} and fp32 one-at-a-time texts equal for {result['equal_bf16_vs_fp32_single']}/{len(prompts)}")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Greedy pass@1 of a model on HumanEval (or a hub benchmark) under each evaluation protocol.

    python bench/protocol_pass_rate.py                                  # embedded model, 164 problems, 3 protocols
    python bench/protocol_pass_rate.py --limit 16 --protocols instruct --max-new-tokens 320

Until evaluate.py takes --protocol, this is the way to see what a protocol does to a
base model's score: each problem is rendered with common.text.protocols.render, generated
greedily (fp32 decoding by default, so the batch size does not change the outputs),
turned into a program with common.text.protocols.program, and run with its tests in the
sandbox. Printed per protocol: pass@1, how many answers are non-empty (the sanitized
code defines something), the outcome counts and the commonest error types. Writes
bench/results/protocol_pass_rate.json with every program and outcome.
"""
import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.corpus.hub_benchmarks import is_hub_benchmark, load_hub_benchmark  # noqa: E402
from common.corpus.splits import load_humaneval  # noqa: E402
from common.env import default_device  # noqa: E402
from common.text.generation import generate  # noqa: E402
from common.text.protocols import answer_code, program, render  # noqa: E402
from common.model.load import load_model, load_tokenizer  # noqa: E402
from common.sandbox.execute import check_many, humaneval_program  # noqa: E402
from machine import machine_line, machine_record  # noqa: E402


def score_protocol(model, tokenizer, problems, protocol: str, max_new_tokens: int, batch_size: int,
                   fp32: bool = True) -> dict:
    """Generate, build programs, run them; returns the summary and one row per problem."""
    prompts = [render(tokenizer, p, protocol) for p in problems]
    began = time.perf_counter()
    pairs = []
    for template in sorted({p.template for p in prompts}):  # one generate() per template, as evaluate.py does
        index = [i for i, p in enumerate(prompts) if p.template == template]
        outs = generate(model, tokenizer, [prompts[i].text for i in index], template, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, stop=prompts[index[0]].stops, progress=True, fp32=fp32)
        pairs += list(zip(index, (o.text for o in outs)))
    texts = [t for _, t in sorted(pairs)]
    gen_s = time.perf_counter() - began
    programs = [program(p, protocol, t) for p, t in zip(problems, texts)]
    results = check_many([humaneval_program("", code, p.tests["test"], p.tests["entry_point"])
                          for p, code in zip(problems, programs)], progress=True)
    rows = [{"task_id": p.id, "generation": t, "program": code, "status": r.status, "error_type": r.error_type}
            for p, t, code, r in zip(problems, texts, programs, results)]
    non_empty = sum(bool(answer_code(p, protocol, t).strip()) for p, t in zip(problems, texts))
    summary = {"protocol": protocol, "problems": len(problems), "passed": sum(r.passed for r in results),
               "pass_at_1": sum(r.passed for r in results) / len(problems), "non_empty": non_empty,
               "statuses": dict(Counter(r.status for r in results)),
               "error_types": dict(Counter(r.error_type for r in results if r.error_type).most_common(6)),
               "gen_seconds": round(gen_s, 1)}
    return {"summary": summary, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--benchmark", default="humaneval", help="humaneval, or mbpp / humaneval+ / mbpp+[:PATH.jsonl]")
    p.add_argument("--protocols", default="completion,instruct,fewshot")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--bf16", action="store_true", help="decode in the model's bf16 (batch-size dependent)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "protocol_pass_rate.json"))
    args = p.parse_args(argv)
    problems = load_hub_benchmark(args.benchmark)[0] if is_hub_benchmark(args.benchmark) else load_humaneval()
    problems = problems[:args.limit]
    tokenizer = load_tokenizer(args.model)
    device = default_device()
    model = load_model(args.model, "16bit", device).eval()
    # fp32 decoding (the default) computes in fp32 whatever the weights' dtype
    dtype = next(model.parameters()).dtype if args.bf16 else torch.float32
    print(machine_line(device, dtype), flush=True)
    runs = {}
    for protocol in args.protocols.split(","):
        runs[protocol] = score_protocol(model, tokenizer, problems, protocol, args.max_new_tokens, args.batch_size,
                                        fp32=not args.bf16)
        print(json.dumps(runs[protocol]["summary"]), flush=True)
    Path(args.out).write_text(json.dumps({"model": args.model,
                                          "machine": machine_record(device, dtype),
                                          "benchmark": args.benchmark, "limit": args.limit,
                                          "max_new_tokens": args.max_new_tokens, "fp32_decoding": not args.bf16,
                                          "runs": runs}, indent=1) + "\n")
    print("| protocol | pass@1 | passed | non-empty answers | statuses |\n|---|---|---|---|---|")
    for protocol, run in runs.items():
        s = run["summary"]
        print(f"| {protocol} | {s['pass_at_1']:.3f} | {s['passed']}/{s['problems']} | {s['non_empty']} "
              f"| {s['statuses']} |")


if __name__ == "__main__":
    main()

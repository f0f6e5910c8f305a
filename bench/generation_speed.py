"""Batched generation for evaluation vs one prompt at a time (the usual loop), side by side in one run.

    python bench/generation_speed.py                       # embedded model, 32 HumanEval prompts, chat, 256 tokens
    python bench/generation_speed.py --prompts 16 --template plain --repeats 1 --no-e2e
    python bench/generation_speed.py --quant 32bit         # fp32 (the AVX2 machines' path) on any machine

The usual loop is what evaluation scripts commonly do: `model.generate` on one
prompt at a time with transformers' stop-string criteria, then cut the text.
Ours is `common.text.generation.generate`: prompts sorted by length, left-padded
batches, and rows that finish leave the batch. Both run on the same rendered
prompts, greedy, with the evaluation's stops for the template. The default
template is "chat" (the instruction model answers HumanEval prompts in full,
ending at EOS, so completion lengths vary from a few to 256 tokens; on plain
prompts the base model stops after a token or two and there is little to
time). After a warm-up on two prompts, the two paths alternate --repeats
times; the headline is the ratio of median wall times, and the texts of the
two paths are compared for equality.

Then, unless --no-e2e, `evaluate.py --benchmark humaneval` runs on all 164
problems in a subprocess (generation plus sandboxed execution of every
program, as a user runs it) and its wall time is reported.

--quant 16bit runs in bf16 on a GPU or an AVX512-BF16/AMX CPU and in fp32 on an
AVX2 CPU; --quant 32bit is fp32 everywhere. Prints the machine it ran on
(device, CPU kind from the CPU flags, dtype) and a markdown table; writes both
to bench/results/generation_speed.json.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.corpus.splits import load_humaneval  # noqa: E402
from common.env import default_device  # noqa: E402
from common.text.generation import cut_completion, generate, stop_criteria, stops_for_template  # noqa: E402
from common.text.prompts import encode_prompt, render_prompt  # noqa: E402
from common.model.load import load_model, load_tokenizer  # noqa: E402
from common.tracker import Tracker  # noqa: E402
from machine import dtype_name, machine_line, machine_record  # noqa: E402


def usual_loop(model, tokenizer, prompts: list[str], template: str, max_new_tokens: int) -> list[str]:
    """model.generate one prompt at a time with stop-string criteria, then cut at the stop."""
    stops = stops_for_template(template)
    texts = []
    for prompt in prompts:
        ids = torch.tensor([encode_prompt(tokenizer, prompt, template)], device=model.device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, temperature=None, top_p=None, top_k=None,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                             stopping_criteria=stop_criteria(tokenizer, stops))
        texts.append(cut_completion(prompt, tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True), stops))
    return texts


def timed(fn) -> tuple[float, list]:
    began = time.perf_counter()
    out = fn()
    return time.perf_counter() - began, out


def evaluate_all_humaneval(model: str, batch_size: int, max_new_tokens: int) -> dict:
    """evaluate.py on all 164 HumanEval problems in a fresh process; its wall time from the tracker."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "e2e.db"
        began = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--model", model, "--benchmark", "humaneval",
                        "--eval-batch-size", str(batch_size), "--max-new-tokens", str(max_new_tokens), "--no-compare",
                        "--quiet", "--db", str(db), "--output-dir", str(Path(tmp) / "out")],
                       check=True, stdout=subprocess.DEVNULL)
        process_s = time.perf_counter() - began
        tracker = Tracker(db)
        (run,) = tracker.runs()
        scores = {s["name"]: s["value"] for s in tracker.scores(run["id"], "humaneval")}
    return {"problems": 164, "process_wall_s": round(process_s, 1), "run_wall_s": round(run["wall_seconds"], 1),
            "pass_at_1": scores.get("pass@1")}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--quant", default="16bit")
    p.add_argument("--template", default="chat", choices=("chat", "plain"))
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-e2e", action="store_true", help="skip timing evaluate.py on all 164 problems")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "generation_speed.json"))
    args = p.parse_args(argv)
    device = default_device()
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, args.quant, device)
    dtype = next(model.parameters()).dtype
    print(machine_line(device, dtype), file=sys.stderr)
    model.eval()
    prompts = [render_prompt(tokenizer, ex.prompt, args.template) for ex in load_humaneval()[:args.prompts]]
    kwargs = {"template": args.template, "max_new_tokens": args.max_new_tokens}
    ours = lambda: [g.text for g in generate(model, tokenizer, prompts, batch_size=args.batch_size,  # noqa: E731
                                             stop=stops_for_template(args.template), **kwargs)]
    usual = lambda: usual_loop(model, tokenizer, prompts, **kwargs)  # noqa: E731
    generate(model, tokenizer, prompts[:2], batch_size=2, **kwargs)  # warm-up
    usual_loop(model, tokenizer, prompts[:2], **kwargs)
    times: dict[str, list[float]] = {"batched (ours)": [], "one at a time (usual loop)": []}
    outputs = {}
    for _ in range(args.repeats):
        for name, fn in zip(times, (ours, usual)):
            seconds, outputs[name] = timed(fn)
            times[name].append(seconds)
    batched, sequential = outputs.values()
    tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in batched)
    same = sum(a == b for a, b in zip(batched, sequential))
    rows = [{"path": name, "median_s": round(statistics.median(t), 1), "runs_s": [round(x, 1) for x in t],
             "completion_tokens_per_s": round(tokens / statistics.median(t), 1)} for name, t in times.items()]
    ratio = statistics.median(times["one at a time (usual loop)"]) / statistics.median(times["batched (ours)"])
    result = {"model": args.model, "dtype": dtype_name(dtype), "machine": machine_record(device, dtype),
              "template": args.template,
              "prompts": args.prompts, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
              "repeats": args.repeats, "threads": torch.get_num_threads(), "completion_tokens": tokens,
              "rows": rows, "speedup_batched_vs_usual_loop": round(ratio, 2),
              "identical_outputs": f"{same}/{len(prompts)}"}
    from tabulate import tabulate
    print(machine_line(device, dtype))
    print(tabulate(rows, headers="keys", tablefmt="github"))
    print(f"batched is {ratio:.2f}x faster; identical greedy outputs: {same}/{len(prompts)}")
    if not args.no_e2e:
        del model
        result["evaluate_all_humaneval"] = evaluate_all_humaneval(args.model, args.batch_size, args.max_new_tokens)
        print(f"evaluate.py on all 164 HumanEval problems: {result['evaluate_all_humaneval']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

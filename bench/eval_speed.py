"""Evaluation generation, engines side by side: today's continuous batching, the batch-at-a-time decoder it
replaced, and llama.cpp (evaluate.py --engine llama.cpp).

    python bench/eval_speed.py                 # the study's settings: 164 HumanEval instruct prompts, 256 tokens,
                                               # batch 16, greedy, fp32 decoding, 3 repeats; before vs now
    python bench/eval_speed.py --engines hf,llama.cpp            # today's HF decoder vs llama.cpp (f16 GGUF)
    python bench/eval_speed.py --engines hf,llama.cpp --prompts 4 --max-new-tokens 32 --repeats 1   # a smoke run

--engines (a comma list, compared first against last): `before` is `common/text/generation.py` as it stood at
--baseline-rev (default: the last commit before continuous batching), read with `git show` and loaded as a module,
so the product keeps one decoder and the bench still times the old one exactly; `hf` is today's decoder;
`llama.cpp` generates at --batch-size (continuous batching)
from the model exported to a GGUF of --gguf-type (cached under the toolkit's cache directory; needs pip install -r
requirements-llamacpp.txt). Every path gets the same rendered
prompts (the embedded model's instruct protocol, as evaluate.py renders them), the same stops and max new tokens;
the HF paths the same batch size and decoding precision (evaluate.py's default: a 16-bit model decoded in fp32, so
greedy outputs do not depend on the batching). After a warm-up of each on two prompts, the paths alternate
--repeats times (load on a shared machine falls on all alike); the headline `speedup` is the ratio of median wall
times, first path over last. Also reported: model forward calls per HF path (sequential steps, prefills
included), completion tokens and tokens/s, and for how many prompts the first and last paths' texts are identical.
Writes bench/results/eval_speed.json.
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
from typing import Callable

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


ENGINES = ("before", "hf", "llama.cpp")


def hf_path(module: ModuleType, model, tokenizer, args) -> Callable[[list, int], dict]:
    """(prompts, max new tokens) -> one generate() call of `module`: wall seconds, model forward calls, texts,
    completion tokens."""
    def run(prompts, new_tokens: int) -> dict:
        calls = [0]
        hook = model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        began = time.perf_counter()
        try:
            out = module.generate(model, tokenizer, [p.text for p in prompts], prompts[0].template,
                                  max_new_tokens=new_tokens, batch_size=args.batch_size,
                                  stop=prompts[0].stops, fp32=args.fp32_decoding)
        finally:
            hook.remove()
        return {"seconds": time.perf_counter() - began, "forward_calls": calls[0], "texts": [g.text for g in out],
                "tokens": sum(g.new_tokens for g in out)}
    return run


def llama_cpp_path(tokenizer, args, device) -> Callable[[list, int], dict]:
    """(prompts, max new tokens) -> one generate_llamacpp() call on the model's GGUF (exported once into the cache
    directory)."""
    from common.model.export import cached_gguf
    from common.paths import cache_dir
    from common.text.llamacpp import generate_llamacpp, import_llama_cpp

    import_llama_cpp()
    gguf = cached_gguf(args.model, None, tokenizer, cache_dir() / "bench", args.gguf_type, device)

    def run(prompts, new_tokens: int) -> dict:
        began = time.perf_counter()
        out = generate_llamacpp(gguf, tokenizer, [p.text for p in prompts], prompts[0].template,
                                max_new_tokens=new_tokens, stop=prompts[0].stops, batch_size=args.batch_size)
        return {"seconds": time.perf_counter() - began, "forward_calls": None, "texts": [g.text for g in out],
                "tokens": sum(g.new_tokens for g in out)}
    return run


def engine_paths(names: list[str], model, tokenizer, args, device) -> dict[str, Callable[[list, int], dict]]:
    """Each engine of --engines under the name the results show."""
    paths = {}
    for name in names:
        if name == "before":
            paths["batch at a time (before)"] = hf_path(baseline_generation(args.baseline_rev), model, tokenizer, args)
        elif name == "hf":
            paths["continuous (now)"] = hf_path(generation, model, tokenizer, args)
        else:
            paths[f"llama.cpp {args.gguf_type}"] = llama_cpp_path(tokenizer, args, device)
    return paths


def parse_engines(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if len(names) < 2 or len(set(names)) != len(names) or not set(names) <= set(ENGINES):
        raise SystemExit(f"--engines needs two or more of {', '.join(ENGINES)} (comma list), got {text!r}")
    return names


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
    p.add_argument("--engines", default="before,hf", help=f"comma list of {', '.join(ENGINES)}: first vs last")
    p.add_argument("--gguf-type", default="f16", choices=("f32", "f16", "q8_0"), help="llama.cpp's GGUF weights")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "eval_speed.json"))
    add_dtype_flag(p)
    args = p.parse_args(argv)
    engines = parse_engines(args.engines)
    device = default_device()
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, train_quant_flag(bench_dtype(args.dtype, device)), device).eval()
    dtype = next(model.parameters()).dtype
    args.fp32_decoding = args.fp32_decoding and dtype.is_floating_point and dtype.itemsize < 4
    print(machine_line(device, dtype), flush=True)
    prompts = [render(tokenizer, problem, "instruct") for problem in load_humaneval()[:args.prompts]]
    paths = engine_paths(engines, model, tokenizer, args, device)
    for run in paths.values():  # warm-up
        run(prompts[:2], 4)
    runs: dict[str, list[dict]] = {name: [] for name in paths}
    for _ in range(args.repeats):
        for name, run in paths.items():
            runs[name].append(run(prompts, args.max_new_tokens))
            print(f"{name}: {runs[name][-1]['seconds']:.1f} s, {runs[name][-1]['tokens']} tokens, "
                  f"{runs[name][-1]['forward_calls']} forward calls", flush=True)
    print(json.dumps(write_result(args, runs, machine_record(device, dtype)), indent=1))


def write_result(args, runs: dict[str, list[dict]], machine: dict) -> dict:
    """Medians per path, the speedup (first path over last), how many texts of the two agree; written to args.out
    and returned."""
    rows = {name: {"median_s": round(statistics.median(r["seconds"] for r in rs), 2),
                   "runs_s": [round(r["seconds"], 2) for r in rs], "forward_calls": rs[-1]["forward_calls"],
                   "completion_tokens": rs[-1]["tokens"],
                   "tokens_per_s": round(rs[-1]["tokens"] / statistics.median(r["seconds"] for r in rs), 1)}
            for name, rs in runs.items()}
    first, last = list(runs)[0], list(runs)[-1]
    before, now = runs[first][-1]["texts"], runs[last][-1]["texts"]
    result = {"model": args.model, "machine": machine, "protocol": "instruct", "prompts": args.prompts,
              "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "greedy": True,
              "fp32_decoding": args.fp32_decoding, "repeats": args.repeats, "baseline_rev": args.baseline_rev,
              "engines": list(runs), "gguf_type": args.gguf_type if f"llama.cpp {args.gguf_type}" in runs else None,
              "paths": rows, "speedup": round(rows[first]["median_s"] / rows[last]["median_s"], 2),
              "identical_outputs": sum(a == b for a, b in zip(before, now)), "outputs": len(now)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()

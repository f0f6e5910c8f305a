"""Inference speed as a user serves it: the base model and one LoRA adapter four ways, side by side in one run.

    python bench/serve_speed.py                              # embedded SmolLM2-135M, built r16 qkvo adapter
    python bench/serve_speed.py --adapter runs/demo          # a trained adapter (train.py output dir or best/)
    python bench/serve_speed.py --fp32-decoding              # 16-bit arms decoded in fp32, as infer.py's default
    python bench/serve_speed.py --model DIR --max-new-tokens 4 --repeats 1 --prompts 1   # smoke run (seconds)

Arms (ARMS), each loaded through the project's own common/model/load.py:
    base            the model at --quant 16bit: bf16 on a GPU or a CPU with AVX512-BF16/AMX, fp32 on an AVX2 CPU
    lora-unmerged   base + the adapter in PEFT's wrapper (what infer.py --adapter serves)
    lora-merged     merge_and_unload into that 16-bit base (what infer.py --merge-to writes)
    lora-nf4        the adapter on the 4-bit NF4 base (bitsandbytes, double quant), unmerged: QLoRA as trained
    lora-int8       the adapter on the 8-bit base, unmerged
Where bitsandbytes cannot run, its arms are skipped and the JSON says why.

The adapter: --adapter DIR, else one built here from --seed (rank 16 on q/k/v/o, lora_B drawn from N(0, 0.02)
so it changes the outputs; PEFT's own init has B = 0, a no-op that a merge would make free).

Per arm, in a process of its own (so its peak RSS, VmHWM from /proc, is its own: ru_maxrss in a child starts
at its parent's high-water mark), after a warm-up:
    TTFT            infer.py's session (common/inference/session.py) on one HumanEval prompt rendered as
                    evaluate.py renders it (common/text/protocols.py render(..., "instruct")): the time from
                    generate() to the first streamed token, i.e. prefill + one step
    decode tok/s    the same generation, batch 1, greedy: (new tokens - 1) / (time after the first token)
    batch-8 tok/s   evaluate.py's decoder (common/text/generation.py generate) on the first --batch-size
                    prompts at once: new tokens / wall time
Stop sequences are off and EOS can never win (its logit is masked), so every arm decodes exactly
--max-new-tokens per prompt. Each repeat runs every arm once, in an order rotated each repeat, so a busy spell
falls on all arms alike; the JSON holds medians (over prompts and repeats), ratios to the base arm, and every
run. `identical_texts`: whether the merged and unmerged arms gave the same greedy texts (exact in fp32; bf16
rounding may differ). Writes bench/results/serve_speed.json and prints its markdown section
(common/study/serving.py). Timings are noisy on shared machines: run it on a quiet one.
"""
import argparse
import io
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.env import default_device  # noqa: E402
from common.errors import UserError, run_cli  # noqa: E402
from machine import dtype_name, machine_line, machine_record  # noqa: E402

ARMS = {"base": "16bit", "lora-unmerged": "16bit", "lora-merged": "16bit", "lora-nf4": "4bit", "lora-int8": "8bit"}
LORA_B_STD = 0.02
MIB = 2**20


# ---------------------------------------------------------------------------- one arm, in its own process

def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM: the high-water mark of its own address space since exec)."""
    try:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    from common.env import current_memory_mb
    return current_memory_mb(torch.device("cpu"))


def suppress_eos(model: torch.nn.Module, eos_id: int) -> None:
    """Mask EOS in every forward's logits, so each arm decodes exactly max_new_tokens whatever it would say."""
    def hook(_module, _inputs, logits: torch.Tensor) -> torch.Tensor:
        logits[..., eos_id] = torch.finfo(logits.dtype).min
        return logits

    model.get_output_embeddings().register_forward_hook(hook)


def load_arm(arm: str, model_name: str, adapter, device: torch.device) -> torch.nn.Module:
    """The arm's model as a user would load it: the base at its quant, the adapter wrapped or merged."""
    from common.model.export import load_adapter
    from common.model.load import load_model
    model = load_model(model_name, ARMS[arm], device)
    if arm == "base":
        return model
    model = load_adapter(model, adapter)
    return model.merge_and_unload() if arm == "lora-merged" else model


def measure_arm(arm: str, model_name: str, adapter_dir: str, max_new_tokens: int, prompts: int, batch_size: int,
                fp32_decoding: bool) -> dict[str, Any]:
    """Load the arm, warm it up, then time single prompts through infer.py's session and one batch through
    evaluate.py's decoder."""
    from common.corpus.splits import load_humaneval
    from common.inference.session import Session
    from common.model.adapters import adapter_from_dir
    from common.model.load import compute_dtype, load_tokenizer

    device = default_device()
    adapter = adapter_from_dir(Path(adapter_dir), "bench adapter")
    tokenizer = load_tokenizer(model_name)
    began = time.perf_counter()
    model = load_arm(arm, model_name, adapter, device)
    load_s, rss_after_load = time.perf_counter() - began, current_rss_mib()
    suppress_eos(model, tokenizer.eos_token_id)
    problems = load_humaneval()[:max(prompts, batch_size)]
    # train_format "instruct": infer.py renders a code prompt as evaluate.py's instruct protocol does, base and
    # adapter alike (Session.instruct_example); stop=[]: no stop sequences.
    session = Session(model, tokenizer, adapter if arm in ("lora-unmerged", "lora-nf4", "lora-int8") else None,
                      device, compute_dtype(ARMS[arm], device), max_new_tokens=min(max_new_tokens, 4), stop=[],
                      show_speed=False, fp32_decoding=fp32_decoding, train_format="instruct", out=io.StringIO())
    session.generate(problems[0].prompt, True, 0)  # warm-up; the session casts for fp32 decoding once, first
    batch_tokens(model, tokenizer, problems[:batch_size], min(max_new_tokens, 4), session.dtype, fp32_decoding)
    session.max_new_tokens = max_new_tokens
    singles = [session.generate(p.prompt, True, 0) for p in problems[:prompts]]
    tokens, seconds = batch_tokens(model, tokenizer, problems[:batch_size], max_new_tokens, session.dtype,
                                   fp32_decoding)
    return {"arm": arm, "quant": ARMS[arm], "dtype": dtype_name(session.dtype), "load_s": round(load_s, 2),
            "rss_after_load_mib": round(rss_after_load), "peak_rss_mib": round(peak_rss_mib()),
            "ttft_s": [r.first_token_s for r in singles],
            "decode_tokens_per_s": [(r.new_tokens - 1) / (r.seconds - r.first_token_s) for r in singles],
            "new_tokens": [r.new_tokens for r in singles], "texts": [r.completion for r in singles],
            "batch_rows": len(problems[:batch_size]), "batch_new_tokens": tokens, "batch_s": seconds,
            "batch8_tokens_per_s": tokens / seconds}


def batch_tokens(model, tokenizer, problems: list, max_new_tokens: int, dtype: torch.dtype,
                 fp32_decoding: bool) -> tuple[int, float]:
    """evaluate.py's batched greedy decoding of the problems' instruct prompts: (new tokens, seconds)."""
    from common.text.generation import decoding_precision, generate
    from common.text.protocols import render

    rendered = [render(tokenizer, p, "instruct") for p in problems]
    began = time.perf_counter()
    with decoding_precision(model, dtype, fp32_decoding):
        out = generate(model, tokenizer, [r.text for r in rendered], rendered[0].template,
                       max_new_tokens=max_new_tokens, batch_size=len(rendered), stop=())
    return sum(g.new_tokens for g in out), time.perf_counter() - began


# ---------------------------------------------------------------------------- the run: adapter, arms, summary

def build_adapter(model_name: str, target: Path, seed: int) -> str:
    """A rank-16 q/k/v/o adapter with non-zero B from a fixed seed, saved as train.py saves one."""
    from common.model.load import load_model
    from common.model.lora import attach_lora, save_adapter

    torch.manual_seed(seed)
    model = attach_lora(load_model(model_name, "32bit", torch.device("cpu")), 16, None, 0.0, "qkvo")
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=LORA_B_STD)
    save_adapter(model, target)
    return f"built here: rank 16, alpha 32, q/k/v/o, seed {seed}, lora_B ~ N(0, {LORA_B_STD})"


def given_adapter_base(adapter_dir: str | None) -> str | None:
    """The base model a --adapter directory was trained on (None if unknown); a bad directory fails here, in
    one line, before any arm starts."""
    from common.model.adapters import adapter_from_dir
    return adapter_from_dir(Path(adapter_dir), "--adapter").base_model if adapter_dir else None


def unavailable_arms(device: torch.device) -> dict[str, str]:
    """Arms whose base cannot load here (bitsandbytes missing or not running on this device), with why."""
    from common.model.load import check_quant
    skipped = {}
    for arm, quant in ARMS.items():
        try:
            check_quant(quant, device)
        except UserError as e:
            skipped[arm] = f"skipped: {e}"
    return skipped


def run_arm(arm: str, args: argparse.Namespace, model_name: str, adapter_dir: str, result: Path) -> dict[str, Any]:
    """One arm in a fresh process; {"error": ...} with the tail of its stderr when it fails."""
    cmd = [sys.executable, __file__, "--worker", arm, "--model", model_name, "--adapter-dir", adapter_dir,
           "--max-new-tokens", str(args.max_new_tokens), "--prompts", str(args.prompts),
           "--batch-size", str(args.batch_size), "--result", str(result)]
    done = subprocess.run(cmd + (["--fp32-decoding"] if args.fp32_decoding else []), capture_output=True, text=True)
    if done.returncode:
        tail = [line for line in done.stderr.splitlines() if line.strip()][-1:] or [f"exit {done.returncode}"]
        print(f"{arm} failed: {tail[0]}", file=sys.stderr)
        return {"error": tail[0][:300]}
    return json.loads(result.read_text())


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of one arm's runs: TTFT and decode over every prompt of every repeat, the rest over repeats."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return {"error": runs[-1]["error"], "runs": runs}
    pooled = lambda key: statistics.median(v for r in good for v in r[key])  # noqa: E731
    median = lambda key: statistics.median(r[key] for r in good)  # noqa: E731
    return {"quant": good[0]["quant"], "dtype": good[0]["dtype"], "ttft_s": round(pooled("ttft_s"), 4),
            "decode_tokens_per_s": round(pooled("decode_tokens_per_s"), 2),
            "batch8_tokens_per_s": round(median("batch8_tokens_per_s"), 2),
            "peak_rss_mib": round(median("peak_rss_mib")), "rss_after_load_mib": round(median("rss_after_load_mib")),
            "load_s": round(median("load_s"), 2), "runs": runs}


def ratios(arms: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each measured arm over the base arm (TTFT and RSS: lower is better; tokens/s: higher is better)."""
    base = arms.get("base", {})
    keys = ("ttft_s", "decode_tokens_per_s", "batch8_tokens_per_s", "peak_rss_mib")
    if "ttft_s" not in base:
        return {}
    return {name: {k: round(arm[k] / base[k], 3) for k in keys} for name, arm in arms.items() if "ttft_s" in arm}


def identical_texts(runs: dict[str, list[dict[str, Any]]]) -> bool | None:
    """Whether merged and unmerged gave the same greedy texts in every repeat; None when either did not run."""
    pairs = [(a["texts"], b["texts"]) for a, b in zip(runs.get("lora-unmerged", []), runs.get("lora-merged", []))
             if "texts" in a and "texts" in b]
    return all(a == b for a, b in pairs) if pairs else None


def measure_all(args: argparse.Namespace, model_name: str, adapter_dir: str, tmp: Path,
                skipped: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """--repeats rounds; each runs every available arm once, the order rotated by one each round."""
    names = [a for a in ARMS if a not in skipped]
    runs: dict[str, list[dict[str, Any]]] = {a: [] for a in names}
    for r in range(args.repeats):
        for arm in names[r % len(names):] + names[:r % len(names)]:
            runs[arm].append(run_arm(arm, args, model_name, adapter_dir, tmp / f"{arm}-{r}.json"))
            last = runs[arm][-1]
            if "error" not in last:
                print(f"round {r + 1} {arm}: TTFT {statistics.median(last['ttft_s']):.3f} s, decode "
                      f"{statistics.median(last['decode_tokens_per_s']):.1f} tok/s, batch "
                      f"{last['batch8_tokens_per_s']:.1f} tok/s, peak RSS {last['peak_rss_mib']} MiB",
                      file=sys.stderr, flush=True)
    return runs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="embedded name, local model directory, or hub id (default: the --adapter's "
                                    "base model, else smollm2-135m)")
    p.add_argument("--adapter", help="a trained adapter directory (adapter_config.json); default: build one")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens every arm decodes per prompt")
    p.add_argument("--prompts", type=int, default=4, help="HumanEval prompts timed one at a time (TTFT, decode)")
    p.add_argument("--batch-size", type=int, default=8, help="rows of the batched-throughput measurement")
    p.add_argument("--repeats", type=int, default=3, help="rounds over the arms, each arm in a fresh process")
    p.add_argument("--fp32-decoding", action="store_true",
                   help="decode the 16-bit arms in fp32 (infer.py's default); off: in the dtype load.py picks")
    p.add_argument("--seed", type=int, default=0, help="seed of the built adapter")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "serve_speed.json"))
    p.add_argument("--worker", choices=tuple(ARMS), help=argparse.SUPPRESS)  # internal: measure one arm
    p.add_argument("--adapter-dir", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.max_new_tokens, args.prompts, args.batch_size, args.repeats) < 1 or args.max_new_tokens < 2:
        p.error("--prompts, --batch-size and --repeats must be >= 1 and --max-new-tokens >= 2 (decode speed is "
                "timed after the first token)")
    return args


def report_of(args: argparse.Namespace, argv: list[str], device: torch.device, dtype: torch.dtype, adapter_note: str,
              skipped: dict[str, str], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The JSON: model, machine, settings, arms (medians and every run, or why not measured), ratios, texts."""
    arms = {a: ({"skipped": skipped[a]} if a in skipped else summarise(runs[a])) for a in ARMS}
    settings = {"adapter": adapter_note, "max_new_tokens": args.max_new_tokens, "prompts": args.prompts,
                "batch_size": args.batch_size, "repeats": args.repeats, "fp32_decoding": args.fp32_decoding,
                "prompt": "HumanEval, instruct protocol (evaluate.py's rendering)", "stops": "none; EOS masked",
                "order": "arms alternate within each repeat, the order rotated by one per repeat",
                "command": shlex.join(["python", "bench/serve_speed.py", *argv])}
    return {"model": args.model, "machine": machine_record(device, dtype), "settings": settings, "arms": arms,
            "ratios": ratios(arms), "identical_texts": identical_texts(runs),
            "identical_texts_dtype": dtype_name(dtype)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        result = measure_arm(args.worker, args.model, args.adapter_dir, args.max_new_tokens, args.prompts,
                             args.batch_size, args.fp32_decoding)
        Path(args.result).write_text(json.dumps(result))
        return
    from common.model.load import compute_dtype
    from common.study.serving import serving_lines

    device = default_device()
    dtype = torch.float32 if args.fp32_decoding else compute_dtype("16bit", device)
    print(machine_line(device, dtype), file=sys.stderr)
    skipped = unavailable_arms(device)
    args.model = args.model or given_adapter_base(args.adapter) or "smollm2-135m"
    with tempfile.TemporaryDirectory(prefix="serve_speed-") as tmp:
        adapter_dir = args.adapter or str(Path(tmp) / "adapter")
        adapter_note = f"--adapter {args.adapter}" if args.adapter else build_adapter(args.model, Path(adapter_dir),
                                                                                   args.seed)
        runs = measure_all(args, args.model, adapter_dir, Path(tmp), skipped)
    report = report_of(args, sys.argv[1:] if argv is None else argv, device, dtype, adapter_note, skipped, runs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join(serving_lines(out)))


if __name__ == "__main__":
    run_cli(main)

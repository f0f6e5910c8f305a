"""Base weight memory of 16bit/8bit/4bit loading against theory, and QLoRA step time, on a ~1B llama.

    python bench/quant_memory.py                          # TinyLlama-1.1B shape, 22 layers (~6-9 min)
    python bench/quant_memory.py --layers 2 --steps 2     # smoke run (~2 min)
    python bench/quant_memory.py --modes 32bit,16bit      # fp32 (the AVX2 machines' path) next to the half dtype
    python bench/quant_memory.py --shape tiny --layers 1 --steps 1 --modes 16bit   # seconds: does it still run

A llama with TinyLlama-1.1B's shape (hidden 2048, intermediate 5632, 32 heads,
4 kv heads, vocab 32000, untied head; --layers of them) is built from its config
with a fixed seed, random weights, and saved once as bf16 safetensors in a temp
dir (deleted at the end). Each mode then runs in a fresh process that loads it
through the project's own `common.model.load.load_model`, so load time and RSS are
that mode's alone. On a CPU without native bf16 (AVX2), "16bit" loads fp32 (and
the 4/8-bit modes keep their unquantized parts in fp32); "32bit" is fp32 on
every machine: the dtype used is reported, and the theory is given for it and
for bf16. It runs on the GPU when there is one (peak figures are then CUDA
max_memory_allocated); the machine (device, CPU kind from the CPU flags) is
printed and stored with the results. `--shape tiny` swaps in a small llama
(hidden 256) so the whole script runs in seconds.

Weight bytes are counted three ways:
  - `get_memory_footprint()`: transformers' sum over parameters and buffers;
    it misses bitsandbytes state held as attributes (int8 row scales, 4-bit absmax);
  - counted: every distinct storage of parameters, buffers, Int8Params.CB/SCB and
    the 4-bit QuantState chain (absmax, code, offset, nested state);
  - theory, per linear layer of n = out x in weights (bitsandbytes 0.50.2):
      fp32/bf16  4n / 2n
      int8       n + 4*out                      (int8 weights + fp32 absmax per row)
      NF4 + double quant, blocks of 64:
                 n/2 + n/64 + 4*ceil(n/64/256)  (packed nibbles, uint8 absmax per block,
                                                 fp32 absmax per 256 absmax blocks)
                 + 4 + 64 + 1024                (fp32 offset, 16-entry NF4 code and
                                                 256-entry dynamic code, per layer)
    Embeddings, norms and lm_head stay unquantized and are counted separately
    ("unquantized MB"); "quant state MB" is what the quantized layers hold besides
    their packed weights (int8 row scales; 4-bit absmax, codes, offset).

Then each process attaches LoRA r16 to q/k/v/o (as train.py does) and times
optimizer steps on one fixed batch of random token ids (the weights are random,
so real text would add nothing but a tokenizer with a matching vocab); the first
--warmup steps are discarded. Headline: median step time and its ratio to the
first mode, and peak RSS while loading and while training (the kernel's peak
count is reset in between; where it cannot be, the training figure includes
loading and the JSON says so). Modes alternate over --repeats rounds. Writes
bench/results/quant_memory.json and prints markdown tables.
"""
import argparse
import gc
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from common.env import current_memory_mb, default_device  # noqa: E402
from common.model.lora import attach_lora, linear_module_names  # noqa: E402
from common.model.load import load_model  # noqa: E402
from common.train.steps import CompletionLoss, autocast  # noqa: E402
from machine import machine_line, machine_record, sync  # noqa: E402

TINYLLAMA_SHAPE = {"hidden_size": 2048, "intermediate_size": 5632, "num_attention_heads": 32,
                   "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 2048,
                   "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
TINY_SHAPE = {**TINYLLAMA_SHAPE, "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 2048}
SHAPES = {"tinyllama": TINYLLAMA_SHAPE, "tiny": TINY_SHAPE}
NF4_BLOCK, NESTED_BLOCK = 64, 256
NF4_LAYER_CONSTANTS = 4 + 16 * 4 + 256 * 4  # offset, NF4 code, dynamic code of the nested quantizer
MB = 2**20


def build_model(path: Path, shape: dict, layers: int, seed: int) -> int:
    """Save a randomly initialised llama of `shape` as bf16 safetensors; returns its parameter count."""
    from transformers import AutoModelForCausalLM, LlamaConfig
    torch.manual_seed(seed)
    config = LlamaConfig(num_hidden_layers=layers, **shape)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def module_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """A module's own parameters and buffers plus the bitsandbytes state kept as plain attributes."""
    found = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    weight = getattr(module, "weight", None)
    found += [getattr(weight, "CB", None), getattr(weight, "SCB", None)]
    state = getattr(module, "state", None)  # Linear8bitLt's matmul state may hold its own CB/SCB
    found += [getattr(state, "CB", None), getattr(state, "SCB", None)]
    quant_state = getattr(weight, "quant_state", None)
    while quant_state is not None:
        found += [quant_state.absmax, quant_state.code, quant_state.offset]
        quant_state = quant_state.state2
    return [t for t in found if isinstance(t, torch.Tensor)]


def counted_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Bytes of distinct storages, split into the LoRA-able linear layers and everything else."""
    linear = set(linear_module_names(model))
    seen: set[int] = set()
    totals = {"linear": 0, "linear_quant_state": 0, "other": 0}
    for name, module in model.named_modules():
        params = {id(t) for t in module.parameters(recurse=False)}
        for t in module_tensors(module):
            storage = t.untyped_storage()
            if storage.data_ptr() in seen:
                continue
            seen.add(storage.data_ptr())
            if name not in linear:
                totals["other"] += storage.nbytes()
            elif id(t) in params:
                totals["linear"] += storage.nbytes()
            else:
                totals["linear_quant_state"] += storage.nbytes()
    return totals


def theoretical_linear_bytes(shapes: list[tuple[int, int]], quant: str, dense_bytes: int) -> int:
    total = 0
    for out_features, in_features in shapes:
        n = out_features * in_features
        if quant == "8bit":
            total += n + 4 * out_features
        elif quant == "4bit":
            blocks = math.ceil(n / NF4_BLOCK)
            total += math.ceil(n / 2) + blocks + 4 * math.ceil(blocks / NESTED_BLOCK) + NF4_LAYER_CONSTANTS
        else:
            total += n * dense_bytes
    return total


def peak_rss_mb(device: torch.device) -> float:
    """Peak resident set size on CPU; on a GPU, CUDA's peak allocated memory, where the weights live."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss(device: torch.device) -> bool:
    """Restart the peak count (CUDA's, or the kernel's peak RSS on Linux >= 4.0), so training's peak is not
    loading's."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def measure_mode(model_dir: str, quant: str, steps: int, warmup: int, seq_len: int, seed: int) -> dict:
    """Runs in a fresh process: load, count weight bytes, then time LoRA training steps."""
    device = default_device()
    started = time.perf_counter()
    model = load_model(model_dir, quant, device)
    load_s = time.perf_counter() - started
    gc.collect()
    rss_after_load = current_memory_mb(device)
    peak_after_load = peak_rss_mb(device)
    dense_dtype = model.get_input_embeddings().weight.dtype
    linear = set(linear_module_names(model))
    shapes = [(m.out_features, m.in_features) for n, m in model.named_modules() if n in linear]
    linear_params = sum(o * i for o, i in shapes)
    other_params = sum(p.numel() for n, p in model.named_parameters() if n.rsplit(".", 1)[0] not in linear)
    counted = counted_bytes(model)
    result = {
        "quant": quant, "dense_dtype": str(dense_dtype).replace("torch.", ""), "load_s": load_s,
        "rss_after_load_mb": rss_after_load, "peak_rss_after_load_mb": peak_after_load,
        "footprint_bytes": model.get_memory_footprint(), "counted_bytes": counted,
        "linear_params": linear_params, "other_params": other_params,
        "theory_linear_bytes": theoretical_linear_bytes(shapes, quant, dense_dtype.itemsize),
        "theory_linear_bytes_bf16": theoretical_linear_bytes(shapes, quant, 2),
    }

    peak_is_training_only = reset_peak_rss(device)
    model = attach_lora(model, 16, None, 0.05, "qkvo")
    model.train()
    loss_fn = CompletionLoss(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, seq_len), generator=generator).to(device)
    batch = {"input_ids": ids, "labels": ids, "position_ids": torch.arange(seq_len, device=device)[None]}
    step_s = []
    for _ in range(warmup + steps):
        sync(device)
        started = time.perf_counter()
        with autocast(device, dense_dtype):
            loss, n_labels = loss_fn(**batch)
            (loss / n_labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        step_s.append(time.perf_counter() - started)
    result.update(step_s=step_s[warmup:], peak_rss_training_mb=peak_rss_mb(device),
                  peak_is_training_only=peak_is_training_only)
    return result


def run_mode(script_args: list[str], result_path: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, *script_args, "--result", str(result_path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(script_args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(result_path.read_text())


def summarise(runs: list[dict], base_step_s: float, base_quant: str) -> tuple[dict, dict]:
    """One memory row and one speed row for a mode from its repeats (medians over repeats)."""
    first = runs[0]
    counted = first["counted_bytes"]
    n_linear, n_other = first["linear_params"], first["other_params"]
    dense = 4 if first["dense_dtype"] == "float32" else 2
    counted_total = sum(counted.values())
    theory_total = first["theory_linear_bytes"] + n_other * dense
    memory = {
        "quant": first["quant"], "dense dtype": first["dense_dtype"],
        "footprint MB": round(first["footprint_bytes"] / MB, 1),
        "counted MB": round(counted_total / MB, 1),
        "theory MB": round(theory_total / MB, 1),
        "theory MB (bf16 dense)": round((first["theory_linear_bytes_bf16"] + n_other * 2) / MB, 1),
        "B/param all": round(counted_total / (n_linear + n_other), 3),
        "B/param linear": round((counted["linear"] + counted["linear_quant_state"]) / n_linear, 4),
        "theory B/param linear": round(first["theory_linear_bytes"] / n_linear, 4),
        "quant state MB": round(counted["linear_quant_state"] / MB, 2),
        "unquantized MB": round(counted["other"] / MB, 1),
        "RSS after load MB": round(statistics.median(r["rss_after_load_mb"] for r in runs)),
        "load s": round(statistics.median(r["load_s"] for r in runs), 1),
    }
    step = statistics.median(s for r in runs for s in r["step_s"])
    speed = {"quant": first["quant"], "compute dtype": first["dense_dtype"], "median step s": round(step, 2),
             f"vs {base_quant}": round(step / base_step_s, 2),
             "steps measured": sum(len(r["step_s"]) for r in runs),
             "peak RSS loading MB": round(statistics.median(r["peak_rss_after_load_mb"] for r in runs)),
             "peak RSS training MB": round(statistics.median(r["peak_rss_training_mb"] for r in runs))}
    return memory, speed


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=22, help="decoder layers (22 = TinyLlama-1.1B; 2 for smoke runs)")
    p.add_argument("--shape", default="tinyllama", choices=tuple(SHAPES),
                   help="tinyllama: TinyLlama-1.1B's layer shape; tiny: hidden 256, for a seconds-long check")
    p.add_argument("--modes", default="16bit,8bit,4bit")
    p.add_argument("--steps", type=int, default=3, help="timed LoRA steps per mode, after the warm-up")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=256, help="tokens in the single-row training batch")
    p.add_argument("--repeats", type=int, default=1, help="rounds over the modes, each mode in a fresh process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "quant_memory.json"))
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: measure one mode of --model-dir
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        result = measure_mode(args.model_dir, args.worker, args.steps, args.warmup, args.seq_len, args.seed)
        Path(args.result).write_text(json.dumps(result))
        return

    modes = args.modes.split(",")
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="quant_memory-") as tmp:
        model_dir = Path(tmp) / "model"
        started = time.perf_counter()
        n_params = build_model(model_dir, SHAPES[args.shape], args.layers, args.seed)
        build_s = time.perf_counter() - started
        gc.collect()
        for r in range(args.repeats):
            for mode in modes:
                worker_args = ["--worker", mode, "--model-dir", str(model_dir), "--steps", str(args.steps),
                               "--warmup", str(args.warmup), "--seq-len", str(args.seq_len), "--seed", str(args.seed)]
                runs[mode].append(run_mode(worker_args, Path(tmp) / f"{mode}-{r}.json"))
                print(f"{mode} round {r + 1}: median step {statistics.median(runs[mode][-1]['step_s']):.2f} s",
                      file=sys.stderr, flush=True)
    base_step = statistics.median(s for r in runs[modes[0]] for s in r["step_s"])
    memory_rows, speed_rows = zip(*(summarise(runs[m], base_step, modes[0]) for m in modes))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": machine_record(default_device()),
        "model": {"shape": SHAPES[args.shape], "layers": args.layers, "params": n_params, "init": "random, seed "
                  f"{args.seed}", "storage": "bf16 safetensors", "build_s": round(build_s, 1)},
        "lora": {"rank": 16, "modules": "qkvo", "batch": f"1 x {args.seq_len} random token ids"},
        "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
        "memory": list(memory_rows), "speed": list(speed_rows), "raw": runs}, indent=2) + "\n")
    from tabulate import tabulate
    print(machine_line(default_device()) + "\n")
    print(f"{n_params / 1e6:.0f}M-parameter llama ({args.layers} layers), base weight memory:\n")
    print(tabulate(memory_rows, headers="keys", tablefmt="github"))
    print(f"\nLoRA r16 qkvo step on 1 x {args.seq_len} tokens:\n")
    print(tabulate(speed_rows, headers="keys", tablefmt="github"))


if __name__ == "__main__":
    main()

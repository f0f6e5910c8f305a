"""Training throughput, peak memory and MFU of train.py against the usual Hugging Face recipes, in one run.

    pip install -r bench/requirements.txt              # trl, needed by the (b) variants only
    python bench/train_compare.py          # SmolLM2-135M, 112 stdlib pairs, 2 rounds: ~25 min on 2 CPU cores
    python bench/train_compare.py --examples 256 --repeats 3     # more data per run (~1 h on 2 CPU cores)
    python bench/train_compare.py --examples 40 --repeats 1 --warmup 1 --variants ours,c-trainer-dynamic  # smoke
    python bench/train_compare.py --dtype fp32     # the AVX2 machines' fp32 path, on any machine

Variants, all on the same model, LoRA (r16, alpha 32, dropout 0.05, q/k/v/o), examples, batch 4, lr 2e-4,
AdamW, seed, compute dtype (--dtype auto: bf16 on a GPU or an AVX512-BF16/AMX CPU, fp32 on an AVX2 CPU;
--dtype fp32: fp32 everywhere), one process, no evaluation, no checkpoints, no dataloader workers. On a CPU the
Trainer variants get `use_cpu=True`, without which transformers refuses bf16 there:

    ours               train.py: length-grouped batches padded to their longest, LM head at labelled positions
    ours-packing       train.py --packing: examples packed into 512-token rows, block-diagonal attention
    ours-budget        train.py --max-tokens --budget: length-grouped batches cut so rows x longest row <= the
                       budget (a step of long examples has fewer rows), which bounds the largest step
    a-trainer-pad512   (a) transformers Trainer + PEFT get_peft_model, every example padded to 512
    b-trl-padding-free (b) TRL SFTTrainer, padding_free=True: each batch flattened into one row
    b-trl-packing-bfd  (b) TRL SFTTrainer, packing=True, packing_strategy="bfd", max_length 512
    c-trainer-dynamic  (c) Trainer, DataCollatorForSeq2Seq (pad to the batch's longest), group_by_length sampling

The examples are built once, exactly as `train.py --limit N` builds them (common.corpus.splits.load_splits +
encode_examples, max length 512), and the baselines get those token ids and labels pre-tokenized (TRL:
input_ids + completion_mask, which its completion_only_loss turns into the same labels). Every baseline batch is
cut back into its sequences and looked up among the examples, and train.py's per-step token counts are checked
against its own batch order, so a variant that trains on other tokens or labels fails loudly; each full-epoch
variant must cover every example exactly once, so all of them see the same real tokens.

Each variant runs in a fresh process (train.py as a subprocess, a baseline as a child of this script), so its
peak RSS (on CUDA also max_memory_allocated) is its own. Variants alternate over --repeats rounds, in a rotated
order, so drift in machine load hits all alike. The first --warmup steps of each run are discarded; throughput is
the real (non-padding) tokens of the remaining steps over their wall time: for the Trainer variants from
on_step_begin of the first measured step to on_step_end of the last (a TrainerCallback), for train.py the sum of
its per-step times (tracker: tokens_seen / tokens_per_s per step; the few ms per step it spends logging to
SQLite are left out). (a) pads every example to 512 and is ~4x slower per example, so it runs only
--padded-steps steps (0: a full epoch); it is compared in tokens/s like the rest.

Hardware efficiency: each round also times large square matmuls in the compute dtype for the machine's
achievable peak GFLOP/s, and MFU = model FLOPs of the measured steps / their time / the median peak of that
dtype (a bf16 run against the bf16 peak, an fp32 run against the fp32 one). Model FLOPs are
defined in bench/flops.py (`training_flops`): the work the model needs for the real tokens, the same for
every variant, so padding and wasted logits do not count.

Prints the machine it ran on (device, CPU kind from the CPU flags, dtype) and a markdown table, and writes
bench/results/train_compare.json: config, machine, versions, per-round figures, medians, ratios ours / each
baseline, and whether issue 16's targets are met (ours >= 5x (a), >= 2x the better (b), >= 1.5x (c), MFU >= 50%,
and peak memory no higher than the lowest baseline's).
"""
import argparse
import importlib.metadata
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from common.train.batching import epoch_batches  # noqa: E402
from common.env import default_device, environment, peak_memory  # noqa: E402
from flops import lora_params, training_flops  # noqa: E402
from machine import (add_dtype_flag, bench_dtype, dtype_name, machine_line, machine_record,  # noqa: E402
                     matmul_gflops, run_train_py, sync, train_quant_flag)
from common.text.prompts import IGNORE_INDEX  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

BATCH, RANK, ALPHA, DROPOUT, LR, MAX_LEN = 4, 16, 32, 0.05, 2e-4, 512
LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
OURS = ("ours", "ours-packing", "ours-budget")
BASELINES = ("a-trainer-pad512", "b-trl-padding-free", "b-trl-packing-bfd", "c-trainer-dynamic")
# The targets: ours / baseline throughput at least this much; (b) is judged on its better setting.
TARGETS = {"a": (("a-trainer-pad512",), 5.0), "b": (("b-trl-padding-free", "b-trl-packing-bfd"), 2.0),
           "c": (("c-trainer-dynamic",), 1.5)}
MFU_TARGET = 0.5
Example = dict[str, Any]


# ---------------------------------------------------------------------------- ours: train.py

def run_ours(model: str, limit: int, examples: list[Example], seed: int, packing: bool, max_tokens: int | None,
             warmup: int, quant: str, workdir: Path) -> dict:
    """train.py for one epoch over the examples; which examples each step trained on, and the measured seconds."""
    args = ["--model", model, "--dataset", "stdlib", "--train-limit", str(limit), "--epochs", "1", "--quant", quant,
            "--rank", str(RANK), "--alpha", str(ALPHA), "--dropout", str(DROPOUT), "--modules", "qkvo",
            "--batch-size", str(BATCH), "--lr", str(LR), "--seed", str(seed), "--max-seq-len", str(MAX_LEN),
            "--eval-every", "0", "--eval-gen", "0", "--val-limit", "0", "--save-every", "0", "--quiet",
            "--output-dir", str(workdir / "run")] + (["--packing"] if packing else []) + \
        (["--max-tokens", str(max_tokens)] if max_tokens else [])
    run, scores, metric = run_train_py(args, workdir / "ours.db", "ours")
    seen, rates = metric("tokens_seen"), metric("tokens_per_s")
    # train.py's batch order is a pure function of (seed, epoch, layout): recompute it to know each step's examples.
    batches = epoch_batches(examples, BATCH, seed, 0, packing, MAX_LEN, max_tokens)
    steps = [[i for row in batch for i in row] for batch in batches]
    # collate pads every row of a batch to its longest row
    positions = [len(batch) * max(sum(len(examples[i]["input_ids"]) for i in row) for row in batch)
                 for batch in batches]
    tokens = [b - a for a, b in zip([0] + seen[:-1], seen)]
    expected = [sum(len(examples[i]["input_ids"]) for i in step) for step in steps]
    if run["config"]["train_examples"] != len(examples) or tokens != expected:
        raise RuntimeError(f"train.py trained on other data than the bench built: {run['config']['train_examples']} "
                           f"examples, step tokens {tokens[:5]}... vs expected {expected[:5]}...")
    seconds = sum(t / r for t, r in zip(tokens[warmup:], rates[warmup:]))
    return {"steps": steps, "positions": positions, "seconds": seconds, "dtype": run["config"]["dtype"],
            "trainable_params": int(scores["trainable_params"]),
            **{k: v for k, v in scores.items() if k.startswith("peak_")}}


# ---------------------------------------------------------------------------- baselines: child processes

def run_baseline(variant: str, model: str, examples: list[Example], seed: int, warmup: int, max_steps: int,
                 quant: str, workdir: Path) -> dict:
    spec = workdir / "spec.json"
    result = workdir / "result.json"
    spec.write_text(json.dumps({"variant": variant, "model": model, "examples": examples, "seed": seed,
                                "warmup": warmup, "max_steps": max_steps, "quant": quant, "result": str(result),
                                "output_dir": str(workdir / "trainer")}))
    run_quietly([sys.executable, __file__, "--child", str(spec)])
    return json.loads(result.read_text())


def child_main(spec_path: str) -> None:
    """Train one baseline variant in this fresh process and write what it trained on, its timing and its peak memory."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    from common.model.load import compute_dtype, load_model, load_tokenizer

    spec = json.loads(Path(spec_path).read_text())
    variant, examples = spec["variant"], spec["examples"]
    device = default_device()
    dtype = compute_dtype(spec["quant"], device)
    set_seed(spec["seed"])
    tokenizer = load_tokenizer(spec["model"])
    tokenizer.padding_side = "right"
    lm = get_peft_model(load_model(spec["model"], spec["quant"], device),
                        LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=DROPOUT, target_modules=LORA_MODULES,
                                   bias="none", task_type="CAUSAL_LM"))
    recorder = StepRecorder(examples, device)
    # TRL turns activation checkpointing on by default; train.py runs without it, so every variant does.
    common = dict(output_dir=spec["output_dir"], per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
                  learning_rate=LR, optim="adamw_torch", weight_decay=0.0, max_grad_norm=1.0,
                  lr_scheduler_type="cosine", warmup_steps=0.05, num_train_epochs=1,
                  max_steps=spec["max_steps"] or -1, seed=spec["seed"], use_cpu=device.type == "cpu",
                  bf16=dtype == torch.bfloat16,
                  fp16=dtype == torch.float16, activation_checkpointing=False, eval_strategy="no", save_strategy="no",
                  logging_strategy="no", report_to="none", dataloader_num_workers=0, disable_tqdm=True)
    ids = [e["input_ids"] for e in examples]
    if variant.startswith("b-"):
        from trl import SFTConfig, SFTTrainer
        packing = variant == "b-trl-packing-bfd"
        # Without packing, padding-free refuses a max_length (it cannot enforce one); every example already fits 512.
        config = SFTConfig(**common, packing=packing, packing_strategy="bfd", padding_free=not packing,
                           max_length=MAX_LEN if packing else None, completion_only_loss=True)
        data = Dataset.from_dict({"input_ids": ids, "completion_mask": [
            [int(label != IGNORE_INDEX) for label in e["labels"]] for e in examples]})
        trainer = recording(SFTTrainer, recorder)(model=lm, args=config, train_dataset=data,
                                                  processing_class=tokenizer, callbacks=[recorder])
    else:
        from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments
        padded = variant == "a-trainer-pad512"
        config = TrainingArguments(**common, train_sampling_strategy="random" if padded else "group_by_length")
        data = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids],
                                  "labels": [e["labels"] for e in examples]})
        collator = DataCollatorForSeq2Seq(tokenizer, padding="max_length" if padded else "longest",
                                          max_length=MAX_LEN if padded else None, label_pad_token_id=IGNORE_INDEX)
        trainer = recording(Trainer, recorder)(model=lm, args=config, train_dataset=data, data_collator=collator,
                                               callbacks=[recorder])
    trainer.train()
    if len(recorder.ends) <= spec["warmup"]:
        sys.exit(f"{variant} ran {len(recorder.ends)} steps, not more than --warmup {spec['warmup']}: "
                 "use more --examples")
    Path(spec["result"]).write_text(json.dumps({
        "steps": recorder.steps[:len(recorder.ends)], "positions": recorder.positions[:len(recorder.ends)],
        "seconds": recorder.measured_seconds(spec["warmup"]),
        "dtype": dtype_name(dtype),
        "trainable_params": sum(p.numel() for p in lm.parameters() if p.requires_grad), **peak_memory(device)}))


def recording(trainer_class: type, recorder: "StepRecorder") -> type:
    """`trainer_class` that shows every batch it fetched to the recorder."""
    class Recording(trainer_class):
        def get_batch_samples(self, epoch_iterator, num_batches, device):
            batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
            recorder.record(batches)
            return batches, num_items
    return Recording


class StepRecorder(TrainerCallback):
    """Per optimizer step: the examples trained on (looked up by exact token ids and labels), the positions
    computed (padding included) and when it began and ended."""

    def __init__(self, examples: list[Example], device: torch.device):
        self.examples = examples
        self.index = {tuple(e["input_ids"]): i for i, e in enumerate(examples)}
        self.device = device
        self.steps: list[list[int]] = []
        self.positions: list[int] = []
        self.lookup_seconds: list[float] = []
        self.begins: list[float] = []
        self.ends: list[float] = []

    def record(self, batches: list[dict[str, torch.Tensor]]) -> None:
        start = time.perf_counter()
        step = []
        for batch in batches:
            for ids, labels in batch_sequences(batch):
                i = self.index.get(tuple(ids))
                if i is None or labels != self.examples[i]["labels"]:
                    raise RuntimeError(f"a batch holds a sequence of {len(ids)} tokens that is not one of the bench's "
                                       "examples with its labels: the variants would not train on identical data")
                step.append(i)
        self.steps.append(step)
        self.positions.append(sum(batch["input_ids"].numel() for batch in batches))
        self.lookup_seconds.append(time.perf_counter() - start)

    def on_step_begin(self, args, state, control, **kwargs):
        sync(self.device)
        self.begins.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        sync(self.device)
        self.ends.append(time.perf_counter())

    def measured_seconds(self, warmup: int) -> float:
        """Wall time of the steps after warm-up, less the bench's own lookups that fell inside it."""
        return self.ends[-1] - self.begins[warmup] - sum(self.lookup_seconds[warmup + 1:len(self.ends)])


def batch_sequences(batch: dict[str, torch.Tensor]) -> Iterator[tuple[list[int], list[int]]]:
    """(input_ids, labels) of each sequence in a collated batch: padding cut off, rows cut where positions restart."""
    ids, labels = batch["input_ids"].tolist(), batch["labels"].tolist()
    if "attention_mask" in batch:
        for row_ids, row_labels, mask in zip(ids, labels, batch["attention_mask"].tolist()):
            yield row_ids[:sum(mask)], row_labels[:sum(mask)]
        return
    for row_ids, row_labels, positions in zip(ids, labels, batch["position_ids"].tolist()):
        starts = [t for t, p in enumerate(positions) if p == 0] + [len(positions)]
        for a, b in zip(starts, starts[1:]):
            yield row_ids[a:b], row_labels[a:b]


def run_quietly(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-4000:]}")


# ---------------------------------------------------------------------------- orchestration

def build_examples(model: str, limit: int, seed: int) -> tuple[list[Example], str]:
    """The training examples of `train.py --limit <limit>`, encoded exactly as train.py encodes them."""
    from common.corpus.splits import load_splits
    from common.text.prompts import choose_template, encode_examples
    from common.model.load import load_tokenizer

    tokenizer = load_tokenizer(model)
    splits = load_splits("stdlib", split_seed=seed, limit=limit)
    template = choose_template(tokenizer, splits.train[0].style)
    examples, _ = encode_examples(tokenizer, splits.train, template, MAX_LEN)
    return [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples], template


def summarize(result: dict, examples: list[Example], config, warmup: int, peak_gflops: float) -> dict:
    """One round of one variant: real tokens/s, padding, model FLOP/s and MFU against the matmul peak of the
    dtype the run computed in, peak memory."""
    measured = [examples[i] for step in result["steps"][warmup:] for i in step]
    tokens = sum(len(e["input_ids"]) for e in measured)
    flops_per_s = training_flops(config, measured) / result["seconds"]
    # The largest step (positions, padding included) sets the activation memory; length grouping and packing
    # put the longest examples together.
    row = {"tokens_per_s": tokens / result["seconds"], "measured_steps": len(result["steps"]) - warmup,
           "measured_tokens": tokens, "padding_fraction": 1 - tokens / sum(result["positions"][warmup:]),
           "max_step_positions": max(result["positions"]), "seconds": result["seconds"],
           "model_tflops_per_s": flops_per_s / 1e12, "mfu": flops_per_s / (peak_gflops * 1e9),
           "dtype": result["dtype"], "peak_rss_mb": result["peak_rss_mb"]}
    if "peak_gpu_allocated_mb" in result:
        row["peak_gpu_allocated_mb"] = result["peak_gpu_allocated_mb"]
    return row


def check_same_work(variant: str, result: dict, examples: list[Example], config, dtype: str, full_epoch: bool) -> None:
    """Fail loudly unless the variant trained the same LoRA weights in the same dtype on the bench's examples,
    each once (all of them for a full epoch)."""
    seen = sorted(i for step in result["steps"] for i in step)
    if full_epoch and seen != list(range(len(examples))):
        raise RuntimeError(f"{variant} did not train on each of the {len(examples)} examples exactly once "
                           f"({len(seen)} sequences, {len(set(seen))} distinct): real tokens would differ")
    if len(seen) != len(set(seen)):
        raise RuntimeError(f"{variant} trained on an example twice within one epoch")
    if result["trainable_params"] != lora_params(config):
        raise RuntimeError(f"{variant} trains {result['trainable_params']} parameters, not the "
                           f"{lora_params(config)} of LoRA r{RANK} on q/k/v/o")
    if result["dtype"] != dtype:
        raise RuntimeError(f"{variant} computed in {result['dtype']}, not {dtype}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--examples", type=int, default=112, help="train.py --limit: stdlib training pairs, one epoch")
    p.add_argument("--warmup", type=int, default=2, help="steps discarded at the start of every run")
    p.add_argument("--padded-steps", type=int, default=6,
                   help="steps (a) runs, warm-up included (0: a full epoch like the others)")
    p.add_argument("--repeats", type=int, default=2, help="rounds over all variants")
    p.add_argument("--variants", default=",".join(OURS + BASELINES))
    add_dtype_flag(p)
    p.add_argument("--peak-seconds", type=float, default=10.0, help="time budget per round for the matmul peak")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", type=int, default=1024, help="ours-budget: train.py --max-tokens (positions per step)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_compare.json"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.variants = args.variants.split(",")
    unknown = set(args.variants) - set(OURS + BASELINES)
    if unknown:
        sys.exit(f"unknown variants {', '.join(sorted(unknown))}; choose from {', '.join(OURS + BASELINES)}")
    if not args.child and any(v.startswith("b-") for v in args.variants) and importlib.util.find_spec("trl") is None:
        sys.exit("the b-trl-* variants need trl: pip install -r bench/requirements.txt, or leave them out of "
                 "--variants")
    return args


def run_rounds(args: argparse.Namespace, examples: list[Example], config, device: torch.device,
               dtype: torch.dtype) -> tuple[dict[str, list[dict]], list[dict]]:
    """Every variant once per round in a rotated order, each checked to have done the same work; and the
    matmul peak of `dtype` measured once per round."""
    variants, quant = args.variants, train_quant_flag(dtype)
    rounds: dict[str, list[dict]] = {v: [] for v in variants}
    peaks = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            peaks.append(matmul_gflops(dtype, device, args.peak_seconds))
            for variant in variants[r % len(variants):] + variants[:r % len(variants)]:
                workdir = Path(tmp) / f"{variant}-{r}"
                workdir.mkdir()
                t0 = time.perf_counter()
                if variant in OURS:
                    result = run_ours(args.model, args.examples, examples, args.seed, variant == "ours-packing",
                                      args.budget if variant == "ours-budget" else None, args.warmup, quant,
                                      workdir)
                else:
                    steps = args.padded_steps if variant == "a-trainer-pad512" else 0
                    result = run_baseline(variant, args.model, examples, args.seed, args.warmup, steps, quant,
                                          workdir)
                check_same_work(variant, result, examples, config, dtype_name(dtype),
                                full_epoch=variant != "a-trainer-pad512" or not args.padded_steps)
                if len(result["steps"]) <= args.warmup:
                    sys.exit(f"{variant} ran {len(result['steps'])} steps, not more than --warmup {args.warmup}; "
                             "use more --examples")
                rounds[variant].append(result)
                print(f"round {r + 1}/{args.repeats} {variant}: {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return rounds, peaks


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)
    from transformers import AutoConfig

    from common.model.resolve import resolve_model

    device = default_device()
    dtype = bench_dtype(args.dtype, device)
    print(machine_line(device, dtype), file=sys.stderr)
    config = AutoConfig.from_pretrained(resolve_model(args.model))
    examples, template = build_examples(args.model, args.examples, args.seed)
    lengths = [len(e["input_ids"]) for e in examples]
    print(f"{len(examples)} examples ({args.examples - len(examples)} over {MAX_LEN} tokens dropped), mean "
          f"{statistics.mean(lengths):.1f} tokens, {sum(lengths)} real tokens per epoch", file=sys.stderr)
    started = time.perf_counter()
    rounds, peaks = run_rounds(args, examples, config, device, dtype)
    peak = statistics.median(m["gflops"] for m in peaks)
    per_round = {v: [summarize(res, examples, config, args.warmup, peak) for res in rounds[v]]
                 for v in args.variants}
    rows = [{"variant": v, **{k: statistics.median(x[k] for x in per_round[v]) for k in per_round[v][0]
                              if k != "dtype"}, "dtype": per_round[v][0]["dtype"]} for v in args.variants]
    memory_key = "peak_gpu_allocated_mb" if device.type == "cuda" else "peak_rss_mb"
    ratios, targets = compare({row["variant"]: row for row in rows}, memory_key)
    report = {"config": {"model": args.model, "dataset": "stdlib", "examples_limit": args.examples,
                         "examples": len(examples), "template": template,
                         "mean_tokens": statistics.mean(lengths), "real_tokens_per_epoch": sum(lengths),
                         "lora": {"rank": RANK, "alpha": ALPHA, "dropout": DROPOUT, "modules": LORA_MODULES},
                         "batch_size": BATCH, "lr": LR, "max_seq_len": MAX_LEN, "seed": args.seed,
                         "warmup_steps": args.warmup, "padded_steps": args.padded_steps, "repeats": args.repeats,
                         "device": device.type, "compute_dtype": dtype_name(dtype),
                         "model_flops_per_real_token": training_flops(config, examples) / sum(lengths),
                         "wall_seconds": time.perf_counter() - started},
              "machine": machine_record(device, dtype),
              "environment": {**environment(), "trl": _version("trl")},
              "matmul_peak_gflops": {"dtype": dtype_name(dtype), "median": peak, "per_round": peaks},
              "per_round": per_round, "medians": rows, "ratios": ratios, "targets": targets}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(machine_line(device, dtype))
    print_table(rows, ratios, targets, dtype_name(dtype), peak, memory_key)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def compare(by_name: dict[str, dict], memory_key: str) -> tuple[dict, dict]:
    """Ratios of each of our layouts to each baseline, and issue 16's targets per layout."""
    ratios, targets = {}, {}
    baselines = [b for b in BASELINES if b in by_name]
    for ours in (o for o in OURS if o in by_name):
        speed = by_name[ours]["tokens_per_s"]
        ratios[ours] = {b: speed / by_name[b]["tokens_per_s"] for b in baselines}
        met = {}
        for group, (names, target) in TARGETS.items():
            present = [n for n in names if n in by_name]
            if present:
                ratio = speed / max(by_name[n]["tokens_per_s"] for n in present)
                met[group] = {"ratio": ratio, "target": target, "met": ratio >= target}
        met["mfu"] = {"mfu": by_name[ours]["mfu"], "target": MFU_TARGET, "met": by_name[ours]["mfu"] >= MFU_TARGET}
        if baselines:
            lowest = min(by_name[b][memory_key] for b in baselines)
            met["memory"] = {"peak_mb": by_name[ours][memory_key], "lowest_baseline_mb": lowest,
                             "met": by_name[ours][memory_key] <= lowest}
        targets[ours] = met
    return ratios, targets


def print_table(rows: list[dict], ratios: dict, targets: dict, dtype: str, peak: float, memory_key: str) -> None:
    from tabulate import tabulate
    table = []
    for row in rows:
        line = {"variant": row["variant"], "dtype": row["dtype"], "real tokens/s": round(row["tokens_per_s"], 1)}
        line.update({f"{o} / this": round(r[row["variant"]], 2) if row["variant"] in r else ""
                     for o, r in ratios.items()})
        line.update({"model TFLOP/s": round(row["model_tflops_per_s"], 4), f"MFU ({dtype} peak)": f"{row['mfu']:.1%}",
                     "steps": row["measured_steps"], "padding": f"{row['padding_fraction']:.0%}",
                     "largest step (positions)": row["max_step_positions"], "peak MB": round(row[memory_key])})
        table.append(line)
    print(tabulate(table, headers="keys", tablefmt="github"))
    print(f"matmul peak GFLOP/s ({dtype}, the dtype in use): {peak:.1f}")
    for ours, met in targets.items():
        print(f"{ours}: " + "; ".join(_target_text(group, m) for group, m in met.items()))


def _target_text(group: str, m: dict) -> str:
    verdict = "met" if m["met"] else "NOT met"
    if group == "memory":
        return f"memory {m['peak_mb']:.0f} vs {m['lowest_baseline_mb']:.0f} MB {verdict}"
    if group == "mfu":
        return f"MFU {m['mfu']:.1%} (target {m['target']:.0%}) {verdict}"
    return f"{group} {m['ratio']:.2f}x (target {m['target']}x) {verdict}"


if __name__ == "__main__":
    main()

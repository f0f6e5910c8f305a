"""One evaluation run: load the model (with its adapter), generate per benchmark, judge the programs in the
sandbox, score the held-out references' NLL, record everything in the tracker and samples.json, and print it.

Generated code never runs in this process: programs go through common/sandbox/execute.py.
"""
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from common.config import EvalConfig
from common.errors import UserError
from common.judge.benchmarks import Benchmark
from common.judge.samples import samples_for_json, write_samples_json
from common.judge.scoring import delta_aggregates, paired_deltas, score_records
from common.judge.verdicts import Sample, judge_samples
from common.model.adapters import Adapter

ENDINGS = ("eos", "stop", "length")


SUMMARY_METRICS = ("test_case_avg", "syntax_ok", "bleu", "chrf", "perplexity", "nll", "tokens_per_s",
                   "seconds_per_problem")


def generate_samples(model, tokenizer, bench: Benchmark, cfg: EvalConfig, dtype, gguf: Path | None = None
                     ) -> list[Sample]:
    """n_samples generations per problem, one generate() call per (template, stops) group of prompts; by
    llama.cpp from `gguf` when given (--engine llama.cpp), else by the HF model."""
    import torch

    from common.text.generation import decoding_precision, generate
    from common.text.llamacpp import generate_llamacpp

    samples = [Sample(p, j, bench.prompts[p.id].text, "") for p in bench.problems for j in range(cfg.n_samples)]
    torch.manual_seed(cfg.seed)
    for template, stops in sorted({(q.template, q.stops) for q in bench.prompts.values()}):
        group = [s for s in samples if (bench.prompts[s.problem.id].template, bench.prompts[s.problem.id].stops)
                 == (template, stops)]
        if gguf is not None:
            outputs = generate_llamacpp(gguf, tokenizer, [s.prompt for s in group], template,
                                        max_new_tokens=cfg.max_new_tokens, stop=stops,
                                        batch_size=cfg.eval_batch_size, progress=not cfg.quiet)
        else:
            with decoding_precision(model, dtype, fp32=bench.key["decode"] == "float32"):
                outputs = generate(model, tokenizer, [s.prompt for s in group], template,
                                   max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                   batch_size=cfg.eval_batch_size, stop=stops, progress=not cfg.quiet)
        for s, out in zip(group, outputs):
            s.generation, s.new_tokens, s.seconds, s.ended = out.text, out.new_tokens, out.seconds, out.ended
    return samples


def heldout_perplexity(model, tokenizer, bench: Benchmark, records: list[dict], device, dtype) -> dict[str, tuple]:
    """Held-out NLL and perplexity with intervals; each record gets its reference's nll_sum, tokens and split group."""
    from common.corpus.splits import group_of
    from common.train.example_nll import example_nlls
    from common.judge.scoring import heldout_nll
    from common.train.steps import CompletionLoss

    scores = {"nll_dropped_too_long": (bench.too_long, len(bench.problems), None, None)}
    if bench.encoded:
        per_example = example_nlls(CompletionLoss(model), bench.encoded, tokenizer.pad_token_id, device, dtype)
        by_id = {ex["id"]: pair for ex, pair in zip(bench.encoded, per_example)}
        groups = {p.id: group_of(p) for p in bench.problems}   # the unit the split drew: the report resamples it
        for r in records:
            if r["task_id"] in by_id:
                r["details"]["nll_sum"], r["details"]["tokens"] = by_id[r["task_id"]]
                r["details"]["group"] = groups[r["task_id"]]
        scores.update(heldout_nll(per_example))
    return scores


def nll_only_records(bench: Benchmark, problems: list) -> list[dict]:
    """Records of heldout examples scored by NLL alone (--heldout-gen): no generation, so no code scores."""
    from common.text.protocols import reference_code

    return [{"task_id": p.id, "sample_index": 0, "prompt": bench.prompts[p.id].text, "generation": None,
             "reference": (reference_code(p, bench.key["protocol"]) if p.completion else None) or None,
             "result": None,
             "details": {"nll_only": True}} for p in problems]


@dataclass
class RunResult:
    run_id: int
    scores: dict[str, dict[str, tuple]]      # benchmark -> name -> (value, n, low, high)
    samples_path: Path | None = None


def run_evaluation(tracker, cfg: EvalConfig, ks, *, name: str, config: dict, parent_id: int | None, output_dir: Path,
                   benchmarks: list[Benchmark], produce: Callable[[Benchmark], tuple[list[dict], dict]],
                   base_runs: dict[str, int] | None = None, device=None) -> RunResult:
    """One eval run in the tracker: produce each benchmark's samples, score, compare, record, write samples.json."""
    from common.env import LOAD_BENCHMARK, cpu_contention, cpu_snapshot, environment, peak_memory

    run_id = tracker.start_run(name, "eval", config, suite=cfg.suite, parent_id=parent_id,
                               output_dir=str(output_dir), environment=environment())
    all_scores: dict[str, dict[str, tuple]] = {}
    dump: dict[str, list] = {}
    cpu_start = cpu_snapshot()
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
        load = cpu_contention(cpu_start)
        tracker.log_scores(run_id, LOAD_BENCHMARK, {k: (v, None, None, None) for k, v in load.items()})
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


def load_eval_model(model_name: str, quant: str, adapter: Adapter | None, device, dtype: str = "auto"):
    from peft import PeftModel

    from common.errors import first_line
    from common.model.load import load_model

    model = load_model(model_name, quant, device, dtype)
    if adapter:
        try:
            model = PeftModel.from_pretrained(model, str(adapter.path), is_trainable=False)
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"cannot load adapter {adapter.label} onto {model_name} ({first_line(e)})") from e
    model.eval()
    return model


def engine_gguf(cfg: EvalConfig, model_name: str, adapter: Adapter | None, tokenizer, folder: Path,
                device) -> Path | None:
    """--engine llama.cpp: the GGUF it generates from (the merged adapter, or the base alone), exported into
    `folder` once and reused after; None for --engine hf."""
    if cfg.engine != "llama.cpp":
        return None
    from common.model.export import cached_gguf

    gguf = cached_gguf(model_name, adapter, tokenizer, folder, cfg.gguf_type, device)
    if not cfg.quiet:
        print(f"llama.cpp generates from {gguf} ({cfg.gguf_type})", flush=True)
    return gguf


def producer(model, tokenizer, cfg: EvalConfig, device, dtype, gguf: Path | None = None
             ) -> Callable[[Benchmark], tuple[list[dict], dict]]:
    """bench -> (sample records, timing and perplexity scores): generate (by llama.cpp from `gguf` when given), then
    judge in the sandbox. The held-out NLL is always the HF model's: it scores references, it generates nothing."""
    def produce(bench: Benchmark) -> tuple[list[dict], dict]:
        generated = bench.problems[:bench.key.get("generated", len(bench.problems))]
        samples = generate_samples(model, tokenizer, replace(bench, problems=generated), cfg, dtype, gguf) \
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

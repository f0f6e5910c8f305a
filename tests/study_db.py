"""A study database written by hand with the Tracker, for the report and study-model tests.

Each eval run records per-problem samples (pass/fail, compile, sentence chrF, held-out NLL) and the
scores evaluate.py would store beside them, so every expected number is known from the pass sets below.

Suite `rank` (20 HumanEval problems, 10 held-out examples): base passes nothing; r4 passes {0, 1};
r8 passes 0-7; r16 (the reference) passes 0-5 with seed 0 and 0-6 with seed 1; a failed r32 train run
and an interrupted eval. Suite `quant`: a 4-bit r16 passing 0-2, and the rank suite's r16 runs and base
recorded as members.
"""
from pathlib import Path

from common.tracker import Tracker

PROBLEMS = 20
HELDOUT = 10
ENV = {"git_commit": "abc123", "versions": {"torch": "2.13.0", "peft": "0.21.2"},
       "hardware": {"cpu": "Test CPU", "cpu_count": 2, "memory_gb": 24.0}}


def train_run(db: Tracker, suite: str, rank: int, quant: str, seed: int, *, peak: float, seconds: float,
              status: str = "completed", error: str | None = None, model: str = "tiny", load: float | None = None,
              params: int = 1_000_000) -> int:
    """A train run; `load`: the cpu_foreign_share it records (None: an older run, none recorded)."""
    name = f"r{rank}-qkvo-{quant}-s{seed}"
    config = {"model": model, "rank": rank, "modules": "qkvo", "quant": quant, "seed": seed, "alpha": 2 * rank,
              "max_steps": 4, "name": name, "output_dir": f"runs/{name}", "suite": suite,
              "train_examples": 100 - seed, "val_examples": 10 + seed}  # train.py records the split's sizes
    run = db.start_run(name, "train", config, suite=suite, output_dir=f"runs/{name}", environment=ENV)
    for step in range(1, 5):
        db.log_metrics(run, step, {"loss": 2.0 - 0.1 * step - 0.01 * rank, "lr": 1e-4})
    db.log_metrics(run, 4, {"val_loss": 1.7 - 0.01 * rank})
    if status == "completed":
        db.log_scores(run, "train", {"trainable_params": 1000 * rank, "trainable_pct": 0.01 * rank,
                                     "total_params": params, "adapter_mb": 0.1 * rank, "peak_rss_mb": peak,
                                     "wall_seconds": seconds, "train_tokens_per_s": 5000 / seconds,
                                     "final_val_loss": 1.7 - 0.01 * rank, "best_val_loss": 1.7 - 0.01 * rank})
    if load is not None:
        db.log_scores(run, "train", {"cpu_foreign_share": load, "cpu_own_share": 0.9})
    db.finish_run(run, status, error=error)
    return run


def humaneval_sample(i: int, passed: bool, output: str | None = None, chrf: float = 30.0) -> dict:
    generation = output or ("    return x + 1\n" if passed else "    return x\n")
    return {"task_id": f"HumanEval/{i}", "prompt": f"def f{i}(x):\n    \"\"\"Doc {i}.\"\"\"\n",
            "generation": generation, "reference": "    return x + 1\n", "result": "passed" if passed else "failed",
            "details": {"syntax": None, "chrf": chrf + (10.0 if passed else 0.0), "code": generation,
                        "tests_passed": 2 if passed else i % 2, "tests_total": 2}}


def eval_run(db: Tracker, suite: str, parent: int | None, name: str, passes: set[int], *, nll_per_token: float,
             quant: str = "16bit", outputs: dict[int, str] | None = None, status: str = "completed",
             chrf: float = 30.0, protocol: str | None = None, too_long: int | None = None,
             split_seed: int = 0, model: str = "tiny", load: float | None = None) -> int:
    config = {"model": model, "adapter": None if parent is None else f"runs/{name}", "quant": quant,
              "benchmarks": ["humaneval", "heldout"], "limit": PROBLEMS, "n_samples": 1, "temperature": 0.0,
              "max_new_tokens": 8, "benchmark_keys": {"humaneval": {"sha": "he-1", "templates": ["completion"]},
                                                       "heldout": {"split_seed": split_seed, "max_seq_len": 512}}}
    if protocol:
        config["protocol"] = protocol
    run = db.start_run(name, "eval", config, suite=suite, parent_id=parent, environment=ENV)
    outputs = outputs or {}
    samples = [humaneval_sample(i, i in passes, outputs.get(i), chrf) for i in range(PROBLEMS)]
    k = len(passes)
    graded = sum(1.0 if i in passes else (i % 2) / 2 for i in range(PROBLEMS)) / PROBLEMS
    db.log_scores(run, "humaneval", {"pass@1": (k / PROBLEMS, PROBLEMS, None, None),
                                     "chrf": (chrf, PROBLEMS, chrf - 5, chrf + 5),
                                     "bleu": (chrf / 2, PROBLEMS, chrf / 2 - 3, chrf / 2 + 3),
                                     "syntax_ok": (1.0, PROBLEMS, 1.0, 1.0), "seconds_per_problem": 1.5,
                                     "test_case_avg": (graded, PROBLEMS, graded - 0.05, graded + 0.05),
                                     "tokens_per_s": 20.0})
    heldout = [{"task_id": f"stdlib/mod{j}.fn", "prompt": f"def fn{j}(text):\n",
                "generation": "" if parent is None else "    return '  ' + text\n",
                "reference": "    return ''.join('  ' + line for line in text)\n",
                "details": {"syntax": None, "chrf": chrf + j, "code": "    return '  ' + text\n",
                            "nll_sum": nll_per_token * (10 + j) * (1 + 0.05 * (j % 3)), "tokens": 10 + j}}
               for j in range(HELDOUT)]
    if too_long is not None:   # dropped for --max-seq-len: evaluate.py records no NLL for it
        del heldout[too_long]["details"]["nll_sum"], heldout[too_long]["details"]["tokens"]
    tokens = sum(h["details"].get("tokens", 0) for h in heldout)
    nll = sum(h["details"].get("nll_sum", 0) for h in heldout) / tokens
    db.log_scores(run, "heldout", {"nll": (nll, tokens, None, None), "chrf": chrf + 1})
    db.log_samples(run, "humaneval", samples)
    db.log_samples(run, "heldout", heldout)
    if load is not None:   # recorded once per run, beside the benchmarks' scores
        db.log_scores(run, "load", {"cpu_foreign_share": load, "cpu_own_share": 0.9})
    db.finish_run(run, status)
    return run


def build_study(path: Path) -> dict:
    db = Tracker(path)
    ids = {"base": eval_run(db, "rank", None, "base-16bit-eval", set(), nll_per_token=2.0, chrf=20.0)}
    ids["r4"] = train_run(db, "rank", 4, "16bit", 0, peak=1000, seconds=100)
    ids["r4_eval"] = eval_run(db, "rank", ids["r4"], "r4-eval", {0, 1}, nll_per_token=1.9)
    ids["r8"] = train_run(db, "rank", 8, "16bit", 0, peak=1100, seconds=110)
    ids["r8_eval"] = eval_run(db, "rank", ids["r8"], "r8-eval", set(range(8)), nll_per_token=1.5, chrf=35.0,
                              outputs={10: "    return x - 1\n"})
    ids["r16"] = [train_run(db, "rank", 16, "16bit", s, peak=1500 + 20 * s, seconds=150 + 10 * s) for s in (0, 1)]
    ids["r16_evals"] = [eval_run(db, "rank", r, f"r16-s{s}-eval", set(range(6 + s)), nll_per_token=1.6)
                        for s, r in enumerate(ids["r16"])]
    ids["failed"] = train_run(db, "rank", 32, "16bit", 0, peak=0, seconds=0, status="failed",
                              error="RuntimeError: CUDA out of memory")
    ids["interrupted"] = eval_run(db, "rank", ids["r4"], "r4-eval", set(), nll_per_token=1.9, status="interrupted")
    ids["q4"] = train_run(db, "quant", 16, "4bit", 0, peak=700, seconds=200)
    eval_run(db, "quant", ids["q4"], "q4-eval", {0, 1, 2}, nll_per_token=1.7, quant="4bit")
    for run_id in ids["r16"] + ids["r16_evals"] + [ids["base"]]:
        db.log_membership(run_id, ["quant", "rank"])
    db.close()
    return ids

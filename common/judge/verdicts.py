"""Judge generated samples: run them in the sandbox, check their syntax, score them against references.

Generated code never runs in the process that holds the model or the database: every program
goes to common.sandbox.execute (a separate server process under the chosen isolation, with time,
memory and process limits).
"""
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from common.config import EvalConfig


@dataclass
class Sample:
    problem: Any           # common.corpus.splits.Example
    index: int             # sample index within its problem
    prompt: str            # the text the model saw
    generation: str        # the model's output, cut at the stop sequences
    new_tokens: int = 0
    seconds: float = 0.0
    ended: str | None = None   # common.text.generation.Generation.ended


def execute(samples: list[Sample], programs: list[str], cfg: EvalConfig) -> list:
    """Run every sample whose problem has tests in the sandbox; None for the others."""
    from tqdm import tqdm

    from common.sandbox.execute import check_many, check_stdio, humaneval_program

    results: list = [None] * len(samples)
    unit = [i for i, s in enumerate(samples) if s.problem.tests and "test" in s.problem.tests]
    if unit:
        tests = [humaneval_program("", programs[i], samples[i].problem.tests["test"],
                                   samples[i].problem.tests["entry_point"]) for i in unit]
        for i, result in zip(unit, check_many(tests, cfg.timeout, cfg.memory_mb, cfg.exec_workers,
                                              cfg.isolation, progress=not cfg.quiet)):
            results[i] = result
    stdio = [i for i, s in enumerate(samples) if s.problem.tests and "inputs" in s.problem.tests]
    if stdio:
        def judge(i):
            tests = samples[i].problem.tests
            return check_stdio(programs[i], tests["inputs"], tests["outputs"], cfg.timeout, cfg.memory_mb,
                               cfg.isolation)
        with ThreadPoolExecutor(max_workers=cfg.exec_workers or os.cpu_count() or 1) as pool:
            done = tqdm(pool.map(judge, stdio), total=len(stdio), desc="executing", unit="program",
                        disable=cfg.quiet)
            for i, result in zip(stdio, done):
                results[i] = result
    return results


def graded(samples: list[Sample], programs: list[str], cfg: EvalConfig, strict: list | None = None) -> list:
    """The test-case average's raw counts (common.judge.testcases.GradedResult) per sample with tests, else None.

    HumanEval-style: the problem's check() rewritten so each assertion runs on its own and reports on the
    program's private channel under a marker drawn for this run; stdin/stdout: every case run on its own.
    strict: `execute`'s results for the same samples; a program that timed out there is not run again
    (it would only time out again, per assertion) and scores 0.
    """
    from common.errors import UserError
    from common.judge.testcases import GradedResult, graded_program, graded_stdio, new_marker, parse_graded
    from common.sandbox.execute import check_many

    out: list = [None] * len(samples)
    jobs = []
    for i, s in enumerate(samples):
        tests = s.problem.tests or {}
        timed_out = strict is not None and strict[i] is not None and strict[i].status == "timeout"
        if "test" in tests:
            try:
                program, total = graded_program("", programs[i], tests["test"], tests["entry_point"])
            except UserError:  # a check() without a countable assertion: strict pass/fail only
                continue
            if timed_out:
                out[i] = GradedResult(0, total)
            else:
                jobs.append((i, program, total, new_marker()))
        elif "inputs" in tests:
            out[i] = GradedResult(0, len(tests["inputs"])) if timed_out else graded_stdio(
                programs[i], tests["inputs"], tests["outputs"], cfg.timeout, cfg.memory_mb, cfg.isolation)
    results = check_many([j[1] for j in jobs], cfg.timeout, cfg.memory_mb, cfg.exec_workers, cfg.isolation,
                         channels=[j[3] for j in jobs]) if jobs else []
    for (i, _, total, marker), result in zip(jobs, results):
        out[i] = parse_graded(result.channel, total, marker)
    return out


def judge_samples(samples: list[Sample], protocol: str, cfg: EvalConfig) -> tuple[list[dict], float]:
    """Execute, syntax-check and chrF-score samples under a protocol; returns tracker sample rows and
    execution seconds. The program is what `common.text.protocols.program` makes of the generation (prompt +
    completion, or the sanitized answer with the prompt's imports); chrF compares the code the model
    wrote with the reference in the same shape."""
    from common.judge.metrics import sentence_chrf, syntax_error_category
    from common.text.protocols import answer_code, program, reference_code

    programs = [program(s.problem, protocol, s.generation) for s in samples]
    began = time.perf_counter()
    results = execute(samples, programs, cfg)
    grades = graded(samples, programs, cfg, results)
    exec_seconds = time.perf_counter() - began
    records = []
    for s, prog, result, grade in zip(samples, programs, results, grades):
        p = s.problem
        code = answer_code(p, protocol, s.generation)
        reference = reference_code(p, protocol) if p.completion else None
        records.append({
            "task_id": p.id, "sample_index": s.index, "prompt": s.prompt, "generation": s.generation,
            "reference": reference or None, "result": result.status if result else None,
            "details": {"error_type": result.error_type if result else None,
                        "detail": result.detail if result else None, "code": code, "program": prog,
                        "syntax": syntax_error_category(prog),
                        "chrf": sentence_chrf(code, reference) if reference else None,
                        "tests_passed": grade.passed if grade else None,
                        "tests_total": grade.total if grade else None, "new_tokens": s.new_tokens,
                        "ended": s.ended},
        })
    return records, exec_seconds

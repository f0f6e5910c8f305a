"""A sweep's plan: the runs a suite expands to, and what the database says about each of them.

Each planned run is a train + eval pair (kind "adapter") or one base-model evaluation (kind
"base"), named from its config (common/study/suites.py), so re-planning the same suite finds the
runs already done, running elsewhere, interrupted or failed.
"""
import functools
import socket
from dataclasses import dataclass, field
from typing import Any, Callable

from common.study import suites as S
from common.config import SweepConfig
from common.errors import UserError
from common.tracker import Tracker, run_process_alive


@dataclass
class Planned:
    kind: str                      # "adapter": train + eval; "base": evaluation of the base model only
    suites: list[str]              # suites this run belongs to; the first is its label
    flags: dict[str, Any]          # resolved flags (suite base, axes/groups, --set, seed)
    diff: str                      # what differs from the suite's base, for display
    name: str                      # train run name (adapter) or eval name (base)
    eval_name: str
    train_id: int | None = None
    eval_id: int | None = None
    outcome: str = "pending"       # done | skipped | failed | interrupted | running elsewhere | not started
    error: str = ""
    attempt_ids: list[int] = field(default_factory=list)


# ---------------------------------------------------------------------------- planning

def selected_suites(cfg: SweepConfig) -> list[S.Suite]:
    if cfg.suite_file:
        return S.suite_parts(S.load_suite_file(cfg.suite_file))
    if not cfg.suite:
        raise UserError(f"pass --suite ({', '.join(S.builtin_names())}) or --suite-file FILE")
    return S.suite_parts(S.builtin_suite(cfg.suite))


def plan(suites: list[S.Suite], overrides: dict[str, Any], seeds: int | None) -> list[Planned]:
    """Base evaluations first, then every (config, seed) once, with all the suites it belongs to."""
    bases: dict[str, Planned] = {}
    runs: dict[str, Planned] = {}
    for suite in suites:
        combos = S.expand(suite)
        varied = set(suite.axes) | {k for g in suite.groups for alt in g for k in alt}
        clash = sorted(varied & set(overrides))
        if clash:
            raise UserError(f"--set {', '.join(clash)}: suite {suite.name} varies {', '.join(clash)}; "
                            "overriding it would make its runs identical (use a --suite-file instead)")
        if seeds is not None:
            if "seed" in varied:
                raise UserError(f"--seeds: suite {suite.name} already varies seed")
            if "seed" in overrides:
                raise UserError("pass either --seeds or --set seed=..., not both")
        base = {**suite.base, **overrides}
        base_flags = S.base_eval_flags(base)
        name = S.base_eval_name(base_flags)
        if name in bases:
            bases[name].suites.append(suite.name)
        else:
            bases[name] = Planned("base", [suite.name], base_flags, "base model", name, name)
        for combo in combos:
            for seed in (range(seeds) if seeds is not None else [None]):
                flags = {**combo, **overrides}
                if seed is not None:
                    flags["seed"] = seed
                train_name = S.train_name(flags)
                eval_name = S.eval_name(train_name, flags)
                if eval_name in runs:
                    if suite.name not in runs[eval_name].suites:
                        runs[eval_name].suites.append(suite.name)
                    continue
                shown = {**base, "seed": base.get("seed")} if seed is not None else base
                runs[eval_name] = Planned("adapter", [suite.name], flags, S.describe(flags, shown),
                                          train_name, eval_name)
    return list(bases.values()) + list(runs.values())


# ---------------------------------------------------------------------------- database state

def completed_train(tracker: Tracker, p: Planned) -> dict[str, Any] | None:
    done = [r for r in tracker.runs(name=p.name, kind="train") if r["status"] == "completed"]
    return done[-1] if done else None


def completed_eval(tracker: Tracker, p: Planned, train_id: int | None) -> dict[str, Any] | None:
    done = [r for r in tracker.runs(name=p.eval_name, kind="eval")
            if r["status"] == "completed" and r["parent_id"] == train_id]
    return done[-1] if done else None


def completed_ids(tracker: Tracker, p: Planned) -> tuple[int | None, int | None]:
    """(train id, eval id) of `p`'s completed work in `tracker`; eval id None until its evaluation is done."""
    train = completed_train(tracker, p) if p.kind == "adapter" else None
    evaluated = completed_eval(tracker, p, train["id"] if train else None) if p.kind == "base" or train else None
    return (train["id"] if train else None), (evaluated["id"] if evaluated else None)


def running_elsewhere(tracker: Tracker, name: str, kind: str) -> dict[str, Any] | None:
    rows = tracker.runs(name=name, kind=kind)
    if rows and rows[-1]["status"] == "running" and rows[-1]["host"] == socket.gethostname() \
            and run_process_alive(rows[-1]):
        return rows[-1]
    return None


def describe_state(tracker: Tracker, p: Planned) -> str:
    kinds = [("eval", p.eval_name)] if p.kind == "base" else [("train", p.name), ("eval", p.eval_name)]
    train = completed_train(tracker, p) if p.kind == "adapter" else None
    parts = []
    for kind, name in kinds:
        rows = tracker.runs(name=name, kind=kind)
        if kind == "eval":
            parent = train["id"] if train else None
            if p.kind == "adapter" and train is None:
                parts.append("eval pending")
                continue
            rows = [r for r in rows if r["parent_id"] == parent]
        done = [r for r in rows if r["status"] == "completed"]
        if done:
            parts.append(f"{kind} done (run {done[-1]['id']})")
        elif rows:
            last = rows[-1]
            parts.append(f"{kind} {last['status']} (run {last['id']})")
        else:
            parts.append(f"{kind} pending")
    return ", ".join(parts)


def record_membership(tracker: Tracker, run_ids: list[int], suites: list[str]) -> None:
    for run_id in sorted({i for i in run_ids if i is not None}):
        tracker.log_membership(run_id, suites)


def parse_shard(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. --shard 0/3")
    return i, n


def shard(planned: list[Planned], index: int, count: int,
          cost: Callable[[dict[str, Any]], float] | None = None) -> list[Planned]:
    """The runs of shard `index` of `count`, balanced by training cost.

    The partition depends only on the plan (and the models' configs), so every machine computes the same
    one: adapters, costliest first (ties by name), each go to the shard with the least cost so far (ties:
    the lowest index); an adapter's evaluations stay with it. Every shard also runs the suite's base-model
    evaluations, which its adapters are compared with in its own database; `Tracker.merge_from` keeps one
    copy of each."""
    cost = cost or training_cost
    adapters = {p.name: p.flags for p in planned if p.kind == "adapter"}
    costs = {name: cost(flags) for name, flags in adapters.items()}
    loads, owner = [0.0] * count, {}
    for name in sorted(adapters, key=lambda n: (-costs[n], n)):
        owner[name] = min(range(count), key=lambda i: (loads[i], i))
        loads[owner[name]] += costs[name]
    return [p for p in planned if p.kind == "base" or owner.get(p.name) == index]


NOMINAL_EPOCH = 4000  # examples per epoch when only --epochs is set: the runs of a suite share their data


def training_cost(flags: dict[str, Any]) -> float:
    """Model FLOPs of a run's training, up to a constant: tokens x (4 x frozen linear + 6 x LoRA parameters),
    from the model's config alone (no weights, no data; machine-independent, so shards agree when they run
    the same checkout and packages). 1.0 for a hub id (never fetched here: a network hiccup on one machine
    must not change its partition) and for a model whose config cannot be read."""
    def get(key: str) -> Any:
        return flags[key] if flags.get(key) is not None else S.TRAIN_FLAGS[key][1]

    try:
        linear, lora = _parameter_counts(get("model"), get("modules"), get("rank"))
    except UserError:
        return 1.0
    examples = (get("max_steps") * get("batch_size") * get("grad_accum") if get("max_steps")
                else get("epochs") * (get("train_limit") or NOMINAL_EPOCH))
    return float(examples * get("max_seq_len") * (4 * linear + 6 * lora))


@functools.lru_cache(maxsize=32)
def _parameter_counts(model: str, modules: str, rank: int) -> tuple[int, int]:
    from pathlib import Path

    from common.train.estimate import load_config, model_shape
    from common.model.resolve import EMBEDDED

    if model not in EMBEDDED and not Path(model).expanduser().is_dir():
        raise UserError(f"{model}: a hub id, not read for sharding")
    shape = model_shape(load_config(model), modules)
    return shape.linear_params, shape.lora_params(rank)


def power_note(planned: list[Planned], humaneval_problems: int = 164) -> str:
    """What pass@1 difference the planned design can detect (exact McNemar, alpha 0.05, 80% power)."""
    from common.judge.stats import minimum_detectable_difference, problems_needed

    limits = {p.flags.get("eval_limit") for p in planned}
    n = min(humaneval_problems, min((x for x in limits if x), default=humaneval_problems))
    floor = minimum_detectable_difference(n)
    head = f"power: with {n} HumanEval problems, a paired pass@1 comparison (exact McNemar, alpha 0.05, 80% power)"
    if floor is None:
        return f"{head} can detect no difference at all; use more problems (--set eval_limit=N, up to 164)."
    typical = minimum_detectable_difference(n, discordance=0.2)
    return (f"{head} detects a difference of at least {100 * floor:.0f} points even if every disagreement goes one "
            "way" + (f", {100 * typical:.0f} points if the two disagree on 20% of problems" if typical else
                     "; where they disagree on 20% of problems nothing it can see is detectable")
            + f". A 10-point difference at 20% disagreement needs {problems_needed(0.10, 0.20)} problems; "
            "seeds average out initialisation noise but do not add problems.")


def print_plan(tracker: Tracker, planned: list[Planned]) -> None:
    from tabulate import tabulate
    rows = [(i + 1, p.eval_name if p.kind == "base" else p.name, ",".join(p.suites), p.diff,
             describe_state(tracker, p)) for i, p in enumerate(planned)]
    print(tabulate(rows, headers=("#", "run", "suites", "config (vs suite base)", "state"), tablefmt="github"))
    print("\n".join(seed_lines(planned)))


def _flag(flags: dict[str, Any], key: str) -> Any:
    """A planned run's value of a train.py option: its flag, else train.py's default."""
    return flags[key] if flags.get(key) is not None else S.TRAIN_FLAGS[key][1]


def planned_seeds(planned: list[Planned], suite: str) -> dict[str, tuple[int, bool]]:
    """Config label (the flags that vary across the suite's configs, as the report labels its rows) -> (seeds
    planned, whether it is the reference config the report compares with: common/study/compare.py reference_row)."""
    adapters = [p for p in planned if p.kind == "adapter" and suite in p.suites]
    resolved = [{k: _flag(p.flags, k) if k in S.TRAIN_FLAGS else p.flags[k] for k in p.flags if k != "seed"}
                for p in adapters]
    keys = sorted({k for flags in resolved for k in flags})
    varying = [k for k in keys if len({repr(flags.get(k)) for flags in resolved}) > 1]
    seeds: dict[str, set] = {}
    reference: dict[str, bool] = {}
    for p, flags in zip(adapters, resolved):
        label = " ".join(f"{k}={S.format_value(flags.get(k))}" for k in varying) or "suite base"
        seeds.setdefault(label, set()).add(_flag(p.flags, "seed"))
        central = all(_flag(p.flags, k) == v for k, v in S.CENTRAL.items() if k != "seed")
        reference[label] = central and S.CENTRAL["seed"] in seeds[label]
    return {label: (len(seeds[label]), reference[label]) for label in seeds}


def seed_lines(planned: list[Planned]) -> list[str]:
    """Per suite: how many seeds each compared config gets, and the comparisons (each config vs the reference
    config and vs the base model) the report will leave without a verdict for lack of seeds: it stars a
    difference only with >= 2 seeds on every trained side (the base model has no training seed)."""
    lines = []
    for suite in dict.fromkeys(s for p in planned for s in p.suites):
        configs = planned_seeds(planned, suite)
        if not configs:
            continue
        reference = next((label for label, (_, is_reference) in configs.items() if is_reference), None)
        pairs = [(c, reference) for c in configs if reference and c != reference] + [(c, None) for c in configs]
        lacking = [f"{c} vs {other or 'base model'}" for c, other in pairs
                   if configs[c][0] < 2 or (other is not None and configs[other][0] < 2)]
        counts = ", ".join(f"{c}{' (reference)' if c == reference else ''} {n}" for c, (n, _) in configs.items())
        lines.append(f"seeds in suite {suite}: {counts}.")
        if lacking:
            lines.append(f"  no verdict for lack of seeds (one seed: seed variation not measured) in {len(lacking)} "
                         f"of {len(pairs)} comparisons: {'; '.join(lacking)}. --seeds 2 (or more) gives each one.")
        else:
            lines.append(f"  every comparison ({len(pairs)}) has >= 2 seeds on each trained side.")
    return lines


def print_summary(planned: list[Planned]) -> None:
    from tabulate import tabulate
    rows = [(p.eval_name if p.kind == "base" else p.name, ",".join(p.suites), p.outcome,
             p.train_id or "", p.eval_id or "", p.error) for p in planned]
    print(tabulate(rows, headers=("run", "suites", "outcome", "train id", "eval id", "error"), tablefmt="github"))

"""The study model: the tracker's runs as report rows (one per trained config) with cells of numbers.

No markdown here: report.py renders what this module returns, and the tests check these numbers.

    study = Study(Tracker("experiments.db"))
    adapters, bases = build_rows(study, "rank")
    adapters[0].label, adapters[0].mean("humaneval.pass@1"), adapters[0].get("humaneval.pass@1").ci

Which runs belong to a suite: runs started under it and runs recorded as its members
(Tracker.memberships), plus their child eval runs. Runs of one config with different seeds are one
row; each cell keeps the per-seed values, and for several seeds a cluster-bootstrap interval over
seeds x problems. Pass rates and compile rates are recomputed from the per-problem samples with a
Wilson interval (never zero-width at 0/n or n/n); other scores are read as evaluate.py stored them.

Measured costs (peak memory, times, token rates) also go into `Row.cost(key)`, which keeps only runs the
machine's other processes did not contend (`Study.load_status`): the report ranks costs by those alone.
"""
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from common.env import LOAD_BENCHMARK
from common.judge import stats
from common.tracker import Tracker

NO_SUITE = "unassigned"
# Train-config keys that name or place a run rather than define what was trained, and the sizes the
# seed's data split produced: runs differing only in these are seeds of one config.
IDENTITY_KEYS = {"name", "output_dir", "suite", "seed", "train_examples", "val_examples", "data_dropped"}
_LABEL_SKIP = {"alpha", "target_modules", "dtype", "template", "dataset_source", "world_size", "device"}
_MODULE_ORDER = ["qv", "qkv", "qkvo", "mlp", "all"]
DEFAULT_PROTOCOL = "completion"   # evaluations recorded before `protocol` existed were plain completions


# ---------------------------------------------------------------------------- metrics

@dataclass(frozen=True)
class Metric:
    key: str             # "<benchmark>.<score name>", e.g. "humaneval.pass@1", or "train.peak_mb"
    title: str           # column header
    better: str | None   # "higher" | "lower" | None
    digits: int = 2
    percent: bool = False    # stored as a fraction, shown as %


_METRICS = {  # score name -> (title, better, digits, percent)
    "syntax_ok": ("syntax ok %", "higher", 1, True), "test_case_avg": ("tests passed %", "higher", 1, True),
    "bleu": ("BLEU", "higher", 1, False),
    "chrf": ("chrF", "higher", 1, False), "perplexity": ("perplexity", "lower", 2, False),
    "nll": ("NLL", "lower", 3, False), "seconds_per_problem": ("gen s/problem", "lower", 2, False),
    "tokens_per_s": ("gen tok/s", "higher", 0, False), "trainable_params": ("trainable params", "lower", 0, False),
    "trainable_pct": ("trainable %", "lower", 3, False), "adapter_mb": ("adapter MiB", "lower", 2, False),
    "peak_mb": ("peak mem MiB", "lower", 0, False), "wall_seconds": ("train s", "lower", 1, False),
    "train_tokens_per_s": ("train tok/s", "higher", 0, False), "final_val_loss": ("val loss", "lower", 3, False),
}


def metric_for(key: str) -> Metric:
    bench, _, name = key.partition(".")
    where = "" if bench in ("humaneval", "train") else f" ({bench})"
    if name.startswith("pass@"):
        return Metric(key, f"{name}{where}", "higher", 1, True)
    title, better, digits, percent = _METRICS.get(name, (name, None, 3, False))
    return Metric(key, title + where, better, digits, percent)


# A run is contended when other processes used more than this share of the machine's CPU capacity while it ran
# (its `cpu_foreign_share` score, train and eval runs alike). The project's machines are 2-core and shared: one
# neighbour's busy thread is 0.5 of them, and timings are noisy well before that (NOTES.md: a first heavy run can
# be 5-10x slow), so a tenth is the most foreign load under which a time or peak is still the run's own.
CONTENTION_LIMIT = 0.10
# Where runs record it: train runs among their train scores, eval runs under their own benchmark (common/env.py)
FOREIGN_SHARE_KEYS = ("train.cpu_foreign_share", f"{LOAD_BENCHMARK}.cpu_foreign_share")
# Score names whose value the machine's load can change: what contention takes out of the cost rankings.
MEASURED_COST_NAMES = {"peak_mb", "wall_seconds", "train_tokens_per_s", "seconds_per_problem", "tokens_per_s"}

COST_KEYS = ["train.trainable_params", "train.adapter_mb", "train.peak_mb", "train.wall_seconds",
             "train.train_tokens_per_s", "humaneval.seconds_per_problem", "humaneval.tokens_per_s"]
# ---------------------------------------------------------------------------- cells and rows

@dataclass
class Cell:
    """One metric of one row: per-seed (value, ci_low, ci_high), and a pooled interval for several seeds."""
    values: list[tuple[float, float | None, float | None]] = field(default_factory=list)
    pooled: tuple[float, float] | None = None     # cluster bootstrap over seeds x problems

    @property
    def mean(self) -> float:
        return sum(v for v, _, _ in self.values) / len(self.values)

    @property
    def std(self) -> float | None:
        """The seed spread: sample standard deviation of the per-seed values (None for one seed)."""
        return stats.seed_spread([v for v, _, _ in self.values])

    @property
    def ci(self) -> tuple[float, float] | None:
        if len(self.values) == 1 and self.values[0][1] is not None and self.values[0][2] is not None:
            return self.values[0][1], self.values[0][2]
        return self.pooled

    def interval(self) -> tuple[float, float] | None:
        """The 95% CI; for several seeds without a pooled interval, mean ± std."""
        if self.ci:
            return self.ci
        if self.std is not None:
            return self.mean - self.std, self.mean + self.std
        return None


@dataclass
class Row:
    suite: str
    kind: str                                   # "adapter" | "base"
    label: str
    config: dict[str, Any]
    seeds: list[Any] = field(default_factory=list)
    train_ids: list[int] = field(default_factory=list)
    eval_ids: list[int] = field(default_factory=list)
    cells: dict[str, Cell] = field(default_factory=dict)
    cost_cells: dict[str, Cell] = field(default_factory=dict)   # measured costs of the runs fit to rank costs by
    loads: dict[int, str] = field(default_factory=dict)         # run id -> Study.load_status, for train and eval runs

    def get(self, key: str) -> Cell | None:
        cell = self.cells.get(key)
        return cell if cell and cell.values else None

    def mean(self, key: str) -> float | None:
        cell = self.get(key)
        return cell.mean if cell else None

    def cost(self, key: str) -> Cell | None:
        """A measured cost over the runs fit for cost rankings (Study.cost_usable); other keys as `get`."""
        if not is_measured_cost(key):
            return self.get(key)
        cell = self.cost_cells.get(key)
        return cell if cell and cell.values else None

    def cost_mean(self, key: str) -> float | None:
        cell = self.cost(key)
        return cell.mean if cell else None

    def cost_excluded(self, key: str) -> str | None:
        """Why a measured cost the row has shows no number: "contended" when any of its runs were, else "load not
        recorded"; None when it has a usable value or no value at all."""
        if self.get(key) is None or self.cost(key) is not None:
            return None
        return "contended" if "contended" in self.loads.values() else "load not recorded"

    def runs_with_load(self, status: str) -> list[int]:
        return sorted(i for i, s in self.loads.items() if s == status)


def is_measured_cost(key: str) -> bool:
    return key.partition(".")[2] in MEASURED_COST_NAMES


@dataclass(frozen=True)
class Problem:
    """One problem of one evaluation, from its samples."""
    passed: float | None          # share of samples that passed (None: no tests)
    compiled: float | None        # share of samples that compile (None: not recorded)
    chrf: float | None            # mean sentence chrF against the reference
    graded: float | None = None   # test-case average: share of the problem's assertions passed (mean over samples)
    nll: float | None = None      # summed NLL of the reference tokens (nats), when evaluate.py recorded it
    tokens: int | None = None
    n_samples: int = 1
    group: str | None = None      # the split group of a held-out reference (its source file, or --group-key)
    empty: bool = False           # every sample's answer is empty


# ---------------------------------------------------------------------------- reading the db

class Study:
    """Everything in the database, indexed for the report."""

    def __init__(self, tracker: Tracker, contention_limit: float = CONTENTION_LIMIT):
        self.tracker = tracker
        self.contention_limit = contention_limit   # report.py --contention-limit
        self.runs = {r["id"]: r for r in tracker.runs()}
        self.scores = tracker.all_scores()
        self.members: dict[str, set[int]] = defaultdict(set)
        for suite, ids in tracker.memberships().items():
            self.members[suite] |= {i for i in ids if i in self.runs}
        self.children: dict[int, list[int]] = defaultdict(list)
        for run in self.runs.values():
            if run["parent_id"] is not None:
                self.children[run["parent_id"]].append(run["id"])
        assigned = set().union(*self.members.values()) if self.members else set()
        for ids in list(self.members.values()):
            for run_id in list(ids):
                assigned.update(self.children.get(run_id, []))
        loose = {i for i in self.runs if i not in assigned}
        if loose:
            self.members[NO_SUITE] = loose
        self._problems: dict[tuple[int, str], dict[str, Problem]] = {}
        self.load_recorded = any(self.foreign_share(i) is not None for i in self.runs)
        self.memo: dict[tuple, Any] = {}   # computed comparisons (common/study/compare.py), by the eval ids compared

    def suites(self) -> list[str]:
        return sorted(self.members, key=lambda s: (s == NO_SUITE, s))

    def score(self, run_id: int, key: str) -> dict[str, Any] | None:
        s = self.scores.get(run_id, {}).get(key)
        return s if s and s["value"] is not None else None

    def problems(self, eval_id: int, bench: str) -> dict[str, Problem]:
        """task_id -> Problem for one benchmark of one eval run (empty when no samples were recorded)."""
        if (eval_id, bench) not in self._problems:
            by_task: dict[str, list[dict]] = defaultdict(list)
            for s in self.tracker.samples(eval_id, bench):
                by_task[s["task_id"]].append(s)
            self._problems[(eval_id, bench)] = {t: _problem(rows) for t, rows in by_task.items()}
        return self._problems[(eval_id, bench)]

    def foreign_share(self, run_id: int) -> float | None:
        """The share of the machine's CPU capacity other processes used during the run; None when it recorded
        none."""
        scores = self.scores.get(run_id, {})
        found = [scores[k]["value"] for k in FOREIGN_SHARE_KEYS if k in scores and scores[k]["value"] is not None]
        return max(found) if found else None

    def load_status(self, run_id: int) -> str:
        """The run's load: contended (foreign share above the contention limit), uncontended, or not recorded."""
        share = self.foreign_share(run_id)
        if share is None:
            return "not recorded"
        return "contended" if share > self.contention_limit else "uncontended"

    def cost_usable(self, run_id: int) -> bool:
        """Whether the run's times and memory may rank configurations: uncontended; a run without a recorded load
        only when the database records none at all (an older database: nothing to tell runs apart by)."""
        status = self.load_status(run_id)
        return status == "uncontended" or (status == "not recorded" and not self.load_recorded)

    def benchmark_identity(self, eval_id: int, bench: str) -> tuple:
        """What must match for two evaluations to be paired: benchmark, its data key, protocol, problem ids."""
        config = self.runs[eval_id]["config"]
        data_key = json.dumps((config.get("benchmark_keys") or {}).get(bench), sort_keys=True, default=str)
        return (bench, data_key, config.get("protocol", DEFAULT_PROTOCOL), tuple(sorted(self.problems(eval_id, bench))))

    def benchmarks(self, eval_id: int) -> list[str]:
        return sorted({k.split(".", 1)[0] for k in self.scores.get(eval_id, {})} - {"train", LOAD_BENCHMARK})


def _problem(rows: list[dict]) -> Problem:
    tested = [r for r in rows if r["result"] is not None]
    details = [r["details"] or {} for r in rows]
    chrfs = [d["chrf"] for d in details if d.get("chrf") is not None]
    nll = details[0].get("nll_sum")
    return Problem(passed=sum(r["result"] == "passed" for r in tested) / len(tested) if tested else None,
                   compiled=(sum(d["syntax"] is None for d in details) / len(details)
                             if all("syntax" in d for d in details) else None),
                   chrf=sum(chrfs) / len(chrfs) if chrfs else None,
                   graded=(sum(d["tests_passed"] / d["tests_total"] for d in details) / len(details)
                           if all(d.get("tests_total") for d in details) else None),
                   nll=nll, tokens=details[0].get("tokens") if nll is not None else None, n_samples=len(rows),
                   group=split_group(rows[0]), empty=all(not (r["generation"] or "").strip() for r in rows))


def split_group(record: dict) -> str | None:
    """The group the split was drawn by: recorded by evaluate.py; stdlib ids (stdlib:FILE:NAME) carry it in
    records made before it was recorded; None when unknown (each reference is then its own cluster)."""
    group = (record["details"] or {}).get("group")
    if group is None and record["task_id"].startswith("stdlib:") and record["task_id"].count(":") >= 2:
        group = record["task_id"].split(":")[1]
    return group


# ---------------------------------------------------------------------------- rows

# What a run recorded before an option existed did: such a run groups with later runs that record this value, so a
# study whose runs span code versions keeps one row per configuration.
BEFORE_OPTION_EXISTED = {"lora_kernel": "peft"}


def group_key(config: dict[str, Any]) -> str:
    filled = {**BEFORE_OPTION_EXISTED, **config}
    return json.dumps({k: v for k, v in filled.items() if k not in IDENTITY_KEYS}, sort_keys=True, default=str)


def build_rows(study: Study, suite: str) -> tuple[list[Row], list[Row]]:
    """(adapter rows, base rows) of a suite: completed runs only; the newest run of a config and seed counts."""
    members = study.members[suite]
    groups: dict[str, Row] = {}
    picked: dict[str, dict[Any, tuple[int, int | None]]] = defaultdict(dict)   # group -> seed -> (train, eval)
    for run_id in sorted(members, reverse=True):
        run = study.runs[run_id]
        if run["kind"] != "train" or run["status"] != "completed":
            continue
        key = group_key(run["config"])
        groups.setdefault(key, Row(suite, "adapter", "", {k: v for k, v in run["config"].items()
                                                          if k not in IDENTITY_KEYS}))
        seed = run["config"].get("seed")
        if seed not in picked[key]:
            picked[key][seed] = (run_id, pick_eval(study, run_id, members))
    for key, row in groups.items():
        for seed in sorted(picked[key], key=lambda s: (s is None, s if isinstance(s, int) else 0, str(s))):
            train_id, eval_id = picked[key][seed]
            row.seeds.append(seed)
            row.train_ids.append(train_id)
            if eval_id is not None:
                row.eval_ids.append(eval_id)
            add_cells(study, row, train_id, eval_id)
        add_record_intervals(study, row)
    adapters = list(groups.values())
    label_rows(adapters)
    return adapters, base_rows(study, suite)


def base_rows(study: Study, suite: str) -> list[Row]:
    bases: dict[str, Row] = {}
    for run_id in sorted(study.members[suite], reverse=True):
        run = study.runs[run_id]
        if run["kind"] != "eval" or run["parent_id"] is not None or run["status"] != "completed":
            continue
        config = {k: v for k, v in run["config"].items() if k not in ("name", "suite")}
        key = json.dumps(config, sort_keys=True, default=str)
        if key not in bases:
            bases[key] = Row(suite, "base", "base model", config, eval_ids=[run_id])
            add_cells(study, bases[key], None, run_id)
            add_record_intervals(study, bases[key])
    rows = sorted(bases.values(), key=lambda r: r.eval_ids[0])
    if len(rows) > 1:
        varying = [k for k in sorted({k for r in rows for k in r.config})
                   if len({json.dumps(r.config.get(k), default=str) for r in rows}) > 1]
        for r in rows:
            shown = [f"{k}={_short(r.config.get(k))}" for k in varying
                     if k in ("quant", "model", "eval_limit", "benchmarks", "seed")]
            r.label = "base model" + (f" ({' '.join(shown)})" if shown else f" (run {r.eval_ids[0]})")
    return rows


def pick_eval(study: Study, train_id: int, members: set[int]) -> int | None:
    done = [i for i in study.children.get(train_id, []) if study.runs[i]["kind"] == "eval"
            and study.runs[i]["status"] == "completed"]
    # An evaluation that is a member of other suites only (another protocol, say) is not this suite's;
    # one of no suite at all (recorded before memberships existed) still is.
    preferred = [i for i in done if i in members] or [
        i for i in done if not any(i in m for m in study.members.values())]
    return max(preferred) if preferred else None


def add_cells(study: Study, row: Row, train_id: int | None, eval_id: int | None) -> None:
    """Append one seed's stored scores to the row's cells (peak memory: GPU allocated, else process RSS, else
    the run's recorded prediction, flagged as train.peak_is_predicted)."""
    values: dict[str, dict[str, Any]] = {}
    if train_id is not None:
        values.update({k: s for k, s in study.scores.get(train_id, {}).items() if k.startswith("train.")})
        peak = study.score(train_id, "train.peak_gpu_allocated_mb") or study.score(train_id, "train.peak_rss_mb")
        predicted = study.score(train_id, "train.predicted_peak_mb")
        if peak:
            values["train.peak_mb"] = peak
        elif predicted:  # no measured peak (trained elsewhere, or before peaks were recorded): the prediction
            values["train.peak_mb"] = predicted
            values["train.peak_is_predicted"] = {"value": 1.0, "low": None, "high": None}
    if eval_id is not None:
        values.update({k: s for k, s in study.scores.get(eval_id, {}).items() if not k.startswith("train.")})
    for key, s in values.items():
        if s["value"] is not None:
            row.cells.setdefault(key, Cell()).values.append((s["value"], s["low"], s["high"]))
    add_costs(study, row, values, train_id, eval_id)


def add_costs(study: Study, row: Row, values: dict[str, dict[str, Any]], train_id: int | None,
              eval_id: int | None) -> None:
    """Record the load of the seed's runs, and its measured costs where the run that measured them is fit to rank
    costs by (a predicted peak is no measurement: the machine's load does not change it)."""
    for run_id in (train_id, eval_id):
        if run_id is not None:
            row.loads[run_id] = study.load_status(run_id)
    predicted = "train.peak_is_predicted" in values
    for key, s in values.items():
        source = train_id if key.startswith("train.") else eval_id
        usable = source is not None and (study.cost_usable(source) or (predicted and key == "train.peak_mb"))
        if is_measured_cost(key) and s["value"] is not None and usable:
            row.cost_cells.setdefault(key, Cell()).values.append((s["value"], s["low"], s["high"]))


def add_record_intervals(study: Study, row: Row) -> None:
    """Recompute pass@1, syntax ok and perplexity from per-problem samples, where every seed recorded them.

    One sample per problem: k of n problems, with a Wilson interval. NLL per token and perplexity:
    token-weighted bootstrap over the references' split groups (nll_cells). Several seeds on the same
    problems: a crossed bootstrap over seeds x problems (or x split groups).
    """
    if not row.eval_ids or len(row.eval_ids) != len(row.seeds or [None]):
        return
    for bench in study.benchmarks(row.eval_ids[0]):
        per_seed = [study.problems(e, bench) for e in row.eval_ids]
        if not all(per_seed):
            continue
        for name, attr in (("pass@1", "passed"), ("syntax_ok", "compiled")):
            grids = [[getattr(p, attr) for _, p in sorted(problems.items())] for problems in per_seed]
            if any(v is None for g in grids for v in g) or any(p.n_samples != 1 for s in per_seed for p in s.values()):
                continue
            values = [(sum(g) / len(g), *stats.wilson_interval(round(sum(g)), len(g))) for g in grids]
            row.cells[f"{bench}.{name}"] = Cell(values, _pooled(per_seed, grids))
        # The test-case average keeps each seed's stored bootstrap CI; several seeds on the same problems
        # get the crossed seeds x problems bootstrap, as the pass rates do.
        key = f"{bench}.test_case_avg"
        grids = [[p.graded for _, p in sorted(problems.items())] for problems in per_seed]
        if key in row.cells and len(grids) > 1 and all(v is not None for g in grids for v in g) \
                and _same_problems(per_seed):
            _, low, high = stats.cluster_bootstrap_ci(grids)
            row.cells[key].pooled = (low, high)
        # Examples too long for --max-seq-len carry no NLL; the stored perplexity leaves them out too.
        scored = [{t: p for t, p in s.items() if p.nll is not None} for s in per_seed]
        if all(scored):
            row.cells[f"{bench}.nll"], row.cells[f"{bench}.perplexity"] = nll_cells(scored)


def reference_groups(problems: list[Problem]) -> list[str] | None:
    """The split group of each reference, or None when any is unknown (references are then resampled singly)."""
    groups = [p.group for p in problems]
    return None if any(g is None for g in groups) else groups


def nll_cells(per_seed: list[dict[str, Problem]]) -> tuple[Cell, Cell]:
    """NLL per token and perplexity: per seed, and pooled over seeds x split groups when the seeds share their
    references; seeds with different held-out splits get the hull of their intervals (conservative)."""
    values = []
    for problems in per_seed:
        ordered = [p for _, p in sorted(problems.items())]
        values.append(stats.nll_per_token_ci([[p.nll for p in ordered]], [p.tokens for p in ordered],
                                             reference_groups(ordered)))
    pooled = None
    if len(per_seed) > 1:
        ordered = [[p for _, p in sorted(s.items())] for s in per_seed]
        if _same_problems(per_seed) and all([p.tokens for p in s] == [p.tokens for p in ordered[0]] for s in ordered):
            _, low, high = stats.nll_per_token_ci([[p.nll for p in s] for s in ordered],
                                                  [p.tokens for p in ordered[0]], reference_groups(ordered[0]))
            pooled = (low, high)
        else:
            pooled = (min(v[1] for v in values), max(v[2] for v in values))
    perplexity = Cell([tuple(math.exp(x) for x in v) for v in values],
                      tuple(math.exp(x) for x in pooled) if pooled else None)
    return Cell(values, pooled), perplexity


def _same_problems(per_seed: list[dict[str, Problem]]) -> bool:
    return len({tuple(sorted(s)) for s in per_seed}) == 1


def _pooled(per_seed: list[dict[str, Problem]], grids: list[list[float]]) -> tuple[float, float] | None:
    if len(grids) < 2 or not _same_problems(per_seed):
        return None
    _, low, high = stats.cluster_proportion_ci(grids)
    return low, high


def _sort_value(key: str, value: Any) -> tuple:
    if key == "modules" and value in _MODULE_ORDER:
        return (0, _MODULE_ORDER.index(value), "")
    if key == "quant":
        m = re.match(r"(\d+)", str(value))
        if m:
            return (0, int(m.group(1)), "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0, str(value))


def label_rows(rows: list[Row]) -> None:
    """Label each row by the flags that vary across the suite's rows (`rank=16`), in a stable order."""
    if not rows:
        return
    keys = sorted({k for r in rows for k in r.config} - _LABEL_SKIP)
    varying = [k for k in keys if len({json.dumps(r.config.get(k), default=str) for r in rows}) > 1]
    for r in rows:
        if varying:
            r.label = " ".join(f"{k}={_short(r.config.get(k))}" for k in varying)
        else:
            c = r.config
            r.label = f"r{c.get('rank')}-{str(c.get('modules')).replace(',', '+')}-{c.get('quant')}"
    rows.sort(key=lambda r: tuple(_sort_value(k, r.config.get(k)) for k in varying) + (r.label,))


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and "/" in value:
        return value.rstrip("/").rsplit("/", 1)[-1]
    if isinstance(value, (list, tuple)):
        return "+".join(_short(v) for v in value)
    return str(value)


def nice_budget(mb: float) -> tuple[float, str]:
    """A round memory budget at or above `mb` (MiB): 2 significant digits, in MiB or GiB."""
    unit, value = ("GiB", mb / 1024) if mb >= 1024 else ("MiB", mb)
    magnitude = 10 ** (math.floor(math.log10(value)) - 1) if value > 0 else 1
    rounded = math.ceil(round(value / magnitude, 9)) * magnitude
    text = f"{rounded:.{max(0, -int(math.floor(math.log10(magnitude))))}f}"
    return (rounded * 1024 if unit == "GiB" else rounded), f"{text} {unit}"

"""Turn the run tracker into a results report: tables, plots, Pareto fronts, recommendations.

    python report.py                                  # every suite in experiments.db -> reports/
    python report.py --db sweep.db --suite rank --out reports/rank
    python report.py --list [--suite rank] [--status failed]
    python report.py --export csv --out runs.csv      # all runs with their scores (Tracker.export)

Writes to --out: RESULTS.md (per-suite cost and quality tables with 95% CIs and deltas
against the base model, best config per metric, Pareto fronts, a recommendation per memory
budget, before/after examples, failed and interrupted runs, the environment),
model_comparison.csv/.json (the table rows as numbers) and PNG figures.

Which runs belong to a suite: runs labelled with it (`--suite` of train.py/evaluate.py) and
runs recorded as its members by sweep.py (score rows under the benchmark "suite"), so a
config shared by several suites appears in each. Each trained config is one row; runs of
the same config with different seeds are aggregated (mean ± sample std, n seeds). Every
number comes from the database, and the same database gives byte-identical markdown.

Significance: a delta against the base model is marked * only when its 95% CI (paired,
computed by evaluate.py) excludes 0 — for several seeds, when every seed's CI excludes 0 on
the same side. Anything else is reported as within noise.
"""
import json
import math
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common.config import ReportConfig
from common.errors import UserError, run_cli
from common.options import parse_config
from common.tracker import Tracker

MEMBERSHIP = "suite"          # score benchmark recording suite membership (see sweep.py)
NO_SUITE = "unassigned"
# Train-config keys that name or place a run rather than define what was trained, and the sizes the
# seed's data split produced: runs differing only in these are seeds of one config.
_IDENTITY_KEYS = {"name", "output_dir", "suite", "seed", "train_examples", "val_examples"}
_LABEL_SKIP = {"alpha", "target_modules", "dtype", "template", "dataset_source", "world_size", "device"}
_MODULE_ORDER = ["qv", "qkv", "qkvo", "mlp", "all"]


# ---------------------------------------------------------------------------- metrics

@dataclass(frozen=True)
class Metric:
    key: str             # "<benchmark>.<score name>", e.g. "humaneval.pass@1", or "train.peak_mb"
    title: str           # column header
    better: str | None   # "higher" | "lower" | None
    digits: int = 2
    percent: bool = False    # stored as a fraction, shown as %

    def unit(self) -> str:
        return "%" if self.percent else ""


def _metric_for(key: str) -> Metric:
    bench, _, name = key.partition(".")
    where = "" if bench in ("humaneval", "train") else f" ({bench})"
    if name.startswith("delta."):
        inner = _metric_for(f"{bench}.{name[6:]}")
        return Metric(key, f"Δ {inner.title.split(' (')[0]} vs base{where}", inner.better, inner.digits, inner.percent)
    if name.startswith("pass@"):
        return Metric(key, f"{name}{where}", "higher", 1, True)
    table = {
        "syntax_ok": Metric(key, f"syntax ok %{where}", "higher", 1, True),
        "bleu": Metric(key, f"BLEU{where}", "higher", 1),
        "chrf": Metric(key, f"chrF{where}", "higher", 1),
        "perplexity": Metric(key, f"perplexity{where}", "lower", 2),
        "nll": Metric(key, f"NLL{where}", "lower", 3),
        "seconds_per_problem": Metric(key, f"gen s/problem{where}", "lower", 2),
        "tokens_per_s": Metric(key, f"gen tok/s{where}", "higher", 0),
        "trainable_params": Metric(key, "trainable params", "lower", 0),
        "trainable_pct": Metric(key, "trainable %", "lower", 3),
        "adapter_mb": Metric(key, "adapter MB", "lower", 2),
        "peak_mb": Metric(key, "peak mem MB", "lower", 0),
        "wall_seconds": Metric(key, "train s", "lower", 1),
        "train_tokens_per_s": Metric(key, "train tok/s", "higher", 0),
        "final_val_loss": Metric(key, "val loss", "lower", 3),
    }
    return table.get(name, Metric(key, f"{name}{where}", None, 3))


COST_KEYS = ["train.trainable_params", "train.adapter_mb", "train.peak_mb", "train.wall_seconds",
             "train.train_tokens_per_s", "humaneval.seconds_per_problem", "humaneval.tokens_per_s"]
QUALITY_FIRST = ["train.final_val_loss", "heldout.perplexity", "heldout.syntax_ok", "heldout.bleu", "heldout.chrf",
                 "humaneval.syntax_ok", "humaneval.bleu", "humaneval.chrf"]


@dataclass
class Cell:
    """One metric of one row: per-seed values (with CIs when the score has one)."""
    values: list[tuple[float, float | None, float | None]] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return sum(v for v, _, _ in self.values) / len(self.values)

    @property
    def std(self) -> float | None:
        if len(self.values) < 2:
            return None
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v, _, _ in self.values) / (len(self.values) - 1))

    @property
    def ci(self) -> tuple[float, float] | None:
        if len(self.values) == 1 and self.values[0][1] is not None and self.values[0][2] is not None:
            return self.values[0][1], self.values[0][2]
        return None

    def interval(self) -> tuple[float, float] | None:
        """The CI for one seed, mean ± std for several: what 'within noise' compares."""
        if self.ci:
            return self.ci
        if self.std is not None:
            return self.mean - self.std, self.mean + self.std
        return None

    @property
    def has_ci(self) -> bool:
        """Every seed's value came with a CI (perplexity, for one, never does)."""
        return bool(self.values) and all(lo is not None and hi is not None for _, lo, hi in self.values)

    def excludes_zero(self) -> bool:
        if not self.has_ci:
            return False
        return all(lo > 0 for _, lo, _ in self.values) or all(hi < 0 for _, _, hi in self.values)


@dataclass
class Row:
    suite: str
    kind: str                                   # "adapter" | "base"
    label: str
    config: dict[str, Any]
    seeds: list[int] = field(default_factory=list)
    train_ids: list[int] = field(default_factory=list)
    eval_ids: list[int] = field(default_factory=list)
    cells: dict[str, Cell] = field(default_factory=dict)

    def get(self, key: str) -> Cell | None:
        cell = self.cells.get(key)
        return cell if cell and cell.values else None

    def mean(self, key: str) -> float | None:
        cell = self.get(key)
        return cell.mean if cell else None


# ---------------------------------------------------------------------------- formatting

def fmt(value: float | None, metric: Metric, signed: bool = False) -> str:
    if value is None:
        return "—"
    if metric.percent:
        value *= 100
    if metric.key.endswith("trainable_params"):
        return f"{value:,.0f}"
    text = f"{value:+.{metric.digits}f}" if signed else f"{value:.{metric.digits}f}"
    if float(text) == 0:  # no "-0.0"
        text = text.replace("-", "+" if signed else "")
    return text


def fmt_cell(cell: Cell | None, metric: Metric, star: bool = True) -> str:
    if cell is None:
        return "—"
    delta = metric.key.split(".", 1)[1].startswith("delta.")
    text = fmt(cell.mean, metric, signed=delta)
    if cell.ci:
        text += f" [{fmt(cell.ci[0], metric, delta)}, {fmt(cell.ci[1], metric, delta)}]"
    elif cell.std is not None:
        text += f" ± {fmt(cell.std, metric)}"
    if star and delta and cell.excludes_zero():
        text += " *"
    return text


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    from tabulate import tabulate
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def compact_ids(ids: list[int]) -> str:
    ids = sorted(set(ids))
    parts, start = [], None
    for i, x in enumerate(ids):
        if start is None:
            start = x
        if i + 1 == len(ids) or ids[i + 1] != x + 1:
            parts.append(str(start) if start == x else f"{start}-{x}")
            start = None
    return ",".join(parts)


def nice_budget(mb: float) -> tuple[float, str]:
    """A round memory budget at or above `mb`: 2 significant digits, in MB or GB."""
    unit, value = ("GB", mb / 1024) if mb >= 1024 else ("MB", mb)
    magnitude = 10 ** (math.floor(math.log10(value)) - 1) if value > 0 else 1
    rounded = math.ceil(round(value / magnitude, 9)) * magnitude
    text = f"{rounded:.{max(0, -int(math.floor(math.log10(magnitude))))}f}"
    return (rounded * 1024 if unit == "GB" else rounded), f"{text} {unit}"


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


# ---------------------------------------------------------------------------- reading the db

class Study:
    """Everything in the database, indexed for the report."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker
        self.runs = {r["id"]: r for r in tracker.runs()}
        self.scores: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
        for row in tracker.conn.execute("SELECT run_id, benchmark, name, value, n, ci_low, ci_high FROM scores"
                                        " ORDER BY run_id, benchmark, name"):
            self.scores[row[0]][f"{row[1]}.{row[2]}"] = dict(value=row[3], n=row[4], low=row[5], high=row[6])
        self.members: dict[str, set[int]] = defaultdict(set)
        for run in self.runs.values():
            if run["suite"]:
                self.members[run["suite"]].add(run["id"])
        for run_id, scores in self.scores.items():
            for key in scores:
                if key.startswith(MEMBERSHIP + ".") and run_id in self.runs:
                    self.members[key[len(MEMBERSHIP) + 1:]].add(run_id)
        self.children: dict[int, list[int]] = defaultdict(list)
        for run in self.runs.values():
            if run["parent_id"] is not None:
                self.children[run["parent_id"]].append(run["id"])
        assigned = set().union(*self.members.values()) if self.members else set()
        for suite_ids in list(self.members.values()):
            for run_id in list(suite_ids):
                assigned.update(self.children.get(run_id, []))
        loose = {i for i in self.runs if i not in assigned}
        if loose:
            self.members[NO_SUITE] = loose

    def suites(self) -> list[str]:
        return sorted(self.members, key=lambda s: (s == NO_SUITE, s))

    def score(self, run_id: int, key: str) -> dict[str, Any] | None:
        s = self.scores.get(run_id, {}).get(key)
        return s if s and s["value"] is not None else None


def group_key(config: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in _IDENTITY_KEYS}, sort_keys=True, default=str)


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


def build_rows(study: Study, suite: str) -> tuple[list[Row], list[Row]]:
    """(adapter rows, base rows) of a suite: completed runs only."""
    members = study.members[suite]
    groups: dict[str, Row] = {}
    picked: dict[str, dict[Any, tuple[int, int | None]]] = defaultdict(dict)   # group -> seed -> (train, eval)
    for run_id in sorted(members, reverse=True):
        run = study.runs[run_id]
        if run["kind"] != "train" or run["status"] != "completed":
            continue
        key = group_key(run["config"])
        groups.setdefault(key, Row(suite, "adapter", "", {k: v for k, v in run["config"].items()
                                                          if k not in _IDENTITY_KEYS}))
        seed = run["config"].get("seed")
        if seed not in picked[key]:  # the same config and seed trained twice: the newest counts
            picked[key][seed] = (run_id, pick_eval(study, run_id, members))
    for key, row in groups.items():
        for seed in sorted(picked[key], key=lambda s: (s is None, s if isinstance(s, int) else 0, str(s))):
            train_id, eval_id = picked[key][seed]
            row.seeds.append(seed)
            row.train_ids.append(train_id)
            if eval_id is not None:
                row.eval_ids.append(eval_id)
            add_cells(study, row, train_id, eval_id)
    bases: dict[str, Row] = {}
    for run_id in sorted(members, reverse=True):
        run = study.runs[run_id]
        if run["kind"] != "eval" or run["parent_id"] is not None or run["status"] != "completed":
            continue
        config = {k: v for k, v in run["config"].items() if k not in ("name", "suite")}
        key = json.dumps(config, sort_keys=True, default=str)
        if key in bases:
            continue
        row = Row(suite, "base", "base model", config, eval_ids=[run_id])
        add_cells(study, row, None, run_id)
        bases[key] = row
    adapters = list(groups.values())
    label_rows(adapters)
    base_rows = sorted(bases.values(), key=lambda r: r.eval_ids[0])
    if len(base_rows) > 1:
        varying = [k for k in sorted({k for r in base_rows for k in r.config})
                   if len({json.dumps(r.config.get(k), default=str) for r in base_rows}) > 1
                   and k not in ("adapter",)]
        for r in base_rows:
            shown = [f"{k}={_short(r.config.get(k))}" for k in varying if k in ("quant", "model", "limit", "benchmarks", "seed")]
            r.label = "base model" + (f" ({' '.join(shown)})" if shown else f" (run {r.eval_ids[0]})")
    return adapters, base_rows


def pick_eval(study: Study, train_id: int, members: set[int]) -> int | None:
    done = [i for i in study.children.get(train_id, []) if study.runs[i]["kind"] == "eval"
            and study.runs[i]["status"] == "completed"]
    preferred = [i for i in done if i in members] or done
    return max(preferred) if preferred else None


def add_cells(study: Study, row: Row, train_id: int | None, eval_id: int | None) -> None:
    values: dict[str, dict[str, Any]] = {}
    if train_id is not None:
        for key, s in study.scores.get(train_id, {}).items():
            if key.startswith("train."):
                values[key] = s
        peak = study.score(train_id, "train.peak_gpu_allocated_mb") or study.score(train_id, "train.peak_rss_mb")
        if peak:
            values["train.peak_mb"] = peak
    if eval_id is not None:
        for key, s in study.scores.get(eval_id, {}).items():
            if not key.startswith(MEMBERSHIP + ".") and not key.startswith("train."):
                values[key] = s
    for key, s in values.items():
        if s["value"] is None:
            continue
        row.cells.setdefault(key, Cell()).values.append((s["value"], s["low"], s["high"]))


# ---------------------------------------------------------------------------- analysis

def quality_metric(rows: list[Row], bases: list[Row]) -> tuple[str | None, str]:
    """pass@1 when any config (or the base model) solves something, else chrF; and why."""
    everything = rows + bases
    if any((r.mean("humaneval.pass@1") or 0) > 0 for r in everything):
        return "humaneval.pass@1", "pass@1 on HumanEval"
    for key, name in (("humaneval.chrf", "chrF on HumanEval"), ("heldout.chrf", "chrF on the held-out split")):
        if any(r.get(key) for r in rows):
            has_pass = any(r.get("humaneval.pass@1") for r in everything)
            why = " (pass@1 is 0 for every configuration, so it cannot rank them)" if has_pass else ""
            return key, name + why
    if any(r.get("train.final_val_loss") for r in rows):
        return "train.final_val_loss", "validation loss (lower is better; no evaluation scores)"
    return None, "no quality score"


def better(metric: Metric, a: float, b: float) -> bool:
    return a < b if metric.better == "lower" else a > b


def pareto(rows: list[Row], quality: str, cost: str) -> list[Row]:
    """Rows no other row beats on both quality (higher, or lower for a loss) and cost (lower)."""
    q_metric = _metric_for(quality)
    points = [r for r in rows if r.mean(quality) is not None and r.mean(cost) is not None]
    front = []
    for r in points:
        dominated = False
        for o in points:
            if o is r:
                continue
            q_ok = not better(q_metric, r.mean(quality), o.mean(quality))   # o at least as good
            c_ok = o.mean(cost) <= r.mean(cost)
            strict = better(q_metric, o.mean(quality), r.mean(quality)) or o.mean(cost) < r.mean(cost)
            if q_ok and c_ok and strict:
                dominated = True
                break
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: (r.mean(cost), r.label))


def overlaps(a: Cell | None, b: Cell | None) -> bool | None:
    """True when the intervals (95% CI, or mean ± std over seeds) overlap: not separable from noise.

    None when neither has an interval: nothing to judge noise by."""
    if a is None or b is None:
        return True
    ia, ib = a.interval(), b.interval()
    if ia is None and ib is None:
        return None
    ia = ia or (a.mean, a.mean)
    ib = ib or (b.mean, b.mean)
    return ia[0] <= ib[1] and ib[0] <= ia[1]


def delta_key(quality: str) -> str | None:
    bench, _, name = quality.partition(".")
    return f"{bench}.delta.{name}" if bench in ("humaneval", "heldout") else None


def best_lines(rows: list[Row], bases: list[Row]) -> list[str]:
    lines = []
    keys = sorted({k for r in rows for k in r.cells if k in COST_KEYS or is_quality_key(k)}, key=_column_order)
    for key in keys:
        metric = _metric_for(key)
        if metric.better is None or ".delta." in key:
            continue
        ranked = sorted([r for r in rows if r.get(key)], key=lambda r: (
            -r.mean(key) if metric.better == "higher" else r.mean(key), r.label))
        if not ranked:
            continue
        best = ranked[0]
        ties = [r for r in ranked if r.mean(key) == best.mean(key)]
        value = fmt_cell(best.get(key), metric)
        unit = metric.unit()
        if len(ties) > 1:
            text = f"- **{metric.title}** ({metric.better} is better): tie between " \
                   f"{', '.join(r.label for r in ties)} at {fmt(best.mean(key), metric)}{unit}"
        else:
            text = f"- **{metric.title}** ({metric.better} is better): {best.label} — {value}{unit}"
            if len(ranked) > 1:
                second = ranked[1]
                if overlaps(best.get(key), second.get(key)):
                    text += f"; the runner-up {second.label} ({fmt(second.mean(key), metric)}{unit}) is within noise"
        d = delta_key(key)
        if d and best.get(d):
            cell = best.get(d)
            if not cell.has_ci:
                verdict = "no CI recorded, so whether it is beyond noise is not judged here"
            else:
                verdict = "a real difference (95% CI excludes 0)" if cell.excludes_zero() else "within noise"
            text += (f"; vs the base model {fmt_cell(cell, _metric_for(d), star=False)}"
                     f"{_metric_for(d).unit() and ' pp'}: {verdict}")
        lines.append(text)
    return lines


def _column_order(key: str) -> tuple:
    order = COST_KEYS + QUALITY_FIRST
    if key in order:
        return (0, order.index(key), key)
    bench, _, name = key.partition(".")
    if name.startswith("pass@"):
        return (1, int(re.sub(r"\D", "", name) or 0), key)
    if name.startswith("delta."):
        return (3, 0, key)
    return (2, 0, key)


# ---------------------------------------------------------------------------- markdown

def cost_table(rows: list[Row], bases: list[Row]) -> str:
    keys = [k for k in COST_KEYS if any(r.get(k) for r in rows + bases)]
    headers = ["config", "seeds"] + [_metric_for(k).title for k in keys]
    body = []
    for r in bases + rows:
        cells = []
        for k in keys:
            if k == "train.trainable_params" and r.get(k):
                pct = r.get("train.trainable_pct")
                cells.append(fmt(r.mean(k), _metric_for(k)) + (f" ({pct.mean:.3f}%)" if pct else ""))
            else:
                cells.append(fmt_cell(r.get(k), _metric_for(k)))
        body.append([r.label, seeds_text(r)] + cells)
    return md_table(headers, body)


_QUALITY_NAME = re.compile(r"(delta\.)?(pass@\d+|syntax_ok|bleu|chrf|perplexity)$")


def is_quality_key(key: str) -> bool:
    """Quality columns: val loss, and per benchmark pass@k, syntax_ok, BLEU, chrF, perplexity and their deltas."""
    bench, _, name = key.partition(".")
    if bench == "train":
        return name == "final_val_loss"
    return bench != MEMBERSHIP and bool(_QUALITY_NAME.match(name)) and not (name == "delta.bleu")


def quality_keys(rows: list[Row], bases: list[Row]) -> list[str]:
    present = {k for r in rows + bases for k in r.cells if r.get(k)}
    return sorted((k for k in present if is_quality_key(k)), key=_column_order)


def quality_table(rows: list[Row], bases: list[Row]) -> str:
    keys = quality_keys(rows, bases)
    headers = ["config", "seeds"] + [_metric_for(k).title + (f" ({_metric_for(k).unit()})" if _metric_for(k).percent
                                                              and "%" not in _metric_for(k).title else "")
                                     for k in keys]
    body = [[r.label, seeds_text(r)] + [fmt_cell(r.get(k), _metric_for(k)) for k in keys] for r in bases + rows]
    return md_table(headers, body)


def seeds_text(row: Row) -> str:
    if row.kind == "base":
        return "—"
    seeds = [str(s) for s in row.seeds if s is not None]
    return f"{len(row.seeds)} ({','.join(seeds)})" if len(row.seeds) > 1 else (seeds[0] if seeds else "1")


def failure_table(study: Study, suite: str) -> list[list[str]]:
    body = []
    for run_id in sorted(study.members[suite]):
        run = study.runs[run_id]
        if run["status"] == "completed":
            continue
        done = [r["id"] for r in study.runs.values() if r["name"] == run["name"] and r["kind"] == run["kind"]
                and r["status"] == "completed"]
        error = " ".join((run["error"] or "").split())
        body.append([str(run_id), run["kind"], run["name"], run["status"], error[:160] or "—",
                     compact_ids(done) if done else "—"])
    return body


def environment_lines(study: Study, run_ids: list[int]) -> list[str]:
    combos: dict[str, list[int]] = defaultdict(list)
    for run_id in run_ids:
        run = study.runs[run_id]
        hw = run["hardware"] or {}
        hardware = ", ".join(x for x in [
            f"GPU {hw['gpu']} x{hw.get('gpu_count', 1)} ({hw.get('gpu_memory_gb')} GB)" if hw.get("gpu") else "",
            f"CPU {hw.get('cpu', '?')} ({hw.get('cpu_count', '?')} cores, {hw.get('memory_gb', '?')} GB RAM)",
            hw.get("platform", "")] if x)
        versions = ", ".join(f"{k} {v}" for k, v in sorted((run["versions"] or {}).items()))
        key = f"git {run['git_commit'] or 'unknown'}; {hardware}; {versions or 'versions unknown'}"
        combos[key].append(run_id)
    return [f"- runs {compact_ids(ids)}: {key}" for key, ids in sorted(combos.items(), key=lambda kv: min(kv[1]))]


def examples_section(study: Study, rows: list[Row], bases: list[Row], quality: str | None, n: int = 3) -> list[str]:
    if not rows or not bases or quality is None:
        return []
    metric = _metric_for(quality)
    scored = [r for r in rows if r.mean(quality) is not None and r.eval_ids]
    if not scored:
        return []
    best = sorted(scored, key=lambda r: (-r.mean(quality) if metric.better != "lower" else r.mean(quality),
                                         r.label))[0]
    adapter_eval = best.eval_ids[-1]
    base_eval = matching_base(study, adapter_eval, bases)
    adapter = {(s["benchmark"], s["task_id"]): s for s in study.tracker.samples(adapter_eval) if s["sample_index"] == 0}
    base = {(s["benchmark"], s["task_id"]): s for s in study.tracker.samples(base_eval) if s["sample_index"] == 0}
    common = sorted(set(adapter) & set(base), key=lambda k: (k[0] != "humaneval", k[0], _natural(k[1])))
    if not common:
        return []

    def passed(s):
        return str(s.get("result") or "").lower().startswith("pass")

    def kind(k) -> int:
        a, b = adapter[k], base[k]
        if passed(a) != passed(b):
            return 0 if passed(a) else 1
        return 2 if a["generation"] != b["generation"] else 3

    # Outcomes that differ first (fixed, then broken), then one HumanEval problem both fail on, which
    # shows what the adapter typically gets wrong, then one held-out example next to its reference.
    ranked = sorted(common, key=kind)
    picked = [k for k in ranked if kind(k) < 2][:n]
    picked += [k for k in ranked if kind(k) == 2 and k[0] == "humaneval"][:1]
    picked += [k for k in ranked if k[0] != "humaneval" and k not in picked][:1]
    out = [f"Base model (eval run {base_eval}) against the best configuration by {metric.title}, "
           f"{best.label} (eval run {adapter_eval}): up to {n} problems where the outcome differs, one HumanEval "
           "problem both fail, one held-out example.", ""]
    for key in picked:
        a, b = adapter[key], base[key]
        out += [f"#### {key[0]} {key[1]}", "",
                f"Result: base **{b.get('result') or '—'}**, adapter **{a.get('result') or '—'}**", "",
                "Prompt:", "", _block(a.get("prompt") or b.get("prompt") or "", tail=True), "",
                "Base model output:", "", _block(b.get("generation") or ""), "",
                f"Adapter output ({best.label}):", "", _block(a.get("generation") or ""), ""]
        if a.get("reference") and not passed(a):
            out += ["Reference:", "", _block(a["reference"]), ""]
    return out


def _natural(text: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text))


def _block(text: str, tail: bool = False, max_lines: int = 20) -> str:
    lines = text.rstrip("\n").splitlines() or [""]
    if len(lines) > max_lines:
        lines = (["..."] + lines[-max_lines:]) if tail else (lines[:max_lines] + ["..."])
    return "````python\n" + "\n".join(line.replace("````", "` ` ` `") for line in lines) + "\n````"


def matching_base(study: Study, eval_id: int, bases: list[Row]) -> int:
    config = study.runs[eval_id]["config"]
    keys = ("model", "quant", "benchmarks", "benchmark", "limit", "n_samples", "temperature", "max_new_tokens")

    def score(row: Row) -> tuple:
        return (sum(row.config.get(k) == config.get(k) for k in keys if k in config), row.eval_ids[0])
    return max(bases, key=score).eval_ids[0]


def recommendation_lines(rows: list[Row], quality: str, quality_name: str) -> list[str]:
    metric = _metric_for(quality)
    front = pareto(rows, quality, "train.peak_mb")
    if not front:
        return []
    budgets = sorted({nice_budget(r.mean("train.peak_mb")) for r in front})
    lines = [f"Budgets are the measured peak memories rounded up; each names the best configuration by "
             f"{quality_name.split(' (')[0]} whose peak fits.", ""]
    lines.append(f"- below {budgets[0][1]}: none of the measured configurations fits")
    previous = None
    for limit, text in budgets:
        fits = [r for r in front if r.mean("train.peak_mb") <= limit + 1e-9]
        pick = sorted(fits, key=lambda r: (-r.mean(quality) if metric.better != "lower" else r.mean(quality),
                                           r.mean("train.peak_mb"), r.label))[0]
        if previous is pick:
            continue
        line = (f"- up to {text}: **{pick.label}** — {metric.title} {fmt_cell(pick.get(quality), metric)}"
                f"{metric.unit()}, peak {fmt(pick.mean('train.peak_mb'), _metric_for('train.peak_mb'))} MB")
        if previous is not None:
            verdict = overlaps(pick.get(quality), previous.get(quality))
            if verdict is None:
                line += f"; no CI, so whether it beats {previous.label} beyond noise is unknown"
            elif verdict:
                line += (f"; its {metric.title} is within noise of {previous.label} (intervals overlap), "
                         f"so the extra memory buys no measurable gain")
            else:
                line += f"; clearly better than {previous.label} (intervals do not overlap)"
        lines.append(line)
        previous = pick
    return lines


def suite_section(study: Study, suite: str, out: Path, figures: bool) -> tuple[list[str], list[Row]]:
    rows, bases = build_rows(study, suite)
    lines = [f"## Suite `{suite}`", ""]
    failures = failure_table(study, suite)
    if not rows and not bases:
        lines += ["No completed runs in this suite.", ""]
    else:
        n_seeds = max((len(r.seeds) for r in rows), default=0)
        lines += [f"{len(rows)} trained configuration(s)" + (f", up to {n_seeds} seeds each (mean ± sample std "
                                                            f"across seeds)" if n_seeds > 1 else "")
                  + f", {len(bases)} base-model evaluation(s). Values in brackets are 95% CIs; "
                  "Δ columns are paired differences against the base model, marked * only when the CI excludes 0 "
                  "(otherwise the difference is within noise). Δ chrF is the mean per-problem (sentence) chrF difference, "
                  "so it need not equal the difference of the corpus chrF columns; Δ perplexity has no CI.", ""]
        lines += ["### Cost", "", cost_table(rows, bases), "",
                  "Peak memory: torch max allocated on GPU runs, peak process RSS on CPU runs. "
                  "Train time is wall-clock including evaluation during training.", ""]
        lines += ["### Quality", "", quality_table(rows, bases), ""]
        quality, quality_name = quality_metric(rows, bases)
        best = best_lines(rows, bases)
        if best:
            lines += ["### Best configuration per metric", "", *best, ""]
        if quality and rows:
            lines += ["### Pareto front", "", f"Quality = {quality_name}.", ""]
            metric = _metric_for(quality)
            for cost, cost_name in (("train.peak_mb", "peak memory"), ("train.wall_seconds", "train time")):
                front = pareto(rows, quality, cost)
                if front:
                    lines.append(f"- vs {cost_name}: " + "; ".join(
                        f"{r.label} ({metric.title} {fmt(r.mean(quality), metric)}{metric.unit()}, "
                        f"{fmt(r.mean(cost), _metric_for(cost))} {'MB' if cost.endswith('mb') else 's'})"
                        for r in front))
            lines.append("")
            recommendation = recommendation_lines(rows, quality, quality_name)
            if recommendation:
                lines += ["### Recommendation by memory budget", "", *recommendation, ""]
        examples = examples_section(study, rows, bases, quality)
        if examples:
            lines += ["### Before and after", "", *examples]
        if figures:
            written = write_figures(study, suite, rows, bases, quality, quality_name, out)
            if written:
                lines += ["### Figures", ""] + [f"![{title}]({path.name})" for title, path in written] + [""]
    if failures:
        lines += ["### Failed, interrupted and running runs", "",
                  md_table(["id", "kind", "name", "status", "error", "completed run(s) of that name"], failures), ""]
    env_ids = sorted(i for i in study.members[suite] if study.runs[i]["status"] == "completed")
    if env_ids:
        lines += ["### Environment", "", *environment_lines(study, env_ids), ""]
    return lines, bases + rows


# ---------------------------------------------------------------------------- figures

def axis_label(metric: Metric) -> str:
    """An axis label with its unit: `pass@1 (%)`, `chrF (0-100)`, `perplexity (per token)`."""
    name = metric.title.replace(" %", "")
    base, _, where = name.partition(" (")
    where = f" {where.rstrip(')')}" if where else ""
    unit = ("%" if metric.percent else "0-100" if base in ("chrF", "BLEU") else
            "per token" if base == "perplexity" else "")
    return f"{base}{where}" + (f" ({unit})" if unit else "")


def write_figures(study: Study, suite: str, rows: list[Row], bases: list[Row], quality: str | None,
                  quality_name: str, out: Path) -> list[tuple[str, Path]]:
    from common import plots
    stem = safe_name(suite)
    written: list[tuple[str, Path]] = []
    labels = [r.label for r in rows]
    curves = {}
    for r in rows:
        for seed, train_id in zip(r.seeds, r.train_ids):
            metrics = study.tracker.metrics(train_id)
            name = r.label + (f" s{seed}" if len(r.seeds) > 1 else "")
            curves[name] = {k: [(m["step"], m["value"]) for m in metrics if m["name"] == k and m["value"] is not None]
                            for k in ("loss", "val_loss")}
    if any(c["loss"] or c["val_loss"] for c in curves.values()):
        written.append(("loss curves", plots.loss_curves(out / f"{stem}_loss.png", f"{suite}: loss curves", curves)))

    def err(cell: Cell | None, scale: float) -> tuple[float, float] | None:
        if cell is None:
            return None
        if cell.ci:
            return max(0.0, (cell.mean - cell.ci[0]) * scale), max(0.0, (cell.ci[1] - cell.mean) * scale)
        if cell.std is not None:
            return cell.std * scale, cell.std * scale
        return None

    panels = {}
    baseline = {}
    for key in [k for k in ("humaneval.pass@1", "humaneval.chrf", "humaneval.syntax_ok", "heldout.chrf",
                            "heldout.perplexity") if any(r.get(k) for r in rows)]:
        metric = _metric_for(key)
        scale = 100.0 if metric.percent else 1.0
        panels[metric.title] = (axis_label(metric),
                                [None if r.mean(key) is None else r.mean(key) * scale for r in rows],
                                [err(r.get(key), scale) for r in rows])
        b = next((x.mean(key) for x in bases if x.get(key)), None)
        baseline[metric.title] = None if b is None else b * scale
    if panels and rows:
        written.append(("quality with 95% CIs", plots.metric_bars(out / f"{stem}_quality.png",
                                                                 f"{suite}: quality (error bars: 95% CI or ±1 std)",
                                                                 labels, panels, baseline)))
    if quality and rows:
        metric = _metric_for(quality)
        scale = 100.0 if metric.percent else 1.0
        qlabel = axis_label(metric)
        ranked = [r for r in rows if isinstance(r.config.get("rank"), int)]
        others = {json.dumps({k: v for k, v in r.config.items() if k not in ("rank", "alpha")}, sort_keys=True,
                             default=str) for r in ranked}
        if len({r.config["rank"] for r in ranked}) > 1 and len(others) == 1:
            ranked.sort(key=lambda r: r.config["rank"])
            written.append(("rank vs quality and memory", plots.rank_plot(
                out / f"{stem}_rank.png", f"{suite}: LoRA rank", [r.config["rank"] for r in ranked],
                [None if r.mean(quality) is None else r.mean(quality) * scale for r in ranked],
                [err(r.get(quality), scale) for r in ranked], qlabel, [r.mean("train.peak_mb") for r in ranked])))
        pts = [r for r in rows if r.mean(quality) is not None]
        costs = {}
        for cost, name, unit in (("train.peak_mb", "peak memory", "peak memory (MB)"),
                                 ("train.wall_seconds", "train time", "train time (s)")):
            usable = [r for r in pts if r.mean(cost) is not None]
            if len(usable) == len(pts) and pts:
                front = pareto(pts, quality, cost)
                costs[name] = (unit, [r.mean(cost) for r in pts], {pts.index(r) for r in front})
        if costs:
            written.append(("efficiency frontier", plots.frontier(
                out / f"{stem}_frontier.png", f"{suite}: quality vs cost (Pareto front starred)",
                [r.label for r in pts], [r.mean(quality) * scale for r in pts], qlabel, costs)))
    if rows and any(r.get("train.wall_seconds") for r in rows):
        written.append(("train time and throughput", plots.bars(
            out / f"{stem}_train_cost.png", f"{suite}: training cost", labels,
            {"train time": ("wall-clock time (s)", [r.mean("train.wall_seconds") for r in rows]),
             "train throughput": ("tokens per second (tok/s)", [r.mean("train.train_tokens_per_s") for r in rows])})))
    latency_rows = bases + rows
    if any(r.get("humaneval.seconds_per_problem") for r in latency_rows):
        written.append(("generation latency", plots.bars(
            out / f"{stem}_latency.png", f"{suite}: generation latency on HumanEval",
            [r.label for r in latency_rows],
            {"latency": ("seconds per problem (s)", [r.mean("humaneval.seconds_per_problem") for r in latency_rows])})))
    if rows and any(r.get("train.adapter_mb") for r in rows):
        written.append(("adapter size", plots.bars(
            out / f"{stem}_adapter_size.png", f"{suite}: adapter size on disk", labels,
            {"adapter size": ("adapter file size (MB)", [r.mean("train.adapter_mb") for r in rows])})))
    return written


# ---------------------------------------------------------------------------- outputs

def comparison_records(rows: list[Row]) -> list[dict[str, Any]]:
    records = []
    for r in rows:
        rec: dict[str, Any] = {"suite": r.suite, "config": r.label, "kind": r.kind, "n_seeds": len(r.seeds),
                               "seeds": ",".join(str(s) for s in r.seeds), "train_run_ids": compact_ids(r.train_ids),
                               "eval_run_ids": compact_ids(r.eval_ids)}
        for key in sorted(r.cells, key=_column_order):
            cell = r.get(key)
            if cell is None or not (key in COST_KEYS or key == "train.trainable_pct" or is_quality_key(key)):
                continue
            rec[key] = cell.mean
            if cell.std is not None:
                rec[f"{key}.std"] = cell.std
            if cell.ci:
                rec[f"{key}.ci_low"], rec[f"{key}.ci_high"] = cell.ci
        records.append(rec)
    return records


def write_comparison(records: list[dict[str, Any]], out: Path) -> None:
    import csv
    columns: list[str] = []
    for rec in records:
        columns += [k for k in rec if k not in columns]
    fixed = ["suite", "config", "kind", "n_seeds", "seeds", "train_run_ids", "eval_run_ids"]
    suffixes = ("", ".std", ".ci_low", ".ci_high")
    metrics = sorted({c.rsplit(".", 1)[0] if c.endswith(suffixes[1:]) else c for c in columns if c not in fixed},
                     key=_column_order)
    columns = fixed + [m + suffix for m in metrics for suffix in suffixes if m + suffix in columns]
    with open(out / "model_comparison.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for rec in records:
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in rec.items()})
    (out / "model_comparison.json").write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")


def write_report(study: Study, suites: list[str], out: Path, db_name: str, figures: bool = True) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# LoRA / QLoRA study results", "",
             f"Generated by report.py from `{db_name}`: {len(study.runs)} run(s) in the database, "
             f"suite(s) {', '.join(f'`{s}`' for s in suites)}.", ""]
    all_rows: list[Row] = []
    completed = 0
    for suite in suites:
        section, rows = suite_section(study, suite, out, figures)
        lines += section
        all_rows += rows
        completed += sum(1 for r in rows if r.kind == "adapter")
    text = "\n".join(lines).rstrip("\n") + "\n"
    (out / "RESULTS.md").write_text(text)
    write_comparison(comparison_records(all_rows), out)
    return {"rows": len(all_rows), "configs": completed}


def list_runs(study: Study, suite: str | None, status: str | None) -> str:
    ids = sorted(study.members.get(suite, set())) if suite else sorted(study.runs)
    memberships: dict[int, list[str]] = defaultdict(list)
    for s in study.suites():
        for i in study.members[s]:
            memberships[i].append(s)
    body = []
    for run_id in ids:
        run = study.runs[run_id]
        if status and run["status"] != status:
            continue
        c = run["config"]
        if run["kind"] == "train":
            key_config = f"r{c.get('rank')} {c.get('modules')} {c.get('quant')} s{c.get('seed')}"
            scores = [("val", "train.final_val_loss", 3), ("peak MB", "train.peak_rss_mb", 0),
                      ("GPU MB", "train.peak_gpu_allocated_mb", 0)]
        else:
            key_config = f"{'adapter of run ' + str(run['parent_id']) if run['parent_id'] else 'base model'}"
            scores = [("pass@1", "humaneval.pass@1", 3), ("chrF", "humaneval.chrf", 1),
                      ("ppl", "heldout.perplexity", 2)]
        shown = " ".join(f"{label} {study.score(run_id, key)['value']:.{d}f}" for label, key, d in scores
                         if study.score(run_id, key))
        started = datetime.fromtimestamp(run["started_at"], timezone.utc).strftime("%Y-%m-%d %H:%M")
        body.append([run_id, run["name"], ",".join(sorted(memberships.get(run_id, []))), run["kind"], run["status"],
                     started, key_config, shown or "—"])
    from tabulate import tabulate
    return tabulate(body, headers=["id", "name", "suite", "kind", "status", "started (UTC)", "config", "scores"],
                    tablefmt="github")


def main(argv: list[str] | None = None) -> int:
    args = parse_config(ReportConfig, argv, __doc__.split("\n\n")[0])
    if not Path(args.db).is_file():
        raise UserError(f"no database at {args.db}; run sweep.py (or train.py/evaluate.py) first, or pass --db")
    study = Study(Tracker(args.db))
    if args.suite and args.suite not in study.members:
        known = ", ".join(study.suites()) or "none"
        print(f"no runs in suite {args.suite!r} in {args.db} (suites: {known})", file=sys.stderr)
        return 1
    if args.export:
        out = Path(args.output_dir or f"reports/runs.{args.export}")
        if out.suffix != f".{args.export}":
            out = out / f"runs.{args.export}"
        out.parent.mkdir(parents=True, exist_ok=True)
        ids = sorted(study.members[args.suite]) if args.suite else None
        study.tracker.export(out, ids)
        print(f"wrote {len(ids) if ids is not None else len(study.runs)} run(s) to {out}")
        return 0
    if args.list:
        if not study.runs:
            print(f"no runs in {args.db} yet", file=sys.stderr)
            return 0
        print(list_runs(study, args.suite, args.status))
        return 0
    if not study.runs:
        print(f"no runs in {args.db} yet: run sweep.py (or train.py and evaluate.py) first", file=sys.stderr)
        return 1
    suites = [args.suite] if args.suite else study.suites()
    out = Path(args.output_dir or "reports")
    summary = write_report(study, suites, out, Path(args.db).name, figures=args.figures)
    if summary["configs"] == 0 and summary["rows"] == 0:
        print(f"no completed runs in {', '.join(suites)}; {out / 'RESULTS.md'} lists the failed and interrupted ones",
              file=sys.stderr)
        return 1
    print(f"wrote {out / 'RESULTS.md'}, model_comparison.csv/.json and figures for {len(suites)} suite(s)")
    return 0


if __name__ == "__main__":
    run_cli(main)

"""report.py on a database built by hand with the Tracker: tables, deltas, recommendations, determinism, figures.

No model is loaded: every number here is written by the test, so the expected text is known.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import report
from common.tracker import Tracker

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def train_run(db: Tracker, suite: str, rank: int, quant: str, seed: int, *, peak: float, seconds: float,
              status: str = "completed", error: str | None = None) -> int:
    name = f"r{rank}-qkvo-{quant}-s{seed}"
    config = {"model": "tiny", "rank": rank, "modules": "qkvo", "quant": quant, "seed": seed, "alpha": 2 * rank,
              "max_steps": 4, "name": name, "output_dir": f"runs/{name}", "suite": suite,
              "train_examples": 100 - seed, "val_examples": 10 + seed}  # train.py records the split's sizes
    run = db.start_run(name, "train", config, suite=suite, output_dir=f"runs/{name}",
                       environment={"git_commit": "abc123", "versions": {"torch": "2.13.0", "peft": "0.21.2"},
                                    "hardware": {"cpu": "Test CPU", "cpu_count": 2, "memory_gb": 24.0}})
    for step in range(1, 5):
        db.log_metrics(run, step, {"loss": 2.0 - 0.1 * step - 0.01 * rank, "lr": 1e-4})
    db.log_metrics(run, 4, {"val_loss": 1.7 - 0.01 * rank})
    if status == "completed":
        db.log_scores(run, "train", {"trainable_params": 1000 * rank, "trainable_pct": 0.01 * rank,
                                     "total_params": 1_000_000, "adapter_mb": 0.1 * rank, "peak_rss_mb": peak,
                                     "wall_seconds": seconds, "train_tokens_per_s": 5000 / seconds,
                                     "final_val_loss": 1.7 - 0.01 * rank, "best_val_loss": 1.7 - 0.01 * rank})
    db.finish_run(run, status, error=error)
    return run


def eval_run(db: Tracker, suite: str, parent: int | None, name: str, pass1: tuple, chrf: float,
             delta: tuple | None = None, quant: str = "16bit", outputs: dict | None = None,
             status: str = "completed") -> int:
    config = {"model": "tiny", "adapter": None if parent is None else f"runs/{name}", "quant": quant,
              "benchmarks": ["humaneval", "heldout"], "limit": 3, "n_samples": 1, "temperature": 0.0,
              "max_new_tokens": 8}
    run = db.start_run(name, "eval", config, suite=suite, parent_id=parent,
                       environment={"git_commit": "abc123", "versions": {"torch": "2.13.0"},
                                    "hardware": {"cpu": "Test CPU", "cpu_count": 2, "memory_gb": 24.0}})
    scores = {"pass@1": (pass1[0], 3, pass1[1], pass1[2]), "chrf": (chrf, 3, chrf - 5, chrf + 5),
              "bleu": (chrf / 2, 3, chrf / 2 - 3, chrf / 2 + 3), "syntax_ok": (1.0, 3, 1.0, 1.0),
              "seconds_per_problem": 1.5, "tokens_per_s": 20.0, "fail.failed": (2, 3, None, None),
              "error.AssertionError": (2, 3, None, None)}
    if delta:
        scores["delta.pass@1"] = (delta[0], 3, delta[1], delta[2])
        scores["delta.chrf"] = (1.0, 3, -2.0, 4.0)
        scores["base_run_id"] = 1
    db.log_scores(run, "humaneval", scores)
    heldout = {"perplexity": 3.0 + chrf / 100, "nll": 1.1, "chrf": chrf + 1}
    if delta:
        heldout["delta.perplexity"] = -0.5  # evaluate.py records it without a CI
    db.log_scores(run, "heldout", heldout)
    outputs = outputs or {}
    db.log_samples(run, "humaneval", [
        {"task_id": f"HumanEval/{i}", "prompt": f"def f{i}(x):\n    \"\"\"Doc {i}.\"\"\"\n",
         "generation": outputs.get(i, ("    return x\n", "failed"))[0], "reference": "    return x + 1\n",
         "result": outputs.get(i, ("", "failed"))[1]} for i in range(3)])
    db.log_samples(run, "heldout", [{"task_id": "stdlib/textwrap.indent", "prompt": "def indent(text):\n",
                                     "generation": "" if parent is None else "    return '  ' + text\n",
                                     "reference": "    return ''.join('  ' + line for line in text)\n"}])
    db.finish_run(run, status)
    return run


def build_study(path: Path) -> dict:
    """Suite rank: r4, r8, r16 (two seeds), a failed r32, an interrupted eval; suite quant shares r16 (by membership)."""
    db = Tracker(path)
    ids = {}
    ids["base"] = eval_run(db, "rank", None, "base-16bit-eval", (0.08, 0.03, 0.13), 20.0,
                           outputs={0: ("    return x\n", "failed")})
    r4 = train_run(db, "rank", 4, "16bit", 0, peak=1000, seconds=100)
    eval_run(db, "rank", r4, "r4-eval", (0.10, 0.05, 0.15), 30.0, delta=(0.02, -0.03, 0.07))
    r8 = train_run(db, "rank", 8, "16bit", 0, peak=1100, seconds=110)
    eval_run(db, "rank", r8, "r8-eval", (0.20, 0.16, 0.24), 35.0, delta=(0.12, 0.06, 0.18),
             outputs={0: ("    return x + 1\n", "passed"), 2: ("    return x - 1\n", "failed")})
    r16 = [train_run(db, "rank", 16, "16bit", s, peak=1500 + 20 * s, seconds=150 + 10 * s) for s in (0, 1)]
    r16_evals = [eval_run(db, "rank", r, f"r16-s{s}-eval", (p, p - 0.05, p + 0.05), 34.0 + s,
                          delta=(p - 0.08, p - 0.08 - 0.06, p - 0.08 + 0.06))
                 for s, (r, p) in enumerate(zip(r16, (0.18, 0.20)))]
    ids["failed"] = train_run(db, "rank", 32, "16bit", 0, peak=0, seconds=0, status="failed",
                              error="RuntimeError: CUDA out of memory")
    ids["interrupted"] = eval_run(db, "rank", r4, "r4-eval", (0.0, 0.0, 0.0), 0.0, status="interrupted")
    # quant suite: a 4-bit run of its own, and the shared rank-16 16bit config recorded as a member.
    q4 = train_run(db, "quant", 16, "4bit", 0, peak=700, seconds=200)
    eval_run(db, "quant", q4, "q4-eval", (0.09, 0.04, 0.14), 28.0, delta=(0.01, -0.04, 0.06), quant="4bit")
    for run_id in r16 + r16_evals + [ids["base"]]:
        db.log_scores(run_id, "suite", {"quant": 1, "rank": 1})
    db.close()
    ids.update(r4=r4, r8=r8, r16=r16, q4=q4)
    return ids


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    path = tmp_path_factory.mktemp("study") / "study.db"
    ids = build_study(path)
    return path, ids


@pytest.fixture(scope="module")
def written(study, tmp_path_factory):
    path, ids = study
    out = tmp_path_factory.mktemp("report")
    assert report.main(["--db", str(path), "--out", str(out)]) == 0
    return out, (out / "RESULTS.md").read_text(), ids


def section(text: str, suite: str) -> str:
    start = text.index(f"## Suite `{suite}`")
    end = text.find("\n## Suite ", start + 1)
    return text[start:end if end != -1 else None]


def table_row(text: str, label: str, table: str) -> str:
    part = text[text.index(f"### {table}"):]
    return next(line for line in part.splitlines() if line.startswith(f"| {label} "))


def test_tables_have_every_config_the_baseline_and_seed_aggregates(written):
    _, text, _ = written
    rank = section(text, "rank")
    for label in ("base model", "rank=4", "rank=8", "rank=16"):
        assert table_row(rank, label, "Quality")
        assert table_row(rank, label, "Cost")
    r16 = table_row(rank, "rank=16", "Quality")
    assert "2 (0,1)" in r16 and "19.0 ± 1.4" in r16          # pass@1 mean ± std over the two seeds, in %
    r8 = table_row(rank, "rank=8", "Quality")
    assert "20.0 [16.0, 24.0]" in r8                           # pass@1 with its 95% CI
    cost = table_row(rank, "rank=8", "Cost")
    assert "8,000 (0.080%)" in cost and "1100" in cost and "110.0" in cost


def test_deltas_are_marked_only_when_the_ci_excludes_zero(written):
    _, text, _ = written
    rank = section(text, "rank")
    assert "+12.0 [+6.0, +18.0] *" in table_row(rank, "rank=8", "Quality")
    r4 = table_row(rank, "rank=4", "Quality")
    assert "+2.0 [-3.0, +7.0]" in r4 and "*" not in r4
    # Two seeds, both CIs above 0: marked.
    assert "+11.0 ± 1.4 *" in table_row(rank, "rank=16", "Quality")
    best = rank[rank.index("### Best configuration"):rank.index("### Pareto")]
    pass_line = next(line for line in best.splitlines() if line.startswith("- **pass@1**"))
    assert "rank=8" in pass_line and "a real difference" in pass_line
    assert "runner-up rank=16" in pass_line and "within noise" in pass_line
    chrf_line = next(line for line in best.splitlines() if line.startswith("- **chrF**"))
    assert "within noise" in chrf_line and "real difference" not in chrf_line
    ppl_line = next(line for line in best.splitlines() if line.startswith("- **perplexity (heldout)**"))
    assert "-0.50: no CI recorded" in ppl_line and "within noise" not in ppl_line


def test_pareto_front_and_memory_budget_recommendation(written):
    _, text, _ = written
    rank = section(text, "rank")
    assert "Quality = pass@1 on HumanEval." in rank
    front = next(line for line in rank.splitlines() if line.startswith("- vs peak memory:"))
    assert "rank=4" in front and "rank=8" in front and "rank=16" not in front
    assert "- below 1000 MB: none of the measured configurations fits" in rank
    assert "- up to 1000 MB: **rank=4**" in rank
    line = next(line for line in rank.splitlines() if line.startswith("- up to 1.1 GB: **rank=8**"))
    assert "clearly better than rank=4" in line


def test_shared_config_appears_in_both_suites(written):
    _, text, ids = written
    quant = section(text, "quant")
    assert table_row(quant, "quant=4bit", "Quality")
    assert "2 (0,1)" in table_row(quant, "quant=16bit", "Quality")  # the rank suite's r16 runs, shared
    # Recommendation by memory: 4-bit fits the smallest budget.
    assert "- up to 700 MB: **quant=4bit**" in quant


def test_failed_and_interrupted_runs_are_listed(written):
    _, text, ids = written
    rank = section(text, "rank")
    failures = rank[rank.index("### Failed, interrupted"):]
    assert f"| {ids['failed']} " in failures and "CUDA out of memory" in failures
    interrupted = next(line for line in failures.splitlines() if line.startswith(f"| {ids['interrupted']} "))
    assert "interrupted" in interrupted and f"| {ids['r4'] + 1} " in interrupted  # its completed namesake


def test_before_after_examples_and_environment(written):
    _, text, _ = written
    rank = section(text, "rank")
    examples = rank[rank.index("### Before and after"):]
    # The problem the best adapter solves and the base does not comes first.
    first = examples.index("#### humaneval HumanEval/0")
    assert first < examples.index("#### humaneval HumanEval/2")
    assert "Result: base **failed**, adapter **passed**" in examples
    assert "return x + 1" in examples
    # Then a problem both fail with different outputs (with the reference), not one where nothing changed.
    assert "#### humaneval HumanEval/2" in examples and "return x - 1" in examples
    assert "#### humaneval HumanEval/1" not in examples
    failed_both = examples[examples.index("#### humaneval HumanEval/2"):examples.index("#### heldout")]
    assert "Reference:" in failed_both
    # Then a held-out example, the adapter's output next to the reference.
    heldout = examples[examples.index("#### heldout stdlib/textwrap.indent"):]
    assert "return '  ' + text" in heldout and "Reference:" in heldout and "''.join(" in heldout
    assert "git abc123" in rank and "Test CPU" in rank and "torch 2.13.0" in rank


def test_comparison_files_have_the_table_rows(written):
    out, _, ids = written
    rows = json.loads((out / "model_comparison.json").read_text())
    labels = {(r["suite"], r["config"]) for r in rows}
    assert {("rank", "rank=4"), ("rank", "rank=8"), ("rank", "rank=16"), ("rank", "base model"),
            ("quant", "quant=4bit"), ("quant", "quant=16bit")} <= labels
    r16 = next(r for r in rows if r["suite"] == "rank" and r["config"] == "rank=16")
    assert r16["n_seeds"] == 2 and r16["humaneval.pass@1"] == pytest.approx(0.19)
    assert r16["humaneval.pass@1.std"] == pytest.approx(0.01414, abs=1e-4)
    csv_text = (out / "model_comparison.csv").read_text().splitlines()
    assert csv_text[0].startswith("suite,config,kind,n_seeds")
    assert len(csv_text) == 1 + len(rows)


def test_figures_are_valid_pngs(written):
    import matplotlib.image

    out, text, _ = written
    names = ["rank_loss.png", "rank_quality.png", "rank_rank.png", "rank_frontier.png", "rank_train_cost.png",
             "rank_latency.png", "rank_adapter_size.png", "quant_frontier.png"]
    for name in names:
        path = out / name
        assert path.read_bytes()[:8] == PNG_MAGIC, name
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert f"]({name})" in text


def test_same_database_gives_identical_bytes(study, written, tmp_path):
    path, _ = study
    first_out, first_text, _ = written
    assert report.main(["--db", str(path), "--out", str(tmp_path), "--no-figures"]) == 0
    # Figures are embedded only when written, so compare with a second full run too.
    assert report.main(["--db", str(path), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "RESULTS.md").read_bytes() == first_text.encode()
    for name in ("model_comparison.csv", "model_comparison.json"):
        assert (tmp_path / "again" / name).read_bytes() == (first_out / name).read_bytes()


def test_suite_filter(study, tmp_path):
    path, _ = study
    assert report.main(["--db", str(path), "--out", str(tmp_path), "--suite", "quant", "--no-figures"]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## Suite `quant`" in text and "## Suite `rank`" not in text


def test_empty_database_and_unknown_suite_give_a_message_not_a_traceback(tmp_path, study):
    empty = tmp_path / "empty.db"
    Tracker(empty).close()
    done = subprocess.run([sys.executable, str(ROOT / "report.py"), "--db", str(empty), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "no runs in" in done.stderr and "Traceback" not in done.stderr
    missing = subprocess.run([sys.executable, str(ROOT / "report.py"), "--db", str(tmp_path / "nope.db")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.startswith("error: no database at")
    assert not (tmp_path / "nope.db").exists()
    path, _ = study
    assert report.main(["--db", str(path), "--suite", "nope"]) == 1


def test_suite_with_only_failed_runs(tmp_path, capsys):
    db = Tracker(tmp_path / "f.db")
    train_run(db, "broken", 4, "16bit", 0, peak=0, seconds=0, status="failed", error="ValueError: bad")
    db.close()
    assert report.main(["--db", str(tmp_path / "f.db"), "--out", str(tmp_path / "out")]) == 1
    assert "no completed runs" in capsys.readouterr().err
    text = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "No completed runs in this suite." in text and "ValueError: bad" in text


def test_list_and_export(study, tmp_path, capsys):
    path, ids = study
    assert report.main(["--db", str(path), "--list"]) == 0
    listing = capsys.readouterr().out
    assert "r8-qkvo-16bit-s0" in listing and "completed" in listing and "pass@1 0.200" in listing
    assert report.main(["--db", str(path), "--list", "--status", "failed"]) == 0
    failed = capsys.readouterr().out
    assert "r32-qkvo-16bit-s0" in failed and "r8-qkvo" not in failed
    assert report.main(["--db", str(path), "--list", "--suite", "quant"]) == 0
    quant = capsys.readouterr().out
    assert "r16-qkvo-4bit-s0" in quant and "r16-qkvo-16bit-s1" in quant and "r4-qkvo" not in quant
    assert report.main(["--db", str(path), "--export", "json", "--out", str(tmp_path / "all.json")]) == 0
    exported = json.loads((tmp_path / "all.json").read_text())
    assert len(exported) == len({r["id"] for r in exported}) and any(r["status"] == "failed" for r in exported)
    assert report.main(["--db", str(path), "--export", "csv", "--suite", "quant", "--out", str(tmp_path)]) == 0
    lines = (tmp_path / "runs.csv").read_text().splitlines()
    assert len(lines) == 1 + 7  # q4 train+eval, two r16 trains + their evals, the shared base eval


def test_budget_rounding_and_formatting():
    assert report.nice_budget(493.5) == (500, "500 MB")
    assert report.nice_budget(1000) == (1000, "1000 MB")
    assert report.nice_budget(3.21 * 1024)[1] == "3.3 GB"
    metric = report._metric_for("humaneval.delta.pass@1")
    assert report.fmt(-0.0001, metric, signed=True) == "+0.0"
    assert report.compact_ids([5, 1, 2, 3, 7]) == "1-3,5,7"


def test_no_ci_never_reads_as_a_real_difference(tmp_path):
    db = Tracker(tmp_path / "t.db")
    train_run(db, "loss-only", 4, "16bit", 0, peak=900, seconds=10)
    train_run(db, "loss-only", 8, "16bit", 0, peak=950, seconds=12)
    db.close()
    assert report.main(["--db", str(tmp_path / "t.db"), "--out", str(tmp_path / "out"), "--no-figures"]) == 0
    text = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "Quality = validation loss" in text
    assert "no CI, so whether it beats rank=4 beyond noise is unknown" in text
    assert "clearly better" not in text and "real difference" not in text

"""report.py's rendering and CLI on a hand-written database (tests/study_db.py).

The numbers themselves are tested on data in test_study.py; here: the right tables exist, each renders
the model's numbers, bold and * follow the tests' verdicts, output is deterministic, and bad input
gives one line, not a traceback.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from study_db import build_study, train_run

import report
from common.errors import UserError
from common.study import compare, markdown
from common.study.rows import Study, build_rows, metric_for
from common.study.summary import base_table, config_table, summary_table
from common.tracker import Tracker

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    path = tmp_path_factory.mktemp("study") / "study.db"
    return path, build_study(path)


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


def table_row(text: str, label: str, table: str) -> list[str]:
    part = text[text.index(f"### {table}") + 4:]
    part = part[:part.find("\n### ")]
    line = next(line for line in part.splitlines() if line.startswith(f"| {label} "))
    return [c.strip() for c in line.strip("|").split("|")]


def table_cell(text: str, label: str, table: str, column: str) -> str:
    """The cell of row `label` under the column whose header starts with `column`."""
    part = text[text.index(f"### {table}") + 4:]
    header = next(line for line in part.splitlines() if line.startswith("|"))
    names = [c.strip() for c in header.strip("|").split("|")]
    return table_row(text, label, table)[next(i for i, n in enumerate(names) if n.startswith(column))]


def test_one_table_per_question_none_wide(written):
    _, text, _ = written
    rank = section(text, "rank")
    for table in ("Cost", "Quality on HumanEval", "Quality on held-out code",
                  "Paired differences vs the reference config (rank=16)", "Paired differences vs the base model"):
        assert f"### {table}" in rank or f"#### {table}" in rank, table
    widths = {line.count("|") - 1 for line in rank.splitlines() if line.startswith("|")}
    assert max(widths) <= 9
    for label in ("base model", "rank=4", "rank=8", "rank=16"):
        assert table_row(rank, label, "Cost") and table_row(rank, label, "Quality on HumanEval")


def test_quality_cells_render_the_models_intervals_and_seed_spread(written, study):
    _, text, _ = written
    rank = section(text, "rank")
    s = Study(Tracker(study[0]))
    rows = {r.label: r for r in build_rows(s, "rank")[0]}
    r16 = table_row(rank, "rank=16", "Quality on HumanEval")
    assert r16[1] == "2 (0,1)"
    assert r16[2] == markdown.fmt_cell(rows["rank=16"].get("humaneval.pass@1"), metric_for("humaneval.pass@1"))
    assert r16[2].startswith("32.5 [") and r16[2].endswith("sd 3.5")
    assert table_row(rank, "base model", "Quality on HumanEval")[2] == "0.0 [0.0, 16.1]"   # Wilson, never [0, 0]
    assert table_row(rank, "rank=8", "Cost")[2] == "8,000 (0.080%)"


def test_bold_and_star_follow_the_tests(written):
    _, text, _ = written
    rank = section(text, "rank")
    # pass@1: rank=8 is best but within noise of rank=16, so nothing is bold; its chrF gain is consistent, but
    # rank=8 has one seed, so seed variation is not measured and nothing is bold or starred for it.
    assert not any("**" in table_row(rank, label, "Quality on HumanEval")[2] for label in ("rank=8", "rank=16"))
    assert not table_cell(rank, "rank=8", "Quality on HumanEval", "chrF").startswith("**")
    base = rank[rank.index("#### Paired differences vs the base model"):]
    # Each cell names its test, the raw and the Holm-adjusted p; † where a trained side has one seed.
    assert table_cell(base, "rank=8", "Paired differences vs the base model", "Δ pass@1") \
        == "+40.0 (0 vs 8) McNemar p=0.0078, Holm=0.039 †"
    # rank=16 has two seeds (the base model none to vary): its NLL gain survives Holm; its pass@1 gain,
    # exact sign-flip p = 2/2^7, does not among the suite's five pass@1 comparisons.
    assert table_cell(base, "rank=16", "Paired differences vs the base model", "Δ NLL (heldout)").endswith(" *")
    assert table_cell(base, "rank=16", "Paired differences vs the base model", "Δ pass@1 (%)") \
        == "+32.5 sign-flip p=0.016, Holm=0.062"
    assert table_cell(base, "rank=4", "Paired differences vs the base model", "Δ pass@1") \
        == "+10.0 (0 vs 2) McNemar p=0.5, Holm=1 †"
    assert table_cell(base, "rank=8", "Paired differences vs the base model", "Δ syntax ok") \
        == "+0.0 (0 vs 0) (identical per-problem scores)"


def test_power_section_states_what_no_difference_means(written, study):
    _, text, _ = written
    rank = section(text, "rank")
    power = rank[rank.index("### What this design can detect"):]
    power = power[:power.index("\n### ")]
    assert "n = 20 problems" in power and "6 one-way flips (30.0 points)" in power
    assert "not evidence that two configurations are equal" in power


def test_pareto_front_and_memory_budget_recommendation(written):
    _, text, _ = written
    rank = section(text, "rank")
    front = next(line for line in rank.splitlines() if line.startswith("- vs peak memory:"))
    assert "rank=4" in front and "rank=8" in front and "rank=16" not in front
    assert "- below 1000 MiB: none of the measured configurations fits" in rank
    # rank=8 is better by NLL, but with one seed each no test can call it a finding: the cheapest, saying why.
    line = next(line for line in rank.splitlines() if line.startswith("- up to 1.1 GiB: **rank=4**"))
    assert "no verdict (rank=8, the best by NLL, vs it: " in line and "one seed: seed variation not measured" in line
    assert "equivalent" not in line and line.endswith("so take the cheapest until more seeds tell them apart")
    assert "- up to 700 MiB: **quant=4bit**" in section(text, "quant")
    assert "No run in this database recorded the machine's load" in rank   # an older database: all uncontended


def test_failures_examples_and_environment(written):
    _, text, ids = written
    rank = section(text, "rank")
    failures = rank[rank.index("### Failed, interrupted"):]
    assert f"| {ids['failed']} " in failures and "CUDA out of memory" in failures
    interrupted = next(line for line in failures.splitlines() if line.startswith(f"| {ids['interrupted']} "))
    assert "interrupted" in interrupted and f"| {ids['r4_eval']} " in interrupted   # its completed namesake
    examples = rank[rank.index("### Before and after"):]
    assert examples.index("#### humaneval HumanEval/0") < examples.index("#### humaneval HumanEval/10")
    assert "Result: base **failed**, adapter **passed**" in examples and "return x - 1" in examples
    assert "git abc123" in rank and "Test CPU" in rank and "torch 2.13.0" in rank


def test_comparison_files_have_the_table_rows(written):
    out, _, _ = written
    rows = json.loads((out / "model_comparison.json").read_text())
    assert {("rank", "rank=4"), ("rank", "rank=16"), ("rank", "base model"), ("quant", "quant=4bit")} <= \
        {(r["suite"], r["config"]) for r in rows}
    r16 = next(r for r in rows if r["suite"] == "rank" and r["config"] == "rank=16")
    assert r16["n_seeds"] == 2 and r16["humaneval.pass@1"] == pytest.approx(0.325)
    assert r16["humaneval.pass@1.ci_low"] < 0.30 and r16["humaneval.pass@1.ci_high"] > 0.35
    csv_text = (out / "model_comparison.csv").read_text().splitlines()
    assert csv_text[0].startswith("suite,config,kind,n_seeds") and len(csv_text) == 1 + len(rows)


@pytest.mark.slow
def test_figures_are_valid_pngs(written):
    import matplotlib.image

    out, text, _ = written
    for name in ["rank_loss.png", "rank_quality.png", "rank_rank.png", "rank_frontier.png", "rank_train_cost.png",
                 "rank_latency.png", "rank_adapter_size.png", "quant_frontier.png", "rank_differences.png"]:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert f"]({name})" in text


@pytest.mark.slow
def test_same_database_gives_identical_bytes(study, written, tmp_path):
    path, _ = study
    first_out, first_text, _ = written
    assert report.main(["--db", str(path), "--out", str(tmp_path / "again")]) == 0
    # Only the report command it quotes differs (its output directory).
    again = (tmp_path / "again" / "RESULTS.md").read_text().replace(str(tmp_path / "again"), str(first_out))
    assert again == first_text
    assert f"then `python report.py --db {path} --out {first_out}`." in first_text
    for name in ("model_comparison.csv", "model_comparison.json"):
        assert (tmp_path / "again" / name).read_bytes() == (first_out / name).read_bytes()


def test_suite_filter_empty_database_and_unknown_suite(study, tmp_path):
    path, _ = study
    assert report.main(["--db", str(path), "--out", str(tmp_path), "--suite", "quant", "--no-figures"]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## Suite `quant`" in text and "## Suite `rank`" not in text
    empty = tmp_path / "empty.db"
    Tracker(empty).close()
    done = subprocess.run([sys.executable, str(ROOT / "report.py"), "--db", str(empty), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "no runs in" in done.stderr and "Traceback" not in done.stderr
    missing = subprocess.run([sys.executable, str(ROOT / "report.py"), "--db", str(tmp_path / "nope.db")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.startswith("error: no database at")
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
    path, _ = study
    assert report.main(["--db", str(path), "--list"]) == 0
    listing = capsys.readouterr().out
    assert "r8-qkvo-16bit-s0" in listing and "completed" in listing and "pass@1 0.400" in listing
    assert report.main(["--db", str(path), "--list", "--status", "failed"]) == 0
    failed = capsys.readouterr().out
    assert "r32-qkvo-16bit-s0" in failed and "r8-qkvo" not in failed
    assert report.main(["--db", str(path), "--list", "--suite", "quant"]) == 0
    quant = capsys.readouterr().out
    assert "r16-qkvo-4bit-s0" in quant and "r16-qkvo-16bit-s1" in quant and "r4-qkvo" not in quant
    assert report.main(["--db", str(path), "--export", "csv", "--suite", "quant", "--out", str(tmp_path)]) == 0
    assert len((tmp_path / "runs.csv").read_text().splitlines()) == 1 + 7  # q4 train+eval, r16 x2 + evals, base


def test_formatting():
    metric = metric_for("humaneval.pass@1")
    assert markdown.fmt(-0.0001, metric, signed=True) == "+0.0"
    assert markdown.compact_ids([5, 1, 2, 3, 7]) == "1-3,5,7"
    d = compare.Difference("heldout.chrf", 2.0, -1.0, 5.0, "bootstrap z", False, 0.2, p_adjusted=0.4)
    assert markdown.fmt_difference(d) == "+2.0 [-1.0, +5.0] z p=0.2, Holm=0.4 †"
    assert markdown.fmt_difference(compare.Difference("humaneval.pass@1", 0.3, None, None, "McNemar", True,
                                                    0.03125, 0, 6, 20, p_adjusted=0.04, seed_aware=True)) \
        == "+30.0 (0 vs 6) McNemar p=0.031, Holm=0.04 *"
    assert markdown.fmt_difference(compare.Difference("heldout.nll", -0.1, -0.2, 0.0, "stored", None)) \
        == "-0.100 [-0.200, +0.000] stored"


def test_no_ci_never_reads_as_a_real_difference(tmp_path):
    db = Tracker(tmp_path / "t.db")
    train_run(db, "loss-only", 4, "16bit", 0, peak=900, seconds=10)
    train_run(db, "loss-only", 8, "16bit", 0, peak=950, seconds=12)
    db.close()
    assert report.main(["--db", str(tmp_path / "t.db"), "--out", str(tmp_path / "out"), "--no-figures"]) == 0
    text = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "Quality = validation loss" in text
    line = next(line for line in text.splitlines() if line.startswith("- up to 950 MiB: **rank=4**"))
    assert line.endswith("no paired test of val loss against rank=8 (the best by it), so no finding: take the "
                         "cheapest; the difference the design detects is unknown")
    assert "better than rank=4" not in text
    assert not any("**" in cell for cell in table_row(text, "rank=8", "Quality on held-out code"))


def test_summary_opens_the_report_and_matches_its_json(written, study):
    out, text, _ = written
    from common.study.summary import summary_table
    entries = json.loads((out / "summary.json").read_text())
    assert text.index("## Summary") < text.index("## Suite ")
    assert summary_table(entries) in text                        # the table is the JSON, rendered
    rank = {(e["config"], e["versus"]): e for e in entries if e["suite"] == "rank" and e["kind"] != "budget"}
    assert rank[("rank=16", "base model")]["kind"] == "base"   # the reference against its base comes first
    r8 = rank[("rank=8", "rank=16")]["differences"]
    s = Study(Tracker(study[0]))
    rows, _ = build_rows(s, "rank")
    expected = compare.differences(s, compare.reference_row(rows),
                                   next(r for r in rows if r.label == "rank=8"))
    assert r8["heldout.nll"]["value"] == pytest.approx(expected["heldout.nll"].value)
    assert r8["heldout.nll"]["detectable"] > 0 and r8["heldout.nll"]["p_adjusted"] >= r8["heldout.nll"]["p_value"]
    # rank=16 vs the base is made in both suites: counted once.
    assert len([e for e in entries if e["kind"] != "budget"]) == 8 and "NLL/token 1 of 7;" in text
    assert [(e["suite"], e["budget"], e["config"]) for e in entries if e["kind"] == "budget"] == [
        ("quant", "700 MiB", "quant=4bit"), ("quant", "1.5 GiB", "quant=4bit"), ("rank", "1000 MiB", "rank=4"),
        ("rank", "1.1 GiB", "rank=4")]


def test_summary_verdicts_count_distinct_findings_and_say_what_the_nulls_could_detect():
    from common.study.summary import summary_lines

    def d(value, low, high, beyond, test="bootstrap z", **extra):
        out = {"value": value, "low": low, "high": high, "test": test, "beyond_noise": beyond, "n": 164,
               "p_value": 0.5, "p_adjusted": 1.0, "seed_aware": True, "unit": "seeds x 25 split groups", **extra}
        if low is not None:
            out["detectable"] = 2.8 * (high - low) / (2 * 1.96)
        return out

    entries = [
        {"suite": "s", "config": "a", "versus": "ref", "kind": "reference", "seeds": "3 vs 3", "runs": [[1], [2]],
         "differences": {
             "heldout.nll": d(0.03, 0.02, 0.04, True, p_value=0.001, p_adjusted=0.002),
             "humaneval.test_case_avg": d(0.01, -0.02, 0.04, False),
             "humaneval.pass@1": d(0.01, None, None, False, "sign-flip permutation", detectable=0.1)}},
        {"suite": "s", "config": "b", "versus": "ref", "kind": "reference", "seeds": "3 vs 3", "runs": [[1], [3]],
         "differences": {
             "heldout.nll": d(-0.001, -0.004, 0.003, False),
             "humaneval.test_case_avg": d(0.0, 0.0, 0.0, False, degenerate="every answer empty"),
             "humaneval.pass@1": d(0.0, None, None, False, "McNemar", only_versus=0, only_config=0, detectable=0.05,
                                   seed_aware=False)}},
        {"suite": "t", "config": "a", "versus": "ref", "kind": "reference", "seeds": "3 vs 3", "runs": [[1], [2]],
         "differences": {"heldout.nll": d(0.03, 0.02, 0.04, False, p_value=0.001, p_adjusted=0.06)}}]
    text = "\n".join(summary_lines(entries))
    # a vs ref is in two suites: one comparison, beyond noise only if it is so in both families.
    assert "carry information: NLL/token 0 of 2; tests passed (pp) 0 of 1; pass@1 (pp) 0 of 2." in text
    assert ("- b vs ref (s): -0.001 [-0.004, +0.003] z p=0.5, Holm=1; the design detects about ±0.005 nats/token "
            "(resampled: seeds x 25 split groups)") in text
    assert "| +0.030 [+0.020, +0.040] z p=0.001, Holm=0.002 * |" in text
    assert ("Test-case average comparisons without a finding: 1 z test that could have detected 4.3 to 4.3 pp "
            "(median 4.3) at 80% power.") in text
    assert ("Pass@1 comparisons without a finding: 1 McNemar test that could have detected 5.0 to 5.0 pp (median "
            "5.0) at 80% power; 1 sign-flip test that could have detected 10.0 to 10.0 pp (median 10.0) at 80% "
            "power; 1 of them with one seed on a trained side (†).") in text
    assert "- b vs ref (s), tests passed (pp): every answer empty" in text
    assert "+0.0 (0 vs 0) McNemar p=0.5, Holm=1 †" in text


def test_preregistration_beside_the_results_is_quoted_unchanged(study, tmp_path):
    path, _ = study
    prereg = "## Pre-registration\n\nQ1: does rank matter? Primary metric: NLL.\n"
    deviations = "## Deviations from the pre-registration\n\n- Two more seeds for Q2.\n"
    (tmp_path / "PREREGISTRATION.md").write_text(prereg)
    (tmp_path / "DEVIATIONS.md").write_text(deviations)
    assert report.main(["--db", str(path), "--output-dir", str(tmp_path), "--no-figures"]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert prereg in text and deviations in text
    assert text.index("## Summary") < text.index(prereg) < text.index(deviations) < text.index("## Suite ")


def test_the_latest_editions_registration_is_quoted_and_earlier_ones_are_not(study, tmp_path):
    path, _ = study
    (tmp_path / "PREREGISTRATION.md").write_text("## Pre-registration (first edition)\n")
    (tmp_path / "DEVIATIONS.md").write_text("## Deviations (first edition)\n")
    (tmp_path / "PREREGISTRATION-3.md").write_text("## Pre-registration, third edition\n")
    (tmp_path / "PREREGISTRATION-2.md").write_text("## Pre-registration, second edition\n")
    assert report.main(["--db", str(path), "--output-dir", str(tmp_path), "--no-figures"]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "third edition" in text and "second edition" not in text and "first edition" not in text
    (tmp_path / "DEVIATIONS-3.md").write_text("## Deviations, third edition\n")
    assert report.main(["--db", str(path), "--output-dir", str(tmp_path), "--no-figures"]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.index("## Pre-registration, third edition") < text.index("## Deviations, third edition")


def test_a_run_without_a_measured_peak_is_placed_by_its_prediction(tmp_path):
    """The memory-budget recommendation uses measured peaks, and a run's recorded prediction (said so) where
    its training recorded no measured peak."""
    from study_db import eval_run
    db = Tracker(tmp_path / "p.db")
    eval_run(db, "rank", None, "base-16bit-eval", set(), nll_per_token=2.0)
    for seed, (low, high) in enumerate(((1.9, 1.5), (1.88, 1.52))):   # two seeds a side: rank=8's gain is a finding
        r4 = train_run(db, "rank", 4, "16bit", seed, peak=1000, seconds=100)
        eval_run(db, "rank", r4, f"r4-s{seed}-eval", {0, 1}, nll_per_token=low)
        r8 = db.start_run(f"r8-qkvo-16bit-s{seed}", "train", {"model": "tiny", "rank": 8, "modules": "qkvo",
                                                              "quant": "16bit", "seed": seed, "alpha": 16,
                                                              "max_steps": 4}, suite="rank")
        db.log_scores(r8, "train", {"predicted_peak_mb": 1400.0, "wall_seconds": 120.0})
        db.finish_run(r8, "completed")
        eval_run(db, "rank", r8, f"r8-s{seed}-eval", set(range(8)), nll_per_token=high)
    db.close()
    out = tmp_path / "report"
    assert report.main(["--db", str(tmp_path / "p.db"), "--output-dir", str(out)]) == 0
    rank = section((out / "RESULTS.md").read_text(), "rank")
    line = next(line for line in rank.splitlines() if line.startswith("- up to 1.4 GiB: **rank=8**"))
    assert "peak 1400 sd 0 MiB (predicted: no measured peak); better than rank=4 (the cheapest that fits)" in line
    assert "predicted" not in next(line for line in rank.splitlines() if "**rank=4**" in line)


def test_readme_option_rerenders_only_the_marked_tables(study, tmp_path):
    path, _ = study
    readme = tmp_path / "README.md"
    readme.write_text("# Title\nkept\n<!-- summary:begin -->\nstale\n<!-- summary:end -->\nmiddle\n"
                      "<!-- configs:begin -->\n<!-- configs:end -->\n<!-- bases:begin -->\nold\n<!-- bases:end -->\nend\n")
    assert report.main(["--db", str(path), "--out", str(tmp_path / "out"), "--no-figures", "--readme", str(readme)]) == 0
    text = readme.read_text()
    entries = json.loads((tmp_path / "out" / "summary.json").read_text())
    records = json.loads((tmp_path / "out" / "model_comparison.json").read_text())
    assert "stale" not in text and "old" not in text
    assert text.startswith("# Title\nkept\n") and "\nmiddle\n" in text and text.endswith("\nend\n")
    for table in (summary_table(entries), config_table(records), base_table(records)):
        assert table in text


def test_readme_option_rerenders_the_tables_that_moved_to_docs_pages(study, tmp_path):
    """README keeps the summary; docs/*.md beside it hold the rest (and may quote the summary again)."""
    path, _ = study
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n<!-- summary:begin -->\nstale\n<!-- summary:end -->\nend\n")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "study.md").write_text("# Study\n<!-- summary:begin -->\n<!-- summary:end -->\nmiddle\n"
                                   "<!-- configs:begin -->\nold\n<!-- configs:end -->\n")
    (docs / "evaluation.md").write_text("# Evaluation\n<!-- bases:begin -->\nold\n<!-- bases:end -->\nend\n")
    (docs / "gpus.md").write_text("# GPUs, no markers\n")
    assert report.main(["--db", str(path), "--out", str(tmp_path / "out"), "--no-figures", "--readme", str(readme)]) == 0
    entries = json.loads((tmp_path / "out" / "summary.json").read_text())
    records = json.loads((tmp_path / "out" / "model_comparison.json").read_text())
    summary, configs, bases = summary_table(entries), config_table(records), base_table(records)
    assert readme.read_text() == f"# Title\n<!-- summary:begin -->\n{summary}\n<!-- summary:end -->\nend\n"
    assert (docs / "study.md").read_text() == (f"# Study\n<!-- summary:begin -->\n{summary}\n<!-- summary:end -->\n"
                                               f"middle\n<!-- configs:begin -->\n{configs}\n<!-- configs:end -->\n")
    assert (docs / "evaluation.md").read_text() == f"# Evaluation\n<!-- bases:begin -->\n{bases}\n<!-- bases:end -->\nend\n"
    assert (docs / "gpus.md").read_text() == "# GPUs, no markers\n"


def test_readme_option_needs_each_table_marked_in_readme_or_docs(study, tmp_path):
    path, _ = study
    readme = tmp_path / "README.md"
    readme.write_text("<!-- summary:begin -->\nstale\n<!-- summary:end -->\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "study.md").write_text("<!-- configs:begin -->\nold\n<!-- configs:end -->\n")
    with pytest.raises(UserError, match=r"docs/\*\.md has <!-- bases:begin -->"):
        report.main(["--db", str(path), "--output-dir", str(tmp_path / "out"), "--no-figures", "--readme", str(readme)])
    assert "stale" in readme.read_text() and "old" in (tmp_path / "docs" / "study.md").read_text()
    assert not (tmp_path / "out").exists()          # checked before any work


def test_readme_without_markers_is_a_clear_error(study, tmp_path):
    path, _ = study
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    done = subprocess.run([sys.executable, str(ROOT / "report.py"), "--db", str(path),
                           "--output-dir", str(tmp_path / "out"), "--no-figures", "--readme", str(readme)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "summary:begin" in done.stderr
    assert "Traceback" not in done.stderr and readme.read_text() == "# no markers\n"
    assert not (tmp_path / "out").exists()          # checked before any work


def test_budget_equivalence_only_with_seeds_on_both_sides(tmp_path):
    """Two seeds a side: a gap smaller than the seed spread reads as equivalent within D, and the budget takes the
    cheapest (the one-seed wording is test_pareto_front_and_memory_budget_recommendation's)."""
    from study_db import eval_run
    db = Tracker(tmp_path / "two.db")
    eval_run(db, "rank", None, "base-16bit-eval", set(), nll_per_token=2.0)
    for rank, peak, nlls in ((4, 1000, (1.90, 1.88)), (8, 1100, (1.87, 1.90))):
        for seed, nll in enumerate(nlls):
            run = train_run(db, "rank", rank, "16bit", seed, peak=peak, seconds=100)
            eval_run(db, "rank", run, f"r{rank}-s{seed}-eval", set(range(6 + seed)), nll_per_token=nll)
    db.close()
    assert report.main(["--db", str(tmp_path / "two.db"), "--output-dir", str(tmp_path / "out"), "--no-figures"]) == 0
    text = (tmp_path / "out" / "RESULTS.md").read_text()
    line = next(line for line in text.splitlines() if line.startswith("- up to 1.1 GiB: **rank=4**"))
    assert "; equivalent within D = " in line and " nats/token (rank=8, the best by NLL, vs it: " in line
    assert line.endswith("), take the cheapest") and "one seed" not in line
    cell = table_cell(text, "rank=8", "Paired differences vs the base model", "Δ NLL")
    assert " z p" in cell and ", Holm" in cell and "†" not in cell   # two seeds: a verdict, whichever it is


def test_a_serving_bench_beside_the_results_becomes_their_inference_speed_section(study, tmp_path):
    from test_serve_speed import write_sample_result

    path, _ = study
    assert report.main(["--db", str(path), "--output-dir", str(tmp_path), "--no-figures"]) == 0
    assert "Inference speed as served" not in (tmp_path / "RESULTS.md").read_text()
    write_sample_result(tmp_path / "serve_speed.json")
    assert report.main(["--db", str(path), "--output-dir", str(tmp_path), "--no-figures"]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.index("## Summary") < text.index("### Inference speed as served") < text.index("## Suite ")
    assert "| lora-merged (16bit, bfloat16) | 50 ms | 20.0 |" in text

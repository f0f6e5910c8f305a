"""What the report lets a user act on, and the limits it carries: contended runs out of every cost ranking, one
answer per memory budget (better beyond noise, or equivalent within D), and the caveats of quantization findings.

One hand-written database (tests/study_db.py helpers), every run recording its machine load except one older run:
- suite `load`: rank=4 (quiet), rank=8 (best NLL, both train runs contended), rank=16 (the reference: seed 0
  contended, seed 1 quiet), rank=32 (recorded no load);
- suites `close` and `far`: rank=4 at 1000 MiB vs rank=8 at 1100 MiB, two seeds each, NLL a hair apart or far apart;
- suite `quant`: SmolLM2 (an embedded GGUF) at 16 and 4 bit, two seeds each, on a CPU; suite `gemma`: one config.
"""
import json

import pytest
from study_db import eval_run, train_run
from test_report import section, table_cell, table_row

import report
from common.study import compare
from common.study.rows import Study, build_rows
from common.study.summary import config_table, summary_table
from common.tracker import Tracker

QUIET = 0.02
SMOLLM, GEMMA = 134_515_008, 268_098_176


def config_runs(db: Tracker, suite: str, rank: int, nlls: tuple[float, ...], *, peak: float, quant: str = "16bit",
                loads: tuple[float | None, ...] = (QUIET, QUIET), model: str = "tiny", params: int = 1_000_000,
                peaks: tuple[float, ...] | None = None) -> list[int]:
    """A config trained and evaluated once per NLL (seed = position); returns its train run ids."""
    ids = []
    for seed, (nll, load) in enumerate(zip(nlls, loads)):
        run = train_run(db, suite, rank, quant, seed, peak=(peaks or [peak] * len(nlls))[seed], seconds=100 + rank,
                        load=load, model=model, params=params)
        eval_run(db, suite, run, f"{suite}-r{rank}-{quant}-s{seed}-eval", set(range(6 + seed)), nll_per_token=nll,
                 quant=quant, load=QUIET, model=model)
        ids.append(run)
    return ids


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    path = tmp_path_factory.mktemp("limits") / "limits.db"
    db = Tracker(path)
    ids = {}
    for suite, model in (("load", "tiny"), ("close", "tiny"), ("far", "tiny"), ("quant", "smollm2-135m"),
                         ("gemma", "gemma3-270m")):
        eval_run(db, suite, None, f"{suite}-base", set(), nll_per_token=2.0, load=QUIET, model=model)
    config_runs(db, "load", 4, (1.90, 1.88), peak=1000)
    ids["r8"] = config_runs(db, "load", 8, (1.50, 1.52), peak=1100, loads=(0.30, 0.25))
    ids["r16"] = config_runs(db, "load", 16, (1.89, 1.87), peak=0, peaks=(1500, 1600), loads=(0.50, 0.05))
    ids["r32"] = config_runs(db, "load", 32, (1.86,), peak=1200, loads=(None,))
    config_runs(db, "close", 4, (1.90, 1.88), peak=1000)
    config_runs(db, "close", 8, (1.87, 1.90), peak=1100)
    config_runs(db, "far", 4, (1.90, 1.88), peak=1000)
    config_runs(db, "far", 8, (1.50, 1.52), peak=1100)
    config_runs(db, "quant", 16, (1.50, 1.52), peak=1500, model="smollm2-135m", params=SMOLLM)
    config_runs(db, "quant", 16, (1.70, 1.72), peak=700, quant="4bit", model="smollm2-135m", params=SMOLLM)
    config_runs(db, "gemma", 16, (1.40,), peak=2000, model="gemma3-270m", params=GEMMA, loads=(QUIET,))
    db.close()
    out = path.parent / "report"
    assert report.main(["--db", str(path), "--output-dir", str(out), "--no-figures"]) == 0
    return Study(Tracker(path)), out, (out / "RESULTS.md").read_text(), ids


def test_a_contended_run_is_marked_and_its_costs_leave_every_ranking(built):
    study, out, text, ids = built
    load = section(text, "load")
    assert table_row(load, "rank=8 ‡", "Cost")                      # marked, with a footnote naming its runs
    assert table_cell(load, "rank=8 ‡", "Cost", "peak mem") == "contended"
    assert table_cell(load, "rank=8 ‡", "Cost", "train s") == "contended"
    footnote = next(line for line in load.splitlines() if line.startswith("‡ contended"))
    assert f"rank=8: run(s) {ids['r8'][0]},{ids['r8'][1]}" in footnote and "--contention-limit, 10% by default" in footnote
    # rank=16: seed 0 contended, so its peak is seed 1's alone; rank=32 recorded no load where others did.
    assert table_cell(load, "rank=16 ‡", "Cost", "peak mem") == "1600"
    assert table_cell(load, "rank=4", "Cost", "peak mem") == "1000 sd 0"
    assert table_cell(load, "rank=32", "Cost", "peak mem") == "load not recorded"
    front = next(line for line in load.splitlines() if line.startswith("- vs peak memory:"))
    assert "rank=8" not in front and "rank=32" not in front and "rank=4" in front
    assert ("for want of an uncontended run to rank its cost by: rank=8 (contended), rank=32 (load not recorded)."
            in load)
    budget = load[load.index("### Recommendation by memory budget"):]
    budget = budget[:budget.index("\n### ")]
    assert "rank=8" not in budget and "- up to 1000 MiB: **rank=4**" in budget
    assert "a run that recorded no load counts as \"load not recorded\"" in load
    records = {r["config"]: r for r in json.loads((out / "model_comparison.json").read_text()) if r["suite"] == "load"}
    assert records["rank=8"]["train.peak_mb.excluded"] == "contended" and "train.peak_mb" not in records["rank=8"]
    assert records["rank=16"]["train.peak_mb"] == 1600 and records["rank=16"]["contended_runs"] == str(ids["r16"][0])
    table = config_table(list(records.values()))
    assert "| load | rank=8 ‡ |" in table and "| contended | contended |" in table and "\n‡ contended: " in table
    rows = {r.label: r for r in build_rows(study, "load")[0]}
    assert rows["rank=8"].get("train.peak_mb").mean == 1100          # measured, kept, just not ranked
    assert compare.pareto(list(rows.values()), "heldout.nll", "train.peak_mb")[0] is rows["rank=4"]


def test_each_budget_is_the_cheapest_unless_the_best_beats_it_beyond_noise(built):
    study, out, text, _ = built
    close = next(line for line in section(text, "close").splitlines() if line.startswith("- up to 1.1 GiB:"))
    rows = {r.label: r for r in build_rows(study, "close")[0]}
    d = compare.differences(study, rows["rank=4"], rows["rank=8"])["heldout.nll"]
    assert not d.beyond_noise and d.seed_aware and abs(d.value) <= d.detectable
    # D is the pair's own figure (compare's detectable, as the summary prints it), not a second computation.
    assert close.startswith("- up to 1.1 GiB: **rank=4**")
    assert f"equivalent within D = {d.detectable:.3f} nats/token (rank=8, the best by NLL, vs it: " in close
    assert close.endswith("), take the cheapest")
    far = next(line for line in section(text, "far").splitlines() if line.startswith("- up to 1.1 GiB:"))
    assert far.startswith("- up to 1.1 GiB: **rank=8**")
    far_rows = {r.label: r for r in build_rows(study, "far")[0]}
    gain = compare.differences(study, far_rows["rank=4"], far_rows["rank=8"])["heldout.nll"]
    assert gain.beyond_noise and gain.value < -0.3
    assert f"better than rank=4 (the cheapest that fits) on NLL beyond noise: {gain.value:+.3f} [" in far
    assert " z p<0.001, Holm" in far and far.endswith(" *") and "equivalent" not in far
    # The same answers open the report, in the block README quotes (rendered from summary.json).
    entries = json.loads((out / "summary.json").read_text())
    block = summary_table(entries)
    assert block in text
    assert "- For 1.1 GiB (suite close): rank=4 - equivalent within D = " in block
    assert "- For 1.1 GiB (suite far): rank=8 - better than rank=4 (the cheapest that fits)" in block
    assert {e["kind"] for e in entries if not e["differences"]} == {"budget"}


def test_a_quantization_finding_carries_its_limits_and_the_summary_its_model_sizes(built):
    study, out, text, _ = built
    caveat = "(base weights dequantized from a 4-bit GGUF; memory is CPU RSS)"
    entries = json.loads((out / "summary.json").read_text())
    block = summary_table(entries)
    row = next(line for line in block.splitlines() if line.startswith("| quant | quant=4bit | quant=16bit |"))
    assert f"* {caveat} |" in row                                       # in the finding's own cell
    answer = next(line for line in block.splitlines() if line.startswith("- For 1.5 GiB (suite quant): "))
    assert answer.startswith("- For 1.5 GiB (suite quant): quant=16bit - better than quant=4bit")
    assert answer.endswith(f" * {caveat}")                             # the budget's finding, on its own line
    quant = section(text, "quant")
    assert table_cell(quant, "quant=4bit", "Paired differences vs the reference config", "Δ NLL").endswith(
        f" * {caveat}")
    assert caveat not in section(text, "far")                          # same quant on both arms: no caveat
    assert text.count("Nothing here is generalised past the model sizes studied") == 1
    assert "Nothing here is generalised past the model sizes studied: 1M / 135M / 268M parameters." in block
    # Not a GGUF, or not a CPU: no caveat.
    assert compare.gguf_source({"model": "tiny"}) is None and compare.gguf_source({"model": "x/m.gguf"}) == "a GGUF"
    assert not compare.on_cpu({"hardware": {"gpu": "H100"}, "config": {}})
    rows = {r.label: r for r in build_rows(study, "quant")[0]}
    assert compare.quant_caveat(study, rows["quant=16bit"], rows["quant=4bit"]) == caveat
    assert compare.quant_caveat(study, rows["quant=16bit"], rows["quant=16bit"]) == ""

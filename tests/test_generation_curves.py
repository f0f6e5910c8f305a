"""report.py draws the during-training validation chrF / syntax curves, one line per configuration and seed."""
import matplotlib.image
import pytest
from study_db import build_study

import report
from common.study import figures
from common.study.rows import Study, build_rows
from common.tracker import Tracker

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study_with_curves(tmp_path_factory):
    path = tmp_path_factory.mktemp("curves") / "study.db"
    ids = build_study(path)
    db = Tracker(path)
    for rank_id, rank in ((ids["r4"], 4), (ids["r8"], 8), *((r, 16) for r in ids["r16"])):
        for step in (2, 4):
            db.log_metrics(rank_id, step, {"val_chrf": 10.0 + rank + step, "val_syntax_ok": 0.25 * step / 2})
    db.close()
    return path


def test_generation_curves_overlay_every_run(study_with_curves, tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(figures.plots, "training_curves",
                        lambda path, title, panels, curves: drawn.update(curves=curves, panels=panels) or path)
    study = Study(Tracker(study_with_curves))
    rows, _ = build_rows(study, "rank")
    (written,) = figures.generation_curves(study, "rank", rows, tmp_path)
    assert written[1] == tmp_path / "rank_generation.png"
    assert set(drawn["curves"]) == {"rank=4", "rank=8", "rank=16 s0", "rank=16 s1"}
    assert drawn["curves"]["rank=8"] == {"val_chrf": [(2, 20.0), (4, 22.0)], "val_syntax_ok": [(2, 0.25), (4, 0.5)]}
    assert [p[0] for p in drawn["panels"]] == ["val_chrf", "val_syntax_ok"]


def test_no_generation_metrics_no_figure(tmp_path):
    path = tmp_path / "plain.db"
    build_study(path)
    study = Study(Tracker(path))
    assert figures.generation_curves(study, "rank", build_rows(study, "rank")[0], tmp_path) == []


@pytest.mark.slow
def test_report_embeds_the_generation_curves(study_with_curves, tmp_path):
    assert report.main(["--db", str(study_with_curves), "--output-dir", str(tmp_path), "--suite", "rank"]) == 0
    png = tmp_path / "rank_generation.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and matplotlib.image.imread(png).shape[1] > 500
    assert "](rank_generation.png)" in (tmp_path / "RESULTS.md").read_text()

"""Figures a practitioner reads at a glance (issue 32 item 8): smoothed training loss over the faint raw curve,
validation loss over the training steps, metric dots on axes zoomed to the data, no single-config frontier, the
paired differences first in each suite's figures.

The drawn figure is inspected through plots._save (wrapped to keep it), and the file is checked to be a PNG.
"""
import pytest
from study_db import build_study

from common.study import compare, figures, plots
from common.study.rows import Study, build_rows
from common.tracker import Tracker

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The matplotlib figures saved during the test, in order."""
    kept, save = [], plots._save

    def keep(fig, path):
        kept.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return kept


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Study:
    path = tmp_path_factory.mktemp("figures") / "study.db"
    build_study(path)
    return Study(Tracker(path))


def test_ema_is_the_hand_computed_average():
    assert plots.ema([4.0, 2.0, 6.0, 0.0], 0.5) == [4.0, 3.0, 4.5, 2.25]
    assert plots.ema([4.0, 2.0], 0.0) == [4.0, 2.0]
    assert plots.smoothing_weight(10) == 0.0 and plots.smoothing_weight(200) == pytest.approx(0.9)


def test_training_loss_is_smoothed_over_a_faint_raw_curve_and_validation_shares_the_steps(tmp_path, drawn):
    raw = [(step, 3.0 - 0.01 * step + (0.3 if step % 2 else -0.3)) for step in range(1, 201)]
    path = plots.loss_curves(tmp_path / "loss.png", "t", {"r16": {"loss": raw, "val_loss": [(100, 2.1), (200, 1.2)]},
                                                          "r8": {"loss": raw[:20], "val_loss": [(20, 2.5)]}})
    assert path.read_bytes()[:8] == PNG_MAGIC
    train_ax, val_ax = drawn[0].axes
    faint, smooth = train_ax.lines[:2]
    assert list(faint.get_ydata()) == [v for _, v in raw] and faint.get_alpha() < 0.5 and smooth.get_alpha() is None
    expected, s = [], raw[0][1]
    for _, v in raw:  # weight 0.9 for 200 points: a window of about 10 steps
        s = 0.9 * s + 0.1 * v if expected else v
        expected.append(s)
    assert list(smooth.get_ydata()) == pytest.approx(expected)
    steps = [abs(a - b) for a, b in zip(smooth.get_ydata()[50:], smooth.get_ydata()[51:])]
    assert max(steps) < 0.15  # the raw curve zigzags by 0.6 a step
    assert list(train_ax.lines[3].get_ydata()) == [v for _, v in raw[:20]]  # 20 points: left raw
    (r16_val, r8_val) = val_ax.lines
    assert list(r16_val.get_xdata()) == [100, 200] and r16_val.get_linestyle() == "-" and r16_val.get_marker() == "o"
    low, high = val_ax.get_xlim()  # the single r8 evaluation sits on the whole run's step axis, not on 19-21
    assert low <= 1 and high >= 200


def test_nll_axis_spans_the_data_not_zero(tmp_path, drawn):
    nll = [1.50, 1.53, 1.56]
    path = plots.metric_intervals(tmp_path / "q.png", "t", ["a", "b", "c"],
                                  {"NLL": ("NLL (nats/token)", nll, [(0.01, 0.01), None, (0.02, 0.01)])},
                                  {"NLL": 1.60})
    assert path.read_bytes()[:8] == PNG_MAGIC
    (ax,) = [a for a in drawn[0].axes if a.get_visible()]
    low, high = ax.get_ylim()
    assert 1.40 < low < 1.49 and 1.60 < high < 1.70   # data 1.49-1.60, with a margin; 0 is far off the axis
    assert not ax.patches  # dots with intervals, no bars
    assert plots.zoomed_range([float("nan")]) is None and plots.zoomed_range([2.0]) == pytest.approx((1.9, 2.1))


def test_no_frontier_for_one_config(study, tmp_path):
    rows, _ = build_rows(study, "rank")
    quality = "humaneval.pass@1"
    assert "efficiency frontier" in [t for t, _ in figures.quality_vs_cost("rank", rows, quality, tmp_path)]
    assert figures.quality_vs_cost("rank", rows[:1], quality, tmp_path) == []


def test_paired_differences_come_first(study, tmp_path):
    rows, bases = build_rows(study, "rank")
    quality, _ = compare.quality_metric(rows, bases)  # as the report picks it: held-out NLL here
    written = figures.suite_figures(study, "rank", rows, bases, quality, tmp_path)
    assert written[0] == ("paired differences", tmp_path / "rank_differences.png")
    assert {"loss curves", "quality with 95% CIs", "efficiency frontier"} <= {t for t, _ in written[1:]}
    assert all(p.read_bytes()[:8] == PNG_MAGIC for _, p in written)

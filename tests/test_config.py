"""Typed configs: one declaration per option feeds the parser, --config files, sweeps, records and --help."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.study import suites as S
from common.config import EvalConfig, InferConfig, ReportConfig, SweepConfig, TrainConfig
from common.errors import UserError
from common.options import build_parser, option, parse_config, recorded, sweepable

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class Extended(TrainConfig):
    warmup_ratio_floor: float = option(0.25, "a new option, declared once", sweep=True)


def test_one_declaration_reaches_parser_sweep_record_and_help(capsys):
    cfg = parse_config(Extended, ["--warmup-ratio-floor", "0.5", "--rank", "8"], "demo")
    assert cfg.warmup_ratio_floor == 0.5 and cfg.rank == 8
    assert recorded(cfg)["warmup_ratio_floor"] == 0.5
    assert sweepable(Extended)["warmup_ratio_floor"] == (float, 0.25)
    with pytest.raises(SystemExit):
        build_parser(Extended, "demo").parse_args(["--help"])
    assert "--warmup-ratio-floor" in capsys.readouterr().out


@pytest.mark.parametrize("script", ["train", "evaluate", "sweep", "report", "infer"])
def test_every_script_prints_its_help(script):
    """--help of a script with a mutually exclusive group (evaluate's adapter source, sweep's suite) once raised
    `ValueError: empty group` from argparse: each grouped option had added an empty group of its own."""
    done = subprocess.run([sys.executable, str(ROOT / f"{script}.py"), "--help"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ") and "--db" in done.stdout and not done.stderr


def test_sweep_tables_are_the_config_classes():
    assert set(S.TRAIN_FLAGS) == {f.name for f in dataclasses.fields(TrainConfig) if f.metadata["option"].sweep}
    assert S.TRAIN_FLAGS["rank"] == (int, 16) and S.EVAL_FLAGS["eval_limit"] == (int, None)
    assert set(S.SHARED_FLAGS) == {"model", "quant", "dtype", "dataset", "seed", "split_seed", "group_key",
                                  "decontaminate"}
    assert "max_seq_len" in S.EVAL_FLAGS and "max_seq_len" in S.TRAIN_FLAGS


def test_types_booleans_and_deprecated_spellings(capsys):
    cfg = parse_config(EvalConfig, ["--limit", "3", "--batch-size", "2", "--workers", "1", "--no-compare"], "d")
    assert (cfg.eval_limit, cfg.eval_batch_size, cfg.exec_workers, cfg.compare) == (3, 2, 1, False)
    err = capsys.readouterr().err
    assert "--limit is deprecated" in err and "use --eval-limit" in err and "use --exec-workers" in err
    assert parse_config(TrainConfig, ["--limit", "5"], "d").train_limit == 5
    assert parse_config(SweepConfig, ["--runs-dir", "x"], "d").output_dir == "x"
    assert parse_config(ReportConfig, ["--out", "r", "--no-figures"], "d").output_dir == "r"
    assert parse_config(SweepConfig, ["--set", "a=1", "--set", "b=2"], "d").set == ["a=1", "b=2"]
    assert parse_config(SweepConfig, [], "d").set == []
    assert parse_config(SweepConfig, ["--merge", "a.db", "b.db", "--merge", "c.db"], "d").merge == ["a.db", "b.db",
                                                                                                    "c.db"]
    assert parse_config(InferConfig, ["--stop", "", "--stop", "x"], "d").stop == ["", "x"]


@pytest.mark.slow
def test_bad_values_and_removed_options_are_one_line_errors():
    for args, expected in ((["train.py", "--rank", "x"], "argument --rank: invalid int value"),
                           (["infer.py", "--verbose"], "--verbose was removed: the speed line is shown by default")):
        done = subprocess.run([sys.executable, str(ROOT / args[0]), *args[1:]], capture_output=True, text=True,
                              cwd=ROOT)
        assert done.returncode == 2 and expected in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_config_file_gives_defaults_and_is_checked(tmp_path):
    good = tmp_path / "run.yaml"
    good.write_text("rank: 32\nmax-seq-len: '256'\ntruncate: yes\n")
    cfg = parse_config(TrainConfig, ["--config", str(good), "--rank", "8"], "d")
    assert (cfg.rank, cfg.max_seq_len, cfg.truncate) == (8, 256, True)  # the command line wins
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rnak": 4}))
    with pytest.raises(UserError, match="unknown option.*rnak"):
        parse_config(TrainConfig, ["--config", str(bad)], "d")
    bad.write_text(json.dumps({"rank": "many"}))
    with pytest.raises(UserError, match="many"):
        parse_config(TrainConfig, ["--config", str(bad)], "d")


def test_one_vocabulary_across_scripts():
    """The same option name means the same thing, with the same default, in every script that has it."""
    classes = (TrainConfig, EvalConfig, SweepConfig, ReportConfig, InferConfig)
    defaults: dict[str, set] = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            defaults.setdefault(f.name, set()).add(json.dumps(f.default if f.default is not dataclasses.MISSING
                                                              else None))
    shared_meaning = {"db", "quiet", "output_dir", "top_p", "temperature", "max_new_tokens", "max_seq_len",
                      "name", "suite"}
    for name in shared_meaning & set(defaults):
        assert len(defaults[name]) == 1, (name, defaults[name])
    for cls in classes:
        names = {f.name for f in dataclasses.fields(cls)}
        assert not names & {"limit", "out", "runs_dir", "verbose", "no_compare", "no_figures"}, cls

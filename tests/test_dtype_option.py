"""--dtype {auto,fp32}: fp32 pins the compute dtype on every machine, is recorded resolved, reaches both scripts of a
sweep, and an adapter's evaluation inherits it.

The CPU is made to look bf16-capable (cpu_has_native_bf16 -> True) wherever the point is that fp32 overrides what
auto would pick, so the tests mean the same on machines with and without AVX512-BF16.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import common.model.load
import train
from common.config import EvalConfig, SweepConfig, TrainConfig, dtype_of_record
from common.errors import UserError
from common.evaluation.settings import inherit_settings
from common.model.adapters import adapter_from_dir
from common.model.load import compute_dtype, load_model
from common.options import parse_config
from common.study import runner
from common.study.plan import plan, selected_suites
from common.study.reproduce import command
from common.tracker import Tracker

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")


@pytest.fixture
def bf16_cpu(monkeypatch):
    monkeypatch.setattr(common.model.load, "cpu_has_native_bf16", lambda: True)


@pytest.mark.parametrize("quant", ["16bit", "4bit", "8bit"])
def test_fp32_overrides_the_bf16_auto_picks(bf16_cpu, quant):
    assert compute_dtype(quant, CPU) == torch.bfloat16
    assert compute_dtype(quant, CPU, "auto") == torch.bfloat16
    assert compute_dtype(quant, CPU, "fp32") == torch.float32
    assert compute_dtype("32bit", CPU, "auto") == torch.float32


def test_16bit_pinned_loads_fp32_weights_without_the_no_bf16_note(tiny_model, monkeypatch, capsys):
    monkeypatch.setattr(common.model.load, "cpu_has_native_bf16", lambda: False)
    load_model(tiny_model, "16bit", CPU)
    assert "no native bf16" in capsys.readouterr().err   # auto falls back to fp32 and says so
    model = load_model(tiny_model, "16bit", CPU, "fp32")
    assert "no native bf16" not in capsys.readouterr().err  # asked for: nothing to explain
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    monkeypatch.setattr(common.model.load, "cpu_has_native_bf16", lambda: True)
    assert {p.dtype for p in load_model(tiny_model, "16bit", CPU).parameters()} == {torch.bfloat16}


def test_4bit_and_8bit_bases_compute_in_fp32_when_pinned(tiny_model, bf16_cpu):
    import bitsandbytes as bnb

    auto_4bit = [m.compute_dtype for m in load_model(tiny_model, "4bit", CPU).modules()
                 if isinstance(m, bnb.nn.Linear4bit)]
    pinned_4bit = [m.compute_dtype for m in load_model(tiny_model, "4bit", CPU, "fp32").modules()
                   if isinstance(m, bnb.nn.Linear4bit)]
    assert auto_4bit and set(auto_4bit) == {torch.bfloat16} and set(pinned_4bit) == {torch.float32}
    model = load_model(tiny_model, "8bit", CPU, "fp32")
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in model.modules())
    assert {p.dtype for p in model.parameters() if p.is_floating_point()} == {torch.float32}
    with torch.no_grad():
        hidden = model(input_ids=torch.randint(0, 1000, (1, 8)), output_hidden_states=True).hidden_states
    assert {h.dtype for h in hidden} == {torch.float32}


@pytest.mark.slow
def test_two_steps_pinned_record_float32_and_the_evaluation_inherits_it(tiny_model, tmp_path, bf16_cpu):
    out = tmp_path / "run"
    assert train.main(["--model", tiny_model, "--db", str(tmp_path / "e.db"), "--output-dir", str(out),
                       "--train-limit", "24", "--max-seq-len", "256", "--batch-size", "4", "--max-steps", "2",
                       "--eval-every", "0", "--eval-gen", "0", "--val-limit", "4", "--quiet", "--dtype", "fp32"]) == 0
    (run,) = Tracker(tmp_path / "e.db").runs()
    assert run["status"] == "completed" and run["config"]["dtype"] == "float32"  # auto would have been bfloat16
    assert json.loads((out / "run_config.json").read_text())["config"]["dtype"] == "float32"
    cfg = EvalConfig(adapter=str(out), db=str(tmp_path / "e.db"))
    inherit_settings(cfg, adapter_from_dir(out, str(out)))
    assert cfg.dtype == "fp32"
    explicit = EvalConfig(adapter=str(out), dtype="auto")
    inherit_settings(explicit, adapter_from_dir(out, str(out)))
    assert explicit.dtype == "auto"   # an explicit --dtype wins


def test_recorded_dtypes_map_back_to_the_option():
    assert dtype_of_record({"quant": "16bit", "dtype": "float32"}) == "fp32"
    assert dtype_of_record({"quant": "4bit", "dtype": "float32"}) == "fp32"
    assert dtype_of_record({"quant": "16bit", "dtype": "bfloat16"}) == "auto"
    assert dtype_of_record({"quant": "32bit", "dtype": "float32"}) == "auto"   # fp32 whatever --dtype says
    assert dtype_of_record({}) == "auto"
    config = {"rank": 8, "quant": "16bit", "dtype": "float32", "target_modules": ["q_proj"]}
    line = command(None, {"kind": "train", "config": config, "name": "by-hand", "suite": None})
    assert "--dtype fp32" in line and parse_config(TrainConfig, line.split()[2:], "").dtype == "fp32"


def test_the_sweep_passes_dtype_to_train_and_evaluate(tmp_path, monkeypatch):
    suite = tmp_path / "pinned.yaml"
    suite.write_text("name: pinned\nbase:\n  dtype: fp32\n  max_steps: 2\n  eval_limit: 2\naxes:\n  rank: [4]\n")
    planned = plan(selected_suites(SweepConfig(suite_file=str(suite))), {}, None)
    job = runner.Sweep(SweepConfig(db=str(tmp_path / "e.db"), quiet=True), planned)
    commands = []

    def run_child(cmd, prefix, gpu):  # record the command line, fail as a bad flag would: nothing is run
        commands.append(cmd)
        return 2, -1, "error: not run in this test"

    monkeypatch.setattr(job, "run_child", run_child)
    try:
        job.run()
    finally:
        job.close()
    scripts = {Path(cmd[1]).name: cmd for cmd in commands}
    assert set(scripts) == {"train.py", "evaluate.py"}   # the adapter's training and the base model's evaluation
    for cmd in scripts.values():
        assert cmd[cmd.index("--dtype") + 1] == "fp32"
    train_cfg = parse_config(TrainConfig, scripts["train.py"][2:], "")
    assert train_cfg.dtype == "fp32" and train_cfg.rank == 4
    assert parse_config(EvalConfig, scripts["evaluate.py"][2:], "").dtype == "fp32"


def test_bad_dtype_is_a_one_line_error(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--dtype", "bf16"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "--dtype" in done.stderr and "fp32" in done.stderr
    with pytest.raises(UserError, match="unknown --dtype 'bf16'; choose one of auto, fp32"):
        compute_dtype("16bit", CPU, "bf16")   # a --config file's value, which argparse does not check

"""common/train/estimate.py: the parts of the prediction that are exact are checked exactly, on tiny models.

Whole-process peak RSS depends on the machine (imports, allocator), so all configurations are checked by
bench/estimate_check.py, and the study's here (slow: three real steps on the embedded model, within 15%;
never a time). Also: base weight bytes at every quant
against the loaded model's storages, LoRA parameters against PEFT, the run's batches against
train.py's, the two-layer activation measurement against a deeper model's, and the tracker's
'skipped' status (schema migration 1 -> 2).
"""
import dataclasses
import math
import os
import json
import sqlite3

import pytest
import torch

from common.train.batching import epoch_batches
from common.config import SweepConfig, TrainConfig
from common.train.estimate import (
    K_ACT,
    K_ACT_GROWTH,
    K_LOGITS,
    activation_bytes,
    encoded_lengths,
    estimate_run,
    format_estimate,
    load_config,
    model_shape,
    run_batches,
    saved_bytes_per_token,
    weight_bytes,
)
from common.model.lora import attach_lora, parameter_counts
from common.study.budget import plan_estimates, predicted_vs_measured, skipped_runs
from common.model.load import compute_dtype, load_model
from common.tracker import Tracker

CPU = torch.device("cpu")


def stored_weight_bytes(model: torch.nn.Module) -> int:
    """Distinct storages of every parameter plus the bitsandbytes state kept beside them (not buffers)."""
    seen: dict[int, int] = {}
    for module in model.modules():
        found = list(module.parameters(recurse=False))
        weight = getattr(module, "weight", None)
        found += [getattr(weight, "CB", None), getattr(weight, "SCB", None)]
        state = getattr(weight, "quant_state", None)
        while state is not None:
            found += [state.absmax, state.code, state.offset]
            state = state.state2
        for t in found:
            if isinstance(t, torch.Tensor):
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


@pytest.mark.parametrize("quant", ["32bit", "16bit", "8bit", "4bit"])
def test_weight_bytes_equal_the_loaded_model(tiny_model, quant):
    shape = model_shape(load_config(tiny_model), "qkvo")
    dtype_bytes = torch.finfo(compute_dtype(quant, CPU)).bits // 8
    assert weight_bytes(shape, quant, dtype_bytes) == stored_weight_bytes(load_model(tiny_model, quant, CPU))


@pytest.mark.parametrize("modules", ["qv", "qkvo", "mlp", "all", "q_proj,down_proj"])
def test_lora_parameters_equal_peft(tiny_model, modules):
    shape = model_shape(load_config(tiny_model), modules)
    model = attach_lora(load_model(tiny_model, "32bit", CPU), 8, None, 0.0, modules)
    assert shape.lora_params(8) == parameter_counts(model)["trainable_params"]


def test_gpt2_conv1d_layers_are_counted(tiny_gpt2):
    shape = model_shape(load_config(tiny_gpt2), "all")
    model = attach_lora(load_model(tiny_gpt2, "32bit", CPU), 4, None, 0.0, "all")
    assert shape.lora_params(4) == parameter_counts(model)["trainable_params"]
    assert weight_bytes(shape, "32bit", 4) == stored_weight_bytes(load_model(tiny_gpt2, "32bit", CPU))


def synthetic_examples(n: int = 53) -> list[dict]:
    return [{"input_ids": range(20 + (7 * i) % 90), "labelled": 5 + i % 11} for i in range(n)]


@pytest.mark.parametrize("packing,accum,steps,budget", [(False, 1, None, None), (True, 2, None, None),
                                                        (False, 3, 40, None), (False, 1, None, 300),
                                                        (True, 1, None, 256)])
def test_run_batches_are_the_batches_train_py_draws(packing, accum, steps, budget):
    examples = synthetic_examples()
    cfg = TrainConfig(batch_size=4, grad_accum=accum, packing=packing, max_seq_len=128, max_steps=steps, seed=3,
                      max_tokens=budget)
    planned = run_batches(cfg, examples)
    drawn = []
    epoch = 0
    while len(drawn) < len(planned):
        batches = epoch_batches(examples, 4, 3, epoch, packing, 128, budget)
        drawn += [batches[i:i + accum] for i in range(0, len(batches) - accum + 1, accum)]
        epoch += 1
    assert len(planned) == (steps or len(epoch_batches(examples, 4, 3, 0, packing, 128, budget)) // accum)
    if budget:  # the budget bounds every planned micro-batch, so the predicted peak follows it
        assert max(b.rows * b.width for step in planned for b in step) <= budget
    for step, rows in zip(planned, drawn):
        for batch, row_lists in zip(step, rows):
            lengths = [sum(len(examples[i]["input_ids"]) for i in row) for row in row_lists]
            assert (batch.rows, batch.width, batch.real) == (len(row_lists), max(lengths), sum(lengths))


def test_one_layer_measurement_extrapolates_to_the_whole_model(tiny_model):
    """Bytes autograd saves in a 5-layer forward = 5 x the per-layer figure + the other figure."""
    from transformers import AutoModelForCausalLM
    config = load_config(tiny_model)
    per_layer, outside = saved_bytes_per_token(config.to_json_string(), "all", 8, 0.1, "float32")
    config.num_hidden_layers = 5
    model = attach_lora(AutoModelForCausalLM.from_config(config), 8, None, 0.1, "all")
    model.train()
    owned = {p.untyped_storage().data_ptr() for p in model.parameters()}
    owned |= {b.untyped_storage().data_ptr() for b in model.buffers()}

    def saved(length: int) -> int:
        seen: dict[int, int] = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in owned:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        ids = torch.randint(0, 1000, (1, length))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.get_base_model().model(input_ids=ids, attention_mask=torch.ones_like(ids),
                                         position_ids=torch.arange(length)[None], use_cache=False)
        return sum(seen.values())
    per_token = (saved(96) - saved(32)) / 64
    assert per_token == pytest.approx(5 * per_layer + outside, rel=0.01)
    # dropout keeps a copy of every adapted module's input: 'all' saves more than 'qv'
    assert per_layer > saved_bytes_per_token(config.to_json_string(), "qv", 8, 0.1, "float32")[0]


def test_estimate_parts_add_up_and_checkpointing_saves_memory(tiny_model):
    cfg = TrainConfig(model=tiny_model, rank=8, modules="all", quant="32bit", batch_size=4, max_seq_len=128,
                      max_steps=5)
    plain = estimate_run(cfg, CPU, synthetic_examples())
    ckpt = estimate_run(dataclasses.replace(cfg, grad_checkpointing=True), CPU, synthetic_examples())
    train_part = (plain.baseline_mb + plain.weights_mb + plain.mapped_mb + plain.lora_mb
                  + plain.k_act * plain.activations_mb + plain.k_logits * plain.logits_mb)
    assert plain.peak_mb == pytest.approx(max(train_part, plain.load_mb))
    assert ckpt.step_flops > plain.step_flops
    shape = model_shape(load_config(tiny_model), "all")
    per_layer, outside = saved_bytes_per_token(load_config(tiny_model).to_json_string(), "all", 8, 0.05, "float32")
    b = plain.largest
    assert activation_bytes(shape, per_layer, outside, b, "32bit", 4, True) < activation_bytes(
        shape, per_layer, outside, b, "32bit", 4, False)
    assert "predicted peak" in format_estimate(plain) and plain.steps == 5


def test_a_longer_run_is_predicted_to_hold_more_under_glibcs_default_allocator(tiny_model):
    """Freed activations stay on glibc's heap and pile up over a run; with a fixed mmap threshold they do not."""
    cfg = TrainConfig(model=tiny_model, rank=8, modules="all", quant="32bit", batch_size=4, max_seq_len=128)
    short, long = (estimate_run(dataclasses.replace(cfg, max_steps=n), CPU, synthetic_examples(400))
                   for n in (3, 100))
    fixed = estimate_run(dataclasses.replace(cfg, max_steps=100, mmap_threshold_kb=256), CPU,
                         synthetic_examples(400))
    assert short.k_act == pytest.approx(K_ACT) and fixed.k_act == pytest.approx(K_ACT)
    assert long.k_act == pytest.approx(K_ACT + K_ACT_GROWTH * math.log(100 / 3))
    assert long.k_logits == short.k_logits == K_LOGITS  # logits are mmapped: no growth


V1_RUNS = """CREATE TABLE runs (id INTEGER PRIMARY KEY, name TEXT NOT NULL, suite TEXT,
    kind TEXT NOT NULL CHECK (kind IN ('train', 'eval')),
    status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'interrupted')),"""


def test_tracker_migrates_to_a_skipped_status(tmp_path):
    db = tmp_path / "old.db"
    tracker = Tracker(db)
    run = tracker.start_run("a", "train", {"rank": 4})
    tracker.log_metrics(run, 1, {"loss": 1.0})
    tracker.close()
    # Make it a version-1 file: the old status constraint, as databases made before 'skipped' have it.
    conn = sqlite3.connect(db, isolation_level=None)
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name='runs'").fetchone()[0]
    old = sql.replace(", 'skipped'", "")
    assert old != sql
    version = conn.execute("PRAGMA schema_version").fetchone()[0]
    conn.execute("PRAGMA writable_schema=ON")
    conn.execute("UPDATE sqlite_master SET sql=? WHERE name='runs'", (old,))
    conn.execute(f"PRAGMA schema_version={version + 1}")
    conn.execute("PRAGMA writable_schema=OFF")
    conn.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    conn.close()
    tracker = Tracker(db)
    skipped = tracker.start_run("b", "train", {"rank": 64})
    tracker.finish_run(skipped, "skipped", error="predicted peak 9000 MB > budget 4000 MB")
    assert tracker.run(skipped)["status"] == "skipped"
    assert [r["name"] for r in tracker.runs(status="skipped")] == ["b"]
    assert tracker.metrics(run)[0]["value"] == 1.0
    with pytest.raises(sqlite3.IntegrityError):
        tracker.conn.execute("UPDATE runs SET status='bogus' WHERE id=?", (run,))
    assert tracker.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("estimate-data") / "data.jsonl"
    ops = [(fn, op) for fn in ("abs", "len", "str", "int", "float", "sorted", "max", "min") for op in "+-*%"]
    with open(path, "w") as f:
        for i, (fn, op) in enumerate(ops):
            f.write(json.dumps({"prompt": f"def f_{i}(x):\n    \"\"\"Return {fn}(x) {op} {i}.\"\"\"\n",
                                "completion": f"    return {fn}(x) {op} {i}\n"}) + "\n")
    return str(path)


def test_sweep_budget_records_runs_over_it_as_skipped(tiny_model, data_file, tmp_path, capsys):
    from common.study import runner
    from common.study import suites as S
    from common.study.plan import plan
    suite = tmp_path / "budget.json"
    suite.write_text(json.dumps({"name": "budget", "base": {"model": tiny_model, "dataset": data_file,
                                                              "max_steps": 2, "quant": "32bit"},
                                 "axes": {"batch_size": [1, 8]}}))
    planned = plan([S.load_suite_file(str(suite))], {}, None)
    estimates = plan_estimates(planned, CPU)
    small, large = sorted(estimates.values(), key=lambda e: e.peak_mb)
    budget = (small.peak_mb + large.peak_mb) / 2
    tracker = Tracker(tmp_path / "b.db")
    cfg = dataclasses.replace(SweepConfig(), budget_mb=budget)
    runner.apply_budget(cfg, tracker, planned, record=True)
    runner.apply_budget(cfg, tracker, planned, record=True)  # re-planning finds the record, adds none
    skipped = [p for p in planned if p.outcome == "skipped"]
    assert len(skipped) == 1 and "batch_size=8" in skipped[0].diff.replace(" ", "").replace(":", "=")
    (row,) = skipped_runs(tracker)
    assert row["name"] == skipped[0].name and row["predicted_peak_mb"] == pytest.approx(large.peak_mb)
    assert "skipped for budget" in row["reason"] and "budget" in capsys.readouterr().out
    assert tracker.memberships()["budget"] == {row["run_id"]}


@pytest.mark.slow
@pytest.mark.parametrize("format", ["completion", "instruct"])
def test_train_run_records_its_prediction_beside_the_measurement(tiny_model, data_file, tmp_path, format):
    """The prediction is for the batches the run trains on: the chat template of --format instruct included."""
    import train
    db = tmp_path / "t.db"
    args = ["--model", tiny_model, "--dataset", data_file, "--max-steps", "3", "--batch-size", "2", "--quant",
            "32bit", "--eval-every", "0", "--val-limit", "0", "--eval-gen", "0", "--save-every", "0", "--format",
            format]
    assert train.main([*args, "--quiet", "--db", str(db)]) == 0
    tracker = Tracker(db)
    (row,) = predicted_vs_measured(tracker)
    assert row["predicted_peak_mb"] > 0 and row["measured_peak_mb"] > 0 and row["measured_step_s"] > 0
    assert row["peak_error"] == pytest.approx(row["predicted_peak_mb"] / row["measured_peak_mb"] - 1)
    seen = [m["value"] for m in tracker.metrics(row["run_id"], "tokens_seen")]
    cfg = TrainConfig(model=tiny_model, dataset=data_file, max_steps=3, batch_size=2, format=format)
    planned = [sum(b.real for b in step) for step in run_batches(cfg, encoded_lengths(cfg))]
    assert planned == [b - a for a, b in zip([0] + seen, seen)]


@pytest.mark.slow
def test_estimate_probe_measures_three_steps_and_rescales(tiny_model, data_file, tmp_path, capsys):
    import train
    db = tmp_path / "never.db"
    assert train.main(["--model", tiny_model, "--dataset", data_file, "--batch-size", "2", "--quant", "32bit",
                       "--estimate", "--probe", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "predicted peak (peak RSS)" in out and "probe, 3 steps: peak" in out and "refined by the probe" in out
    assert not db.exists()  # an estimate records nothing


def test_matmul_peak_cache_keeps_the_best_and_remeasures_when_quieter(tmp_path, monkeypatch):
    """A peak measured while other jobs ran is low; a quieter machine measures again and keeps the higher."""
    from common.train import estimate

    monkeypatch.setenv("LORA_STUDY_CACHE", str(tmp_path))
    measurements = iter([50.0, 400.0])
    calls = []

    def measure(device, dtype):
        calls.append(1)
        return next(measurements)

    monkeypatch.setattr(estimate, "_measure_matmul_gflops", measure)
    load = {"now": 4.0 * (os.cpu_count() or 1)}
    monkeypatch.setattr(os, "getloadavg", lambda: (load["now"], 0.0, 0.0))
    cpu = torch.device("cpu")
    assert estimate.matmul_peak_gflops(cpu, torch.bfloat16) == 50.0      # first: measured under load 4
    assert estimate.matmul_peak_gflops(cpu, torch.bfloat16) == 50.0 and len(calls) == 1   # same load: cached
    load["now"] = 0.1 * (os.cpu_count() or 1)
    assert estimate.matmul_peak_gflops(cpu, torch.bfloat16) == 400.0 and len(calls) == 2  # quieter: measured again
    load["now"] = 3.0 * (os.cpu_count() or 1)
    assert estimate.matmul_peak_gflops(cpu, torch.bfloat16) == 400.0 and len(calls) == 2  # busier: the best stays
    cached = json.loads((tmp_path / "matmul_peak.json").read_text())
    [entry] = cached.values()
    assert entry["gflops"] == 400.0 and entry["load_per_core"] == pytest.approx(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("config", [
    {"rank": 16, "modules": "qkvo", "batch_size": 4, "max_seq_len": 512, "format": "instruct"},  # the study's
])
def test_predicted_peak_is_within_15_percent_on_the_embedded_model(config, tmp_path):
    """Three real steps of train.py on the embedded model, in this machine's 16bit dtype (bf16 or fp32): the
    whole process's peak RSS against the prediction (bench/estimate_check.py does all configurations)."""
    import subprocess
    import sys
    from pathlib import Path
    cfg = TrainConfig(**config, train_limit=400, max_steps=3, eval_every=0, val_limit=0, eval_gen=0, save_every=0)
    args = [f"--{key.replace('_', '-')}={value}" for key, value in config.items()]
    db = tmp_path / "e.db"
    done = subprocess.run([sys.executable, str(Path(__file__).resolve().parent.parent / "train.py"), *args,
                           "--train-limit", "400", "--max-steps", "3", "--eval-every", "0", "--val-limit", "0",
                           "--eval-gen", "0", "--save-every", "0", "--quiet", "--db", str(db), "--output-dir",
                           str(tmp_path / "run")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = Tracker(db).runs()
    measured = {s["name"]: s["value"] for s in Tracker(db).scores(run["id"], "train")}["peak_rss_mb"]
    predicted = estimate_run(cfg, CPU).peak_mb
    assert abs(predicted / measured - 1) <= 0.15, (predicted, measured)

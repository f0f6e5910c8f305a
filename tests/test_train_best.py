"""train.py --load-best / --early-stopping, best/ as a complete adapter, and the adapter's base model path."""
import json
import warnings

import pytest
import torch
from safetensors.torch import load_file

import train
from common.model.adapters import adapter_from_dir, check_base_model
from common.model.resolve import model_identity, resolve_model
from common.tracker import Tracker
from common.train.steps import early_stopping_due

FAST = ["--train-limit", "24", "--max-seq-len", "256", "--batch-size", "4", "--eval-gen", "0", "--val-limit", "8",
        "--quiet", "--modules", "all", "--eval-every", "1", "--lr", "0.3"]


def run(tiny_model, tmp_path, *extra) -> tuple[dict, dict, list[float]]:
    """Train; return (scores, run_config.json, validation losses by evaluation)."""
    assert train.main(["--model", tiny_model, "--db", str(tmp_path / "e.db"), "--output-dir", str(tmp_path / "run"),
                       *FAST, *extra]) == 0
    db = Tracker(tmp_path / "e.db")
    (r,) = db.runs()
    scores = {s["name"]: s["value"] for s in db.scores(r["id"], "train")}
    val = [m["value"] for m in db.metrics(r["id"], "val_loss")]
    return scores, json.loads((tmp_path / "run" / "run_config.json").read_text()), val


def test_early_stopping_counts_evaluations_without_improvement():
    assert not early_stopping_due(1, 2) and early_stopping_due(2, 2) and not early_stopping_due(5, 0)


@pytest.mark.slow
def test_load_best_and_early_stopping(tiny_model, tmp_path, monkeypatch):
    # Whether a real validation loss rises within a few steps depends on the CPU's arithmetic (it did at lr 0.3 on
    # one kind, not on another), so from the fourth validation on the loss is raised by 10: the best is step 3,
    # whatever the machine, while the weights, checkpoints and the stop are the real ones.
    from common.train import loop
    calls, real = [], loop.mean_nll

    def rising(*args, **kwargs):
        calls.append(1)
        value, tokens = real(*args, **kwargs)
        return value + (10.0 if len(calls) >= 4 else 0.0), tokens
    monkeypatch.setattr(loop, "mean_nll", rising)
    scores, record, val = run(tiny_model, tmp_path, "--max-steps", "6", "--early-stopping", "1")
    best = min(range(len(val)), key=lambda i: val[i])
    assert best < len(val) - 1, f"validation never rose: {val}"
    assert record["stop_reason"] == "early_stopping" and scores["early_stopped"] == 1.0
    assert len(val) == best + 1 + 1 and scores["steps"] == len(val) < 6   # stopped at the first evaluation w/o gain
    assert record["final_adapter"] == "best" and record["final_step"] == scores["best_step"] == best + 1
    assert scores["final_val_loss"] == pytest.approx(val[best]) and scores["last_val_loss"] == pytest.approx(val[-1])
    out = tmp_path / "run"
    final, kept = load_file(out / "adapter_model.safetensors"), load_file(out / "best" / "adapter_model.safetensors")
    assert final.keys() == kept.keys() and all(torch.equal(final[k], kept[k]) for k in final)
    assert (out / "best" / "tokenizer.json").is_file() and (out / "best" / "tokenizer_config.json").is_file()


@pytest.mark.slow
def test_no_load_best_keeps_the_last_step(tiny_model, tmp_path):
    scores, record, val = run(tiny_model, tmp_path, "--max-steps", "3", "--no-load-best")
    assert record["final_step"] == scores["steps"] == 3 and record["stop_reason"] == "all_steps"
    assert scores["final_val_loss"] == pytest.approx(val[-1])
    assert record["final_adapter"] == ("best" if scores["best_step"] == 3 else "last")


def test_adapter_records_a_loadable_base_that_still_reads_as_the_embedded_name(tmp_path):
    prepared = resolve_model("smollm2-135m")   # the dequantized cache directory (prepared once per machine)
    assert (tmp_path / "x").mkdir() is None
    (tmp_path / "x" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": prepared}))
    adapter = adapter_from_dir(tmp_path / "x", "x")
    assert model_identity(adapter.base_model) == "smollm2-135m"
    check_base_model(adapter, "smollm2-135m")  # no "trained on another model" error


@pytest.mark.slow
def test_saving_an_adapter_of_the_embedded_model_is_warning_free(tmp_path):
    from peft import LoraConfig, get_peft_model

    from common.model.load import load_model
    model = get_peft_model(load_model("smollm2-135m", "32bit", torch.device("cpu")),
                           LoraConfig(r=2, target_modules=["q_proj"]))
    model.peft_config["default"].base_model_name_or_path = resolve_model("smollm2-135m")  # as train.py does
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.save_pretrained(tmp_path / "a")

"""--report-to: TensorBoard, W&B (offline) and MLflow (local file store) get the tracker's scalars and config.

W&B and MLflow are optional extras (pip install wandb / mlflow-skinny); their tests skip, saying so,
where the package is absent.
"""
import glob
import json
import struct
from pathlib import Path

import pytest

import train
from common.train import mirrors as tracking
from common.errors import UserError
from common.tracker import Tracker
from common.train.mirrors import Reporters, flat_config, parse_report_to

CONFIG = {"rank": 16, "data_dropped": {"duplicate": 2}, "target_modules": ["q_proj", "v_proj"], "alpha": None}


def test_parse_report_to():
    assert parse_report_to("none") == [] and parse_report_to("") == []
    assert parse_report_to("none", tensorboard_dir="tb") == ["tensorboard"]   # the older --tensorboard DIR
    with pytest.raises(UserError, match="unknown neptune; choose a comma list of none|tensorboard"):
        parse_report_to("tensorboard,neptune")
    with pytest.raises(UserError, match="'none' cannot be combined"):
        parse_report_to("none,wandb")


def test_missing_package_names_its_install(monkeypatch):
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"--report-to mlflow needs the mlflow package: pip install mlflow-skinny"):
        parse_report_to("mlflow")


def test_flat_config_dots_nested_keys_and_stringifies_the_rest():
    assert flat_config(CONFIG) == {"rank": 16, "data_dropped.duplicate": 2, "target_modules": "['q_proj', 'v_proj']",
                                   "alpha": "None"}


def log_three_steps(reporters: Reporters) -> None:
    for step in (1, 2, 3):
        reporters.log({"loss": 1.0 / step, "lr": 0.1, "skipped": None}, step, "train")
    reporters.log({"val_loss": 0.5}, 3, "val")
    reporters.close({"adapter_mb": 0.25, "steps": 3})


def test_tensorboard_gets_the_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    log_three_steps(Reporters(["tensorboard"], "r", CONFIG, None, tmp_path, tmp_path / "mlruns"))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert [e.value for e in events.Scalars("val/val_loss")] == [0.5]


def wandb_records(run_dir: Path) -> list:
    """The protobuf records of an offline run file (LevelDB log format: 32 KiB blocks, 7-byte chunk headers)."""
    from wandb.proto import wandb_internal_pb2 as pb
    (path,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    data, pos, chunk, records = Path(path).read_bytes(), 7, b"", []   # 7: the W&B file header
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):   # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def wandb_history(run_dir: Path) -> tuple[dict[int, dict], dict, dict]:
    """(history by step, config, summary) of an offline W&B run."""
    history, config, summary = {}, {}, {}
    for record in wandb_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            history.setdefault(row.get("_step", record.history.step.num), {}).update(row)
        elif kind == "run":
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "summary":
            summary.update({i.key: json.loads(i.value_json) for i in record.summary.update if i.key})
    return history, config, summary


def test_wandb_offline_gets_scalars_config_and_summary(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="optional extra: pip install wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    log_three_steps(Reporters(["wandb"], "r", CONFIG, None, tmp_path, tmp_path / "mlruns"))
    history, config, summary = wandb_history(tmp_path)
    assert {s: h["train/loss"] for s, h in history.items()} == {1: 1.0, 2: 0.5, 3: pytest.approx(1 / 3)}
    assert history[3]["val/val_loss"] == 0.5 and "train/skipped" not in history[1]
    assert config["rank"] == 16 and config["data_dropped"] == {"duplicate": 2}
    assert summary["adapter_mb"] == 0.25


def mlflow_run(store: Path):
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == tracking.DEFAULT_PROJECT]
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def test_mlflow_file_store_gets_scalars_params_and_finals(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="optional extra: pip install mlflow-skinny")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    log_three_steps(Reporters(["mlflow"], "r", CONFIG, None, tmp_path, tmp_path / "mlruns"))
    client, run = mlflow_run(tmp_path / "mlruns")
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert run.data.params["rank"] == "16" and run.data.params["data_dropped.duplicate"] == "2"
    assert run.data.metrics["final/adapter_mb"] == 0.25 and run.info.status == "FINISHED"


@pytest.mark.slow
def test_train_mirrors_the_tracker_to_every_target(tiny_model, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="optional extra: pip install wandb")
    pytest.importorskip("mlflow", reason="optional extra: pip install mlflow-skinny")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    assert train.main(["--model", tiny_model, "--db", str(tmp_path / "e.db"), "--output-dir", str(out),
                       "--train-limit", "24", "--max-seq-len", "256", "--eval-gen", "0", "--val-limit", "8",
                       "--quiet", "--max-steps", "4", "--eval-every", "2",
                       "--report-to", "tensorboard,wandb,mlflow"]) == 0
    db = Tracker(tmp_path / "e.db")
    (run,) = db.runs()
    losses = {m["step"]: m["value"] for m in db.metrics(run["id"], "loss")}
    val = {m["step"]: m["value"] for m in db.metrics(run["id"], "val_loss")}
    history, config, _ = wandb_history(out)
    assert {s: h["train/loss"] for s, h in history.items()} == pytest.approx(losses)
    assert {s: h["val/val_loss"] for s, h in history.items() if "val/val_loss" in h} == pytest.approx(val)
    assert config["rank"] == run["config"]["rank"]
    client, mlrun = mlflow_run(tmp_path / "mlruns")   # beside the database
    mlflow_val = {m.step: m.value for m in client.get_metric_history(mlrun.info.run_id, "val/val_loss")}
    assert mlflow_val == pytest.approx(val) and mlrun.data.params["model"] == run["config"]["model"]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))

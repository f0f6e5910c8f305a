"""Find a trained adapter and what it was trained with, from a tracker run id or a directory.

train.py writes the adapter (adapter_config.json + weights) and run_config.json
(run id, database, resolved config) into its output directory, and the best
validation checkpoint into <output-dir>/best. evaluate.py and infer.py both
accept `--run-id N` or `--adapter DIR` and need the same facts: where the
adapter is, which base model, quant and prompt template it was trained with,
and which train run it came from.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.model.resolve import embedded_name, model_identity, public_model_id
from common.paths import read_json_object
from common.tracker import Tracker


@dataclass
class Adapter:
    path: Path
    label: str                     # how the user named it, for messages
    train_config: dict = field(default_factory=dict)  # the train run's resolved config; {} if unknown
    base_model: str | None = None  # the model it was trained on, if known
    run_id: int | None = None      # its train run, in the database `db`
    db: str | None = None

    @property
    def quant(self) -> str | None:
        return self.train_config.get("quant")

    @property
    def template(self) -> str | None:
        return self.train_config.get("template")


def adapter_from_dir(path: Path, label: str) -> Adapter:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(f"adapter directory {path} does not exist")
    if not (path / "adapter_config.json").is_file():
        hint = " (training not finished? resume it first)" if (path / "checkpoint").is_dir() else ""
        raise UserError(f"{path} has no adapter_config.json{hint}; pass a train.py output directory or a PEFT "
                        "adapter directory")
    peft_config = read_json_object(path / "adapter_config.json")
    # best/ holds only the adapter; its run_config.json is one level up.
    record = next((d / "run_config.json" for d in ([path, path.parent] if path.name == "best" else [path])
                   if (d / "run_config.json").is_file()), None)
    run_config = read_json_object(record) if record else {}
    train_config = run_config.get("config") if isinstance(run_config.get("config"), dict) else {}
    run_id = run_config.get("run_id") if isinstance(run_config.get("run_id"), int) else None
    # Without train.py's record the base is the one adapter_config.json names; an embedded model's public id
    # maps back to the embedded copy, which loads offline
    base = train_config.get("model") or embedded_name(peft_config.get("base_model_name_or_path") or "") or None
    return Adapter(path, label, train_config, base, run_id, run_config.get("db"))


def adapter_from_run(tracker: Tracker, db: str, run_id: int) -> Adapter:
    """The adapter of a completed train run; its output dir may be recorded relative to train.py's cwd."""
    run = tracker.run(run_id)
    if run is None:
        raise UserError(f"no run {run_id} in {db}; pass the id of a completed train run (report.py --list), "
                        "or --adapter DIR")
    if run["kind"] != "train" or run["status"] != "completed":
        raise UserError(f"run {run_id} ('{run['name']}') is {with_article(run['status'])} {run['kind']} run, not a "
                        f"completed train run; {not_completed_hint(run, db)}")
    path = Path(run["output_dir"] or "")
    if run["output_dir"] and not path.is_absolute() and not (path / "adapter_config.json").is_file():
        beside_db = Path(db).resolve().parent / path
        path = beside_db if (beside_db / "adapter_config.json").is_file() else path
    if not run["output_dir"] or not (path / "adapter_config.json").is_file():
        raise UserError(f"run {run_id}'s adapter {run['output_dir']} is missing (moved or deleted?); "
                        "pass --adapter DIR")
    adapter = adapter_from_dir(path, f"run {run_id}")
    adapter.train_config, adapter.run_id, adapter.db = run["config"], run_id, db
    adapter.base_model = run["config"].get("model") or adapter.base_model
    return adapter


def with_article(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def not_completed_hint(run: dict[str, Any], db: str) -> str:
    """What to do with a run that has no adapter to use (yet)."""
    if run["kind"] == "train" and run["status"] in ("interrupted", "running"):
        return (f"resume it by re-running its train.py command (same --name {run['name']} --db {db}; it continues "
                "from its checkpoint), or pass the id of a completed train run (report.py --list)")
    return "pass the id of a completed train run (report.py --list)"


def require_training_record(adapter: Adapter | None, quant: str | None, protocol: str) -> None:
    """Refuse to guess: without train.py's record (run_config.json, or a run in the database) an adapter
    would be evaluated at the defaults (16bit, the tokenizer's protocol), not what it was trained with."""
    if adapter is None or adapter.train_config:
        return
    missing = [flag for flag, given in (("--quant", quant is not None), ("--protocol", protocol != "auto"))
               if not given]
    if missing:
        raise UserError(f"adapter {adapter.label} has no run_config.json (not a train.py output directory), so the "
                        f"quant and prompt protocol it was trained with are unknown; pass {' and '.join(missing)} "
                        "explicitly, e.g. --quant 32bit --protocol completion")


def check_base_model(adapter: Adapter, model: str | None) -> None:
    if model and adapter.base_model and \
            model_identity(embedded_name(model)) != model_identity(embedded_name(adapter.base_model)):
        raise UserError(f"adapter {adapter.label} was trained on {adapter.base_model}, not {model}; "
                        f"pass --model {adapter.base_model} (or leave --model out)")


def completed_run(out: Path, tracker: Tracker) -> dict[str, Any] | None:
    """The record of a completed training in `out`, if there is one (of this database)."""
    try:
        info = json.loads((out / "run_config.json").read_text())
    except (OSError, ValueError):
        return None
    if info.get("status") != "completed":
        return None
    if info.get("db") and Path(info["db"]).resolve() != tracker.path.resolve():
        raise UserError(f"{out} holds a completed run of another database ({info['db']}); pass another "
                        "--output-dir, or leave it out to use this database's run directory")
    return info


def publish_base_model(adapter_dir: Path, model: str) -> None:
    """Name the base in a saved adapter_config.json by its public id (`public_model_id`), not by a path inside
    this machine's cache, so the adapter means something elsewhere. PEFT saves while the live config holds a
    loadable local path, which keeps its save-time checks off the network."""
    config_file = Path(adapter_dir) / "adapter_config.json"
    config = read_json_object(config_file)
    config["base_model_name_or_path"] = public_model_id(model)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

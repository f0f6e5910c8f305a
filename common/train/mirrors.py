"""Mirror a training run to the experiment trackers users already follow: TensorBoard, W&B, MLflow.

    reporters = open_reporters("wandb,mlflow", run_name, config, tensorboard_dir=None, output_dir=out,
                               mlflow_dir=Path("experiments.db").parent / "mlruns")
    reporters.log({"loss": 1.2, "lr": 2e-4}, step=10, prefix="train")
    reporters.close(final_scores)

The SQLite tracker (common/tracker.py) stays the source of truth: report.py, sweep.py and
evaluate.py read only it. These are one-way copies of the same numbers: the resolved config
once, every logged scalar at its optimizer step (as `train/<name>` or `val/<name>`), and the
final scores as a summary. W&B and MLflow are optional extras, imported only when asked for;
a missing one is a one-line error naming its `pip install`. Their own settings apply as
usual (WANDB_MODE=offline, WANDB_PROJECT, MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME).
Without MLFLOW_TRACKING_URI, MLflow writes to a local file store, `mlruns/` beside the run
database (all runs of one database in one store; `mlflow ui --backend-store-uri <dir>`); MLflow
3.x keeps that backend behind MLFLOW_ALLOW_FILE_STORE, which is set for this default only.
The light `mlflow-skinny` client is enough (79 MB, against 559 MB for full `mlflow`).
"""
import importlib.util
import os
from pathlib import Path
from typing import Any

from common.errors import UserError

TARGETS = ("none", "tensorboard", "wandb", "mlflow")
MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
INSTALL = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow-skinny"}
DEFAULT_PROJECT = "lora-code-study"


def parse_report_to(spec: str, tensorboard_dir: str | None = None) -> list[str]:
    """`--report-to` as a list of targets; `--tensorboard DIR` (the older flag) adds tensorboard."""
    names = [n.strip() for n in (spec or "none").split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        raise UserError(f"--report-to {spec!r}: unknown {', '.join(unknown)}; choose a comma list of "
                        f"{'|'.join(TARGETS)}")
    if "none" in names and len(names) > 1:
        raise UserError(f"--report-to {spec!r}: 'none' cannot be combined with other targets")
    targets = [n for n in names if n != "none"]
    if tensorboard_dir and "tensorboard" not in targets:
        targets.append("tensorboard")
    for target in targets:
        if importlib.util.find_spec(MODULES[target]) is None:
            raise UserError(f"--report-to {target} needs the {target} package: pip install {INSTALL[target]}")
    return targets


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; lists and None as text (MLflow params are strings)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_config(value, name + "."))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


class Reporters:
    """The open trackers of one run; every method is a no-op for an empty list."""

    def __init__(self, targets: list[str], run_name: str, config: dict[str, Any], tensorboard_dir: str | None,
                 output_dir: Path, mlflow_dir: Path):
        self.writer = self.wandb_run = self.mlflow = None
        if "tensorboard" in targets:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(tensorboard_dir or str(output_dir / "tensorboard"))
            self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in flat_config(config).items()))
        if "wandb" in targets:
            import wandb
            self.wandb_run = wandb.init(project=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT), name=run_name,
                                        config=config, dir=str(output_dir), reinit="finish_previous")
        if "mlflow" in targets:
            import mlflow
            if not os.environ.get("MLFLOW_TRACKING_URI"):
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
                mlflow.set_tracking_uri(mlflow_dir.resolve().as_uri())
            mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_PROJECT))
            mlflow.start_run(run_name=run_name)
            params = flat_config(config)
            # MLflow caps a batch at 100 params and each value at 6000 characters.
            items = [(k, str(v)[:6000]) for k, v in params.items()]
            for start in range(0, len(items), 100):
                mlflow.log_params(dict(items[start:start + 100]))
            self.mlflow = mlflow

    def log(self, values: dict[str, float | None], step: int, prefix: str) -> None:
        scalars = {f"{prefix}/{k}": float(v) for k, v in values.items() if v is not None}
        if self.writer:
            for name, value in scalars.items():
                self.writer.add_scalar(name, value, step)
        if self.wandb_run:
            self.wandb_run.log(scalars, step=step)
        if self.mlflow:
            self.mlflow.log_metrics(scalars, step=step)

    def close(self, scores: dict[str, Any] | None = None, status: str = "completed") -> None:
        numbers = {k: float(v) for k, v in (scores or {}).items() if isinstance(v, (int, float))}
        if self.writer:
            self.writer.close()
        if self.wandb_run:
            self.wandb_run.summary.update(numbers)
            self.wandb_run.finish(exit_code=0 if status == "completed" else 1)
        if self.mlflow:
            self.mlflow.log_metrics({f"final/{k}": v for k, v in numbers.items()})
            self.mlflow.end_run(status="FINISHED" if status == "completed" else "KILLED")
        self.writer = self.wandb_run = self.mlflow = None


def open_reporters(report_to: str, run_name: str, config: dict[str, Any], tensorboard_dir: str | None,
                   output_dir: Path, mlflow_dir: Path) -> Reporters:
    """The trackers `--report-to` names (plus TensorBoard when `tensorboard_dir` is given), opened."""
    targets = parse_report_to(report_to, tensorboard_dir)
    return Reporters(targets, run_name, config, tensorboard_dir, output_dir, mlflow_dir)

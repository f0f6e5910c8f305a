"""infer.py's settings: the adapter a run id or directory names, and every option checked against it before loading."""
import re
from pathlib import Path

from common.errors import UserError
from common.model.adapters import Adapter, adapter_from_dir, adapter_from_run, check_base_model
from common.model.export import check_export_targets
from common.tracker import Tracker

def find_adapter(cfg) -> Adapter | None:
    if cfg.run_id is not None:
        if not Path(cfg.db).is_file():  # a Tracker would create an empty one
            raise UserError(f"no run tracker database {cfg.db}; pass --db, or --adapter DIR")
        tracker = Tracker(cfg.db)
        try:
            return adapter_from_run(tracker, cfg.db, cfg.run_id)
        finally:
            tracker.close()
    if cfg.adapter is not None:
        return adapter_from_dir(Path(cfg.adapter), cfg.adapter)
    return None


def unescape(text: str) -> str:
    return re.sub(r"\\([ntr\\])", lambda m: {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}[m.group(1)], text)


def validate_infer_config(cfg, adapter: Adapter | None) -> None:
    if cfg.prompt is not None and not cfg.prompt.strip():
        raise UserError("empty --prompt; pass some text, or leave --prompt out for an interactive session")
    if cfg.temperature < 0:
        raise UserError(f"--temperature must be >= 0 (0 = greedy), got {cfg.temperature}")
    if not 0 < cfg.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {cfg.top_p}")
    if cfg.top_k < 0:
        raise UserError(f"--top-k must be >= 0 (0 = off), got {cfg.top_k}")
    if cfg.max_new_tokens <= 0:
        raise UserError(f"--max-new-tokens must be positive, got {cfg.max_new_tokens}")
    if cfg.demo and cfg.prompt is not None:
        raise UserError("--demo uses its own prompts; drop --prompt")
    if (cfg.merge_to or cfg.push_to_hub or cfg.export_gguf) and (cfg.prompt is not None or cfg.demo or cfg.compare):
        raise UserError("--merge-to, --export-gguf and --push-to-hub only merge, export and upload; drop "
                        "--prompt/--demo/--compare "
                        "(try a merged model with --model DIR)")
    if cfg.compare and adapter is None:
        raise UserError("--compare needs an adapter: pass --run-id N or --adapter DIR")
    if (cfg.merge_to or cfg.push_to_hub) and adapter is None:
        raise UserError(f"{'--merge-to' if cfg.merge_to else '--push-to-hub'} needs an adapter: "
                        "pass --run-id N or --adapter DIR")
    if cfg.private and not cfg.push_to_hub:
        raise UserError("--private only applies to --push-to-hub")
    if adapter:
        check_base_model(adapter, cfg.model)
    if cfg.merge_to:
        target = Path(cfg.merge_to)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise UserError(f"--merge-to {target} exists and is not an empty directory; pass a new directory")
    check_export_targets(cfg.merge_to, cfg.export_gguf)  # before the load and merge

"""Where the toolkit keeps derived files it can rebuild (prepared models, mined data).

Set LORA_STUDY_CACHE to move it; the default follows XDG (~/.cache/lora-code-study).
"""
import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("LORA_STUDY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lora-code-study")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path

"""Files and directories: the cache of derived files, and small checked file helpers.

The cache holds what the toolkit can rebuild (prepared models, mined data). Set
LORA_STUDY_CACHE to move it; the default follows XDG (~/.cache/lora-code-study).
"""
import hashlib
import json
import os
from pathlib import Path

from common.errors import UserError


def cache_dir() -> Path:
    root = os.environ.get("LORA_STUDY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lora-code-study")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"output dir {directory} is not writable ({e.strerror}); pass another --output-dir") from e


def read_json_object(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({' '.join(str(e).split())[:160]})") from e
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object")
    return data


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

"""Samples on disk: the samples.json written beside every evaluation, and the --samples files it scores.

samples.json holds the run's config, scores and every sample (prompt, output, result, and
the base model's output next to it when compared); a run whose directory already holds another
run's samples.json writes samples-run<id>.json beside it; a --samples file is JSON lines of
{"task_id", "completion"}, several lines per task_id for several samples.
"""
import json
import os
import uuid
from pathlib import Path

from common.errors import UserError


def samples_for_json(records: list[dict], base_records: list[dict] | None) -> list[dict]:
    def outcome(r):
        return {"generation": r["generation"], "result": r["result"], **(r["details"] or {})}

    base = {(r["task_id"], r["sample_index"]): r for r in base_records or []}
    rows = []
    for r in records:
        row = {"task_id": r["task_id"], "sample_index": r["sample_index"], "prompt": r["prompt"],
               "reference": r["reference"], "output": outcome(r)}
        if base_records is not None:
            b = base.get((r["task_id"], r["sample_index"]))
            row["base"] = outcome(b) if b else None
        rows.append(row)
    return rows


def write_samples_json(output_dir: Path, run_id: int, name: str, config: dict, base_runs: dict,
                       scores: dict, samples: dict) -> Path:
    """Write the run's samples.json, or samples-run<id>.json when another run's samples are there
    (evaluations that share a --name or --output-dir); never replaces a file. Returns the path written."""
    output_dir.mkdir(parents=True, exist_ok=True)
    payload = {"run_id": run_id, "name": name, "config": config, "base_runs": base_runs,
               "scores": {b: {k: dict(zip(("value", "n", "ci_low", "ci_high"), v)) for k, v in s.items()}
                          for b, s in scores.items()},
               "samples": samples}
    tmp = output_dir / f".samples-run{run_id}-{os.getpid()}.json.tmp"  # its own: evaluations may run at once
    tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    try:
        for candidate in ("samples.json", f"samples-run{run_id}.json"):
            if create_new(output_dir / candidate, tmp):
                return output_dir / candidate
        # Taken too: a run with the same id in another database wrote here. A random suffix is new.
        target = output_dir / f"samples-run{run_id}-{uuid.uuid4().hex[:8]}.json"
        os.replace(tmp, target)
        return target
    finally:
        tmp.unlink(missing_ok=True)


def create_new(target: Path, source: Path) -> bool:
    """Give `source`'s content the name `target` unless `target` exists (then False): a hard link appears
    whole and never replaces a file; filesystems without hard links get an exclusive create and a copy."""
    try:
        os.link(source, target)
    except FileExistsError:
        return False
    except OSError:
        try:
            with open(target, "xb") as f:
                f.write(source.read_bytes())
        except FileExistsError:
            return False
    return True


def read_samples_file(path: str, problems: dict, bench_name: str) -> dict[str, list[str]]:
    """task_id -> completions, in file order; every task_id must be a problem of the benchmark."""
    from common.corpus.splits import iter_jsonl

    file = Path(path)
    if not file.is_file():
        raise UserError(f"samples file {path} not found")
    completions: dict[str, list[str]] = {}
    for lineno, row in iter_jsonl(file, path):
        where = f"{path} line {lineno}"
        if not isinstance(row, dict) or not isinstance(row.get("task_id"), str) \
                or not isinstance(row.get("completion"), str):
            raise UserError(f"{where}: expected an object with string fields task_id and completion")
        if row["task_id"] not in problems:
            raise UserError(f"{where}: task_id {row['task_id']!r} is not a problem of {bench_name}")
        completions.setdefault(row["task_id"], []).append(row["completion"])
    if not completions:
        raise UserError(f"samples file {path} has no samples")
    return completions

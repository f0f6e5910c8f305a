"""The results document's section on inference speed as served, from bench/serve_speed.py's JSON.

    lines = serving_lines(Path("bench/results/serve_speed.json"))   # [] when the bench has not run

One row per arm (base; the adapter unmerged, merged, on the NF4 and on the 8-bit base): time to first token,
batch-1 decode and batch-8 tokens/s, peak RSS, and each against the base arm; then the machine, the command
that reproduces it, and what the numbers are (one quiet run's medians, not a spread across machines).
"""
import json
from pathlib import Path
from typing import Any

from common.errors import UserError

HEADER = ["| arm | TTFT | decode tok/s | batch-8 tok/s | peak RSS MiB | vs base (TTFT, decode, batch-8, RSS) |",
          "|---|---:|---:|---:|---:|---|"]


def serving_lines(path: Path) -> list[str]:
    """The markdown section for the JSON at `path`; [] when the file is missing."""
    if not path.is_file():
        return []
    try:
        report = json.loads(path.read_text())
        rows = [arm_row(name, arm, report["ratios"].get(name)) for name, arm in report["arms"].items()]
        settings, machine = report["settings"], report["machine"]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path} is not a bench/serve_speed.py result ({type(e).__name__}: {e}); rerun "
                        "python bench/serve_speed.py, or delete the file") from e
    return ["### Inference speed as served (bench/serve_speed.py)", "",
            f"{report['model']}; HumanEval instruct prompts one at a time (TTFT, decode: {settings['prompts']} "
            f"of them) and {settings['batch_size']} at once, {settings['max_new_tokens']} new tokens each, greedy; "
            f"adapter: {settings['adapter']}.", "", *HEADER, *rows, "",
            machine_text(machine), texts_text(report), "",
            f"Reproduce: `{settings['command']}`", "",
            f"These are the medians of one run on a quiet machine (repeats: {settings['repeats']}, the arms "
            "alternating within each), so they compare the arms with each other on that machine, not machines.", ""]


def arm_row(name: str, arm: dict[str, Any], ratio: dict[str, float] | None) -> str:
    if "ttft_s" not in arm:
        why = arm.get("skipped") or f"failed: {arm.get('error', 'no result')}"
        return f"| {name} | — | — | — | — | {why} |"
    versus = ("reference" if name == "base" else
              ", ".join(f"{ratio[k]:.2f}x" for k in ("ttft_s", "decode_tokens_per_s", "batch8_tokens_per_s",
                                                     "peak_rss_mib")) if ratio else "—")
    return (f"| {name} ({arm['quant']}, {arm['dtype']}) | {arm['ttft_s'] * 1000:.0f} ms | "
            f"{arm['decode_tokens_per_s']:.1f} | {arm['batch8_tokens_per_s']:.1f} | {arm['peak_rss_mib']:.0f} | "
            f"{versus} |")


def machine_text(machine: dict[str, Any]) -> str:
    """bench/machine.py's machine_line, from the record the bench stored."""
    flags = ",".join(machine.get("cpu_bf16_flags", [])) or "none"
    return f"Ran on {machine['device']}; CPU flags {flags}; 16-bit arms in {machine.get('dtype', '?')}."


def texts_text(report: dict[str, Any]) -> str:
    same = report.get("identical_texts")
    if same is None:
        return "Merged and unmerged greedy texts were not both measured."
    return (f"Merged and unmerged adapters gave {'the same' if same else 'different'} greedy texts "
            f"({report.get('identical_texts_dtype', '?')}).")

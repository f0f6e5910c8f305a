"""The commands that reproduce a report's runs: `sweep.py --suite` for the built-in suites, and for runs a
built-in suite does not name (a --suite-file's, or `unassigned` direct runs) the train.py and evaluate.py
commands rebuilt from each run's recorded config.

    header = reproduction_sentence(study, suites, "python report.py")  # "To reproduce: `python sweep.py ...`"
    lines = direct_commands(study, suites)                             # a shell block, or [] when none is needed
"""
import shlex
from typing import Any

from common.config import dtype_of_record
from common.study import suites as S
from common.study.rows import NO_SUITE, Study

# Settings evaluate.py records that describe the machine, not the run: its default picks them again.
_MACHINE_KEYS = ("isolation", "exec_workers")


def sweep_command(suites: list[str]) -> str:
    """The sweep.py command that runs these built-in suites: the smallest built-in composite made of exactly
    them (`study` for the study's parts), else one --suite per suite."""
    composites = [c for c in map(S.builtin_suite, S.builtin_names()) if c.parts and set(c.parts) == set(suites)]
    names = [min(composites, key=lambda c: c.name).name] if composites else suites
    return " && ".join(f"python sweep.py --suite {name}" for name in names)


def reproduction_sentence(study: Study, suites: list[str], report_command: str) -> str:
    """How to rebuild the report: the sweep for its built-in suites, the listed commands for the other runs."""
    builtin = [s for s in suites if s in S.builtin_names()]
    steps = [f"`{sweep_command(builtin)}` (resumable: run it again after an interruption)"] if builtin else []
    if outside_runs(study, suites):
        steps.append("the commands under \"Runs outside the built-in suites\"")
    if not steps:
        return f"To rebuild this report: `{report_command}`."
    return f"To reproduce: {' and '.join(steps)}, then `{report_command}`."


def outside_runs(study: Study, suites: list[str]) -> list[dict[str, Any]]:
    """The completed runs (with their evaluations) of the suites that are not built in, oldest first."""
    others = [s for s in suites if s not in S.builtin_names()]
    members = {i for s in others for i in study.members.get(s, set())}
    ids = sorted(members | {c for i in members for c in study.children.get(i, [])})
    return [study.runs[i] for i in ids if study.runs[i]["status"] == "completed"]


def direct_commands(study: Study, suites: list[str]) -> list[str]:
    """Markdown: the train.py/evaluate.py commands of the completed runs of the suites not built in."""
    commands = list(dict.fromkeys(command(study, run) for run in outside_runs(study, suites)))
    if not commands:
        return []
    others = [s for s in suites if s not in S.builtin_names()]
    notes = [f"suite(s) {', '.join(f'`{s}`' for s in others if s != NO_SUITE)} came from a suite file: passing "
             "that file to sweep.py's --suite-file reruns them too"] if set(others) - {NO_SUITE} else []
    if NO_SUITE in others:
        notes.append(f"`{NO_SUITE}` holds runs started directly, not by a sweep")
    return ["## Runs outside the built-in suites", "",
            "The train.py and evaluate.py commands rebuilt from each run's recorded config, in the order they ran"
            + "".join(f"; {note}" for note in notes) + ".", "", "```sh", *commands, "```", ""]


def command(study: Study, run: dict[str, Any]) -> str:
    # runs record the dtype they resolved to (bfloat16, float32), not the --dtype asked for
    config = {**run["config"], "dtype": dtype_of_record(run["config"])}
    if run["kind"] == "train":
        argv = ["train.py", *S.to_argv(S.canonical(config, S.TRAIN_FLAGS), S.TRAIN_FLAGS), "--name", run["name"]]
    else:
        flags = eval_flags(config)
        argv = ["evaluate.py", *S.to_argv(S.canonical(flags, S.EVAL_FLAGS), S.EVAL_FLAGS), "--name", run["name"]]
        parent = study.runs.get(run["parent_id"]) if run["parent_id"] is not None else None
        if parent:  # the adapter's own settings (model, quant, seed, ...) come with it
            argv += ["--run-name", parent["name"]]
        elif config.get("samples"):   # completions made elsewhere, scored without a model
            argv += ["--samples", config["samples"]]
        else:
            argv += S.to_argv(S.canonical(flags, S.TRAIN_FLAGS), {k: S.TRAIN_FLAGS[k] for k in S.SHARED_FLAGS})
    if run.get("suite"):
        argv += ["--suite", run["suite"]]
    return " ".join(["python", *map(shlex.quote, argv)])


def eval_flags(config: dict[str, Any]) -> dict[str, Any]:
    """evaluate.py's options as its recorded config holds them (lists and benchmark keys back to flags)."""
    flags = {k: v for k, v in config.items() if k in S.EVAL_FLAGS or k in S.SHARED_FLAGS}
    for key in _MACHINE_KEYS:
        flags.pop(key, None)
    if config.get("benchmarks"):
        flags["benchmark"] = ",".join(config["benchmarks"])
    if isinstance(config.get("k"), list):
        flags["k"] = ",".join(str(k) for k in config["k"])
    keys = (config.get("benchmark_keys") or {}).values()
    if any(str(key.get("decode", "float32")) != "float32" for key in keys) and config.get("quant") == "16bit":
        flags["fp32_decoding"] = False   # 4/8-bit bases decode in half precision either way
    heldout = (config.get("benchmark_keys") or {}).get("heldout") or {}
    if heldout.get("generated") is not None:
        flags["heldout_gen"] = heldout["generated"]
    return flags

"""evaluate.py on the tiny model: scores and samples in the tracker, base comparison, --merge, --samples, bad input."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import evaluate
from common.judge.scoring import FAIL_STATUSES, paired_deltas
from common.corpus.splits import load_humaneval
from common.errors import run_cli
from common.tracker import Tracker

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
FAST = ["--eval-limit", "3", "--max-new-tokens", "16", "--quiet"]


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    """Run the CLI entry in-process; returns the exit code and stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: evaluate.main(argv))
    return exit_info.value.code, capsys.readouterr().err


def scores_of(db: str, run_id: int, benchmark: str) -> dict[str, dict]:
    return {s["name"]: s for s in Tracker(db).scores(run_id, benchmark)}


def eval_runs(db: str) -> list[dict]:
    return Tracker(db).runs(kind="eval")


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def make_adapter(model_dir: str, out: Path, db: str) -> int:
    """A LoRA adapter that changes the tiny model's outputs, saved and recorded the way train.py does it."""
    import torch
    from transformers import AutoModelForCausalLM

    from common.model.lora import attach_lora

    model = attach_lora(AutoModelForCausalLM.from_pretrained(model_dir), 4, None, 0.0, "qkvo")
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.peft_config["default"].base_model_name_or_path = model_dir
    model.save_pretrained(out)
    config = {"model": model_dir, "quant": "32bit", "dataset": "stdlib", "seed": 0, "template": "plain",
              "rank": 4, "modules": "qkvo"}
    tracker = Tracker(db)
    run_id = tracker.start_run("tiny-adapter", "train", config, output_dir=str(out))
    tracker.finish_run(run_id, "completed")
    (out / "run_config.json").write_text(json.dumps(
        {"run_id": run_id, "db": str(Path(db).resolve()), "status": "completed", "config": config}))
    return run_id


@pytest.fixture(scope="module")
def humaneval5():
    return load_humaneval()[:5]


# ---------------------------------------------------------------------------- scoring pieces

def test_sacrebleu_corpus_ci_equals_corpus_metric_ci(humaneval5):
    from common.judge.metrics import bleu, chrf, corpus_metric_ci, sacrebleu_corpus_ci

    hyps = [p.completion for p in humaneval5]
    refs = [p.completion.replace("return", "yield") for p in humaneval5]
    for name, metric in (("bleu", bleu), ("chrf", chrf)):
        fast = sacrebleu_corpus_ci(hyps, refs, name, n_resamples=40)
        slow = corpus_metric_ci(hyps, refs, metric, n_resamples=40)
        assert fast == pytest.approx(slow, abs=1e-9)


def test_paired_deltas_match_by_task_id():
    def rec(task, passed, syntax=None, chrf=50.0):
        return {"task_id": task, "sample_index": 0, "result": "passed" if passed else "failed",
                "details": {"syntax": syntax, "chrf": chrf}}

    base = [rec("b", False), rec("a", False, "unexpected EOF", 10.0)]
    mine = [rec("a", True, None, 30.0), rec("b", False), rec("c", True)]  # "c" has no base sample: left out
    deltas = paired_deltas(mine, base)
    assert deltas["delta.pass@1"][:2] == (0.5, 2)
    assert deltas["delta.syntax_ok"][:2] == (0.5, 2)
    assert deltas["delta.chrf"][:2] == (10.0, 2)


# ---------------------------------------------------------------------------- --samples

def test_samples_file_canonical_then_one_wrong(tmp_path, humaneval5):
    db = str(tmp_path / "e.db")
    rows = [{"task_id": p.id, "completion": p.completion} for p in humaneval5]
    good = write_jsonl(tmp_path / "good.jsonl", rows)
    assert evaluate.main(["--samples", good, "--db", db, "--output-dir", str(tmp_path / "good"), "--quiet"]) == 0
    run = eval_runs(db)[-1]
    assert run["status"] == "completed" and run["config"]["model"] is None
    scores = scores_of(db, run["id"], "humaneval")
    assert scores["pass@1"]["value"] == 1.0 and scores["pass@1"]["n"] == 5
    assert scores["syntax_ok"]["value"] == 1.0 and scores["chrf"]["value"] == pytest.approx(100.0)
    assert scores["fail.failed"]["value"] == 0 and scores["test_case_avg"]["value"] == 1.0
    assert scores["pass@1"]["ci_low"] < 1.0  # Wilson: never a zero-width interval at n/n

    rows[2] = {"task_id": humaneval5[2].id, "completion": "    return 0\n"}
    wrong = write_jsonl(tmp_path / "wrong.jsonl", rows)
    assert evaluate.main(["--samples", wrong, "--db", db, "--output-dir", str(tmp_path / "wrong"), "--quiet"]) == 0
    run = eval_runs(db)[-1]
    scores = scores_of(db, run["id"], "humaneval")
    assert scores["pass@1"]["value"] == pytest.approx(0.8)
    assert scores["fail.failed"]["value"] == 1 and scores["error.AssertionError"]["value"] == 1
    samples = Tracker(db).samples(run["id"], "humaneval")
    assert len(samples) == 5
    assert {s["task_id"]: s["result"] for s in samples}[humaneval5[2].id] == "failed"
    graded = {s["task_id"]: s["details"] for s in samples}[humaneval5[2].id]
    assert 0 <= graded["tests_passed"] < graded["tests_total"]  # partial credit, counted per assertion
    assert scores["test_case_avg"]["value"] == pytest.approx((4 + graded["tests_passed"] / graded["tests_total"]) / 5)
    dumped = json.loads((tmp_path / "wrong" / "samples.json").read_text())
    assert dumped["run_id"] == run["id"] and len(dumped["samples"]["humaneval"]) == 5


def test_samples_file_stdio_benchmark_and_pass_at_k(tmp_path):
    db = str(tmp_path / "e.db")
    bench = str(FIXTURES / "benchmark_stdio.jsonl")
    rows = [{"task_id": "io/0", "completion": "a, b = map(int, input().split())\nprint(a + b)\n"},
            {"task_id": "io/0", "completion": "print(0)\n"},
            {"task_id": "benchmark_stdio.jsonl:2", "completion": "```python\nprint(input()[::-1])\n```"},
            {"task_id": "benchmark_stdio.jsonl:2", "completion": "print(input()[::-1]"}]
    samples = write_jsonl(tmp_path / "io.jsonl", rows)
    assert evaluate.main(["--samples", samples, "--benchmark", bench, "--k", "1,2", "--db", db,
                          "--output-dir", str(tmp_path / "out"), "--quiet"]) == 0
    scores = scores_of(db, eval_runs(db)[-1]["id"], "benchmark_stdio.jsonl")
    assert scores["pass@1"]["value"] == pytest.approx(0.5)
    assert scores["pass@2"]["value"] == pytest.approx(1.0)
    assert scores["fail.failed"]["value"] == 1 and scores["error.WrongAnswer"]["value"] == 1
    assert scores["fail.syntax_error"]["value"] == 1 and scores["syntax_ok"]["value"] == pytest.approx(0.75)
    assert scores["syntax.unexpected_EOF"]["value"] == 1


@pytest.mark.parametrize("line, message", [
    ("{not json", "invalid JSON"),
    ('{"task_id": "HumanEval/0"}', "task_id and completion"),
    ('{"task_id": "Nope/1", "completion": "pass"}', "not a problem of humaneval"),
])
def test_samples_file_malformed_is_one_line_error(tmp_path, capsys, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"task_id": "HumanEval/0", "completion": "    return 1\\n"}\n' + line + "\n")
    code, err = run_main(["--samples", str(path), "--db", str(tmp_path / "e.db"), "--quiet"], capsys)
    assert code == 2 and message in err and "line 2" in err
    assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- models

@pytest.mark.slow
def test_base_model_evaluation(tiny_model, tmp_path, capsys):
    db, out = str(tmp_path / "e.db"), tmp_path / "base"
    assert evaluate.main(["--model", tiny_model, "--db", db, "--output-dir", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    [run] = eval_runs(db)
    assert run["status"] == "completed" and run["parent_id"] is None
    assert run["name"] == "eval-base:" + Path(tiny_model).name
    config = run["config"]
    assert config["adapter"] is None and config["benchmarks"] == ["humaneval", "heldout"]
    from common.sandbox.execute import isolation_info
    assert config["eval_limit"] == 3 and config["isolation"] == isolation_info("auto")["name"] and config["seed"] == 0
    he = scores_of(db, run["id"], "humaneval")
    assert 0.0 <= he["pass@1"]["value"] <= 1.0 and he["pass@1"]["n"] == 3
    assert 0.0 <= he["syntax_ok"]["value"] <= 1.0
    assert {"bleu", "chrf", "tokens_per_s", "gen_seconds", "exec_seconds", "peak_rss_mb"} <= set(he)
    assert sum(he[f"fail.{s}"]["value"] for s in FAIL_STATUSES) == 3 - 3 * he["pass@1"]["value"]
    held = scores_of(db, run["id"], "heldout")
    assert math.isfinite(held["perplexity"]["value"]) and held["perplexity"]["value"] > 1
    load = scores_of(db, run["id"], "load")
    assert 0 < load["cpu_own_share"]["value"] and 0 <= load["cpu_foreign_share"]["value"] <= 1
    assert held["nll"]["n"] > 0 and 0.0 <= held["syntax_ok"]["value"] <= 1.0
    assert "pass@1" not in held  # no tests in the stdlib split: reference-based scores only
    samples = Tracker(db).samples(run["id"], "humaneval")
    assert [s["task_id"] for s in samples] == [p.id for p in load_humaneval()[:3]]
    assert all(s["result"] in ("passed", *FAIL_STATUSES) for s in samples)
    # How each generation ended is recorded and counted, with the answers that hold no code.
    endings = [s["details"]["ended"] for s in samples]
    assert all(e in ("eos", "length") or e.startswith("stop '") for e in endings)
    assert sum(he[f"ended.{how}"]["value"] for how in ("eos", "stop", "length") if f"ended.{how}" in he) == 3
    assert he["empty"]["value"] == sum(not s["details"]["code"].strip() for s in samples) and he["empty"]["n"] == 3
    assert f"humaneval: {int(he['empty']['value'])} of 3 answers empty; generation ended by " in printed
    assert len(Tracker(db).samples(run["id"], "heldout")) == 3
    dumped = json.loads((out / "samples.json").read_text())
    assert set(dumped["samples"]) == {"humaneval", "heldout"} and "base" not in dumped["samples"]["humaneval"][0]


def test_heldout_gen_generates_a_prefix_and_scores_nll_on_all(tiny_model, tmp_path):
    """--heldout-gen 1 of 3: code scores from one generation, NLL (and its paired delta) from all three."""
    db = str(tmp_path / "e.db")
    argv = ["--model", tiny_model, "--benchmark", "heldout", "--db", db, *FAST]
    assert evaluate.main([*argv, "--output-dir", str(tmp_path / "all")]) == 0
    assert evaluate.main([*argv, "--heldout-gen", "1", "--output-dir", str(tmp_path / "one")]) == 0
    full, one = eval_runs(db)
    assert one["config"]["benchmark_keys"]["heldout"]["generated"] == 1
    assert "generated" not in full["config"]["benchmark_keys"]["heldout"]  # another identity: never paired
    samples = Tracker(db).samples(one["id"], "heldout")
    assert len(samples) == 3 and sum(s["generation"] is not None for s in samples) == 1
    scores, full_scores = scores_of(db, one["id"], "heldout"), scores_of(db, full["id"], "heldout")
    assert scores["syntax_ok"]["n"] == scores["chrf"]["n"] == 1
    assert scores["nll"]["n"] == full_scores["nll"]["n"] and scores["nll"]["value"] == full_scores["nll"]["value"]


@pytest.mark.slow
def test_instruction_heldout_and_stdio_file(tiny_model, tmp_path):
    """Instruction data goes through the chat template and is judged on stdin/stdout."""
    db = str(tmp_path / "e.db")
    assert evaluate.main(["--model", tiny_model, "--benchmark", f"heldout,{FIXTURES / 'benchmark_stdio.jsonl'}",
                          "--dataset", str(FIXTURES / "alpaca.jsonl"), "--db", db,
                          "--output-dir", str(tmp_path / "out"), *FAST]) == 0
    [run] = eval_runs(db)
    assert run["config"]["benchmark_keys"]["heldout"]["templates"] == ["chat"]
    stdio = scores_of(db, run["id"], "benchmark_stdio.jsonl")
    assert stdio["pass@1"]["n"] == 2 and "chrf" in stdio  # one problem has a reference solution
    [sample] = Tracker(db).samples(run["id"], "heldout")
    assert sample["prompt"].startswith("<|im_start|>") and sample["result"] is None


@pytest.mark.slow
def test_adapter_compared_with_base_and_merge_agrees(tiny_model, tmp_path):
    db = str(tmp_path / "e.db")
    train_id = make_adapter(tiny_model, tmp_path / "adapter", db)
    assert evaluate.main(["--adapter", str(tmp_path / "adapter"), "--db", db,
                          "--output-dir", str(tmp_path / "eval"), *FAST]) == 0
    base, run = eval_runs(db)
    assert base["config"]["adapter"] is None and base["parent_id"] is None
    assert base["name"] == f"eval-base:{Path(tiny_model).name}" and base["status"] == "completed"
    assert run["parent_id"] == train_id and run["config"]["adapter"] == str((tmp_path / "adapter").resolve())
    assert run["config"]["quant"] == "32bit" and run["config"]["model"] == str(Path(tiny_model).resolve())
    for bench in ("humaneval", "heldout"):
        scores = scores_of(db, run["id"], bench)
        assert {"delta.pass@1" if bench == "humaneval" else "delta.nll", "delta.syntax_ok", "delta.chrf"} <= set(scores)
        assert scores["base_run_id"]["value"] == base["id"]
        assert scores["delta.chrf"]["n"] == 3
    ours = Tracker(db).samples(run["id"], "humaneval")
    theirs = Tracker(db).samples(base["id"], "humaneval")
    assert [s["generation"] for s in ours] != [s["generation"] for s in theirs]  # the adapter does something
    dumped = json.loads((tmp_path / "eval" / "samples.json").read_text())
    first = dumped["samples"]["humaneval"][0]
    assert first["base"]["generation"] == theirs[0]["generation"]
    assert first["output"]["generation"] == ours[0]["generation"]

    # Same adapter through --run-id, merged: greedy generations equal the unmerged ones, the base run is reused.
    assert evaluate.main(["--run-id", str(train_id), "--merge", "--benchmark", "humaneval", "--db", db,
                          "--output-dir", str(tmp_path / "merged"), *FAST]) == 0
    runs = eval_runs(db)
    assert len(runs) == 3 and runs[-1]["config"]["merge"] and runs[-1]["parent_id"] == train_id
    merged = Tracker(db).samples(runs[-1]["id"], "humaneval")
    assert [s["generation"] for s in merged] == [s["generation"] for s in ours]
    assert scores_of(db, runs[-1]["id"], "humaneval")["base_run_id"]["value"] == base["id"]
    assert base["config"]["protocol"] == run["config"]["protocol"] == "completion"  # auto: trained on plain text
    held = scores_of(db, run["id"], "heldout")
    assert held["delta.perplexity"]["ci_low"] < held["delta.perplexity"]["value"] < held["delta.perplexity"]["ci_high"]

    # Another protocol is another benchmark: the base model is scored again under it, never paired across.
    assert evaluate.main(["--run-id", str(train_id), "--protocol", "instruct", "--benchmark", "humaneval", "--db",
                          db, "--output-dir", str(tmp_path / "instruct"), *FAST]) == 0
    *_, new_base, instruct = eval_runs(db)
    assert new_base["config"]["adapter"] is None and new_base["config"]["protocol"] == "instruct"
    assert instruct["config"]["benchmark_keys"]["humaneval"]["protocol"] == "instruct"
    assert scores_of(db, instruct["id"], "humaneval")["base_run_id"]["value"] == new_base["id"]


# ---------------------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def adapter_db(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapter")
    db = str(root / "e.db")
    train_id = make_adapter(tiny_model, root / "adapter", db)
    tracker = Tracker(db)
    running = tracker.start_run("still-training", "train", {"model": tiny_model}, output_dir=str(root / "adapter"))
    eval_id = tracker.start_run("an-eval", "eval", {})
    tracker.finish_run(eval_id, "completed")
    (root / "empty").mkdir()
    return {"root": root, "db": db, "train": train_id, "running": running, "eval": eval_id}


@pytest.mark.parametrize("argv, message", [
    (["--benchmark", "humaneval,nope"], "unknown benchmark 'nope'"),
    (["--benchmark", str(FIXTURES / "malformed.jsonl")], "malformed.jsonl line 1"),
    (["--adapter", "{root}/missing"], "does not exist"),
    (["--adapter", "{root}/empty"], "no adapter_config.json"),
    (["--adapter", "{root}/adapter", "--model", "smollm2-135m"], "was trained on"),
    (["--n-samples", "2", "--temperature", "0.8", "--k", "1,5"], "--n-samples 2 < k=5"),
    (["--n-samples", "3"], "--temperature 0"),
    (["--run-id", "999"], "no run 999 in"),
    (["--run-name", "nope"], "no completed train run named 'nope'"),
    (["--run-id", "{running}"], "not a completed train run"),
    (["--run-id", "{eval}"], "not a completed train run"),
    (["--merge"], "--merge needs an adapter"),
    (["--k", "one"], "--k must be"),
])
def test_bad_input_is_one_line_exit_2(adapter_db, tiny_model, tmp_path, capsys, argv, message):
    argv = [a.format(**adapter_db) for a in argv]
    code, err = run_main([*argv, "--db", adapter_db["db"], "--output-dir", str(tmp_path), "--quiet"], capsys)
    assert code == 2, err
    assert message in err and err.startswith("error: ")
    assert len(err.strip().splitlines()) == 1
    if "was trained on" in message:
        assert f"pass --model {tiny_model}" in err


def test_cli_exit_code_from_a_shell(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--benchmark", "nope", "--db",
                           str(tmp_path / "e.db")], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: unknown benchmark 'nope': use humaneval, heldout, mbpp, "
                                                "humaneval+, mbpp+, or an existing .jsonl file"]


@pytest.mark.parametrize("exception, status, code", [(KeyboardInterrupt, "interrupted", 130),
                                                     (RuntimeError, "failed", None)])
def test_crash_or_ctrl_c_marks_the_run(tmp_path, capsys, monkeypatch, humaneval5, exception, status, code):
    samples = write_jsonl(tmp_path / "s.jsonl", [{"task_id": humaneval5[0].id, "completion": "    pass\n"}])
    db = str(tmp_path / "e.db")

    def explode(*args, **kwargs):
        raise exception("boom")

    from common.judge import verdicts
    monkeypatch.setattr(verdicts, "judge_samples", explode)
    argv = ["--samples", samples, "--db", db, "--output-dir", str(tmp_path / "out"), "--quiet"]
    if code is None:
        with pytest.raises(exception):  # a bug keeps its traceback
            evaluate.main(argv)
    else:
        assert run_main(argv, capsys)[0] == code
    [run] = eval_runs(db)
    assert run["status"] == status
    assert (run["error"] or "").startswith("RuntimeError") == (status == "failed")


def test_decode_key_names_the_engine_and_batch_size_only_where_outputs_depend_on_them():
    import torch

    from common.config import EvalConfig
    from common.evaluation.settings import decode_key

    cfg = EvalConfig(quant="16bit", eval_batch_size=16)
    assert decode_key(cfg, torch.bfloat16) == "float32"  # fp32 decoding: batch-invariant
    cfg.fp32_decoding = False
    # not "bfloat16, batch 16": the batch-at-a-time decoder's half-precision scores must not pair with these
    assert decode_key(cfg, torch.bfloat16) == "bfloat16, continuous batch 16"

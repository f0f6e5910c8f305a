"""infer.py: streamed generation, template choice, base vs adapter, interactive session, merge, push, bad input.

Adapters come from real `train.main` runs on the tiny model (2 steps), with lora_B then
overwritten by noise so the adapter visibly changes the output (2 steps at lr 2e-4 barely
move it). Generations are 8-12 tokens; nothing touches the network.
"""
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import infer
from common.inference.console import DEMO_PROMPTS
from common.inference.session import Session
from common.inference.settings import unescape
from common.text.streaming import StopAwareStreamer
from common.errors import run_cli
from common.model.export import MERGE_RECORD
from common.model.load import half_dtype

ROOT = Path(__file__).resolve().parent.parent
FUNCS = ["add", "sub", "mul", "neg", "double", "triple", "square", "cube", "half", "inc", "dec", "is_zero",
         "is_pos", "is_neg", "ident", "first", "last", "size", "head", "tail", "rev", "upper", "lower", "strip"]


def _train(tiny_model: str, workdir: Path, quant: str) -> dict:
    """A completed train run on the tiny model with a perturbed adapter: {db, run_id, dir}."""
    import safetensors.torch

    import train
    data = workdir / "data.jsonl"
    if not data.exists():
        # Bodies that differ in structure, not only in literals: near-duplicates are removed from the data.
        bodies = [f"{fn}(x) {op} {i}" for i, (fn, op) in enumerate(
            (fn, op) for fn in ("abs", "len", "str", "int", "float", "sorted") for op in ("+", "-", "*", "%"))]
        data.write_text("".join(json.dumps({"prompt": f'def {n}_{i}(x):\n    """Compute {n} of x, case {i}."""\n',
                                            "completion": f"    return {body}\n"}) + "\n"
                                for i, (n, body) in enumerate(zip(FUNCS, bodies))))
    db, out = workdir / "exp.db", workdir / f"run-{quant}"
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert train.main(["--model", tiny_model, "--dataset", str(data), "--max-steps", "2", "--eval-every", "0",
                           "--eval-gen", "0", "--db", str(db), "--output-dir", str(out), "--train-limit", "16",
                           "--quiet", "--quant", quant, "--batch-size", "2", "--max-seq-len", "128",
                           "--format", "completion"]) == 0
    finally:
        for s, h in handlers.items():  # train.main installs its own Ctrl-C handler
            signal.signal(s, h)
    weights = out / "adapter_model.safetensors"
    tensors = safetensors.torch.load_file(weights)
    generator = torch.Generator().manual_seed(1)
    for name, t in tensors.items():
        if "lora_B" in name:
            tensors[name] = torch.randn(t.shape, generator=generator) * 0.5
    safetensors.torch.save_file(tensors, weights)
    run_id = json.loads((out / "run_config.json").read_text())["run_id"]
    return {"db": str(db), "run_id": run_id, "dir": str(out)}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("infer")


@pytest.fixture(scope="module")
def run32(tiny_model, workdir) -> dict:
    return _train(tiny_model, workdir, "32bit")


@pytest.fixture(scope="module")
def run4(tiny_model, workdir) -> dict:
    return _train(tiny_model, workdir, "4bit")


def run_main(argv, capsys, stdin=None, speed=False) -> tuple[str, str]:
    """infer.py's output; without the timing line (it differs run to run) unless speed=True."""
    assert infer.main(argv + ([] if speed else ["--quiet"]), stdin=stdin) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def sections(out: str) -> dict[str, str]:
    """Text under each '=== label ===' header of a comparison."""
    parts, label = {}, None
    for line in out.splitlines(keepends=True):
        if line.startswith("=== "):
            label = line.strip("= \n")
            parts[label] = ""
        elif label:
            parts[label] += line
    return parts


def greedy(model, tokenizer, prompt: str, n: int = 12) -> str:
    from common.text.generation import generate
    return generate(model, tokenizer, [prompt], "plain", max_new_tokens=n, stop=None)[0].text


# ---------------------------------------------------------------------------- generation


@pytest.mark.slow
def test_single_prompt_streams_and_reports_syntax(tiny_model, capsys):
    out, err = run_main(["--model", tiny_model, "--prompt", "def add(a, b):", "--max-new-tokens", "8",
                         "--quant", "32bit"], capsys, speed=True)
    assert out.startswith("--- template plain (auto: prompt starts with code)")
    assert "def add(a, b):" in out
    status = [line for line in out.splitlines() if line.startswith("--- syntax")]
    assert len(status) == 1 and (status[0] == "--- syntax ok" or status[0].startswith("--- syntax error: "))
    assert "time to first token" in out and "tokens/s" in out
    assert f"model {tiny_model} (32bit" in err


@pytest.mark.slow
def test_streamed_text_equals_batch_generate(tiny_model):
    """What is streamed and checked is exactly what common.text.generation.generate (evaluation) produces."""
    from common.text.generation import STOP_SEQUENCES, generate
    from common.text.prompts import render_prompt
    from common.model.load import load_model, load_tokenizer
    tokenizer, model = load_tokenizer(tiny_model), load_model(tiny_model, "32bit", torch.device("cpu"))
    printed = io.StringIO()
    session = Session(model, tokenizer, None, torch.device("cpu"), torch.float32, max_new_tokens=12,
                            out=printed)
    for prompt, template, stops in [("def add(a, b):\n", "plain", STOP_SEQUENCES),
                                    ("Write a function that adds two numbers.", "chat", ())]:
        (_, result), = session.run(prompt)
        assert result.template == template
        expected = generate(model, tokenizer, [render_prompt(tokenizer, prompt.strip() if template == "chat"
                                                             else prompt, template)],
                            template, max_new_tokens=12, stop=stops)[0].text
        assert result.completion == expected
        assert expected in printed.getvalue()


def test_streamer_never_prints_past_a_stop_sequence(tiny_model):
    from common.model.load import load_tokenizer
    tokenizer = load_tokenizer(tiny_model)
    written = []
    streamer = StopAwareStreamer(tokenizer, ["\ndef", "\n#"], written.append, "def f():\n")
    streamer.put(torch.tensor([[1, 2, 3]]))  # the prompt, skipped
    for token in tokenizer("    return 1\n\ndef other():\n    pass", add_special_tokens=False)["input_ids"]:
        streamer.put(torch.tensor([token]))
    streamer.end()
    assert "".join(written) == "    return 1\n" == streamer.text()
    assert streamer.first_token_at is not None


def test_streamer_counts_a_stop_that_begins_in_the_prompt(tiny_model):
    from common.model.load import load_tokenizer
    tokenizer = load_tokenizer(tiny_model)
    written = []
    streamer = StopAwareStreamer(tokenizer, ["\n```"], written.append, "def f():\n")
    streamer.put(torch.tensor([[1, 2, 3]]))
    for token in tokenizer("```python", add_special_tokens=False)["input_ids"]:
        streamer.put(torch.tensor([token]))
    streamer.end()
    assert "".join(written) == "" == streamer.text()  # as evaluate.py scores it


@pytest.mark.slow
def test_sampling_is_reproducible_with_a_seed(tiny_model, capsys):
    argv = ["--model", tiny_model, "--quant", "32bit", "--prompt", "def f(x):", "--max-new-tokens", "8",
            "--temperature", "1.5", "--top-k", "50", "--top-p", "0.95"]
    first, _ = run_main(argv + ["--seed", "1"], capsys)
    assert run_main(argv + ["--seed", "1"], capsys)[0] == first
    assert run_main(argv + ["--seed", "2"], capsys)[0] != first


def test_stop_flag_escapes():
    assert unescape(r"\n\tx\\n") == "\n\tx\\n"


def test_template_rule(tiny_model):
    from common.model.load import load_tokenizer
    session = Session(None, load_tokenizer(tiny_model), None, torch.device("cpu"), torch.float32)
    for code in ("def f(x):", "  class A:", "import os", "from x import y", "@cache", "# add two numbers",
                 "async def f():"):
        assert session.template_for(code)[0] == "plain"
    assert session.template_for("Write a function that adds.")[0] == "chat"  # the tokenizer has a chat template
    session.recorded_template = "alpaca"
    assert session.template_for("def f(x):") == ("alpaca", "as in training")
    session.template = "plain"
    assert session.template_for("Write a function.")[0] == "plain"


def test_adapter_changes_output_and_compare_prints_both(run32, capsys):
    out, err = run_main(["--run-id", str(run32["run_id"]), "--db", run32["db"], "--compare",
                         "--prompt", "def add(a, b):", "--max-new-tokens", "12"], capsys)
    parts = sections(out)
    assert list(parts) == ["base model", f"adapter (run {run32['run_id']})"]
    base, adapted = parts.values()
    assert base != adapted
    for text in (base, adapted):
        assert text.startswith("def add(a, b):") and "--- syntax" in text
    assert "(32bit" in err and "template plain (as in training)" in err  # defaults from run_config.json

    # --adapter DIR alone gives the adapter's output.
    out, _ = run_main(["--adapter", run32["dir"], "--prompt", "def add(a, b):", "--max-new-tokens", "12"], capsys)
    assert out == adapted


@pytest.mark.slow
def test_interactive_session_through_a_pipe(run32):
    script = ("/help\n/temp 0\n/max 8\ndef add(a, b):\n\n    # blank line above stays in the prompt\n.\n"
              "/adapter off\ndef add(a, b):\n\n    # blank line above stays in the prompt\n.\n"
              "/temp hot\n/bogus\n.\n/quit\ndef never_run():\n.\n")
    proc = subprocess.run([sys.executable, "infer.py", "--run-id", str(run32["run_id"]), "--db", run32["db"]],
                          input=script, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "/adapter on|off" in out and "max new tokens 8" in out and "adapter off: base model only" in out
    assert "usage: /temp X" in out and "unknown command /bogus" in out and "empty prompt" in out
    assert ">>>" not in out  # no decorations on a pipe
    assert "never_run" not in out
    answers = [chunk for chunk in out.split("def add(a, b):\n\n    # blank line above stays in the prompt")[1:]]
    assert len(answers) == 2 and out.count("--- syntax") == 2
    adapted, base = (a.split("--- syntax")[0] for a in answers)
    assert adapted != base


def test_interactive_end_of_input_runs_the_pending_prompt(tiny_model, capsys):
    out, _ = run_main(["--model", tiny_model, "--quant", "32bit", "--max-new-tokens", "4"], capsys,
                      stdin=io.StringIO("/adapter on\nWrite a function that adds."))
    assert "no adapter loaded" in out and out.count("--- syntax") == 1


@pytest.mark.slow
def test_demo_without_adapter_runs_base_only(tiny_model, capsys):
    out, _ = run_main(["--model", tiny_model, "--quant", "32bit", "--demo", "--max-new-tokens", "4"], capsys)
    assert out.count("##### ") == len(DEMO_PROMPTS) and "=== " not in out
    assert out.count("--- syntax") == len(DEMO_PROMPTS)
    assert "summary" in out


# ---------------------------------------------------------------------------- merge and push


def _merge_matches(adapter: dict, merged: Path, tiny_model: str, base_quant: str) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from common.model.load import compute_dtype, load_model, load_tokenizer
    tokenizer = load_tokenizer(tiny_model)
    reference = PeftModel.from_pretrained(load_model(tiny_model, base_quant, torch.device("cpu")), adapter["dir"])
    loaded = AutoModelForCausalLM.from_pretrained(merged)
    assert not any("lora" in name for name, _ in loaded.named_parameters())
    prompt = "def add(a, b):\n"
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    exact = compute_dtype(base_quant, torch.device("cpu")) == torch.float32  # bf16 merges round (~0.1)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(ids).logits.float(), reference(ids).logits.float(),
                                   atol=1e-4 if exact else 0.2, rtol=1e-4 if exact else 0.05)
    if exact:
        assert greedy(loaded, tokenizer, prompt) == greedy(reference, tokenizer, prompt)
    with reference.disable_adapter():
        assert greedy(loaded, tokenizer, prompt) != greedy(reference, tokenizer, prompt)  # the adapter is in there
    assert {"generation_config.json", "tokenizer.json", "config.json"} <= {p.name for p in merged.iterdir()}
    assert json.loads((merged / MERGE_RECORD).read_text())["template"] == "plain"


@pytest.mark.slow
def test_merge_round_trip(run32, tiny_model, workdir, capsys):
    merged = workdir / "merged-32"
    out, _ = run_main(["--run-id", str(run32["run_id"]), "--db", run32["db"], "--merge-to", str(merged)], capsys)
    assert f"saved it to {merged}" in out
    _merge_matches(run32, merged, tiny_model, "32bit")
    # The merged model runs through infer.py on its own, with the template it was trained with.
    out, err = run_main(["--model", str(merged), "--prompt", "Write a function.", "--max-new-tokens", "4"], capsys)
    assert "template plain (as in training)" in err and out.startswith("Write a function.")


@pytest.mark.slow
def test_merge_of_4bit_trained_adapter_into_16bit_base(run4, tiny_model, workdir, capsys):
    merged = workdir / "merged-4"
    out, err = run_main(["--adapter", run4["dir"], "--merge-to", str(merged)], capsys)
    # 16bit is bf16 on a CPU with native bf16, fp32 on one without; never the 4-bit it was trained on.
    assert f"({str(half_dtype(torch.device('cpu'))).removeprefix('torch.')})" in out
    _merge_matches(run4, merged, tiny_model, "16bit")
    # Plain inference with that adapter defaults to its training quant.
    out, err = run_main(["--adapter", run4["dir"], "--prompt", "def f(x):", "--max-new-tokens", "4"], capsys)
    assert "(4bit" in err and "--- syntax" in out


def _no_hub_token(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub, "HF_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setattr(hub, "HF_STORED_TOKENS_PATH", str(tmp_path / "stored_tokens"))


def test_push_to_hub_without_token(run32, monkeypatch, tmp_path, capsys):
    _no_hub_token(monkeypatch, tmp_path)
    line = error_line(capsys, ["--adapter", run32["dir"], "--push-to-hub", "someone/adapter"])
    assert line.startswith("error: no Hugging Face token:") and "HF_TOKEN" in line


def test_push_to_hub_offline(run32, monkeypatch, tmp_path, capsys):
    import huggingface_hub.constants as hub
    _no_hub_token(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # read at import time
    line = error_line(capsys, ["--adapter", run32["dir"], "--push-to-hub", "someone/adapter"])
    assert line.startswith("error: could not reach the Hugging Face hub (offline?): ")


# ---------------------------------------------------------------------------- bad input


def error_line(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: infer.main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


def test_bad_inputs_are_one_line_errors(run32, tiny_model, tiny_gpt2, workdir, capsys):
    from common.tracker import Tracker
    tracker = Tracker(run32["db"])
    eval_id = tracker.start_run("an-eval", "eval", {"x": 1})
    tracker.finish_run(eval_id, "completed")
    failed_id = tracker.start_run("broken", "train", {"x": 2}, output_dir=run32["dir"])
    tracker.finish_run(failed_id, "failed", error="boom")
    tracker.close()
    no_adapter = workdir / "not-an-adapter"
    no_adapter.mkdir(exist_ok=True)
    not_empty = workdir / "occupied"
    not_empty.mkdir(exist_ok=True)
    (not_empty / "file").write_text("x")
    db = ["--db", run32["db"]]
    cases = [
        (["--run-id", "999", *db], "no run 999"),
        (["--run-id", "1", "--db", str(workdir / "missing.db")], "no run tracker database"),
        (["--run-id", str(eval_id), *db], "is a completed eval run, not a completed train run"),
        (["--run-id", str(failed_id), *db], "is a failed train run, not a completed train run"),
        (["--adapter", str(workdir / "nowhere")], "does not exist"),
        (["--adapter", str(no_adapter)], "has no adapter_config.json"),
        (["--adapter", run32["dir"], "--model", tiny_gpt2], f"was trained on {tiny_model}, not {tiny_gpt2}"),
        (["--model", tiny_model, "--prompt", "  \n"], "empty --prompt"),
        (["--model", tiny_model, "--compare", "--prompt", "x"], "--compare needs an adapter"),
        (["--model", tiny_model, "--merge-to", str(workdir / "m")], "--merge-to needs an adapter"),
        (["--adapter", run32["dir"], "--merge-to", str(not_empty)], "is not an empty directory"),
        (["--adapter", run32["dir"], "--run-id", "1"], "not allowed with argument"),
        (["--model", tiny_model, "--temperature", "-1", "--prompt", "x"], "--temperature must be >= 0"),
        (["--model", tiny_model, "--max-new-tokens", "0", "--prompt", "x"], "--max-new-tokens must be positive"),
    ]
    for argv, message in cases:
        line = error_line(capsys, argv)
        assert line.startswith("error: ") and message in line, (argv, line)


@pytest.mark.slow
def test_bad_input_from_the_command_line(tiny_model):
    proc = subprocess.run([sys.executable, "infer.py", "--model", tiny_model, "--prompt", ""],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == ["error: empty --prompt; pass some text, or leave --prompt out for an "
                                        "interactive session"]

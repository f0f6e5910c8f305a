"""The first hour of a new user (issue 32 items 2, 4, 5): train.py at its defaults trains a chat model in chat turns
and says so, states its plan before the first step, ends in rounded figures, and leaves an adapter that travels
(its base named by a public id, a model card filled from the run) and that the toolkit still loads offline."""
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

import evaluate
import infer
import train
from common.errors import UserError
from common.model.adapters import adapter_from_dir, adapter_from_run, check_base_model, publish_base_model
from common.model.resolve import EMBEDDED, cache_dir, embedded_name, public_model_id
from common.tracker import Tracker

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """One run at train.py's defaults (no --format) on the tiny llama, which has SmolLM2's chat template."""
    tmp = tmp_path_factory.mktemp("defaults")
    argv = ["--model", tiny_model, "--db", str(tmp / "e.db"), "--output-dir", str(tmp / "run"), "--train-limit", "24",
            "--max-seq-len", "256", "--max-steps", "2", "--eval-every", "0", "--eval-gen", "0", "--val-limit", "4",
            "--quiet"]
    capture = pytest.MonkeyPatch()
    out_file, err_file = tmp / "stdout", tmp / "stderr"
    with open(out_file, "w") as out, open(err_file, "w") as err:
        capture.setattr(sys, "stdout", out)
        capture.setattr(sys, "stderr", err)
        capture.setattr(sys, "argv", ["train.py", *argv])
        code = train.main(argv)
    capture.undo()
    return {"code": code, "out": out_file.read_text(), "err": err_file.read_text(), "dir": tmp / "run",
            "db": str(tmp / "e.db"), "model": tiny_model, "argv": argv}


def test_a_chat_model_trains_chat_turns_by_default_and_says_so(trained):
    assert trained["code"] == 0
    (run,) = Tracker(trained["db"]).runs()
    assert run["config"]["format"] == "instruct" and run["config"]["template"] == "chat"  # recorded resolved
    notes = [line for line in trained["err"].splitlines() if line.startswith("format:")]
    assert len(notes) == 1 and notes[0].startswith("format: instruct (--format auto; the model has a chat template")
    # evaluate.py --protocol auto then scores it in the format it learned
    from common.model.load import load_tokenizer
    from common.text.protocols import resolve_protocol, train_format_of
    adapter = adapter_from_dir(trained["dir"], "run")
    assert resolve_protocol("auto", load_tokenizer(trained["model"]), train_format_of(adapter.train_config)) \
        == "instruct"


def test_the_plan_is_stated_before_the_first_step_and_the_end_is_rounded(trained):
    lines = trained["out"].splitlines()
    plan = next(i for i, line in enumerate(lines) if line.startswith("plan: "))
    first_step = next(i for i, line in enumerate(lines) if line.startswith("step "))
    assert plan < first_step
    assert re.match(r"plan: 2 steps to go, predicted \d+\.\d\d s/step = .+ peak memory [\d,]+ MiB", lines[plan])
    end = next(line for line in lines if " completed in " in line)
    assert re.search(r"val loss \d+\.\d{4}, best \d+\.\d{4} at step 2; adapter \d+\.\d MiB in .*; peak memory "
                     r"[\d,]+ MiB$", end), end


def test_the_saved_adapter_names_its_base_publicly_and_carries_a_model_card(trained):
    out = trained["dir"]
    for directory in (out, out / "best"):
        config = json.loads((directory / "adapter_config.json").read_text())
        # a local model directory has no public id: its absolute path, never a path inside the toolkit's cache
        assert config["base_model_name_or_path"] == str(Path(trained["model"]).resolve())
    card = (out / "README.md").read_text()
    assert card.startswith(f"---\nbase_model: {Path(trained['model']).resolve()}\nlibrary_name: peft\n")
    assert "[More Information Needed]" not in card  # PEFT's blank template is gone
    config = Tracker(trained["db"]).runs()[0]["config"]
    examples = f"| examples | {config['train_examples']} train / {config['val_examples']} validation (--train-limit 24) |"
    for expected in (examples, "| rank / alpha / dropout | 16 / 32 / 0.05 |",
                     "| variants | plain LoRA |", "| optimizer steps | 2 |", "| format / template | instruct / chat |",
                     f"| modules | {', '.join(config['target_modules'])} |",
                     "| batch | 4 x grad-accum 1 x 1 process(es) |", "--max-steps 2"):
        assert expected in card, expected
    assert re.search(r"\| final validation loss \| \d+\.\d{4} \|", card)
    assert "python train.py --model " in card  # the command, as sys.argv gave it


def test_the_embedded_models_are_named_by_their_public_ids(tmp_path):
    assert public_model_id("smollm2-135m") == SMOLLM2 and public_model_id("gemma3-270m") == "google/gemma-3-270m"
    prepared = cache_dir() / "models" / f"smollm2-135m-{EMBEDDED['smollm2-135m'].sha256[:12]}"
    if prepared.is_dir():  # the path PEFT saw while training on the embedded model
        assert public_model_id(str(prepared)) == SMOLLM2
    assert public_model_id("Qwen/Qwen2.5-Coder-1.5B") == "Qwen/Qwen2.5-Coder-1.5B"
    assert embedded_name(SMOLLM2) == "smollm2-135m" and embedded_name("Qwen/Qwen2.5-Coder-1.5B") == \
        "Qwen/Qwen2.5-Coder-1.5B"
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/home/x/.cache/m", "r": 8}))
    publish_base_model(tmp_path, "smollm2-135m")
    assert json.loads((tmp_path / "adapter_config.json").read_text()) == {"base_model_name_or_path": SMOLLM2, "r": 8}


def test_an_adapter_naming_the_public_id_maps_back_to_the_embedded_copy(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": SMOLLM2}))
    adapter = adapter_from_dir(tmp_path, "a")  # no run_config.json: the base comes from adapter_config.json
    assert adapter.base_model == "smollm2-135m"
    check_base_model(adapter, SMOLLM2)  # the hub's own weights of the same model are accepted
    with pytest.raises(UserError, match="was trained on smollm2-135m, not gemma3-270m"):
        check_base_model(adapter, "gemma3-270m")


@pytest.fixture
def travelled(trained, tmp_path):
    """The trained adapter as it would be after training on the embedded model: its base is a hub id that cannot
    be fetched here (HF_HUB_OFFLINE, tests/conftest.py), its run_config.json names the local model."""
    moved = tmp_path / "adapter"
    shutil.copytree(trained["dir"], moved, ignore=shutil.ignore_patterns("best"))
    config = json.loads((moved / "adapter_config.json").read_text())
    (moved / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": SMOLLM2}))
    return moved


def test_plain_peft_loads_it_given_the_base_model_object(trained, travelled):
    import torch
    base = AutoModelForCausalLM.from_pretrained(trained["model"])
    ids = torch.randint(0, 1000, (1, 8))
    loaded = PeftModel.from_pretrained(base, str(travelled))
    assert loaded.peft_config["default"].base_model_name_or_path == SMOLLM2
    assert loaded(ids).logits.shape == (1, 8, base.config.vocab_size)


def test_evaluate_and_infer_load_it_offline(trained, travelled, tmp_path, capsys):
    assert evaluate.main(["--adapter", str(travelled), "--benchmark", "heldout", "--eval-limit", "2",
                          "--heldout-gen", "0", "--no-compare", "--db", str(tmp_path / "e.db"),
                          "--output-dir", str(tmp_path / "eval"), "--quiet"]) == 0
    (run,) = Tracker(tmp_path / "e.db").runs(kind="eval")
    assert run["status"] == "completed"
    assert infer.main(["--adapter", str(travelled), "--prompt", "def add(a, b):", "--max-new-tokens", "4",
                       "--quiet"]) == 0


def test_an_interrupted_run_is_refused_with_a_resume_hint(tmp_path):
    tracker = Tracker(tmp_path / "e.db")
    run_id = tracker.start_run("r16-x", "train", {"rank": 16})
    tracker.finish_run(run_id, "interrupted")
    with pytest.raises(UserError) as e:
        adapter_from_run(tracker, str(tmp_path / "e.db"), run_id)
    message = str(e.value)
    assert f"run {run_id} ('r16-x') is an interrupted train run" in message
    assert "resume it by re-running its train.py command (same --name r16-x" in message

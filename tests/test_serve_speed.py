"""bench/serve_speed.py (inference speed as served) and its report section, common/study/serving.py.

The smoke run measures every arm on the tiny llama in seconds; it checks what the JSON records (every arm, or why
one was skipped; the same token count in every arm; merged == unmerged texts in fp32), never a speed.
"""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from common.env import cpu_kind  # noqa: E402
from common.errors import UserError  # noqa: E402
from common.study.serving import serving_lines  # noqa: E402


def serve_speed():
    spec = importlib.util.spec_from_file_location("bench_serve_speed", ROOT / "bench" / "serve_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bitsandbytes_runs() -> bool:
    from common.model.load import check_quant
    try:
        check_quant("4bit", torch.device("cpu"))
    except UserError:
        return False
    return True


@pytest.mark.slow
def test_smoke_run_measures_every_arm_and_renders(tiny_model, tmp_path):
    out = tmp_path / "serve.json"
    bench = serve_speed()
    bench.main(["--model", tiny_model, "--max-new-tokens", "4", "--repeats", "1", "--prompts", "1",
                "--batch-size", "2", "--fp32-decoding", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["machine"]["cpu_kind"] == cpu_kind() and report["machine"]["dtype"] == "float32"
    assert list(report["arms"]) == list(bench.ARMS)
    quantized = ("lora-nf4", "lora-int8")
    for name, arm in report["arms"].items():
        if name in quantized and not bitsandbytes_runs():
            assert arm["skipped"].startswith("skipped: --quant")
            continue
        assert "error" not in arm and "skipped" not in arm, (name, arm)
        assert arm["ttft_s"] > 0 and arm["decode_tokens_per_s"] > 0 and arm["batch8_tokens_per_s"] > 0
        assert arm["peak_rss_mib"] >= arm["rss_after_load_mib"] > 0
        (run,) = arm["runs"]
        # stops off and EOS masked: every arm decodes the same count, one prompt alone and two at once
        assert run["new_tokens"] == [4] and run["batch_new_tokens"] == 2 * 4 and run["batch_rows"] == 2
        assert arm["dtype"] == ("float32" if name not in quantized else run["dtype"])
    assert report["ratios"]["base"] == {k: 1.0 for k in report["ratios"]["base"]}
    assert report["identical_texts"] is True and report["identical_texts_dtype"] == "float32"
    assert report["settings"]["command"].startswith("python bench/serve_speed.py --model ")

    lines = serving_lines(out)
    assert lines[0] == "### Inference speed as served (bench/serve_speed.py)"
    table = [line for line in lines if line.startswith("| ")][1:]
    assert [row.split(" ")[1] for row in table] == list(bench.ARMS)
    assert "reference" in table[0] and "x, " in table[1]
    assert any(line.startswith("Reproduce: `python bench/serve_speed.py") for line in lines)
    assert any("medians of one run on a quiet machine" in line for line in lines)
    assert f"Ran on {report['machine']['device']}; CPU flags " in "\n".join(lines)


def test_arms_bitsandbytes_cannot_run_are_skipped_with_the_reason(monkeypatch):
    import common.model.load as load

    def refuse(quant, device):
        if quant in ("4bit", "8bit"):
            raise UserError(f"--quant {quant} needs bitsandbytes working on cpu (no library)")

    monkeypatch.setattr(load, "check_quant", refuse)
    skipped = serve_speed().unavailable_arms(torch.device("cpu"))
    assert skipped == {"lora-nf4": "skipped: --quant 4bit needs bitsandbytes working on cpu (no library)",
                       "lora-int8": "skipped: --quant 8bit needs bitsandbytes working on cpu (no library)"}


def test_summary_ratios_and_texts_from_runs():
    bench = serve_speed()
    run = {"quant": "16bit", "dtype": "float32", "ttft_s": [0.1, 0.3], "decode_tokens_per_s": [20.0, 30.0],
           "batch8_tokens_per_s": 100.0, "peak_rss_mib": 800, "rss_after_load_mib": 600, "load_s": 1.0,
           "texts": ["a", "b"]}
    slow = {**run, "ttft_s": [0.4, 0.4], "decode_tokens_per_s": [10.0, 15.0], "batch8_tokens_per_s": 50.0,
            "texts": ["a", "c"]}
    arms = {"base": bench.summarise([run, run]), "lora-unmerged": bench.summarise([slow, {"error": "killed"}]),
            "lora-merged": bench.summarise([{"error": "killed"}])}
    assert arms["base"]["ttft_s"] == 0.2 and arms["base"]["decode_tokens_per_s"] == 25.0
    assert arms["lora-merged"]["error"] == "killed"
    assert bench.ratios(arms) == {"base": {"ttft_s": 1.0, "decode_tokens_per_s": 1.0, "batch8_tokens_per_s": 1.0,
                                           "peak_rss_mib": 1.0},
                                  "lora-unmerged": {"ttft_s": 2.0, "decode_tokens_per_s": 0.5,
                                                    "batch8_tokens_per_s": 0.5, "peak_rss_mib": 1.0}}
    assert bench.identical_texts({"lora-unmerged": [run], "lora-merged": [run]}) is True
    assert bench.identical_texts({"lora-unmerged": [run], "lora-merged": [slow]}) is False
    assert bench.identical_texts({"lora-unmerged": [run], "lora-merged": [{"error": "x"}]}) is None


def test_eos_is_masked_so_every_arm_decodes_the_same_count(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    eos = model.config.eos_token_id
    serve_speed().suppress_eos(model, eos)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert (logits[..., eos] == torch.finfo(logits.dtype).min).all()
    assert (logits.argmax(-1) != eos).all()


def test_the_session_renders_a_code_prompt_as_evaluate_py_does():
    """The bench times infer.py's session on a raw HumanEval prompt; with an instruct-trained adapter it must see
    exactly evaluate.py's instruct prompt."""
    from common.corpus.splits import load_humaneval
    from common.inference.session import Session
    from common.model.load import load_tokenizer
    from common.text.protocols import render

    tokenizer = load_tokenizer("smollm2-135m")
    session = Session(None, tokenizer, None, torch.device("cpu"), torch.float32, train_format="instruct")
    for problem in load_humaneval()[:3]:
        assert render(tokenizer, session.instruct_example(problem.prompt), "instruct") == render(tokenizer, problem,
                                                                                                 "instruct")


def test_serving_lines_without_a_result_and_with_a_broken_one(tmp_path):
    assert serving_lines(tmp_path / "missing.json") == []
    broken = tmp_path / "serve.json"
    broken.write_text(json.dumps({"model": "m", "arms": {}}))
    with pytest.raises(UserError, match="rerun python bench/serve_speed.py"):
        serving_lines(broken)


def write_sample_result(path: Path) -> Path:
    """A bench/serve_speed.py result with a measured, a skipped and a failed arm."""
    arm = {"quant": "16bit", "dtype": "bfloat16", "ttft_s": 0.05, "decode_tokens_per_s": 40.0,
           "batch8_tokens_per_s": 200.0, "peak_rss_mib": 900}
    path.write_text(json.dumps({
        "model": "smollm2-135m", "machine": {"device": "cpu", "cpu_kind": "amx", "cpu_bf16_flags": ["amx_bf16"],
                                             "threads": 2, "dtype": "bfloat16"},
        "settings": {"prompts": 4, "batch_size": 8, "max_new_tokens": 64, "adapter": "built", "repeats": 3,
                     "command": "python bench/serve_speed.py"},
        "arms": {"base": arm, "lora-merged": {**arm, "decode_tokens_per_s": 20.0},
                 "lora-nf4": {"skipped": "skipped: no bitsandbytes"}, "lora-int8": {"error": "killed"}},
        "ratios": {"base": {"ttft_s": 1, "decode_tokens_per_s": 1, "batch8_tokens_per_s": 1, "peak_rss_mib": 1},
                   "lora-merged": {"ttft_s": 1, "decode_tokens_per_s": 0.5, "batch8_tokens_per_s": 1,
                                   "peak_rss_mib": 1}},
        "identical_texts": None}))
    return path


def test_serving_lines_say_why_an_arm_has_no_numbers(tmp_path):
    path = write_sample_result(tmp_path / "serve.json")
    table = [line for line in serving_lines(path) if line.startswith("| ")]
    assert table[1:] == ["| base (16bit, bfloat16) | 50 ms | 40.0 | 200.0 | 900 | reference |",
                         "| lora-merged (16bit, bfloat16) | 50 ms | 20.0 | 200.0 | 900 | 1.00x, 0.50x, 1.00x, 1.00x |",
                         "| lora-nf4 | — | — | — | — | skipped: no bitsandbytes |",
                         "| lora-int8 | — | — | — | — | failed: killed |"]


def test_a_missing_adapter_fails_in_one_line_before_any_arm_runs(tmp_path):
    with pytest.raises(UserError, match="adapter directory .* does not exist"):
        serve_speed().main(["--adapter", str(tmp_path / "nope"), "--out", str(tmp_path / "serve.json")])
    assert not (tmp_path / "serve.json").exists()

"""evaluate.py --engine llama.cpp: the merged model's GGUF generates greedily what the HF fp32 path generates (on a
prefix), ends and cuts as the HF path does, is recorded as its own engine, and a missing package is a one-line error.

Skipped where llama-cpp-python is not installed (pip install -r requirements-llamacpp.txt), except the test of
that very error.
"""
import importlib.util
import sys

import pytest
import torch

import evaluate
from common.corpus.splits import load_humaneval
from common.errors import run_cli
from common.tracker import Tracker

needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama-cpp-python not installed (pip install -r requirements-llamacpp.txt)")
# f16 weights and llama.cpp's kernels round differently from HF fp32: greedy paths agree while the top two logits
# are far apart and may part at a near-tie. Measured on the embedded model, 8 HumanEval instruct prompts, 128 tokens:
# f16 agreed on all 8 whole answers (at batch 1 and 8), while f32 and q8_0 GGUFs parted from HF fp32 as early as the
# 15th token. The first 8 tokens hold with margin; a wrong layout or tokenizer fails them at the first token.
AGREE = 8
NEW_TOKENS = 48


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: evaluate.main(argv))
    return exit_info.value.code, capsys.readouterr().err


def test_missing_package_is_a_one_line_error_before_anything_loads(tiny_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)   # `import llama_cpp` now raises ImportError
    db = tmp_path / "e.db"
    code, err = run_main(["--model", tiny_model, "--engine", "llama.cpp", "--benchmark", "humaneval", "--db",
                          str(db), "--output-dir", str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "pip install -r requirements-llamacpp.txt" in err
    assert not db.exists() or not Tracker(str(db)).runs(kind="eval")   # refused before a run began


def test_sampling_is_refused_with_the_fix(tiny_model, tmp_path, capsys):
    code, err = run_main(["--model", tiny_model, "--engine", "llama.cpp", "--temperature", "0.8", "--db",
                          str(tmp_path / "e.db"), "--quiet"], capsys)
    assert code == 2 and "--engine llama.cpp decodes greedily; pass --temperature 0" in err


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """The embedded model (fp32), its tokenizer, its f16 GGUF, and 2 HumanEval instruct prompts."""
    from common.model.export import cached_gguf
    from common.model.load import load_model, load_tokenizer
    from common.text.protocols import render

    tokenizer = load_tokenizer("smollm2-135m")
    model = load_model("smollm2-135m", "32bit", torch.device("cpu")).eval()
    gguf = cached_gguf("smollm2-135m", None, tokenizer, tmp_path_factory.mktemp("gguf"), "f16", torch.device("cpu"))
    prompts = [render(tokenizer, p, "instruct") for p in load_humaneval()[:2]]
    return model, tokenizer, gguf, prompts


@needs_llama_cpp
@pytest.mark.slow
def test_f16_gguf_agrees_with_hf_fp32_on_a_prefix(embedded):
    from common.text.generation import generate
    from common.text.llamacpp import generate_llamacpp

    model, tokenizer, gguf, prompts = embedded
    texts = [p.text for p in prompts]
    hf = generate(model, tokenizer, texts, prompts[0].template, max_new_tokens=NEW_TOKENS, stop=(), batch_size=2)
    ours = generate_llamacpp(gguf, tokenizer, texts, prompts[0].template, max_new_tokens=NEW_TOKENS, stop=(),
                             batch_size=2)
    for a, b in zip(hf, ours):
        assert b.tokens[:AGREE] == a.tokens[:AGREE], (a.text, b.text)
        assert b.new_tokens == len(b.tokens) and b.seconds > 0 and b.ended in ("eos", "length")
        assert b.text == tokenizer.decode(b.tokens, skip_special_tokens=True)   # no stops: the whole answer


@needs_llama_cpp
@pytest.mark.slow
def test_stops_and_length_end_a_generation_as_on_the_hf_path(embedded):
    from common.text.llamacpp import generate_llamacpp

    _, tokenizer, gguf, prompts = embedded
    prompt = prompts[0]
    [free] = generate_llamacpp(gguf, tokenizer, [prompt.text], prompt.template, max_new_tokens=24, stop=())
    assert free.ended == "length" and free.new_tokens == 24
    stop = free.text[len(free.text) // 2:][:3]   # a piece of the answer's second half, so it does occur
    [cut] = generate_llamacpp(gguf, tokenizer, [prompt.text], prompt.template, max_new_tokens=24, stop=(stop,))
    assert cut.ended == f"stop {stop!r}" and stop not in cut.text
    assert free.text.startswith(cut.text) and free.text[len(cut.text):].startswith(stop)
    assert cut.tokens == free.tokens[:cut.new_tokens] and cut.new_tokens < 24


@needs_llama_cpp
@pytest.mark.slow
def test_evaluate_records_the_engine_and_reuses_its_gguf(tiny_model, tmp_path):
    db, out = str(tmp_path / "e.db"), tmp_path / "out"
    argv = ["--model", tiny_model, "--benchmark", "humaneval", "--eval-limit", "2", "--max-new-tokens", "8",
            "--db", db, "--output-dir", str(out), "--quiet"]
    assert evaluate.main([*argv, "--engine", "llama.cpp"]) == 0
    [gguf] = (out / "gguf").glob("*-f16-*.gguf")
    written = gguf.stat().st_mtime_ns
    assert evaluate.main([*argv, "--engine", "llama.cpp"]) == 0   # same model and type: the GGUF is reused
    assert evaluate.main(argv) == 0
    first, second, hf = Tracker(db).runs(kind="eval")
    assert first["config"]["engine"] == "llama.cpp" and first["config"]["gguf_type"] == "f16"
    assert first["config"]["gguf"] == second["config"]["gguf"] == str(gguf) and gguf.stat().st_mtime_ns == written
    assert first["config"]["benchmark_keys"]["humaneval"]["decode"] == "llama.cpp f16, continuous batch 8"
    assert hf["config"]["engine"] == "hf" and hf["config"]["benchmark_keys"]["humaneval"]["decode"] == "float32"
    samples = Tracker(db).samples(first["id"], "humaneval")
    assert [s["task_id"] for s in samples] == [p.id for p in load_humaneval()[:2]]
    assert all(s["details"]["ended"] in ("eos", "length") or s["details"]["ended"].startswith("stop ")
               for s in samples)
    again = Tracker(db).samples(second["id"], "humaneval")
    assert [s["generation"] for s in again] == [s["generation"] for s in samples]   # greedy, cleared cache: repeats


@needs_llama_cpp
@pytest.mark.slow
def test_bench_compares_the_engines_side_by_side(tiny_model, tmp_path, monkeypatch):
    import importlib.util as util
    import json
    from pathlib import Path

    folder = Path(evaluate.__file__).parent / "bench"
    monkeypatch.syspath_prepend(str(folder))   # the bench imports its sibling machine.py
    spec = util.spec_from_file_location("bench_eval_speed", folder / "eval_speed.py")
    bench = util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "es.json"
    bench.main(["--model", tiny_model, "--engines", "hf,llama.cpp", "--prompts", "2", "--batch-size", "2",
                "--max-new-tokens", "4", "--repeats", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert list(report["paths"]) == ["continuous (now)", "llama.cpp f16"] and report["speedup"] > 0
    assert report["outputs"] == 2 and 0 <= report["identical_outputs"] <= 2
    assert all(path["completion_tokens"] == 8 for path in report["paths"].values())

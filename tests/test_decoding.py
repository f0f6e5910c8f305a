"""One decoding precision story: infer.py's session gives the tokens evaluate.py's generation gives, for one adapter,
prompt and protocol, under the one shared option --fp32-decoding (issue 32 item 3).

The model is the tiny llama in bf16 with random weights of std 0.1 (greedy output varies, and bf16 rounding flips
some of it) and a LoRA adapter whose B matrices are noise: a 16-bit base plus adapter, as both scripts load it.
"""
import copy
import io

import pytest
import torch

from common.config import EvalConfig, InferConfig
from common.corpus.formats import Example
from common.inference.session import Session
from common.model.load import load_tokenizer
from common.options import options, parse_config

PROMPTS = ["def add(a, b):\n", "import os\n\n\ndef list_files(path):\n    \"\"\"List the files in path.\"\"\"\n",
           "def reverse(text: str) -> str:\n"]
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def adapted(tiny_model):
    """(bf16 tiny model + noisy LoRA adapter, tokenizer)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)  # varied greedy output whose argmax bf16 rounding can flip
    model = get_peft_model(model.to(torch.bfloat16), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model, load_tokenizer(tiny_model)


def evaluate_tokens(model, tokenizer, prompt: str, protocol: str, fp32_decoding: bool) -> tuple[int, ...]:
    """evaluate.py's generation of one problem: its benchmark key, its generate_samples, default options."""
    import common.text.generation as generation
    from common.evaluation.runs import generate_samples
    from common.evaluation.settings import decode_key
    from common.judge.benchmarks import Benchmark, prepare_benchmark

    cfg = EvalConfig(quant="16bit", seed=0, max_new_tokens=NEW_TOKENS, fp32_decoding=fp32_decoding, quiet=True)
    bench = Benchmark("problems.jsonl", [Example("p0", prompt, "", "completion")], {"source": "test"})
    prepare_benchmark(bench, tokenizer, protocol, decode_key(cfg, torch.bfloat16), cfg.max_seq_len)
    outputs, real = [], generation.generate

    def spy(*args, **kwargs):  # generate_samples keeps the text; the tokens are compared here
        outputs[:] = real(*args, **kwargs)
        return outputs

    generation.generate = spy
    try:
        (sample,) = generate_samples(model, tokenizer, bench, cfg, torch.bfloat16)
    finally:
        generation.generate = real
    assert sample.generation == outputs[0].text
    return outputs[0].tokens


def infer_tokens(model, tokenizer, prompt: str, protocol: str, fp32_decoding: bool) -> tuple[int, ...]:
    """infer.py's greedy answer to one prompt, its adapter trained in the format the protocol names (on a copy of
    the model: a session decoding in fp32 casts its model once)."""
    session = Session(copy.deepcopy(model), tokenizer, None, torch.device("cpu"), torch.bfloat16, max_new_tokens=NEW_TOKENS,
                      out=io.StringIO(), fp32_decoding=fp32_decoding, show_speed=False,
                      train_format="instruct" if protocol == "instruct" else "completion")
    ((_, result),) = session.run(prompt)
    assert result.template == ("plain" if protocol == "completion" else "chat")
    return result.tokens


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["completion", "instruct"])
def test_infer_decodes_token_for_token_as_evaluate_scored(adapted, protocol):
    model, tokenizer = adapted
    default = InferConfig().fp32_decoding
    assert default == EvalConfig().fp32_decoding
    for prompt in PROMPTS:
        expected = evaluate_tokens(model, tokenizer, prompt, protocol, default)
        assert len(expected) > 1
        assert infer_tokens(model, tokenizer, prompt, protocol, default) == expected
    assert {p.dtype for n, p in model.named_parameters() if "lora" not in n} == {torch.bfloat16}  # cast back


@pytest.mark.slow
def test_the_precisions_differ_on_this_model_so_the_equality_means_something(adapted):
    """bf16 (--no-fp32-decoding) and fp32 give other tokens here: a script decoding in the other precision would
    fail the test above. With the flag off in both, both decode in bf16 and still agree."""
    model, tokenizer = adapted
    fp32 = [evaluate_tokens(model, tokenizer, p, "completion", True) for p in PROMPTS]
    bf16 = [evaluate_tokens(model, tokenizer, p, "completion", False) for p in PROMPTS]
    assert fp32 != bf16
    assert [infer_tokens(model, tokenizer, p, "completion", False) for p in PROMPTS] == bf16


def test_one_option_in_both_scripts():
    """Declared once: the same default and help in evaluate.py and infer.py, and --no-fp32-decoding in both."""
    def declared(cls):
        ((field, opt, kind),) = [o for o in options(cls) if o[0].name == "fp32_decoding"]
        return field.default, opt.help, kind

    assert declared(EvalConfig) == declared(InferConfig)
    for cls in (EvalConfig, InferConfig):
        assert parse_config(cls, ["--no-fp32-decoding"], "d").fp32_decoding is False
        assert parse_config(cls, [], "d").fp32_decoding is True


def test_infer_casts_once_and_says_what_it_decodes_in(adapted):
    model, tokenizer = adapted
    for fp32, named in ((True, "float32"), (False, "bfloat16")):
        out, copied = io.StringIO(), copy.deepcopy(model)
        session = Session(copied, tokenizer, None, torch.device("cpu"), torch.bfloat16, max_new_tokens=2, out=out,
                          fp32_decoding=fp32)
        assert session.dtype == getattr(torch, named)
        assert copied.get_input_embeddings().weight.dtype == getattr(torch, named)  # cast at the start, and kept
        session.run("def f():\n")
        assert out.getvalue().startswith("--- template plain") and f"decoding in {named}\n" in out.getvalue()
        assert copied.get_input_embeddings().weight.dtype == getattr(torch, named)

"""Prompt templates and labels: completion-only loss, EOS trained even when pad == eos; the instruct format."""
import copy

import pytest

from common.corpus.splits import Example
from common.errors import UserError
from common.text.prompts import INSTRUCTION as REQUEST
from common.text.prompts import (IGNORE_INDEX, RESPONSE, choose_template, encode_example, encode_examples, render_instruct,
                                 render_prompt, resolve_format)
from common.model.load import load_tokenizer

CODE = Example(id="a", prompt='def add(a, b):\n    """Add two numbers."""\n', completion="    return a + b\n",
               style="completion")
INSTRUCTION = Example(id="b", prompt="Write a function that adds two numbers.", completion="def add(a, b):\n"
                      "    return a + b", style="instruction")
INSTRUCTION_EX = Example(id="d", prompt="Add two numbers.", completion="Like this:\n```python\ndef add(a, b):\n"
                         "    return a + b\n```\nDone.", style="instruction")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m")


def test_prompt_tokens_are_masked_and_eos_is_trained(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the pitfall: padding must not hide EOS
    item = encode_example(tokenizer, CODE, "plain", 512)
    prompt_len = len(tokenizer(CODE.prompt)["input_ids"])
    assert item["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert item["labels"][prompt_len:] == item["input_ids"][prompt_len:]
    assert item["input_ids"][-1] == tokenizer.eos_token_id and item["labels"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(item["input_ids"][prompt_len:-1]) == CODE.completion


def test_instruction_data_uses_the_chat_template_when_there_is_one(tokenizer):
    assert choose_template(tokenizer, "instruction") == "chat"
    assert choose_template(tokenizer, "completion") == "plain"
    text = render_prompt(tokenizer, INSTRUCTION.prompt, "chat")
    assert INSTRUCTION.prompt in text and text.endswith("<|im_start|>assistant\n")


def test_alpaca_template_places_instruction_and_input(tokenizer):
    text = render_prompt(tokenizer, "Sort the list.", "alpaca", "[3, 1, 2]")
    assert "### Instruction:\nSort the list.\n\n### Input:\n[3, 1, 2]\n\n### Response:\n" in text
    assert "### Input" not in render_prompt(tokenizer, "Sort the list.", "alpaca")


def test_too_long_examples_are_dropped_or_truncated_and_counted(tokenizer):
    long = Example(id="c", prompt=CODE.prompt, completion="    x = 1\n" * 200, style="completion")
    kept, dropped = encode_examples(tokenizer, [CODE, long], "plain", 64)
    assert [k["id"] for k in kept] == ["a"] and dropped == 1
    kept, dropped = encode_examples(tokenizer, [CODE, long], "plain", 64, truncate=True)
    assert len(kept) == 2 and dropped == 0 and len(kept[1]["input_ids"]) == 64


def test_max_seq_len_below_the_template_is_refused(tokenizer):
    with pytest.raises(UserError, match="--max-seq-len 8 leaves no room: the alpaca prompt template alone takes"):
        encode_examples(tokenizer, [INSTRUCTION], "alpaca", 8)


def test_instruct_training_masks_the_prompt_and_trains_the_fenced_answer_and_eos(tokenizer):
    assert choose_template(tokenizer, "completion", "instruct") == "chat"
    item = encode_example(tokenizer, CODE, "chat", 512, format="instruct")
    prompt_text = render_instruct(tokenizer, CODE, "chat")
    prompt_len = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    # The prompt is exactly the evaluation's instruct prompt: request, fenced problem, pre-filled fence.
    assert prompt_text.endswith(f"<|im_start|>assistant\n{RESPONSE}\n```python\n")
    assert f"{REQUEST}\n```python\n{CODE.prompt.strip()}\n```" in prompt_text
    assert item["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    trained = item["input_ids"][prompt_len:]
    assert item["labels"][prompt_len:] == trained
    assert trained[-1] == tokenizer.eos_token_id  # <|im_end|>: the assistant turn ends
    assert tokenizer.decode(trained[:-1]) == CODE.prompt + CODE.completion.rstrip("\n") + "\n```"


def test_instruct_format_without_a_chat_template_uses_alpaca_with_the_same_turns(tokenizer):
    plain_tokenizer = copy.deepcopy(tokenizer)
    plain_tokenizer.chat_template = None
    assert choose_template(plain_tokenizer, "completion", "instruct") == "alpaca"
    text = render_instruct(plain_tokenizer, CODE, "alpaca")
    assert text.startswith("Below is an instruction") and text.endswith(f"### Response:\n{RESPONSE}\n```python\n")
    item = encode_example(plain_tokenizer, INSTRUCTION_EX, "alpaca", 512, format="instruct")
    trained = [t for t, label in zip(item["input_ids"], item["labels"]) if label != IGNORE_INDEX]
    # An instruction's reference output contributes its fenced code only, not the prose around it.
    assert tokenizer.decode(trained) == "def add(a, b):\n    return a + b\n```" + tokenizer.eos_token


def test_unknown_format_is_refused(tokenizer):
    with pytest.raises(UserError, match="unknown format 'chat'; choose one of completion, instruct"):
        choose_template(tokenizer, "completion", "chat")


def test_format_auto_trains_chat_turns_exactly_when_the_model_has_a_chat_template(tokenizer):
    plain_tokenizer = copy.deepcopy(tokenizer)
    plain_tokenizer.chat_template = None
    assert resolve_format(tokenizer, "auto") == "instruct"
    assert resolve_format(plain_tokenizer, "auto") == "completion"
    assert resolve_format(tokenizer, "completion") == "completion"  # told otherwise, it does as told
    assert resolve_format(plain_tokenizer, "instruct") == "instruct"
    with pytest.raises(UserError, match="unknown format 'chat'; choose one of auto, completion, instruct"):
        resolve_format(tokenizer, "chat")

"""Prompt templates and tokenization with completion-only labels.

Completion-style data (stdlib pairs, HumanEval) is plain text continuation: the
prompt is a signature + docstring, the target the body. Instruction data goes
through the tokenizer's chat template when the model has one, else the Alpaca
template. The template used is recorded with every run so `infer.py` formats
prompts exactly as in training.

Prompt and target are tokenized separately and concatenated, so the model
learns to continue exactly the token sequence it will see at generation time.
Labels are -100 on prompt tokens; EOS is appended to every target and kept in
the labels, never confused with padding.
"""
from typing import Any

from transformers import PreTrainedTokenizerBase

from common.data import Example
from common.errors import UserError

TEMPLATES = ("plain", "chat", "alpaca")
IGNORE_INDEX = -100

ALPACA = ("Below is an instruction that describes a task{with_input}. "
          "Write a response that appropriately completes the request.\n\n"
          "### Instruction:\n{instruction}\n\n{input_block}### Response:\n")


def choose_template(tokenizer: PreTrainedTokenizerBase, style: str) -> str:
    if style == "completion":
        return "plain"
    return "chat" if getattr(tokenizer, "chat_template", None) else "alpaca"


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, template: str, input_text: str = "") -> str:
    """The exact text the model sees before its answer."""
    if template == "plain":
        return prompt
    if template == "alpaca":
        return ALPACA.format(with_input=", paired with an input that provides further context" if input_text else "",
                             instruction=prompt,
                             input_block=f"### Input:\n{input_text}\n\n" if input_text else "")
    if template == "chat":
        content = f"{prompt}\n\n{input_text}" if input_text else prompt
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
    raise UserError(f"unknown prompt template {template!r}; choose one of {', '.join(TEMPLATES)}")


def encode_prompt(tokenizer: PreTrainedTokenizerBase, text: str, template: str) -> list[int]:
    # Chat templates already spell out their special tokens; plain/Alpaca text gets the
    # tokenizer's usual BOS (if it has one), as at inference.
    return tokenizer(text, add_special_tokens=template != "chat")["input_ids"]


def encode_example(tokenizer: PreTrainedTokenizerBase, example: Example, template: str,
                   max_len: int, truncate: bool = False) -> dict[str, list[int]] | None:
    """input_ids and labels for one example, or None when it is too long and truncate is off."""
    prompt_ids = encode_prompt(tokenizer, render_prompt(tokenizer, example.prompt, template, example.input), template)
    target_ids = tokenizer(example.completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(prompt_ids) + len(target_ids) > max_len:
        if not truncate or len(prompt_ids) >= max_len:
            return None
        target_ids = target_ids[:max_len - len(prompt_ids)]
    labels = [IGNORE_INDEX] * len(prompt_ids) + target_ids
    # The first token has nothing before it to be predicted from; in a packed row it would
    # otherwise be "predicted" from the previous example's last token.
    labels[0] = IGNORE_INDEX
    return {"input_ids": prompt_ids + target_ids, "labels": labels}


def template_overhead(tokenizer: PreTrainedTokenizerBase, template: str) -> int:
    """Tokens the template itself costs: the floor for --max-seq-len."""
    return len(encode_prompt(tokenizer, render_prompt(tokenizer, "", template), template)) + 1


def encode_examples(tokenizer: PreTrainedTokenizerBase, examples: list[Example], template: str, max_len: int,
                    truncate: bool = False) -> tuple[list[dict[str, Any]], int]:
    """Encode a split; returns the encoded examples and how many were dropped as too long."""
    overhead = template_overhead(tokenizer, template)
    if max_len <= overhead:
        raise UserError(f"--max-seq-len {max_len} leaves no room: the {template} prompt template alone takes "
                        f"{overhead} tokens; raise --max-seq-len")
    encoded, dropped = [], 0
    for ex in examples:
        item = encode_example(tokenizer, ex, template, max_len, truncate)
        if item is None:
            dropped += 1
        else:
            item["id"] = ex.id
            encoded.append(item)
    return encoded, dropped

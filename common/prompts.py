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

Conversations (Example.turns, from messages / ShareGPT rows) train on every
assistant turn and nothing else: the chat template renders the conversation
turn by turn, and each assistant turn's text (its content and the template's
end-of-turn marker, e.g. `<|im_end|>`) is labelled; system and user turns and
the template's role headers are -100. Without a chat template the turns are
written as Alpaca blocks, each assistant reply followed by EOS.
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
    if example.turns:
        return encode_conversation(tokenizer, example.turns, template, max_len, truncate)
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


def conversation_segments(tokenizer: PreTrainedTokenizerBase, turns: tuple[tuple[str, str], ...],
                          template: str) -> list[tuple[str, bool]]:
    """The conversation's text cut into (text, trained) pieces; trained pieces are assistant turns."""
    if template != "chat":
        pieces = {"system": "{}\n\n", "user": "### Instruction:\n{}\n\n### Response:\n", "assistant": "{}"}
        return [(("\n\n" if i and turns[i - 1][0] == "assistant" and role != "assistant" else "")
                 + pieces[role].format(text), role == "assistant") for i, (role, text) in enumerate(turns)]
    messages = [{"role": role, "content": text} for role, text in turns]
    segments, done = [], 0
    for k, (role, _) in enumerate(turns):
        if role != "assistant" or k == 0:  # a leading assistant turn has no prompt: it stays context
            continue
        try:
            prompt = tokenizer.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(messages[:k + 1], tokenize=False)
        except Exception as e:  # jinja raises its own errors for roles a template refuses
            raise UserError(f"the model's chat template refused a conversation ({e}); check its roles") from None
        if len(prompt) < done or not full.startswith(prompt):
            raise UserError("the model's chat template does not render conversations turn by turn, so assistant "
                            "turns cannot be masked apart; use single-turn rows (instruction/output)")
        reply = full[len(prompt):]
        trained = reply.rstrip()  # the newline after the end-of-turn marker belongs to the next prompt
        segments += [(prompt[done:], False), (trained, True)]
        done = len(prompt) + len(trained)
    return segments


def encode_conversation(tokenizer: PreTrainedTokenizerBase, turns: tuple[tuple[str, str], ...], template: str,
                        max_len: int, truncate: bool) -> dict[str, list[int]] | None:
    """input_ids and labels of a conversation, labels on assistant turns only (None when too long)."""
    ids: list[int] = []
    labels: list[int] = []
    for i, (text, trained) in enumerate(conversation_segments(tokenizer, turns, template)):
        tokens = tokenizer(text, add_special_tokens=i == 0 and template != "chat")["input_ids"]
        if trained and template != "chat":
            tokens = tokens + [tokenizer.eos_token_id]
        ids += tokens
        labels += tokens if trained else [IGNORE_INDEX] * len(tokens)
    if len(ids) > max_len:
        if not truncate:
            return None
        ids, labels = ids[:max_len], labels[:max_len]
    labels[0] = IGNORE_INDEX
    if all(label == IGNORE_INDEX for label in labels):
        return None  # truncation left no assistant token to learn from
    return {"input_ids": ids, "labels": labels}


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

"""Prompt templates and tokenization with completion-only labels.

Two training formats (`format`, recorded with every run next to the template; `auto`, the default,
is `resolve_format`: instruct for a model with a chat template, completion for one without, so a
chat model is trained in the turns evaluate.py's `auto` protocol then scores it with):

    completion  completion-style data (stdlib pairs, HumanEval) is plain text continuation:
                the prompt is a signature + docstring, the target the body. Instruction data
                goes through the tokenizer's chat template when the model has one, else the
                Alpaca template.
    instruct    every example is a chat turn built exactly like the evaluation's `instruct`
                protocol (common/text/protocols.py, after EvalPlus): the user asks for a
                self-contained script and shows the problem (a signature + docstring in a
                ```python fence, or an instruction); the assistant turn is pre-filled with
                RESPONSE and an opening ```python fence. The target is the whole function
                (prompt + body) or the answer's code, the closing fence, then EOS.

The template used is recorded with every run so `infer.py` formats prompts exactly as in training.

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

from common.corpus.splits import Example
from common.errors import UserError
from common.text.sanitize import fenced_blocks

TEMPLATES = ("plain", "chat", "alpaca")
FORMATS = ("completion", "instruct")
IGNORE_INDEX = -100

ALPACA = ("Below is an instruction that describes a task{with_input}. "
          "Write a response that appropriately completes the request.\n\n"
          "### Instruction:\n{instruction}\n\n{input_block}### Response:\n")
# EvalPlus's instruction and response prefix, word for word, so scores compare with theirs.
INSTRUCTION = ("Please provide a self-contained Python script that solves the following problem "
               "in a markdown code block:")
STDIO_INSTRUCTION = ("Please provide a self-contained Python script that reads from standard input and "
                     "writes to standard output, and solves the following problem, in a markdown code block:")
RESPONSE = ("Below is a Python script with a self-contained function that solves the problem "
            "and passes corresponding tests:")
STDIO_RESPONSE = "Below is a Python script that reads standard input and solves the problem:"
OPEN_FENCE, CLOSE_FENCE = "```python\n", "\n```"


def resolve_format(tokenizer: PreTrainedTokenizerBase, format: str) -> str:
    """The concrete training format: `auto` is instruct for a model with a chat template (a chat model
    scored on plain continuation measures nothing), completion for a base model without one."""
    if format == "auto":
        return "instruct" if getattr(tokenizer, "chat_template", None) else "completion"
    if format not in FORMATS:
        raise UserError(f"unknown format {format!r}; choose one of auto, {', '.join(FORMATS)}")
    return format


def choose_template(tokenizer: PreTrainedTokenizerBase, style: str, format: str = "completion") -> str:
    """plain for completion-style data in completion format; else the chat template, or Alpaca without one."""
    if format not in FORMATS:
        raise UserError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    if style == "completion" and format == "completion":
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


def is_stdio(example: Example) -> bool:
    """An APPS-style problem: judged on stdin/stdout pairs, so the answer is a script, not a function."""
    return bool(example.tests) and "inputs" in example.tests


def instruct_user_turn(example: Example) -> str:
    """The user's message: the request, then the problem (code in a ```python fence, prose as it is)."""
    if example.style == "completion":
        return f"{INSTRUCTION}\n```python\n{example.prompt.strip()}\n```\n"
    problem = example.prompt.strip() + (f"\n\n{example.input.strip()}" if example.input.strip() else "")
    return f"{STDIO_INSTRUCTION if is_stdio(example) else INSTRUCTION}\n{problem}\n"


def instruct_prefill(example: Example) -> str:
    """The start of the assistant's turn that the prompt supplies: a sentence and an opening fence."""
    return f"{STDIO_RESPONSE if is_stdio(example) else RESPONSE}\n{OPEN_FENCE}"


def instruct_answer(example: Example) -> str:
    """What follows the pre-fill in a reference answer: the code and the closing fence (EOS comes after).

    Completion-style: the whole function, prompt + body. Instruction-style: the first fenced
    block of the reference output, or all of it when it has no fence.
    """
    if example.style == "completion":
        code = example.prompt + example.completion
    else:
        code = (fenced_blocks(example.completion) or [example.completion])[0]
    return code.strip("\n") + CLOSE_FENCE


_SPLIT = "\x00-prefill-ends-here-\x00"  # marks where the pre-filled assistant turn is cut off


def render_instruct(tokenizer: PreTrainedTokenizerBase, example: Example, template: str,
                    shots: tuple[Example, ...] = ()) -> str:
    """The instruct prompt, up to and including the pre-filled opening fence.

    `shots` are solved examples shown first as earlier exchanges (the fewshot protocol).
    With a chat template the assistant turn is rendered whole and cut at the pre-fill's end
    (as EvalPlus does), so the template's own markup is kept exactly.
    """
    turns = [(instruct_user_turn(s), instruct_prefill(s) + instruct_answer(s)) for s in shots]
    user, prefill = instruct_user_turn(example), instruct_prefill(example)
    if template == "chat":
        messages = [m for u, a in turns for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a})]
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": prefill + _SPLIT}]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        if _SPLIT not in text:
            raise UserError("this model's chat template drops the assistant's pre-filled turn; "
                            "use --protocol completion or --format completion")
        return text.split(_SPLIT)[0]
    if template == "alpaca":
        shown = "".join(render_prompt(tokenizer, u, "alpaca") + a + "\n\n" for u, a in turns)
        return shown + render_prompt(tokenizer, user, "alpaca") + prefill
    raise UserError(f"the instruct format needs the chat or alpaca template, not {template!r}")


def encode_prompt(tokenizer: PreTrainedTokenizerBase, text: str, template: str) -> list[int]:
    # Chat templates already spell out their special tokens; plain/Alpaca text gets the
    # tokenizer's usual BOS (if it has one), as at inference.
    return tokenizer(text, add_special_tokens=template != "chat")["input_ids"]


def encode_example(tokenizer: PreTrainedTokenizerBase, example: Example, template: str, max_len: int,
                   truncate: bool = False, format: str = "completion") -> dict[str, list[int]] | None:
    """input_ids and labels for one example, or None when it is too long and truncate is off.

    completion format: prompt = the rendered prompt, target = the completion.
    instruct format: prompt = `render_instruct` (ending in the pre-filled fence),
    target = `instruct_answer` (the code and the closing fence). EOS follows every target.
    A conversation (example.turns) trains every assistant turn, whatever the format.
    """
    if example.turns:
        return encode_conversation(tokenizer, example.turns, template, max_len, truncate)
    if format == "instruct":
        prompt_text, target = render_instruct(tokenizer, example, template), instruct_answer(example)
    else:
        prompt_text, target = render_prompt(tokenizer, example.prompt, template, example.input), example.completion
    prompt_ids = encode_prompt(tokenizer, prompt_text, template)
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(prompt_ids) + len(target_ids) > max_len:
        if not truncate or len(prompt_ids) >= max_len:
            return None
        target_ids = target_ids[:max_len - len(prompt_ids)]
    labels = [IGNORE_INDEX] * len(prompt_ids) + target_ids
    # The first token has nothing before it to be predicted from; in a packed row it would
    # otherwise be "predicted" from the previous example's last token.
    labels[0] = IGNORE_INDEX
    return {"input_ids": prompt_ids + target_ids, "labels": labels}


def template_overhead(tokenizer: PreTrainedTokenizerBase, template: str, format: str = "completion") -> int:
    """Tokens the template (and, for instruct, the request and fences) costs: the floor for --max-seq-len."""
    if format == "instruct":
        empty = Example("", "", "", "completion")
        text = render_instruct(tokenizer, empty, template) + instruct_answer(empty)
    else:
        text = render_prompt(tokenizer, "", template)
    return len(encode_prompt(tokenizer, text, template)) + 1


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


def encode_examples(tokenizer: PreTrainedTokenizerBase, examples: list[Example], template: str, max_len: int,
                    truncate: bool = False, format: str = "completion") -> tuple[list[dict[str, Any]], int]:
    """Encode a split in a format (see the module docstring); returns the encoded examples and how
    many were dropped as too long."""
    overhead = template_overhead(tokenizer, template, format)
    if max_len <= overhead:
        raise UserError(f"--max-seq-len {max_len} leaves no room: the {template} prompt template alone takes "
                        f"{overhead} tokens; raise --max-seq-len")
    encoded, dropped = [], 0
    for ex in examples:
        item = encode_example(tokenizer, ex, template, max_len, truncate, format)
        if item is None:
            dropped += 1
        else:
            item["id"] = ex.id
            encoded.append(item)
    return encoded, dropped

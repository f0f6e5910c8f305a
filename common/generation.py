"""Batched code generation: left padding, KV cache, explicit pad/eos ids, stop sequences.

Prompts are sorted by length and generated in batches (less padding, same
outputs), then returned in the caller's order. Generation stops per sequence at
EOS or at any stop sequence (HumanEval-style function completion); the text is
cut before the stop sequence. Chat-style answers have their code pulled out of
fenced blocks by `extract_code`.
"""
import functools
import re
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteriaList, StopStringCriteria

from common.prompts import encode_prompt

STOP_SEQUENCES = ("\ndef", "\nclass", "\nif", "\nprint", "\n#", "\n```")
ALPACA_STOPS = ("\n### Instruction:", "\n### Input:", "\n### Response:")
_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


@dataclass
class Generation:
    text: str          # the completion, cut at the first stop sequence
    new_tokens: int    # tokens generated (before cutting), for tokens/s
    seconds: float     # wall time of the batch it was in, shared out by tokens


def stops_for_template(template: str) -> tuple[str, ...]:
    """Function-completion stops for plain prompts; chat answers end at EOS; Alpaca at its next header."""
    return STOP_SEQUENCES if template == "plain" else ALPACA_STOPS if template == "alpaca" else ()


def truncate_at_stop(text: str, stops: tuple[str, ...] | list[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def cut_completion(prompt: str, text: str, stops: tuple[str, ...]) -> str:
    """Cut at the first stop sequence, counting one that begins in the prompt's tail.

    Generation stops on the whole sequence, so a prompt ending in a newline and a
    completion starting with "```" already matched a newline plus three backticks; the completion is then empty.
    """
    tail = prompt[-max((len(s) for s in stops), default=0):] if stops else ""
    joined, cut = tail + text, len(tail) + len(text)
    for s in stops:
        found = joined.find(s, max(0, len(tail) - len(s) + 1))  # must end inside the generated text
        if found >= 0:
            cut = min(cut, found)
    return joined[len(tail):cut]


@functools.lru_cache(maxsize=16)
def stop_criteria(tokenizer: PreTrainedTokenizerBase, stops: tuple[str, ...]) -> StoppingCriteriaList | None:
    """Built once per tokenizer and stop set: construction scans the whole vocabulary (~1 s)."""
    return StoppingCriteriaList([StopStringCriteria(tokenizer, list(stops))]) if stops else None


def extract_code(text: str) -> str:
    """The code in a chat-style answer: the first fenced block if there is one, else the text."""
    match = _FENCE.search(text)
    return match.group(1) if match else text


@torch.inference_mode()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], template: str = "plain",
             max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
             batch_size: int = 8, stop: tuple[str, ...] | list[str] | None = STOP_SEQUENCES,
             progress: bool = False) -> list[Generation]:
    """Complete each prompt (already rendered with its template); greedy when temperature is 0."""
    device = next(model.parameters()).device
    encoded = [encode_prompt(tokenizer, p, template) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    results: list[Generation | None] = [None] * len(prompts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k} if temperature > 0 \
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    stop = tuple(stop or ())
    criteria = stop_criteria(tokenizer, stop)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(prompts), desc="generate", unit="prompt", disable=not progress)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in batch)
        # Left padding keeps every prompt's last token adjacent to its first generated one.
        input_ids = torch.tensor([[pad_id] * (width - len(encoded[i])) + encoded[i] for i in batch], device=device)
        attention = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch],
                                 device=device)
        began = time.perf_counter()
        out = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                             pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id, use_cache=True,
                             stopping_criteria=criteria, **sampling)
        seconds = time.perf_counter() - began
        new = out[:, width:]
        counts = [int(_generated_length(row, tokenizer.eos_token_id, pad_id)) for row in new]
        total = max(sum(counts), 1)
        for row, i, n in zip(new, batch, counts):
            text = tokenizer.decode(row[:n], skip_special_tokens=True)
            results[i] = Generation(cut_completion(prompts[i], text, stop), n, seconds * n / total)
        bar.update(len(batch))
    bar.close()
    model.train(was_training)
    return results  # type: ignore[return-value]


def _generated_length(row: torch.Tensor, eos_id: int, pad_id: int) -> int:
    """Tokens up to and including the first EOS; a finished row is padded after it."""
    hits = (row == eos_id).nonzero()
    if len(hits):
        return int(hits[0]) + 1
    if pad_id != eos_id:
        pads = (row == pad_id).nonzero()
        if len(pads):
            return int(pads[0])
    return len(row)

"""Batched code generation: left padding, KV cache, explicit pad/eos ids, stop sequences.

Prompts are sorted by length and generated in batches (less padding, same
outputs), then returned in the caller's order. Generation stops per sequence at
EOS or at any stop sequence (HumanEval-style function completion); the text is
cut before the stop sequence. Chat-style answers have their code pulled out of
fenced blocks by `extract_code`.

The decode loop is our own rather than `model.generate` for one reason: a row
that has finished leaves the batch (its KV cache rows are dropped), so a batch
costs what its live rows cost, not what its longest completion costs. With
completions of 10 to 256 tokens in one batch, `generate` keeps computing every
finished row until the last one stops. Greedy output is the same as
`model.generate` one prompt at a time (tests/test_generation.py checks it);
sampling uses transformers' own temperature/top-k/top-p warpers.

Batch invariance: in bf16 the rounding of a row's matmuls depends on the batch's
shape (rows, padded width), so greedy outputs can change with --batch-size.
`fp32=True` decodes a half-precision model in float32 for the call (weights cast
up, autocast off, weights cast back after). Measured by bench/batch_invariance.py
(8 HumanEval instruct prompts, 48 new tokens, SmolLM2-135M, 2 shared AVX512-BF16
cores): batch 8 and batch 1 gave equal texts for 6/8 prompts in bf16 and 8/8 in
fp32; batch-8 wall time, median of 2, 106 s bf16 vs 192 s fp32.

One precision story: evaluate.py and infer.py both decode under `decoding_precision`, driven by the
one option `--fp32-decoding` (on by default in both), so infer.py shows what evaluate.py scored.
"""
import contextlib
import functools
import re
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm
from transformers import (DynamicCache, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase,
                          StoppingCriteriaList, StopStringCriteria, TemperatureLogitsWarper, TopKLogitsWarper,
                          TopPLogitsWarper)

from common.errors import UserError
from common.text.prompts import encode_prompt

STOP_SEQUENCES = ("\ndef", "\nclass", "\nif", "\nprint", "\n#", "\n```")
ALPACA_STOPS = ("\n### Instruction:", "\n### Input:", "\n### Response:")
_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


@dataclass
class Generation:
    text: str          # the completion, cut at the first stop sequence
    new_tokens: int    # tokens generated (before cutting), for tokens/s
    seconds: float     # wall time of the batch it was in, shared out by tokens
    ended: str = "length"   # why it ended: "eos", "stop '<the stop sequence>'" or "length" (max_new_tokens)
    tokens: tuple[int, ...] = ()   # the generated token ids, EOS included


def stops_for_template(template: str) -> tuple[str, ...]:
    """Function-completion stops for plain prompts; chat answers end at EOS; Alpaca at its next header."""
    return STOP_SEQUENCES if template == "plain" else ALPACA_STOPS if template == "alpaca" else ()


def find_stop(prompt: str, text: str, stops: tuple[str, ...]) -> tuple[str, str | None]:
    """The completion cut at the first stop sequence, counting one that begins in the prompt's tail, and
    that stop sequence (None: no stop yet).

    Generation stops on the whole sequence, so a prompt ending in a newline and a
    completion starting with "```" already matched a newline plus three backticks; the completion is then empty.
    """
    tail = prompt[-max((len(s) for s in stops), default=0):] if stops else ""
    joined, cut, matched = tail + text, len(tail) + len(text), None
    for s in stops:
        found = joined.find(s, max(0, len(tail) - len(s) + 1))  # must end inside the generated text
        if 0 <= found < cut:
            cut, matched = found, s
    return joined[len(tail):cut], matched


def cut_completion(prompt: str, text: str, stops: tuple[str, ...]) -> str:
    """Cut at the first stop sequence (find_stop)."""
    return find_stop(prompt, text, stops)[0]


@functools.lru_cache(maxsize=16)
def stop_criteria(tokenizer: PreTrainedTokenizerBase, stops: tuple[str, ...]) -> StoppingCriteriaList | None:
    """Built once per tokenizer and stop set: construction scans the whole vocabulary (~1 s)."""
    return StoppingCriteriaList([StopStringCriteria(tokenizer, list(stops))]) if stops else None


def extract_code(text: str) -> str:
    """The code in a chat-style answer: the first fenced block if there is one, else the text."""
    match = _FENCE.search(text)
    return match.group(1) if match else text


def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], template: str = "plain",
             max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
             batch_size: int = 8, stop: tuple[str, ...] | list[str] | None = STOP_SEQUENCES,
             progress: bool = False, fp32: bool = False) -> list[Generation]:
    """Complete each prompt (already rendered with its template); greedy when temperature is 0.

    fp32: decode in float32 whatever the model's dtype, so greedy outputs do not depend on
    batch_size (see the module docstring); not for bitsandbytes-quantized models.
    """
    with float32_decoding(model) if fp32 else contextlib.nullcontext():
        return _generate(model, tokenizer, prompts, template, max_new_tokens, temperature, top_p, top_k, batch_size,
                         stop, progress)


def is_quantized(model: PreTrainedModel) -> bool:
    """Whether bitsandbytes 4/8-bit weights are in the model: those cannot be cast up to float32."""
    return bool(getattr(model, "is_quantized", False)) or any(
        getattr(p, "quant_state", None) is not None or p.dtype in (torch.int8, torch.uint8) for p in model.parameters())


def decodes_in_fp32(fp32: bool, dtype: torch.dtype, quantized: bool) -> bool:
    """Whether decoding casts the model up to float32: asked for (--fp32-decoding, one default for evaluate.py and
    infer.py), the model computes in half precision, and its weights can be cast (not 4/8-bit)."""
    return fp32 and dtype != torch.float32 and not quantized


@contextlib.contextmanager
def decoding_precision(model: PreTrainedModel, dtype: torch.dtype, fp32: bool):
    """The precision evaluate.py and infer.py both decode in, so one adapter answers alike in both: float32 when
    `decodes_in_fp32` (float32_decoding), else autocast to the compute dtype, as in training."""
    if decodes_in_fp32(fp32, dtype, is_quantized(model)):
        with float32_decoding(model):
            yield
    else:
        device = next(model.parameters()).device
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            yield


@contextlib.contextmanager
def float32_decoding(model: PreTrainedModel):
    """Cast every floating-point weight and buffer to float32 with autocast off; restore both after."""
    if is_quantized(model):
        raise UserError("fp32 decoding needs a 16-bit or 32-bit model, not a 4bit/8bit one; "
                        "use --quant 16bit, or record the batch size with the scores")
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    dtypes = [t.dtype for t in tensors]
    device = next(model.parameters()).device
    try:
        for t in tensors:
            t.data = t.data.float()
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        for t, dtype in zip(tensors, dtypes):
            t.data = t.data.to(dtype)


@torch.inference_mode()  # only here: float32_decoding's casts must not make the weights inference tensors
def _generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], template: str,
              max_new_tokens: int, temperature: float, top_p: float, top_k: int, batch_size: int,
              stop: tuple[str, ...] | list[str] | None, progress: bool) -> list[Generation]:
    encoded = [encode_prompt(tokenizer, p, template) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    results: list[Generation | None] = [None] * len(prompts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    warpers = _sampling_warpers(temperature, top_p, top_k)
    stop = tuple(stop or ())
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(prompts), desc="generate", unit="prompt", disable=not progress)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        began = time.perf_counter()
        rows = _decode_batch(model, tokenizer, [encoded[i] for i in batch], [prompts[i] for i in batch],
                             max_new_tokens, pad_id, warpers, stop)
        seconds = time.perf_counter() - began
        total = max(sum(len(tokens) for tokens, _, _ in rows), 1)
        for (tokens, text, ended), i in zip(rows, batch):
            results[i] = Generation(text, len(tokens), seconds * len(tokens) / total, ended, tuple(tokens))
        bar.update(len(batch))
    bar.close()
    model.train(was_training)
    return results  # type: ignore[return-value]


def _sampling_warpers(temperature: float, top_p: float, top_k: int) -> LogitsProcessorList | None:
    """transformers' warpers in `generate`'s order; None means greedy."""
    if temperature <= 0:
        return None
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k > 0:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


def _decode_batch(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, encoded: list[list[int]],
                  prompts: list[str], max_new_tokens: int, pad_id: int, warpers: LogitsProcessorList | None,
                  stops: tuple[str, ...]) -> list[tuple[list[int], str, str]]:
    """Generate for one batch, dropping each row from the batch as soon as it ends.

    Returns, per prompt, the tokens generated (EOS included), the decoded
    completion cut at the first stop sequence, and why it ended (Generation.ended).
    """
    device = next(model.parameters()).device
    width = max(len(e) for e in encoded)
    # Left padding keeps every prompt's last token adjacent to its first generated one.
    input_ids = torch.tensor([[pad_id] * (width - len(e)) + e for e in encoded], device=device)
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    tokens: list[list[int]] = [[] for _ in encoded]
    texts = [""] * len(encoded)
    ended = ["length"] * len(encoded)
    live = list(range(len(encoded)))  # batch row -> prompt index
    for _ in range(max_new_tokens):
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1].float()
        if warpers is None:
            chosen = logits.argmax(-1)
        else:
            history = torch.tensor([tokens[i] for i in live], dtype=torch.long, device=device)  # (ids, scores)
            chosen = torch.multinomial(warpers(history, logits).softmax(-1), 1)[:, 0]
        keep = []
        for row, (i, token) in enumerate(zip(live, chosen.tolist())):
            tokens[i].append(token)
            if token == tokenizer.eos_token_id:
                ended[i] = "eos"
                continue
            texts[i], matched = find_stop(prompts[i], tokenizer.decode(tokens[i], skip_special_tokens=True), stops)
            if matched is None:
                keep.append(row)
            else:
                ended[i] = f"stop {matched!r}"
        if not keep:
            break
        if len(keep) < len(live):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            chosen, mask, positions = chosen[index], mask[index], positions[index]
            live = [live[row] for row in keep]
        input_ids = chosen[:, None]
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
        positions = positions[:, -1:] + 1
    return list(zip(tokens, texts, ended))

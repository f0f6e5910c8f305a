"""Batched code generation: continuous batching, left padding, KV cache, explicit pad/eos ids, stop sequences.

Up to batch_size prompts are decoded together, longest first; when a row ends, the next
prompt is prefilled and merged into the running batch's KV cache in the same round, so
every decode step serves batch_size prompts until the last is admitted, and the number of
sequential steps approaches the total tokens / batch_size. Results come back in the
caller's order. Generation stops per sequence at EOS or at any stop sequence
(HumanEval-style function completion); the text is cut before the stop sequence.
Chat-style answers have their code pulled out of fenced blocks by `extract_code`.

The decode loop is our own rather than `model.generate` for this reason: `generate`
keeps a batch together until its longest row ends (computing every finished row), and
on a CPU a decode step costs nearly the same for 1 live row as for 16 (it is bound by
reading the weights). Here a finished row leaves at once (its KV rows are dropped, and
the leading columns that are padding in every remaining row are cut), and a waiting
prompt takes its place. Each row's tokens are right-aligned in the cache with masked
padding to their left and its own positions, so the rows sharing its batch change a
row's output only through rounding (see below); in float32 greedy output is the same
as `model.generate` one prompt at a time (tests/test_generation.py checks it, with EOS,
stop sequences and length limits). The
cache uses plain layers even for sliding-window models (their window still applies
through the mask) so that caches can be merged column for column. Sampling uses
transformers' own temperature/top-k/top-p warpers, with one draw per round for all live
rows: seeded runs repeat exactly, but the draws do not pair with those of a different
batch size, nor with those of the batch-at-a-time decoder before it.

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
from collections.abc import Callable
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
    seconds: float     # wall time of the generate() call, shared out by tokens
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


def settle(tokenizer: PreTrainedTokenizerBase, prompt: str, tokens: list[int], stops: tuple[str, ...],
           max_new_tokens: int) -> tuple[str, str | None]:
    """The completion after the newest of `tokens` (none of them EOS), cut at a stop sequence, and why it ended:
    "stop '<seq>'", "length", or None while it goes on. Every engine ends and cuts a generation here."""
    text, matched = find_stop(prompt, tokenizer.decode(tokens, skip_special_tokens=True), stops)
    if matched is not None:
        return text, f"stop {matched!r}"
    return text, "length" if len(tokens) >= max_new_tokens else None


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
    if batch_size < 1 or max_new_tokens < 1:
        raise UserError(f"generation needs a batch size and max new tokens of at least 1, not {batch_size} and "
                        f"{max_new_tokens}; pass --eval-batch-size / --max-new-tokens >= 1")
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
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(prompts), desc="generate", unit="prompt", disable=not progress)
    decoder = _Decoder(model, tokenizer, encoded, prompts, max_new_tokens, pad_id,
                       _sampling_warpers(temperature, top_p, top_k), tuple(stop or ()), bar.update)
    began = time.perf_counter()
    decoder.run(batch_size)
    seconds = time.perf_counter() - began
    bar.close()
    model.train(was_training)
    total = max(sum(len(t) for t in decoder.tokens), 1)
    return [Generation(text, len(tokens), seconds * len(tokens) / total, ended, tuple(tokens))
            for tokens, text, ended in zip(decoder.tokens, decoder.texts, decoder.ended)]


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


@dataclass
class _Batch:
    """Live rows sharing one KV cache; each row's tokens are right-aligned, padding to their left."""
    live: list[int]             # batch row -> prompt index
    cache: DynamicCache
    mask: torch.Tensor          # (rows, width): 1 where the column holds one of the row's tokens
    positions: torch.Tensor     # (rows, 1): the position of each row's last token in the cache


def extend_completion(decoder, i: int, token: int) -> bool:
    """Append a token to prompt i's completion in `decoder` (this module's or common/text/llamacpp.py's: both keep
    tokenizer, prompts, tokens, texts, ended, stops, max_new_tokens per prompt); whether it goes on (no EOS, stop
    sequence or length yet). One ending rule for both engines."""
    decoder.tokens[i].append(token)
    if token == decoder.tokenizer.eos_token_id:
        decoder.ended[i] = "eos"
        return False
    decoder.texts[i], ended = settle(decoder.tokenizer, decoder.prompts[i], decoder.tokens[i], decoder.stops,
                                     decoder.max_new_tokens)
    decoder.ended[i] = ended or decoder.ended[i]
    return ended is None


class _Decoder:
    """Continuous batching over the prompts, longest first; fills tokens, texts and ended per prompt."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, encoded: list[list[int]],
                 prompts: list[str], max_new_tokens: int, pad_id: int, warpers: LogitsProcessorList | None,
                 stops: tuple[str, ...], on_finished: Callable[[int], object]) -> None:
        self.model, self.tokenizer, self.encoded, self.prompts = model, tokenizer, encoded, prompts
        self.max_new_tokens, self.pad_id, self.warpers, self.stops = max_new_tokens, pad_id, warpers, stops
        self.on_finished = on_finished
        self.device = next(model.parameters()).device
        self.tokens: list[list[int]] = [[] for _ in encoded]
        self.texts = [""] * len(encoded)
        self.ended = ["length"] * len(encoded)

    def run(self, batch_size: int) -> None:
        """Each round: one decode step for the live rows, a prefill of prompts admitted into the free rows,
        then a token for every row; finished rows leave, so every step serves up to batch_size prompts."""
        waiting = sorted(range(len(self.encoded)), key=lambda i: len(self.encoded[i]))  # pop() takes the longest
        batch: _Batch | None = None
        chosen = None
        while waiting or batch is not None:
            logits = [] if batch is None else [self._step(batch, chosen)]
            free = batch_size - (len(batch.live) if batch else 0)
            admitted = [waiting.pop() for _ in range(min(free, len(waiting)))]
            if admitted:
                fresh, fresh_logits = self._prefill(admitted)
                batch = fresh if batch is None else _merge(batch, fresh)
                logits.append(fresh_logits)
            chosen = self._choose(torch.cat(logits))
            keep = [row for row, (i, token) in enumerate(zip(batch.live, chosen.tolist())) if self._extend(i, token)]
            self.on_finished(len(batch.live) - len(keep))
            batch = _select(batch, keep) if keep else None
            chosen = chosen[keep]

    def _step(self, batch: _Batch, chosen: torch.Tensor) -> torch.Tensor:
        """Feed each live row its last chosen token; the logits of the next one."""
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch.live), 1)], dim=1)
        batch.positions = batch.positions + 1
        return self._logits(chosen[:, None], batch)

    def _prefill(self, admitted: list[int]) -> tuple[_Batch, torch.Tensor]:
        """The admitted prompts as a batch of their own (left-padded to the longest) and their next-token logits."""
        encoded = [self.encoded[i] for i in admitted]
        width = max(len(e) for e in encoded)
        # Left padding keeps every prompt's last token adjacent to its first generated one.
        input_ids = torch.tensor([[self.pad_id] * (width - len(e)) + e for e in encoded], device=self.device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        # Plain layers (no sliding-window ones) so that caches can be merged column for column; sliding-window
        # attention still applies through the mask.
        batch = _Batch(admitted, DynamicCache(), mask, positions)
        logits = self._logits(input_ids, batch)
        batch.positions = positions[:, -1:]
        return batch, logits

    def _logits(self, input_ids: torch.Tensor, batch: _Batch) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=batch.mask, position_ids=batch.positions,
                          past_key_values=batch.cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()

    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        """Greedy, or one draw per row from the warped distribution (these warpers read only the scores)."""
        if self.warpers is None:
            return logits.argmax(-1)
        no_history = torch.empty(len(logits), 0, dtype=torch.long, device=logits.device)
        return torch.multinomial(self.warpers(no_history, logits).softmax(-1), 1)[:, 0]

    _extend = extend_completion


def _merge(batch: _Batch, fresh: _Batch) -> _Batch:
    """One batch of both: the narrower one is padded on the left (masked columns, zero keys and values)."""
    width = max(batch.mask.shape[1], fresh.mask.shape[1])

    def widen(t: torch.Tensor, dim: int) -> torch.Tensor:
        shape = list(t.shape)
        shape[dim] = width - t.shape[dim]
        return torch.cat([t.new_zeros(shape), t], dim=dim)

    layers = [(torch.cat([widen(k, 2), widen(fk, 2)]), torch.cat([widen(v, 2), widen(fv, 2)]))
              for (k, v, _), (fk, fv, _) in zip(batch.cache, fresh.cache)]
    mask = torch.cat([widen(batch.mask, 1), widen(fresh.mask, 1)])
    return _Batch(batch.live + fresh.live, DynamicCache(layers), mask, torch.cat([batch.positions, fresh.positions]))


def _select(batch: _Batch, keep: list[int]) -> _Batch:
    """The rows in keep, without the leading columns that are padding in all of them."""
    if len(keep) == len(batch.live):
        return batch
    index = torch.tensor(keep, device=batch.mask.device)
    mask = batch.mask[index]
    first = int(mask.any(0).int().argmax())  # rows are right-aligned: the columns before it hold no token
    for layer in batch.cache.layers:
        layer.keys, layer.values = layer.keys[index, :, first:], layer.values[index, :, first:]
    return _Batch([batch.live[row] for row in keep], batch.cache, mask[:, first:], batch.positions[index])

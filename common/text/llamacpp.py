"""Greedy generation with llama.cpp (the optional llama-cpp-python package) from a GGUF file: evaluate.py's
`--engine llama.cpp`.

    outputs = generate_llamacpp(gguf_path, tokenizer, prompts, template, max_new_tokens=256, stop=stops, batch_size=8)

Only the forward passes change engine. The prompts are tokenized by the transformers tokenizer exactly as the HF
path tokenizes them (`encode_prompt`), and each new token id is decoded, checked for EOS and stop sequences and cut
by the same `extend_completion` as the HF decoder, so the Generation objects (text, new_tokens, seconds, how it
ended) mean the same thing and everything after generation (sanitize, sandbox, scores) is unchanged. The GGUF must
hold the same vocabulary (common/model/export.py cached_gguf writes it from the same tokenizer).

Continuous batching on llama.cpp's C API, as the HF decoder batches: up to batch_size prompts live at once, each
its own sequence in the KV cache; every llama_decode feeds each live sequence its last token, plus the whole prompt
of any sequence admitted into a free slot, and a finished sequence's cache is dropped at once. The weights are read
once a step for all live rows, which is what makes a batch faster than one prompt at a time on a CPU (measured
2.2x at batch 8). Greedy is the argmax of each row's logits. Threads: $OMP_NUM_THREADS, else every core; llama.cpp's
threads wait for each other every step, so on a machine where other processes hold cores set it lower (1 thread
beside one busy core of 2 ran 17x faster than 2).

Outputs are not the HF fp32 path's: f16/q8_0 weights and llama.cpp's kernels round differently, so greedy texts
agree on a prefix and may part later (tests/test_llamacpp_engine.py); and a row's rounding may depend on its
batch-mates, so the benchmark key names the batch size.
"""
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from common.errors import UserError
from common.text.generation import Generation, extend_completion
from common.text.prompts import encode_prompt

INSTALL = "pip install -r requirements-llamacpp.txt"


def import_llama_cpp():
    """The llama_cpp module, or a one-line error naming the install command."""
    try:
        import llama_cpp
    except ImportError as e:
        raise UserError(f"--engine llama.cpp needs the llama-cpp-python package (not installed here): {INSTALL}; "
                        "or use --engine hf") from e
    return llama_cpp


def threads() -> int:
    return int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1


@dataclass
class _Llama:
    """One llama.cpp model and context with batch_size sequences of n_ctx_seq tokens each, and a token batch."""
    lib: object
    model: object
    ctx: object
    batch: object
    n_vocab: int
    n_batch: int


@contextlib.contextmanager
def open_gguf(path: Path, n_seq: int, n_ctx_seq: int, n_batch: int):
    lib = import_llama_cpp()
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)   # llama.cpp's load chatter goes to this logger
    lib.llama_backend_init()
    model = lib.llama_model_load_from_file(str(path).encode(), lib.llama_model_default_params())
    if not model:
        raise UserError(f"llama.cpp cannot load {path}; delete it to export it again")
    params = lib.llama_context_default_params()
    params.n_ctx, params.n_seq_max = n_seq * n_ctx_seq, n_seq
    params.n_batch = params.n_ubatch = n_batch
    params.n_threads = params.n_threads_batch = threads()
    ctx = lib.llama_init_from_model(model, params)
    batch = lib.llama_batch_init(n_batch, 0, 1)
    try:
        yield _Llama(lib, model, ctx, batch, lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model)), n_batch)
    finally:
        lib.llama_batch_free(batch)
        lib.llama_free(ctx)
        lib.llama_model_free(model)


def generate_llamacpp(gguf: Path, tokenizer: PreTrainedTokenizerBase, prompts: list[str], template: str = "plain",
                      max_new_tokens: int = 256, stop: tuple[str, ...] = (), batch_size: int = 8,
                      progress: bool = False) -> list[Generation]:
    """Greedy completions of the rendered prompts, in their order (see the module docstring)."""
    if batch_size < 1 or max_new_tokens < 1:
        raise UserError(f"generation needs a batch size and max new tokens of at least 1, not {batch_size} and "
                        f"{max_new_tokens}; pass --eval-batch-size / --max-new-tokens >= 1")
    encoded = [encode_prompt(tokenizer, p, template) for p in prompts]
    if not encoded:
        return []
    longest = max(len(ids) for ids in encoded)
    decoder = _Decoder(tokenizer, prompts, encoded, max_new_tokens, tuple(stop))
    bar = tqdm(total=len(prompts), desc="generate (llama.cpp)", unit="prompt", disable=not progress)
    began = time.perf_counter()
    per_sequence = -(-(longest + max_new_tokens + 1) // 256) * 256   # llama.cpp sizes caches in steps of 256
    with open_gguf(gguf, min(batch_size, len(prompts)), per_sequence, longest + batch_size) as llm:
        decoder.run(llm, bar.update)
    seconds = time.perf_counter() - began
    bar.close()
    total = max(sum(len(t) for t in decoder.tokens), 1)
    return [Generation(text, len(tokens), seconds * len(tokens) / total, ended, tuple(tokens))
            for tokens, text, ended in zip(decoder.tokens, decoder.texts, decoder.ended)]


class _Decoder:
    """Continuous batching over the prompts, longest first; fills tokens, texts and ended per prompt."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompts: list[str], encoded: list[list[int]],
                 max_new_tokens: int, stops: tuple[str, ...]) -> None:
        self.tokenizer, self.prompts, self.encoded = tokenizer, prompts, encoded
        self.max_new_tokens, self.stops = max_new_tokens, stops
        self.tokens: list[list[int]] = [[] for _ in encoded]
        self.texts = [""] * len(encoded)
        self.ended = ["length"] * len(encoded)

    def run(self, llm: _Llama, on_finished) -> None:
        """Each round one llama_decode: the live sequences' last tokens and the prompts admitted into free
        sequences; then a token for every one of them; finished sequences leave the cache."""
        waiting = sorted(range(len(self.encoded)), key=lambda i: len(self.encoded[i]))  # pop() takes the longest
        live: dict[int, int] = {}       # sequence id -> prompt index
        free = list(range(llm.lib.llama_n_seq_max(llm.ctx)))[::-1]
        memory = llm.lib.llama_get_memory(llm.ctx)
        while waiting or live:
            llm.batch.n_tokens = 0
            rows = [(seq, _add(llm.batch, self.tokens[i][-1], len(self.encoded[i]) + len(self.tokens[i]) - 1, seq))
                    for seq, i in live.items()]
            while waiting and free and llm.batch.n_tokens + len(self.encoded[waiting[-1]]) <= llm.n_batch:
                seq, i = free.pop(), waiting.pop()
                live[seq] = i
                rows.append((seq, [_add(llm.batch, t, pos, seq, last=False) for pos, t in
                                   enumerate(self.encoded[i])][-1]))
                llm.batch.logits[rows[-1][1]] = True
            if llm.lib.llama_decode(llm.ctx, llm.batch) != 0:
                raise RuntimeError("llama_decode failed (out of KV cache or memory?)")
            for seq, row in rows:
                logits = np.ctypeslib.as_array(llm.lib.llama_get_logits_ith(llm.ctx, row), shape=(llm.n_vocab,))
                if not self._extend(live[seq], int(logits.argmax())):
                    del live[seq]
                    llm.lib.llama_memory_seq_rm(memory, seq, -1, -1)
                    free.append(seq)
                    on_finished(1)

    _extend = extend_completion


def _add(batch, token: int, pos: int, seq: int, last: bool = True) -> int:
    """Append one token of sequence `seq` at position `pos` to the batch; its row (logits wanted when `last`)."""
    row = batch.n_tokens
    batch.token[row], batch.pos[row], batch.n_seq_id[row] = token, pos, 1
    batch.seq_id[row][0] = seq
    batch.logits[row] = last
    batch.n_tokens = row + 1
    return row

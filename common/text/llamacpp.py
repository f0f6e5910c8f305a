"""Greedy generation with llama.cpp (the optional llama-cpp-python package) from a GGUF file: evaluate.py's
`--engine llama.cpp`.

    outputs = generate_llamacpp(gguf_path, tokenizer, prompts, template, max_new_tokens=256, stop=stops)

Only the forward passes change engine. The prompts are tokenized by the transformers tokenizer exactly as the HF
path tokenizes them (`encode_prompt`), and each new token id is decoded, checked for EOS and stop sequences and cut
by the same `settle` as the HF decoder, so the Generation objects (text, new_tokens, seconds, how it ended) mean the
same thing and everything after generation (sanitize, sandbox, scores) is unchanged. The GGUF must hold the same
vocabulary (common/model/export.py cached_gguf writes it from the same tokenizer).

One prompt at a time, greedy (llama.cpp's greedy sampler: temperature 0, top-k 1), on every core. The KV cache is
cleared before each prompt rather than reusing a shared prefix: a prompt's answer then depends on the prompt alone,
never on which prompt ran before it. Outputs are not the HF fp32 path's: f16/q8_0 weights and llama.cpp's kernels
round differently, so greedy texts agree on a prefix and may part later (tests/test_llamacpp_engine.py).
"""
import os
import time
from pathlib import Path

from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from common.errors import UserError
from common.text.generation import Generation, settle
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


def open_gguf(path: Path, n_ctx: int):
    """A llama_cpp.Llama on `path` with a context of n_ctx tokens, using every core, quiet."""
    llama_cpp = import_llama_cpp()
    threads = os.cpu_count() or 1
    try:
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=min(n_ctx, 512), n_threads=threads,
                               n_threads_batch=threads, logits_all=False, verbose=False)
    except ValueError as e:   # llama-cpp-python's "Failed to load model from file"
        raise UserError(f"llama.cpp cannot load {path} ({e}); delete it to export it again") from e


def generate_llamacpp(gguf: Path, tokenizer: PreTrainedTokenizerBase, prompts: list[str], template: str = "plain",
                      max_new_tokens: int = 256, stop: tuple[str, ...] = (), progress: bool = False
                      ) -> list[Generation]:
    """Greedy completions of the rendered prompts, in their order (see the module docstring)."""
    if max_new_tokens < 1:
        raise UserError(f"generation needs max new tokens of at least 1, not {max_new_tokens}; "
                        "pass --max-new-tokens >= 1")
    encoded = [encode_prompt(tokenizer, p, template) for p in prompts]
    if not encoded:
        return []
    llm = open_gguf(gguf, max(len(ids) for ids in encoded) + max_new_tokens)
    try:
        return [complete(llm, tokenizer, prompt, ids, max_new_tokens, tuple(stop))
                for prompt, ids in tqdm(list(zip(prompts, encoded)), desc="generate (llama.cpp)", unit="prompt",
                                        disable=not progress)]
    finally:
        llm.close()


def complete(llm, tokenizer: PreTrainedTokenizerBase, prompt: str, ids: list[int], max_new_tokens: int,
             stops: tuple[str, ...]) -> Generation:
    """One greedy completion from a cleared cache, ended and cut exactly as the HF decoder ends and cuts it."""
    began = time.perf_counter()
    tokens: list[int] = []
    text, ended = "", None
    llm.reset()   # no prefix reuse: the answer depends on this prompt alone
    for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
        tokens.append(token)
        if token == tokenizer.eos_token_id:
            ended = "eos"
        else:
            text, ended = settle(tokenizer, prompt, tokens, stops, max_new_tokens)
        if ended is not None:
            break
    return Generation(text, len(tokens), time.perf_counter() - began, ended or "length", tuple(tokens))

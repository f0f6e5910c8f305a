"""Write a (merged) transformers causal LM as one GGUF file for llama.cpp and Ollama.

    export_gguf(model, tokenizer, Path("model.gguf"), "q8_0", name="my-coder")

Families: llama (also SmolLM2), qwen2, gemma / gemma2 / gemma3. The tensors are renamed with the
`gguf` package's tensor-name maps and changed as llama.cpp's converter changes them, so both
llama.cpp and transformers (`from_pretrained(dir, gguf_file=...)`) read the file back:
  - llama: q_proj / k_proj rows permuted to llama.cpp's rotary layout (transformers undoes it);
  - gemma: every RMSNorm weight w stored as 1 + w (llama.cpp's norm multiplies by the weight alone);
  - a tied lm_head is not written (llama.cpp reuses token_embd).
Types: f32 stores every tensor as float32 (exact; twice f16's size); f16 stores 2-D weights as float16;
q8_0 quantizes 2-D weights whose rows are a multiple of 32 to Q8_0 (blocks of 32 int8 with one fp16 scale,
~8.5 bits a weight); 1-D tensors (norms, biases) stay float32 in all three.

The tokenizer is written from the (fast) tokenizer itself, as llama.cpp's convert_hf_to_gguf.py does:
  - model: byte-level BPE (GPT-2 style, e.g. SmolLM2, Qwen2) as "gpt2" with its merges;
    sentencepiece-style BPE with byte fallback (Llama 2, Gemma) as "llama" with scores that rank
    the tokens in merge order (llama.cpp merges the best-scored pair first);
  - token types: CONTROL for special added tokens (and ones that look special, <|...|>), else
    USER_DEFINED for added tokens, BYTE for <0xNN>, UNUSED for embedding rows the tokenizer lacks,
    NORMAL otherwise. llama.cpp matches CONTROL and USER_DEFINED tokens whole in the text: a
    special token typed NORMAL is split into pieces (<|im_start|> became 7 tokens);
  - BOS/EOS/UNK/PAD ids, add_bos/add_eos/add_space_prefix as the tokenizer really behaves (always
    written: Ollama adds BOS when the key is missing), and tokenizer.chat_template.
For the embedded SmolLM2 and Gemma-3 this gives the original GGUF's token types, ids, flags and
template (tests/test_gguf_export.py). `pre` names llama.cpp's pre-tokenizer (e.g. "smollm", "qwen2");
it is copied from the embedded model's own GGUF when there is one, else "default".
"""
import json
import re
from pathlib import Path

import numpy as np
import torch

from common.config import GGUF_TYPES
from common.errors import UserError

ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "gemma": "gemma", "gemma2": "gemma2", "gemma3_text": "gemma3",
                 "gemma3": "gemma3"}


def gguf_architecture(config) -> str:
    arch = ARCHITECTURES.get(config.model_type)
    if arch is None:
        raise UserError(f"--export-gguf supports llama, qwen2 and gemma models, not {config.model_type}; "
                        "use --merge-to DIR and llama.cpp's convert_hf_to_gguf.py")
    return arch


def llama_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotary layout (halves) -> llama.cpp's (interleaved pairs), per head, as convert_hf_to_gguf.py does."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def gguf_tensors(model: torch.nn.Module, arch: str):
    """(GGUF name, float32 array) for every tensor llama.cpp needs, in the state dict's order."""
    import gguf
    config = model.config
    name_map = gguf.get_tensor_name_map(arch_enum(arch), config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and tied:
            continue
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.num_attention_heads if "q_proj" in name else config.num_key_value_heads
            data = llama_permute(data, heads)
        if arch.startswith("gemma") and name.endswith("norm.weight"):
            data = data + 1.0
        new_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise UserError(f"--export-gguf: no GGUF name for tensor {name} of a {arch} model")
        yield new_name, data


def arch_enum(arch: str):
    import gguf
    return next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)


def add_hyperparameters(writer, config, arch: str) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    theta = getattr(config, "rope_theta", None) or (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
    writer.add_rope_freq_base(float(theta or 10000.0))
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config.vocab_size)
    if arch.startswith("gemma"):
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        if getattr(config, "sliding_window", None):
            writer.add_sliding_window(config.sliding_window)


BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
SPACE_MARK = "\u2581"   # sentencepiece's visible space


def tokenizer_spec(tokenizer) -> dict:
    """The fast tokenizer's own tokenizer.json, as a dict (the model, pre-tokenizer and decoder say its kind)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError("--export-gguf needs a fast (tokenizers) tokenizer; use llama.cpp's convert_hf_to_gguf.py "
                        "on a --merge-to directory")
    return json.loads(backend.to_str())


def vocab_kind(spec: dict) -> str:
    """llama.cpp's tokenizer model: "gpt2" for byte-level BPE, "llama" for sentencepiece-style BPE."""
    model = spec["model"]
    if model["type"] == "BPE" and model.get("byte_fallback"):
        return "llama"
    if model["type"] == "BPE" and '"ByteLevel"' in json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")]):
        return "gpt2"
    raise UserError(f"--export-gguf: this tokenizer ({model['type']}) is neither byte-level BPE nor sentencepiece-"
                    "style BPE; use llama.cpp's convert_hf_to_gguf.py on a --merge-to directory")


def looks_special(text: str) -> bool:
    """Added tokens some models forget to mark special, as llama.cpp's converter lists them."""
    return (text.startswith("<|") and text.endswith("|>")) or (text.startswith("<unused") and text.endswith(">")) \
        or text in ("<pad>", "<mask>")


def token_entry(token_id: int, text: str | None, added, kind: str, gemma: bool) -> tuple[str, int]:
    """(text as llama.cpp matches it, gguf.TokenType) of one vocabulary id; `added` is its AddedToken or None."""
    import gguf
    if text is None:   # an embedding row the tokenizer never produces (vocabularies padded to a round size)
        return f"[PAD{token_id}]", gguf.TokenType.UNUSED
    if added is not None and (added.special or looks_special(text)):
        return text, gguf.TokenType.CONTROL
    # llama.cpp matches user-defined tokens in the raw text, so sentencepiece's visible spaces become real ones.
    if added is not None:
        return (text.replace(SPACE_MARK, " ") if kind == "llama" else text), gguf.TokenType.USER_DEFINED
    if kind == "llama" and BYTE_TOKEN.fullmatch(text):
        return text, gguf.TokenType.BYTE
    # Gemma's runs of spaces are user-defined pieces; a tokenizer read from a GGUF lists them as plain tokens.
    if gemma and len(text) > 1 and text == SPACE_MARK * len(text):
        return " " * len(text), gguf.TokenType.USER_DEFINED
    return text, gguf.TokenType.NORMAL


def vocabulary(tokenizer, n_vocab: int, kind: str, gemma: bool) -> tuple[list[str], list[int]]:
    """Token texts and types for ids 0..n_vocab-1 (the model's embedding rows)."""
    by_id = {i: text for text, i in tokenizer.get_vocab().items()}
    if max(by_id) >= n_vocab:
        raise UserError(f"--export-gguf: the tokenizer has ids up to {max(by_id)} but the model only {n_vocab} "
                        "embedding rows; resize the embeddings (model.resize_token_embeddings) before exporting")
    added = tokenizer.added_tokens_decoder
    entries = [token_entry(i, by_id.get(i), added.get(i), kind, gemma) for i in range(n_vocab)]
    return [text for text, _ in entries], [token_type for _, token_type in entries]


def sentencepiece_scores(types: list[int]) -> list[float]:
    """Scores llama.cpp's sentencepiece tokenizer merges by: the better the earlier the token (its merge rank,
    as transformers also reads it), 0 for byte tokens, -1000 for control and user-defined ones, as the
    original converter writes them."""
    import gguf
    scores, rank = [], 0
    for token_type in types:
        if token_type == gguf.TokenType.NORMAL:
            scores.append(-float(rank))
            rank += 1
        else:
            scores.append(0.0 if token_type == gguf.TokenType.BYTE else -1000.0)
    return scores


def bpe_merges(spec: dict) -> list[str]:
    """Merges as "left right" strings (tokenizer.json holds either those or [left, right] pairs)."""
    return [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]


def special_flags(tokenizer) -> dict[str, bool]:
    """What the tokenizer really adds around a text: BOS before, EOS after; and whether it prefixes a space."""
    bare = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a")
    start = next((i for i in range(len(full)) if full[i:i + len(bare)] == bare), 0)
    first = tokenizer.convert_ids_to_tokens(bare[:1])[0]
    return {"add_bos": full[:start] == [tokenizer.bos_token_id],
            "add_eos": full[start + len(bare):] == [tokenizer.eos_token_id],
            "add_space_prefix": first.startswith(("\u0120", SPACE_MARK))}


def add_special_tokens(writer, tokenizer) -> None:
    """Special ids, the BOS/EOS/space flags and the chat template.

    Both flags are always written: Ollama adds BOS when the key is missing and llama.cpp adds none for
    byte-level BPE, so only an explicit value is read alike by both."""
    for kind, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None:
            add(token_id)
    flags = special_flags(tokenizer)
    writer.add_add_bos_token(flags["add_bos"])
    writer.add_add_eos_token(flags["add_eos"])
    writer.add_add_space_prefix(flags["add_space_prefix"])
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = [{"name": name, "template": text} for name, text in template.items()]
    if template:
        writer.add_chat_template(template)


def add_tokenizer(writer, tokenizer, n_vocab: int, arch: str, pre: str) -> None:
    """Tokens with llama.cpp's types, scores (sentencepiece) or merges (byte-level BPE), special ids, flags and
    chat template, all read from the tokenizer itself."""
    spec = tokenizer_spec(tokenizer)
    kind = vocab_kind(spec)
    tokens, types = vocabulary(tokenizer, n_vocab, kind, gemma=arch.startswith("gemma") and kind == "llama")
    writer.add_tokenizer_model(kind)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if kind == "llama":
        writer.add_token_scores(sentencepiece_scores(types))
    else:
        writer.add_token_merges(bpe_merges(spec))
    add_special_tokens(writer, tokenizer)


def export_gguf(model: torch.nn.Module, tokenizer, path: Path, gguf_type: str = "f16", name: str = "",
                pre: str = "default") -> Path:
    """Write `model` (dense, merged) and `tokenizer` to the GGUF file `path`; see the module docstring."""
    import gguf
    if gguf_type not in GGUF_TYPES:
        raise UserError(f"--gguf-type {gguf_type!r}: choose one of {', '.join(GGUF_TYPES)}")
    arch = gguf_architecture(model.config)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name or path.stem)
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type])
    add_hyperparameters(writer, model.config, arch)
    add_tokenizer(writer, tokenizer, model.config.vocab_size, arch, pre)
    for tensor_name, data in gguf_tensors(model, arch):
        if data.ndim < 2 or gguf_type == "f32":
            writer.add_tensor(tensor_name, data)
        elif gguf_type == "q8_0" and data.shape[-1] % 32 == 0:
            qtype = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(tensor_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(tensor_name, data.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def gguf_pre_tokenizer(gguf_file: Path) -> str:
    """The `tokenizer.ggml.pre` of an existing GGUF (the embedded model's), or "default"."""
    import gguf
    field = gguf.GGUFReader(str(gguf_file)).get_field("tokenizer.ggml.pre")
    return field.contents() if field is not None else "default"

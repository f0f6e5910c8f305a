"""Write a (merged) transformers causal LM as one GGUF file for llama.cpp and Ollama.

    export_gguf(model, tokenizer, Path("model.gguf"), "q8_0", name="my-coder")

Families: llama (also SmolLM2), qwen2, gemma / gemma2 / gemma3. The tensors are renamed with the
`gguf` package's tensor-name maps and changed as llama.cpp's converter changes them, so both
llama.cpp and transformers (`from_pretrained(dir, gguf_file=...)`) read the file back:
  - llama: q_proj / k_proj rows permuted to llama.cpp's rotary layout (transformers undoes it);
  - gemma: every RMSNorm weight w stored as 1 + w (llama.cpp's norm multiplies by the weight alone);
  - a tied lm_head is not written (llama.cpp reuses token_embd).
Types: f16 stores 2-D weights as float16; q8_0 quantizes 2-D weights whose rows are a multiple
of 32 to Q8_0 (blocks of 32 int8 with one fp16 scale, ~8.5 bits a weight); 1-D tensors (norms,
biases) stay float32 in both. The tokenizer goes in as llama.cpp expects: byte-level BPE
(GPT-2 style, e.g. SmolLM2, Qwen2) as "gpt2" with its merges, sentencepiece-style BPE with byte
fallback (Llama 2, Gemma) as "llama" with scores; special token ids and the chat template from
the tokenizer's files. `pre` names llama.cpp's pre-tokenizer (e.g. "smollm", "qwen2"); it is
copied from the embedded model's own GGUF when there is one, else "default".
"""
import tempfile
from pathlib import Path

import numpy as np
import torch

from common.errors import UserError

GGUF_TYPES = ("f16", "q8_0")
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


def add_tokenizer(writer, tokenizer, pre: str) -> None:
    """Tokens, types, scores, merges, special ids and chat template, read from the tokenizer's saved files."""
    import gguf
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        try:
            vocab = gguf.vocab.BpeVocab(Path(tmp))
        except FileNotFoundError:
            try:
                vocab = gguf.vocab.LlamaHfVocab(Path(tmp))
            except (FileNotFoundError, TypeError) as e:
                raise UserError(f"--export-gguf: this tokenizer is neither byte-level BPE nor sentencepiece-style "
                                f"({e}); use llama.cpp's convert_hf_to_gguf.py on a --merge-to directory") from None
        tokens, scores, types = zip(*vocab.all_tokens())
        writer.add_tokenizer_model(vocab.tokenizer_model)
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(list(tokens))
        writer.add_token_scores(list(scores))
        writer.add_token_types(list(types))
        gguf.vocab.SpecialVocab(Path(tmp), load_merges=vocab.tokenizer_model == "gpt2",
                                n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)


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
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if gguf_type == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    add_hyperparameters(writer, model.config, arch)
    add_tokenizer(writer, tokenizer, pre)
    for tensor_name, data in gguf_tensors(model, arch):
        if data.ndim < 2:
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

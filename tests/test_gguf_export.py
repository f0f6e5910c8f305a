"""GGUF export: the file transformers reads back (gguf_file=) generates what the merged model generates, and
its tokenizer metadata (token types, special ids, flags, chat template) is the embedded original GGUF's."""
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader, TokenType
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

import infer
from common.errors import UserError
from common.model.gguf_export import export_gguf, gguf_pre_tokenizer, llama_permute, vocabulary
from common.model.load import load_tokenizer
from common.model.resolve import EMBEDDED, embedded_gguf

PROMPT = "def fibonacci(n):\n    # the 12th number is 144\n"

pytestmark = pytest.mark.slow  # every test writes and reloads a GGUF file (10-30 s each)


def greedy(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)


def load_back(path: Path):
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory) -> Path:
    """A LoRA adapter with random (non-zero) B matrices on every linear layer of the tiny llama."""
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    with torch.no_grad():   # an update of a trained adapter's size, not of a random matrix's
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.05)
    path = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(path)
    return path


def test_llama_permutation_matches_llama_cpp():
    rows = torch.arange(8.0).reshape(8, 1).numpy()   # one head of dim 8: halves -> interleaved pairs
    assert llama_permute(rows, 1).ravel().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


@pytest.mark.slow
@pytest.mark.parametrize("gguf_type", ["f32", "f16", "q8_0"])
def test_infer_exports_the_merged_adapter(tiny_model, adapter, tmp_path, gguf_type):
    out = tmp_path / f"model-{gguf_type}.gguf"
    assert infer.main(["--adapter", str(adapter), "--model", tiny_model, "--quant", "32bit",
                       "--export-gguf", str(out), "--gguf-type", gguf_type]) == 0
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(adapter))
    merged = merged.merge_and_unload().eval()
    loaded, loaded_tokenizer = load_back(out)
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    assert loaded_tokenizer(PROMPT)["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        expected, got = merged(ids).logits, loaded(ids).logits
    relative = ((expected - got).abs().max() / expected.abs().max()).item()
    # f32 is exact; f16 rounds each weight by <= 2^-11 relative, Q8_0 by <= 1/254 of its block's largest; errors
    # compound.
    assert relative < {"f32": 1e-5, "f16": 2e-3, "q8_0": 3e-2}[gguf_type], relative   # a wrong layout gives ~1
    assert (expected.argmax(-1) == got.argmax(-1)).float().mean() > 0.9
    if gguf_type != "q8_0":
        assert torch.equal(greedy(merged, ids), greedy(loaded, ids))


@pytest.mark.parametrize("family", ["qwen2", "gemma3"])
def test_other_families_round_trip(tiny_model, tmp_path, family):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, Qwen2Config, Qwen2ForCausalLM
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    sizes = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                 eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = (Qwen2ForCausalLM(Qwen2Config(**sizes)) if family == "qwen2" else
             Gemma3ForCausalLM(Gemma3TextConfig(head_dim=16, sliding_window=64, **sizes))).eval()
    with torch.no_grad():   # norms and biases away from their init, so a wrong +1 or a lost bias shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
            if p.ndim == 2:   # the file stores 2-D weights in f16: compare like with like, so near-ties agree
                p.copy_(p.half().float())
    loaded, _ = load_back(export_gguf(model, tokenizer, tmp_path / f"{family}.gguf", "f16"))
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    with torch.no_grad():
        assert (model(ids).logits - loaded(ids).logits).abs().max().item() < 1e-4
    assert torch.equal(greedy(model, ids), greedy(loaded, ids))


def test_unsupported_architecture_and_type(tiny_gpt2, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    with pytest.raises(UserError, match="supports llama, qwen2 and gemma models, not gpt2"):
        export_gguf(model, None, tmp_path / "x.gguf")
    with pytest.raises(UserError, match="--gguf-type 'q4'"):
        export_gguf(model, None, tmp_path / "x.gguf", "q4")


def test_embedded_models_pre_tokenizer_is_carried():
    assert gguf_pre_tokenizer(embedded_gguf("smollm2-135m")) == "smollm"


# What llama.cpp and Ollama read to tokenize and to stop. `pre` is left out: it is copied from the original only
# for the embedded model itself, not for a tiny model built with its tokenizer (see the test above).
TOKENIZER_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                  "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
                  "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_space_prefix",
                  "tokenizer.chat_template")


def field(reader: GGUFReader, key: str, default=None):
    found = reader.get_field(key)
    return found.contents() if found is not None else default


def export_tiny(model, tokenizer, tmp_path: Path) -> Path:
    """Save `model` with `tokenizer` as a model directory and export it the way users do: infer.py --export-gguf."""
    model_dir, out = tmp_path / "model", tmp_path / "tiny.gguf"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    assert infer.main(["--model", str(model_dir), "--quant", "32bit", "--export-gguf", str(out)]) == 0
    return out


def assert_same_tokenizer(exported: Path, original: Path) -> None:
    ours, theirs = GGUFReader(str(exported)), GGUFReader(str(original))
    types, expected = field(ours, "tokenizer.ggml.token_type"), field(theirs, "tokenizer.ggml.token_type")
    wrong = [i for i, (a, b) in enumerate(zip(types, expected)) if a != b]
    assert len(types) == len(expected) and not wrong, f"{len(wrong)} token types differ, first ids {wrong[:5]}"
    for key in TOKENIZER_KEYS:
        assert field(ours, key) == field(theirs, key), key
    # A missing add_eos_token reads as false in llama.cpp and Ollama alike; ours is always written.
    assert field(ours, "tokenizer.ggml.add_eos_token") == field(theirs, "tokenizer.ggml.add_eos_token", False)


def test_smollm2_export_has_the_original_tokenizer_metadata(tiny_model, tmp_path):
    """17 CONTROL tokens (<|im_start|> ...): written as NORMAL, llama.cpp split them into plain text."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    exported = export_tiny(AutoModelForCausalLM.from_pretrained(tiny_model), tokenizer, tmp_path)
    assert_same_tokenizer(exported, embedded_gguf("smollm2-135m"))
    assert field(GGUFReader(str(exported)), "tokenizer.ggml.token_type").count(TokenType.CONTROL) == 17


def gemma_available() -> bool:
    import importlib.util
    return importlib.util.find_spec(EMBEDDED["gemma3-270m"].module) is not None


@pytest.mark.skipif(not gemma_available(), reason=f"needs the Gemma package: {EMBEDDED['gemma3-270m'].install}")
def test_gemma_export_has_the_original_tokenizer_metadata(tmp_path):
    """Sentencepiece-style: BYTE tokens, user-defined runs of spaces and newlines, scores in merge order."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    tokenizer = load_tokenizer("gemma3-270m")
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256)
    exported = export_tiny(Gemma3ForCausalLM(config), tokenizer, tmp_path)
    original = embedded_gguf("gemma3-270m")
    assert_same_tokenizer(exported, original)
    types = np.array(field(GGUFReader(str(exported)), "tokenizer.ggml.token_type"))
    ours = np.array(field(GGUFReader(str(exported)), "tokenizer.ggml.scores"))
    theirs = np.array(field(GGUFReader(str(original)), "tokenizer.ggml.scores"))
    normal = types == TokenType.NORMAL
    # llama.cpp merges the best-scored pair first: only the order of the normal tokens' scores matters.
    assert np.all(np.diff(ours[normal]) < 0) and np.all(np.diff(theirs[normal]) <= 0)
    assert np.array_equal(ours[~normal], theirs[~normal])


def test_vocabulary_pads_unused_rows_and_refuses_missing_ones():
    tokenizer = load_tokenizer("smollm2-135m")
    tokens, types = vocabulary(tokenizer, len(tokenizer) + 2, "gpt2", gemma=False)
    assert tokens[-2:] == [f"[PAD{len(tokenizer)}]", f"[PAD{len(tokenizer) + 1}]"]
    assert types[-2:] == [TokenType.UNUSED] * 2 and types[1] == TokenType.CONTROL and types[100] == TokenType.NORMAL
    with pytest.raises(UserError, match="resize the embeddings"):
        vocabulary(tokenizer, len(tokenizer) - 1, "gpt2", gemma=False)


def test_llama_cpp_tokenizes_a_chat_prompt_as_transformers_does(tiny_model, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is an optional extra (not installed)")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    exported = export_tiny(AutoModelForCausalLM.from_pretrained(tiny_model), tokenizer, tmp_path)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Write def add(a, b) in Python."}],
                                           tokenize=False, add_generation_prompt=True)
    vocab = llama_cpp.Llama(model_path=str(exported), vocab_only=True, verbose=False)
    # add_bos=True lets llama.cpp add BOS where the file says to (it says not to), as transformers' default does.
    assert vocab.tokenize(prompt.encode(), add_bos=True, special=True) == tokenizer(prompt)["input_ids"]

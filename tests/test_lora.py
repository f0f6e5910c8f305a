"""LoRA attachment: presets per architecture, one-line errors for bad names and values."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from common.errors import UserError
from common.model.lora import attach_lora, parameter_counts, resolve_target_modules, validate_lora_args


def test_presets_map_llama_names(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert resolve_target_modules(model, "qv") == ["q_proj", "v_proj"]
    assert resolve_target_modules(model, "qkvo") == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert resolve_target_modules(model, "mlp") == ["gate_proj", "up_proj", "down_proj"]
    assert set(resolve_target_modules(model, "all")) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                         "up_proj", "down_proj"}


def test_presets_map_gpt2_conv1d_names(tiny_gpt2):
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    assert resolve_target_modules(model, "qv") == ["c_attn"]
    assert resolve_target_modules(model, "qkvo") == ["c_attn", "attn.c_proj"]
    peft_model = attach_lora(model, 4, None, 0.0, "qkvo")
    wrapped = [n for n, _ in peft_model.named_modules() if n.endswith("lora_A")]
    assert len(wrapped) == 2 * 2  # c_attn and attn.c_proj in each of 2 layers, not mlp.c_proj


def test_unknown_module_lists_the_models_linear_layers(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with pytest.raises(UserError, match=r"unknown module 'qproj' for llama; its linear modules are: .*q_proj"):
        resolve_target_modules(model, "qproj,v_proj")


@pytest.mark.parametrize("rank, alpha, dropout, message", [
    (0, 1, 0.0, "--rank"), (-4, 1, 0.0, "--rank"), (8, 0, 0.0, "--alpha"), (8, 16, 1.0, "--dropout"),
    (8, 16, -0.1, "--dropout")])
def test_bad_lora_values_are_refused(rank, alpha, dropout, message):
    with pytest.raises(UserError, match=message):
        validate_lora_args(rank, alpha, dropout)


def test_only_adapter_weights_train(tiny_model):
    model = attach_lora(AutoModelForCausalLM.from_pretrained(tiny_model), 8, None, 0.0, "qv")
    counts = parameter_counts(model)
    expected = 2 * (8 * 64 + 8 * 64) + 2 * (8 * 64 + 8 * 32)  # q: 64->64, v: 64->32 (2 kv heads x 16), 2 layers
    assert counts["trainable_params"] == expected
    assert 0 < counts["trainable_pct"] < 100
    assert model.peft_config["default"].lora_alpha == 16  # default alpha = 2 x rank
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())
    assert isinstance(model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"], torch.nn.Linear)

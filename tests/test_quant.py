"""Quantized base weights on CPU: 4-bit and 8-bit load and train, and the silent 4-bit bug stays fixed."""
import pytest
import torch

from common.errors import UserError
from common.model.lora import attach_lora
from common.model.load import check_quant, disable_cpu_4bit_repacking, load_model

CPU = torch.device("cpu")


def lora_grad_norm(model, input_ids) -> float:
    model.zero_grad(set_to_none=True)
    model(input_ids=input_ids, labels=input_ids).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    return sum(float(g.norm()) for g in grads if g is not None)


def test_4bit_lora_still_trains_after_an_evaluation(tiny_model):
    model = attach_lora(load_model(tiny_model, "4bit", CPU), 8, None, 0.0, "all")
    input_ids = torch.randint(0, 1000, (2, 16))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    assert lora_grad_norm(model, input_ids) > 0  # lora_B starts at zero: its grad is the first signal
    optimizer.step()
    model.eval()
    with torch.no_grad():
        model(input_ids=input_ids)  # the forward that used to repack the weights and cut autograd
    model.train()
    assert lora_grad_norm(model, input_ids) > 0


def test_without_the_fix_lora_gradients_vanish(tiny_model):
    """Documents the bitsandbytes behaviour the fix exists for; if this starts failing, the fix may be obsolete."""
    model = attach_lora(load_model(tiny_model, "4bit", CPU), 8, None, 0.0, "qv")
    import bitsandbytes as bnb
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = True
    input_ids = torch.randint(0, 1000, (2, 16))
    model.eval()
    with torch.no_grad():
        model(input_ids=input_ids)
    model.train()
    if lora_grad_norm(model, input_ids) > 0:
        pytest.skip("this CPU/bitsandbytes build does not repack 4-bit weights; nothing to guard against here")
    assert disable_cpu_4bit_repacking(model) > 0


def test_8bit_loads_and_trains(tiny_model):
    model = attach_lora(load_model(tiny_model, "8bit", CPU), 8, None, 0.0, "qv")
    assert lora_grad_norm(model, torch.randint(0, 1000, (2, 16))) > 0


def test_unknown_quant_mode():
    with pytest.raises(UserError, match="unknown --quant '3bit'"):
        check_quant("3bit", CPU)


def test_4bit_where_bitsandbytes_cannot_run(monkeypatch):
    import bitsandbytes.functional as F

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this device")
    monkeypatch.setattr(F, "quantize_4bit", broken)
    with pytest.raises(UserError, match="--quant 4bit needs bitsandbytes working on cpu .*use --quant 16bit"):
        check_quant("4bit", CPU)

"""--lora-kernel fused (common/train/lora_kernel.py) against PEFT's LoRA layers: same loss and gradients, the
dropout mask redrawn in backward is the forward's, the masks are Bernoulli(1 - p) and independent across keys, a
resumed run draws the same masks, and the adapter it saves is PEFT's."""
import math

import pytest
import torch
from peft import PeftModel
from transformers import LlamaConfig, LlamaForCausalLM

import train
from common.model.lora import attach_lora, save_adapter
from common.train import loop
from common.train.lora_kernel import keep_mask, mask_key, use_fused_lora
from common.tracker import Tracker

CONFIG = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=64)
CPU = torch.device("cpu")


def tiny_lora(dropout: float, dtype: torch.dtype = torch.float32, **lora) -> PeftModel:
    """A 2-layer llama with LoRA on every linear; B non-zero so that A gets a gradient from the first step."""
    torch.manual_seed(0)
    model = attach_lora(LlamaForCausalLM(CONFIG).to(dtype), 4, 8, dropout, "all", **lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    return model.train()


def loss_and_grads(model: PeftModel, ids: torch.Tensor, dtype: torch.dtype = torch.float32):
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
def test_without_dropout_fused_gives_peft_loss_and_gradients(dtype, tol):
    ids = torch.randint(0, 256, (3, 17))
    peft_loss, peft_grads = loss_and_grads(tiny_lora(0.0, dtype), ids, dtype)
    model = tiny_lora(0.0, dtype)
    fused = use_fused_lora(model, seed=0)
    assert len(fused.layers) == 14  # 7 linears x 2 layers, every one on the fused path
    fused.at(0, 0)
    loss, grads = loss_and_grads(model, ids, dtype)
    torch.testing.assert_close(loss, peft_loss, atol=tol, rtol=tol)
    assert grads.keys() == peft_grads.keys() and any("lora_A" in k for k in grads)
    for name in grads:
        scale = peft_grads[name].abs().max().item()
        torch.testing.assert_close(grads[name], peft_grads[name], atol=tol * max(scale, 1.0), rtol=tol)
        assert grads[name].abs().max() > 0, name


def test_the_mask_redrawn_in_backward_is_the_forward_one():
    """Gradients of x, A and B equal plain autograd through the explicit mask of the layer's key."""
    p = 0.3
    model = tiny_lora(p)
    fused = use_fused_lora(model, seed=7)
    fused.at(5, 2)
    layer = model.base_model.model.model.layers[1].self_attn.v_proj
    index = [m for m in model.modules() if hasattr(m, "lora_A")].index(layer)
    x = torch.randn(2, 9, 64, requires_grad=True)
    out = layer(x)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    got = [x.grad.clone(), layer.lora_A["default"].weight.grad.clone(), layer.lora_B["default"].weight.grad.clone()]

    keep = keep_mask(x.shape, mask_key(7, 5, index, 2), p, CPU)
    assert not keep.all() and keep.any()
    for t in [x, layer.lora_A["default"].weight, layer.lora_B["default"].weight]:
        t.grad = None
    a, b = layer.lora_A["default"], layer.lora_B["default"]
    reference = layer.base_layer(x) + b(a(x * keep / (1 - p))) * layer.scaling["default"]
    reference.backward(grad_out)
    torch.testing.assert_close(out, reference, atol=1e-6, rtol=1e-6)
    expected = [x.grad, a.weight.grad, b.weight.grad]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_the_keep_rate_is_one_minus_p(p):
    n = 2_000_003  # odd: the last 32-bit hash gives one element, not two
    keep = keep_mask((n,), mask_key(0, 1, 2, 3), p, CPU)
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(keep.double().mean().item() - (1 - p)) < 5 * sigma


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return torch.corrcoef(torch.stack([a, b]))[0, 1].item()


def test_masks_of_different_keys_are_uncorrelated_and_one_key_gives_one_mask():
    shape, p = (512, 576), 0.3
    n = shape[0] * shape[1]
    bound = 5 / math.sqrt(n)   # the sample correlation of independent masks has sd 1/sqrt(n)
    base = keep_mask(shape, mask_key(0, 10, 3, 0), p, CPU)
    assert torch.equal(base, keep_mask(shape, mask_key(0, 10, 3, 0), p, CPU))
    for other in [(1, 10, 3, 0), (0, 11, 3, 0), (0, 10, 4, 0), (0, 10, 3, 1)]:   # seed, step, layer, micro-batch
        mask = keep_mask(shape, mask_key(*other), p, CPU)
        assert not torch.equal(base, mask)
        assert abs(correlation(base, mask)) < bound, other
    # within one mask: neighbours (the two halves of one hash) and rows are no copies of each other
    flat = base.flatten()
    assert abs(correlation(flat[0::2], flat[1::2])) < 5 / math.sqrt(n / 2)
    assert abs(correlation(base[:-1], base[1:])) < 5 / math.sqrt(n)


def test_loss_goes_down_with_fused_dropout_and_the_adapter_loads_with_plain_peft(tmp_path):
    model = tiny_lora(0.1)
    fused = use_fused_lora(model, seed=0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 256, (4, 24))
    losses = []
    for step in range(6):
        fused.at(step, 0)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses   # measured 5.57 -> 5.10

    model.eval()
    with torch.no_grad():
        live = model(input_ids=ids).logits
    save_adapter(model, tmp_path / "adapter")
    torch.manual_seed(0)
    loaded = PeftModel.from_pretrained(LlamaForCausalLM(CONFIG), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, live, atol=1e-5, rtol=1e-5)


def test_dora_and_conv1d_layers_stay_on_peft(tiny_gpt2):
    assert use_fused_lora(tiny_lora(0.1, dora=True), seed=0) is None
    from transformers import AutoModelForCausalLM
    gpt2 = attach_lora(AutoModelForCausalLM.from_pretrained(tiny_gpt2), 4, 8, 0.1, "qkvo")
    assert use_fused_lora(gpt2, seed=0) is None


@pytest.mark.slow
def test_a_run_resumed_at_step_3_ends_with_the_weights_of_an_uninterrupted_one(tiny_model, tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from common.train.lora_kernel import FusedLoRA
    common = ["--model", tiny_model, "--lora-kernel", "fused", "--train-limit", "24", "--max-seq-len", "256",
              "--batch-size", "2", "--grad-accum", "2", "--eval-gen", "0", "--val-limit", "4", "--quiet", "--max-steps", "6",
              "--quant", "32bit", "--dropout", "0.3", "--lr", "1e-2", "--eval-every", "0", "--save-every", "0",
              "--no-load-best"]
    positions = []
    keyed = FusedLoRA.at
    monkeypatch.setattr(FusedLoRA, "at", lambda self, step, micro: positions.append((step, micro)) or
                        keyed(self, step, micro))
    assert train.main([*common, "--db", str(tmp_path / "a.db"), "--output-dir", str(tmp_path / "a")]) == 0
    assert positions == [(step, micro) for step in range(6) for micro in range(2)]  # each micro-batch its own masks
    polls = iter(range(100))
    monkeypatch.setattr(loop, "stop_requested", lambda stop, world: next(polls) == 2)  # after the 3rd step
    run_b = [*common, "--db", str(tmp_path / "b.db"), "--output-dir", str(tmp_path / "b")]
    assert train.main(run_b) == 130
    monkeypatch.undo()
    assert train.main(run_b) == 0
    (run,) = Tracker(tmp_path / "b.db").runs()
    assert run["config"]["lora_kernel"] == "fused" and run["status"] == "completed"
    a, b = load_file(tmp_path / "a" / "adapter_model.safetensors"), load_file(tmp_path / "b" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
    losses = [m["value"] for m in Tracker(tmp_path / "b.db").metrics(run["id"], "loss")]
    assert len(losses) == 6


@pytest.mark.slow
def test_the_recorded_kernel_is_the_one_that_ran(tiny_model, tmp_path):
    base = ["--model", tiny_model, "--train-limit", "8", "--max-seq-len", "256", "--batch-size", "2", "--eval-gen",
            "0", "--val-limit", "2", "--quiet", "--max-steps", "1", "--eval-every", "0", "--quant", "32bit"]
    for name, extra, kernel in [("dora", ["--dora", "--lora-kernel", "fused"], "peft"), ("default", [], "peft"),
                                ("fused", ["--lora-kernel", "fused"], "fused")]:
        assert train.main([*base, *extra, "--db", str(tmp_path / "e.db"), "--name", name,
                           "--output-dir", str(tmp_path / name)]) == 0
        (run,) = [r for r in Tracker(tmp_path / "e.db").runs() if r["name"] == name]
        assert run["config"]["lora_kernel"] == kernel, name


def test_a_checkpoint_from_before_the_option_resumes_only_on_peft(tmp_path):
    from common.errors import UserError
    from common.train.build import restore
    (tmp_path / "checkpoint").mkdir()
    torch.save({"progress": {"config": {"rank": 16}}}, tmp_path / "checkpoint" / "state.pt")
    with pytest.raises(UserError, match=r"\(lora_kernel\); --lora-kernel peft continues it"):
        restore(tmp_path / "checkpoint", {"rank": 16, "lora_kernel": "fused"}, None, None, None)
    with pytest.raises(UserError, match=r"\(lora_kernel, rank\); pass another"):
        restore(tmp_path / "checkpoint", {"rank": 8, "lora_kernel": "fused"}, None, None, None)


def test_gradient_checkpointing_recomputes_the_forward_with_the_same_masks():
    ids = torch.randint(0, 256, (2, 20))
    grads, calls = [], []
    for checkpointing in (False, True):
        model = tiny_lora(0.3)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        use_fused_lora(model, seed=3).at(4, 1)
        q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
        q_proj.register_forward_hook(lambda *_, on=checkpointing: calls.append(on))
        grads.append(loss_and_grads(model, ids))
    assert calls == [False, True, True]   # the checkpointed layer ran its forward again in backward
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-6, rtol=1e-6)
    for name in grads[0][1]:
        torch.testing.assert_close(grads[0][1][name], grads[1][1][name], atol=1e-6, rtol=1e-5)

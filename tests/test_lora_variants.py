"""LoRA variants (rsLoRA, DoRA, PiSSA, OLoRA, LoRA+) on a tiny llama: each trains, saves an adapter that a plain
PeftModel.from_pretrained on the ORIGINAL base turns into the trained model, and merges to it; LoRA+'s optimizer
groups; one-line errors for what cannot work; the estimate, run names and suite file that carry them."""
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from common.config import TrainConfig
from common.errors import UserError
from common.model.load import load_model
from common.model.lora import attach_lora, parameter_counts, save_adapter, validate_variant
from common.study import suites
from common.train.estimate import estimate_run, load_config, model_shape
from common.train.steps import load_best_adapter, make_optimizer, save_best

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {"lora": {}, "rslora": {"rslora": True}, "dora": {"dora": True}, "pissa": {"init": "pissa"},
            "olora": {"init": "olora", "rslora": True}, "lora_plus": {"lora_plus_ratio": 16.0}}


def variant_model(tiny_model: str, flags: dict, rank: int = 4):
    torch.manual_seed(0)
    model = load_model(tiny_model, "32bit", CPU)
    return attach_lora(model, rank, None, 0.0, "qkvo", rslora=flags.get("rslora", False),
                       dora=flags.get("dora", False), init=flags.get("init", "gaussian"))


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def train_steps(model, cfg: TrainConfig, ids: torch.Tensor, steps: int = 6) -> list[float]:
    optimizer = make_optimizer(model, cfg)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_trains_saves_reloads_on_the_original_base_and_merges(tiny_model, tmp_path, variant):
    flags = VARIANTS[variant]
    model = variant_model(tiny_model, flags)
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(1))
    base = load_model(tiny_model, "32bit", CPU)
    original = logits(base, ids)
    if "init" not in flags:  # PEFT's default init starts at the base model; PiSSA/OLoRA start at W_res + sB0A0
        torch.testing.assert_close(logits(model, ids), original)
    losses = train_steps(model, TrainConfig(lr=1e-2, lora_plus_ratio=flags.get("lora_plus_ratio", 0.0)), ids)
    assert losses[-1] < losses[0] - 0.05, losses
    trained = logits(model, ids)
    assert (trained - original).abs().max() > 1e-3  # the adapter changed the model

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    save_adapter(model, tmp_path / "adapter")
    # converting loads and deletes a second adapter: the live one must be as it was, still trainable
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    torch.testing.assert_close(logits(model, ids), trained)

    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    torch.testing.assert_close(logits(reloaded, ids), trained, rtol=0, atol=1e-5)
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] == (8 if "init" in flags else 4) and saved["init_lora_weights"] is True
    assert saved["use_dora"] == flags.get("dora", False) and saved["use_rslora"] == flags.get("rslora", False)
    torch.testing.assert_close(logits(model.merge_and_unload(), ids), trained, rtol=0, atol=1e-4)
    torch.testing.assert_close(logits(reloaded.merge_and_unload(), ids), trained, rtol=0, atol=1e-4)


def test_rslora_scales_by_alpha_over_sqrt_r(tiny_model):
    plain, rs = (variant_model(tiny_model, flags, rank=16) for flags in ({}, {"rslora": True}))
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    assert plain.get_submodule(q).scaling["default"] == pytest.approx(32 / 16)
    assert rs.get_submodule(q).scaling["default"] == pytest.approx(32 / 4)


def test_best_checkpoint_of_a_converted_adapter_loads_back_into_the_live_model(tiny_model, tmp_path):
    model = variant_model(tiny_model, {"init": "pissa"})
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(2))
    train_steps(model, TrainConfig(lr=1e-3), ids, steps=2)
    best = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    save_best(tmp_path / "best", model, load_tokenizer_of(tiny_model))
    train_steps(model, TrainConfig(lr=1e-3), ids, steps=2)
    assert any(not torch.equal(p, best[n]) for n, p in model.named_parameters() if p.requires_grad)
    load_best_adapter(model, tmp_path / "best")  # the saved pair has rank 2r; the live one r
    for name, param in model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param, best[name], rtol=0, atol=0)


def load_tokenizer_of(path: str):
    from common.model.load import load_tokenizer
    return load_tokenizer(path)


def test_lora_plus_puts_b_matrices_in_a_group_at_lr_times_ratio(tiny_model):
    model = variant_model(tiny_model, {"dora": True})
    optimizer = make_optimizer(model, TrainConfig(lr=2e-4, lora_plus_ratio=16.0))
    slow, fast = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert (slow["lr"], fast["lr"]) == (2e-4, pytest.approx(3.2e-3))
    assert fast["params"] and all(".lora_B." in names[id(p)] for p in fast["params"])
    assert all(".lora_B." not in names[id(p)] for p in slow["params"])
    assert any("lora_magnitude_vector" in names[id(p)] for p in slow["params"])  # DoRA magnitudes at lr
    assert len(slow["params"]) + len(fast["params"]) == sum(p.requires_grad for p in model.parameters())
    from transformers import get_scheduler
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=2, num_training_steps=10)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    low, high = scheduler.get_last_lr()
    assert 0 < low < 2e-4 and high == pytest.approx(16 * low)  # the schedule keeps the ratio
    assert len(make_optimizer(model, TrainConfig(lr=2e-4)).param_groups) == 1  # 0: off


@pytest.mark.parametrize("quant, init, dora, ratio, message", [
    ("16bit", "gaussian", False, -1.0, "--lora-plus-ratio must be >= 0"),
    ("4bit", "pissa", False, 0.0, "--init pissa rewrites the base weights.*not --quant 4bit"),
    ("8bit", "olora", False, 0.0, "--init olora rewrites the base weights.*not --quant 8bit"),
    ("16bit", "pissa", True, 0.0, "--dora with --init pissa"),
    ("16bit", "svd", False, 0.0, "--init must be one of gaussian, pissa, olora"),
])
def test_invalid_combinations_are_refused_in_one_line(quant, init, dora, ratio, message):
    with pytest.raises(UserError, match=message) as info:
        validate_variant(quant, init, dora, ratio)
    assert "\n" not in str(info.value)


def test_quantized_weights_refuse_what_they_cannot_do_before_peft_touches_them(tiny_model):
    with pytest.raises(UserError, match="--init pissa rewrites the base weights"):
        attach_lora(load_model(tiny_model, "4bit", CPU), 4, None, 0.0, "qv", init="pissa")
    with pytest.raises(UserError, match="--dora on --quant 8bit does not run on a CPU"):
        attach_lora(load_model(tiny_model, "8bit", CPU), 4, None, 0.0, "qv", dora=True)


@pytest.mark.slow
def test_dora_on_4bit_trains(tiny_model):
    model = attach_lora(load_model(tiny_model, "4bit", CPU), 4, None, 0.0, "qv", dora=True)
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(3))
    losses = train_steps(model, TrainConfig(lr=1e-2), ids)
    assert losses[-1] < losses[0] - 0.05, losses


def test_train_py_refuses_a_negative_ratio_in_one_line(tiny_model, tmp_path, capsys):
    from common.errors import run_cli
    import train
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: train.main(["--model", tiny_model, "--db", str(tmp_path / "e.db"), "--lora-plus-ratio", "-2"]))
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip()
    assert "--lora-plus-ratio must be >= 0" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "e.db").exists()  # refused before anything was recorded


def test_dora_estimate_counts_magnitudes_memory_and_work(tiny_model):
    shape = model_shape(load_config(tiny_model), "qkvo")
    dora = variant_model(tiny_model, {"dora": True})
    assert shape.lora_params(4, dora=True) == parameter_counts(dora)["trainable_params"]
    examples = [{"input_ids": range(40 + 3 * i), "labelled": 20} for i in range(16)]
    cfg = TrainConfig(model=tiny_model, rank=4, quant="32bit", batch_size=4, max_seq_len=128, max_steps=2)
    plain, with_dora = (estimate_run(dataclasses.replace(cfg, dora=d), CPU, examples) for d in (False, True))
    assert with_dora.lora_params > plain.lora_params
    assert with_dora.lora_mb > plain.lora_mb
    assert with_dora.activations_mb > plain.activations_mb  # measured: DoRA saves the base and LoRA outputs again
    assert with_dora.step_flops > plain.step_flops and with_dora.peak_mb > plain.peak_mb


def test_run_names_show_the_variant_and_plain_names_are_unchanged():
    assert suites.train_name({}) == suites.train_name({"init": "gaussian", "lora_plus_ratio": 0, "dora": False})
    assert suites.train_name({"dora": True}).startswith("r16-qkvo-16bit-dora-s0-")
    assert suites.train_name({"init": "pissa", "rslora": True, "lora_plus_ratio": 16}).startswith(
        "r16-qkvo-16bit-rslora-pissa-lp16-s0-")


def test_variants_suite_compares_five_variants_at_one_rank():
    suite = suites.builtin_suite("variants")
    runs = suites.expand(suite)
    names = [suites.train_name(flags) for flags in runs]
    assert len(set(names)) == len(runs) == 5 and {flags["rank"] for flags in runs} == {16}
    assert [n.split("-s0-")[0] for n in names] == ["r16-qkvo-16bit", "r16-qkvo-16bit-rslora", "r16-qkvo-16bit-dora",
                                                   "r16-qkvo-16bit-pissa", "r16-qkvo-16bit-lp16"]
    for flags in runs:  # every run passes train.py's checks
        validate_variant(flags.get("quant") or "16bit", flags.get("init") or "gaussian", bool(flags.get("dora")),
                         flags.get("lora_plus_ratio"))


@pytest.mark.slow
def test_train_py_records_the_variant_and_saves_pissa_converted(tiny_model, tmp_path):
    import train
    from common.tracker import Tracker
    argv = ["--model", tiny_model, "--db", str(tmp_path / "e.db"), "--train-limit", "16", "--max-seq-len", "256",
            "--batch-size", "4", "--eval-gen", "0", "--val-limit", "4", "--quiet", "--quant", "32bit", "--rank", "4",
            "--init", "pissa", "--rslora", "--lora-plus-ratio", "4", "--max-steps", "2", "--eval-every", "1"]
    assert train.main(argv) == 0
    (run,) = Tracker(tmp_path / "e.db").runs()
    assert run["name"].startswith("r4-qkvo-32bit-rslora-pissa-lp4-s0-")
    assert (run["config"]["init"], run["config"]["rslora"], run["config"]["lora_plus_ratio"]) == ("pissa", True, 4.0)
    out = Path(run["output_dir"])
    for adapter in (out, out / "best"):  # both load onto the original base: converted, rank 2r
        saved = json.loads((adapter / "adapter_config.json").read_text())
        assert (saved["r"], saved["init_lora_weights"], saved["use_rslora"]) == (8, True, True)
    ids = torch.randint(0, 1000, (1, 12))
    base = load_model(tiny_model, "32bit", CPU)
    before = logits(base, ids)
    assert (logits(PeftModel.from_pretrained(base, out), ids) - before).abs().max() > 1e-4

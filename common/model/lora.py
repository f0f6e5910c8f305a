"""Attach LoRA adapters: validate rank/alpha/dropout and map `--modules` to the architecture.

`--modules` is a preset or a comma list of module names:

    qv    attention query and value projections (the original LoRA paper)
    qkv   + key
    qkvo  + attention output projection
    mlp   the feed-forward projections only
    all   every linear layer except the LM head (QLoRA paper setting)

Presets are resolved from the names the model actually has, so the same flag
works for llama/mistral/qwen2/gemma (q_proj, ..., gate_proj) and GPT-2 (fused
c_attn, c_proj, c_fc Conv1D layers).

Variants (PEFT 0.21), each a TrainConfig option:

    --rslora   scaling alpha/sqrt(r) instead of alpha/r (Kalajdzievski 2023): the update's size stops
               shrinking as r grows
    --dora     a trainable magnitude per output feature, the LoRA update only turns the direction
               (Liu et al. 2024); W + sBA is formed and normed in every forward: more time and memory
    --init     gaussian (PEFT's default init: random A, zero B, so training starts at the base model);
               pissa (A, B from the top-r singular vectors of W, Meng et al. 2024) or olora (from a QR
               decomposition, Buyukakyuz 2024). Both REWRITE the base weights to W_res = W - sB0A0, so the
               trained pair (A, B) only means something on W_res. `save_adapter` therefore saves them
               converted for the ORIGINAL base: dW = sBA - sB0A0 = s[B | -B0][A ; A0], a plain LoRA
               adapter of rank 2r (PEFT's path_initial_model_for_weight_conversion), which
               PeftModel.from_pretrained loads onto the unmodified model. They need float weights: PEFT
               cannot factor a 4-bit/8-bit weight (pissa), or requantizes W_res (olora), and then no
               adapter on the original base reproduces the trained model; both are refused there.
    --lora-plus-ratio R   LoRA+ (Hayou et al. 2024): B learns at lr x R (common/train/steps.py)
"""
import copy
import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import save_file
from transformers import PreTrainedModel

from common.config import LORA_INITS
from common.errors import UserError

PRESETS = ("qv", "qkv", "qkvo", "mlp", "all")

# Role -> module-name suffixes, per naming family; the first family whose names are present wins.
_FAMILIES = {
    "llama-style": {"q": ["q_proj"], "k": ["k_proj"], "v": ["v_proj"], "o": ["o_proj"],
                    "mlp": ["gate_proj", "up_proj", "down_proj"]},
    "gpt2-style": {"q": ["c_attn"], "k": ["c_attn"], "v": ["c_attn"], "o": ["attn.c_proj"],
                   "mlp": ["mlp.c_fc", "mlp.c_proj"]},
}
_PRESET_ROLES = {"qv": ["q", "v"], "qkv": ["q", "k", "v"], "qkvo": ["q", "k", "v", "o"], "mlp": ["mlp"]}
# --init -> PEFT's init_lora_weights (True: PEFT's default initialisation)
_PEFT_INIT = {"gaussian": True, "pissa": "pissa", "olora": "olora"}
BASE_REWRITING_INITS = ("pissa", "olora")
# Where a PiSSA/OLoRA model keeps its adapter as initialised (A0, B0), for converting what it saves.
_INITIAL_ADAPTER = "initial_adapter_state"


def validate_lora_args(rank: int, alpha: float, dropout: float) -> None:
    if rank <= 0:
        raise UserError(f"--rank must be a positive integer, got {rank}")
    if alpha <= 0:
        raise UserError(f"--alpha must be positive, got {alpha} (default: 2 x rank)")
    if not 0 <= dropout < 1:
        raise UserError(f"--dropout must be in [0, 1), got {dropout}")


def validate_variant(quant: str, init: str, dora: bool, lora_plus_ratio: float | None) -> None:
    """Refuse variant combinations that cannot train or cannot be saved faithfully, before any weight loads."""
    if init not in LORA_INITS:
        raise UserError(f"--init must be one of {', '.join(LORA_INITS)}, got {init!r}")
    if init in BASE_REWRITING_INITS and quant in ("4bit", "8bit"):
        raise UserError(f"--init {init} rewrites the base weights, which needs 16/32-bit weights, not --quant {quant}; "
                        "use --quant 16bit or 32bit, or --init gaussian")
    if init in BASE_REWRITING_INITS and dora:
        raise UserError(f"--dora with --init {init}: PEFT's conversion for the original base drops DoRA's "
                        "magnitudes, so the saved adapter would not be the trained model; pick one of them")
    if lora_plus_ratio is not None and lora_plus_ratio < 0:
        raise UserError(f"--lora-plus-ratio must be >= 0 (0: off; the LoRA+ paper uses 16), got {lora_plus_ratio}")


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Full names of the linear layers LoRA can wrap (nn.Linear, GPT-2 Conv1D, bitsandbytes layers)."""
    from transformers.pytorch_utils import Conv1D
    names = []
    for name, module in model.named_modules():
        parts = name.split(".")
        if parts[-1] == "lm_head" or "base_layer" in parts or any(p.startswith("lora_") for p in parts):
            continue  # the output head stays frozen; LoRA's own layers are not targets
        if isinstance(module, (torch.nn.Linear, Conv1D)):
            names.append(name)
    return names


def _short_names(full_names: list[str]) -> list[str]:
    return sorted({".".join(n.split(".")[-2:]) if n.split(".")[-1] == "c_proj" else n.split(".")[-1]
                   for n in full_names})


def resolve_target_modules(model: torch.nn.Module, modules: str) -> list[str]:
    """Turn a preset or comma list into module-name suffixes that exist in this model."""
    full = linear_module_names(model)
    arch = getattr(getattr(model, "config", None), "model_type", "this model")
    if modules in PRESETS:
        if modules == "all":
            return _short_names(full)
        family = next((f for f, roles in _FAMILIES.items()
                       if any(n.endswith(roles["q"][0]) for n in full)), None)
        if family is None:
            raise UserError(f"preset --modules {modules} has no mapping for {arch}; pass a comma list of its "
                            f"linear modules: {', '.join(_short_names(full))}")
        roles = _FAMILIES[family]
        wanted = [name for role in _PRESET_ROLES[modules] for name in roles[role]]
        return list(dict.fromkeys(wanted))
    wanted = [m.strip() for m in modules.split(",") if m.strip()]
    if not wanted:
        raise UserError(f"--modules is empty; use a preset ({', '.join(PRESETS)}) or a comma list")
    for name in wanted:
        if not any(n == name or n.endswith("." + name) for n in full):
            raise UserError(f"unknown module {name!r} for {arch}; its linear modules are: "
                            f"{', '.join(_short_names(full))} (or a preset: {', '.join(PRESETS)})")
    return wanted


def attach_lora(model: PreTrainedModel, rank: int, alpha: float | None, dropout: float, modules: str, *,
                rslora: bool = False, dora: bool = False, init: str = "gaussian") -> PeftModel:
    """The model with a fresh LoRA adapter ("default") on `modules`; variants as in the module docstring."""
    alpha = 2 * rank if alpha is None else alpha
    validate_lora_args(rank, alpha, dropout)
    _check_quantized_layers(model, init, dora)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, bias="none", task_type="CAUSAL_LM",
                        target_modules=resolve_target_modules(model, modules), use_rslora=rslora, use_dora=dora,
                        init_lora_weights=_PEFT_INIT[init])
    peft_model = get_peft_model(model, config)
    if init in BASE_REWRITING_INITS:
        initial = {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(peft_model).items()}
        setattr(peft_model, _INITIAL_ADAPTER, initial)
    return peft_model


def _check_quantized_layers(model: torch.nn.Module, init: str, dora: bool) -> None:
    """What the loaded weights themselves rule out (validate_variant has already checked the flags)."""
    kinds = {type(m).__name__ for m in model.modules()} & {"Linear4bit", "Linear8bitLt"}
    if kinds and init in BASE_REWRITING_INITS:
        raise UserError(f"--init {init} rewrites the base weights, which needs 16/32-bit weights, not quantized ones")
    on_cpu = next(model.parameters()).device.type == "cpu"
    if dora and on_cpu and "Linear8bitLt" in kinds:
        # measured: after DoRA's weight-norm pass at init, bitsandbytes 0.50's CPU int8 layer fails in its next
        # forward ('NoneType' col_stats); CUDA int8 is PEFT's tested path and is left to PEFT
        raise UserError("--dora on --quant 8bit does not run on a CPU (bitsandbytes 0.50); use --quant 4bit or 16bit")


def save_adapter(model: PeftModel, path: Path | str) -> None:
    """`model.save_pretrained(path)`; a PiSSA/OLoRA adapter is saved converted for the original base weights.

    The conversion (PEFT's path_initial_model_for_weight_conversion) needs the adapter as initialised on disk,
    with init_lora_weights=True so loading it does not factor the (already rewritten) base again: it is written
    to a temporary directory from the copy `attach_lora` kept. The live model is unchanged.
    """
    initial = getattr(model, _INITIAL_ADAPTER, None)
    if initial is None:
        model.save_pretrained(path)
        return
    with tempfile.TemporaryDirectory() as tmp:
        initial_dir = Path(tmp) / "initial"
        config = copy.deepcopy(model.peft_config["default"])
        config.init_lora_weights = True
        config.save_pretrained(str(initial_dir))
        save_file(initial, str(initial_dir / "adapter_model.safetensors"))
        model.save_pretrained(path, path_initial_model_for_weight_conversion=str(initial_dir))


def live_adapter_weights(model: PeftModel, saved: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights `save_adapter` wrote, as the live model holds them: a converted PiSSA/OLoRA adapter stores
    [A ; A0] and [B | -B0] (rank 2r), whose first r rows of A and columns of B are the trained pair."""
    if getattr(model, _INITIAL_ADAPTER, None) is None:
        return saved
    r = model.peft_config["default"].r
    return {k: v[:r] if "lora_A" in k else v[:, :r] if "lora_B" in k else v for k, v in saved.items()}


def parameter_counts(model: torch.nn.Module) -> dict[str, float]:
    """Trainable and total parameters; 4-bit packed weights count as the elements they hold."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n *= 2  # two 4-bit values per stored byte
        total += n
        if p.requires_grad:
            trainable += n
    return {"trainable_params": trainable, "total_params": total,
            "trainable_pct": 100.0 * trainable / max(total, 1)}

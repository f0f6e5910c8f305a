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
"""
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

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


def validate_lora_args(rank: int, alpha: float, dropout: float) -> None:
    if rank <= 0:
        raise UserError(f"--rank must be a positive integer, got {rank}")
    if alpha <= 0:
        raise UserError(f"--alpha must be positive, got {alpha} (default: 2 x rank)")
    if not 0 <= dropout < 1:
        raise UserError(f"--dropout must be in [0, 1), got {dropout}")


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


def attach_lora(model: PreTrainedModel, rank: int, alpha: float | None, dropout: float,
                modules: str) -> PeftModel:
    alpha = 2 * rank if alpha is None else alpha
    validate_lora_args(rank, alpha, dropout)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, bias="none", task_type="CAUSAL_LM",
                        target_modules=resolve_target_modules(model, modules))
    return get_peft_model(model, config)


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

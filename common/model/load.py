"""Load a causal LM and its tokenizer at the precision asked for by `--quant`.

    4bit  NF4 with double quantization (bitsandbytes), LoRA on top = QLoRA
    8bit  bitsandbytes LLM.int8 weights
    16bit bf16 where the hardware has it (Ampere+ GPUs, CPUs with AVX512-BF16/AMX),
          fp16 on older GPUs, fp32 on CPUs without native bf16 (recorded as the run's dtype)
    32bit fp32

`--dtype fp32` pins the compute dtype to fp32 under every quant mode (16bit loads fp32 weights, 4/8-bit
bases compute in fp32), so runs of one study on CPUs with and without bf16 compute alike.

The same code path serves CPU and CUDA. On CPU, bitsandbytes 0.50 repacks a
Linear4bit weight for a kernel without autograd after its first no-grad
forward, which silently zeroes LoRA gradients from then on; `load_model`
switches that repacking off (see shared NOTES and tests/test_quant.py).
"""
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as transformers_logging

from common.config import DTYPES, QUANT_MODES
from common.errors import UserError, first_line
from common.model.resolve import model_choices, resolve_model


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: without them PyTorch's CPU bf16 matmuls run 10-100x slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def half_dtype(device: torch.device) -> torch.dtype:
    """The 16-bit dtype for this device; fp32 on a CPU that cannot compute in bf16 at speed."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def compute_dtype(quant: str, device: torch.device, pinned: str = "auto") -> torch.dtype:
    """The dtype activations and LoRA matmuls run in for a quant mode (`pinned`: the --dtype option)."""
    if pinned not in DTYPES:  # argparse checks the command line, not --config files or callers
        raise UserError(f"unknown --dtype {pinned!r}; choose one of {', '.join(DTYPES)}")
    return torch.float32 if quant == "32bit" or pinned == "fp32" else half_dtype(device)


def check_quant(quant: str, device: torch.device) -> None:
    """Fail early, in one line, when the quant mode cannot run here."""
    if quant not in QUANT_MODES:
        raise UserError(f"unknown --quant {quant!r}; choose one of {', '.join(QUANT_MODES)}")
    if quant not in ("4bit", "8bit"):
        return
    try:
        import bitsandbytes.functional as F
        F.quantize_4bit(torch.ones(64, 64, dtype=half_dtype(device), device=device), quant_type="nf4")
    except Exception as e:  # ImportError, missing native library, unsupported device: all mean "cannot run"
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise UserError(f"--quant {quant} needs bitsandbytes working on {device.type} ({reason}); "
                        "install bitsandbytes>=0.45 or use --quant 16bit") from e


def load_tokenizer(model: str) -> PreTrainedTokenizerBase:
    path = resolve_model(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise UserError(f"cannot load tokenizer for {model!r} ({first_line(e)}); {model_choices()}") from e
    if tokenizer.pad_token_id is None:
        # Padding positions are masked explicitly everywhere, so reusing EOS is safe here.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model: str, quant: str, device: torch.device, dtype: str = "auto") -> PreTrainedModel:
    """`model` at `quant` on `device`, computing in compute_dtype(quant, device, dtype)."""
    check_quant(quant, device)
    compute = compute_dtype(quant, device, dtype)
    if quant == "16bit" and dtype == "auto" and compute == torch.float32:
        print("note: this CPU has no native bf16 (AVX512-BF16/AMX), so --quant 16bit runs in fp32", file=sys.stderr)
    path = resolve_model(model)
    kwargs: dict = {"dtype": compute}
    if quant in ("4bit", "8bit"):
        from transformers import BitsAndBytesConfig
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=quant == "4bit", load_in_8bit=quant == "8bit",
            bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute)
        kwargs["device_map"] = {"": device}
    transformers_logging.disable_progress_bar()  # our own progress bars are the ones that matter
    try:
        lm = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise UserError(f"cannot load model {model!r} ({first_line(e)}); {model_choices()}") from e
    if "device_map" not in kwargs:
        lm.to(device)
    disable_cpu_4bit_repacking(lm)
    return lm


def disable_cpu_4bit_repacking(model: torch.nn.Module) -> int:
    """Keep CPU Linear4bit layers on the autograd-capable path; returns how many were patched."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    patched = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            patched += 1
    return patched

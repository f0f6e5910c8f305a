"""Shared building blocks for the LoRA/QLoRA code-generation study scripts."""
import warnings

# peft calls a transformers property deprecated in 5.x on every adapter load; nothing for users to act on.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
# bitsandbytes' int8 matmul announces on every call that it casts fp32 inputs to fp16; that is how it works.
warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")

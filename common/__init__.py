"""Shared building blocks for the LoRA/QLoRA code-generation study scripts."""
import warnings

# peft calls a transformers property deprecated in 5.x on every adapter load; nothing for users to act on.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

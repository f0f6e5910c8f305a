"""Shared building blocks for the LoRA/QLoRA code-generation study scripts."""
import logging
import warnings

# peft calls a transformers property deprecated in 5.x on every adapter load; nothing for users to act on.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
# train.py says once, in its own words, that paging needs CUDA; bitsandbytes would repeat it per parameter.
warnings.filterwarnings("ignore", message="Paged optimizers are not supported on CPU", category=UserWarning)


def _drop_messages_starting_with(logger_name: str, prefix: str) -> None:
    logging.getLogger(logger_name).addFilter(lambda record: not str(record.msg).startswith(prefix))


# bitsandbytes' int8 matmul logs on every call that it casts inputs to fp16; that is how it works, and
# a 100-step 8-bit run printed it 300,000 times.
_drop_messages_starting_with("bitsandbytes.autograd._functions", "MatMul8bitLt: inputs will be cast")
# On CPUs with AVX512-BF16 bitsandbytes tries to fetch a 4-bit kernel from the Hugging Face Hub and
# falls back to its built-in one; offline that always fails, and the line would precede every error.
_drop_messages_starting_with("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward")

"""Model FLOPs of one LoRA training pass: the work the model needs for the real tokens, for MFU.

    from flops import training_flops      # bench/ is sys.path[0] in every bench script

Model FLOPs are the work the model needs for the real tokens, the same for every variant: padding,
full-vocabulary logits at unlabelled positions and recomputation are wasted work and do not count. With a
frozen base and LoRA, for an example of L tokens of which C carry a label, on a llama-style decoder:

    4 * N_linear * L                  forward (2N) + input gradients (2N) of the decoder's linear layers; frozen
                                      weights get no weight gradient, so the usual 6N would overstate LoRA's work
  + 6 * N_lora * L                    LoRA A and B: forward, input gradients and weight gradients
  + 4 * V * d * C                     LM head forward + input gradient, at labelled positions only
  + 12 * n_layers * h * L(L+1)/2      attention scores QK^T and values PV: 2 * 2h FLOPs per causal (query, key)
                                      pair forward, twice that backward; token t attends to t+1 positions

N_linear: the q, k, v, o, gate, up, down weights of all layers; N_lora = r * (in + out) summed over the adapted
q/k/v/o projections; V vocabulary, d hidden size, h = heads * head_dim. Norms, activations, softmax, embedding
lookups and the optimizer are left out (well under 1% here).
"""
from typing import Any

from common.text.prompts import IGNORE_INDEX

RANK = 16  # the LoRA rank every training bench uses


def lora_params(config, rank: int = RANK) -> int:
    """Weights of LoRA r=rank on q, k, v, o of every layer: r * (in + out) per projection."""
    d, q, kv = config.hidden_size, _query_width(config), _kv_width(config)
    return config.num_hidden_layers * rank * ((d + q) + 2 * (d + kv) + (q + d))


def training_flops(config, examples: list[dict[str, Any]], rank: int = RANK) -> float:
    """Model FLOPs of one forward + backward pass over `examples` with LoRA on a frozen base (module docstring)."""
    d, q, kv, layers = config.hidden_size, _query_width(config), _kv_width(config), config.num_hidden_layers
    n_linear = layers * (d * q + 2 * d * kv + q * d + 3 * d * config.intermediate_size)
    tokens = sum(len(e["input_ids"]) for e in examples)
    labelled = sum(label != IGNORE_INDEX for e in examples for label in e["labels"])
    causal_pairs = sum(len(e["input_ids"]) * (len(e["input_ids"]) + 1) // 2 for e in examples)
    return ((4 * n_linear + 6 * lora_params(config, rank)) * tokens + 4 * config.vocab_size * d * labelled
            + 12 * layers * q * causal_pairs)


def _query_width(config) -> int:
    return config.num_attention_heads * _head_dim(config)


def _kv_width(config) -> int:
    return (getattr(config, "num_key_value_heads", None) or config.num_attention_heads) * _head_dim(config)


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

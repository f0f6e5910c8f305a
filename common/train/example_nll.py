"""Per-example negative log-likelihood of held-out completions, for perplexity intervals.

evaluate.py records held-out perplexity as one number (common/train/steps.py mean_nll). An interval
over examples (common/judge/stats.py perplexity_ci) needs each example's summed NLL and token count:

    pairs = example_nlls(CompletionLoss(model), bench.encoded, tokenizer.pad_token_id, device, dtype)
    sum(n for n, _ in pairs) / sum(t for _, t in pairs)   # == mean_nll(...)[0], up to float rounding

Each example runs as its own row (batch of one): the loss is summed per call, so this is the exact
split of the batched sum at the price of batching (fine for tens to hundreds of examples).
"""
from typing import Any

import torch

from common.train.batching import collate
from common.train.steps import CompletionLoss, autocast


def example_nlls(loss_fn: CompletionLoss, examples: list[dict[str, Any]], pad_id: int, device: torch.device,
                 dtype: torch.dtype) -> list[tuple[float, int]]:
    """(summed NLL in nats, labelled tokens) per example, in the examples' order."""
    was_training = loss_fn.training
    loss_fn.eval()
    out = []
    with torch.no_grad():
        for i in range(len(examples)):
            batch = collate(examples, [[i]], pad_id, packing=False)
            with autocast(device, dtype):
                loss, n = loss_fn(**{k: v.to(device) for k, v in batch.items()})
            out.append((float(loss), int(n)))
    loss_fn.train(was_training)
    return out

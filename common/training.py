"""Training pieces train.py and evaluate.py share: the completion loss, held-out NLL, checkpoints,
the best-checkpoint / early-stopping rules, and the stop flag Ctrl-C and SIGTERM set.

`CompletionLoss` runs the decoder, then applies the LM head only at positions
that carry a label. With completion-only loss, roughly half the positions are
prompt tokens, and the LM head (vocab x hidden) is one of the largest matmuls
in a small model, so this saves real time and the (batch x seq x vocab) logits
tensor. It returns the summed loss and the token count, so callers can
normalise by tokens across micro-batches and processes.
"""
import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from peft.utils import load_peft_weights

from common.batching import collate
from common.prompts import IGNORE_INDEX


class CompletionLoss(torch.nn.Module):
    """Summed next-token cross-entropy over labelled positions, and how many there were."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        lm = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
        hidden = lm.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        logits = lm.get_output_embeddings()(hidden[:, :-1][keep]).float()
        cap = getattr(lm.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        loss = F.cross_entropy(logits, targets[keep], reduction="sum")
        return loss, keep.sum()


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16/fp16 autocast for half-precision runs: LoRA weights stay fp32, matmuls run in half."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


@torch.no_grad()
def mean_nll(loss_fn: CompletionLoss, examples: list[dict[str, Any]], batch_size: int, pad_id: int,
             device: torch.device, dtype: torch.dtype) -> tuple[float, int]:
    """Token-weighted mean negative log-likelihood of the completions, and the token count."""
    was_training = loss_fn.training
    loss_fn.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    total, tokens = 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = collate(examples, [[i] for i in order[start:start + batch_size]], pad_id, packing=False)
        with autocast(device, dtype):
            loss, n = loss_fn(**{k: v.to(device) for k, v in batch.items()})
        total += float(loss)
        tokens += int(n)
    loss_fn.train(was_training)
    return total / max(tokens, 1), tokens


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, model: PeftModel, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, progress: dict[str, Any]) -> None:
    """Adapter, optimizer, scheduler, RNG states and data position in one file, replaced atomically."""
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "state.pt.tmp"
    torch.save({"adapter": get_peft_model_state_dict(model), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": rng_state(), "progress": progress}, tmp)
    os.replace(tmp, path / "state.pt")  # a kill at any moment leaves the old or the new checkpoint, never neither


def load_checkpoint(path: Path, model: PeftModel, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """Restore everything `save_checkpoint` wrote; returns the saved progress."""
    state = torch.load(path / "state.pt", weights_only=False, map_location="cpu")
    set_peft_model_state_dict(model, state["adapter"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state["progress"]


def save_best(path: Path, model: PeftModel, tokenizer) -> None:
    """The best validation checkpoint: a complete adapter directory (weights, config and tokenizer)."""
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def load_best_adapter(model: PeftModel, path: Path) -> None:
    """Put the adapter weights saved by `save_best` back into the live model (for --load-best)."""
    set_peft_model_state_dict(model, load_peft_weights(str(path), device="cpu"))


def early_stopping_due(evals_since_best: int, patience: int, world: int = 1) -> bool:
    """Whether `patience` (> 0) validations in a row found no lower loss; rank 0 decides for all processes."""
    due = torch.tensor(int(patience > 0 and evals_since_best >= patience))
    if world > 1:
        dist.broadcast(due, 0)
    return bool(due.item())


class StopFlag:
    """First Ctrl-C/SIGTERM asks to stop at the next step boundary; a second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step", file=sys.stderr, flush=True)


def make_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the trainable (LoRA) parameters, or bitsandbytes' paged 8-bit AdamW."""
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "paged_adamw_8bit":
        import bitsandbytes as bnb
        return bnb.optim.PagedAdamW8bit(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

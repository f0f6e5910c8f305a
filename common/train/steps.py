"""Training pieces train.py and evaluate.py share: the completion loss, held-out NLL, checkpoints,
the best-checkpoint / early-stopping rules, and AdamW.

`CompletionLoss` runs the decoder, then applies the LM head only at positions
that carry a label. With completion-only loss, roughly half the positions are
prompt tokens, and the LM head (vocab x hidden) is one of the largest matmuls
in a small model, so this saves real time and the (batch x seq x vocab) logits
tensor. It returns the summed loss and the token count, so callers can
normalise by tokens across micro-batches and processes.

With `head_chunk=N` (and a frozen, bias-free, uncapped LM head, the LoRA case)
the head and the cross-entropy run fused, N labelled positions at a time
(`fused_head_cross_entropy`): each chunk's gradient with respect to the hidden
states is computed in the forward pass, so no (labelled x vocab) logits,
log-softmax or their gradients are kept for backward. Same loss and gradients
as the plain path (tests/test_bench.py), less peak memory.

`adamw` builds torch's AdamW with `fused=True`: one kernel over all LoRA
tensors instead of a loop of small ops per tensor (torch's CPU default).

With `--lora-plus-ratio R` (LoRA+, Hayou et al. 2024) the optimizer has two
parameter groups: the lora_B matrices at lr x R, everything else trainable (lora_A,
DoRA magnitudes) at lr. The schedule multiplies each group's own rate, so the ratio
holds at every step.
"""
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from peft.utils import load_peft_weights
from tqdm import tqdm

from common.errors import UserError
from common.model.adapters import publish_base_model
from common.model.lora import live_adapter_weights, save_adapter
from common.train.batching import collate
from common.text.prompts import IGNORE_INDEX

if TYPE_CHECKING:
    from common.config import TrainConfig


class CompletionLoss(torch.nn.Module):
    """Summed next-token cross-entropy over labelled positions, and how many there were.

    head_chunk: labelled positions per fused LM-head + cross-entropy chunk (None: the plain path, logits of all
    labelled positions at once). Used only where the head is a frozen bias-free nn.Linear without logit
    softcapping; anything else takes the plain path.
    """

    def __init__(self, model: torch.nn.Module, head_chunk: int | None = None):
        super().__init__()
        self.model = model
        self.head_chunk = head_chunk

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        lm = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
        hidden = lm.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        head = lm.get_output_embeddings()
        cap = getattr(lm.config, "final_logit_softcapping", None)
        if self.head_chunk and _fusable_head(head) and not cap:
            loss = fused_head_cross_entropy(hidden[:, :-1][keep], head.weight, targets[keep], self.head_chunk)
            return loss, keep.sum()
        logits = head(hidden[:, :-1][keep]).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        loss = F.cross_entropy(logits, targets[keep], reduction="sum")
        return loss, keep.sum()


def _fusable_head(head: torch.nn.Module) -> bool:
    return type(head) is torch.nn.Linear and head.bias is None and not head.weight.requires_grad


def fused_head_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                             chunk: int) -> torch.Tensor:
    """sum_i [logsumexp(W h_i) - (W h_i)[t_i]] over rows i of `hidden` (N x d), frozen head W (V x d), in
    chunks of `chunk` rows. The matmuls run in hidden's dtype, softmax and loss in fp32, as the plain path
    under autocast. When a gradient is wanted, d loss / d h_i = W^T (softmax(W h_i) - onehot(t_i)) is
    computed chunk by chunk in the forward pass, so backward only scales it."""
    if torch.is_grad_enabled() and hidden.requires_grad:
        return _FusedHeadCrossEntropy.apply(hidden, weight, targets, chunk)
    return _head_cross_entropy_chunks(hidden, weight, targets, chunk, want_grad=False)[0]


def _head_cross_entropy_chunks(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                               want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    w = weight.to(hidden.dtype)
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad = torch.empty_like(hidden) if want_grad else None
    with torch.autocast(hidden.device.type, enabled=False):
        for start in range(0, hidden.shape[0], chunk):
            h, t = hidden[start:start + chunk], targets[start:start + chunk]
            logits = (h @ w.T).float()
            lse = torch.logsumexp(logits, dim=-1)
            loss += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if want_grad:
                probs = torch.exp_(logits.sub_(lse[:, None]))  # softmax, in place of the logits
                probs[torch.arange(len(t), device=t.device), t] -= 1
                grad[start:start + chunk] = probs.to(hidden.dtype) @ w
    return loss, grad


class _FusedHeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        loss, grad = _head_cross_entropy_chunks(hidden, weight, targets, chunk, want_grad=True)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        return grad * grad_loss.to(grad.dtype), None, None, None


def adamw(params: list[torch.nn.Parameter] | list[dict[str, Any]], lr: float,
          weight_decay: float) -> torch.optim.AdamW:
    """torch AdamW, fused (one kernel for all tensors) where torch supports it for these parameters:
    floating-point tensors on CPU or CUDA; otherwise torch's default implementation. `params`: parameters, or
    parameter groups (dicts with "params" and their own "lr")."""
    tensors = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) else params
    fusable = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16, torch.float16)
                  for p in tensors)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fusable or None)


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16/fp16 autocast for half-precision runs: LoRA weights stay fp32, matmuls run in half."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


@torch.no_grad()
def mean_nll(loss_fn: CompletionLoss, examples: list[dict[str, Any]], batch_size: int, pad_id: int,
             device: torch.device, dtype: torch.dtype, progress: bool = False) -> tuple[float, int]:
    """Token-weighted mean negative log-likelihood of the completions, and the token count.
    progress: a bar over the batches (a validation of 100 examples takes minutes on a CPU)."""
    was_training = loss_fn.training
    loss_fn.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    total, tokens = 0.0, 0
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="validation", unit="batch", disable=not progress, leave=False, dynamic_ncols=True):
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
    """The best validation checkpoint: a complete adapter directory (weights, config and tokenizer) that loads
    onto the original base (PiSSA/OLoRA converted, common/model/lora.py save_adapter)."""
    save_adapter(model, path)
    publish_base_model(path, model.peft_config["default"].base_model_name_or_path)
    tokenizer.save_pretrained(path)


def load_best_adapter(model: PeftModel, path: Path) -> None:
    """Put the adapter weights saved by `save_best` back into the live model (for --load-best)."""
    set_peft_model_state_dict(model, live_adapter_weights(model, load_peft_weights(str(path), device="cpu")))


def early_stopping_due(evals_since_best: int, patience: int, world: int = 1) -> bool:
    """Whether `patience` (> 0) validations in a row found no lower loss; rank 0 decides for all processes."""
    due = torch.tensor(int(patience > 0 and evals_since_best >= patience))
    if world > 1:
        dist.broadcast(due, 0)
    return bool(due.item())


def lora_plus_groups(model: torch.nn.Module, lr: float, ratio: float) -> list[dict[str, Any]]:
    """LoRA+ parameter groups: the trainable lora_B matrices at lr x ratio, the other trainable ones at lr."""
    fast = [p for n, p in model.named_parameters() if p.requires_grad and ".lora_B." in n]
    slow = [p for n, p in model.named_parameters() if p.requires_grad and ".lora_B." not in n]
    if not fast:
        raise UserError("--lora-plus-ratio: the model has no trainable lora_B matrices to speed up")
    return [{"params": slow, "lr": lr}, {"params": fast, "lr": lr * ratio}]


def make_optimizer(model: torch.nn.Module, cfg: "TrainConfig") -> torch.optim.Optimizer:
    """AdamW (fused where torch can) over the trainable parameters, or bitsandbytes' paged 8-bit AdamW; with
    --lora-plus-ratio, in two groups (the module docstring)."""
    params: list[Any] = [p for p in model.parameters() if p.requires_grad]
    if cfg.lora_plus_ratio:
        params = lora_plus_groups(model, cfg.lr, cfg.lora_plus_ratio)
    if cfg.optim == "paged_adamw_8bit":
        import bitsandbytes as bnb
        return bnb.optim.PagedAdamW8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

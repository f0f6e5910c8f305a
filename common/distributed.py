"""Data-parallel pieces of train.py (torchrun / accelerate launch): DDP over the adapter only, drift check.

Only LoRA weights train; the frozen (possibly 4-bit) base is identical on every process by
construction, so DDP is told to ignore it, and the check at the end measures how far the
adapters on the processes drifted apart (0.0 when DDP kept them in sync).
"""
import torch
import torch.distributed as dist


def wrap_ddp(loss_fn: torch.nn.Module) -> torch.nn.Module:
    """DDP over the LoRA weights only: frozen (possibly 4-bit) base weights are identical by construction."""
    frozen = [name for name, p in loss_fn.named_parameters() if not p.requires_grad]
    frozen += [name for name, _ in loss_fn.named_buffers()]
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(loss_fn, frozen)
    return torch.nn.parallel.DistributedDataParallel(loss_fn)


def ddp_weight_drift(model: torch.nn.Module) -> float:
    """Largest difference between any rank's adapter weights and rank 0's: 0.0 when DDP kept them in sync."""
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters() if p.requires_grad]).cpu()
    reference = flat.clone()
    dist.broadcast(reference, 0)
    drift = (flat - reference).abs().max()
    dist.all_reduce(drift, op=dist.ReduceOp.MAX)
    return float(drift)

"""Process-level pieces of train.py: DDP over the adapter only (torchrun / accelerate launch), the drift
check, and the graceful stop that Ctrl-C / SIGTERM ask for.

Only LoRA weights train; the frozen (possibly 4-bit) base is identical on every process by
construction, so DDP is told to ignore it, and the check at the end measures how far the
adapters on the processes drifted apart (0.0 when DDP kept them in sync).
"""
import os
import signal
import sys

import torch
import torch.distributed as dist


def init_processes() -> tuple[int, int, torch.device]:
    """(world size, rank, device) of this process; joins the process group torchrun/accelerate set up."""
    from common.env import default_device
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    device = default_device()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return world, rank, device


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


def stop_requested(stop: StopFlag, world: int) -> bool:
    """Whether any process was asked to stop (all processes stop at the same step)."""
    stopping = stop.requested
    if world > 1:
        flag = torch.tensor(int(stopping))
        dist.all_reduce(flag)
        stopping = bool(flag.item())
    return stopping

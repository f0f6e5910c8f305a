"""--lora-kernel fused: PEFT's LoRA linear layers trained through one autograd function of our own.

    fused = use_fused_lora(model, seed)      # None where no layer qualifies (4/8-bit bases, DoRA, GPT-2 Conv1D)
    fused.at(step, micro)                    # before each micro-batch's forward (common/train/loop.py)
    fused.remove()                           # PEFT's forward again (bench/step_variants.py switches per step)

y = base(x) + s * B(A(drop(x))) runs as one `torch.autograd.Function` that saves x (which the q/k/v projections
share, so one tensor for three layers) and the small r-wide A(drop(x)), never the dropout mask nor the dropped
input. Backward regenerates the mask from a counter-based generator keyed by (seed, optimizer step, layer,
micro-batch): nothing to checkpoint, so a run resumed at step k draws exactly the masks an uninterrupted run
draws, and a gradient-checkpointing recompute draws the forward's mask again.

The mask generator is murmur3's 32-bit finaliser over arange(numel / 2) in int32 torch ops, each 32-bit hash
giving two 16-bit uniforms compared with round(p * 65536) (keep rate 1 - p to within 2^-17). int32, not
splitmix64 on int64: AVX2 has no 64-bit vector multiply, and an int64 multiply measured 5x an int32 one here.
The key picks the multiplier and the offset of the counter (idx * M + a), so two keys' inputs are no shifted
copies of each other. One 540 x 576 mask, 1 thread, fp32 machine (best of 21): bernoulli_ 1.94 ms, this 0.73 ms.
The whole step is nonetheless 0.91x PEFT's in fp32 on 2 AVX2 cores (the mask is drawn twice and the low-rank
path runs outside PEFT's kernels; bench/results/step_variants.json), so it is opt-in: it saves memory, not time, there.

Other layers (bitsandbytes 4/8-bit, DoRA and other variants, lora_bias, fan_in_fan_out, a trainable base) stay on
PEFT's path; eval mode, merged or disabled adapters and mixed-adapter batches too. The weights are PEFT's own
parameters, so saving, merging and evaluation are unchanged. The mask stream differs from PEFT's (torch's
generator), so a fused run is not bit-comparable with a peft run of the same seed.
"""
import types
from typing import Any

import torch
import torch.nn.functional as F

_M64 = (1 << 64) - 1
_FMIX1, _FMIX2 = 0x85EBCA6B - (1 << 32), 0xC2B2AE35 - (1 << 32)   # murmur3 fmix32, as signed int32
# The counter base per device, the longest one asked for so far: masks of shorter inputs take a slice of it
# (sequence lengths vary per batch; one tensor per length would pile up)
_ARANGE: dict[str, torch.Tensor] = {}


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def mask_key(seed: int, step: int, layer: int, micro: int) -> int:
    """The 64-bit key of one layer's mask in one micro-batch of one optimizer step."""
    key = _splitmix64(seed & _M64)
    for part in (step, layer, micro):
        key = _splitmix64(key ^ (part & _M64))
    return key


def _signed32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _shift_right(h: torch.Tensor, k: int) -> torch.Tensor:
    """Logical shift of int32 values (torch's >> is arithmetic: mask the sign bits it copies in)."""
    return h.bitwise_right_shift(k).bitwise_and_((1 << (32 - k)) - 1)


def keep_mask(shape: torch.Size | tuple[int, ...], key: int, p: float, device: torch.device) -> torch.Tensor:
    """Bool mask of `shape`, True with probability 1 - p, a pure function of (key, p, shape)."""
    n = 1
    for size in shape:
        n *= size
    half = (n + 1) // 2
    if half >= 1 << 31:
        raise ValueError(f"a dropout mask of {n} elements is beyond the int32 counter")
    base = _ARANGE.get(str(device))
    if base is None or len(base) < half:
        base = _ARANGE[str(device)] = torch.arange(half, dtype=torch.int32, device=device)
    h = base[:half].mul(_signed32(key | 1)).add_(_signed32(key >> 32))
    h.bitwise_xor_(_shift_right(h, 16)).mul_(_FMIX1)
    h.bitwise_xor_(_shift_right(h, 13)).mul_(_FMIX2)
    h.bitwise_xor_(_shift_right(h, 16))
    threshold = round(p * 65536)
    keep = torch.empty(half, 2, dtype=torch.bool, device=device)
    torch.ge(h.bitwise_and(0xFFFF), threshold, out=keep[:, 0])
    torch.ge(_shift_right(h, 16), threshold, out=keep[:, 1])
    return keep.view(-1)[:n].view(shape)


def _dropped(x: torch.Tensor, key: int, p: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x with the key's mask applied and kept elements scaled by 1/(1-p) as F.dropout does, the mask)."""
    if p == 0:
        return x, None
    keep = keep_mask(x.shape, key, p, x.device)
    return x.mul(keep).mul_(1 / (1 - p)), keep


class _FusedLoRALinear(torch.autograd.Function):
    """base(x) + scale * B(A(drop(x))) for a frozen nn.Linear base; gradients for x, A and B."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scale: float, p: float, key: int,
                dtypes: tuple[torch.dtype, torch.dtype]):
        base_dtype, lora_dtype = dtypes
        with torch.autocast(x.device.type, enabled=False):
            y = F.linear(x.to(base_dtype), weight.to(base_dtype), None if bias is None else bias.to(base_dtype))
            dropped, _ = _dropped(x.to(lora_dtype), key, p)
            h = F.linear(dropped, lora_a.to(lora_dtype))
            out = (y + F.linear(h, lora_b.to(lora_dtype)).mul_(scale)).to(y.dtype)
        ctx.save_for_backward(x, weight, lora_a, lora_b, h)
        ctx.scale, ctx.p, ctx.key, ctx.dtypes = scale, p, key, dtypes
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, lora_a, lora_b, h = ctx.saved_tensors
        base_dtype, lora_dtype = ctx.dtypes
        with torch.autocast(x.device.type, enabled=False):
            g = grad.to(lora_dtype).reshape(-1, grad.shape[-1])
            grad_b = (g.T @ h.reshape(-1, h.shape[-1])).mul_(ctx.scale)
            gh = (g @ lora_b.to(lora_dtype)).mul_(ctx.scale)                 # d out / d A(drop(x)), tokens x r
            dropped, keep = _dropped(x.to(lora_dtype), ctx.key, ctx.p)       # the forward's mask, drawn again
            grad_a = gh.T @ dropped.reshape(-1, x.shape[-1])
            grad_x = None
            if ctx.needs_input_grad[0]:
                grad_x = grad.to(base_dtype) @ weight.to(base_dtype)
                lora_grad = (gh @ lora_a.to(lora_dtype)).view(x.shape)
                if keep is not None:
                    lora_grad.mul_(keep).mul_(1 / (1 - ctx.p))
                grad_x = grad_x.to(x.dtype).add_(lora_grad.to(x.dtype))
        return grad_x, None, None, grad_a.to(lora_a.dtype), grad_b.to(lora_b.dtype), None, None, None, None


def fusable(module: torch.nn.Module, adapter: str = "default") -> bool:
    """Whether `module` is a PEFT plain-LoRA linear layer on a frozen 16/32-bit nn.Linear."""
    from peft.tuners.lora.layer import Linear as LoraLinear
    if type(module) is not LoraLinear or adapter not in module.lora_A or adapter in module.lora_variant:
        return False
    base = module.get_base_layer()
    dropout = module.lora_dropout[adapter]
    return (type(base) is torch.nn.Linear and not module.fan_in_fan_out and not module.lora_bias.get(adapter)
            and base.weight.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and not base.weight.requires_grad and (base.bias is None or not base.bias.requires_grad)
            and type(dropout) in (torch.nn.Dropout, torch.nn.Identity))


class FusedLoRA:
    """The patched layers of one model and the (step, micro-batch) position their masks are keyed by."""

    def __init__(self, seed: int, layers: list[torch.nn.Module]):
        self.seed = seed
        self.layers = layers
        self.step: int | None = None
        self.micro = 0

    def at(self, step: int, micro: int) -> None:
        """Key the masks of the next forward (and its backward) to optimizer step `step`, micro-batch `micro`."""
        self.step, self.micro = step, micro

    def key(self, layer: int) -> int:
        if self.step is None:
            raise RuntimeError("fused LoRA: call FusedLoRA.at(step, micro) before a training forward")
        return mask_key(self.seed, self.step, layer, self.micro)

    def remove(self) -> None:
        """PEFT's own forward again on every patched layer."""
        for module in self.layers:
            del module.forward
        self.layers = []


def _lora_dtypes(x: torch.Tensor, base: torch.nn.Linear, lora_a: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
    """The dtypes PEFT's path computes the base and the LoRA branch in: autocast's, else the weights'."""
    if torch.is_autocast_enabled(x.device.type):
        half = torch.get_autocast_dtype(x.device.type)
        return half, half
    return base.weight.dtype, lora_a.dtype


def _fused_forward(fused: FusedLoRA, index: int, adapter: str):
    """A forward for one PEFT lora.Linear: the fused function while training plain LoRA, PEFT's own otherwise."""
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if (not self.training or args or kwargs or self.disable_adapters or self.merged
                or list(self.active_adapters) != [adapter]):
            return type(self).forward(self, x, *args, **kwargs)
        base, lora_a = self.get_base_layer(), self.lora_A[adapter].weight
        dropout = self.lora_dropout[adapter]
        p = dropout.p if isinstance(dropout, torch.nn.Dropout) else 0.0
        return _FusedLoRALinear.apply(x, base.weight, base.bias, lora_a, self.lora_B[adapter].weight,
                                      float(self.scaling[adapter]), p, fused.key(index),
                                      _lora_dtypes(x, base, lora_a))
    return forward


def use_fused_lora(model: torch.nn.Module, seed: int, adapter: str = "default") -> FusedLoRA | None:
    """Patch the forward of every fusable LoRA layer of `model`; None (nothing patched) when none qualifies.

    Layers are numbered in module order over all LoRA layers, so a layer's key does not depend on which others
    qualified."""
    from peft.tuners.lora.layer import LoraLayer
    fused = FusedLoRA(seed, [])
    lora_layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    for index, module in enumerate(lora_layers):
        if fusable(module, adapter):
            module.forward = types.MethodType(_fused_forward(fused, index, adapter), module)
            fused.layers.append(module)
    return fused if fused.layers else None

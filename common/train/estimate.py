"""Predict a LoRA/QLoRA training run's peak memory and step time from the model config alone.

    est = estimate_run(cfg, torch.device("cpu"))       # TrainConfig; tokenizer + data, never the weights
    print(format_estimate(est))

No weight is loaded. The architecture comes from the model's config.json: the model is
instantiated on the meta device (no storage) to list its linear layers exactly, and the
LoRA targets are resolved on it with the same code train.py uses (common/model/lora.py). The
batches are the run's own: the data is tokenized as train.py does and cut into the same
micro-batches (common/train/batching.py, same seed), so the prediction is for the largest
micro-batch the run will really see, not for max_seq_len.

Memory (bytes, reported in MiB = 2^20 bytes; c = compute dtype bytes, 2 for bf16/fp16, 4 for fp32; per micro-batch
T = rows x padded width positions, C = labelled positions, V = vocabulary):

    weights   = sum over quantized linears (every decoder linear; the LM head stays dense) of
                  16/32bit  c * n                       int8  n + 4 * out
                  NF4 + double quant: n/2 + n/64 + 4*ceil(n/16384) + 1092  (0.516 B/param, bench/RESULTS.md s.5)
                + c * (every other parameter: embeddings, norms, an untied head)
    lora      = 16 * N_lora      fp32 weights, gradients, AdamW exp_avg and exp_avg_sq; N_lora = sum r*(in+out)
                                 (+ out per target with --dora: its magnitude vector)
                + with --dora, one target's transient W + sBA: 4*in*(in+out) + 3*c*in*out for the largest
                  (PEFT forms BA through an fp32 identity, casts it, adds it to W and norms the sum, per forward)
    acts      = T * (layers * a_layer + a_outside)                       without checkpointing
              = T * (layers * h * c + a_layer + a_outside)               with: layer inputs + one recomputed layer
                a_layer, a_outside: bytes autograd saves per token, MEASURED on a two-layer copy of the
                architecture built from the config with random weights (saved_tensors_hooks, two lengths,
                the difference), same dtype, modules, rank, dropout and DoRA (which saves the base and LoRA
                outputs again, and with dropout the dropped input of a recomputed base matmul). int8 layers
                keep their inputs outside autograd (bitsandbytes ctx.tensors), added as (2h + q + i) * c per
                layer.
    logits    = 12 * C * V       fp32 log-softmax output, its gradient and the logits' gradient,
                                 at labelled positions only (CompletionLoss)
    train     = baseline + weights + mapped + lora + K_act(n) * acts + K_LOGITS * logits
                K_act(n) = K_ACT + K_ACT_GROWTH * ln(n / 3) for a run of n >= 3 optimizer steps on a CPU
                with glibc's default allocator (freed activations pile up on its heap over a run), K_ACT
                with --mmap-threshold-kb; logits tensors are large enough to be mmapped: no growth
    load      = CPU only. When the checkpoint's dtype is the compute dtype, the weights are the file's own
                pages (mmap, no copy): load = baseline + weights + mapped, where mapped = the checkpoint's
                dense linears for 4bit/8bit (quantized out of the file, whose pages stay mapped because the
                unquantized tensors still use it), else 0. Otherwise the weights are converted copies:
                load = baseline + checkpoint + weights (+ c * N_linear staged for 4bit/8bit), mapped = 0.
    peak      = max(train, load)
                baseline: CPU, the resident size of python + torch + transformers + peft + tokenizer + data
                (BASELINE_MB, measured); CUDA, 0 (max_memory_allocated counts tensors only).
                K_ACT: what the allocator and the backward's transient tensors add on top of what is saved
                (fitted on CPU, bench/estimate_check.py; 1.0 assumed on CUDA, not yet measured there).

Time per optimizer step = model FLOPs / (matmul peak * EFFICIENCY) + dequantization, with the FLOPs of
bench/train_compare.py counted on the padded positions the run computes (frozen base: no weight gradient):

    4 * N_linear * T  +  6 * N_lora * T  +  4 * V * d * C  +  12 * layers * h_q * sum_rows w(w+1)/2
    + with checkpointing, one more forward: 2 * N_linear * T + 2 * N_lora * T + 4 * layers * h_q * pairs
    + with --dora, per forward: 2 * r * sum in*(in+out) over targets (BA through an identity); with dropout > 0
      the targets' base matmul runs again on the dropped input: 4 * N_target * T (6 with checkpointing)
    dequantization (4bit/8bit): DEQUANT_NS[quant, dtype] * N_quantized * passes (2, or 3 with checkpointing)

--rslora and --lora-plus-ratio change neither memory nor time; --init pissa/olora cost one SVD/QR per target
while loading (not counted) and nothing per step.

The matmul peak is measured per machine, device and dtype (best of a few 2048^2 matmuls on CPU, 4096^2
on CUDA; the CPU size is the one the MFU in EFFICIENCY was measured against) and cached in
common.paths.cache_dir()/matmul_peak.json with the load it was measured at; a quieter machine measures
again and keeps the higher value. EFFICIENCY and DEQUANT_NS come from idle-machine benchmarks (see
the constants); on a machine shared with other jobs a step takes as long as the load allows, which no
config-based model predicts: `--estimate --probe` runs a few real steps here and rescales memory and
time by what they measured.
"""
import dataclasses
import functools
import json
import math
import os
import time
from typing import Any

import torch

from common.config import TrainConfig
from common.errors import UserError, first_line

MIB = 2**20   # every *_mb figure here and in the tracker is MiB (2^20 bytes), and says so where printed
# Calibration constants (bench/RESULTS.md section 8 states how each was obtained and the errors it gives).
BASELINE_MB = 530.0          # CPU RSS before any weight: imports, tokenizer, 400 encoded examples (measured)
K_ACT = 1.40                 # CPU: peak activations / bytes autograd saves, over a 3-step run; least squares
K_LOGITS = 1.267             # CPU: the same for the logits, whatever the run length (tensors > 32 MiB: mmapped)
# CPU, glibc's default allocator: the activations' factor grows with the run's optimizer steps n,
# K_ACT + K_ACT_GROWTH * ln(n / 3), as freed activations stay on a fragmenting heap (bench/RESULTS.md s.9).
# K_LOGITS and K_ACT_GROWTH: least squares over the study's six seed-0 100-step runs (SmolLM2 and Gemma,
# r4/r16/r64); its seeds 1-2 and every short run are the held-out check (bench/RESULTS.md s.8).
K_ACT_GROWTH = 0.332
K_ACT_CUDA = 1.0             # CUDA: assumed, not measured on a GPU yet
# Model FLOPs / matmul peak reached by a step: train.py's MFU in bench/RESULTS.md s.1 against the peak of
# 2048^2 matmuls, on idle machines: fp32 58.6% (AVX2 CPU), bf16 38.3% (AVX512-BF16 CPU); fp16 (older GPUs)
# is not measured and borrows bf16's.
EFFICIENCY = {"float32": 0.586, "bfloat16": 0.383, "float16": 0.383}
# ns per quantized weight per pass (forward, backward, recompute), by compute dtype, from train_quant.py on the
# 135M model (106M quantized weights): fp32 on an AVX2 CPU (bench/RESULTS.md s.7: 4bit 0.794x, 8bit 0.715x the
# 16bit tokens/s, ~3.2 s steps); bf16 on an AVX512-BF16 CPU (s.7: 4bit 1.03x, 8bit 0.926x, ~1.9 s steps, so
# NF4 dequantization to bf16 costs nothing measurable there).
DEQUANT_NS = {("4bit", "float32"): 3.9, ("8bit", "float32"): 6.0, ("4bit", "bfloat16"): 0.0,
              ("8bit", "bfloat16"): 0.7, ("4bit", "float16"): 0.0, ("8bit", "float16"): 0.7}
MATMUL_N = {False: 2048, True: 4096}  # CPU, CUDA: square matmul size of the peak measurement
NF4_LAYER_CONSTANTS = 4 + 16 * 4 + 256 * 4  # fp32 offset, NF4 code, nested dynamic code, per layer


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """What the estimate needs from a config: its linear layers and the rest, counted exactly."""
    layers: int
    hidden: int
    query_width: int             # heads x head_dim
    intermediate: int
    vocab: int
    linears: tuple[tuple[str, int, int], ...]   # decoder linears (name, in, out); the LM head excluded
    other_params: int            # embeddings, norms, and the LM head when it is not tied
    targets: tuple[str, ...] = ()  # LoRA target names resolved for `modules`

    @property
    def linear_params(self) -> int:
        return sum(i * o for _, i, o in self.linears)

    def lora_params(self, rank: int, dora: bool = False) -> int:
        """Trainable parameters: A and B of each target, and DoRA's magnitude per output feature."""
        return sum(rank * (i + o) + (o if dora else 0) for _, i, o in self.target_linears)

    @property
    def target_linears(self) -> tuple[tuple[str, int, int], ...]:
        return tuple(lin for lin in self.linears if _is_target(lin[0], self.targets))


@dataclasses.dataclass
class Batch:
    rows: int
    width: int                   # padded length of the micro-batch
    real: int                    # non-padding tokens
    labelled: int                # positions that carry loss

    @property
    def positions(self) -> int:
        return self.rows * self.width


@dataclasses.dataclass
class Estimate:
    """A run's predicted peak memory (MiB) and time per optimizer step (s), with its parts."""
    device: str
    dtype: str
    quant: str
    params: int
    lora_params: int
    baseline_mb: float
    weights_mb: float
    mapped_mb: float             # CPU: checkpoint pages that stay resident beside quantized weights
    lora_mb: float
    activations_mb: float        # saved activations of the largest micro-batch (before K_ACT)
    load_mb: float               # peak while loading the weights
    logits_mb: float
    k_act: float                 # allocator/backward factor on the activations (grows with the run's steps on CPU)
    k_logits: float
    peak_mb: float
    step_s: float                # mean over the run's optimizer steps
    tokens_per_s: float          # real tokens per second
    step_flops: float            # mean model FLOPs per optimizer step
    peak_gflops: float
    steps: int
    largest: Batch
    step_seconds: list[float] = dataclasses.field(default_factory=list, repr=False)   # per optimizer step
    scale_memory: float = 1.0    # set by a probe: measured / predicted
    scale_time: float = 1.0

    def scores(self) -> dict[str, float]:
        """What train.py records next to the measured values."""
        return {"predicted_peak_mb": self.peak_mb, "predicted_step_s": self.step_s,
                "predicted_tokens_per_s": self.tokens_per_s}


# ---------------------------------------------------------------------------- the architecture

def load_config(model: str):
    """The transformers config of `model` (embedded name, directory or hub id); no weights are read."""
    from transformers import AutoConfig

    from common.model.resolve import model_choices, resolve_model
    try:
        return AutoConfig.from_pretrained(resolve_model(model))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the config of {model!r} ({first_line(e)}); {model_choices()}") from e


def model_shape(config: Any, modules: str) -> ModelShape:
    """Linear layers and other parameters of `config`, from a weightless (meta device) instance."""
    from transformers import AutoModelForCausalLM

    from common.model.lora import linear_module_names, resolve_target_modules
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    found = dict(model.named_modules())
    linears = []
    for name in linear_module_names(model):
        weight = found[name].weight
        out, inp = weight.shape if isinstance(found[name], torch.nn.Linear) else weight.shape[::-1]  # Conv1D
        linears.append((name, int(inp), int(out)))
    total = sum(p.numel() for p in model.parameters())  # tied weights are one parameter, counted once
    text = getattr(config, "text_config", config)
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return ModelShape(layers=text.num_hidden_layers, hidden=text.hidden_size, query_width=heads * head_dim,
                      intermediate=getattr(text, "intermediate_size", 4 * text.hidden_size), vocab=text.vocab_size,
                      linears=tuple(linears), other_params=total - sum(i * o for _, i, o in linears),
                      targets=tuple(resolve_target_modules(model, modules)))


def _is_target(name: str, targets: tuple[str, ...]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def checkpoint_info(model: str, config: Any) -> tuple[int, torch.dtype]:
    """Size of the weight files and the dtype holding most of their bytes: read from the safetensors
    headers of a local directory (no tensor is read), else parameters x the config's dtype."""
    from pathlib import Path

    from common.model.resolve import resolve_model
    path = Path(resolve_model(model))
    files = [f for f in path.glob("*") if f.suffix in (".safetensors", ".bin")] if path.is_dir() else []
    config_dtype = getattr(torch, str(getattr(config, "dtype", None) or "float32").replace("torch.", ""),
                           torch.float32)
    if files:
        by_dtype: dict[str, int] = {}
        for f in files:
            if f.suffix == ".safetensors":
                for name, count in _safetensors_dtype_bytes(f).items():
                    by_dtype[name] = by_dtype.get(name, 0) + count
        dtype = SAFETENSORS_DTYPES.get(max(by_dtype, key=by_dtype.get), config_dtype) if by_dtype else config_dtype
        return sum(f.stat().st_size for f in files), dtype
    with torch.device("meta"):
        from transformers import AutoModelForCausalLM
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    return params * torch.finfo(config_dtype).bits // 8, config_dtype


SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def _safetensors_dtype_bytes(path) -> dict[str, int]:
    """Bytes per dtype in a safetensors file, from its JSON header (8-byte length, then the header)."""
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    out: dict[str, int] = {}
    for name, info in header.items():
        if name != "__metadata__":
            start, end = info["data_offsets"]
            out[info["dtype"]] = out.get(info["dtype"], 0) + end - start
    return out


def weight_bytes(shape: ModelShape, quant: str, dtype_bytes: int) -> int:
    """Bytes of the loaded base model (formulas in the module docstring; exact for bitsandbytes 0.50)."""
    dense = dtype_bytes * shape.other_params
    if quant == "4bit":
        return dense + sum(n // 2 + n // 64 + 4 * math.ceil(n / 64 / 256) + NF4_LAYER_CONSTANTS
                           for n in (i * o for _, i, o in shape.linears))
    if quant == "8bit":
        return dense + sum(i * o + 4 * o for _, i, o in shape.linears)
    return dense + dtype_bytes * shape.linear_params


# ---------------------------------------------------------------------------- activations

@functools.lru_cache(maxsize=64)
def saved_bytes_per_token(config_json: str, modules: str, rank: int, dropout: float,
                          dtype_name: str, dora: bool = False) -> tuple[float, float]:
    """(bytes autograd saves per token in one decoder layer, per token besides `layers` x that).

    Measured on a two-layer copy of the architecture with random weights and a small vocabulary
    (the LM head is accounted for separately): the bytes of distinct non-parameter storages the
    saved-tensor hooks see during a forward, at two lengths, differenced so constants cancel. The
    per-layer figure is the second layer's: the first saves less, its input needing no gradient, and
    that difference goes into the second figure, so n layers save n * first + second exactly.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from common.model.lora import attach_lora
    from common.train.steps import autocast
    data = json.loads(config_json)
    for key in ("layer_types",):
        if isinstance(data.get(key), list):
            data[key] = data[key][:2]
    data.update(num_hidden_layers=2, vocab_size=256, tie_word_embeddings=False)
    data.pop("quantization_config", None)
    config = AutoConfig.for_model(**data)
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    model = attach_lora(AutoModelForCausalLM.from_config(config, dtype=dtype), rank, None, dropout, modules,
                        dora=dora)
    model.train()
    decoder = model.get_base_model().base_model
    layer = decoder.layers[1]
    owned = {p.untyped_storage().data_ptr() for p in model.parameters()}
    owned |= {b.untyped_storage().data_ptr() for b in model.buffers()}

    def measure(length: int) -> tuple[int, int]:
        saved: dict[int, tuple[bool, int]] = {}   # storage -> (first saved inside the layer, bytes)
        inside = [False]

        def pack(t: torch.Tensor) -> torch.Tensor:
            key = t.untyped_storage().data_ptr()
            # A storage counts once, where it is first saved: rotary cos/sin are made once, used by every layer.
            if key not in owned and key not in saved:
                saved[key] = (inside[0], t.untyped_storage().nbytes())
            return t
        hooks = [layer.register_forward_pre_hook(lambda *_: inside.__setitem__(0, True)),
                 layer.register_forward_hook(lambda *_: inside.__setitem__(0, False))]
        ids = torch.randint(0, 256, (1, length))
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(torch.device("cpu"), dtype):
                decoder(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=torch.arange(length)[None],
                        use_cache=False)
        finally:
            for h in hooks:
                h.remove()
        return (sum(n for first, n in saved.values() if first), sum(n for first, n in saved.values() if not first))

    (in_a, out_a), (in_b, out_b) = measure(32), measure(64)
    per_layer = (in_b - in_a) / 32
    return per_layer, (out_b - out_a) / 32 - per_layer


def activation_bytes(shape: ModelShape, per_layer: float, outside: float, batch: Batch, quant: str,
                     dtype_bytes: int, checkpointing: bool) -> float:
    """Bytes saved for backward by one micro-batch (module docstring)."""
    if quant == "8bit":  # bitsandbytes int8 keeps each quantized linear's input in ctx, unseen by the hooks
        per_layer += (2 * shape.hidden + shape.query_width + shape.intermediate) * dtype_bytes
    if checkpointing:
        return batch.positions * (shape.layers * shape.hidden * dtype_bytes + per_layer + outside)
    return batch.positions * (shape.layers * per_layer + outside)


# ---------------------------------------------------------------------------- time

def step_flops(shape: ModelShape, rank: int, batch: Batch, checkpointing: bool, dora: bool = False,
               dropout: float = 0.0) -> float:
    """Model FLOPs of one forward + backward over a micro-batch (module docstring)."""
    n_lin, n_lora, t = shape.linear_params, shape.lora_params(rank), batch.positions
    pairs = batch.rows * batch.width * (batch.width + 1) / 2
    attention = 4 * shape.layers * shape.query_width * pairs
    flops = (4 * n_lin + 6 * n_lora) * t + 4 * shape.vocab * shape.hidden * batch.labelled + 3 * attention
    if checkpointing:
        flops += (2 * n_lin + 2 * n_lora) * t + attention
    return flops + (dora_flops(shape, rank, batch, checkpointing, dropout) if dora else 0.0)


def dora_flops(shape: ModelShape, rank: int, batch: Batch, checkpointing: bool, dropout: float) -> float:
    """DoRA's extra matmul FLOPs over a micro-batch (module docstring); its elementwise norm work is left out."""
    forwards = 2 if checkpointing else 1
    weight_products = sum(2 * rank * i * (i + o) for _, i, o in shape.target_linears)
    recomputed = sum(i * o for _, i, o in shape.target_linears) * batch.positions if dropout > 0 else 0
    return forwards * weight_products + (2 * forwards + 2) * recomputed


def dora_transient_bytes(shape: ModelShape, dtype_bytes: int) -> int:
    """The largest target's W + sBA temporaries of DoRA's weight norm (module docstring)."""
    return max((4 * i * (i + o) + 3 * dtype_bytes * i * o for _, i, o in shape.target_linears), default=0)


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype) -> float:
    """Best GFLOP/s of a few square matmuls in `dtype` on this machine, cached with the load it was measured at.

    A peak is a best case, so the cache keeps the highest measurement. A CPU measurement taken while other
    jobs ran is low (one taken at load 4.5 per core gave 46 GFLOP/s in bf16 where an idle run gives ~400):
    it is measured again whenever the machine is quieter than it was then, and the higher value kept.
    """
    from common.env import hardware_info
    from common.paths import cache_dir
    hw = hardware_info()
    key = "|".join(str(x) for x in (hw.get("gpu") if device.type == "cuda" else hw["cpu"], device.type, dtype,
                                    torch.__version__, torch.get_num_threads(), MATMUL_N[device.type == "cuda"]))
    path = cache_dir() / "matmul_peak.json"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    entry = cached.get(key)
    if isinstance(entry, (int, float)):  # written before the load was recorded: trust it like a loaded one
        entry = {"gflops": float(entry), "load_per_core": math.inf}
    load = 0.0 if device.type == "cuda" else os.getloadavg()[0] / (os.cpu_count() or 1)
    if entry and load >= entry["load_per_core"] - 0.25:
        return entry["gflops"]
    measured = _measure_matmul_gflops(device, dtype)
    if entry is None or measured > entry["gflops"]:
        entry = {"gflops": measured, "load_per_core": load}
    else:
        entry["load_per_core"] = load  # measured again no higher at this load: no need to retry at it
    cached[key] = entry
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cached, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return entry["gflops"]


def _measure_matmul_gflops(device: torch.device, dtype: torch.dtype, n: int | None = None) -> float:
    if n is None:
        # A slow reference path (bf16 on an AVX2 CPU: ~1 GFLOP/s) would take seconds per large matmul.
        small = _measure_matmul_gflops(device, dtype, 256)
        if small < 20:
            return small
        n = MATMUL_N[device.type == "cuda"]
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    best = float("inf")
    for _ in range(6):  # the first call pays for allocation and kernel selection
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - began)
        if best > 0.5:  # a slow reference path (bf16 on an AVX2 CPU): one timing says enough
            break
    return 2 * n**3 / best / 1e9


# ---------------------------------------------------------------------------- the run's batches

def encoded_lengths(cfg: TrainConfig) -> list[dict[str, Any]]:
    """The training split as train.py encodes it, reduced to lengths: [{"input_ids": range(n), "labelled": c}]."""
    return _encoded_lengths(cfg.model, cfg.dataset, cfg.split_seed, cfg.train_limit, cfg.group_key,
                            cfg.decontaminate, cfg.max_seq_len, cfg.truncate, cfg.format, cfg.columns,
                            cfg.skip_bad_rows)


@functools.lru_cache(maxsize=8)
def _encoded_lengths(model, dataset, split_seed, train_limit, group_key, decontaminate, max_seq_len, truncate,
                     format, columns, skip_bad_rows):
    """As common/train/build.py's build_run loads and encodes the training split (same arguments, same functions)."""
    from common.corpus.splits import load_splits
    from common.text.prompts import IGNORE_INDEX, choose_template, encode_examples, resolve_format
    from common.model.load import load_tokenizer
    tokenizer = load_tokenizer(model)
    splits = load_splits(dataset, split_seed=split_seed, limit=train_limit, group_key=group_key,
                         benchmark_files=[f for f in decontaminate.split(",") if f.strip()], columns=columns,
                         skip_bad_rows=skip_bad_rows)
    format = resolve_format(tokenizer, format)
    template = choose_template(tokenizer, splits.train[0].style, format)
    encoded, _ = encode_examples(tokenizer, splits.train, template, max_seq_len, truncate, format)
    if not encoded:
        raise UserError(f"no training example fits --max-seq-len {max_seq_len}; raise it or pass --truncate")
    return [{"input_ids": range(len(e["input_ids"])), "labelled": sum(x != IGNORE_INDEX for x in e["labels"][1:])}
            for e in encoded]


def run_batches(cfg: TrainConfig, examples: list[dict[str, Any]], world: int = 1) -> list[list[Batch]]:
    """The micro-batches of every optimizer step of the run on process 0, as train.py draws them."""
    from common.train.batching import epoch_batches

    def batch_of(rows: list[list[int]]) -> Batch:
        lengths = [sum(len(examples[i]["input_ids"]) for i in row) for row in rows]
        return Batch(len(rows), max(lengths), sum(lengths),
                     sum(examples[i]["labelled"] for row in rows for i in row))
    per_step = cfg.grad_accum
    first = epoch_batches(examples, cfg.batch_size, cfg.seed, 0, cfg.packing, cfg.max_seq_len, cfg.max_tokens)
    per_epoch = len(first) // (per_step * world)
    if per_epoch == 0:
        raise UserError(f"{len(examples)} training examples make no full step of batch {cfg.batch_size} x "
                        f"grad-accum {cfg.grad_accum} x {world} processes; lower them or add data")
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))
    steps: list[list[Batch]] = []
    epoch = 0
    while len(steps) < total:
        batches = first if epoch == 0 else epoch_batches(examples, cfg.batch_size, cfg.seed, epoch, cfg.packing,
                                                         cfg.max_seq_len, cfg.max_tokens)
        mine = batches[:len(batches) // world]
        for start in range(0, len(mine) - per_step + 1, per_step):
            if len(steps) == total:
                break
            steps.append([batch_of(rows) for rows in mine[start:start + per_step]])
        epoch += 1
    return steps


# ---------------------------------------------------------------------------- the estimate

def estimate_run(cfg: TrainConfig, device: torch.device, examples: list[dict[str, Any]] | None = None,
                 world: int = 1, dtype: torch.dtype | None = None) -> Estimate:
    """Predicted peak memory and step time of `cfg` on `device` (examples: encoded_lengths(cfg) by default;
    dtype: the compute dtype, by default what common.model.load picks for this device)."""
    from common.model.load import compute_dtype
    config = load_config(cfg.model)
    shape = model_shape(config, cfg.modules)
    dtype = dtype or compute_dtype(cfg.quant, device, cfg.dtype)
    dtype_name = str(dtype).replace("torch.", "")
    c = torch.finfo(dtype).bits // 8
    steps = run_batches(cfg, examples if examples is not None else encoded_lengths(cfg), world)
    per_layer, outside = saved_bytes_per_token(config.to_json_string(), cfg.modules, cfg.rank, cfg.dropout,
                                               dtype_name, cfg.dora)
    largest = max((b for step in steps for b in step),
                   key=lambda b: activation_bytes(shape, per_layer, outside, b, cfg.quant, c, cfg.grad_checkpointing)
                   + 12 * shape.vocab * b.labelled)
    acts = activation_bytes(shape, per_layer, outside, largest, cfg.quant, c, cfg.grad_checkpointing)
    logits = 12 * shape.vocab * largest.labelled
    n_lora = shape.lora_params(cfg.rank, cfg.dora)
    lora_state = 16 * n_lora + (dora_transient_bytes(shape, c) if cfg.dora else 0)
    cuda = device.type == "cuda"
    steps_run = max(len(steps), 3)
    if cuda:
        k_act = k_logits = K_ACT_CUDA
    else:
        k_logits = K_LOGITS
        k_act = K_ACT + (K_ACT_GROWTH * math.log(steps_run / 3) if cfg.mmap_threshold_kb == 0 else 0.0)
    baseline = 0.0 if cuda else BASELINE_MB * MIB
    weights = weight_bytes(shape, cfg.quant, c)
    quantized = cfg.quant in ("4bit", "8bit")
    ckpt, ckpt_dtype = checkpoint_info(cfg.model, config)
    if cuda:
        mapped, load = 0.0, 0.0
    elif ckpt_dtype == dtype:  # the loaded tensors are the checkpoint file's own pages (mmap), no copy
        mapped = ckpt - c * shape.other_params if quantized else 0.0
        load = baseline + weights + mapped
    else:                      # converted: the file's pages, the new weights and, for 4/8-bit, dense staging
        mapped = 0.0
        load = baseline + ckpt + weights + (c * shape.linear_params if quantized else 0)
    peak = max(baseline + weights + mapped + lora_state + k_act * acts + k_logits * logits, load)
    gflops = matmul_peak_gflops(device, dtype)
    passes = 3 if cfg.grad_checkpointing else 2
    dequant = DEQUANT_NS.get((cfg.quant, dtype_name), 0.0) * 1e-9 * shape.linear_params * passes
    flops = [sum(step_flops(shape, cfg.rank, b, cfg.grad_checkpointing, cfg.dora, cfg.dropout) for b in step)
             for step in steps]
    efficiency = EFFICIENCY[dtype_name]
    seconds = [f / (gflops * 1e9 * efficiency) + dequant * len(step) for f, step in zip(flops, steps)]
    real = sum(b.real for step in steps for b in step)
    total_params = shape.linear_params + shape.other_params
    return Estimate(device.type, dtype_name, cfg.quant, total_params, n_lora,
                    baseline / MIB, weights / MIB, mapped / MIB, lora_state / MIB, acts / MIB, load / MIB,
                    logits / MIB, k_act, k_logits, peak / MIB,
                    sum(seconds) / len(seconds), real * world / sum(seconds), sum(flops) / len(flops), gflops,
                    len(steps), largest, seconds)


def training_peak_mb(est: Estimate) -> float:
    """The predicted peak while training (the loading peak left out)."""
    return fixed_mb(est) + est.k_act * est.activations_mb + est.k_logits * est.logits_mb


def fixed_mb(est: Estimate) -> float:
    """What a run holds whatever the batch: baseline, base weights, mapped checkpoint pages, LoRA state."""
    return est.baseline_mb + est.weights_mb + est.mapped_mb + est.lora_mb


def refine(est: Estimate, measured_peak_mb: float, measured_step_s: float, probe: Estimate) -> Estimate:
    """Rescale `est` by what a probe measured against `probe`, its prediction for the probed steps.

    Memory: the part that varies with the batch (K_ACT x (activations + logits)) is scaled by the
    probe's measured training peak over its predicted one, both less baseline + weights + LoRA;
    time: the step time by measured / predicted.
    """
    fixed = fixed_mb(probe)
    variable = training_peak_mb(probe) - fixed
    scale_mem = max(measured_peak_mb - fixed, 0.0) / variable if variable > 0 else 1.0
    scale_time = measured_step_s / probe.step_s if probe.step_s > 0 else 1.0
    fixed_est = fixed_mb(est)
    train = fixed_est + (training_peak_mb(est) - fixed_est) * scale_mem
    return dataclasses.replace(est, peak_mb=max(train, est.load_mb), step_s=est.step_s * scale_time,
                               tokens_per_s=est.tokens_per_s / scale_time, k_act=est.k_act * scale_mem,
                               k_logits=est.k_logits * scale_mem,
                               scale_memory=scale_mem, scale_time=scale_time)


def format_estimate(est: Estimate, title: str = "estimate") -> str:
    """The breakdown as a small aligned table."""
    b = est.largest
    where = "max_memory_allocated" if est.device == "cuda" else "peak RSS"
    rows = [
        ("device / compute dtype", f"{est.device} / {est.dtype}, base weights {est.quant}"),
        ("parameters", f"{est.params:,} base, {est.lora_params:,} LoRA"),
        ("framework baseline", f"{est.baseline_mb:8.0f} MiB"),
        ("base weights", f"{est.weights_mb:8.0f} MiB"),
        *([("checkpoint pages kept mapped", f"{est.mapped_mb:8.0f} MiB  the dense linears quantized in place")]
          if est.mapped_mb else []),
        ("LoRA weights + grads + AdamW", f"{est.lora_mb:8.0f} MiB"),
        ("saved activations", f"{est.activations_mb:8.0f} MiB  largest micro-batch {b.rows} x {b.width} positions"),
        ("logits (labelled positions)", f"{est.logits_mb:8.0f} MiB  {b.labelled} labelled positions"),
        ("allocator/backward factors", f"{est.k_act:8.2f} x activations, {est.k_logits:.2f} x logits"
         + (f", probe scale {est.scale_memory:.2f}" if est.scale_memory != 1.0 else "")),
        ("peak while loading", f"{est.load_mb:8.0f} MiB"),
        (f"predicted peak ({where})", f"{est.peak_mb:8.0f} MiB"),
        ("model FLOPs per step", f"{est.step_flops / 1e9:8.1f} GFLOP  over {est.steps} steps"),
        ("matmul peak (measured, cached)", f"{est.peak_gflops:8.1f} GFLOP/s x efficiency {EFFICIENCY[est.dtype]}"
         + (f", probe scale {est.scale_time:.2f}" if est.scale_time != 1.0 else "")),
        ("predicted step time", f"{est.step_s:8.2f} s  ({est.tokens_per_s:.0f} real tokens/s, "
                                f"{est.step_s * est.steps / 60:.1f} min for the run)"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join([title] + [f"  {k:<{width}}  {v}" for k, v in rows])

"""Settings of an evaluation: option checks, the adapter and the training settings it brings, the config recorded
with the run, and the earlier base-model evaluation an adapter is compared with.

Two evaluations are comparable when they share MATCH_SETTINGS (and, when sampling, SAMPLING_SETTINGS) and the
benchmark's identity (file hash / dataset, split seed, template, max_seq_len).
"""
from pathlib import Path
from typing import Any

from common.config import EvalConfig, dtype_of_record
from common.errors import UserError
from common.judge.benchmarks import Benchmark
from common.model.adapters import Adapter, adapter_from_dir, adapter_from_run, check_base_model

# Generation settings two evaluations must share for their samples to be compared.
MATCH_SETTINGS = ("model", "quant", "dtype", "eval_limit", "n_samples", "temperature", "max_new_tokens",
                  "timeout", "memory_mb")


SAMPLING_SETTINGS = ("top_p", "seed")  # matched too when temperature > 0


def parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(part) for part in str(text).split(",") if part.strip()})
    except ValueError:
        ks = []
    if not ks or ks[0] < 1:
        raise UserError(f"--k must be a comma list of positive integers, got {text!r}")
    return ks


def validate_eval_config(cfg: EvalConfig) -> list[int]:
    """Every option that can be checked before loading anything; returns the k of pass@k, ascending."""
    ks = parse_ks(cfg.k)
    positive = {"n_samples": cfg.n_samples, "max_new_tokens": cfg.max_new_tokens,
                "eval_batch_size": cfg.eval_batch_size, "max_seq_len": cfg.max_seq_len, "timeout": cfg.timeout}
    if cfg.eval_limit is not None:
        positive["eval_limit"] = cfg.eval_limit
    if cfg.heldout_gen is not None and cfg.heldout_gen < 0:
        raise UserError(f"--heldout-gen must be >= 0 (0: NLL only), got {cfg.heldout_gen}")
    if cfg.exec_workers is not None:
        positive["exec_workers"] = cfg.exec_workers
    for flag, value in positive.items():
        if not value > 0:
            raise UserError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if cfg.memory_mb < 64:
        raise UserError(f"--memory-mb must be at least 64 (the interpreter itself needs it), got {cfg.memory_mb}")
    if cfg.temperature < 0:
        raise UserError(f"--temperature must be >= 0, got {cfg.temperature}")
    if not 0 < cfg.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {cfg.top_p}")
    if cfg.engine == "llama.cpp" and cfg.temperature > 0:
        raise UserError(f"--engine llama.cpp decodes greedily; pass --temperature 0 (not {cfg.temperature:g}) or "
                        "sample with --engine hf")
    if cfg.samples is None:
        if cfg.n_samples < ks[-1]:
            raise UserError(f"--n-samples {cfg.n_samples} < k={ks[-1]}: pass@{ks[-1]} needs at least "
                            f"{ks[-1]} samples per problem; raise --n-samples (with --temperature > 0) or lower --k")
        if cfg.n_samples > 1 and cfg.temperature == 0:
            raise UserError(f"--n-samples {cfg.n_samples} with --temperature 0 repeats one greedy answer; "
                            "pass --temperature > 0 (e.g. 0.8) to sample")
        if cfg.engine == "llama.cpp":
            from common.text.llamacpp import import_llama_cpp
            import_llama_cpp()   # a missing package is named now, not after loading and exporting the model
    elif cfg.merge:
        raise UserError("--merge needs an adapter; --samples scores completions without a model")
    if cfg.merge and cfg.run_id is None and cfg.run_name is None and cfg.adapter is None:
        raise UserError("--merge needs an adapter: pass --adapter DIR, --run-id or --run-name")
    return ks


def resolve_adapter(cfg: EvalConfig, tracker) -> Adapter | None:
    """The adapter to evaluate; its train run becomes the eval run's parent when it is in this --db."""
    if cfg.run_id is not None:
        return adapter_from_run(tracker, cfg.db, cfg.run_id)
    if cfg.run_name is not None:
        runs = tracker.runs(kind="train", status="completed", name=cfg.run_name)
        if not runs:
            raise UserError(f"no completed train run named {cfg.run_name!r} in {cfg.db}")
        return adapter_from_run(tracker, cfg.db, runs[-1]["id"])
    if cfg.adapter is None:
        return None
    adapter = adapter_from_dir(Path(cfg.adapter), cfg.adapter)
    in_this_db = adapter.db and Path(adapter.db).resolve() == Path(cfg.db).resolve()
    run = tracker.run(adapter.run_id) if in_this_db and adapter.run_id is not None else None
    if not (run and run["kind"] == "train"):
        adapter.run_id = None
    return adapter


def inherit_settings(cfg: EvalConfig, adapter: Adapter | None) -> None:
    """Options left at None take the adapter's training values, else the defaults."""
    train = adapter.train_config if adapter else {}
    if adapter:
        check_base_model(adapter, cfg.model)
    cfg.quant = cfg.quant or train.get("quant") or "16bit"
    cfg.dtype = cfg.dtype or dtype_of_record(train)  # decode as the adapter's training computed
    cfg.dataset = cfg.dataset or train.get("dataset") or "stdlib"
    cfg.seed = cfg.seed if cfg.seed is not None else int(train.get("seed", 0))
    cfg.split_seed = cfg.split_seed if cfg.split_seed is not None else int(train.get("split_seed", 0))
    cfg.group_key = cfg.group_key or train.get("group_key")
    cfg.decontaminate = cfg.decontaminate if cfg.decontaminate is not None else train.get("decontaminate", "")
    if cfg.merge and cfg.quant in ("4bit", "8bit"):
        raise UserError(f"--merge into a {cfg.quant} base loses precision; pass --quant 16bit (an adapter trained "
                        "on a quantized base merges cleanly into a 16-bit one)")


def decode_key(cfg: EvalConfig, dtype) -> str:
    """How greedy decoding ran, for the benchmark key: "float32" is batch-invariant; half precision
    (4/8-bit bases, or --no-fp32-decoding) depends on the batch's shape, so the key names the batch size and the
    engine (continuous batching gives a row other batch-mates than the batch-at-a-time decoder before it did).
    llama.cpp is another engine with its own weights, and its rounding may depend on batch-mates: "llama.cpp <gguf
    type>, continuous batch <n>", never paired with the HF engine."""
    import torch

    from common.text.generation import decodes_in_fp32

    if cfg.engine == "llama.cpp":
        return f"llama.cpp {cfg.gguf_type}, continuous batch {cfg.eval_batch_size}"
    if dtype == torch.float32 or decodes_in_fp32(cfg.fp32_decoding, dtype, quantized=cfg.quant in ("4bit", "8bit")):
        return "float32"
    return f"{str(dtype).replace('torch.', '')}, continuous batch {cfg.eval_batch_size}"


def eval_record(cfg: EvalConfig, ks: list[int], model_name: str, adapter: Adapter | None, dtype: str,
                benchmarks: list[Benchmark]) -> dict[str, Any]:
    """The config recorded with the eval run: what decides whether two evaluations are comparable."""
    from common.model.resolve import model_identity
    from common.sandbox.execute import isolation_info

    isolation = isolation_info(cfg.isolation)
    return {"model": model_identity(model_name), "adapter": str(adapter.path.resolve()) if adapter else None,
            "quant": cfg.quant, "dtype": dtype, "benchmarks": [b.name for b in benchmarks],
            "benchmark_keys": {b.name: b.key for b in benchmarks}, "eval_limit": cfg.eval_limit,
            "n_samples": cfg.n_samples, "k": ks, "temperature": cfg.temperature, "top_p": cfg.top_p,
            "max_new_tokens": cfg.max_new_tokens, "eval_batch_size": cfg.eval_batch_size, "seed": cfg.seed,
            "split_seed": cfg.split_seed,
            "dataset": cfg.dataset, "max_seq_len": cfg.max_seq_len, "merge": cfg.merge,
            "isolation": isolation["name"], "landlock_abi": isolation["landlock_abi"], "timeout": cfg.timeout,
            "memory_mb": cfg.memory_mb, "engine": cfg.engine,
            "gguf_type": cfg.gguf_type if cfg.engine == "llama.cpp" else None}


def match_settings(config: dict) -> dict:
    keys = MATCH_SETTINGS + (SAMPLING_SETTINGS if config.get("temperature") else ())
    return {k: config.get(k) for k in keys}


def find_base_run(tracker, config: dict, bench: str) -> int | None:
    """The newest completed base-model eval run whose samples on `bench` are comparable with `config`'s."""
    wanted, key = match_settings(config), config["benchmark_keys"][bench]
    for run in reversed(tracker.runs(kind="eval", status="completed")):
        c = run["config"]
        if c.get("adapter") is None and c.get("samples") is None and bench in c.get("benchmarks", []) \
                and c.get("benchmark_keys", {}).get(bench) == key and match_settings(c) == wanted:
            return run["id"]
    return None

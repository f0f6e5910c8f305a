"""Every option of the five scripts, declared once: one typed dataclass per script.

Each field's default is its command-line default and its help string is its --help text
(common/options.py derives the parser, `--config` files, the recorded config and the
sweep's `--set` keys from these classes). One word means one thing in every script:

    --output-dir   where a script writes (train: the adapter; evaluate: samples.json;
                   sweep: the root of its runs; report: the report)
    --db           the run tracker SQLite file; runs live beside it (common/tracker.py run_dir)
    --train-limit  training examples used;  --eval-limit  problems per benchmark
    --batch-size   training examples per micro-batch;  --eval-batch-size  prompts per generation
    --workers      sweep runs at once;  --exec-workers  sandboxed programs at once
    --quiet        no progress bars;  --seed  the run's seed (init, order, sampling);
    --split-seed   which examples are train / validation / test (fixed across --seed)

sweep=True marks the options a sweep may set per run (`--set key=value`, suite files);
record=False marks what does not change a run's result (where it is logged, verbosity).
"""
from dataclasses import dataclass

from common.options import option

DEFAULT_MODEL = "smollm2-135m"   # the embedded SmolLM2-135M-Instruct (common/model/resolve.py)
QUANT_MODES = ("4bit", "8bit", "16bit", "32bit")
TEMPLATES = ("plain", "chat", "alpaca")
LORA_INITS = ("gaussian", "pissa", "olora")   # common/model/lora.py maps them to PEFT's init_lora_weights
ISOLATION_MODES = ("auto", "bwrap", "landlock", "none")
DTYPES = ("auto", "fp32")     # --dtype; common/model/load.py compute_dtype resolves it
DEFAULT_DB = "experiments.db"
GGUF_TYPES = ("f32", "f16", "q8_0")   # common/model/gguf_export.py writes each
ENGINES = ("hf", "llama.cpp")         # evaluate.py --engine: who generates (common/text/generation.py, llamacpp.py)


def fp32_decoding_option(sweep: bool = False) -> bool:
    """--fp32-decoding, declared here once for evaluate.py and infer.py: one default, one meaning, so an adapter
    answers in infer.py as evaluate.py scored it (common.text.generation.decoding_precision)."""
    return option(True, "decode 16-bit models in fp32 (4/8-bit bases in their compute dtype), in evaluate.py and "
                        "infer.py alike: greedy output does not depend on the batch size (--no-fp32-decoding: about "
                        "2x faster in bf16; evaluate.py then adds the batch size to the benchmark key)", sweep=sweep)


def dtype_option(default: str | None, sweep: bool = False) -> str | None:
    """--dtype, declared here once for train.py, evaluate.py and infer.py (default None: the adapter's)."""
    inherit = "; None: the adapter's (fp32 when it trained in float32), else auto" if default is None else ""
    return option(default, "compute dtype: auto = bf16 where the device computes it at speed (CUDA, CPUs with "
                           "AVX512-BF16/AMX), fp16 on older GPUs, else fp32; fp32 pins it on every machine (a study "
                           "spanning CPU kinds), 4/8-bit bases included" + inherit, choices=DTYPES, sweep=sweep)


def dtype_of_record(config: dict) -> str:
    """The --dtype that computes as a recorded run did. Runs record the dtype they resolved to (float32, bfloat16,
    float16): float32 under 16/8/4-bit weights was pinned or a CPU without bf16, and fp32 repeats it anywhere."""
    return "fp32" if config.get("dtype") == "float32" and config.get("quant") != "32bit" else "auto"


@dataclass
class TrainConfig:
    """train.py: fine-tune with LoRA / QLoRA and save a PEFT adapter."""
    model: str = option(DEFAULT_MODEL, "embedded name, local model directory, or hub id", sweep=True)
    dataset: str = option("stdlib", "stdlib | data.jsonl/.json/.csv | hf:owner/name | apps:path (formats: "
                                          "data/README.md)",
                          sweep=True)
    columns: str | None = option(None, "rename the file's columns to ours (OURS=THEIRS), e.g. "
                                       "prompt=question,completion=answer; ours: prompt, completion, instruction, "
                                       "input, output, response, messages, conversations", sweep=True)
    skip_bad_rows: bool = option(False, "skip malformed rows and count them instead of stopping at the first",
                                 sweep=True)
    train_limit: int | None = option(None, "use at most this many training examples", sweep=True,
                                     deprecated=("--limit",))
    rank: int = option(16, "LoRA rank r", sweep=True)
    alpha: float | None = option(None, "LoRA alpha (None: 2 x rank, so alpha/r stays 2)", sweep=True)
    dropout: float = option(0.05, "LoRA dropout", sweep=True)
    modules: str = option("qkvo", "preset qv|qkv|qkvo|mlp|all, or a comma list of module names", sweep=True)
    rslora: bool = option(False, "rank-stabilised LoRA: scale updates by alpha/sqrt(r) instead of alpha/r",
                          sweep=True)
    dora: bool = option(False, "DoRA: also learn a magnitude per output feature (more time and memory per step; "
                               "not with --init pissa/olora)", sweep=True)
    init: str = option("gaussian", "LoRA initialisation: gaussian = PEFT's default (random A, zero B: training "
                                   "starts at the base model); pissa / olora = A, B from an SVD / QR of the base "
                                   "weights, which are rewritten (16/32-bit only; the adapter is saved converted "
                                   "for the original base, rank 2r)", choices=LORA_INITS, sweep=True)
    lora_plus_ratio: float = option(0.0, "LoRA+: the B matrices learn at --lr x R (the paper suggests 16; 0: off)",
                                    sweep=True, metavar="R")
    # peft by default until the reference study's third edition is complete: its runs span sessions and must all
    # train alike (docs/study.md)
    lora_kernel: str = option("peft", "LoRA layer forward/backward while training: fused = one autograd function "
                                       "that keeps no dropout mask and redraws it in backward from a counter-based "
                                       "generator (plain LoRA on 16/32-bit bases; 4/8-bit bases and DoRA use "
                                       "peft's silently, recorded resolved); peft = PEFT's layers. The masks "
                                       "differ, so runs are not bit-comparable across kernels",
                              choices=("peft", "fused"), sweep=True)
    quant: str = option("16bit", "base weights: 4bit NF4 (QLoRA), 8bit int8, 16bit bf16/fp16, 32bit fp32",
                        choices=QUANT_MODES, sweep=True)
    dtype: str = dtype_option("auto", sweep=True)
    epochs: float = option(1.0, "passes over the training split (ignored with --max-steps)", sweep=True)
    max_steps: int | None = option(None, "optimizer steps to run (overrides --epochs)", sweep=True)
    batch_size: int = option(4, "examples (or packed rows) per micro-batch per process", sweep=True)
    grad_accum: int = option(1, "micro-batches per optimizer step", sweep=True)
    lr: float = option(2e-4, "peak learning rate", sweep=True)
    warmup: float = option(0.05, "warm-up steps, or a fraction of all steps when < 1", sweep=True)
    scheduler: str = option("cosine", "LR schedule after warm-up", choices=("cosine", "linear", "constant"),
                            sweep=True)
    weight_decay: float = option(0.0, "AdamW weight decay", sweep=True)
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 = off)", sweep=True)
    optim: str = option("adamw", "optimizer; paged_adamw_8bit (bitsandbytes 8-bit state, paged to host memory "
                                 "on CUDA; unpaged on a CPU)",
                        choices=("adamw", "paged_adamw_8bit"), sweep=True)
    max_seq_len: int = option(512, "longest example in tokens", sweep=True)
    truncate: bool = option(False, "truncate over-long examples instead of dropping them", sweep=True)
    seed: int = option(0, "seed of initialisation and batch order", sweep=True)
    format: str = option("auto", "training format: completion (plain continuation) or instruct (the user turn is "
                                 "evaluate.py's instruct prompt, the answer the function in a fence); auto: instruct "
                                 "for a model with a chat template, else completion (recorded resolved)",
                         choices=("auto", "completion", "instruct"), sweep=True)
    split_seed: int = option(0, "seed that draws the validation/test split, by group; kept apart from --seed so "
                                "runs with different seeds share one split", sweep=True)
    group_key: str | None = option(None, "field of a .jsonl/.json/.csv/hf: dataset whose value groups rows (e.g. "
                                         "repo): a group never straddles train/validation/test (None: each row "
                                         "its own group; stdlib is grouped by source file)", sweep=True)
    decontaminate: str = option("", "comma list of benchmark .jsonl files, besides HumanEval, whose near-copies "
                                    "are removed from the data", sweep=True)
    grad_checkpointing: bool = option(False, "recompute activations: less memory, ~30%% slower", sweep=True)
    packing: bool = option(False, "pack examples into max-seq-len rows (no cross-example attention or loss)",
                           sweep=True)
    max_tokens: int | None = option(None, "token budget per micro-batch: rows x longest row <= N bounds peak "
                                          "memory; the batch size then varies (None: --batch-size rows)", sweep=True)
    head_chunk: int = option(0, "labelled positions per fused LM-head + cross-entropy chunk: less memory for the "
                                "logits, same loss (0: all logits at once)", sweep=True)
    mmap_threshold_kb: int = option(0, "CPU memory: glibc serves allocations of >= N KiB from mmap, so freed "
                                       "activations leave RSS instead of piling up over steps; 256 cut peak RSS "
                                       "22%% at 0.59x the tokens/s (bench/allocator.py; 0: glibc's dynamic "
                                       "default)", sweep=True, record=False)
    eval_every: int = option(50, "validation every N steps (0: only at the end)", sweep=True)
    val_limit: int = option(100, "validation examples used for periodic evaluation", sweep=True)
    eval_gen: int = option(4, "validation prompts generated at each evaluation (0: none)", sweep=True)
    save_every: int = option(50, "checkpoint every N steps (0: only on interrupt)", sweep=True)
    load_best: bool = option(True, "end with the best validation checkpoint as the final adapter (--no-load-best: "
                                   "the last step's)", sweep=True)
    early_stopping: int = option(0, "stop after N evaluations without a lower validation loss (0: off)", sweep=True)
    name: str | None = option(None, "run name (None: derived from the config, as sweep.py names it)")
    suite: str | None = option(None, "suite label recorded with the run (sweep.py sets it)")
    output_dir: str | None = option(None, "where the adapter goes (None: the run directory beside --db)")
    db: str = option(DEFAULT_DB, "run tracker SQLite file", record=False)
    resume: bool = option(False, "continue from <output-dir>/checkpoint (error if none)", record=False)
    report_to: str = option("none", "also log to none|tensorboard|wandb|mlflow (comma list; the SQLite --db stays "
                                    "the record)", record=False)
    tensorboard: str | None = option(None, "TensorBoard event files here (implies --report-to tensorboard; default "
                                           "<output-dir>/tensorboard)", record=False, metavar="DIR")
    quiet: bool = option(False, "no progress bar; a log line every 10 steps", record=False)
    estimate: bool = option(False, "print the predicted peak memory and step time (common/train/estimate.py), "
                                   "then exit before loading weights", record=False)
    probe: bool = option(False, "with --estimate: run 3 real steps and rescale the prediction by them", record=False)


@dataclass
class EvalConfig:
    """evaluate.py: score the base model or an adapter (see evaluate.py's docstring)."""
    run_id: int | None = option(None, "evaluate the adapter of this completed train run in --db", group="what")
    run_name: str | None = option(None, "evaluate the adapter of the newest completed train run with this name",
                                  group="what")
    adapter: str | None = option(None, "evaluate this PEFT adapter directory", group="what", metavar="DIR")
    samples: str | None = option(None, "score completions made elsewhere (task_id, completion per line); no "
                                       "model loaded", group="what", metavar="FILE.jsonl")
    model: str | None = option(None, f"base model (None: the adapter's training model, else {DEFAULT_MODEL})",
                               sweep=True)
    quant: str | None = option(None, "base weights (None: the adapter's training quant, else 16bit)",
                               choices=QUANT_MODES, sweep=True)
    dtype: str | None = dtype_option(None, sweep=True)
    dataset: str | None = option(None, "dataset whose test split is 'heldout' (None: the adapter's, else stdlib)",
                                 sweep=True)
    seed: int | None = option(None, "sampling seed (None: the adapter's training seed, else 0)", sweep=True)
    split_seed: int | None = option(None, "split seed of 'heldout' (None: the adapter's, else 0)", sweep=True)
    group_key: str | None = option(None, "group key of the 'heldout' split (None: the adapter's)", sweep=True)
    decontaminate: str | None = option(None, "benchmark files the 'heldout' data was cleaned against (None: the "
                                             "adapter's, else none)", sweep=True)
    benchmark: str | None = option(None, "comma list of humaneval | heldout | FILE.jsonl (None: humaneval,heldout;"
                                         " humaneval with --samples)", sweep=True)
    eval_limit: int | None = option(None, "first N problems of each benchmark", sweep=True,
                                    deprecated=("--limit",))
    heldout_gen: int | None = option(None, "generate for only the first N heldout examples (BLEU, chrF, syntax); "
                                           "NLL still covers every one (None: all; 0: NLL only)", sweep=True)
    protocol: str = option("auto", "how problems are prompted: completion (plain continuation), instruct (EvalPlus "
                                   "chat prompt, sanitized answer), fewshot (one solved example first); auto: "
                                   "instruct for chat-trained adapters and chat base models",
                           choices=("auto", "completion", "instruct", "fewshot"), sweep=True)
    fp32_decoding: bool = fp32_decoding_option(sweep=True)
    engine: str = option("hf", "who generates: hf (transformers, continuous batching) or llama.cpp (the merged "
                               "model exported once to a GGUF of --gguf-type; greedy only; needs pip install -r "
                               "requirements-llamacpp.txt); scores never pair across engines", choices=ENGINES,
                         sweep=True)
    gguf_type: str = option("f16", "GGUF weights for --engine llama.cpp: f16, q8_0 (8-bit blocks) or f32",
                            choices=GGUF_TYPES, sweep=True)
    n_samples: int = option(1, "samples per problem", sweep=True)
    k: str = option("1", "comma list of k for pass@k (each <= --n-samples)", sweep=True)
    temperature: float = option(0.0, "sampling temperature (0 = greedy)", sweep=True)
    top_p: float = option(0.95, "nucleus sampling mass (when sampling)", sweep=True)
    max_new_tokens: int = option(256, "generated tokens per sample at most", sweep=True)
    eval_batch_size: int = option(8, "prompts per generation / NLL batch", sweep=True, deprecated=("--batch-size",))
    timeout: float = option(10.0, "seconds each program may run", sweep=True)
    memory_mb: int = option(2048, "address-space limit of each program", sweep=True)
    exec_workers: int | None = option(None, "programs run at once (None: CPU count)", sweep=True,
                                      deprecated=("--workers",))
    isolation: str = option("auto", "sandbox for generated code: auto = bubblewrap if usable, else Landlock "
                                    "(Linux 5.13+), else refuse; bwrap/landlock = that one or an error; none = "
                                    "resource limits and an in-process guard only (not a security boundary; warns)",
                            choices=ISOLATION_MODES, sweep=True)
    merge: bool = option(False, "merge the adapter into the base weights before generating", sweep=True)
    max_seq_len: int = option(512, "longest heldout example for perplexity, in tokens", sweep=True)
    compare: bool = option(True, "paired comparison with the base model (adapters)")
    name: str | None = option(None, "eval run name (None: eval-<adapter dir> or eval-base:<model>)")
    suite: str | None = option(None, "suite label recorded with the run (sweep.py sets it)")
    output_dir: str | None = option(None, "where samples.json goes (None: the eval directory beside --db)")
    db: str = option(DEFAULT_DB, "run tracker SQLite file", record=False)
    quiet: bool = option(False, "no progress bars", record=False)


@dataclass
class SweepConfig:
    """sweep.py: run a suite of configurations, resumably."""
    suite: str | None = option(None, "built-in suite to run (data/suites/builtin/NAME.yaml)", group="which")
    suite_file: str | None = option(None, "YAML/JSON suite: name, base, axes, groups or parts (common/study/suites.py)",
                                    group="which")
    set: list[str] = option([], "override an option for every run, KEY=VALUE (repeatable; any train.py or "
                                "evaluate.py option marked for sweeps, e.g. max_steps=50)", metavar="KEY=VALUE")
    seeds: int | None = option(None, "repeat every config over seeds 0..N-1")
    db: str = option(DEFAULT_DB, "run tracker SQLite file")
    output_dir: str | None = option(None, "root of the runs' directories (None: beside --db)",
                                    deprecated=("--runs-dir",))
    workers: int = option(1, "runs at once (one GPU each when there are GPUs)")
    launcher: str = option("local", "where runs execute: local (child processes here) or ray (one Ray task per "
                                    "adapter, on the cluster at --ray-address; results merged into --db)",
                           choices=("local", "ray"))
    ray_address: str | None = option(None, "Ray cluster to join (None: $RAY_ADDRESS, else a local one)")
    ray_cpus: float = option(1.0, "CPUs each Ray task reserves (tasks also reserve one GPU when the cluster has GPUs)")
    ray_retries: int = option(2, "times Ray re-runs a task whose worker or node died")
    shard: str | None = option(None, "run only shard I of N (I/N, I from 0; e.g. $SLURM_ARRAY_TASK_ID/"
                                     "$SLURM_ARRAY_TASK_COUNT with --array=0-N-1): a stable partition of the plan; "
                                     "give each shard its own --db", metavar="I/N")
    merge: list[str] = option([], "merge these shard databases into --db (repeatable; merging twice adds nothing), "
                                  "then exit: report.py --db reads the result", metavar="DB")
    import_examples: str | None = option(None, "first load the runs of a folder `report.py --export-examples` wrote "
                                               "(e.g. results/examples) into --db, keeping their ids, so only the runs "
                                               "it lacks are run (resuming on another machine)", metavar="DIR",
                                         record=False)
    dry_run: bool = option(False, "print the planned runs and their state, run nothing")
    estimate: bool = option(False, "print each planned run's predicted peak memory and step time, run nothing")
    budget_mb: float | None = option(None, "record planned runs predicted to peak above this many MiB as skipped "
                                           "(status 'skipped'), run the rest")
    quiet: bool = option(False, "no progress bars; children get --quiet")


@dataclass
class ReportConfig:
    """report.py: tables, plots and a results document from the database."""
    db: str = option(DEFAULT_DB, "run tracker SQLite file")
    suite: str | None = option(None, "only this suite (None: every suite in the database)")
    output_dir: str | None = option(None, "report directory (None: reports/); with --export, the output file "
                                          "(None: reports/runs.json or .csv)", deprecated=("--out",))
    list: bool = option(False, "print the runs as a table instead of writing a report")
    status: str | None = option(None, "with --list: only runs with this status",
                                choices=("running", "completed", "failed", "interrupted", "skipped"))
    export: str | None = option(None, "write all runs (with scores) to a file", choices=("json", "csv"))
    figures: bool = option(True, "draw the PNG figures (--no-figures: tables only)")
    contention_limit: float = option(0.10, "a run is contended when other processes used more than this share of "
                                           "the machine's CPU while it ran: its times and memory then rank nothing "
                                           "(1: every run counts, e.g. on a machine that is always shared)")
    readme: str | None = option(None, "also re-render the tables this markdown file and the docs/*.md beside "
                                      "it quote between <!-- summary|configs|bases:begin/end --> markers",
                                metavar="FILE")
    export_examples: str | None = option(None, "write the per-example tables, run configs, scores and curves of "
                                               "--db to this folder as gzip'd JSON lines (no database, no weights)",
                                         metavar="DIR")
    from_examples: str | None = option(None, "build the report from a folder --export-examples wrote, instead "
                                             "of --db (the same RESULTS.md and summary.json)", metavar="DIR")


@dataclass
class InferConfig:
    """infer.py: generate with or without an adapter; merge and upload."""
    prompt: str | None = option(None, "generate once for this prompt (None: interactive session)")
    run_id: int | None = option(None, "use the adapter of this completed train run in --db", group="source")
    adapter: str | None = option(None, "use the PEFT adapter in this directory", group="source", metavar="DIR")
    db: str = option(DEFAULT_DB, "run tracker SQLite file (for --run-id)")
    model: str | None = option(None, f"base model (None: the adapter's training model, else {DEFAULT_MODEL})")
    quant: str | None = option(None, "base weights (None: the adapter's training quant, else 16bit)",
                               choices=QUANT_MODES)
    dtype: str | None = dtype_option(None)
    template: str = option("auto", "prompt template; auto = the adapter's training template, else by the prompt",
                           choices=("auto", *TEMPLATES))
    compare: bool = option(False, "generate with the base model, then with the adapter")
    demo: bool = option(False, "fixed code prompts, base vs adapter (base only without one)")
    temperature: float = option(0.0, "sampling temperature (0 = greedy)")
    top_p: float = option(0.95, "nucleus sampling mass (when sampling)")
    top_k: int = option(0, "sample from the k likeliest tokens (0 = off)")
    max_new_tokens: int = option(256, "generated tokens per sample at most")
    seed: int = option(0, "sampling seed (prompt i uses seed + i; both sides of a comparison use the same)")
    fp32_decoding: bool = fp32_decoding_option()
    stop: list[str] | None = option(None, "stop sequence, repeatable (\\n escapes; '' = none); None: the "
                                          "HumanEval stops for plain prompts", metavar="TEXT")
    merge_to: str | None = option(None, "merge the adapter into a 16/32-bit base, save here", metavar="DIR")
    export_gguf: str | None = option(None, "write the merged model (the base alone without an adapter) as one GGUF "
                                           "file for llama.cpp / Ollama (llama, qwen2, gemma)", metavar="FILE")
    gguf_type: str = option("f16", "GGUF weight type: f16, q8_0 (8-bit blocks, about half the size), or f32 "
                                   "(exact, twice the size)", choices=GGUF_TYPES)
    push_to_hub: str | None = option(None, "upload the adapter (or the --merge-to model) to this Hugging Face repo",
                                     metavar="REPO")
    private: bool = option(False, "create the --push-to-hub repo as private")
    quiet: bool = option(False, "no speed line (time to first token, tokens/s) after each generation")

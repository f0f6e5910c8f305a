"""Try a base model or a trained LoRA adapter: streamed generation, base-vs-adapter comparison, merge, push.

    python infer.py --prompt "def fibonacci(n):"                     # base model (embedded SmolLM2-135M)
    python infer.py --run-id 3 --prompt "Write a function that reverses a string."
    python infer.py --adapter runs/demo --compare --prompt "def is_prime(n):"   # base, then adapter
    python infer.py --run-id 3 --demo                                # 4 fixed prompts, base vs adapter
    python infer.py --run-id 3                                       # interactive session (below)
    python infer.py --run-id 3 --merge-to merged/                    # standalone transformers model
    python infer.py --run-id 3 --push-to-hub you/name [--merge-to merged/]

Adapter: `--run-id N` takes the output directory of completed train run N in `--db`;
`--adapter DIR` takes a directory with adapter_config.json (a train.py output dir or its
best/). `--model`, `--quant` and `--dtype` default to what the adapter was trained with
(run_config.json, else adapter_config.json's base_model_name_or_path), else the embedded model
at 16bit, dtype auto.

Decoding precision: as in evaluate.py, greedy decoding of a 16-bit model runs in fp32 unless
--no-fp32-decoding, so the same adapter gives the same tokens in both scripts.

Prompt template (`--template auto`): the template recorded with the adapter's training run
(or with a model merged by this script), so prompts look exactly as in training. Without one,
a prompt that starts with code (`def `, `async def `, `class `, `import `, `from `, `@`, `#`)
is completed as plain text; anything else is an instruction and goes through the tokenizer's
chat template (the Alpaca template when it has none). An explicit --template wins.
Plain completions stop at the HumanEval stop sequences (common.text.generation.STOP_SEQUENCES);
chat/Alpaca answers run to EOS and the code is pulled out of their fenced block. `--stop`
replaces the stop sequences for every template (backslash escapes \\n \\t; `--stop ''` for none).
After each generation one line says `syntax ok` or `syntax error: <category>` for the prompt +
completion (plain) or the extracted code (chat/Alpaca); nothing generated is ever run.

Interactive session (no --prompt): type or pipe a prompt of any number of lines, blank lines
included, and end it with a line holding only `.`; end of input (Ctrl-D, or the end of a
pipe) runs what is pending and quits. A line starting with `/` before a prompt is a command:
    /temp 0.7          sampling temperature (0 = greedy)
    /max 256           max new tokens
    /adapter on|off    generate with the adapter or with the base model alone
    /compare on|off    every prompt through the base model, then the adapter
    /template auto|plain|chat|alpaca
    /help, /quit
Prompt decorations (`>>>`) are shown only when stdin is a terminal. Ctrl-C stops a generation.

`--merge-to DIR` loads the base at 16-bit (or fp32 for a 32bit-trained adapter, and on CPUs
without native bf16), never 4/8-bit: an adapter trained with QLoRA merges into the
dequantized 16-bit base. It writes a standard transformers directory (weights, tokenizer,
generation config, lora_merge.json recording the template) that AutoModelForCausalLM loads.
`--push-to-hub REPO` uploads the adapter, or the merged model with --merge-to; it needs a
token (`hf auth login` or HF_TOKEN) and the network. `--export-gguf FILE [--gguf-type q8_0]`
writes the merged model as one GGUF file for llama.cpp / Ollama (common/model/gguf_export.py).
"""
import sys
import time
from typing import TextIO

from common.config import InferConfig, dtype_of_record
from common.errors import UserError, first_line, run_cli
from common.options import parse_config


def main(argv: list[str] | None = None, stdin: TextIO | None = None) -> int:
    cfg = parse_config(InferConfig, argv, __doc__.split("\n\n")[0],
                       removed={"--verbose": "the speed line is shown by default now; --quiet hides it"})
    # Imported after parsing, so that --help and option errors answer before torch loads.
    from transformers.utils import logging as hf_logging

    from common.env import default_device
    from common.inference.settings import find_adapter, validate_infer_config
    from common.model.export import hub_token
    from common.model.resolve import DEFAULT_MODEL
    adapter = find_adapter(cfg)
    validate_infer_config(cfg, adapter)
    cfg.dtype = cfg.dtype or dtype_of_record(adapter.train_config if adapter else {})  # as evaluate.py decodes
    if cfg.push_to_hub:
        hub_token()  # fail before any long load or merge
    model_name = cfg.model or (adapter.base_model if adapter and adapter.base_model else DEFAULT_MODEL)
    hf_logging.disable_progress_bar()  # per-tensor "Loading weights" bars would bury the output
    device = default_device()
    if cfg.merge_to or cfg.export_gguf or cfg.push_to_hub:
        return export(cfg, adapter, model_name, device)
    from common.inference.console import demo, interactive
    session = start_session(cfg, adapter, model_name, device)
    if cfg.demo:
        demo(session)
    elif cfg.prompt is not None:
        session.run(cfg.prompt)
    else:
        interactive(session, stdin or sys.stdin)
    return 0


def export(cfg: InferConfig, adapter, model_name: str, device) -> int:
    """--merge-to, --export-gguf, --push-to-hub: merge, export and upload; nothing is generated."""
    from common.model.export import export_to_gguf, merge, push_to_hub
    from common.model.load import load_tokenizer
    if cfg.push_to_hub and not (cfg.merge_to or cfg.export_gguf):
        push_to_hub(cfg.push_to_hub, adapter.path, cfg.private)
        return 0
    tokenizer = load_tokenizer(model_name)
    folder = merge(cfg, adapter, model_name, tokenizer, device) if cfg.merge_to else None
    if cfg.export_gguf:
        export_to_gguf(cfg, adapter, model_name, tokenizer, device, folder)
    if cfg.push_to_hub:
        push_to_hub(cfg.push_to_hub, folder or adapter.path, cfg.private)
    return 0


def start_session(cfg: InferConfig, adapter, model_name: str, device):
    """Load the model (and adapter) at the asked precision and say what was loaded; the generation session."""
    from common.inference.session import Session
    from common.inference.settings import unescape
    from common.model.export import load_adapter, merged_template
    from common.model.load import compute_dtype, load_model, load_tokenizer
    from common.text.protocols import train_format_of
    tokenizer = load_tokenizer(model_name)
    quant = cfg.quant or (adapter.quant if adapter and adapter.quant else "16bit")
    began = time.perf_counter()
    model = load_model(model_name, quant, device, cfg.dtype)
    if adapter:
        try:
            model = load_adapter(model, adapter)
        except RuntimeError as e:  # shape mismatches: an adapter made for another architecture
            raise UserError(f"{adapter.label} does not fit {model_name} ({first_line(e)[:160]}); pass the model "
                            "it was trained on with --model") from e
    recorded = adapter.template if adapter else merged_template(model_name)
    if cfg.template != "auto" and recorded and cfg.template != recorded:
        print(f"note: --template {cfg.template} differs from the training template {recorded}", file=sys.stderr)
    dtype = compute_dtype(quant, device, cfg.dtype)
    print(f"model {model_name} ({quant}, {str(dtype).replace('torch.', '')} on {device.type})"
          + (f" + adapter {adapter.label}" if adapter else "")
          + (f", template {recorded} (as in training)" if recorded and cfg.template == "auto" else "")
          + (f", loaded in {time.perf_counter() - began:.1f} s" if not cfg.quiet else ""), file=sys.stderr)
    stop = None if cfg.stop is None else [unescape(s) for s in cfg.stop if s]
    return Session(model, tokenizer, adapter, device, dtype, template=cfg.template,
                   temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                   max_new_tokens=cfg.max_new_tokens, stop=stop, seed=cfg.seed, show_speed=not cfg.quiet,
                   fp32_decoding=cfg.fp32_decoding,
                   compare=cfg.compare or cfg.demo, recorded_template=recorded,
                   train_format=train_format_of(adapter.train_config) if adapter else None)


if __name__ == "__main__":
    run_cli(main)

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
best/). `--model` and `--quant` default to what the adapter was trained with (run_config.json,
else adapter_config.json's base_model_name_or_path), else the embedded model at 16bit.

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
import re
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from common.model.adapters import Adapter, adapter_from_dir, adapter_from_run, check_base_model
from common.config import InferConfig
from common.errors import UserError, first_line, run_cli
from common.model.export import (check_export_targets, export_to_gguf, hub_token, load_adapter, merge,
                                 merged_template, push_to_hub)
from common.text.generation import extract_code, stop_criteria, stops_for_template
from common.judge.metrics import syntax_error_category
from common.model.resolve import DEFAULT_MODEL
from common.options import parse_config
from common.corpus.splits import Example
from common.text.prompts import TEMPLATES, choose_template, encode_prompt, render_prompt
from common.text.protocols import program, render, train_format_of
from common.text.streaming import StopAwareStreamer
from common.tracker import Tracker

CODE_STARTS = ("def ", "async def ", "class ", "import ", "from ", "@", "#")

DEMO_PROMPTS = [
    ("is_palindrome", 'def is_palindrome(text: str) -> bool:\n    """Return True if text reads the same forwards and '
                      'backwards, ignoring case.\n    >>> is_palindrome("Level")\n    True\n    """\n'),
    ("running_max", 'from typing import List\n\n\ndef running_max(numbers: List[int]) -> List[int]:\n    """Return the '
                    'largest value seen so far at each position.\n    >>> running_max([1, 3, 2, 5])\n    [1, 3, 3, 5]\n'
                    '    """\n'),
    ("count_vowels", 'def count_vowels(word: str) -> int:\n    """Count the vowels (a, e, i, o, u) in word, in either '
                     'case.\n    >>> count_vowels("Banana")\n    3\n    """\n'),
    ("fizzbuzz", 'def fizzbuzz(n: int) -> list:\n    """Return the strings for 1..n: "Fizz" for multiples of 3, "Buzz" '
                 'for multiples of 5,\n    "FizzBuzz" for both, else the number itself.\n    >>> fizzbuzz(5)\n'
                 '    [\'1\', \'2\', \'Fizz\', \'4\', \'Buzz\']\n    """\n'),
]

HELP = """commands (on their own line, before a prompt):
  /temp X            sampling temperature, 0 = greedy
  /max N             max new tokens
  /adapter on|off    use the adapter, or the base model alone
  /compare on|off    each prompt through the base model, then the adapter
  /template T        auto, plain, chat or alpaca
  /help, /quit
a prompt may span several lines; end it with a line holding only '.'"""


# ---------------------------------------------------------------------------- adapter and settings

def find_adapter(cfg) -> Adapter | None:
    if cfg.run_id is not None:
        if not Path(cfg.db).is_file():  # a Tracker would create an empty one
            raise UserError(f"no run tracker database {cfg.db}; pass --db, or --adapter DIR")
        tracker = Tracker(cfg.db)
        try:
            return adapter_from_run(tracker, cfg.db, cfg.run_id)
        finally:
            tracker.close()
    if cfg.adapter is not None:
        return adapter_from_dir(Path(cfg.adapter), cfg.adapter)
    return None


def unescape(text: str) -> str:
    return re.sub(r"\\([ntr\\])", lambda m: {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}[m.group(1)], text)


def validate(cfg, adapter: Adapter | None) -> None:
    if cfg.prompt is not None and not cfg.prompt.strip():
        raise UserError("empty --prompt; pass some text, or leave --prompt out for an interactive session")
    if cfg.temperature < 0:
        raise UserError(f"--temperature must be >= 0 (0 = greedy), got {cfg.temperature}")
    if not 0 < cfg.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {cfg.top_p}")
    if cfg.top_k < 0:
        raise UserError(f"--top-k must be >= 0 (0 = off), got {cfg.top_k}")
    if cfg.max_new_tokens <= 0:
        raise UserError(f"--max-new-tokens must be positive, got {cfg.max_new_tokens}")
    if cfg.demo and cfg.prompt is not None:
        raise UserError("--demo uses its own prompts; drop --prompt")
    if (cfg.merge_to or cfg.push_to_hub or cfg.export_gguf) and (cfg.prompt is not None or cfg.demo or cfg.compare):
        raise UserError("--merge-to, --export-gguf and --push-to-hub only merge, export and upload; drop "
                        "--prompt/--demo/--compare "
                        "(try a merged model with --model DIR)")
    if cfg.compare and adapter is None:
        raise UserError("--compare needs an adapter: pass --run-id N or --adapter DIR")
    if (cfg.merge_to or cfg.push_to_hub) and adapter is None:
        raise UserError(f"{'--merge-to' if cfg.merge_to else '--push-to-hub'} needs an adapter: "
                        "pass --run-id N or --adapter DIR")
    if cfg.private and not cfg.push_to_hub:
        raise UserError("--private only applies to --push-to-hub")
    if adapter:
        check_base_model(adapter, cfg.model)
    if cfg.merge_to:
        target = Path(cfg.merge_to)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise UserError(f"--merge-to {target} exists and is not an empty directory; pass a new directory")
    check_export_targets(cfg.merge_to, cfg.export_gguf)  # before the load and merge


# ---------------------------------------------------------------------------- generation

@dataclass
class Result:
    template: str
    completion: str        # the generated text, cut at the stop sequence
    code: str              # what was syntax-checked
    syntax: str | None     # None = ok, else the error category
    new_tokens: int
    seconds: float
    first_token_s: float | None


@dataclass
class Session:
    model: Any
    tokenizer: Any
    adapter: Adapter | None
    device: torch.device
    dtype: torch.dtype
    template: str = "auto"
    temperature: float = 0.0
    top_p: float = 0.95
    top_k: int = 0
    max_new_tokens: int = 256
    stop: list[str] | None = None      # None: the default for the template
    seed: int = 0
    show_speed: bool = True            # time to first token and tokens/s after each generation
    use_adapter: bool = True
    compare: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    recorded_template: str | None = None
    train_format: str | None = None      # the adapter's training format (common.text.protocols.train_format_of)
    prompts_done: int = 0

    def print(self, text: str = "", end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    def instruct_example(self, prompt: str) -> Example | None:
        """The prompt as a problem to render in the instruct format (base and adapter alike, so a comparison
        is fair), when the adapter was trained so."""
        if self.template != "auto" or self.train_format != "instruct" or not prompt.lstrip().startswith(CODE_STARTS):
            return None
        return Example("prompt", prompt if prompt.endswith("\n") else prompt + "\n", "", "completion")

    def template_for(self, prompt: str) -> tuple[str, str]:
        """(template, why) for this prompt."""
        if self.template != "auto":
            return self.template, "--template"
        if self.recorded_template:
            return self.recorded_template, "as in training"
        if prompt.lstrip().startswith(CODE_STARTS):
            return "plain", "auto: prompt starts with code"
        return choose_template(self.tokenizer, "instruction"), "auto: prompt is an instruction"

    def run(self, prompt: str) -> list[tuple[str, Result]]:
        """Generate for one prompt (with base and adapter when comparing); returns (side, result) pairs."""
        seed = self.seed + self.prompts_done
        self.prompts_done += 1
        if self.compare and self.adapter:
            sides = ["base", "adapter"]
        else:
            sides = ["adapter" if self.adapter and self.use_adapter else "base"]
        results = []
        for side in sides:
            if len(sides) > 1:
                label = "base model" if side == "base" else f"adapter ({self.adapter.label})"
                self.print(f"=== {label} ===")
            results.append((side, self.generate(prompt, side == "adapter", seed)))
        return results

    def generate(self, prompt: str, with_adapter: bool, seed: int) -> Result:
        from transformers import set_seed

        from common.train.steps import autocast
        template, why = self.template_for(prompt)
        instruct = self.instruct_example(prompt)
        if instruct:  # a code prompt to an adapter trained in the instruct format: its training prompt
            rendered_prompt = render(self.tokenizer, instruct, "instruct")
            template, why, rendered = rendered_prompt.template, "instruct format, as in training", rendered_prompt.text
            stops = list(self.stop) if self.stop is not None else list(rendered_prompt.stops)
        else:
            if template != "plain":
                prompt = prompt.strip()  # instructions were trained without trailing newlines
            stops = list(self.stop) if self.stop is not None else list(stops_for_template(template))
            rendered = render_prompt(self.tokenizer, prompt, template)
        tokenizer = self.tokenizer
        ids = encode_prompt(tokenizer, rendered, template)
        if self.show_speed:
            self.print(f"--- template {template} ({why}), {len(ids)} prompt tokens")
        if template == "plain":
            self.print(prompt, end="")
        streamer = StopAwareStreamer(tokenizer, stops, lambda s: self.print(s, end=""), rendered)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        sampling = ({"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
                    if self.temperature > 0 else
                    {"do_sample": False, "temperature": None, "top_p": None, "top_k": None})
        base_only = self.adapter is not None and not with_adapter
        criteria = stop_criteria(tokenizer, tuple(stops))
        set_seed(seed)
        self.model.eval()
        began = time.perf_counter()
        with torch.inference_mode(), autocast(self.device, self.dtype), \
                (self.model.disable_adapter() if base_only else nullcontext()):
            out = self.model.generate(
                input_ids=torch.tensor([ids], device=self.device),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=self.device),
                max_new_tokens=self.max_new_tokens, pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id,
                use_cache=True, stopping_criteria=criteria, streamer=streamer, **sampling)
        seconds = time.perf_counter() - began
        completion = streamer.text()
        if not ((prompt if template == "plain" else "") + completion).endswith("\n"):
            self.print()
        if instruct:
            code = program(instruct, "instruct", completion)
            self.print("--- the program (sanitized answer with the prompt's imports):")
            self.print(code, end="" if code.endswith("\n") else "\n")
        elif template == "plain":
            code = prompt + completion
        else:
            code = extract_code(completion)
            if code != completion:
                self.print("--- extracted code:")
                self.print(code, end="" if code.endswith("\n") else "\n")
        result = Result(template, completion, code, syntax_error_category(code), out.shape[1] - len(ids), seconds,
                        None if streamer.first_token_at is None else streamer.first_token_at - began)
        self.print(f"--- {describe_syntax(result.syntax)}")
        if self.show_speed:
            self.print(f"--- {speed_line(result)}")
        return result

    def command(self, line: str) -> bool:
        """Apply an interactive /command; False when it asks to quit."""
        name, _, value = line.strip().partition(" ")
        value = value.strip()
        try:
            if name in ("/quit", "/exit"):
                return False
            if name == "/help":
                self.print(HELP)
            elif name == "/temp":
                number = float(value)
                if number < 0:
                    raise ValueError
                self.temperature = number
                self.print(f"temperature {number:g}" + (" (greedy)" if number == 0 else ""))
            elif name == "/max":
                number = int(value)
                if number <= 0:
                    raise ValueError
                self.max_new_tokens = number
                self.print(f"max new tokens {number}")
            elif name in ("/adapter", "/compare"):
                if value not in ("on", "off"):
                    raise ValueError
                if self.adapter is None:
                    self.print("no adapter loaded (start with --run-id N or --adapter DIR); using the base model")
                elif name == "/adapter":
                    self.use_adapter = value == "on"
                    self.print(f"adapter {value}" + ("" if self.use_adapter else ": base model only"))
                else:
                    self.compare = value == "on"
                    self.print(f"compare {value}")
            elif name == "/template":
                if value not in ("auto", *TEMPLATES):
                    raise ValueError
                self.template = value
                self.print(f"template {value}")
            else:
                self.print(f"unknown command {name}; /help lists them")
        except ValueError:
            usage = {"/temp": "/temp X (X >= 0)", "/max": "/max N (N > 0)", "/adapter": "/adapter on|off",
                     "/compare": "/compare on|off", "/template": "/template auto|plain|chat|alpaca"}
            self.print(f"usage: {usage[name]}")
        return True


def describe_syntax(category: str | None) -> str:
    return "syntax ok" if category is None else f"syntax error: {category}"


def speed_line(result: Result) -> str:
    line = f"{result.new_tokens} tokens in {result.seconds:.2f} s"
    if result.first_token_s is not None:
        line += f"; time to first token {result.first_token_s:.3f} s"
        if result.new_tokens > 1 and result.seconds > result.first_token_s:
            line += f", then {(result.new_tokens - 1) / (result.seconds - result.first_token_s):.1f} tokens/s"
    return line + f" ({result.new_tokens / max(result.seconds, 1e-9):.1f} tokens/s overall)"


def interactive(session: Session, stdin: TextIO) -> None:
    tty = stdin.isatty()
    if tty:
        session.print("end a prompt with a line holding only '.'; /help for commands, /quit or Ctrl-D to leave")
    lines: list[str] = []
    while True:
        if tty:
            session.print("... " if lines else ">>> ", end="")
        line = stdin.readline()
        if not line:  # end of input: run what is pending, then leave
            if "".join(lines).strip():
                _run_interactive(session, "".join(lines))
            if tty:
                session.print()
            return
        if not lines and line.startswith("/"):
            if not session.command(line):
                return
            continue
        if line.strip() == ".":
            prompt, lines = "".join(lines), []
            if prompt.strip():
                _run_interactive(session, prompt)
            else:
                session.print("empty prompt: type some text first, then a line holding only '.'")
            continue
        lines.append(line if line.endswith("\n") else line + "\n")


def _run_interactive(session: Session, prompt: str) -> None:
    try:
        session.run(prompt)
    except KeyboardInterrupt:
        session.print("\n(generation interrupted)")


def demo(session: Session) -> None:
    rows = []
    for name, prompt in DEMO_PROMPTS:
        session.print(f"##### {name}")
        rows.append((name, session.run(prompt)))
        session.print()
    sides = [side for side, _ in rows[0][1]]
    width = max(len(name) for name, _ in rows) + 2
    session.print(("summary".ljust(width) + "".join(side.ljust(28) for side in sides)).rstrip())
    for name, results in rows:
        session.print((name.ljust(width) + "".join(
            f"{describe_syntax(r.syntax)}, {r.new_tokens} tok".ljust(28) for _, r in results)).rstrip())


# ---------------------------------------------------------------------------- main

def main(argv: list[str] | None = None, stdin: TextIO | None = None) -> int:
    cfg = parse_config(InferConfig, argv, __doc__.split("\n\n")[0],
                       removed={"--verbose": "the speed line is shown by default now; --quiet hides it"})
    adapter = find_adapter(cfg)
    validate(cfg, adapter)
    if cfg.push_to_hub:
        hub_token()  # fail before any long load or merge
    model_name = cfg.model or (adapter.base_model if adapter and adapter.base_model else DEFAULT_MODEL)

    from transformers.utils import logging as hf_logging

    from common.env import default_device
    from common.model.load import compute_dtype, load_model, load_tokenizer
    hf_logging.disable_progress_bar()  # per-tensor "Loading weights" bars would bury the output
    device = default_device()
    if cfg.push_to_hub and not (cfg.merge_to or cfg.export_gguf):
        push_to_hub(cfg.push_to_hub, adapter.path, cfg.private)
        return 0
    tokenizer = load_tokenizer(model_name)
    if cfg.merge_to or cfg.export_gguf:
        folder = merge(cfg, adapter, model_name, tokenizer, device) if cfg.merge_to else None
        if cfg.export_gguf:
            export_to_gguf(cfg, adapter, model_name, tokenizer, device, folder)
        if cfg.push_to_hub:
            push_to_hub(cfg.push_to_hub, folder or adapter.path, cfg.private)
        return 0

    quant = cfg.quant or (adapter.quant if adapter and adapter.quant else "16bit")
    began = time.perf_counter()
    model = load_model(model_name, quant, device)
    if adapter:
        try:
            model = load_adapter(model, adapter)
        except RuntimeError as e:  # shape mismatches: an adapter made for another architecture
            raise UserError(f"{adapter.label} does not fit {model_name} ({first_line(e)[:160]}); pass the model "
                            "it was trained on with --model") from e
    recorded = adapter.template if adapter else merged_template(model_name)
    if cfg.template != "auto" and recorded and cfg.template != recorded:
        print(f"note: --template {cfg.template} differs from the training template {recorded}", file=sys.stderr)
    dtype = compute_dtype(quant, device)
    print(f"model {model_name} ({quant}, {str(dtype).replace('torch.', '')} on {device.type})"
          + (f" + adapter {adapter.label}" if adapter else "")
          + (f", template {recorded} (as in training)" if recorded and cfg.template == "auto" else "")
          + (f", loaded in {time.perf_counter() - began:.1f} s" if not cfg.quiet else ""), file=sys.stderr)
    stop = None if cfg.stop is None else [unescape(s) for s in cfg.stop if s]
    session = Session(model, tokenizer, adapter, device, dtype, template=cfg.template,
                      temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                      max_new_tokens=cfg.max_new_tokens, stop=stop, seed=cfg.seed, show_speed=not cfg.quiet,
                      compare=cfg.compare or cfg.demo, recorded_template=recorded,
                      train_format=train_format_of(adapter.train_config) if adapter else None)
    if cfg.demo:
        demo(session)
    elif cfg.prompt is not None:
        session.run(cfg.prompt)
    else:
        interactive(session, stdin or sys.stdin)
    return 0


if __name__ == "__main__":
    run_cli(main)

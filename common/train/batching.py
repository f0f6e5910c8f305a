"""Turn encoded examples into training batches without padding to a fixed length.

Two layouts, both deterministic in (seed, epoch) so a resumed run sees the
same batches in the same order:

- length-grouped (default): shuffle, cut into mega-batches of 64 batches, sort
  each by length, batch, shuffle the batches; each batch is padded only to its
  own longest example (dynamic padding).
- packed (`--packing`): examples are concatenated into rows of at most
  max_seq_len tokens. Position ids restart at 0 for every example and no
  attention mask is passed, so transformers builds a block-diagonal causal mask
  from the position ids: no attention and no loss cross an example boundary.

With a token budget (`max_tokens`), a batch is not a fixed number of rows:
rows, in length order, join a batch while rows x its longest row (the
positions the step computes, padding included) stays <= max_tokens. The
largest step, which sets peak activation memory, is then bounded by the budget
instead of by batch_size x the longest example; short examples go in larger
batches. Callers that normalise the loss by label tokens (train.py does) need
nothing else.
"""
import random
from typing import Any

import torch

from common.errors import UserError
from common.text.prompts import IGNORE_INDEX

Batch = dict[str, torch.Tensor]


def epoch_batches(examples: list[dict[str, Any]], batch_size: int, seed: int, epoch: int, packing: bool,
                  max_seq_len: int, max_tokens: int | None = None) -> list[list[list[int]]]:
    """The batches of one epoch as lists of rows, each row a list of example indices. With max_tokens, batches
    are cut by the token budget (module docstring) and batch_size only sets the length-grouping window."""
    if max_tokens is not None and max_tokens < max_seq_len:
        raise UserError(f"--max-tokens {max_tokens} is below --max-seq-len {max_seq_len}: the longest example "
                        "would not fit in a step; raise it")
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(examples)))
    rng.shuffle(order)
    length = lambda i: len(examples[i]["input_ids"])  # noqa: E731
    if packing:
        rows = pack_rows([length(i) for i in order], max_seq_len)
        rows = [[order[j] for j in row] for row in rows]
        if max_tokens is None:
            batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
        else:
            rows.sort(key=lambda row: sum(length(i) for i in row))
            cuts = budget_cuts([sum(length(i) for i in row) for row in rows], max_tokens)
            batches = [rows[a:b] for a, b in zip(cuts, cuts[1:])]
    else:
        mega = batch_size * 64
        batches = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start:start + mega], key=length)
            cuts = (list(range(0, len(chunk), batch_size)) + [len(chunk)] if max_tokens is None
                    else budget_cuts([length(i) for i in chunk], max_tokens))
            batches += [[[i] for i in chunk[a:b]] for a, b in zip(cuts, cuts[1:])]
    rng.shuffle(batches)
    return batches


def budget_cuts(sorted_lengths: list[int], max_tokens: int) -> list[int]:
    """Boundaries [0, ..., n] of greedy batches over ascending lengths: a batch of k rows ending at row j
    computes k x sorted_lengths[j] positions, kept <= max_tokens (a row longer than the budget stands alone)."""
    cuts = [0]
    for j, n in enumerate(sorted_lengths):
        if j > cuts[-1] and (j - cuts[-1] + 1) * n > max_tokens:
            cuts.append(j)
    return cuts + [len(sorted_lengths)] if sorted_lengths else cuts


def pack_rows(lengths: list[int], max_seq_len: int) -> list[list[int]]:
    """Greedy first-fit in the given order: indices into `lengths`, each row summing to <= max_seq_len."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i, n in enumerate(lengths):
        slot = next((r for r, free in enumerate(room) if free >= n), None)
        if slot is None:
            rows.append([i])
            room.append(max_seq_len - n)
        else:
            rows[slot].append(i)
            room[slot] -= n
    return rows


def collate(examples: list[dict[str, Any]], rows: list[list[int]], pad_id: int, packing: bool) -> Batch:
    """Right-padded tensors for one batch; packed rows carry per-example position ids instead of a mask."""
    ids, labels, positions = [], [], []
    for row in rows:
        ids.append([t for i in row for t in examples[i]["input_ids"]])
        labels.append([t for i in row for t in examples[i]["labels"]])
        positions.append([p for i in row for p in range(len(examples[i]["input_ids"]))])
    width = max(len(r) for r in ids)
    batch = {
        "input_ids": torch.tensor([r + [pad_id] * (width - len(r)) for r in ids]),
        "labels": torch.tensor([r + [IGNORE_INDEX] * (width - len(r)) for r in labels]),
        "position_ids": torch.tensor([r + list(range(len(r), width)) for r in positions]),
    }
    if not packing:
        batch["attention_mask"] = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids])
    return batch


def label_tokens(batch: Batch) -> int:
    """Tokens that carry loss: labels after the causal shift (position t predicts token t+1)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def real_tokens(examples: list[dict[str, Any]], rows: list[list[int]]) -> int:
    """Non-padding tokens in a batch: what tokens/s is measured in."""
    return sum(len(examples[i]["input_ids"]) for row in rows for i in row)

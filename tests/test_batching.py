"""Batching: packing is exact (same loss as unpacked), length-grouping is deterministic."""
import torch
from transformers import AutoModelForCausalLM

from common.train.batching import collate, epoch_batches, label_tokens, pack_rows, real_tokens
from common.text.prompts import IGNORE_INDEX
from common.train.steps import CompletionLoss


def fake_examples(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(6, 40, (1,), generator=g))
        ids = torch.randint(10, 1000, (length,), generator=g).tolist()
        cut = length // 3
        out.append({"id": str(i), "input_ids": ids, "labels": [IGNORE_INDEX] * cut + ids[cut:]})
    return out


def test_packed_and_unpacked_training_give_the_same_loss(tiny_model):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    loss_fn = CompletionLoss(model)
    examples = fake_examples(12)
    rows = pack_rows([len(e["input_ids"]) for e in examples], 96)
    assert len(rows) < len(examples)  # something was actually packed together
    packed = collate(examples, rows, 0, packing=True)
    unpacked = collate(examples, [[i] for i in range(len(examples))], 0, packing=False)
    assert label_tokens(packed) == label_tokens(unpacked)
    loss_p, n_p = loss_fn(**packed)
    loss_u, n_u = loss_fn(**unpacked)
    assert int(n_p) == int(n_u)
    torch.testing.assert_close(loss_p / n_p, loss_u / n_u, rtol=1e-5, atol=1e-5)
    grads_p = torch.autograd.grad(loss_p, [p for p in model.parameters()][1])[0]
    grads_u = torch.autograd.grad(loss_u, [p for p in model.parameters()][1])[0]
    torch.testing.assert_close(grads_p, grads_u, rtol=1e-4, atol=1e-6)


def test_pack_rows_respects_capacity_and_keeps_every_example():
    lengths = [30, 70, 20, 50, 90, 10, 40]
    rows = pack_rows(lengths, 100)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 100 for row in rows)


def test_batches_are_deterministic_per_epoch_and_grouped_by_length():
    examples = fake_examples(200)
    a = epoch_batches(examples, 4, seed=1, epoch=0, packing=False, max_seq_len=64)
    assert a == epoch_batches(examples, 4, seed=1, epoch=0, packing=False, max_seq_len=64)
    assert a != epoch_batches(examples, 4, seed=1, epoch=1, packing=False, max_seq_len=64)
    padded = sum(max(len(examples[r[0]]["input_ids"]) for r in b) * len(b) for b in a)
    real = sum(real_tokens(examples, b) for b in a)
    assert padded / real < 1.1  # length grouping keeps dynamic padding small


def test_dynamic_padding_pads_only_to_the_batch_maximum():
    examples = fake_examples(4)
    batch = collate(examples, [[0], [1], [2], [3]], 0, packing=False)
    assert batch["input_ids"].shape[1] == max(len(e["input_ids"]) for e in examples)
    assert int(batch["attention_mask"].sum()) == real_tokens(examples, [[0], [1], [2], [3]])

"""Generation: stop sequences, code extraction, and batched == one-at-a-time greedy output."""
import torch
from transformers import AutoModelForCausalLM

from common.text.generation import STOP_SEQUENCES, cut_completion, extract_code, find_stop, generate, stop_criteria
from common.text.prompts import encode_prompt
from common.model.load import load_tokenizer


def test_stop_sequences_cut_the_completion_including_ones_that_start_in_the_prompt():
    assert cut_completion("def f():\n", "    return 1\ndef g():", STOP_SEQUENCES) == "    return 1"
    assert cut_completion("def f():\n", "```", STOP_SEQUENCES) == ""  # "\n```" spans prompt and completion
    assert cut_completion("# note\nif x:\n", "    y = 1\n", STOP_SEQUENCES) == "    y = 1\n"  # stop wholly in prompt
    assert cut_completion("def f():\n", "    return 1\n\nprint(f())", STOP_SEQUENCES) == "    return 1\n"
    # The earliest stop wins, whatever its place in the list, and is reported.
    assert find_stop("def f():\n", "    x = 1\n# c\ndef g():", STOP_SEQUENCES) == ("    x = 1", "\n#")
    assert find_stop("def f():\n", "```", STOP_SEQUENCES) == ("", "\n```")
    assert find_stop("def f():\n", "    return 1", STOP_SEQUENCES) == ("    return 1", None)


def test_code_is_extracted_from_fenced_chat_answers():
    answer = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nHope it helps."
    assert extract_code(answer) == "def add(a, b):\n    return a + b\n"
    assert extract_code("def f(): pass") == "def f(): pass"


def _usual_loop(model, tokenizer, prompts: list[str], max_new_tokens: int, stops: tuple[str, ...]) -> list[str]:
    """What evaluation scripts usually do: model.generate one prompt at a time, then cut at the stop."""
    texts = []
    for prompt in prompts:
        ids = torch.tensor([encode_prompt(tokenizer, prompt, "plain")])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                             stopping_criteria=stop_criteria(tokenizer, stops))
        texts.append(cut_completion(prompt, tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True), stops))
    return texts


def _varied_model(path: str):
    """The tiny model with larger random weights: its greedy output varies instead of repeating one token."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def test_batched_greedy_equals_model_generate_one_prompt_at_a_time(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    model = _varied_model(tiny_model)
    prompts = ["def add(a, b):\n", "import os\n\ndef list_files(path):\n    \"\"\"List files.\"\"\"\n", "x = 1\n",
               "class Stack:\n    def push(self, item):\n"]
    unstopped = _usual_loop(model, tokenizer, prompts, 12, ())
    # A stop string from the middle of one completion makes that row leave the batch early while the rest go on.
    stops = (unstopped[1][len(unstopped[1]) // 2:][:3],)
    for stop in ((), stops):
        expected = _usual_loop(model, tokenizer, prompts, 12, stop)
        batched = generate(model, tokenizer, prompts, max_new_tokens=12, batch_size=4, stop=stop)
        assert [g.text for g in batched] == expected
        assert [g.ended for g in batched] == (["length"] * 4 if not stop else
                                              [f"stop {stop[0]!r}" if len(e) < len(u) else "length"
                                               for e, u in zip(expected, unstopped)])
    assert len(expected[1]) < len(unstopped[1])
    assert [g.new_tokens for g in generate(model, tokenizer, prompts, max_new_tokens=12, stop=())] == [12] * 4


def test_sampling_is_seeded_and_bounded(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    model = _varied_model(tiny_model)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(generate(model, tokenizer, ["def f(x):\n"] * 3, max_new_tokens=8, temperature=0.8, top_p=0.9,
                             top_k=50, stop=()))
    assert [g.text for g in runs[0]] == [g.text for g in runs[1]]
    assert all(0 < g.new_tokens <= 8 for g in runs[0])
    assert len({g.text for g in runs[0]}) > 1  # three samples of one prompt differ


def test_fp32_decoding_gives_the_same_greedy_text_at_every_batch_size_and_restores_the_weights(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    model = _varied_model(tiny_model).to(torch.bfloat16)
    reference = _varied_model(tiny_model)  # the same weights in fp32, rounded through bf16 as the model's are
    reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    prompts = ["def add(a, b):\n", "import os\n\ndef list_files(path):\n", "x = 1\n"]
    expected = [g.text for g in generate(reference, tokenizer, prompts, max_new_tokens=10, batch_size=1, stop=())]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as evaluate.py calls it: fp32 decoding turns autocast off
        for batch_size in (1, 3):
            texts = [g.text for g in generate(model, tokenizer, prompts, max_new_tokens=10, batch_size=batch_size,
                                              stop=(), fp32=True)]
            assert texts == expected
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model.train()
    loss = model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss
    loss.backward()  # the weights are ordinary tensors again, not inference-mode ones
    assert model.get_input_embeddings().weight.grad is not None

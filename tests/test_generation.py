"""Generation: stop sequences, code extraction, and continuous batching == one-at-a-time greedy output."""
import pytest
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


def _reference(model, tokenizer, prompts: list[str], max_new_tokens: int, stops: tuple[str, ...],
               template: str = "plain") -> list[tuple[str, int, str]]:
    """What evaluation scripts usually do: model.generate one prompt at a time, then cut at the stop.

    Per prompt: the text, the tokens generated (EOS included) and why it ended, as Generation has them."""
    results = []
    for prompt in prompts:
        ids = torch.tensor([encode_prompt(tokenizer, prompt, template)])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                             stopping_criteria=stop_criteria(tokenizer, stops))
        new = out[0, ids.shape[1]:].tolist()
        text, matched = find_stop(prompt, tokenizer.decode(new, skip_special_tokens=True), stops)
        ended = "eos" if new[-1] == tokenizer.eos_token_id else f"stop {matched!r}" if matched else "length"
        results.append((text, len(new), ended))
    return results


def _usual_loop(model, tokenizer, prompts: list[str], max_new_tokens: int, stops: tuple[str, ...]) -> list[str]:
    return [text for text, _, _ in _reference(model, tokenizer, prompts, max_new_tokens, stops)]


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


_MIXED = ["def add(a, b):\n", "x = 1\n", "import os\n\ndef list_files(path):\n    \"\"\"List files.\"\"\"\n",
          "class Stack:\n    def push(self, item):\n", "#", "def fib(n):\n    if n < 2:\n        return n\n",
          "for i in range(10):\n    print(i, i * i, sep=', ')\n"]


@pytest.fixture(scope="module")
def mixed(tiny_model):
    """The varied tiny model, a tokenizer whose EOS and stop strings come from the middle of some greedy
    completions (so rows end at different steps, each way: EOS, a stop sequence, the length limit), the stops,
    and model.generate's results one prompt at a time."""
    tokenizer = load_tokenizer(tiny_model)
    model = _varied_model(tiny_model)
    unstopped = [tokenizer.encode(text, add_special_tokens=False) for text in _usual_loop(model, tokenizer, _MIXED,
                                                                                        16, ())]
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(unstopped[0][5])
    stops = tuple(s for s in (tokenizer.decode(ids[k:k + 1]) for ids, k in zip(unstopped[2:4], (3, 9))) if s.strip())
    return model, tokenizer, stops, _reference(model, tokenizer, _MIXED, 16, stops)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_continuous_batching_greedy_equals_one_at_a_time_with_eos_stops_and_lengths(mixed, batch_size):
    model, tokenizer, stops, expected = mixed
    assert {ended.split()[0] for _, _, ended in expected} == {"eos", "stop", "length"}
    assert len({tokens for _, tokens, _ in expected}) >= 4  # rows finish at different steps
    got = generate(model, tokenizer, _MIXED, max_new_tokens=16, batch_size=batch_size, stop=stops)
    assert [(g.text, g.new_tokens, g.ended) for g in got] == expected
    assert all(g.seconds > 0 for g in got)


def test_finished_rows_are_replaced_so_decode_steps_stay_full_while_prompts_wait(mixed):
    model, tokenizer, stops, _ = mixed
    prompts = _MIXED * 2
    calls: list[tuple[int, bool]] = []  # (rows, whether a prefill: an empty cache) of every forward call
    hook = model.register_forward_pre_hook(lambda _, args, kwargs: calls.append(
        (len(kwargs["input_ids"]), kwargs["past_key_values"].get_seq_length() == 0)), with_kwargs=True)
    got = generate(model, tokenizer, prompts, max_new_tokens=16, batch_size=3, stop=stops)
    hook.remove()
    rounds: list[list[int]] = []  # [rows decoded, rows admitted] per round: a decode step, then any prefill
    for rows, prefill in calls:
        if prefill and rounds:
            rounds[-1][1] += rows
        else:
            rounds.append([0, rows] if prefill else [rows, 0])
    assert sum(admitted for _, admitted in rounds) == len(prompts)  # each prompt prefilled once
    assert sum(decoded for decoded, _ in rounds) == sum(g.new_tokens for g in got) - len(prompts)  # + first tokens
    # Every row that ends is replaced in the same round while prompts wait; after the last admission the batch
    # only shrinks: no step runs for a finished row.
    live = [decoded + admitted for decoded, admitted in rounds]
    last_admission = max(k for k, (_, admitted) in enumerate(rounds) if admitted)
    assert set(live[:last_admission]) == {3}
    assert live[last_admission:] == sorted(live[last_admission:], reverse=True)
    assert last_admission > 16  # past the first batch's max_new_tokens: prompts were admitted mid-run


@pytest.mark.slow
def test_continuous_batching_on_real_prompts_of_the_embedded_model():
    from common.corpus.splits import load_humaneval
    from common.model.load import load_model
    from common.text.protocols import render

    tokenizer = load_tokenizer("smollm2-135m")
    model = load_model("smollm2-135m", "32bit", torch.device("cpu"))
    prompts = [render(tokenizer, problem, "completion") for problem in load_humaneval()[:4]]
    texts, stops = [p.text for p in prompts], prompts[0].stops
    expected = _reference(model, tokenizer, texts, 20, stops)
    got = generate(model, tokenizer, texts, max_new_tokens=20, batch_size=2, stop=stops)
    assert [(g.text, g.new_tokens, g.ended) for g in got] == expected
    assert len({tokens for _, tokens, _ in expected}) > 1  # rows left the batch at different steps


def test_sampling_is_seeded_and_bounded(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    model = _varied_model(tiny_model)
    for batch_size, stop in ((8, ()), (2, ("e",))):  # the second admits prompts into a running batch
        runs = []
        for _ in range(2):
            torch.manual_seed(3)
            runs.append(generate(model, tokenizer, ["def f(x):\n"] * 5, max_new_tokens=8, temperature=0.8,
                                 top_p=0.9, top_k=50, batch_size=batch_size, stop=stop))
        assert [(g.text, g.ended) for g in runs[0]] == [(g.text, g.ended) for g in runs[1]]
        assert all(0 < g.new_tokens <= 8 for g in runs[0])
        assert len({g.text for g in runs[0]}) > 1  # five samples of one prompt differ
        assert len({g.new_tokens for g in runs[0]}) > (1 if stop else 0)  # with the stop, rows end apart


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

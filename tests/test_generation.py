"""Generation: stop sequences, code extraction, and batched == one-at-a-time greedy output."""
import torch
from transformers import AutoModelForCausalLM

from common.generation import STOP_SEQUENCES, cut_completion, extract_code, generate
from common.quant import load_tokenizer


def test_stop_sequences_cut_the_completion_including_ones_that_start_in_the_prompt():
    assert cut_completion("def f():\n", "    return 1\ndef g():", STOP_SEQUENCES) == "    return 1"
    assert cut_completion("def f():\n", "```", STOP_SEQUENCES) == ""  # "\n```" spans prompt and completion
    assert cut_completion("# note\nif x:\n", "    y = 1\n", STOP_SEQUENCES) == "    y = 1\n"  # stop wholly in prompt
    assert cut_completion("def f():\n", "    return 1\n\nprint(f())", STOP_SEQUENCES) == "    return 1\n"


def test_code_is_extracted_from_fenced_chat_answers():
    answer = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nHope it helps."
    assert extract_code(answer) == "def add(a, b):\n    return a + b\n"
    assert extract_code("def f(): pass") == "def f(): pass"


def test_batched_greedy_equals_one_prompt_at_a_time(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    prompts = ["def add(a, b):\n", "import os\n\ndef list_files(path):\n    \"\"\"List files.\"\"\"\n", "x = 1\n",
               "class Stack:\n    def push(self, item):\n"]
    batched = generate(model, tokenizer, prompts, max_new_tokens=12, batch_size=4)
    single = [generate(model, tokenizer, [p], max_new_tokens=12, batch_size=1)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in single]
    assert all(g.new_tokens > 0 for g in batched)

"""Stage 2, text: how an example becomes tokens, a problem becomes a prompt, and an answer becomes a program.

    prompts.py     prompt templates (completion, instruct/chat) and tokenization with completion-only labels
    protocols.py   evaluation protocols: prompt a problem, turn the generation into a program
    sanitize.py    extract a program from an answer (fences, prose, truncation)
    generation.py  batched generation: left padding, KV cache, stop sequences
    llamacpp.py    greedy generation by llama.cpp from a GGUF (evaluate.py --engine llama.cpp; optional package)
    streaming.py   print a generation as it grows (infer.py)

Imports the core and the data stage.
"""

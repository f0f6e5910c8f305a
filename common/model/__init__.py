"""Stage 1, model: which weights, at which precision, with which adapter, and how they leave the toolkit.

    resolve.py      --model -> a loadable directory (embedded name, local directory, hub id)
    load.py         load a causal LM and tokenizer at --quant (32bit, 16bit, 8bit, 4bit NF4)
    lora.py         attach LoRA: validate rank/alpha/dropout, map --modules to the architecture
    adapters.py     find a trained adapter and its training settings (run id or directory)
    export.py       merge an adapter into its base, export GGUF, push to the hub
    gguf_export.py  write a merged model as one GGUF file for llama.cpp and Ollama

Imports only the core (common/*.py).
"""

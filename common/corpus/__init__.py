"""Stage 1, data: where training examples and benchmark problems come from.

    splits.py          load a --dataset spec as `Example`s; deterministic train/val/test splits by group;
                       HumanEval decontamination; benchmark problem files
    formats.py         a user's rows (jsonl/csv/parquet, chat, alpaca, sharegpt...) -> `Example`s
    apps.py            APPS problems with stdin/stdout tests (`apps:<path>`)
    stdlib_pairs.py    docstring -> function pairs mined from the interpreter's standard library (the default)
    dedup.py           near-duplicate detection (MinHash-LSH, exact Jaccard)
    hub_benchmarks.py  MBPP, HumanEval+, MBPP+ from the hub or a local copy

Imports only the core (common/*.py).
"""

"""The benchmarks evaluate.py scores: HumanEval, the held-out split of the training data, problem files.

A Benchmark holds its problems (common.corpus.splits.Example), the prompt template of each, and a `key`:
what makes results on it comparable across runs (source, file hash, split seed, templates,
max_seq_len). Two evaluations are paired only when their keys are equal.
"""
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import UserError
from common.corpus.hub_benchmarks import is_hub_benchmark, load_hub_benchmark
from common.paths import sha256_file

BUILTIN_BENCHMARKS = ("humaneval", "heldout")   # and the hub's: common/corpus/hub_benchmarks.py


@dataclass
class Benchmark:
    name: str
    problems: list                       # common.corpus.splits.Example
    key: dict                            # what makes results on it comparable across runs
    prompts: dict = field(default_factory=dict)     # problem id -> common.text.protocols.Prompt
    encoded: list = field(default_factory=list)     # heldout: tokenized references for perplexity
    too_long: int = 0                    # heldout references longer than --max-seq-len


def parse_benchmarks(spec: str) -> list[str]:
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        raise UserError("--benchmark is empty; use humaneval, heldout, mbpp, humaneval+, mbpp+ or a .jsonl file "
                        "(comma-separated)")
    for name in names:
        if name not in BUILTIN_BENCHMARKS and not is_hub_benchmark(name) and not Path(name).is_file():
            raise UserError(f"unknown benchmark {name!r}: use humaneval, heldout, mbpp, humaneval+, mbpp+, or an "
                            "existing .jsonl file")
    if len(set(names)) != len(names):
        raise UserError(f"--benchmark {spec} names a benchmark twice")
    return names


def load_benchmark(spec: str, limit: int | None, dataset: str, split_seed: int, group_key: str | None = None,
                   decontaminate: str = "") -> Benchmark:
    """A benchmark by name; 'heldout' is the test split `train.py` drew with the same data options."""
    from common.corpus.splits import load_humaneval, load_splits, read_benchmark_file

    if spec == "humaneval":
        return Benchmark("humaneval", load_humaneval()[:limit], {"source": "humaneval"})
    if spec == "heldout":
        files = [f for f in decontaminate.split(",") if f.strip()]
        splits = load_splits(dataset, split_seed=split_seed, group_key=group_key, benchmark_files=files)
        return Benchmark("heldout", splits.test[:limit], {"source": splits.source, "split_seed": split_seed,
                                                          "group_key": splits.group_key, "decontaminate": files})
    if is_hub_benchmark(spec):
        problems, key = load_hub_benchmark(spec)
        return Benchmark(spec.split(":", 1)[0], problems[:limit], key)
    name = Path(spec).name if Path(spec).name not in BUILTIN_BENCHMARKS else spec
    return Benchmark(name, read_benchmark_file(spec)[:limit],
                     {"source": str(Path(spec).resolve()), "sha256": sha256_file(spec)})


def prepare_benchmark(bench: Benchmark, tokenizer, protocol: str, decode: str, max_seq_len: int) -> None:
    """Render every problem under `protocol` (a concrete one); for heldout, tokenize the references for
    perplexity in the matching training format. The protocol and decoding precision join the key."""
    from common.text.prompts import choose_template, encode_examples
    from common.text.protocols import render

    bench.prompts = {p.id: render(tokenizer, p, protocol) for p in bench.problems}
    bench.key.update(protocol=protocol, decode=decode,
                     templates=sorted({prompt.template for prompt in bench.prompts.values()}))
    if bench.name != "heldout":
        return
    bench.key["max_seq_len"] = max_seq_len
    form = "instruct" if protocol == "instruct" else "completion"
    for style in sorted({p.style for p in bench.problems}):
        group = [p for p in bench.problems if p.style == style]
        encoded, dropped = encode_examples(tokenizer, group, choose_template(tokenizer, style, form), max_seq_len,
                                           format=form)
        bench.encoded += encoded
        bench.too_long += dropped

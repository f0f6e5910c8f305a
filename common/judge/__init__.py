"""Stage 4, judge: score generated samples and compare evaluations.

    benchmarks.py  the benchmarks evaluate.py scores: HumanEval, held-out split, problem files, hub benchmarks
    samples.py     samples.json beside every evaluation, and --samples files
    verdicts.py    run samples in the sandbox, check syntax, score against references
    testcases.py   graded execution: the fraction of a problem's test cases a program passes
    metrics.py     pass@k, syntax-error categories, BLEU/chrF
    scoring.py     one evaluation's scores from its per-sample records; paired differences vs the base
    stats.py       intervals, paired tests, power, cluster bootstraps

Imports the core and the sandbox, data and text stages.
"""

"""Stage 5, study: suites of runs, their plan and execution, and the report built from the database.

    suites.py        suites (built-in YAML under data/suites/builtin/ and users' files) and how they expand into runs
    plan.py          a sweep's plan and what the database says about each run
    runner.py        run a plan: train.py then evaluate.py per adapter, as child processes, resumable
    budget.py        a sweep's --estimate/--budget-mb, and predicted-vs-measured rows for the report
    ray_launcher.py  the plan's adapters as Ray tasks
    rows.py          the tracker's runs as report rows with cells of numbers
    compare.py       paired differences vs the reference and the base, power, Pareto fronts
    summary.py       the one-screen summary of a study
    reproduce.py     the commands a report prints to reproduce its runs
    examples.py      the per-example export of a database, and the read-only tracker that serves it back
    imports.py       an export loaded back into a database under its run ids (sweep.py --import-examples)
    figures.py       which plots a suite's section gets; plots.py draws them
    serving.py       the section on inference speed as served, from bench/serve_speed.py's JSON

Imports every lower stage; nothing imports it but the scripts.
"""

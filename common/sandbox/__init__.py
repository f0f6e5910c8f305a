"""Stage 1, sandbox: run untrusted, model-generated programs inside a kernel-enforced boundary.

    execute.py   the API: check_program / check_many / check_stdio, isolation modes (bwrap, landlock, none)
    host.py      the trusted host's end of a sandbox server: start it, send programs, collect verdicts
    server.py    the server loop that runs one program at a time under limits (started as `python -c`)
    landlock.py  Landlock rulesets and the seccomp filter through ctypes

Imports only the core (common/*.py); server.py and landlock.py import nothing of the toolkit at all.
"""

"""Stage 5, inference: what infer.py does with a model and its adapter.

    settings.py  find the adapter (run id or directory) and check the options against it
    session.py   a generation session: prompt rendering as in training, streaming, syntax check, speed, the
                 base-vs-adapter comparison, the interactive commands
    console.py   the interactive loop and the --demo prompts

Imports the core and the model, text, judge and train stages (the train stage for autocast).
"""

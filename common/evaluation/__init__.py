"""Stage 5, evaluation: one evaluate.py run of a base model or an adapter, from settings to recorded scores.

    settings.py  validate the options, find the adapter and inherit its training settings, the recorded config,
                 and which earlier base-model evaluation is comparable
    runs.py      load the model, generate, judge in the sandbox, score held-out NLL, record and print a run

Imports every stage below the study (judge for scores, train for the NLL of references).
"""

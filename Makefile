# slmforge: the commands a user runs. `make repro` and `make test` set everything up on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# Offline by design: every model and data set the default pipeline needs ships in a package or the repo.
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: help venv repro test test-fast bench bench-gpu compose clean-checkpoints

help:
	@echo "make repro   create .venv from uv.lock and run the whole pipeline (dvc repro) on the embedded default"
	@echo "make test    the whole test suite (what CI runs)"
	@echo "make bench   the benchmarks (after make repro): bench/results.json and the table in bench/README.md"
	@echo "make bench-gpu  on a CUDA machine: GPU training throughput (gpu.* keys of bench/results.json), docs/gpu.md"
	@echo "make compose write params.yaml from conf/ (what dvc exp run does before it runs)"

# uv comes from PyPI if it is not on the machine; the install is locked (uv.lock) and reproducible.
$(VENV)/.synced: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || [ -x "$$HOME/.local/bin/uv" ] || python3 -m pip install --quiet --user "uv>=0.9"
	PATH="$$HOME/.local/bin:$$PATH" uv sync --frozen --all-groups
	@touch $@

venv: $(VENV)/.synced

repro: venv
	dvc repro
	@echo "--- verdicts (reports/eval/<domain>/eval.md, reports/domains.md and reports/scorer.md have the rest) ---"
	@for f in reports/eval/*/eval.md; do head -n 3 $$f; done
	@head -n 3 reports/scorer.md

test: venv
	python -m pytest -q

test-fast: venv
	python -m pytest -q -m "not slow"

# The pipeline's outputs (models/base, data/split) must exist: make repro, or dvc pull. About 25 minutes on 2 cores.
bench: venv
	python -m bench

# On a CUDA machine (about 10 minutes on an H200): ours, the stage as it was, naive TRL and the ceiling on
# Llama-3.2-1B's and -3B's shapes; needs no pipeline output. See docs/gpu.md.
bench-gpu: venv
	python -m bench.gpu

compose: venv
	python -m slmforge.cli compose

clean-checkpoints:
	rm -rf checkpoints

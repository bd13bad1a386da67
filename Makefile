# ACTION-Net fast trainer. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

DATASET ?= egogesture
RAW ?= data/raw/$(DATASET)
OUT ?= data/shards/$(DATASET)
WORKERS ?= 2
CONVERT_ARGS ?=
PYTEST_ARGS ?=

.PHONY: help venv test test-faults convert verify bench bench-convert bench-model profile demo train clean

help: ## this list
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  %-15s %s\n", $$1, $$2}'

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24" "setuptools>=64,<80" wheel
	$(PIP) install -q -r requirements.txt
	@# DALI is part of the tested product; a registry without the wheel degrades loudly to skipped DALI tests.
	$(PIP) install -q "nvidia-dali-cuda120==2.4.0" || echo "WARNING: nvidia-dali-cuda120 could not be installed: DALI tests will be SKIPPED"
	$(PIP) install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: $(STAMP) ## create .venv with the pinned dependencies (idempotent)

test: $(STAMP) ## run the test suite (fast fault subset included)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-faults: $(STAMP) ## the whole fault-injection suite
	$(PY) -m pytest -q -m faults --run-all-faults $(PYTEST_ARGS)

convert: $(STAMP) ## pack RAW=data/raw/$(DATASET) into OUT=data/shards/$(DATASET)
	$(PY) tools/convert_dataset.py $(DATASET) --raw $(RAW) --out $(OUT) --workers $(WORKERS) $(CONVERT_ARGS)
	$(PY) tools/convert_dataset.py verify $(OUT)

verify: $(STAMP) ## re-hash and check the shards in OUT
	$(PY) tools/convert_dataset.py verify $(OUT)

bench-convert: $(STAMP) ## conversion MB/s (1 and 2 workers) vs tar on a generated tree
	$(PY) bench/bench_convert.py --out bench/results

clean: ## remove generated data and runs (keeps .venv)
	rm -rf data runs .pytest_cache

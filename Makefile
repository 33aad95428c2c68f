# One gate: `make test` runs everything a reviewer would. `make demo` runs a full annex lifecycle on
# the offline local stack. Both build their own environments from pinned requirements.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The Lambda runtime is python3.13; use the same interpreter for development when it is present.
# (pyenv's shim answers `command -v` even when it cannot run that version, so each candidate is tried.)
PYTHON ?= $(shell for p in $$(ls -d /root/.pyenv/versions/3.13*/bin/python3.13 2>/dev/null) python3.13 python3; do \
	$$p -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null && { command -v $$p; break; }; done)
PY313_DIR := $(dir $(PYTHON))
VENV := .venv
VENV_SAM := .venv-sam
BIN := $(VENV)/bin
SAM := $(VENV_SAM)/bin/sam
SAM_ENV := PATH="$(PY313_DIR):$$PATH" SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=us-east-1

.PHONY: help
help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(BIN)/.installed: requirements-dev.txt layers/annex/requirements.txt client/pyproject.toml local/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet -e ./client -e ./local
	touch $@

$(VENV_SAM)/.installed: requirements-sam.txt
	python3 -m venv $(VENV_SAM)
	$(VENV_SAM)/bin/pip install --quiet --upgrade pip
	$(VENV_SAM)/bin/pip install --quiet -r requirements-sam.txt
	touch $@

.PHONY: venv
venv: $(BIN)/.installed  ## create the development environment

.PHONY: lint
lint: venv  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

.PHONY: format
format: venv  ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

.PHONY: typecheck
typecheck: venv  ## mypy (strict, pydantic plugin)
	$(BIN)/mypy layers/annex/annex functions client/annex_client local/annex_local

.PHONY: template
template: venv $(VENV_SAM)/.installed  ## cfn-lint and sam validate --lint
	$(BIN)/cfn-lint template.yaml
	$(SAM_ENV) $(SAM) validate --lint --template-file template.yaml

.PHONY: build
build: $(VENV_SAM)/.installed  ## sam build (no container)
	$(SAM_ENV) $(SAM) build --template-file template.yaml

.PHONY: demo
demo: venv  ## the main job: a full annex lifecycle on the offline local stack, narrated
	$(BIN)/python scripts/demo.py

.PHONY: openapi
openapi: venv  ## regenerate docs/openapi.json from the request function's routes
	PYTHONPATH=layers/annex $(BIN)/python -m scripts.openapi > docs/openapi.json

.PHONY: seed-userdata
seed-userdata: venv  ## copy seed/ and pool/ into the seed node's user data in template.yaml
	$(BIN)/python scripts/seed_userdata.py

.PHONY: test-unit
test-unit: venv  ## unit tier: no network
	$(BIN)/pytest tests/unit

.PHONY: test-integration
test-integration: venv  ## integration tier: moto in process
	$(BIN)/pytest tests/integration

.PHONY: test-e2e
test-e2e: venv  ## e2e tier: the local stack over real HTTP with real SigV4
	$(BIN)/pytest tests/e2e

.PHONY: test
test: lint typecheck template build test-unit test-integration test-e2e  ## everything CI runs

.PHONY: bench
bench: venv  ## print the benchmark figures
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

.PHONY: clean
clean:  ## remove environments and build output
	rm -rf $(VENV) $(VENV_SAM) .aws-sam .pytest_cache .mypy_cache .ruff_cache

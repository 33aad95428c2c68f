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
VENV_CHECKOV := .venv-checkov
BIN := $(VENV)/bin
SAM := $(VENV_SAM)/bin/sam
# IAM by execution: the integration and e2e tiers record every AWS call each function makes here.
IAM_RECORD := .iam-record/calls.jsonl
IAM_ENV := IAM_CALL_RECORD=$(CURDIR)/$(IAM_RECORD) PYTHONPATH=$(CURDIR)
SAM_ENV := PATH="$(PY313_DIR):$$PATH" SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=us-east-1

.PHONY: help
help:  ## list the targets
	@grep -E '^[A-Za-z0-9_.-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

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

# checkov pins its own boto3 and pydantic: it gets its own environment, as aws-sam-cli does.
$(VENV_CHECKOV)/.installed: requirements-checkov.txt
	python3 -m venv $(VENV_CHECKOV)
	$(VENV_CHECKOV)/bin/pip install --quiet --upgrade pip
	$(VENV_CHECKOV)/bin/pip install --quiet -r requirements-checkov.txt
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

.PHONY: checkov
checkov: $(VENV_CHECKOV)/.installed  ## checkov on template.yaml; skipped checks and reasons in .checkov.yaml
	$(VENV_CHECKOV)/bin/checkov --config-file .checkov.yaml

.PHONY: build
build: venv $(VENV_SAM)/.installed  ## sam build (no container), then bytecode for the Lambda runtime
	$(SAM_ENV) $(SAM) build --template-file template.yaml
	$(BIN)/python scripts/compile_bytecode.py .aws-sam/build

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
test-integration: venv  ## integration tier: moto in process (records each function's AWS calls)
	mkdir -p $(dir $(IAM_RECORD)) && : > $(IAM_RECORD)
	$(IAM_ENV) $(BIN)/pytest -p tests.iam.recorder tests/integration

.PHONY: test-e2e
test-e2e: venv  ## e2e tier: the local stack over real HTTP with real SigV4 (records AWS calls too)
	mkdir -p $(dir $(IAM_RECORD)) && touch $(IAM_RECORD)
	$(IAM_ENV) $(BIN)/pytest -p tests.iam.recorder tests/e2e

.PHONY: test-iam
test-iam: venv  ## IAM by execution: the calls recorded by integration and e2e against each function's role
	$(IAM_ENV) $(BIN)/pytest tests/iam

.PHONY: test
test: lint typecheck template checkov build test-unit test-integration test-e2e test-iam  ## everything CI runs

.PHONY: bench
bench: venv  ## print the benchmark figures
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

.PHONY: clean
clean:  ## remove environments and build output
	rm -rf $(VENV) $(VENV_SAM) $(VENV_CHECKOV) .aws-sam .pytest_cache .mypy_cache .ruff_cache

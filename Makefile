# headwater -- `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast lint format bench template clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install headwater with its dev/test extras

demo: $(STAMP) ## set up, then run the main job end to end on embedded defaults (no cloud)
	$(PY) -m headwater demo --workdir demo-output

test: $(STAMP) ## set up, then run the whole suite (unit, integration with a real broker, e2e)
	$(PY) -m pytest tests

test-fast: $(STAMP) ## the suite without the slow and integration tests
	$(PY) -m pytest tests -m 'not slow and not integration and not e2e'

lint: $(STAMP) ## ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check src tests main.py examples
	$(VENV)/bin/ruff format --check src tests main.py examples
	$(VENV)/bin/mypy

format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff format src tests main.py examples
	$(VENV)/bin/ruff check --fix src tests main.py examples

bench: $(STAMP) ## measure throughput and memory against plain Python and plain Beam
	$(PY) -m headwater.bench --workdir bench-output

template: $(STAMP) ## write the Flex Template folders (metadata.json, Dockerfile) to build/templates
	for p in windowed_metrics stream_etl kafka_to_kafka replay_dead_letters; do \
	  $(PY) -m headwater template build $$p --folder build/templates/$$p || exit 1; done

clean: ## remove the environment and generated output
	rm -rf $(VENV) build *.egg-info src/*.egg-info demo-output bench-output .pytest_cache .mypy_cache .ruff_cache

# headwater -- `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Real tools the tests run (Prism, Apache Kafka, Flink, Chromium) live in the git-ignored .tools/.
# Prism's version is the apache-beam version setup.py pins: written there and nowhere else.
BEAM_VERSION := $(shell sed -nE 's/.*"apache-beam(\[[^]]*\])?==([^"]+)".*/\2/p' setup.py)
TOOLS := .tools
PRISM := $(TOOLS)/bin/prism
PRISM_VERSION_FILE := $(TOOLS)/prism.version
PRISM_LINK := $(VENV)/bin/prism
KAFKA_POM := tools/kafka/pom.xml
KAFKA_LIBS := $(TOOLS)/kafka/libs
KAFKA_STAMP := $(TOOLS)/kafka/.installed
FLINK_POM := tools/flink/pom.xml
FLINK_LIBS := $(TOOLS)/flink/libs
FLINK_STAMP := $(TOOLS)/flink/.installed
CHROMIUM ?= /usr/bin/chromium

.DEFAULT_GOAL := help
.PHONY: help install tools prism kafka flink chromium demo test test-fast lint format bench template \
	clean clean-tools FORCE

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(STAMP): setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) tools $(PRISM_LINK) ## create .venv, install headwater with its dev/test extras, build the tools
	@# An editable install compiles none of src/ (a wheel would); with PYTHONDONTWRITEBYTECODE set,
	@# as on these machines, every run would compile each module again (0.1 s of each CLI start).
	@$(PY) -m compileall -q src >/dev/null

tools: prism kafka flink chromium ## build or fetch Prism, Apache Kafka, Flink and Chromium into .tools/ (reuses what is there)

prism: $(PRISM)

# Rebuilt only when the pinned Beam version changes (the version file's content), never twice.
$(PRISM_VERSION_FILE): FORCE
	@mkdir -p $(@D)
	@echo '$(BEAM_VERSION)' | cmp -s - $@ || echo '$(BEAM_VERSION)' > $@

$(PRISM): $(PRISM_VERSION_FILE)
	@test -n '$(BEAM_VERSION)' || { echo 'make tools: cannot read the apache-beam==X pin from setup.py' >&2; exit 1; }
	@command -v go >/dev/null || { echo 'make tools: Prism needs Go (https://go.dev/dl/) on PATH; install it, then run make tools' >&2; exit 1; }
	@echo 'building Prism v$(BEAM_VERSION) with go install (2-4 minutes with cold Go caches)'
	@GOBIN='$(abspath $(@D))' go install 'github.com/apache/beam/sdks/v2/go/cmd/prism@v$(BEAM_VERSION)' \
	  || { echo 'make tools: building Prism v$(BEAM_VERSION) failed (output above); fix that, then run make tools' >&2; exit 1; }
	@touch $@

# The product finds prism next to the venv's python.
$(PRISM_LINK): | $(STAMP) $(PRISM)
	ln -sfn ../../$(PRISM) $@

kafka: $(KAFKA_STAMP)

$(KAFKA_STAMP): $(KAFKA_POM)
	@command -v mvn >/dev/null && command -v java >/dev/null || { echo 'make tools: Apache Kafka needs Java 17+ and Maven on PATH (apt-get install -y openjdk-17-jre-headless maven); then run make tools' >&2; exit 1; }
	@echo 'fetching Apache Kafka ($(KAFKA_POM)) from Maven Central into $(KAFKA_LIBS)'
	@rm -rf $(KAFKA_LIBS) $(KAFKA_LIBS).partial
	@mvn -B -q -f $(KAFKA_POM) dependency:copy-dependencies -DoutputDirectory='$(abspath $(KAFKA_LIBS)).partial' \
	  || { echo 'make tools: fetching Apache Kafka with Maven failed (output above); fix that, then run make tools' >&2; exit 1; }
	@mv $(KAFKA_LIBS).partial $(KAFKA_LIBS)
	@touch $@

flink: $(FLINK_STAMP)

# Beam's Flink job server and an embedded Flink (see the pom for why Beam 2.62.0's runner).
$(FLINK_STAMP): $(FLINK_POM) tools/flink/launcher_jar.py
	@command -v mvn >/dev/null && command -v java >/dev/null || { echo 'make tools: Flink needs Java 17+ and Maven on PATH (apt-get install -y openjdk-17-jre-headless maven); then run make tools' >&2; exit 1; }
	@echo 'fetching Beam'"'"'s Flink job server ($(FLINK_POM)) from Maven Central into $(FLINK_LIBS)'
	@rm -rf $(FLINK_LIBS) $(FLINK_LIBS).partial
	@mvn -B -q -f $(FLINK_POM) dependency:copy-dependencies -DoutputDirectory='$(abspath $(FLINK_LIBS)).partial' \
	  || { echo 'make tools: fetching Flink with Maven failed (output above); fix that, then run make tools' >&2; exit 1; }
	@mv $(FLINK_LIBS).partial $(FLINK_LIBS)
	@$(PYTHON) tools/flink/launcher_jar.py $(TOOLS)/flink
	@touch $@

# The report's browser test drives Chromium; CI runs as root on Debian.
chromium:
	@test -x '$(CHROMIUM)' || command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo 'installing Chromium with apt-get' && apt-get update -qq && apt-get install -y -qq chromium >/dev/null \
	      || { echo 'make tools: apt-get install chromium failed (output above); fix that, then run make tools' >&2; exit 1; }; \
	  else echo 'make tools: the report test needs Chromium: sudo apt-get install -y chromium, then run make tools' >&2; exit 1; fi; }

demo: install ## set up, then run the main job end to end on embedded defaults (no cloud)
	$(PY) -m headwater demo --workdir demo-output

# Two test processes (pytest-xdist): about a third less wall time on 2 cores, since the Prism
# and Kafka tests spend much of theirs waiting; each process starts its own brokers and runners.
test: install ## set up, then run the whole suite (unit, integration with a real broker, e2e)
	$(PY) -m pytest -n 2 tests examples

test-fast: install ## the suite without the slow and integration tests
	$(PY) -m pytest tests examples -m 'not slow and not integration and not e2e'

lint: $(STAMP) ## ruff (lint + format check), mypy, and the import layers
	$(VENV)/bin/ruff check src tests main.py examples
	$(VENV)/bin/ruff format --check src tests main.py examples
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff format src tests main.py examples
	$(VENV)/bin/ruff check --fix src tests main.py examples

bench: install ## measure throughput and memory against plain Python and plain Beam
	$(PY) -m headwater.devtools.bench --workdir bench-output

template: $(STAMP) ## write the Flex Template folders (metadata.json, Dockerfile) to build/templates
	for p in windowed_metrics stream_etl kafka_to_kafka replay_dead_letters; do \
	  $(PY) -m headwater template build $$p --folder build/templates/$$p || exit 1; done

clean: ## remove the environment and generated output (keeps the expensive .tools/)
	rm -rf $(VENV) build *.egg-info src/*.egg-info demo-output bench-output .pytest_cache .mypy_cache .ruff_cache

clean-tools: ## remove .tools/ (Prism, Kafka, Flink); Go's and Maven's own caches stay
	rm -rf $(TOOLS) $(PRISM_LINK)

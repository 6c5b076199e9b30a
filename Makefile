# The README's commands. Each target creates .venv and installs mailstream on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help demo test unit integration lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP) ## embedded broker, a worker and synthetic traffic; Ctrl-C stops all
	$(VENV)/bin/mailstream demo

# Scenario and sizes through ARGS, e.g. make bench ARGS="timers --pending 10000"
.PHONY: bench
bench: $(STAMP) ## mailstream bench: the pipeline's figures (ARGS= for another scenario or size)
	$(VENV)/bin/mailstream bench $(ARGS)

# Two test processes: the integration tests mostly wait (group joins, timers). Each
# integration test runs on both brokers: the embedded one (one per process) and a local
# 3-node Apache Kafka (one for the session; its jars are resolved with Maven on first use).
# MAILSTREAM_TEST_BROKERS=embedded (or kafka) runs one tier. --dist loadfile keeps a
# file's tests together; the 25 slowest tests are listed at the end.
PARALLEL := -n 2 --dist loadfile --durations=25

test: $(STAMP) ## the whole suite: unit tests, and integration tests on the embedded broker and on Apache Kafka
	$(PY) -m pytest $(PARALLEL) tests

unit: $(STAMP) ## tests without a broker: the pure core, and the agents on in-memory tables
	$(PY) -m pytest tests/unit tests/agents

integration: $(STAMP) ## integration tests only (both brokers, real worker processes)
	$(PY) -m pytest $(PARALLEL) tests/integration

lint: $(STAMP) ## ruff (rules and format) and mypy (strict); .pre-commit-config.yaml runs the same
	$(VENV)/bin/ruff check mailstream agents tables tests
	$(VENV)/bin/ruff format --check mailstream agents tables tests
	$(VENV)/bin/mypy mailstream agents tables

clean: ## remove the virtualenv, demo state and caches
	rm -rf $(VENV) .demo data .pytest_cache .mypy_cache .ruff_cache

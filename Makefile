# The common tasks, one word each. `make run` and `make test` do all set-up themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test lint bench faults load fuzz prove typecheck clean help

help:
	@echo "make run    create .venv, install, migrate and serve on http://127.0.0.1:8080"
	@echo "make test   create .venv with the test extras and run the test suite"
	@echo "make lint   ruff and mypy --strict"
	@echo "make bench  run the benchmarks (results: docs/benchmarks.md)"
	@echo "make faults the fault scenarios (database restart, crash, full disk)"
	@echo "make load   the load scenarios at full length (results: docs/reliability.md)"
	@echo "make fuzz   schemathesis and the stateful API test with many examples"
	@echo "make prove  faults, load and fuzz"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when the package metadata changes.
$(VENV)/.installed-run: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/shelltrail serve

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check shelltrail tests bench
	$(BIN)/ruff format --check shelltrail tests bench
	$(BIN)/mypy

bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench

faults: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m faults $(PYTEST_ARGS)

load: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m load $(PYTEST_ARGS)
	$(BIN)/python -m bench --only load-mixed --only load-flood

FUZZ_EXAMPLES ?= 300
fuzz: $(VENV)/.installed-dev
	SHELLTRAIL_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -m fuzz $(PYTEST_ARGS)

prove: faults load fuzz

clean:
	rm -rf $(VENV) .shelltrail .pytest_cache .mypy_cache .ruff_cache build *.egg-info

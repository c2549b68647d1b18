# The two commands in the README: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-test run test lint typecheck check bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'

## Install and start the gateway on the embedded default (SQLite, in-process state, simulated models).
run: install
	$(BIN)/tollgate serve

## Install the test dependencies and run the whole suite (real Redis and Postgres; see README).
test: install-test
	$(BIN)/ruff check gateway tests
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest -q

lint: install-test
	$(BIN)/ruff check gateway tests
	$(BIN)/ruff format --check gateway tests

typecheck: install-test
	$(BIN)/mypy

bench: install-test
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .tollgate .pytest_cache .mypy_cache .ruff_cache

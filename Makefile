# Two commands on a fresh machine:
#   make run    set up, then serve on 127.0.0.1:50051 with SQLite under ./data
#   make test   set up, then run every check and test (what CI runs)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup run test test-fast lint generate bench clean

# Two distributions, both editable: the client `keyturn` and the server that requires it.
$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e clients/python -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

run: setup
	$(BIN)/keyturn serve $(ARGS)

test: setup
	scripts/test.sh

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

lint: setup
	scripts/test.sh lint

generate: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/generate.sh

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache

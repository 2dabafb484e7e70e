# Two commands on a fresh machine:
#   make run    set up, then serve on 127.0.0.1:50051 with SQLite under ./data
#   make test   set up, then run every check and test (what CI runs)
# and one for the tools the README's tour and bench/ use:
#   make tools  grpcurl, ghz and buf in ./tools/bin
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup run test test-fast lint generate bench tools clean

# Two distributions, both editable: the client `keyturn` and the server that requires it.
# The first time takes a minute or so: each step says what it is doing.
# The runtime dependencies come from the hash-checked lock the container image uses
# (requirements/runtime.txt), so the tests run the versions a release ships.
$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml requirements/runtime.txt
	@echo "== setup 1/3: a virtual environment in $(VENV)"
	$(PYTHON) -m venv $(VENV)
	@echo "== setup 2/3: an up-to-date pip"
	$(BIN)/pip install -q --upgrade pip
	@echo "== setup 3/3: keyturn, keyturn-server and their dependencies (about a minute)"
	$(BIN)/pip install --progress-bar off --require-hashes -r requirements/runtime.txt
	$(BIN)/pip install --progress-bar off -e clients/python -e ".[dev]"
	@echo "== setup done"
	touch $@

# The optional native extension (native/: token checks in Rust), built where a Rust
# toolchain exists; without one the server runs its pure-Python implementation.
NATIVE_SOURCES := native/Cargo.toml native/Cargo.lock native/pyproject.toml $(wildcard native/src/*.rs)
$(VENV)/.native: $(VENV)/.installed $(NATIVE_SOURCES)
	@if command -v cargo >/dev/null 2>&1; then \
	  echo "building the native extension (native/, cargo; a minute the first time) ..."; \
	  PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pip install -q --no-build-isolation ./native && touch $@; \
	else \
	  echo "no Rust toolchain (cargo): the server uses its pure-Python token checks"; \
	fi

setup: $(VENV)/.installed $(VENV)/.native

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

tools: setup
	scripts/tools.sh

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache

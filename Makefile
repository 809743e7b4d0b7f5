# The README's two commands:  `make run` (an offline campaign on examples/quickstart.toml,
# then the leaderboard) and `make test` (the default test suite). Both set up .venv first.
PY ?= python3
VENV ?= .venv
# Installed before the package so pip never resolves a multi-GB CUDA build on a CPU machine.
TORCH_SPEC ?= torch==2.13.0
CONFIG ?= examples/quickstart.toml
BIN := $(VENV)/bin

.PHONY: setup run test test-all bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

run: setup
	$(BIN)/disco run $(CONFIG)

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m "slow or not slow"

bench: setup
	$(BIN)/python benchmarks/sandbox_overhead.py

clean:
	rm -rf $(VENV) disco.db disco.db-wal disco.db-shm

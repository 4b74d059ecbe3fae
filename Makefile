# The two commands a newcomer needs: `make up` (a local cluster) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

# The package's C extension (the tap's stream scanner) is built by pip: reinstall when it changes.
$(BIN)/.installed: pyproject.toml engine/engram/replication/_streamscan.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

.PHONY: install up down test lint module
install: $(BIN)/.installed module

# The Engram Valkey module (engine/module/engram.so), and engram-checked.so with its invariant
# checks on for the tests, built with the system C compiler.
module:
	$(MAKE) -C engine/module

up: install
	$(BIN)/engram local up demo --shards 1 --replicas 2 --exist-ok

down: install
	$(BIN)/engram local down demo

lint: install
	$(BIN)/ruff check .

test: install lint
	$(BIN)/pytest -q -p no:cacheprovider -n 2 --dist loadfile

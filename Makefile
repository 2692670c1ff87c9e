# keyhand: two commands set everything up on a fresh machine.
#   make repro  -> install, then the main job (dvc repro on the synthetic default)
#   make test   -> install, then the whole test suite
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: install repro test lint bench dashboard clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "make: $(PY) not found (Python 3.11 is required)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch==2.13.0 comes from pyproject in this same pip command (CPU wheel on this machine)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

repro: install
	# the stages call `keyhand stage ...`: the venv's bin first on PATH
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

bench: install
	for what in mano render data model; do $(BIN)/keyhand bench $$what; done

dashboard: install
	$(BIN)/keyhand dashboard

clean:
	rm -rf $(VENV) .pytest_cache

# keyhand: two commands set everything up on a fresh machine.
#   make repro  -> install, then the main job (dvc repro on the synthetic default)
#   make test   -> install, then the whole test suite
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: install repro test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "make: $(PY) not found (Python 3.11 is required)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch==2.13.0 comes from pyproject in this same pip command (CPU wheel on this machine)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

repro: install
	@if [ -f dvc.yaml ]; then \
		$(BIN)/dvc repro; \
	else \
		echo "make repro: the DVC graph (dvc.yaml) does not exist yet; running what exists:"; \
		echo "  keyhand make-hand-model && keyhand render-hand"; \
		$(BIN)/keyhand make-hand-model && $(BIN)/keyhand render-hand; \
	fi

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

bench: install
	$(BIN)/keyhand bench mano

clean:
	rm -rf $(VENV) .pytest_cache

# keyhand: two commands set everything up on a fresh machine.
#   make repro  -> install, then the main job (dvc repro on the synthetic default)
#   make test   -> install, then the whole test suite
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: install repro test rehearse bench gpu-check dashboard clean

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

# The paper profile end to end on tiny real-layout fixtures (pipeline/rehearse.py): every table row filled, stage
# times, the full protocol's projected GPU-hours; project in runs/rehearse/ (report runs/rehearse/runs/report/).
rehearse: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/keyhand rehearse

bench: install
	for what in mano render data model; do $(BIN)/keyhand bench $$what; done

# The prepared GPU check (pipeline/bench_gpu.py, ~8 min on one H100): CUDA tests, CPU/GPU agreement, dtypes
# under autocast, throughput/latency/memory/MFU, renderer, 320 training steps; writes $(GPU_CHECK_OUT)/ and, on
# CUDA, docs/gpu.md's "GPU figures". No install step, so it runs on a GPU machine without a package index: it uses
# .venv when there is one, else python3, and first installs wheels carried in .whl/ (docs/gpu.md).
GPU_PY ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
GPU_CHECK_OUT ?= runs/gpu-check
gpu-check:
	@site=""; if ls .whl/*.whl >/dev/null 2>&1; then \
	  $(GPU_PY) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
	    --target /tmp/keyhand-site .whl/*.whl && site=/tmp/keyhand-site; fi; \
	PYTHONUNBUFFERED=1 PYTHONPATH="$$site:$(CURDIR)" $(GPU_PY) -m pipeline.bench_gpu --out $(GPU_CHECK_OUT) \
	  --update-readme $(GPU_CHECK_ARGS)

dashboard: install
	$(BIN)/keyhand dashboard

clean:
	rm -rf $(VENV) .pytest_cache

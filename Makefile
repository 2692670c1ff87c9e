# keyhand: two commands set everything up on a fresh machine.
#   make repro  -> install, then the main job (dvc repro on the synthetic default)
#   make test   -> install, then the whole test suite
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: install repro test rehearse bench gpu-check gpu-bundle dashboard clean

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

# The prepared GPU check (pipeline/bench_gpu.py, planned 330 s + start-up on one H100/H200, under 6 minutes): CUDA
# tests (pytest -m cuda), CPU/GPU agreement of outputs and gradients, dtypes under autocast, throughput, latency,
# memory, MFU, the loader, the renderer, training steps. Writes $(GPU_CHECK_OUT)/ ($OUT/gpu-check when $OUT is
# set) and, on CUDA, docs/gpu.md's "GPU figures". No install step, so it runs on a GPU machine without a package
# index: it uses .venv when there is one, else python3, and first installs the wheels of $(BUNDLE_DEST)/
# (make gpu-bundle; docs/gpu.md); a module still missing ends in one line.
GPU_PY ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
GPU_CHECK_OUT ?= $(if $(OUT),$(OUT)/gpu-check,runs/gpu-check)
GPU_SITE ?= /tmp/keyhand-site
BUNDLE_DEST ?= .whl
# the GPU machine's Python (cluster/gpu-machine-packages.txt)
PYVER ?= 3.12
gpu-check:
	@site=""; if ls $(BUNDLE_DEST)/*.whl >/dev/null 2>&1; then \
	  $(GPU_PY) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
	    --target $(GPU_SITE) $(BUNDLE_DEST)/*.whl && site=$(GPU_SITE); fi; \
	export PYTHONUNBUFFERED=1 PYTHONPATH="$$site:$(CURDIR)"; \
	$(GPU_PY) -m pipeline.gpu_bundle preflight && \
	$(GPU_PY) -m pipeline.bench_gpu --out $(GPU_CHECK_OUT) --update-readme $(GPU_CHECK_ARGS)

# The wheels the GPU check needs beyond the GPU machine's packages, for CPython $(PYVER) manylinux x86-64:
# $(BUNDLE_DEST)/ and its MANIFEST.txt (pipeline/gpu_bundle.py resolves them from the check's import chain).
gpu-bundle: install
	$(BIN)/python -m pipeline.gpu_bundle write --dest $(BUNDLE_DEST) --python-version $(PYVER)

dashboard: install
	$(BIN)/keyhand dashboard

clean:
	rm -rf $(VENV) .pytest_cache

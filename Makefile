# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test
WORKDIR ?= workdir/demo
# Fake CPU devices for the sharding tests only (tests/conftest.py sets the same default before jax is
# imported): on a real CPU they cost the demo and the benchmarks ~15% (XLA splits its threads across them).
TEST_XLA_FLAGS ?= --xla_force_host_platform_device_count=8
export TF_CPP_MIN_LOG_LEVEL ?= 2
# 2 workers on the 2-core CI machine; override with PYTEST_WORKERS=0 for a serial run.
PYTEST_WORKERS ?= 2

.PHONY: venv install install-test demo test test-all lint bench clean

# .venv with the test extras takes ~3.8 GB and pip unpacks wheels under $TMPDIR: refuse to start with less free
# than this, instead of failing half-installed with "No space left on device".
MIN_FREE_GB ?= 5
DISK_CHECK = import os, shutil, sys, tempfile; \
  low = {p: shutil.disk_usage(p).free / 2**30 for p in {os.path.abspath('.'), tempfile.gettempdir()}}; \
  bad = {p: f for p, f in low.items() if f < $(MIN_FREE_GB)}; \
  bad and sys.exit('not enough disk for .venv: ' + ', '.join(f'{p} has {f:.1f} GB free' for p, f in bad.items()) \
                   + '; $(MIN_FREE_GB) GB needed (set MIN_FREE_GB to override)')

$(BIN)/python:
	@$(PY) -c "$(DISK_CHECK)"
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP_RUN): requirements.txt requirements-test.txt | $(BIN)/python
	# No torch at run time; the constraint pins it anyway, should a dependency ever ask for it (an unpinned torch
	# is a multi-GB CUDA build, the pinned 2.13.0 is the CPU build on local disk).
	$(BIN)/pip install -q -r requirements.txt -c requirements-test.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

$(STAMP_TEST): $(STAMP_RUN) requirements-test.txt requirements-envs.txt
	# torch (the PyTorch reference of the parity tests and benchmarks) is pinned in requirements-test.txt.
	$(BIN)/pip install -q -r requirements-test.txt
	# fast-downward-textworld's sdist runs `python build.py`: the venv must be first on PATH for that build.
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pip install -q -c requirements-test.txt -r requirements-envs.txt
	touch $@

install: $(STAMP_RUN)
install-test: $(STAMP_TEST)

demo: $(STAMP_RUN)
	$(BIN)/python -m leafe_jax.main --config=configs/demo.py --workdir=$(WORKDIR)

lint: $(STAMP_TEST)
	$(BIN)/ruff check leafe_jax tests benchmarks configs launch

test: lint
	XLA_FLAGS="$(TEST_XLA_FLAGS)" $(BIN)/python -m pytest -n $(PYTEST_WORKERS) tests; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

test-all: lint
	XLA_FLAGS="$(TEST_XLA_FLAGS)" $(BIN)/python -m pytest -n $(PYTEST_WORKERS) -m '' tests

bench: $(STAMP_TEST)
	for b in benchmarks/[!_]*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done
	echo "== benchmarks/sft_step.py --target_tokens 64"; $(BIN)/python benchmarks/sft_step.py --target_tokens 64
	echo "== benchmarks/sampler.py --dtype bfloat16"; $(BIN)/python benchmarks/sampler.py --dtype bfloat16

clean:
	rm -rf $(VENV) workdir

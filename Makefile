# `make demo` and `make test` set everything up on a fresh machine: a venv, the package, its dependencies.
# The CPU build of torch is pinned here (it installs from a local wheel in seconds); the package itself
# accepts torch>=2.4.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed-stamp
export KERAS_BACKEND := torch
export TF_CPP_MIN_LOG_LEVEL := 3
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-all install benchmarks clean bytecode

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_PIN)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The package's bytecode, as a (non-editable) pip install writes it: an editable install under
# PYTHONDONTWRITEBYTECODE=1 would otherwise compile every module on every run. Only stale files are compiled.
bytecode: $(STAMP)
	$(PY) -m compileall -q gemma_inspect

demo: $(STAMP) bytecode
	$(VENV)/bin/gemma-inspect demo

test: $(STAMP) bytecode
	$(PY) -m pytest -q -m "not slow" -n 2 --dist loadgroup

test-all: $(STAMP) bytecode
	$(PY) -m pytest -q -n 2 --dist loadgroup

benchmarks: $(STAMP)
	$(PY) benchmarks/convert.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

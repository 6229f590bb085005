# `make demo` and `make test` do all set-up on a fresh machine (a .venv in the repo).
# torch is pinned through constraints.txt on every pip call: an unpinned torch pulls GBs of CUDA.
PY ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip install -q -c constraints.txt
EXTRAS ?= test
DEMO_DIR ?= runs/demo

.PHONY: install demo test clean

$(VENV)/bin/python:
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q -U pip

install: $(VENV)/bin/python
	$(PIP) -e ".[$(EXTRAS)]"

demo: $(VENV)/bin/python
	$(PIP) -e .
	$(VENV)/bin/python -m ear_teacher.demo --workdir $(DEMO_DIR)

test: $(VENV)/bin/python
	$(PIP) -e ".[test]"
	$(VENV)/bin/python -m pytest tests

clean:
	rm -rf $(VENV) runs

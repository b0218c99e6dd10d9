# Two commands matter: `make run` (demo end to end) and `make test` (whole suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PROTOS := $(wildcard protos/omnirec/v1/*.proto)
STUBS := omnirec/v1/__init__.py

.PHONY: run test protos lint bench clean

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Stubs are generated (never hand-edited) into the git-ignored omnirec/v1 package by setup.py, which
# every install runs; this target regenerates them after a .proto changes.
$(STUBS): $(STAMP) $(PROTOS)
	$(PY) -c 'import runpy, sys; sys.argv = ["setup.py", "--version"]; runpy.run_path("setup.py")' > /dev/null

protos: $(STUBS)

run: protos
	$(VENV)/bin/omnirec demo

test: protos
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) omnirec/v1 var

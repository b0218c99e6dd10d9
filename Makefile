# Two commands matter: `make run` (demo end to end) and `make test` (whole suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PROTOS := $(wildcard protos/omnirec/v1/*.proto)
STUBS := omnirec/v1/__init__.py

.PHONY: run test protos lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Stubs are generated (never hand-edited) into the git-ignored omnirec/v1 package.
$(STUBS): $(STAMP) $(PROTOS)
	rm -rf omnirec/v1 && mkdir -p omnirec/v1
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)
	echo '"""Generated from protos/omnirec/v1 by `make protos`; do not edit."""' > $@

protos: $(STUBS)

run: protos
	$(VENV)/bin/omnirec demo

test: protos
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) omnirec/v1 var

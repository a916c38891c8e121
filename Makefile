# The two front-door commands (see README.md):
#   make run    installs odyssey-gevent into .venv and runs it on etc/odyssey.conf,
#               starting a throwaway PostgreSQL when the config's storage is not reachable
#   make test   installs the test dependencies (and PostgreSQL when missing) and runs the tests
PYTHON ?= python3
VENV   ?= .venv
CONFIG ?= etc/odyssey.conf
PY      = $(VENV)/bin/python

.PHONY: run test install install-test postgres clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

install: $(VENV)/bin/python
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q .

install-test: $(VENV)/bin/python postgres
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@bash scripts/ensure_test_tools.sh

# PostgreSQL server binaries for the demo and the tests; installed only when missing.
postgres:
	@bash scripts/ensure_postgres.sh

run: install postgres
	$(PY) scripts/demo.py $(CONFIG)

test: install-test
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info

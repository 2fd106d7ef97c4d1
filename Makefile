# Everything runs from a private virtualenv in .venv, built on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint unit man bench clean

$(STAMP): setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --config-settings editable_mode=compat -e '.[test]'
	$(BIN)/python -m maintd._plugincache
	touch $@

## Run the daemon in the foreground against the built-in simulated cluster.
demo: $(STAMP)
	$(BIN)/ganeti-maintd -f --simulate

## Lint, type-check and run the whole trial suite.
test: lint unit

lint: $(STAMP)
	$(BIN)/ruff check maintd tests bench twisted build_backend
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/trial -j2 tests

## Build the man pages man/ganeti-maintd.8, man/ganeti-maintd-agent.8 (docutils' rst2man; warnings are errors).
man: man/ganeti-maintd.8 man/ganeti-maintd-agent.8

man/%.8: man/%.rst $(STAMP)
	$(BIN)/rst2man --halt=warning $< $@

## Benchmarks: print figures (not tests; results depend on the machine's load).
bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) _trial_temp* build *.egg-info

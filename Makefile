# Everything runs inside a local virtual environment made on first use, so the
# two README commands work on a bare machine with only Python 3.11.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.treeclip-installed

.PHONY: demo test test-browser test-slow test-faults lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/treeclip demo

test: $(STAMP)
	$(PY) -m pytest -q

# The page of `treeclip serve` in headless Chromium (Debian's package; no browser download).
test-browser: $(STAMP)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	$(PY) -m pytest -q -m browser

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# Hostile inputs and killed runs: the fuzzed decoder, SIGKILL then resume (CI runs it).
test-faults: $(STAMP)
	$(PY) -m pytest -q -m faults

# The layer contracts in pyproject.toml: imports go only downward, no cycles.
lint: $(STAMP)
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache

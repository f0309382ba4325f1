# The two commands of README.md. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: run test bench clean

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/.installed        ## start the daemon on the built-in default (./inbox/default -> ./var)
	$(BIN)/inbox-daemon run

test: $(BIN)/.installed       ## run the whole test suite
	$(BIN)/python -m pytest -q

bench: $(BIN)/.installed      ## the benchmark suite: every path against the floor and the peers (bench/README.md)
	$(BIN)/python -m pip install --quiet --target bench/.peers -r bench/peers-requirements.txt
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info

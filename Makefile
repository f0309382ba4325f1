# The two commands of README.md (run, test) install from the lock files in requirements/:
# every package pinned with its hashes, so a clone today and in six months gets the same
# versions. setup.cfg keeps ranges for anyone who installs the package as a library.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
LATEST ?= .venv-latest
UV_VERSION = 0.13.9
# A universal lock: one file that resolves the same way for every Python 3.11+ and platform.
LOCK_FLAGS = --universal --python-version 3.11 --generate-hashes --quiet

.PHONY: run lint bytecode test test-latest lock bench clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)

# --require-hashes: a package whose bytes differ from the lock is refused. --no-deps: the lock
# is complete, nothing outside it may be pulled in. pip check: the lock still satisfies setup.cfg.
$(VENV)/.%-installed: requirements/%.lock setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $<
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $@

run: $(VENV)/.daemon-installed   ## start the daemon on the built-in default (./inbox/default -> ./var)
	$(BIN)/inbox-daemon run

lint: $(VENV)/.test-installed    ## ruff and mypy (seconds; make test runs them first)
	$(BIN)/ruff check .
	$(BIN)/mypy

# The project's own modules byte-compiled, as pip does for an installed package (an editable
# install has no bytecode): where PYTHONDONTWRITEBYTECODE is set, every daemon, worker process
# and command a test or a benchmark starts compiled them again (0.3 s of a daemon's 1.7 s start).
bytecode: $(VENV)/.test-installed
	$(BIN)/python -m compileall -q inbox_daemon adapters storage config

test: lint bytecode              ## the linters, then the whole test suite
	$(BIN)/python -m pytest -q --durations=15

# The suite against the newest releases the ranges in setup.cfg admit: a fresh venv, no lock.
# Run it on purpose before `make lock`; a failure here is a release to adapt to, not a broken CI.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet -e '.[test]'
	$(LATEST)/bin/python -m pip freeze --exclude-editable > $(LATEST)/versions.txt
	$(LATEST)/bin/ruff check .
	$(LATEST)/bin/mypy
	$(LATEST)/bin/python -m pytest -q

# Refresh both locks to the newest releases the ranges admit. The daemon's lock is constrained
# by the test lock, so the daemon runs in production on exactly the versions it was tested with.
lock: | $(BIN)/python
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip compile $(LOCK_FLAGS) --upgrade setup.cfg requirements/build.in --extra test \
		-o requirements/test.lock
	$(BIN)/uv pip compile $(LOCK_FLAGS) --upgrade setup.cfg requirements/build.in \
		-c requirements/test.lock -o requirements/daemon.lock

# The peers' libraries, apart from the daemon's environment; installed again only when their
# list changes (pip --target into a folder that has them would warn once per package).
bench/.peers/.installed: bench/peers-requirements.txt | $(BIN)/python
	rm -rf bench/.peers
	$(BIN)/python -m pip install --quiet --target bench/.peers -r $<
	touch $@

bench: $(VENV)/.test-installed bench/.peers/.installed bytecode   ## the benchmark suite: every path against the floor and the peers (bench/README.md)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) $(LATEST) build *.egg-info

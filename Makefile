# The two commands (see README):
#   make run   - set up (venv, database) and run the daemon on the embedded default
#   make test  - set up (venv, Dovecot), lint (ruff), type-check (mypy; strict on the domain) and run the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test setup clean

setup:
	@scripts/setup.sh

run: setup
	$(VENV)/bin/acedesk --config config.toml db upgrade
	$(VENV)/bin/acedesk --config config.toml run

test: setup
	@scripts/setup.sh --test-services
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var build *.egg-info

# The two commands: `make sandbox` (a running shop) and `make test` (the whole suite).
# Both create .venv when it is missing and reinstall when pyproject.toml changes.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SANDBOX_PORT ?= 8000
export SANDBOX_PORT

.DEFAULT_GOAL := help
.PHONY: help sandbox test lint install clean-sandbox

help:
	@echo "make sandbox        run the sandbox shop on http://127.0.0.1:$(SANDBOX_PORT)/ (Ctrl-C stops it)"
	@echo "make test           run the whole test suite (DATABASE_URL=postgres://... for PostgreSQL)"
	@echo "make lint           ruff (with C901), ruff format --check, mypy, import-linter, makemigrations --check"
	@echo "make clean-sandbox  delete the sandbox's database, files and mail (sandbox/var/)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The [build-system] requirements too: a fresh venv's bundled setuptools is older than the one
# pyproject.toml asks for, and the packaging tests build the wheel without isolation.
BUILD_REQUIRES = $(shell $(BIN)/python -c 'import tomllib; print(" ".join(repr(r) for r in tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')
PIP_INSTALL = $(BIN)/python -m pip install --quiet --disable-pip-version-check

# Stamps record that the current pyproject.toml is installed; a newer pyproject.toml reinstalls.
$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) $(BUILD_REQUIRES)
	$(PIP_INSTALL) -e ".[test]"
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) $(BUILD_REQUIRES)
	$(PIP_INSTALL) -e ".[test,lint]"
	@touch $@ $(VENV)/.installed-test

install: $(VENV)/.installed-dev

sandbox: $(VENV)/.installed-test
	exec $(BIN)/python sandbox/run.py

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Every check runs, even after one fails, so one pass shows every problem; then it fails.
lint: $(VENV)/.installed-dev
	@status=0; \
	for step in \
		"$(BIN)/ruff check ." \
		"$(BIN)/ruff format --check ." \
		"$(BIN)/mypy wagtail_paid_delivery" \
		"$(BIN)/lint-imports --no-cache" \
		"env DJANGO_SETTINGS_MODULE=tests.settings $(BIN)/python -m django makemigrations --check --dry-run" \
		"$(BIN)/python sandbox/manage.py makemigrations --check --dry-run"; \
	do \
		echo "$$step"; \
		$$step || { echo "lint: FAILED: $$step"; status=1; }; \
	done; \
	exit $$status

clean-sandbox:
	rm -rf sandbox/var

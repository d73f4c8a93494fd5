# Interlock — the two commands a newcomer needs are `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: setup run test lint typecheck bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

# The main job on the embedded default (SQLite): the reference workflow end to end.
run: setup
	$(VENV)/bin/interlock demo

test: setup
	$(VENV)/bin/pytest -n auto -q

lint: setup
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples
	$(VENV)/bin/mypy

bench: setup
	$(PY) bench/decision.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# `make run` / `make test` each create .venv and install the pinned dependencies if missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-all install clean-venv

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python main.py experiment=quickstart

# test: everything but the tests marked slow (their coverage is also checked by cheaper tests); test-all: all of it.
test: $(STAMP)
	$(BIN)/ruff check src tests scripts main.py
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=25 -m "not slow" tests

test-all: $(STAMP)
	$(BIN)/ruff check src tests scripts main.py
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=25 tests

clean-venv:
	rm -rf $(VENV)

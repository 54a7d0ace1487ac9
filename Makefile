# `make run` / `make test` each create .venv and install the pinned dependencies if missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-all docs install clean-venv

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
	$(MAKE) docs

test-all: $(STAMP)
	$(BIN)/ruff check src tests scripts main.py
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=25 tests
	$(MAKE) docs

# docs: the manual (docs/, mkdocs.yml) built with every warning an error (a broken link or anchor, a page missing
# from the nav), into a temporary directory so nothing lands in the tree; scripts/config_reference.py generates
# the configuration reference during the build.
docs: $(STAMP)
	tmp=$$(mktemp -d) && NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir "$$tmp"; \
		status=$$?; rm -rf "$$tmp"; exit $$status

clean-venv:
	rm -rf $(VENV)

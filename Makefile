# FishEye developer commands. Every target creates .venv and installs on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SERVE_STAMP := $(VENV)/.installed-serve
HOST ?= 127.0.0.1
PORT ?= 8000
MODEL ?= models/default
PYTEST_ARGS ?=

.PHONY: install test test-unit lint format serve docs docs-serve clean

# Everything: training, export, tests, docs (`make install`, `make test`).
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "FishEye needs $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP) $(SERVE_STAMP)

# The serving runtime only, without PyTorch (`make serve` on a fresh clone).
$(SERVE_STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "FishEye needs $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(SERVE_STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

test: lint docs
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

serve: $(SERVE_STAMP)
	@echo "FishEye: http://$(HOST):$(PORT)  (API docs: http://$(HOST):$(PORT)/docs)"
	$(BIN)/fisheye serve --model $(MODEL) --host $(HOST) --port $(PORT)

# NO_MKDOCS_2_WARNING: mute mkdocs-material's end-of-life banner (it is not a build warning).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

docs-serve: $(STAMP)
	@echo "FishEye docs: http://$(HOST):8001"
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr $(HOST):8001

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

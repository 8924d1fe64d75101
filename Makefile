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

.PHONY: install test test-unit lint format serve docs docs-serve clean \
	image-base image-serve image-train test-images

# Container images (docs/deployment.md). BASE_IMAGE=fisheye-base:bookworm (`make image-base`)
# builds without an image registry.
BASE_IMAGE ?= python:3.11-slim
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
IMAGE_VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
GIT_COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
DOCKER_BUILD = docker build --network host --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	--build-arg VERSION=$(IMAGE_VERSION) --build-arg GIT_COMMIT=$(GIT_COMMIT)

# Everything: training, export, tests, docs (`make install`, `make test`).
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "FishEye needs $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# checkov, in a virtualenv of its own (it pins packages FishEye uses): tests/helpers/deploy_tools.py
	$(BIN)/python -m tests.helpers.deploy_tools || echo "checkov not installed: its tests will skip"
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

# Coverage of src/fisheye, subprocesses included; the floor sits a little under the measured
# figure (README, Development).
COVERAGE_FLOOR ?= 92

test: lint docs
	$(BIN)/pytest --cov=fisheye --cov-report=term --cov-fail-under=$(COVERAGE_FLOOR) --durations=20 $(PYTEST_ARGS)

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

image-base:
	dockerfiles/debian-base.sh

image-serve:
	$(DOCKER_BUILD) -f dockerfiles/serve.Dockerfile \
		-t fisheye-serve:$(IMAGE_VERSION) -t fisheye-serve:latest .

image-train:
	$(DOCKER_BUILD) --build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL) -f dockerfiles/train.Dockerfile \
		-t fisheye-train:$(IMAGE_VERSION) -t fisheye-train:latest .

# The container tests plus the train image: built, then 1 epoch on synthetic photos inside it.
# PyTorch's CPU index when reachable, else PyPI's (CUDA) build, unless TORCH_INDEX_URL is set.
test-images: $(STAMP)
	@index="$(filter-out https://download.pytorch.org/whl/cpu,$(TORCH_INDEX_URL))"; \
	if [ -z "$$index" ]; then \
		if curl -fsS -m 10 -o /dev/null https://download.pytorch.org/whl/cpu/torch/ 2>/dev/null; \
		then index=https://download.pytorch.org/whl/cpu; \
		else index=https://pypi.org/simple; \
			echo "PyTorch's CPU index is unreachable: the train image gets PyPI's CUDA build"; fi; \
	fi; \
	FISHEYE_TEST_TRAIN_IMAGE=1 TORCH_INDEX_URL=$$index $(BIN)/pytest \
		tests/integration/test_container.py tests/integration/test_compose.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# The two commands: `make run` (the whole pipeline) and `make test` (the suite).
# Both create .venv and install requirements.lock on first use (~7 GB, a few minutes).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test test-fast lint ray-up ray-down clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

## run: every stage of dvc.yaml, skipping those already current
run: $(STAMP)
	dvc repro

## test: the whole suite (unit, integration with real Ray / MLflow / DVC)
test: $(STAMP)
	python -m pytest

## test-fast: unit tests only
test-fast: $(STAMP)
	python -m pytest tests/unit

lint: $(STAMP)
	ruff check .

clean:
	rm -rf .trainyard mlflow.db mlartifacts data models tune metrics plots reports registry

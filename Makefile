# The two commands: `make run` (the whole pipeline) and `make test` (the suite).
# Both create .venv and install requirements.lock on first use (~7 GB, a few minutes).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

# The default test tier leaves out the tiers named here (markers in pyproject.toml); test-all runs them.
EXTENDED := cluster or corpora or faults or serve or plugin or container or changes or gpu or ui or data

.PHONY: run test test-all test-fast lint ray-up ray-down mlflow-up mlflow-down clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

## run: every stage of dvc.yaml, skipping those already current
run: $(STAMP)
	dvc repro

## test: the default tier: the unit suite and the pipeline end to end through real DVC, Ray and MLflow
test: $(STAMP)
	python -m pytest -m "not ($(EXTENDED))"

## test-all: every tier (adds the cluster, corpora, fault matrix, serve, plug-in, container, change-replay, UI and GPU tests); CI runs it
test-all: $(STAMP)
	python -m pytest

## test-fast: unit tests only
test-fast: $(STAMP)
	python -m pytest tests/unit

## ray-up: a two-node Ray cluster on this machine (one CPU each); prints its RAY_ADDRESS
ray-up: $(STAMP)
	python infra/ray/local_cluster.py start --nodes $(or $(NODES),2) --cpus $(or $(CPUS),1)

## ray-down: stop that cluster by process id
ray-down: $(STAMP)
	python infra/ray/local_cluster.py stop

## mlflow-up: PostgreSQL + an MLflow server with basic auth on 127.0.0.1; prints its login
mlflow-up: $(STAMP)
	python infra/mlflow/local_server.py start

## mlflow-down: stop them by process id
mlflow-down: $(STAMP)
	python infra/mlflow/local_server.py stop

## lint: ruff, and the import layers (pyproject.toml's [tool.importlinter])
lint: $(STAMP)
	ruff check .
	lint-imports

clean:
	rm -rf .trainyard mlflow.db mlartifacts data models tune metrics plots reports registry

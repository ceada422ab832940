# Two entry points (see README): `make run` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export KEDRO_DISABLE_TELEMETRY := true

.PHONY: setup run test benchmark viz mlflow-ui clean

$(BIN)/kedro: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[test]"
	touch $@

setup: $(BIN)/kedro

## Set up and run the main job (CutPaste 3-way on the embedded demo data).
run: setup
	cd $(CURDIR) && $(BIN)/kedro run

## Set up and run the test suite.
test: setup
	$(BIN)/python -m pytest tests

benchmark: setup
	$(BIN)/python benchmarks/bench_training.py

viz: setup
	$(BIN)/kedro viz run

mlflow-ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db

clean:
	find data -type f ! -name .gitkeep -delete; rm -rf mlflow.db mlruns

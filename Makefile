# Two entry points (see README): `make run` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export KEDRO_DISABLE_TELEMETRY := true

.PHONY: setup run test benchmark viz mlflow-ui tracking-server dag airflow-run clean

$(BIN)/kedro: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[test,engine]"
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

## Scale-out (README "Scale out"): one MLflow tracking server, the Airflow DAG, a local LocalExecutor run of it.
ENV ?= local
PIPELINE ?= detection
TRACKING_PORT ?= 5000

tracking-server: setup
	$(BIN)/mlflow server --host 127.0.0.1 --port $(TRACKING_PORT) --workers 2 \
		--backend-store-uri sqlite:///$(CURDIR)/mlflow-server.db --artifacts-destination $(CURDIR)/mlartifacts

dag: setup
	KEDRO_ENV=$(ENV) $(BIN)/kedro airflow create --pipelines=$(PIPELINE) --env=$(ENV) --group-by namespace \
		--jinja-file src/cutpaste/engine/dag_template.j2 --target-dir airflow_dags

airflow-run: dag
	KEDRO_ENV=$(ENV) $(BIN)/python -m cutpaste.engine.local --dag-id cutpaste_$(PIPELINE)_$(ENV)

clean:
	find data -type f ! -name .gitkeep -delete; find data -mindepth 2 -type d -empty -delete; rm -rf mlflow.db mlruns mlflow-server.db mlartifacts airflow_dags airflow_home

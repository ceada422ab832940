"""The scale-out engine: the detection pipeline as a kedro-airflow DAG, run locally by Airflow's LocalExecutor
with the two test categories in parallel, tracked by one MLflow server on 127.0.0.1."""

import os
import shutil
import subprocess

import pytest
import servers
from conftest import TINY_CATEGORIES, make_project_copy
from mlflow import MlflowClient

from cutpaste.engine import TEMPLATE
from cutpaste.engine.local import run_dag

pytestmark = pytest.mark.slow


def generate_dag(project, env: str = "test", pipeline: str = "detection") -> None:
    subprocess.run([str(servers.BIN_DIR / "kedro"), "airflow", "create", f"--pipelines={pipeline}", f"--env={env}", "--group-by", "namespace",
                    "--jinja-file", str(TEMPLATE), "--target-dir", "airflow_dags"],
                   cwd=project, env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "KEDRO_ENV": env}, check=True, capture_output=True)


@pytest.fixture(scope="module")
def detection_dags(tmp_path_factory):
    """The detection DAG of env "test", generated once (``kedro airflow create`` takes seconds): it reads the
    project's configuration when its tasks run, so every test copies the folder into its own project."""
    project = make_project_copy(tmp_path_factory.mktemp("dag") / "project")
    generate_dag(project)
    return project / "airflow_dags"


def _with_dags(project, dags) -> None:
    shutil.copytree(dags, project / "airflow_dags")


def test_detection_dag_runs_the_categories_in_parallel_under_one_parent_run(project_copy, detection_dags, tmp_path, monkeypatch):
    _with_dags(project_copy, detection_dags)
    dag_file = project_copy / "airflow_dags" / "cutpaste_test_detection_dag.py"
    assert dag_file.is_file()
    server, uri = servers.start_tracking_server(tmp_path / "tracking")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("KEDRO_ENV", "test")
    try:
        result = run_dag("cutpaste_detection_test", project_copy, airflow_home=tmp_path / "airflow", timeout_s=400)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("cutpaste")
        parents = client.search_runs([experiment.experiment_id], "tags.engine = 'airflow'")
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        parent = parents[0]
        children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        assert sorted(child.info.run_name for child in children) == TINY_CATEGORIES
        for child in children:
            assert child.info.status == "FINISHED"
            assert 0 <= child.data.metrics["image_auroc"] <= 1
            assert "figures/roc.png" in {item.path for item in client.list_artifacts(child.info.run_id, "figures")}
        assert max(child.info.start_time for child in children) < min(child.info.end_time for child in children)  # in parallel
        assert "tables/detection_table.csv" in {item.path for item in client.list_artifacts(parent.info.run_id, "tables")}
    finally:
        servers.stop(server)
    for category in TINY_CATEGORIES:
        for path in ("data/06_models/{c}/model.pt", "data/06_models/{c}/density.pkl", "data/08_reporting/{c}/metrics.json"):
            assert (project_copy / path.format(c=category)).is_file()
    assert (project_copy / "data/08_reporting/detection_table.csv").is_file()


def test_a_failing_category_task_fails_the_dag_run_and_its_parent_run(project_copy, detection_dags, tmp_path, monkeypatch):
    (project_copy / "conf/test/parameters.yml").write_text((project_copy / "conf/test/parameters.yml").read_text().replace("generate: true", "generate: false")
                                                           + "data_root: no_such_folder\n")
    _with_dags(project_copy, detection_dags)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'tracking.db'}")
    result = run_dag("cutpaste_detection_test", project_copy, airflow_home=tmp_path / "airflow", timeout_s=400)
    assert result.returncode != 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'tracking.db'}")
    parent = client.search_runs([client.get_experiment_by_name("cutpaste").experiment_id], "tags.engine = 'airflow'")[0]
    assert parent.info.status == "FAILED"

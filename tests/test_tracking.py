"""Tracking faults never cost work: an unreachable server, a server that stops mid-run, a new sqlite store
opened by several processes at once."""

import subprocess
import sys
import threading
import time

import pytest
import servers
from conftest import run_kedro
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

BRICK_ARTIFACTS = ("data/06_models/brick/model.pt", "data/06_models/brick/density.pkl", "data/08_reporting/brick/metrics.json",
                   "data/08_reporting/brick/roc.png", "data/07_model_output/brick/scores.csv")


@pytest.fixture
def tracking_warnings(monkeypatch):
    """Warnings of the tracking hook (Kedro's logging set-up replaces the handlers caplog would use)."""
    from cutpaste import tracking

    records: list[str] = []
    warning = tracking.logger.warning

    def record(message, *args, **kwargs):
        records.append(message % args if args else message)
        warning(message, *args, **kwargs)

    monkeypatch.setattr(tracking.logger, "warning", record)
    return records


def test_an_unreachable_tracking_server_costs_nothing(project_copy, monkeypatch, tracking_warnings):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    started = time.monotonic()
    run_kedro(project_copy, tracking_uri=f"http://127.0.0.1:{servers.free_port()}", namespaces=["brick"])
    assert all((project_copy / path).is_file() for path in BRICK_ARTIFACTS)
    assert [message for message in tracking_warnings if "the run goes on without tracking" in message]
    assert time.monotonic() - started < 240


def test_a_tracking_server_stopped_mid_run_costs_nothing(project_copy, tmp_path, tracking_warnings):
    server, uri = servers.start_tracking_server(tmp_path / "tracking")
    outcome: dict = {}

    def run():
        try:
            run_kedro(project_copy, tracking_uri=uri, namespaces=["brick"])
        except BaseException as error:  # handed to the test thread
            outcome["error"] = error

    worker = threading.Thread(target=run)
    try:
        worker.start()
        client, deadline = MlflowClient(uri), time.monotonic() + 120
        while time.monotonic() < deadline and worker.is_alive():
            experiment = client.get_experiment_by_name("cutpaste")
            if experiment and client.search_runs([experiment.experiment_id], "attributes.run_name = 'brick'"):
                break  # the category's child run exists: the run is under way
            time.sleep(0.2)
        else:
            pytest.fail("the run never created its brick child run")
    finally:
        servers.stop(server)
    worker.join(timeout=300)
    assert not worker.is_alive() and "error" not in outcome, outcome
    assert all((project_copy / path).is_file() for path in BRICK_ARTIFACTS)
    assert [message for message in tracking_warnings if "the run goes on without tracking" in message]


def test_a_new_sqlite_store_opened_by_three_processes_at_once(tmp_path):
    """The schema race of a fresh sqlite file (``table ... already exists``) is retried away."""
    uri = f"sqlite:///{tmp_path / 'race.db'}"
    code = f"from cutpaste.tracking import prepare_store; print(prepare_store({uri!r}))"
    processes = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [process.communicate(timeout=180) for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], [err[-2000:] for _, err in results]
    assert len({out.strip() for out, _ in results}) == 1  # one experiment, the same id for all

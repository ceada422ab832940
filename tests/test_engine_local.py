"""The local DAG runner's watch on `airflow dags test` (a stand-in `airflow` script, no Airflow)."""

import sqlite3
import subprocess
import sys
import time

import pytest

from cutpaste.engine import local


def _fake_airflow(folder, body: str):
    script = folder / "airflow"
    script.write_text(f"#!{sys.executable}\n{body}")
    script.chmod(0o755)
    return folder


def _database(path, state: str | None):
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE dag_run (id INTEGER PRIMARY KEY, dag_id TEXT, state TEXT)")
        if state:
            connection.execute("INSERT INTO dag_run (dag_id, state) VALUES ('other', 'running'), ('widget', ?)", (state,))


@pytest.mark.parametrize(("state", "code"), [("success", 0), ("failed", 1)])
def test_a_dags_test_that_does_not_exit_after_its_run_ended_is_stopped_and_the_run_state_decides(tmp_path, monkeypatch, state, code):
    database = tmp_path / "airflow.db"
    _database(database, state)
    monkeypatch.setattr(local, "BIN_DIR", _fake_airflow(tmp_path, "import time\nprint('ran', flush=True)\ntime.sleep(600)\n"))
    started = time.monotonic()
    result = local._dags_test("widget", tmp_path, {}, database, timeout_s=60, exit_grace_s=1)
    assert time.monotonic() - started < 30
    assert result.returncode == code and "ran" in result.stdout and f"ended ({state})" in result.stderr


def test_a_dags_test_that_exits_keeps_its_own_code_and_a_run_that_never_ends_times_out(tmp_path, monkeypatch):
    database = tmp_path / "airflow.db"
    _database(database, "success")
    monkeypatch.setattr(local, "BIN_DIR", _fake_airflow(tmp_path, "import sys\nprint('done')\nsys.exit(3)\n"))
    result = local._dags_test("widget", tmp_path, {}, database, timeout_s=60, exit_grace_s=30)
    assert result.returncode == 3 and result.stdout.strip() == "done" and "stopped" not in result.stderr
    running = tmp_path / "running.db"
    _database(running, "running")
    monkeypatch.setattr(local, "BIN_DIR", _fake_airflow(tmp_path, "import time\ntime.sleep(600)\n"))
    with pytest.raises(subprocess.TimeoutExpired):
        local._dags_test("widget", tmp_path, {}, running, timeout_s=2, exit_grace_s=1)
    assert local.latest_run_state(tmp_path / "absent.db", "widget") is None
    assert local.latest_run_state(running, "nothing") is None

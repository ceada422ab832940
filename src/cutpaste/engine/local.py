"""Run a generated Airflow DAG on this machine: Airflow 3's LocalExecutor (one process per task, tasks in
parallel) with a SQLite metadata database, and the short-lived task-API server its task processes report to.

    python -m cutpaste.engine.local --dag-id cutpaste_detection_local      # what `make airflow-run` calls

No scheduler or web UI is started; ``airflow dags test --use-executor`` runs one DAG run to the end and
exits non-zero when a task failed. On a cluster the same DAG file goes into the scheduler's DAG folder.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from cutpaste.processes import free_port, stop_process_group, wait_until_answers

BIN_DIR = Path(sys.executable).parent
FINAL_STATES = ("success", "failed")  # a DAG run's terminal states
EXIT_GRACE_S = 60.0  # how long `airflow dags test` may take to exit once its DAG run has ended


def airflow_environment(project_path: Path, dags_folder: Path, airflow_home: Path, port: int, parallelism: int) -> dict[str, str]:
    """The environment every Airflow process of a local run shares (the JWT secret must be the same)."""
    return {
        **os.environ,
        "KEDRO_DISABLE_TELEMETRY": os.environ.get("KEDRO_DISABLE_TELEMETRY", "true"),
        "CUTPASTE_PROJECT_PATH": str(project_path),
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder.resolve()),  # relative: task processes cannot find the DAG
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        "AIRFLOW__API_AUTH__JWT_SECRET": os.environ.get("AIRFLOW__API_AUTH__JWT_SECRET") or secrets.token_hex(32),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
        # every task process would otherwise start one torch thread per core: parallel tasks oversubscribe the CPU
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // parallelism)),
    }


def run_dag(dag_id: str, project_path: Path, dags_folder: Path | None = None, airflow_home: Path | None = None,
            parallelism: int = 4, timeout_s: float = 3600) -> subprocess.CompletedProcess:
    """Migrate the metadata database, start the task API, run ``dag_id`` once with the LocalExecutor, stop the API."""
    project_path = Path(project_path).resolve()
    dags_folder = dags_folder or project_path / "airflow_dags"
    airflow_home = airflow_home or project_path / "airflow_home"
    port = free_port()
    env = airflow_environment(project_path, Path(dags_folder), Path(airflow_home), port, parallelism)
    subprocess.run([str(BIN_DIR / "airflow"), "db", "migrate"], check=True, env=env, cwd=project_path, capture_output=True)
    with open(Path(airflow_home) / "api-server.log", "ab") as log:
        server = subprocess.Popen([str(BIN_DIR / "airflow"), "api-server", "--apps", "execution", "-H", "127.0.0.1", "-p", str(port), "-w", "1"],
                                  env=env, cwd=project_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        if wait_until_answers(server, f"http://127.0.0.1:{port}/execution/health", timeout_s=120) is None:
            raise RuntimeError(f"the Airflow task API did not start; see {Path(airflow_home) / 'api-server.log'}")
        return _dags_test(dag_id, project_path, env, Path(airflow_home) / "airflow.db", timeout_s)
    finally:
        stop_process_group(server)


def latest_run_state(database: Path, dag_id: str) -> str | None:
    """The state of ``dag_id``'s latest DAG run in the SQLite metadata database (None before the first)."""
    import sqlite3

    if not database.is_file():
        return None
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as connection:
            row = connection.execute("SELECT state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)).fetchone()
    except sqlite3.Error:  # locked or not migrated yet: ask again later
        return None
    return None if row is None else str(row[0])


def _dags_test(dag_id: str, project_path: Path, env: dict[str, str], database: Path, timeout_s: float,
               exit_grace_s: float = EXIT_GRACE_S) -> subprocess.CompletedProcess:
    """``airflow dags test --use-executor``, watched: its result when it exits. Now and then it does
    not exit after the DAG run has finished (its LocalExecutor worker stays up, idle); once the run is
    in a final state for ``exit_grace_s`` the process group is stopped and the run's state decides the
    return code. ``subprocess.TimeoutExpired`` after ``timeout_s`` otherwise."""
    import tempfile

    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen([str(BIN_DIR / "airflow"), "dags", "test", dag_id, "--use-executor"], env=env, cwd=project_path,
                                   stdout=stdout, stderr=stderr, text=True, start_new_session=True)
        started, finished_at, state = time.monotonic(), None, None
        try:
            while process.poll() is None:
                if time.monotonic() - started > timeout_s:
                    raise subprocess.TimeoutExpired(process.args, timeout_s)
                state = latest_run_state(database, dag_id)
                if state in FINAL_STATES:
                    finished_at = finished_at or time.monotonic()
                    if time.monotonic() - finished_at > exit_grace_s:
                        break
                time.sleep(1.0)
        finally:
            hung = process.poll() is None
            if hung:
                stop_process_group(process, timeout_s=10)
        stdout.seek(0)
        stderr.seek(0)
        out, err = stdout.read(), stderr.read()
    if hung:
        err += f"\nairflow dags test had not exited {exit_grace_s:.0f} s after the DAG run ended ({state}); its processes were stopped\n"
        return subprocess.CompletedProcess(process.args, 0 if state == "success" else 1, out, err)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dag-id", required=True)
    parser.add_argument("--project-path", type=Path, default=Path.cwd())
    parser.add_argument("--dags-folder", type=Path, default=None)
    parser.add_argument("--airflow-home", type=Path, default=None)
    parser.add_argument("--parallelism", type=int, default=4)
    args = parser.parse_args(argv)
    started = time.monotonic()
    result = run_dag(args.dag_id, args.project_path, args.dags_folder, args.airflow_home, args.parallelism)
    sys.stdout.write(result.stdout[-20000:])
    sys.stderr.write(result.stderr[-20000:])
    sys.stderr.write(f"DAG {args.dag_id}: {'success' if result.returncode == 0 else 'FAILED'} in {time.monotonic() - started:.1f} s\n")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())

"""Scale-out on Apache Airflow through Kedro's Airflow plugin (kedro-airflow).

``kedro airflow create --group-by namespace --jinja-file src/cutpaste/engine/dag_template.j2`` (``make dag``)
writes one DAG per pipeline: a ``start_tracking`` task creates the MLflow store and the run's parent run,
one task per category namespace runs ``kedro run --namespaces=<category>`` in its own process (the
categories in parallel), the report task runs after them, ``finish_tracking`` closes the parent run
(FAILED when a category failed) whatever happened, and ``fail_if_a_task_failed`` marks the DAG run failed
when any task failed. Every task logs under the one parent run through
``CUTPASTE_MLFLOW_PARENT_RUN_ID``. Artifacts pass between tasks through the catalog's files only, so
on a cluster ``data/`` must be shared storage and ``MLFLOW_TRACKING_URI`` one tracking server.

The functions here are what the generated DAG's tasks call; :mod:`cutpaste.engine.local` runs a DAG on
one machine with Airflow's LocalExecutor.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cutpaste import tracking

logger = logging.getLogger(__name__)

TEMPLATE = Path(__file__).with_name("dag_template.j2")


def tracking_settings(project_path: Path, env: str) -> dict:
    """``enabled``, ``tracking_uri`` and ``experiment_name`` as the tracking hook resolves them."""
    from kedro.config import MissingConfigException

    from cutpaste import registration

    try:
        config = dict(registration.config_loader(env, Path(project_path))["mlflow"])
    except MissingConfigException:
        config = {}
    uri = os.environ.get("MLFLOW_TRACKING_URI") or config.get("tracking_uri") or f"sqlite:///{Path(project_path) / 'mlflow.db'}"
    return {"enabled": bool(config.get("enabled", True)), "tracking_uri": uri, "experiment_name": config.get("experiment_name", "cutpaste")}


def start_tracking(project_path: str | Path, env: str, pipeline_name: str, engine_run_id: str = "") -> str | None:
    """Create the tracking store (once, before the parallel tasks) and the run's parent run; its id, or
    None when tracking is off or fails (the tasks then run untracked)."""
    settings = {"tracking_uri": "?"}
    try:
        settings = tracking_settings(Path(project_path), env)
        if not settings["enabled"]:
            return None
        tracking.limit_http_retries()
        run_id = tracking.start_parent_run(settings["tracking_uri"], settings["experiment_name"], f"{pipeline_name} {engine_run_id}".strip(),
                                           {"kedro.env": env, "kedro.pipelines": pipeline_name, "engine": "airflow", "engine.run_id": engine_run_id})
    except Exception as error:  # tracking never stops the work
        logger.warning("MLflow tracking at %s failed (%s); the tasks run without tracking", settings["tracking_uri"], error)
        return None
    logger.info("MLflow: parent run %s for pipeline %s", run_id, pipeline_name)
    return run_id


def run_task(project_path: str | Path, env: str, pipeline_name: str, parent_run_id: str | None,
             namespaces: list[str] | None = None, node_names: list[str] | None = None) -> None:
    """One task of the DAG: ``kedro run --pipelines=<pipeline_name>`` restricted to ``namespaces`` (a category)
    or ``node_names`` (a report), its MLflow child runs under ``parent_run_id``."""
    from kedro.framework.project import configure_project
    from kedro.framework.session import KedroSession

    os.environ["KEDRO_ENV"] = env
    if parent_run_id:
        os.environ[tracking.PARENT_RUN_ENV] = parent_run_id
    configure_project("cutpaste")
    with KedroSession.create(project_path=Path(project_path), env=env) as session:
        session.run(pipeline_names=[pipeline_name], namespaces=namespaces, node_names=node_names)


def finish_tracking(project_path: str | Path, env: str, parent_run_id: str | None) -> str | None:
    """Close the parent run (FAILED when a child run failed); its status, or None without tracking."""
    if not parent_run_id:
        return None
    try:
        settings = tracking_settings(Path(project_path), env)
        tracking.limit_http_retries()
        return tracking.finish_parent_run(settings["tracking_uri"], parent_run_id)
    except Exception as error:  # tracking never stops the work
        logger.warning("MLflow: could not close parent run %s (%s)", parent_run_id, error)
        return None

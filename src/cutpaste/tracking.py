"""MLflow tracking of every ``kedro run`` (a Kedro hook with plain MLflow client calls).

Run layout, in one experiment (``experiment_name``, default ``cutpaste``):

* **parent run**: one per ``kedro run``, named ``<pipelines> <kedro run id>``, tagged ``kedro.env``,
  ``kedro.run_id``, ``kedro.pipelines``; holds the runtime ``--params`` and every artifact of nodes
  outside a category namespace (the cross-category tables). When several processes make up one run
  (the Airflow DAG: one task per category), the first task creates the parent and every task names
  it with ``CUTPASTE_MLFLOW_PARENT_RUN_ID`` (or ``parent_run_id`` in ``mlflow.yml``); a process that
  was given its parent leaves it open for the task that finishes the run (:func:`finish_parent_run`).
* **child run** per category namespace (``mlflow.parentRunId`` = the parent, run name = the category,
  tag ``category``): the parameters of its nodes, the loss / proxy-accuracy / lr curves per step,
  image and pixel metrics, figures (``figures/*.png``), tables (``tables/*.csv``) and the detector
  as an MLflow pyfunc model (tag ``detector_model_uri``).
* the variants pipeline has one child run per trained model, tagged variant, category, seed (and
  point, sweep, value), so that MLflow's compare view ranks the proxy tasks.

Tracking never costs a result: a tracking store that is unreachable or fails logs one warning and the
run goes on untracked, with every catalog artifact written. HTTP requests to a tracking server give up
after ``request_timeout_s`` x (``request_retries`` + 1) (MLflow's own client otherwise retries for minutes).
The first use of a new sqlite store creates its schema, which MLflow does not do atomically: :func:`prepare_store`
(called when a run starts, and by the DAG's first task) holds a file lock beside the database while it does, and retries.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)

PARENT_RUN_ENV = "CUTPASTE_MLFLOW_PARENT_RUN_ID"
START_ATTEMPTS = 3


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> dict[str, str]:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = str(value)[:6000]
    return out


def limit_http_retries(timeout_s: float = 10, retries: int = 1) -> None:
    """Bound how long MLflow's HTTP client waits for a tracking server (environment variables it reads
    per request; values the user set win)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(timeout_s)))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(int(retries)))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def prepare_store(tracking_uri: str, experiment_name: str = "cutpaste", attempts: int = START_ATTEMPTS) -> str:
    """Create the tracking store's schema (a new sqlite file) and the experiment once; returns its id."""
    from mlflow import MlflowClient

    def create() -> str:
        client = MlflowClient(tracking_uri=tracking_uri)
        experiment = client.get_experiment_by_name(experiment_name)
        return experiment.experiment_id if experiment else client.create_experiment(experiment_name)

    if tracking_uri.startswith("sqlite:///"):  # MLflow's schema migration of a new file is not atomic: one process at a time
        from filelock import FileLock

        with FileLock(f"{tracking_uri.removeprefix('sqlite:///')}.lock", timeout=300):
            return _retry(create, attempts)
    return _retry(create, attempts)


def _retry(call: Callable[[], Any], attempts: int) -> Any:
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as error:  # e.g. two processes creating a sqlite schema together
            if attempt == attempts:
                raise
            logger.info("MLflow: %s; retrying (%d of %d)", error, attempt + 1, attempts)
            time.sleep(0.5 * attempt)
    return None


def start_parent_run(tracking_uri: str, experiment_name: str, run_name: str, tags: dict[str, str] | None = None) -> str:
    """Create the parent run of a run made of several processes (the engine's first task); returns its id."""
    from mlflow import MlflowClient

    experiment_id = prepare_store(tracking_uri, experiment_name)
    return MlflowClient(tracking_uri=tracking_uri).create_run(experiment_id, run_name=run_name, tags=tags or {}).info.run_id


def finish_parent_run(tracking_uri: str, run_id: str) -> str:
    """Close a shared parent run: FAILED when any of its child runs failed, else FINISHED; returns the status."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    parent = client.get_run(run_id)
    children = client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    status = "FAILED" if any(child.info.status == "FAILED" for child in children) else "FINISHED"
    client.set_terminated(run_id, status)
    return status


def _tolerant(method: Callable) -> Callable:
    """A hook method that does nothing while tracking is off, and whose tracking failure turns tracking
    off for the rest of the run with a warning (``before_pipeline_run`` is what turns it on)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self.client is None and method.__name__ != "before_pipeline_run":
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as error:  # tracking must never cost a computed result
            self.give_up(error)
            return None

    return wrapper


class MlflowTrackingHook:
    """Tracks every ``kedro run`` in MLflow with plain MLflow client calls (layout: module docstring).

    Settings (``conf/<env>/mlflow.yml``): ``enabled``, ``tracking_uri`` (default
    ``sqlite:///<project>/mlflow.db``; the MLFLOW_TRACKING_URI environment variable wins),
    ``experiment_name``, ``parent_run_id`` (``CUTPASTE_MLFLOW_PARENT_RUN_ID`` wins), ``request_timeout_s``
    and ``request_retries`` (HTTP tracking servers).
    """

    def __init__(self) -> None:
        self.enabled = False
        self.client = None
        self.parent_run_id: str | None = None
        self.owns_parent = True
        self.child_runs: dict[str, str] = {}
        self.logged_params: dict[str, set[str]] = {}

    def give_up(self, error: Exception) -> None:
        """Stop tracking this run after a tracking failure; the pipeline goes on."""
        logger.warning("MLflow tracking at %s failed (%s: %s); the run goes on without tracking, every catalog artifact is still written",
                       getattr(self, "tracking_uri", "?"), type(error).__name__, str(error)[:300])
        self.client = None

    @hook_impl
    def after_context_created(self, context) -> None:
        try:
            config = dict(context.config_loader["mlflow"])
        except Exception:  # no mlflow.yml in this env
            config = {}
        self.enabled = bool(config.get("enabled", True))
        self.tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or config.get("tracking_uri") or f"sqlite:///{Path(context.project_path) / 'mlflow.db'}"
        self.experiment_name = config.get("experiment_name", "cutpaste")
        self.given_parent = os.environ.get(PARENT_RUN_ENV) or config.get("parent_run_id") or None
        self.request_timeout_s = float(config.get("request_timeout_s", 10))
        self.request_retries = int(config.get("request_retries", 1))

    @hook_impl
    @_tolerant
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow import MlflowClient

        limit_http_retries(self.request_timeout_s, self.request_retries)
        self.child_runs, self.logged_params = {}, {}
        self.experiment_id = prepare_store(self.tracking_uri, self.experiment_name)
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        names = run_params.get("pipeline_names") or ["__default__"]
        if self.given_parent:
            parent = self.client.get_run(self.given_parent)
            self.parent_run_id, self.owns_parent, self.experiment_id = parent.info.run_id, False, parent.info.experiment_id
        else:
            tags = {"kedro.env": str(run_params.get("env")), "kedro.run_id": str(run_params.get("run_id")), "kedro.pipelines": ",".join(names)}
            run = self.client.create_run(self.experiment_id, run_name=f"{'+'.join(names)} {run_params.get('run_id', '')[:19]}", tags=tags)
            self.parent_run_id, self.owns_parent = run.info.run_id, True
        runtime = run_params.get("runtime_params") or {}
        if runtime and self.owns_parent:
            self._log_params(self.parent_run_id, _flatten("runtime", runtime, {}))
        logger.info("MLflow: parent run %s in experiment '%s' at %s", self.parent_run_id, self.experiment_name, self.tracking_uri)

    def _run_for(self, node) -> str:
        from cutpaste.namespaces import child_run

        variant_run = child_run(node.namespace)  # variants pipeline: one child run per (variant, category, seed)
        if variant_run is not None:
            return self._child(*variant_run) if variant_run[0] else self.parent_run_id
        namespace = (node.namespace or "").split(".")[0]
        if not namespace:
            return self.parent_run_id
        return self._child(namespace, {"category": namespace})

    def _child(self, name: str, tags: dict[str, str]) -> str:
        if name not in self.child_runs:
            run = self.client.create_run(self.experiment_id, run_name=name, tags={"mlflow.parentRunId": self.parent_run_id, **tags})
            self.child_runs[name] = run.info.run_id
        return self.child_runs[name]

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        seen = self.logged_params.setdefault(run_id, set())
        fresh = [Param(key, value) for key, value in params.items() if key not in seen]
        for start in range(0, len(fresh), 100):
            self.client.log_batch(run_id, params=fresh[start : start + 100])
        seen.update(params)

    @hook_impl
    @_tolerant
    def before_node_run(self, node, inputs: dict[str, Any]) -> None:
        run_id = self._run_for(node)
        params: dict[str, str] = {}
        for name, value in inputs.items():
            if name.startswith("params:"):
                _flatten(name.removeprefix("params:"), value, params)
        if params:
            self._log_params(run_id, params)

    @hook_impl
    @_tolerant
    def after_node_run(self, node, outputs: dict[str, Any]) -> None:
        run_id = self._run_for(node)
        for name, value in outputs.items():
            if not self.client:
                return
            try:
                self._log_output(run_id, name.split(".")[-1], value)
            except (TypeError, ValueError) as error:  # one value MLflow cannot take; the others still go
                logger.warning("MLflow: could not log %s (%s)", name, error)

    def _log_output(self, run_id: str, name: str, value: Any) -> None:
        import matplotlib.figure
        from mlflow.entities import Metric

        from cutpaste.core.detector import Detector
        from cutpaste.core.localize import Localizer

        if isinstance(value, Detector):
            self._log_detector(run_id, value)
        elif isinstance(value, Localizer):
            self._log_localizer(run_id, value)
        elif name.endswith("metrics") and isinstance(value, dict):
            for key, metric in value.items():
                if isinstance(metric, (int, float)):
                    self.client.log_metric(run_id, key, float(metric))
        elif isinstance(value, matplotlib.figure.Figure):
            self.client.log_figure(run_id, value, f"figures/{name.removesuffix('_figure')}.png")
        elif isinstance(value, pd.DataFrame):
            if name.endswith("training_history"):  # training_history, patch_training_history
                prefix = name.removesuffix("training_history")
                metrics = [
                    Metric(f"{prefix}train_{key}", float(row[key]), 0, int(row["step"]))
                    for row in value.to_dict("records") for key in ("loss", "accuracy", "lr")
                ]
                for start in range(0, len(metrics), 1000):
                    self.client.log_batch(run_id, metrics=metrics[start : start + 1000])
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / f"{name}.csv"
                value.to_csv(path, index=False)
                self.client.log_artifact(run_id, str(path), "tables")
        elif isinstance(value, str) and name.endswith("markdown"):
            self.client.log_text(run_id, value, f"tables/{name}.md")

    def _log_localizer(self, run_id: str, localizer) -> None:
        """Which maps a fused localizer returns (tag ``map_component``), how its normalised maps are centred (tag
        ``map_center``; with "image_median_capped" its cap, metric ``map_center_cap``) and, when it chose them on synthetic defects (``localization.stem.component`` or
        ``localization.map_center``: synthetic), every candidate's pixel and image AUROC there
        (``synthetic_<component>_*``, ``synthetic_center_<centre>_*``)."""
        from cutpaste.core.localize import COMPONENTS, SYNTHETIC_CENTERS

        if localizer.fused:
            self.client.set_tag(run_id, "map_component", localizer.component)
        if localizer.normalized:
            self.client.set_tag(run_id, "map_center", localizer.map_center)
            if localizer.map_center == "image_median_capped":  # the most it subtracts: the calibration maps' highest median
                self.client.log_metric(run_id, "map_center_cap", localizer.center_cap())
        for component in COMPONENTS if localizer.component_scores else ():
            for key in ("pixel_auroc", "image_auroc"):
                self.client.log_metric(run_id, f"synthetic_{component}_{key}", float(localizer.component_scores[component][key]))
        for center in SYNTHETIC_CENTERS if localizer.center_scores else ():
            for key in ("pixel_auroc", "image_auroc"):
                self.client.log_metric(run_id, f"synthetic_center_{center}_{key}", float(localizer.center_scores[center][key]))

    def _log_detector(self, run_id: str, detector) -> None:
        """Log the detector as an MLflow pyfunc model ("detector") of the category's run."""
        import mlflow

        from cutpaste.serving import log_pyfunc

        mlflow.set_tracking_uri(self.tracking_uri)
        with tempfile.TemporaryDirectory() as folder, mlflow.start_run(run_id=run_id):
            info = log_pyfunc(detector.save(Path(folder) / "detector"))
        self.client.update_run(run_id, status="RUNNING")  # start_run's exit closed it; the category goes on
        self.client.set_tag(run_id, "detector_model_uri", info.model_uri)
        logger.info("MLflow: detector of %s logged as %s", detector.category, info.model_uri)

    def _finish(self, status: str) -> None:
        for run_id in self.child_runs.values():
            if self.client.get_run(run_id).info.status == "RUNNING":
                self.client.set_terminated(run_id, status)
        if self.owns_parent:
            self.client.set_terminated(self.parent_run_id, status)
        self.client = None

    @hook_impl
    @_tolerant
    def on_node_error(self, node) -> None:
        if node.namespace:
            self.client.set_terminated(self._run_for(node), "FAILED")

    @hook_impl
    @_tolerant
    def after_pipeline_run(self) -> None:
        self._finish("FINISHED")

    @hook_impl
    @_tolerant
    def on_pipeline_error(self) -> None:
        self._finish("FAILED")

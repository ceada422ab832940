"""MLflow tracking of every ``kedro run`` (a Kedro hook with plain MLflow client calls).

MLflow layout: one parent run per ``kedro run``; one child run per namespace (category) holding
that category's parameters, metrics (loss curve per step, image AUROC), figures and tables. The
variants pipeline has one child run per trained model, tagged variant, category, seed (and point,
sweep, value), so that MLflow's compare view ranks the proxy tasks.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> dict[str, str]:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = str(value)[:6000]
    return out


class MlflowTrackingHook:
    """Tracks every ``kedro run`` in MLflow with plain MLflow client calls.

    Settings (``conf/<env>/mlflow.yml``): ``enabled``, ``tracking_uri`` (default
    ``sqlite:///<project>/mlflow.db``; the MLFLOW_TRACKING_URI environment variable wins),
    ``experiment_name``.
    """

    def __init__(self) -> None:
        self.enabled = False
        self.client = None
        self.parent_run_id: str | None = None
        self.child_runs: dict[str, str] = {}
        self.logged_params: dict[str, set[str]] = {}

    @hook_impl
    def after_context_created(self, context) -> None:
        try:
            config = dict(context.config_loader["mlflow"])
        except Exception:  # no mlflow.yml in this env
            config = {}
        self.enabled = bool(config.get("enabled", True))
        self.tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or config.get("tracking_uri") or f"sqlite:///{Path(context.project_path) / 'mlflow.db'}"
        self.experiment_name = config.get("experiment_name", "cutpaste")

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(self.experiment_name)
        self.experiment_id = experiment_id
        names = run_params.get("pipeline_names") or ["__default__"]
        tags = {"kedro.env": str(run_params.get("env")), "kedro.run_id": str(run_params.get("run_id")), "kedro.pipelines": ",".join(names)}
        run = self.client.create_run(experiment_id, run_name=f"{'+'.join(names)} {run_params.get('run_id', '')[:19]}", tags=tags)
        self.parent_run_id = run.info.run_id
        self.child_runs = {}
        self.logged_params = {}
        runtime = run_params.get("runtime_params") or {}
        if runtime:
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
    def before_node_run(self, node, inputs: dict[str, Any]) -> None:
        if not self.client:
            return
        run_id = self._run_for(node)
        params: dict[str, str] = {}
        for name, value in inputs.items():
            if name.startswith("params:"):
                _flatten(name.removeprefix("params:"), value, params)
        if params:
            self._log_params(run_id, params)

    @hook_impl
    def after_node_run(self, node, outputs: dict[str, Any]) -> None:
        if not self.client:
            return
        run_id = self._run_for(node)
        for name, value in outputs.items():
            short = name.split(".")[-1]
            try:
                self._log_output(run_id, short, value)
            except Exception as error:  # tracking must never lose a computed result
                logger.warning("MLflow: could not log %s (%s)", name, error)

    def _log_output(self, run_id: str, name: str, value: Any) -> None:
        import matplotlib.figure
        from mlflow.entities import Metric

        from cutpaste.core.detector import Detector

        if isinstance(value, Detector):
            self._log_detector(run_id, value)
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
        if not self.client:
            return
        for run_id in self.child_runs.values():
            if self.client.get_run(run_id).info.status == "RUNNING":
                self.client.set_terminated(run_id, status)
        self.client.set_terminated(self.parent_run_id, status)
        self.client = None

    @hook_impl
    def on_node_error(self, node) -> None:
        if self.client and node.namespace:
            self.client.set_terminated(self._run_for(node), "FAILED")

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._finish("FINISHED")

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._finish("FAILED")

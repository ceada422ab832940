"""The default pipeline end to end through a KedroSession, at tiny size (conf/test)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_kedro
from mlflow import MlflowClient

pytestmark = pytest.mark.slow


def _runs(project):
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cutpaste")
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def test_default_pipeline_end_to_end_with_mlflow_and_resume(trained_project):
    project_copy = trained_project

    table = pd.read_csv(project_copy / "data/08_reporting/detection_table.csv")
    assert table["category"].tolist() == ["brick", "gravel", "mean"]
    assert table["image_auroc"].between(0, 100).all()
    assert table["n_test"].tolist()[:2] == [14, 14]
    assert "| brick" in (project_copy / "data/08_reporting/detection_table.md").read_text()
    scores = pd.read_csv(project_copy / "data/07_model_output/brick/scores.csv")
    assert list(scores.columns) == ["path", "defect_type", "label", "score", "score_pooled", "score_stem"] and len(scores) == 14
    image_score = pd.read_pickle(project_copy / "data/06_models/brick/image_score.pkl")
    assert image_score.method == "zsum"  # the base default
    zsum = sum((np.log2(scores[f"score_{name}"]) - image_score.log_stats[name][0]) / image_score.log_stats[name][1]
               for name in ("pooled", "stem"))
    np.testing.assert_allclose(scores["score"], np.exp2(zsum), rtol=1e-9)
    split = json.loads((project_copy / "data/05_model_input/brick/holdout_split.json").read_text())
    assert sorted(split["fit"] + split["calibration"]) == list(range(12)) and len(split["calibration"]) == 6
    threshold = json.loads((project_copy / "data/06_models/brick/threshold.json").read_text())
    assert threshold["n_images"] == len(split["calibration"]) == len(image_score.calibration_scores)
    calibration_sums = np.log2(image_score.calibration_scores)
    assert abs(calibration_sums.mean()) < 1e-9  # z-scores under the calibration images' own statistics
    assert threshold["value"] > np.exp2(calibration_sums.max())  # a 99 % prediction bound from 6 images lies above all 6
    checkpoint = torch.load(project_copy / "data/06_models/checkpoints/brick/3way_seed0.pt", weights_only=True)
    assert checkpoint["data"].startswith("(6, ")  # the proxy task trained on the 6 fit images only
    for figure in ("roc", "score_histogram", "training"):
        assert (project_copy / f"data/08_reporting/gravel/{figure}.png").stat().st_size > 1000

    client, runs = _runs(project_copy)
    parent = [run for run in runs if "mlflow.parentRunId" not in run.data.tags][:1]  # the first kedro run
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert parent[0].info.status == "FINISHED" and parent[0].data.tags["kedro.pipelines"] == "__default__"
    assert sorted(run.info.run_name for run in children) == ["brick", "gravel"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["detector_model_uri"].startswith("models:/")
        assert 0 <= child.data.metrics["fpr_normal_test_at_threshold"] <= 1
        assert 0 <= child.data.metrics["image_auroc"] <= 1
        assert child.data.params["augment.task"] == "3way" and child.data.params["training.steps"] == "6"
        assert len(client.get_metric_history(child.info.run_id, "train_loss")) == 6
        artifacts = {item.path for folder in ("figures", "tables") for item in client.list_artifacts(child.info.run_id, folder)}
        assert {"figures/roc.png", "figures/score_histogram.png", "tables/scores.csv"} <= artifacts

    model_file = project_copy / "data/06_models/brick/model.pt"
    stamp = model_file.stat().st_mtime_ns
    (project_copy / "data/08_reporting/detection_table.csv").unlink()
    run_kedro(project_copy, only_missing_outputs=True)
    assert (project_copy / "data/08_reporting/detection_table.csv").is_file()
    assert model_file.stat().st_mtime_ns == stamp  # nothing upstream of the missing table re-ran


def test_failed_node_marks_its_mlflow_runs_failed(project_copy):
    missing = project_copy / "no_such_data"
    with pytest.raises(Exception, match="category folder not found"):
        run_kedro(project_copy, runtime_params={"data_root": str(missing), "demo": {"generate": False}}, namespaces=["brick"])
    _, runs = _runs(project_copy)
    assert {run.info.status for run in runs} == {"FAILED"}
    assert len(runs) == 2

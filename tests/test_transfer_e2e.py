"""`kedro run --pipelines=transfer` end to end at tiny size (conf/test): ResNet-18 with weights from a local file."""

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_CATEGORIES, run_kedro
from mlflow import MlflowClient

from cutpaste.core.models import CutPasteNet, build_encoder, torchvision_backbone
from cutpaste.core.train import extract_features

pytestmark = pytest.mark.slow

WEIGHTS = "data/06_models/pretrained/random_resnet18.pth"


def _write_weights(project):
    torch.manual_seed(7)
    path = project / WEIGHTS
    path.parent.mkdir(parents=True)
    torch.save(torchvision_backbone("resnet18").state_dict(), path)
    return path


def test_transfer_pipeline_writes_table3_with_weights_from_a_local_file(project_copy):
    weights = _write_weights(project_copy)
    params = {"transfer": {"model": {"weights_path": WEIGHTS}}}
    run_kedro(project_copy, runtime_params=params, pipeline_names=["transfer"])

    table = pd.read_csv(project_copy / "data/08_reporting/transfer_table.csv")
    assert table["category"].tolist() == ["brick", "gravel", "mean"]
    ours = ["pool_pretrained", "pool_fine_tuned", "level3_pretrained", "level3_fine_tuned"]
    assert table[ours].apply(lambda column: column.between(0, 100)).all().all()
    assert table.filter(like="paper_").isna().all().all()  # the paper's numbers are for EfficientNet-B4 on all of MVTec AD
    assert "| gravel" in (project_copy / "data/08_reporting/transfer_table.md").read_text()
    metrics = json.loads((project_copy / "data/08_reporting/brick/transfer_metrics.json").read_text())
    assert metrics["backbone"] == "resnet18" and metrics["n_test"] == 14
    scores = pd.read_csv(project_copy / "data/07_model_output/brick/transfer_scores.csv")
    assert len(scores) == 14 and "score_fine_tuned_level3" in scores.columns
    assert (project_copy / "data/08_reporting/brick/transfer_training.png").stat().st_size > 1000

    # The pretrained-only features come from the weights file, not from a random init.
    with open(project_copy / "data/04_feature/brick/transfer_pretrained_features.pkl", "rb") as handle:
        pretrained = pickle.load(handle)
    with open(project_copy / "data/02_intermediate/brick/dataset.pkl", "rb") as handle:
        dataset = pickle.load(handle)
    network = CutPasteNet(num_classes=3, head_dims=(32,), pretrained="imagenet", weights_path=weights)
    expected = extract_features(network, dataset["train_images"], batch_size=16, device="cpu")
    np.testing.assert_allclose(pretrained["pool"]["train"], expected, rtol=1e-5, atol=1e-6)
    assert pretrained["level3"]["test"].shape == (14, 256)
    # Fine-tuning moved the convolutions and left every encoder BatchNorm statistic where the file put it.
    fine_tuned = torch.load(project_copy / "data/06_models/brick/transfer_model.pt", weights_only=True)
    original = build_encoder("resnet18", pretrained="imagenet", weights_path=weights)[0].state_dict()
    assert not torch.equal(fine_tuned["encoder.conv1.weight"], original["conv1.weight"])
    for name in original:
        if "bn" in name or "downsample.1" in name:
            assert torch.equal(fine_tuned[f"encoder.{name}"], original[name]), name

    client = MlflowClient(f"sqlite:///{project_copy / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cutpaste")
    parent = client.search_runs([experiment.experiment_id], filter_string="tags.`kedro.pipelines` = 'transfer'")[0]
    assert parent.info.status == "FINISHED"
    children = client.search_runs([experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(child.info.run_name for child in children) == TINY_CATEGORIES
    for child in children:
        assert 0 <= child.data.metrics["image_auroc_fine_tuned_level3"] <= 1
        assert child.data.params["transfer.model.backbone"] == "resnet18"
        assert len(client.get_metric_history(child.info.run_id, "transfer_train_loss")) == 4
        assert "figures/transfer_training.png" in {item.path for item in client.list_artifacts(child.info.run_id, "figures")}


def test_transfer_pipeline_stops_when_the_weights_file_is_missing(project_copy):
    params = {"transfer": {"model": {"weights_path": "data/06_models/pretrained/missing.pth"}}}
    with pytest.raises(Exception, match=r"missing\.pth: weights file not found.*transfer\.model\.weights_path"):
        run_kedro(project_copy, runtime_params=params, pipeline_names=["transfer"], namespaces=["brick"])
    assert not (project_copy / "data/06_models/brick/transfer_model.pt").exists()

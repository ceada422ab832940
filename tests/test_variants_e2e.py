"""The variants pipeline end to end at tiny size: 2 tasks x 1 category x 2 seeds, one sweep point."""

import json

import pandas as pd
import pytest
from conftest import run_kedro
from mlflow import MlflowClient

pytestmark = pytest.mark.slow


def test_variants_pipeline_tables_and_tagged_mlflow_runs(project_copy):
    run_kedro(project_copy, pipeline_names=["variants"])
    reporting = project_copy / "data/08_reporting"

    results = pd.read_csv(reporting / "variants_results.csv")
    assert sorted(zip(results["point"], results["seed"])) == [("3way", 0), ("3way", 1), ("3way_lr_0p01", 0), ("cutout_gray", 0), ("cutout_gray", 1)]
    assert results["image_auroc"].between(0, 1).all() and set(results["category"]) == {"brick"}
    assert results.loc[results["point"] == "3way_lr_0p01", "lr"].tolist() == [0.01]

    table1 = pd.read_csv(reporting / "variants_table1.csv")
    assert table1["category"].tolist() == ["brick", "mean"]
    brick = table1.iloc[0]
    runs_3way = results[results["point"] == "3way"]["image_auroc"] * 100
    assert brick["3way"] == pytest.approx(runs_3way.mean(), abs=0.01)
    assert brick["3way_se"] == pytest.approx(runs_3way.std(ddof=1) / 2**0.5, abs=0.01)
    assert 0 <= brick["ensemble_3way"] <= 100
    markdown = (reporting / "variants_table1.md").read_text()
    assert "| brick" in markdown and "±" in markdown

    table4 = pd.read_csv(reporting / "variants_table4.csv")
    table5 = pd.read_csv(reporting / "variants_table5.csv")
    assert table4["point"].tolist() == ["cutout_gray"] and table5["point"].tolist() == ["3way"]
    table6 = pd.read_csv(reporting / "variants_table6.csv")
    assert table6["point"].tolist() == ["cutout_gray", "3way"]
    assert {"square_color", "heart_color", "all", "paper_pill_all"} <= set(table6.columns)
    table7 = pd.read_csv(reporting / "variants_table7.csv")
    assert table7[["sweep", "value"]].values.tolist() == [["lr", 0.01], ["lr", 0.03]]
    assert table7.loc[1, "point"] == "3way"  # lr 0.03 is the main grid's setting: its runs are reused
    assert "No run" in (reporting / "variants_table8.md").read_text()

    synthetic = json.loads((reporting / "variants/brick/3way/s1/synthetic_metrics.json").read_text())
    assert 0 <= synthetic["synthetic_auroc_all"] <= 1 and synthetic["seed"] == 1
    scores = pd.read_csv(project_copy / "data/07_model_output/variants/brick/cutout_gray/s0/scores.csv")
    assert {"score", "normalized_score"} <= set(scores.columns) and len(scores) == 14

    client = MlflowClient(f"sqlite:///{project_copy / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cutpaste")
    runs = client.search_runs([experiment.experiment_id])
    parent = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    tags = sorted((run.data.tags["variant"], run.data.tags["category"], run.data.tags["seed"], run.data.tags["sweep"]) for run in children)
    assert tags == [("3way", "brick", "0", ""), ("3way", "brick", "0", "lr"), ("3way", "brick", "1", ""),
                    ("cutout_gray", "brick", "0", ""), ("cutout_gray", "brick", "1", "")]
    for child in children:
        assert child.info.status == "FINISHED"
        assert 0 <= child.data.metrics["image_auroc"] <= 1 and "synthetic_auroc_all" in child.data.metrics
        assert child.data.metrics["seed"] == float(child.data.tags["seed"])
    artifacts = {item.path for item in client.list_artifacts(parent[0].info.run_id, "tables")}
    assert {"tables/variants_table1.csv", "tables/variants_table1_markdown.md", "tables/variants_table4.csv"} <= artifacts

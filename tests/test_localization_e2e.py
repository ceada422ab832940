"""`kedro run --pipelines=localization` end to end at tiny size (conf/test)."""

import json
import pickle
import runpy
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_CATEGORIES, run_kedro
from mlflow import MlflowClient

pytestmark = pytest.mark.slow


def test_localization_pipeline_writes_table2_maps_figures_and_mlflow(trained_project):
    run_kedro(trained_project, pipeline_names=["localization"], only_missing_outputs=True)
    table = pd.read_csv(trained_project / "data/08_reporting/localization_table.csv")
    assert table["category"].tolist() == ["brick", "gravel", "mean"]
    assert table["density"].tolist()[:2] == ["shared", "per-location"]
    for column in ("pixel_auroc", "aupro_0.3", "image_auroc_from_map", "gradcam_pixel_auroc", "pixel_auroc_patch", "patch_proxy_accuracy"):
        assert table[column].between(0, 100).all()  # conf/test fuses the maps with the stem: the patch maps' own column too
    assert "paper_pixel_auroc" in table.columns
    with open(trained_project / "data/07_model_output/brick/score_maps.pkl", "rb") as handle:
        maps = pickle.load(handle)
    assert maps.shape == (14, 32, 32)
    assert (trained_project / "data/08_reporting/gravel/localization.png").stat().st_size > 5000
    # conf/test registers gravel onto a reference pose (localization.registration.categories), not brick
    settings = {category: json.loads((trained_project / f"data/06_models/{category}/localizer/localizer.json").read_text())
                for category in TINY_CATEGORIES}
    assert settings["brick"]["registration"] is None
    assert settings["gravel"]["registration"]["max_rotation_deg"] == 10
    # and with the zoom search and the full-size refinement; every localizer with held-out fusion references
    assert settings["gravel"]["registration"]["refine"] and settings["gravel"]["registration"]["max_scale_change"] == 0.1
    assert all(settings[category]["held_out_references"] for category in TINY_CATEGORIES)
    assert all(settings[category]["fusion_reference"] == "image_max" for category in TINY_CATEGORIES)
    assert all({"patch", "stem", "patch_sd", "stem_sd", "patch_image_max", "stem_image_max"} <= set(settings[category]["fusion_references"])
               for category in TINY_CATEGORIES)
    # conf/test chooses the map component on synthetic defects in the calibration images: the choice and its scores are stored
    for category in TINY_CATEGORIES:
        scores = settings[category]["component_scores"]
        assert settings[category]["component"] == scores["chosen"] in ("fused", "patch", "stem") and scores["copies"] == 1
        assert all(0.0 <= scores[name][key] <= 1.0 for name in ("fused", "patch", "stem") for key in ("pixel_auroc", "image_auroc", "score"))
    for category in TINY_CATEGORIES:  # and the map centre, from the same readings (the chosen component uncentred: its own score)
        center = settings[category]["center_scores"]
        assert settings[category]["map_center"] == center["chosen"] in ("none", "image_median") and center["copies"] == 1
        assert center["none"] == settings[category]["component_scores"][settings[category]["component"]]
        written = json.loads((trained_project / f"data/07_model_output/{category}/map_settings.json").read_text())
        assert written["map_center"] == settings[category]["map_center"] and written["center_scores"] == center

    client = MlflowClient(f"sqlite:///{trained_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cutpaste")
    parent = client.search_runs([experiment.experiment_id], filter_string="tags.`kedro.pipelines` = 'localization'")[0]
    children = client.search_runs([experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(child.info.run_name for child in children) == TINY_CATEGORIES
    for child in children:  # the map component each category's localizer returns, and the synthetic-defect scores that chose it
        assert child.data.tags["map_component"] == settings[child.info.run_name]["component"]
        assert child.data.tags["map_center"] == settings[child.info.run_name]["map_center"]
        assert 0.0 <= child.data.metrics["synthetic_center_image_median_pixel_auroc"] <= 1.0
        assert 0.0 <= child.data.metrics["synthetic_stem_pixel_auroc"] <= 1.0
    for child in children:
        assert 0 <= child.data.metrics["pixel_auroc"] <= 1
        # conf/test: 4 patch-model steps, 5 (aligned_steps) for the per-location category gravel
        assert len(client.get_metric_history(child.info.run_id, "patch_train_loss")) == (5 if child.info.run_name == "gravel" else 4)
        assert "figures/localization.png" in {item.path for item in client.list_artifacts(child.info.run_id, "figures")}


def test_inference_writes_heatmap_overlays_where_a_localizer_exists(trained_project):
    run_kedro(trained_project, pipeline_names=["localization"], only_missing_outputs=True)
    test_dir = "data/01_raw/demo/gravel/test"
    run_kedro(trained_project, runtime_params={"category": "gravel", "input_dir": test_dir}, pipeline_names=["inference"])
    heatmaps = sorted((trained_project / "data/07_model_output/inference/gravel/heatmaps").glob("*.png"))
    assert len(heatmaps) == 14 and "good__000.png" in {path.name for path in heatmaps}
    assert heatmaps[0].stat().st_size > 2000


def test_lighting_benchmark_reads_a_localization_run(trained_project, monkeypatch):
    """benchmarks/bench_lighting.py on the run's localizers: calibration images only, 1 % at factor 1 by construction."""
    run_kedro(trained_project, pipeline_names=["localization"], only_missing_outputs=True)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_lighting.py"
    out = trained_project / "data/08_reporting/lighting"
    subprocess.run([sys.executable, str(script), "--project-dir", str(trained_project), "--categories", "gravel",
                    "--images", "4", "--factors", "0.5", "--out", str(out)], check=True, capture_output=True, text=True)
    table = pd.read_csv(out / "lighting.csv")
    assert set(table["map"]) == {"patch", "stem", "configured"} and sorted(set(table["factor"])) == [0.5, 1.0]
    assert (table.loc[table["factor"] == 1.0, "above_normal_pct"] <= 1.0 + 1e-9).all()
    assert table["above_normal_pct"].between(0, 100).all() and table["median_image_max"].notna().all()
    monkeypatch.setattr(sys, "argv", [str(script), "--project-dir", str(trained_project), "--categories", "nothing_here"])
    with pytest.raises(FileNotFoundError, match=r"nothing_here/localizer: missing; run `kedro run --pipelines=localization`"):
        runpy.run_path(str(script), run_name="__main__")  # in this process: a second interpreter would spend seconds importing torch


def test_seed_benchmark_reads_finished_runs_and_compares_map_max_with_the_image_model(trained_project, monkeypatch, capsys):
    """benchmarks/bench_seeds.py: per-run figures equal the pipeline's own; a run twice gives zero spread; a folder without
    a finished run is named."""
    run_kedro(trained_project, pipeline_names=["localization"], only_missing_outputs=True)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_seeds.py"
    data = trained_project / "data"
    monkeypatch.setattr(sys, "argv", [str(script), "--category", "gravel", "--runs", str(data), str(data), "--resamples", "50"])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    metrics = json.loads((data / "08_reporting/gravel/localization_metrics.json").read_text())
    scores = pd.read_csv(data / "07_model_output/gravel/scores.csv")
    from cutpaste.core.metrics import image_auroc

    pooled = image_auroc(scores["label"], scores["score_pooled"] if "score_pooled" in scores else scores["score"])
    expected = [metrics["pixel_auroc"], metrics["aupro"], metrics["image_auroc_from_map"], pooled]
    run_rows = [line for line in out.splitlines() if line.startswith(f"| {data} |")]
    assert len(run_rows) == 2 and run_rows[0] == run_rows[1]
    assert run_rows[0].split(" | ")[1:5] == [f"{100 * value:.1f}" for value in expected]
    mean_row = next(line for line in out.splitlines() if line.startswith("| mean +- standard error"))
    assert mean_row.count("+- 0.0") == 6  # the same run twice: no spread between runs
    assert "95 % paired bootstrap interval over test images (50 resamples)" in out
    monkeypatch.setattr(sys, "argv", [str(script), "--category", "gravel", "--runs", str(trained_project / "nothing_here")])
    with pytest.raises(SystemExit, match=r"nothing_here: not a finished localization run of gravel; missing .*score_maps.pkl"):
        runpy.run_path(str(script), run_name="__main__")

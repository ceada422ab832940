"""Inference on new images: the Kedro pipeline, the MLflow pyfunc model, and the served model."""

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import servers
from conftest import run_kedro
from mlflow import MlflowClient

from cutpaste.core.detector import Detector, list_images
from cutpaste.serving import encode_image_file, save_pyfunc

pytestmark = pytest.mark.slow


def test_inference_pipeline_reproduces_evaluation_scores(trained_project, tmp_path):
    test_dir = Path("data/01_raw/demo/brick/test")
    run_kedro(trained_project, runtime_params={"category": "brick", "input_dir": str(test_dir)}, pipeline_names=["inference"])
    inferred = pd.read_csv(trained_project / "data/07_model_output/inference/brick/scores.csv", keep_default_na=False)
    evaluated = pd.read_csv(trained_project / "data/07_model_output/brick/scores.csv")
    assert list(inferred.columns) == ["file", "score", "normalized_score", "decision", "error"]
    assert (inferred["error"] == "").all() and len(inferred) == len(evaluated) == 14
    merged = evaluated.merge(inferred, left_on="path", right_on="file", validate="one_to_one")
    assert len(merged) == 14
    assert (merged["score_x"] == merged["score_y"]).all()  # bit-identical to the evaluation pipeline
    threshold = json.loads((trained_project / "data/06_models/brick/threshold.json").read_text())["value"]
    assert ((merged["score_y"] > threshold) == (merged["decision"] == "anomalous")).all()


def test_inference_pipeline_reports_bad_files_and_empty_folders(trained_project, tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    source = next((trained_project / "data/01_raw/demo/brick/test/good").glob("*.png"))
    (folder / "ok.png").write_bytes(source.read_bytes())
    (folder / "broken.png").write_bytes(b"not a png at all")
    run_kedro(trained_project, runtime_params={"category": "brick", "input_dir": str(folder)}, pipeline_names=["inference"])
    table = pd.read_csv(trained_project / "data/07_model_output/inference/brick/scores.csv", keep_default_na=False)
    assert len(table) == 2
    assert table.loc[table["file"].str.endswith("ok.png"), "error"].item() == ""
    assert "broken.png: unreadable or corrupt image" in table.loc[table["file"].str.endswith("broken.png"), "error"].item()

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Exception, match="holds no file"):
        run_kedro(trained_project, runtime_params={"category": "brick", "input_dir": str(empty)}, pipeline_names=["inference"])


def test_logged_pyfunc_model_loads_and_scores_like_the_detector(trained_project):
    client = MlflowClient(f"sqlite:///{trained_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cutpaste")
    # the detection run's child (a localization run on the same project logs a gravel child without a detector)
    child = [run for run in client.search_runs([experiment.experiment_id], filter_string="tags.category = 'gravel'")
             if "detector_model_uri" in run.data.tags][0]
    mlflow.set_tracking_uri(f"sqlite:///{trained_project / 'mlflow.db'}")
    os.chdir(trained_project)  # the run's artifacts live under ./mlruns of the project
    try:
        model = mlflow.pyfunc.load_model(child.data.tags["detector_model_uri"])
    finally:
        os.chdir(Path(__file__).resolve().parents[1])
    files = list_images(trained_project / "data/01_raw/demo/gravel/test")[:5]
    request = pd.DataFrame({"name": [f.name for f in files], "image": [encode_image_file(f) for f in files]})
    served = model.predict(request)
    expected = Detector.load(trained_project / "data/06_models/gravel/detector").score_files(files, progress=False)
    assert served["name"].tolist() == [f.name for f in files] and (served["error"] == "").all()
    pd.testing.assert_series_equal(served["score"].astype(float), expected["score"], check_names=False, rtol=1e-6)
    assert served["decision"].tolist() == expected["decision"].tolist()


def _post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read().decode() or "{}")


def test_served_model_answers_and_survives_a_bad_image(trained_project, tmp_path):
    model_dir = tmp_path / "pyfunc"
    save_pyfunc(trained_project / "data/06_models/brick/detector", model_dir)
    port = servers.free_port()
    process = servers.start([str(servers.BIN_DIR / "mlflow"), "models", "serve", "-m", str(model_dir), "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)])
    try:
        servers.wait_for(process, f"http://127.0.0.1:{port}/ping")
        files = list_images(trained_project / "data/01_raw/demo/brick/test")[:4]
        records = [{"name": f.name, "image": encode_image_file(f)} for f in files]
        status, answer = _post(f"http://127.0.0.1:{port}/invocations", {"dataframe_records": records})
        assert status == 200, answer
        predictions = pd.DataFrame(answer["predictions"])
        expected = Detector.load(trained_project / "data/06_models/brick/detector").score_files(files, progress=False)
        pd.testing.assert_series_equal(predictions["score"], expected["score"], check_names=False, rtol=1e-6)
        assert predictions["decision"].tolist() == expected["decision"].tolist()

        status, answer = _post(f"http://127.0.0.1:{port}/invocations", {"dataframe_records": [{"name": "scan-17.png", "image": "bm90IGFuIGltYWdl"}]})
        assert status == 200 and answer["predictions"][0]["score"] is None
        assert "row 0 (scan-17.png): not a readable image" in answer["predictions"][0]["error"]

        status, _ = _post(f"http://127.0.0.1:{port}/invocations", {"dataframe_records": records[:1]})
        assert status == 200  # still serving
    finally:
        servers.stop(process)

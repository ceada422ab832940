"""notebooks/results.ipynb executed against a project copy whose pipelines ran at tiny size, and the
t-SNE figure (the paper's Figure 3) that the detection run writes per category."""

import shutil

import nbformat
import pandas as pd
import pytest
from conftest import PROJECT_ROOT, TINY_CATEGORIES
from mlflow import MlflowClient
from nbclient import NotebookClient

from cutpaste.core.embedding import GROUPS

NOTEBOOK = PROJECT_ROOT / "notebooks" / "results.ipynb"

pytestmark = pytest.mark.slow


def test_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    assert any("%load_ext kedro.ipython" in cell.source for cell in code)


def test_detection_run_writes_the_tsne_figure_per_category(trained_project):
    for category in TINY_CATEGORIES:
        folder = trained_project / "data/08_reporting" / category
        assert (folder / "tsne.png").stat().st_size > 1000
        points = pd.read_csv(folder / "tsne_points.csv")
        assert set(points["group"]) == set(GROUPS)
        assert points["group"].value_counts().max() <= 8  # conf/test: tsne.max_points
        assert points[["x", "y"]].notna().all().all()
    client = MlflowClient(tracking_uri=f"sqlite:///{trained_project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cutpaste").experiment_id], "attributes.run_name = 'brick'")
    logged = {item.path for run in runs for item in client.list_artifacts(run.info.run_id, "figures")}  # other tests add runs
    assert "figures/tsne.png" in logged


@pytest.mark.parametrize("enabled", [True, False])
def test_tsne_node_follows_the_tsne_parameter(enabled):
    from cutpaste.pipelines.detection.pipeline import build

    pipeline = build(["brick"], {"tsne": {"enabled": enabled, "max_points": 8}})
    assert ("brick.tsne" in {node.name for node in pipeline.nodes}) is enabled
    assert ("brick.tsne_figure" in pipeline.all_outputs()) is enabled
    assert ("params:tsne" in pipeline.inputs()) is enabled


def test_results_notebook_runs_on_the_tiny_project(trained_project, tmp_path, monkeypatch):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    folder = trained_project / "notebooks"
    folder.mkdir(exist_ok=True)
    shutil.copy(NOTEBOOK, folder / NOTEBOOK.name)
    monkeypatch.setenv("CUTPASTE_PROJECT_PATH", str(trained_project))
    monkeypatch.setenv("KEDRO_ENV", "test")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend makes the figures outputs
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    texts = "\n".join(str(output.get("text", "")) + str(output.get("data", {}).get("text/markdown", ""))
                      + str(output.get("data", {}).get("text/plain", "")) for output in outputs)
    assert "t-SNE figures shown: 2 of 2 categories" in texts  # conf/test/categories.yml: brick, gravel
    assert "`variants_table1` not found" in texts and "`cifar_table` not found" in texts
    html = "\n".join(str(output.get("data", {}).get("text/html", "")) for output in outputs)
    assert "brick" in html and "gravel" in html  # the detection table
    assert sum("image/png" in output.get("data", {}) for output in outputs) >= 2  # one t-SNE figure per trained category

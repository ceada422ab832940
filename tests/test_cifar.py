"""CIFAR-10 one-class detection: the torchvision-format reader and `kedro run --pipelines=cifar` on a
tiny CIFAR-format fixture written here (a few 32 x 32 images per class)."""

import json
import pickle

import numpy as np
import pandas as pd
import pytest
from conftest import run_kedro
from mlflow import MlflowClient

from cutpaste.core import cifar

TRAIN_PER_CLASS = 10   # over data_batch_1..5 together
TEST_PER_CLASS = 3


def _images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 3072) uint8 rows in CIFAR's channel-first order: a class colour plus noise."""
    colours = rng.integers(30, 225, size=(10, 3))
    images = colours[labels][:, :, None, None] + rng.normal(0, 20, size=(len(labels), 3, 32, 32))
    return np.clip(images, 0, 255).astype(np.uint8).reshape(len(labels), -1)


def write_cifar_fixture(root, train_per_class: int = TRAIN_PER_CLASS, test_per_class: int = TEST_PER_CLASS, seed: int = 0):
    """A CIFAR-10 copy in torchvision's format under ``root/cifar-10-batches-py``; returns ``root``."""
    rng = np.random.default_rng(seed)
    folder = root / cifar.BASE_FOLDER
    folder.mkdir(parents=True)
    train_labels = rng.permutation(np.repeat(np.arange(10), train_per_class))
    for number, part in enumerate(np.array_split(train_labels, 5), start=1):
        batch = {"batch_label": f"training batch {number} of 5", "labels": part.tolist(), "data": _images(part, rng),
                 "filenames": [f"train_{number}_{index}.png" for index in range(len(part))]}
        (folder / f"data_batch_{number}").write_bytes(pickle.dumps(batch))
    test_labels = rng.permutation(np.repeat(np.arange(10), test_per_class))
    test = {"batch_label": "testing batch 1 of 1", "labels": test_labels.tolist(), "data": _images(test_labels, rng),
            "filenames": [f"test_{index}.png" for index in range(len(test_labels))]}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    meta = {"label_names": list(cifar.CIFAR10_CLASSES), "num_cases_per_batch": 2 * train_per_class, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return root


@pytest.fixture
def cifar_root(tmp_path):
    return write_cifar_fixture(tmp_path / "cifar")


def test_reads_a_torchvision_format_copy(cifar_root):
    data = cifar.load_cifar10(cifar_root, verify_checksums=False)
    assert data.train_images.shape == (10 * TRAIN_PER_CLASS, 32, 32, 3) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (10 * TEST_PER_CLASS, 32, 32, 3)
    assert np.bincount(data.train_labels).tolist() == [TRAIN_PER_CLASS] * 10
    assert data.classes == cifar.CIFAR10_CLASSES
    # the batches folder itself is accepted as the root too
    same = cifar.load_cifar10(cifar_root / cifar.BASE_FOLDER, verify_checksums=False)
    assert np.array_equal(same.test_images, data.test_images)
    # channel order: CIFAR rows are (3, 32, 32) channel-first; the arrays are HWC
    raw = pickle.loads((cifar_root / cifar.BASE_FOLDER / "test_batch").read_bytes())["data"][0].reshape(3, 32, 32)
    assert np.array_equal(data.test_images[0], raw.transpose(1, 2, 0))


def test_clear_errors_for_absent_or_malformed_copies(cifar_root, tmp_path):
    with pytest.raises(cifar.CifarError, match="cifar_root"):
        cifar.load_cifar10(None)
    with pytest.raises(cifar.CifarError, match="nowhere/cifar-10-batches-py: CIFAR-10 folder not found"):
        cifar.load_cifar10(tmp_path / "nowhere")
    with pytest.raises(cifar.CifarError, match="official CIFAR-10 checksums"):
        cifar.load_cifar10(cifar_root, verify_checksums=True)
    (cifar_root / cifar.BASE_FOLDER / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(cifar.CifarError, match="data_batch_3: not a pickled CIFAR-10 batch"):
        cifar.load_cifar10(cifar_root, verify_checksums=False)
    (cifar_root / cifar.BASE_FOLDER / "data_batch_3").unlink()
    with pytest.raises(cifar.CifarError, match="missing data_batch_3"):
        cifar.load_cifar10(cifar_root, verify_checksums=False)


def test_one_class_split_trains_on_one_class_and_tests_on_all(cifar_root):
    data = cifar.load_cifar10(cifar_root, verify_checksums=False).to_dict()
    task = cifar.one_class_split(data, "cat", max_train=4, seed=0)
    cat = cifar.class_index("cat")
    assert len(task["train_images"]) == 4
    cat_train = data["train_images"][data["train_labels"] == cat]
    assert all(any(np.array_equal(image, other) for other in cat_train) for image in task["train_images"])
    assert len(task["test_images"]) == 10 * TEST_PER_CLASS
    assert task["test_labels"].tolist() == (data["test_labels"] != cat).astype(int).tolist()
    assert task["test_classes"].count("cat") == TEST_PER_CLASS
    smaller = cifar.one_class_split(data, "cat", max_test=10, seed=0)
    assert len(smaller["test_images"]) == 10 and (smaller["test_labels"] == 0).sum() == 1  # each class in proportion
    with pytest.raises(ValueError, match="unknown CIFAR-10 class 'cats'"):
        cifar.one_class_split(data, "cats")


@pytest.mark.slow
def test_cifar_pipeline_writes_the_one_class_table(project_copy, cifar_root):
    run_kedro(project_copy, runtime_params={"cifar_root": str(cifar_root)}, pipeline_names=["cifar"])

    table = pd.read_csv(project_copy / "data/08_reporting/cifar_table.csv")
    assert table["task"].tolist() == ["rotation", "cutout_gray", "cutpaste"]
    assert table[["airplane", "cat", "mean"]].apply(lambda column: column.between(0, 100)).all().all()
    assert np.allclose(table["mean"], table[["airplane", "cat"]].mean(axis=1))
    assert table["paper_mean"].tolist() == [91.3, 60.2, 69.4]
    assert "| cutout_gray" in (project_copy / "data/08_reporting/cifar_table.md").read_text()
    metrics = json.loads((project_copy / "data/08_reporting/cifar/cat/cutpaste/metrics.json").read_text())
    assert metrics["cutpaste_n_train"] == 8 and metrics["cutpaste_n_test"] == 10 * TEST_PER_CLASS
    assert metrics["cutpaste_n_anomalous"] == 9 * TEST_PER_CLASS
    scores = pd.read_csv(project_copy / "data/07_model_output/cifar/airplane/rotation/scores.csv")
    assert (scores.loc[scores["class"] == "airplane", "label"] == 0).all() and scores["label"].sum() == 9 * TEST_PER_CLASS
    assert (project_copy / "data/06_models/cifar/airplane/rotation/model.pt").is_file()

    client = MlflowClient(tracking_uri=f"sqlite:///{project_copy / 'mlflow.db'}")
    runs = {run.info.run_name: run for run in client.search_runs([client.get_experiment_by_name("cutpaste").experiment_id])}
    assert {"cifar_airplane", "cifar_cat"} <= set(runs)
    assert set(runs["cifar_cat"].data.metrics) >= {"rotation_image_auroc", "cutout_gray_image_auroc", "cutpaste_image_auroc"}


@pytest.mark.slow
def test_cifar_pipeline_without_a_location_stops_at_once_with_a_clear_message(project_copy):
    with pytest.raises(cifar.CifarError, match="no CIFAR-10 location set.*--params=cifar_root="):
        run_kedro(project_copy, pipeline_names=["cifar"])
    assert not (project_copy / "data/06_models/cifar").exists()

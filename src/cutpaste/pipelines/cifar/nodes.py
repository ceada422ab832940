"""Nodes of the CIFAR-10 one-class pipeline: unpack parameters, call core."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from cutpaste.core import cifar, report
from cutpaste.core.augment import TASKS
from cutpaste.core.config import as_list
from cutpaste.core.density import GaussianDensity
from cutpaste.core.metrics import image_auroc
from cutpaste.core.study import mean_se
from cutpaste.pipelines.detection import nodes as detection

logger = logging.getLogger(__name__)

TABLE_NOTE = ("All values in %; se: standard error over classes. Image AUROC of one class (normal) against the nine others on the CIFAR-10 test set, one row per proxy "
              "task; the GDE is fitted on the features of the class's training images. Paper: Li et al., CVPR 2021, section 5.4, "
              "mean over the 10 classes (rotation 91.3, Cutout 60.2, CutPaste 69.4).")


DEFAULT_TASKS = ("rotation", "cutout_gray", "cutpaste")


def _as_list(value, default: tuple[str, ...]) -> list[str]:
    """A config list, a string separated by ";" (``--params`` splits on commas), or ``default`` for null / "all"."""
    if value is None or value == "all":
        return list(default)
    return [str(item) for item in as_list(value)]


def classes_and_tasks(settings: dict) -> tuple[list[str], list[str]]:
    """The classes and proxy tasks of the ``cifar`` settings (null or "all": every class, the default tasks)."""
    classes = _as_list(settings.get("classes"), cifar.CIFAR10_CLASSES)
    tasks = _as_list(settings.get("tasks"), DEFAULT_TASKS)
    for name in classes:
        cifar.class_index(name)
    unknown = [task for task in tasks if task not in TASKS]
    if unknown:
        raise ValueError(f"parameters cifar.tasks: unknown proxy task(s) {unknown}, expected some of {TASKS}")
    return classes, tasks


def load_cifar(built_for: tuple[list[str], list[str]], cifar_root: str | None, settings: dict) -> dict:
    """The local CIFAR-10 (torchvision format) as arrays; stops with a clear message when unset or malformed,
    or when the run's classes and tasks are not those the pipeline was built for (``built_for``)."""
    asked = classes_and_tasks(settings)
    if tuple(map(list, asked)) != tuple(map(list, built_for)):
        raise ValueError(f"cifar: this run's parameters ask for classes and tasks {asked}, but the pipeline was built for {built_for}. "
                         "cifar.classes and cifar.tasks are read from the conf files when Kedro registers the pipelines, so `--params` cannot change it: set it in conf/<env>/parameters_cifar.yml (e.g. conf/local/parameters_cifar.yml)")
    data = cifar.load_cifar10(cifar_root, verify_checksums=bool(settings.get("verify_checksums", True)))
    logger.info("CIFAR-10 from %s: %d training and %d test images", cifar_root, len(data.train_images), len(data.test_images))
    return data.to_dict()


def one_class_dataset(normal_class: str, data: dict, settings: dict) -> dict:
    """The one-class task of ``normal_class``: its training images; the test set labelled class (0) vs rest (1)."""
    dataset = cifar.one_class_split(data, normal_class, settings.get("max_train"), settings.get("max_test"), int(settings.get("seed", 0)))
    logger.info("CIFAR-10 %s: %d training images, %d test images (%d of other classes)", normal_class, len(dataset["train_images"]),
                len(dataset["test_images"]), int(dataset["test_labels"].sum()))
    return dataset


def train_task(task: str, dataset: dict, settings: dict):
    """Train the proxy task ``task`` on the class's training images (all of them: no threshold here)."""
    split = {"fit": list(range(len(dataset["train_images"])))}
    augment = {**settings.get("augment", {}), "task": task}
    return detection.train_model(dataset, split, settings["model"], settings["training"], augment)


def _features(state_dict: dict, images: np.ndarray, settings: dict) -> np.ndarray:
    return detection.image_features(state_dict, images, settings["model"], settings["training"], settings["features"])


def score_task(task: str, state_dict: dict, dataset: dict, settings: dict) -> pd.DataFrame:
    """GDE of the class's training features; one row per test image: class, label (1 = other class), score."""
    gde = GaussianDensity(**settings["density"]).fit(_features(state_dict, dataset["train_images"], settings))
    scores = pd.DataFrame({"class": dataset["test_classes"], "label": dataset["test_labels"]})
    scores["score"] = gde.score_samples(_features(state_dict, dataset["test_images"], settings))
    return scores


def evaluate_task(task: str, scores: pd.DataFrame, dataset: dict) -> dict:
    """Class-vs-rest image AUROC; keys carry the task name (the tasks of a class share one MLflow run)."""
    auroc = image_auroc(scores["label"].to_numpy(), scores["score"].to_numpy())
    logger.info("CIFAR-10 %s, %s: one-class AUROC %.4f", dataset["category"], task, auroc)
    return {f"{task}_image_auroc": auroc, f"{task}_n_train": int(len(dataset["train_images"])), f"{task}_n_test": int(len(scores)),
            f"{task}_n_anomalous": int(scores["label"].sum())}


def metrics_key(normal_class: str, task: str) -> str:
    """The keyword under which the report node receives one (class, task) metrics dict."""
    return f"{normal_class}__{task}"


def build_table(classes: list[str], tasks: list[str], metrics: dict[str, dict]) -> tuple[pd.DataFrame, str]:
    """One row per proxy task: AUROC (%) per class, mean +- standard error over classes, and the paper's mean.

    Args:
        metrics: :func:`evaluate_task` outputs keyed by :func:`metrics_key`.
    """
    by_key = {(normal_class, task): metrics[metrics_key(normal_class, task)] for normal_class in classes for task in tasks}
    rows = []
    for task in tasks:
        values = [100 * by_key[(normal_class, task)][f"{task}_image_auroc"] for normal_class in classes]
        mean, se = mean_se(values)
        rows.append({"task": task, **dict(zip(classes, values, strict=True)), "mean": mean, "se": se,
                     "paper_mean": cifar.PAPER_CIFAR_AUROC_MEAN.get(task, np.nan)})
    table = pd.DataFrame(rows)
    return table, report.to_markdown(table, f"CIFAR-10 one-class semantic anomaly detection ({len(classes)} classes)", TABLE_NOTE)

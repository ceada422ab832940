"""Nodes of the per-category image-level detection pipeline: unpack parameters, call core."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cutpaste.core import data, report, synthetic
from cutpaste.core.augment import Preprocess, build_task
from cutpaste.core.density import GaussianDensity
from cutpaste.core.detector import Detector, Threshold, holdout_split
from cutpaste.core.image_score import ImageScore
from cutpaste.core.image_score import fit_image_score as fit_image_score_core
from cutpaste.core.metrics import f1_max, image_auroc
from cutpaste.core.models import CutPasteNet
from cutpaste.core.train import (
    InferenceSetup,
    TrainConfig,
    Trainer,
    extract_features,
    prepare_for_inference,
    warn_if_unlearned,
)

logger = logging.getLogger(__name__)


def prepare_raw_data(category: str, data_root: str, demo: dict) -> str:
    """Return the data root to read, generating the demo category first when configured.

    A category folder that already holds files but no demo manifest is real data and is used as it
    is (``data_root=/path/to/mvtec`` needs no ``demo.generate=false``); demo generation only ever
    writes the bundled demo categories, and writes them again into a folder left empty (``make clean``
    deletes files, not folders).

    Raises:
        data.DatasetError: when the category folder is missing and cannot be generated.
    """
    folder = Path(data_root) / category
    holds_files = folder.is_dir() and any(path.is_file() for path in folder.rglob("*"))
    is_real_data = holds_files and not (folder / "demo_manifest.json").is_file()  # empty folders (after `make clean`) are regenerated
    if demo.get("generate", False) and not is_real_data and category in synthetic.DEMO_CATEGORIES:
        settings = {key: value for key, value in demo.items() if key != "generate"}
        synthetic.ensure_demo_category(data_root, category, **settings)
    elif not folder.is_dir():
        raise data.DatasetError(f"{folder}: category folder not found (set data_root; the demo data generates only "
                                f"{', '.join(synthetic.DEMO_CATEGORIES)})")
    return str(data_root)


def ingest_category(category: str, data_root: str, ingest: dict) -> tuple[dict, pd.DataFrame]:
    """Decode a category once at the working resolution.

    Returns:
        ({"category", "image_size", "train_images" (N, S, S, 3) uint8, "test_images",
        "test_masks" (M, S, S) uint8}, index table: path, split, defect_type, label, mask_path).
    """
    loaded = data.load_category(data_root, category, int(ingest["image_size"]), progress=ingest.get("progress", True))
    arrays = {"category": category, "image_size": int(ingest["image_size"]), **loaded.to_dict()}
    return arrays, loaded.index


def build_model(model: dict, num_classes: int) -> CutPasteNet:
    return CutPasteNet(num_classes=num_classes, head_dims=tuple(model["head_dims"]), backbone=model["backbone"])


def load_model(state_dict: dict, model: dict) -> CutPasteNet:
    """Rebuild a trained network from its state dict (number of classes read from the classifier)."""
    network = build_model(model, num_classes=int(state_dict["classifier.weight"].shape[0]))
    network.load_state_dict(state_dict)
    return network.eval()


def train_config(training: dict) -> TrainConfig:
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{key: value for key, value in training.items() if key in fields})


def split_training_images(dataset: dict, threshold: dict) -> dict[str, list[int]]:
    """Set aside a calibration split of the normal training images before anything is trained.

    The proxy task and the GDE see only the ``fit`` images; the threshold is fitted on the
    ``calibration`` images, which are thus as unseen as a new normal image.
    """
    split = holdout_split(len(dataset["train_images"]), float(threshold["holdout_fraction"]),
                          int(threshold.get("min_holdout", 10)), int(threshold.get("seed", 0)))
    logger.info("%s: %d training images for the proxy task and the GDE, %d held out to calibrate the threshold",
                dataset["category"], len(split["fit"]), len(split["calibration"]))
    return split


def train_model(dataset: dict, split: dict, model: dict, training: dict, augment: dict) -> tuple[CutPasteNet, pd.DataFrame]:
    """Train the proxy task on the ``fit`` split of the normal training images.

    Checkpoints go to ``<training.checkpoint_dir>/<category>/<task>_seed<seed>.pt``; a restarted run
    resumes from there (same settings and same images only). Returns the trained network and its
    per-step history.
    """
    config = train_config(training)
    torch.manual_seed(config.seed)
    task = build_task(augment["task"], augment.get("cutpaste"), augment.get("scar"), augment.get("confetti"))
    network = build_model(model, task.num_classes)
    checkpoint = None
    if training.get("checkpoint_dir"):
        checkpoint = Path(training["checkpoint_dir"]) / dataset["category"] / f"{augment['task']}_seed{config.seed}.pt"
    trainer = Trainer(network, task, Preprocess(**augment.get("preprocess", {})), config, checkpoint)
    logger.info("%s: training %s for %d steps on %s (%s, %s)", dataset["category"], augment["task"], config.steps,
                trainer.device, trainer.dtype or "fp32", "channels_last" if trainer.memory_format == torch.channels_last else "contiguous")
    history = trainer.fit(dataset["train_images"][split["fit"]], progress=training.get("progress", True))
    warn_if_unlearned(history, task.num_classes, f"{dataset['category']}: image model")
    return network.cpu(), history


def image_features(state_dict: dict, images: np.ndarray, model: dict, training: dict, features: dict) -> np.ndarray:
    network = load_model(state_dict, model)
    return extract_features(network, images, batch_size=int(features["batch_size"]), device=training["device"],
                            precision=training["precision"], memory_format=training["memory_format"])


def extract_train_features(state_dict: dict, dataset: dict, model: dict, training: dict, features: dict) -> np.ndarray:
    """(N_train, D) float32 pooled features of the normal training images, eval mode, no augmentation."""
    return image_features(state_dict, dataset["train_images"], model, training, features)


def fit_density(train_features: np.ndarray, split: dict, density: dict) -> GaussianDensity:
    """The GDE of the ``fit`` split's features (the calibration images stay unseen)."""
    return GaussianDensity(shrinkage=density["shrinkage"], l2_normalize=density["l2_normalize"]).fit(train_features[split["fit"]])


def prepared_model(state_dict: dict, model: dict, training: dict) -> tuple[CutPasteNet, InferenceSetup]:
    """The trained network on its inference device, precision and memory format, in eval mode."""
    network = load_model(state_dict, model)
    return network, prepare_for_inference(network, training["device"], training["precision"], training["memory_format"])


def fit_image_score(state_dict: dict, gde: GaussianDensity, dataset: dict, split: dict, model: dict, training: dict, features: dict,
                    image_score: dict, threshold: dict) -> ImageScore:
    """How images are scored (``image_score.method``: ``pooled``, the paper's GDE of pooled features, or
    that GDE combined with the stem's local density, ``zsum`` or ``fused``; see
    :mod:`cutpaste.core.image_score`), fitted on the ``fit`` split; the components' calibration
    statistics and the calibration images' scores come from the held-out ``calibration`` split."""
    network, setup = prepared_model(state_dict, model, training)
    images = dataset["train_images"]
    stem = image_score.get("stem") or {}
    score = fit_image_score_core(image_score["method"], network, setup, images[split["fit"]], images[split["calibration"]], gde,
                                 batch_size=int(features["batch_size"]), max_stem_vectors=int(stem.get("max_vectors", 100_000)),
                                 seed=int(stem.get("seed", 0)), shrinkage=gde.shrinkage, quantile=float(threshold["quantile"]),
                                 threshold_method=threshold.get("method", "lognormal"))
    logger.info("%s: image score '%s' (log2 of the component thresholds: %s; log2-score mean and spread: %s)", dataset["category"],
                score.method, {name: round(value, 2) for name, value in score.references.items()} or "-",
                {name: [round(value, 2) for value in values] for name, values in score.log_stats.items()} or "-")
    return score


def score_test_images(state_dict: dict, gde: GaussianDensity, dataset: dict, index: pd.DataFrame, model: dict, training: dict, features: dict,
                      image_score: ImageScore | None = None) -> pd.DataFrame:
    """One row per test image: path, defect_type, label, score (higher = more anomalous), and with a
    combined image score (zsum, fused) each component's raw score (``score_pooled``, ``score_stem``)."""
    image_score = image_score or ImageScore()
    network, setup = prepared_model(state_dict, model, training)
    components = image_score.components(network, setup, dataset["test_images"], gde, int(features["batch_size"]))
    scores = index.loc[index["split"] == "test", ["path", "defect_type", "label"]].reset_index(drop=True)
    scores["score"] = image_score.combine(components)
    if image_score.method != "pooled":
        for name, values in components.items():
            scores[f"score_{name}"] = values
    return scores


def calibrate_threshold(image_score: ImageScore) -> dict:
    """Decision threshold from normal images only, the held-out calibration images, which neither the
    network nor the densities have seen: a quantile of their (pooled or zsum) scores, or for a fused score 1
    (either component at its own bound; :meth:`~cutpaste.core.image_score.ImageScore.threshold`)."""
    return dataclasses.asdict(image_score.threshold())


def package_detector(state_dict: dict, gde: GaussianDensity, image_score: ImageScore, threshold: dict, dataset: dict, model: dict, training: dict,
                     features: dict) -> Detector:
    """Weights + GDE + image score + threshold + preprocessing settings, for inference and serving."""
    return Detector(
        category=dataset["category"], image_size=int(dataset["image_size"]), model_config=dict(model),
        state_dict=state_dict, density=gde, threshold=Threshold(**threshold),
        feature_batch_size=int(features["batch_size"]), precision=training["precision"], device=training["device"],
        image_score=image_score,
    )


def evaluate_detection(scores: pd.DataFrame, threshold: dict, dataset: dict):
    """Image AUROC, the training-time threshold's error rates on the test set, F1-max (test-set
    oracle, for reference only), and figures (ROC curve, score histogram) for one category."""
    category = dataset["category"]
    labels = scores["label"].to_numpy()
    values = scores["score"].to_numpy()
    flagged = values > threshold["value"]
    best_f1, best_f1_threshold = f1_max(labels, values)
    metrics = {
        "image_auroc": image_auroc(labels, values), "n_test": int(len(scores)), "n_defective": int(labels.sum()),
        "threshold": float(threshold["value"]), "threshold_quantile": float(threshold["quantile"]),
        "fpr_normal_test_at_threshold": float(flagged[labels == 0].mean()),
        "tpr_defective_test_at_threshold": float(flagged[labels == 1].mean()),
        "f1_max_test_oracle": best_f1, "f1_max_threshold_test_oracle": best_f1_threshold,
    }
    logger.info("%s: image AUROC %.4f on %d test images; threshold %.3g flags %.0f %% of normal and %.0f %% of defective test images",
                category, metrics["image_auroc"], len(scores), threshold["value"],
                100 * metrics["fpr_normal_test_at_threshold"], 100 * metrics["tpr_defective_test_at_threshold"])
    roc = report.roc_figure(labels, values, f"{category}: image AUROC {100 * metrics['image_auroc']:.1f}")
    histogram = report.score_histogram(scores, f"{category}: anomaly scores", threshold=threshold["value"])
    return metrics, roc, histogram


def training_figure(history: pd.DataFrame, dataset: dict):
    return report.loss_figure(history, f"{dataset['category']}: proxy-task training")


def tsne_figure(state_dict: dict, dataset: dict, index: pd.DataFrame, model: dict, training: dict, features: dict, augment: dict, tsne: dict):
    """The paper's Figure 3 for one category: t-SNE of the features of normal training and test
    images, anomalous test images, and normal training images after CutPaste and CutPaste-Scar
    (at most ``tsne.max_points`` per group). Returns (figure, points table: group, x, y)."""
    from cutpaste.core import embedding

    if not tsne.get("enabled", True):
        logger.warning("tsne.enabled is false for this run, but the t-SNE node exists: whether it exists is read from the conf files "
                       "when Kedro registers the pipelines; set tsne.enabled in conf/<env>/parameters_detection.yml to leave it out")
    config = embedding.TsneConfig(**{key: value for key, value in tsne.items() if key in {field.name for field in dataclasses.fields(embedding.TsneConfig)}})
    network = load_model(state_dict, model)

    def embed(images: np.ndarray) -> np.ndarray:
        return extract_features(network, images, batch_size=int(features["batch_size"]), device=training["device"],
                                precision=training["precision"], memory_format=training["memory_format"])

    labels = index.loc[index["split"] == "test", "label"].to_numpy()
    groups = embedding.feature_groups(embed, dataset["train_images"], dataset["test_images"], labels,
                                      build_task("cutpaste", augment.get("cutpaste"), augment.get("scar")).views[1],
                                      build_task("scar", augment.get("cutpaste"), augment.get("scar")).views[1],
                                      max_points=config.max_points, seed=config.seed)
    points = embedding.tsne_points(groups, config)
    logger.info("%s: t-SNE of %d features (%s)", dataset["category"], len(points),
                ", ".join(f"{group} {count}" for group, count in points["group"].value_counts(sort=False).items()))
    return embedding.tsne_figure(points, f"{dataset['category']}: t-SNE of learned features"), points


def build_detection_report(**metrics_by_category: dict) -> tuple[pd.DataFrame, str]:
    """Detection table (image AUROC per category and mean, paper beside ours) as DataFrame and Markdown."""
    table = report.detection_table(metrics_by_category)
    return table, report.to_markdown(table, "Image-level detection (image AUROC)")

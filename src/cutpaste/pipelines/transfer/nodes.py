"""Nodes of the transfer-learning pipeline (Table 3): unpack parameters, call core."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cutpaste.core import report
from cutpaste.core.augment import Preprocess, build_task
from cutpaste.core.density import GaussianDensity
from cutpaste.core.metrics import image_auroc
from cutpaste.core.models import CutPasteNet, PretrainedWeightsError, tap_level
from cutpaste.core.train import extract_features, state_fingerprint
from cutpaste.core.transfer import FineTuneConfig, fine_tune

logger = logging.getLogger(__name__)

WEIGHTS_KEY = "transfer.model.weights_path"


def fine_tune_config(fine_tuning: dict) -> FineTuneConfig:
    fields = {field.name for field in dataclasses.fields(FineTuneConfig)}
    return FineTuneConfig(**{key: value for key, value in fine_tuning.items() if key in fields})


def build_network(transfer: dict, num_classes: int, pretrained: bool = True) -> CutPasteNet:
    """The transfer network; with ``pretrained`` its encoder carries the configured ImageNet weights.

    Raises:
        PretrainedWeightsError: the weights are asked for and not available; names the file and the config key.
    """
    model = transfer["model"]
    for tap in transfer["taps"]:
        tap_level(model["backbone"], tap)
    try:
        return CutPasteNet(num_classes=num_classes, head_dims=tuple(model["head_dims"]), backbone=model["backbone"],
                           pretrained=model["pretrained"] if pretrained else False, weights_path=model.get("weights_path"))
    except PretrainedWeightsError as error:
        raise PretrainedWeightsError(f"{error} (config key: {WEIGHTS_KEY})") from error


def _features_at_taps(network: CutPasteNet, dataset: dict, transfer: dict) -> dict[str, dict[str, np.ndarray]]:
    settings = transfer["fine_tuning"]
    features: dict[str, dict[str, np.ndarray]] = {}
    for tap in transfer["taps"]:
        network.feature_tap = tap
        features[tap] = {
            split: extract_features(network, dataset[f"{split}_images"], batch_size=int(transfer["features"]["batch_size"]),
                                    device=settings["device"], precision=settings["precision"], memory_format=settings["memory_format"])
            for split in ("train", "test")
        }
        logger.info("%s: %s features %s", dataset["category"], tap, features[tap]["train"].shape[1:])
    network.feature_tap = "pool"
    return features


def extract_pretrained_features(dataset: dict, transfer: dict) -> dict[str, dict[str, np.ndarray]]:
    """Features of the pretrained encoder, no fine-tuning: {tap: {"train": (N, D), "test": (M, D)}} float32."""
    network = build_network(transfer, num_classes=3).eval()
    return _features_at_taps(network, dataset, transfer)


def fine_tune_model(dataset: dict, transfer: dict, augment: dict) -> tuple[CutPasteNet, pd.DataFrame]:
    """Fine-tune the pretrained network with the proxy task on the normal training images: head only,
    then all layers, encoder BatchNorm frozen. Checkpoints under ``<fine_tuning.checkpoint_dir>/<category>/``, in a
    folder named after the backbone, task, seed and a fingerprint of the initial weights."""
    settings = transfer["fine_tuning"]
    config = fine_tune_config(settings)
    torch.manual_seed(config.seed)
    task = build_task(augment["task"], augment.get("cutpaste"), augment.get("scar"), augment.get("confetti"))
    network = build_network(transfer, task.num_classes)
    checkpoint_dir = None
    if settings.get("checkpoint_dir"):
        start = state_fingerprint(network.encoder)  # another weights file must not resume these checkpoints
        run_name = f"transfer_{transfer['model']['backbone']}_{augment['task']}_seed{config.seed}_{start}"
        checkpoint_dir = Path(settings["checkpoint_dir"]) / dataset["category"] / run_name
    logger.info("%s: fine-tuning %s (%s weights) with %s: %d + %d steps of batch %d", dataset["category"], transfer["model"]["backbone"],
                transfer["model"]["pretrained"], augment["task"], config.head_epochs * config.steps_per_epoch,
                config.full_epochs * config.steps_per_epoch, config.batch_size)
    history = fine_tune(network, dataset["train_images"], task, Preprocess(**augment.get("preprocess", {})), config,
                        checkpoint_dir=checkpoint_dir, progress=settings.get("progress", True))
    return network.cpu(), history


def extract_fine_tuned_features(state_dict: dict, dataset: dict, transfer: dict) -> dict[str, dict[str, np.ndarray]]:
    """Features of the fine-tuned encoder: {tap: {"train": (N, D), "test": (M, D)}} float32."""
    network = build_network(transfer, num_classes=int(state_dict["classifier.weight"].shape[0]), pretrained=False)
    network.load_state_dict(state_dict)
    return _features_at_taps(network.eval(), dataset, transfer)


def evaluate_transfer(pretrained_features: dict, fine_tuned_features: dict, dataset: dict, index: pd.DataFrame,
                      density: dict, transfer: dict) -> tuple[dict, pd.DataFrame]:
    """Per stage (pretrained, fine-tuned) and tap: a GDE on the normal training features, test scores, image AUROC.

    Returns:
        (metrics: backbone, pretrained, taps, n_test, ``image_auroc_<stage>_<tap>``;
         scores: path, defect_type, label and one ``score_<stage>_<tap>`` column per cell).
    """
    scores = index.loc[index["split"] == "test", ["path", "defect_type", "label"]].reset_index(drop=True)
    labels = scores["label"].to_numpy()
    model = transfer["model"]
    metrics: dict = {"backbone": model["backbone"], "pretrained": str(model["pretrained"] or "none"), "taps": list(transfer["taps"]),
                     "n_test": int(len(scores))}
    for stage, features in zip(report.TRANSFER_STAGES, (pretrained_features, fine_tuned_features)):
        for tap in transfer["taps"]:
            gde = GaussianDensity(shrinkage=density["shrinkage"], l2_normalize=density["l2_normalize"]).fit(features[tap]["train"])
            values = gde.score_samples(features[tap]["test"])
            scores[f"score_{stage}_{tap}"] = values
            metrics[report.transfer_metric_key(stage, tap)] = image_auroc(labels, values)
    logger.info("%s: image AUROC %s", dataset["category"],
                ", ".join(f"{key.removeprefix('image_auroc_')} {value:.4f}" for key, value in metrics.items() if key.startswith("image_auroc_")))
    return metrics, scores


def training_figure(history: pd.DataFrame, dataset: dict):
    return report.loss_figure(history, f"{dataset['category']}: fine-tuning (head, then all layers)")


def build_transfer_report(**metrics_by_category: dict) -> tuple[pd.DataFrame, str]:
    """Table 3 (image AUROC per category and mean, pretrained vs fine-tuned per tap, paper beside ours)."""
    table = report.transfer_table(metrics_by_category)
    return table, report.to_markdown(table, "Transfer learning (image AUROC)", note=report.TRANSFER_NOTE)

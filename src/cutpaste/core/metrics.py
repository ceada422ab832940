"""Detection metrics."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in length")
    if np.unique(labels).size != 2:
        raise ValueError("AUROC needs both normal (0) and anomalous (1) samples")
    return labels, scores


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of image scores (labels 1 = anomalous), in [0, 1]."""
    labels, scores = _check(labels, scores)
    return float(roc_auc_score(labels, scores))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Best F1 over all thresholds and that threshold (uses test labels: for reporting only)."""
    labels, scores = _check(labels, scores)
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1])) if thresholds.size else 0
    return float(f1[best]), float(thresholds[best])

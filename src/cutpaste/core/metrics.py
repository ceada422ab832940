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


def pixel_auroc(masks: np.ndarray, score_maps: np.ndarray) -> float:
    """AUROC over all pixels of all images: masks (N, H, W) in {0, 1}, score_maps (N, H, W)."""
    masks, score_maps = np.asarray(masks), np.asarray(score_maps)
    if masks.shape != score_maps.shape:
        raise ValueError(f"masks {masks.shape} and score maps {score_maps.shape} differ in shape")
    return image_auroc(masks.ravel() > 0, score_maps.ravel())


def pro_curve(masks: np.ndarray, score_maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-region overlap (PRO) vs false-positive rate, over every threshold (the MVTec AD protocol).

    Each connected defect region (8-connectivity) weighs equally, whatever its size: PRO at a threshold
    is the mean over regions of the fraction of the region's pixels above it. FPR is over all normal
    pixels. Computed exactly in one sort: pixels in descending score order each add their share.

    Returns:
        (fpr, pro), both increasing, one point per distinct score, starting at (0, 0).
    """
    from scipy import ndimage

    masks = np.asarray(masks) > 0
    score_maps = np.asarray(score_maps, dtype=np.float64)
    if masks.shape != score_maps.shape:
        raise ValueError(f"masks {masks.shape} and score maps {score_maps.shape} differ in shape")
    region_weight = np.zeros(masks.shape, dtype=np.float64)
    regions = 0
    for index in range(len(masks)):
        labelled, count = ndimage.label(masks[index], structure=np.ones((3, 3)))
        if count:
            sizes = np.bincount(labelled.ravel())
            region_weight[index][labelled > 0] = 1.0 / sizes[labelled[labelled > 0]]
            regions += count
    normal = ~masks
    if regions == 0 or not normal.any():
        raise ValueError("PRO needs at least one defect region and one normal pixel")
    fpr_weight = normal.astype(np.float64) / normal.sum()
    order = np.argsort(-score_maps.ravel(), kind="stable")
    scores_sorted = score_maps.ravel()[order]
    fpr = np.cumsum(fpr_weight.ravel()[order])
    pro = np.cumsum(region_weight.ravel()[order]) / regions
    last_of_each_score = np.r_[np.flatnonzero(np.diff(scores_sorted) != 0), len(scores_sorted) - 1]
    return np.r_[0.0, fpr[last_of_each_score]], np.r_[0.0, pro[last_of_each_score]]


def aupro(masks: np.ndarray, score_maps: np.ndarray, max_fpr: float = 0.3) -> float:
    """Area under the PRO curve up to ``max_fpr``, divided by ``max_fpr`` (so 1.0 is perfect)."""
    fpr, pro = pro_curve(masks, score_maps)
    cut = np.searchsorted(fpr, max_fpr, side="right")
    fpr_cut, pro_cut = fpr[:cut], pro[:cut]
    if cut < len(fpr) and fpr_cut[-1] < max_fpr:
        slope = (pro[cut] - pro[cut - 1]) / (fpr[cut] - fpr[cut - 1])
        fpr_cut = np.r_[fpr_cut, max_fpr]
        pro_cut = np.r_[pro_cut, pro[cut - 1] + slope * (max_fpr - fpr[cut - 1])]
    return float(np.trapezoid(pro_cut, fpr_cut) / max_fpr)

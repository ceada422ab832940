"""Seed statistics and seed ensembles.

* mean +- standard error over seeds (SE = sample standard deviation / sqrt(n), ddof 1);
* the ensemble of a point's seeds averages their *normalized* scores: each model's test scores
  minus the mean of its scores of held-out normal training images, divided by their standard
  deviation, so that no test image influences the scale.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cutpaste.core.metrics import image_auroc


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error (sample std, ddof 1, / sqrt(n)); SE is NaN for a single value."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return np.nan, np.nan
    if values.size == 1:
        return float(values[0]), np.nan
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(values.size))


def normalize_scores(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(scores - mean(reference)) / std(reference): reference = scores of normal training images.

    Raises:
        ValueError: when fewer than two reference scores are given or they are all equal.
    """
    reference = np.asarray(reference, dtype=np.float64)
    if reference.size < 2 or not np.isfinite(reference).all() or reference.std() == 0:
        raise ValueError(f"normalizing needs at least two distinct finite reference scores, got {reference.size}")
    return (np.asarray(scores, dtype=np.float64) - reference.mean()) / reference.std()


def ensemble_scores(normalized: list[np.ndarray]) -> np.ndarray:
    """Average of the models' normalized scores of the same images."""
    lengths = {len(scores) for scores in normalized}
    if len(lengths) != 1:
        raise ValueError(f"ensemble members scored different numbers of images: {sorted(lengths)}")
    return np.mean(np.stack([np.asarray(scores, dtype=np.float64) for scores in normalized]), axis=0)


def ensemble_auroc(scores_by_seed: dict[int, pd.DataFrame]) -> float:
    """Image AUROC of the seeds' ensemble; each frame: path, label, normalized_score (same images)."""
    frames = [frame.sort_values("path").reset_index(drop=True) for _, frame in sorted(scores_by_seed.items())]
    for frame in frames[1:]:
        if not frame["path"].equals(frames[0]["path"]):
            raise ValueError("ensemble members scored different test images")
    return image_auroc(frames[0]["label"].to_numpy(), ensemble_scores([frame["normalized_score"].to_numpy() for frame in frames]))

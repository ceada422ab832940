"""The decision threshold: a high quantile of the anomaly scores of held-out normal images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

THRESHOLD_METHODS = ("lognormal", "empirical")


@dataclass
class Threshold:
    """Decision threshold on the anomaly score and the normal-score statistics used to normalise."""

    value: float
    quantile: float
    normal_mean: float
    normal_std: float
    n_images: int
    method: str = "lognormal"


def fit_threshold(calibration_scores: np.ndarray, quantile: float = 0.99, method: str = "lognormal") -> Threshold:
    """Threshold at the ``quantile`` of the anomaly scores of held-out normal images.

    ``method``:

    - ``"lognormal"`` (default): the upper ``quantile`` prediction bound of a log-normal fitted to
      the calibration scores, ``exp(m + t_{quantile, n-1} * s * sqrt(1 + 1/n))`` with m, s the mean
      and standard deviation of the log scores. The Student-t factor accounts for the few calibration
      images, so under the log-normal model a new normal image exceeds it with probability
      ``1 - quantile`` for any n; it can lie above the highest calibration score.
    - ``"empirical"``: the empirical quantile. With n calibration images it resolves steps of 1/n:
      with 10 images, 0.99 lies between the two highest scores, and a new normal image exceeds the
      highest of n exchangeable scores with probability 1/(n + 1) (9 % for n = 10).

    Raises:
        ValueError: a quantile outside [0.5, 1), an unknown method, fewer than 2 scores or (log-normal)
            a score that is not positive.
    """
    if not 0.5 <= quantile < 1:
        raise ValueError(f"threshold quantile must be in [0.5, 1), got {quantile}")
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"threshold method must be one of {THRESHOLD_METHODS}, got '{method}'")
    scores = np.asarray(calibration_scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) < 2:
        raise ValueError(f"need at least 2 calibration scores, got shape {scores.shape}")
    if method == "empirical":
        value = float(np.quantile(scores, quantile))
    else:
        from scipy.stats import t as student_t

        if (scores <= 0).any() or not np.isfinite(scores).all():
            raise ValueError("a log-normal threshold needs positive finite calibration scores; use threshold.method=empirical")
        logs = np.log(scores)
        count = len(logs)
        spread = float(logs.std(ddof=1)) * np.sqrt(1 + 1 / count)
        value = float(np.exp(logs.mean() + student_t.ppf(quantile, count - 1) * spread))
    return Threshold(value, quantile, float(scores.mean()), float(scores.std() or 1.0), len(scores), method)

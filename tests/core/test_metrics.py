import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cutpaste.core.metrics import f1_max, image_auroc


def test_auroc_hand_computed():
    # pairs (anomalous, normal): (0.8>0.1) (0.8>0.4) (0.35<0.4) (0.35>0.1) -> 3 of 4
    assert image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert image_auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)


def test_auroc_matches_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = rng.normal(size=500) + labels
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))


def test_f1_max_hand_computed():
    # threshold 0.6 keeps {0.6, 0.9}: precision 1, recall 2/3 -> F1 0.8; threshold 0.3: P 3/4, R 1 -> 6/7
    value, threshold = f1_max([0, 1, 1, 1], [0.4, 0.3, 0.6, 0.9])
    assert value == pytest.approx(6 / 7)
    assert threshold == pytest.approx(0.3)


def test_metrics_need_both_classes():
    with pytest.raises(ValueError, match="both normal"):
        image_auroc([1, 1], [0.1, 0.2])

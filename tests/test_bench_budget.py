"""The budget study's ensemble and threshold helpers (benchmarks/bench_budget.py), on toy scores."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_budget import calibrated_ensemble, threshold_rates  # noqa: E402


def test_the_calibrated_ensemble_weighs_models_alike_whatever_their_scale():
    rng = np.random.default_rng(0)
    calibration, test = np.exp(rng.normal(size=20)), np.exp(rng.normal(size=8))
    other_calibration, other_test = np.exp(rng.normal(size=20)), np.exp(rng.normal(size=8))
    combined = calibrated_ensemble([(calibration, test), (other_calibration, other_test)])
    rescaled = calibrated_ensemble([(1000 * calibration, 1000 * test), (other_calibration, other_test)])
    for left, right in zip(combined, rescaled, strict=True):
        np.testing.assert_allclose(left, right)  # a model's scale does not change the ensemble
    assert all((part > 0).all() for part in combined)
    single_calibration, single_test = calibrated_ensemble([(calibration, test)])
    np.testing.assert_allclose(single_test, test / np.exp(np.log(calibration).mean()))
    np.testing.assert_allclose(np.log(single_calibration).mean(), 0, atol=1e-12)
    expected = np.sqrt(single_test * calibrated_ensemble([(other_calibration, other_test)])[1])  # geometric mean of the members
    np.testing.assert_allclose(combined[1], expected)


def test_threshold_rates_count_flagged_normals_and_defects():
    calibration = np.exp(np.random.default_rng(1).normal(size=200))
    scores = np.array([0.5, 0.7, 1.5, 100.0, 200.0, 2.0])
    labels = np.array([0, 0, 0, 1, 1, 1])
    row = threshold_rates(calibration, scores, labels, {"quantile": 0.99, "method": "lognormal"}, [0.5])
    assert row["threshold_fpr"] == 0.0 and row["threshold_tpr"] == 2 / 3
    assert row["fpr_q50"] == 1 / 3 and row["tpr_q50"] == 1.0  # the calibration median ~ 1.0: only 1.5 of the normals above it

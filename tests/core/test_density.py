import numpy as np
import pytest
import torch
from sklearn.covariance import ledoit_wolf

from cutpaste.core.density import GaussianDensity


def _features(n=200, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim))
    return rng.normal(size=(n, dim)) @ mixing + 3.0


def _numpy_mahalanobis(features, mean, covariance):
    inverse = np.linalg.inv(covariance)
    return np.array([(row - mean) @ inverse @ (row - mean) for row in features])


def test_empirical_gde_matches_numpy_reference():
    train, test = _features(), _features(20, seed=1)
    model = GaussianDensity(shrinkage="empirical", l2_normalize=False).fit(train)
    mean = train.mean(0)
    covariance = (train - mean).T @ (train - mean) / len(train)
    np.testing.assert_allclose(model.score_samples(test), _numpy_mahalanobis(test, mean, covariance), rtol=1e-6)


def test_ledoit_wolf_gde_matches_numpy_reference_with_l2_normalisation():
    train, test = _features(), _features(20, seed=1)
    model = GaussianDensity(shrinkage="ledoit_wolf", l2_normalize=True).fit(train)
    normalise = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    covariance, _ = ledoit_wolf(normalise(train))
    expected = _numpy_mahalanobis(normalise(test), normalise(train).mean(0), covariance)
    np.testing.assert_allclose(model.score_samples(test), expected, rtol=1e-6)


def test_fixed_shrinkage_matches_formula():
    train = _features()
    model = GaussianDensity(shrinkage=0.3, l2_normalize=False).fit(train)
    empirical = np.cov(train, rowvar=False, bias=True)
    mu = np.trace(empirical) / empirical.shape[0]
    np.testing.assert_allclose(model.covariance_, 0.7 * empirical + 0.3 * mu * np.eye(16), rtol=1e-10)


def test_fewer_images_than_dimensions():
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(8, 512))

    def normal_features(n):  # normal data spans an 8-d subspace of 512-d space
        return rng.normal(size=(n, 8)) @ basis + 0.05 * rng.normal(size=(n, 512))

    train = normal_features(60)  # MVTec's smallest training sets have 60 images
    model = GaussianDensity().fit(train)
    inliers = normal_features(10)
    outliers = normal_features(10) + 0.5 * rng.normal(size=(10, 512))  # energy off the subspace
    scores = model.score_samples(np.concatenate([inliers, outliers]))
    assert np.all(np.isfinite(scores))
    assert scores[10:].min() > scores[:10].max()


def test_outliers_score_higher():
    train = _features()
    model = GaussianDensity(l2_normalize=False).fit(train)
    inliers = _features(50, seed=2)
    outliers = inliers + 25.0
    assert np.median(model.score_samples(outliers)) > 10 * np.median(model.score_samples(inliers))


def test_torch_path_matches_numpy():
    train, test = _features(), _features(300, seed=3)
    model = GaussianDensity().fit(train)
    torch_scores = model.score_samples_torch(torch.from_numpy(test).float(), chunk_size=64).numpy()
    np.testing.assert_allclose(torch_scores, model.score_samples(test), rtol=1e-3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="shrinkage"):
        GaussianDensity(shrinkage="magic")
    with pytest.raises(ValueError, match="at least 2"):
        GaussianDensity().fit(np.ones((1, 4)))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        GaussianDensity().fit(np.ones(4))


def test_covariance_floor_adds_an_absolute_variance_and_bounds_the_precision():
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(0)
    features = np.ones((30, 8)) + 1e-9 * rng.normal(size=(30, 8))  # a nearly constant feature
    floored = GaussianDensity(l2_normalize=False, covariance_floor=1e-3).fit(features)
    np.testing.assert_allclose(floored.covariance_, LedoitWolf().fit(features).covariance_ + 1e-3 * np.eye(8), atol=1e-12)
    assert np.linalg.eigvalsh(floored.precision_).max() <= 1e3 * (1 + 1e-9)
    assert floored.settings()["covariance_floor"] == 1e-3 and "covariance_floor" not in GaussianDensity().settings()
    with pytest.raises(ValueError, match="covariance_floor"):
        GaussianDensity(covariance_floor=-1.0)

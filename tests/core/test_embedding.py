"""t-SNE of features (the paper's Figure 3): groups, subsampling, augmentation round trip, embedding, figure."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from cutpaste.core import embedding
from cutpaste.core.augment import CutPaste, CutPasteScar


def _images(count: int, seed: int, value: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if value is not None:
        return np.full((count, 32, 32, 3), value, dtype=np.uint8)
    return rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)


def _mean_colour(images: np.ndarray) -> np.ndarray:
    """A stand-in feature extractor: per-channel mean and standard deviation."""
    pixels = images.reshape(len(images), -1, 3).astype(np.float32)
    return np.concatenate([pixels.mean(1), pixels.std(1)], axis=1)


def test_subsample_caps_and_keeps_order():
    rng = np.random.default_rng(0)
    assert embedding.subsample(5, 10, rng).tolist() == [0, 1, 2, 3, 4]
    picked = embedding.subsample(100, 7, rng)
    assert len(picked) == 7 and len(set(picked.tolist())) == 7 and np.all(np.diff(picked) > 0)


def test_augment_images_round_trip_changes_only_a_patch():
    images = _images(6, seed=1)
    identity = embedding.augment_images(images, lambda batch, generator: batch)
    assert identity.dtype == np.uint8 and np.array_equal(identity, images)
    pasted = embedding.augment_images(images, CutPaste(), seed=3)
    changed = (pasted != images).any(-1).mean(axis=(1, 2))
    assert pasted.shape == images.shape
    assert np.all(changed > 0) and np.all(changed < 0.5)  # a patch, not the whole image
    assert np.array_equal(pasted, embedding.augment_images(images, CutPaste(), seed=3))  # seeded


def test_feature_groups_has_every_group_capped_at_max_points():
    train, test = _images(30, seed=2), _images(20, seed=3)
    labels = np.array([0] * 5 + [1] * 15)
    groups = embedding.feature_groups(_mean_colour, train, test, labels, CutPaste(), CutPasteScar(), max_points=8, seed=0)
    assert list(groups) == list(embedding.GROUPS)
    assert {group: len(values) for group, values in groups.items()} == {
        "normal (train)": 8, "normal (test)": 5, "anomalous (test)": 8, "CutPaste": 8, "CutPaste-Scar": 8}
    assert all(values.shape[1] == 6 for values in groups.values())


def test_tsne_points_separates_distinct_groups_and_plots_them():
    rng = np.random.default_rng(0)
    features = {"normal (train)": rng.normal(0, 0.05, (20, 8)) + np.eye(8)[0],
                "anomalous (test)": rng.normal(0, 0.05, (15, 8)) + np.eye(8)[1]}
    points = embedding.tsne_points(features, embedding.TsneConfig(perplexity=30.0, max_iter=250, seed=0))
    assert points["group"].value_counts().to_dict() == {"normal (train)": 20, "anomalous (test)": 15}
    assert np.isfinite(points[["x", "y"]].to_numpy()).all()
    centres = points.groupby("group")[["x", "y"]].mean()
    spread = points.groupby("group")[["x", "y"]].std().to_numpy().max()
    assert np.linalg.norm(centres.iloc[0] - centres.iloc[1]) > 2 * spread  # two clusters stay apart
    figure = embedding.tsne_figure(points, "demo")
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert labels == ["normal (train) (20)", "anomalous (test) (15)"]
    assert figure.axes[0].get_title() == "demo"


def test_tsne_points_rejects_too_few_points():
    with pytest.raises(ValueError, match="at least 4 points"):
        embedding.tsne_points({"normal (train)": np.ones((3, 4))})

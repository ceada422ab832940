"""t-SNE of learned features (the paper's Figure 3).

Features of normal training images, normal and anomalous test images, and of normal training
images augmented with CutPaste and with CutPaste-Scar, embedded together in 2-D with
:class:`sklearn.manifold.TSNE`. Each group is subsampled to at most ``max_points`` so the
figure stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from sklearn.manifold import TSNE

from cutpaste.core.density import l2_normalize

GROUPS = ("normal (train)", "normal (test)", "anomalous (test)", "CutPaste", "CutPaste-Scar")
GROUP_STYLE = {  # colour, marker
    "normal (train)": ("tab:blue", "o"), "normal (test)": ("tab:cyan", "o"), "anomalous (test)": ("tab:red", "X"),
    "CutPaste": ("tab:green", "^"), "CutPaste-Scar": ("tab:orange", "v"),
}


@dataclass
class TsneConfig:
    """``max_points`` per group; sklearn's TSNE ``perplexity`` (lowered for few points) and ``max_iter``."""

    max_points: int = 200
    perplexity: float = 30.0
    max_iter: int = 1000
    seed: int = 0


def subsample(count: int, max_points: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``count`` items (all when fewer)."""
    if count <= max_points:
        return np.arange(count)
    return np.sort(rng.choice(count, size=max_points, replace=False))


def augment_images(images: np.ndarray, augmentation: Callable, seed: int = 0) -> np.ndarray:
    """(N, H, W, 3) uint8 images through a batched tensor augmentation of ``core.augment`` -> uint8."""
    generator = torch.Generator().manual_seed(seed)
    batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    augmented = augmentation(batch, generator)
    return augmented.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def feature_groups(embed: Callable[[np.ndarray], np.ndarray], train_images: np.ndarray, test_images: np.ndarray, test_labels: np.ndarray,
                   cutpaste: Callable, scar: Callable, max_points: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """Features of the five groups of :data:`GROUPS`, each at most ``max_points`` images.

    Args:
        embed: (N, H, W, 3) uint8 -> (N, D) features (e.g. ``core.train.extract_features``).
        test_labels: 0 normal, 1 anomalous, aligned with ``test_images``.
        cutpaste, scar: batched augmentations applied to (other draws of) normal training images.
    """
    rng = np.random.default_rng(seed)
    test_labels = np.asarray(test_labels)
    normal_test, anomalous_test = test_images[test_labels == 0], test_images[test_labels == 1]
    images = {
        "normal (train)": train_images[subsample(len(train_images), max_points, rng)],
        "normal (test)": normal_test[subsample(len(normal_test), max_points, rng)],
        "anomalous (test)": anomalous_test[subsample(len(anomalous_test), max_points, rng)],
        "CutPaste": augment_images(train_images[subsample(len(train_images), max_points, rng)], cutpaste, seed),
        "CutPaste-Scar": augment_images(train_images[subsample(len(train_images), max_points, rng)], scar, seed + 1),
    }
    return {group: embed(batch) for group, batch in images.items() if len(batch)}


def tsne_points(features: dict[str, np.ndarray], config: TsneConfig | None = None, normalize: bool = True) -> pd.DataFrame:
    """2-D t-SNE of every group's features together: one row per point (group, x, y).

    Features are L2-normalized first when ``normalize`` (as the GDE sees them). The perplexity is
    capped at (points - 1) / 3 so that small sets work.
    """
    config = config or TsneConfig()
    groups = [group for group, values in features.items() if len(values)]
    if not groups:
        raise ValueError("t-SNE: no features to embed")
    stacked = np.concatenate([np.asarray(features[group], dtype=np.float32) for group in groups])
    if len(stacked) < 4:
        raise ValueError(f"t-SNE: needs at least 4 points, got {len(stacked)}")
    if normalize:
        stacked = l2_normalize(stacked)
    perplexity = float(min(config.perplexity, max(1.0, (len(stacked) - 1) / 3.0)))
    tsne = TSNE(n_components=2, perplexity=perplexity, max_iter=int(config.max_iter), init="pca", random_state=int(config.seed), n_jobs=1)
    coordinates = tsne.fit_transform(stacked.astype(np.float64))
    labels = np.concatenate([[group] * len(features[group]) for group in groups])
    return pd.DataFrame({"group": labels, "x": coordinates[:, 0], "y": coordinates[:, 1]})


def tsne_figure(points: pd.DataFrame, title: str) -> plt.Figure:
    """Scatter plot of :func:`tsne_points`, one colour and marker per group."""
    figure, axis = plt.subplots(figsize=(5.5, 5))
    for group, part in points.groupby("group", sort=False):
        colour, marker = GROUP_STYLE.get(group, (None, "o"))
        axis.scatter(part["x"], part["y"], s=12, alpha=0.7, c=colour, marker=marker, label=f"{group} ({len(part)})", linewidths=0)
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_title(title)
    axis.legend(fontsize=8, loc="best", markerscale=1.5)
    figure.tight_layout()
    return figure

"""A synthetic aligned-object category: one fixed object on a constant background, small defects.

The development data of the project held no aligned object (textures only), so the failure modes of
per-location densities on aligned objects (constant background, the same highlight in every image)
never showed. This generator makes them reproducible in tests and benchmarks without real data:

- background: one constant grey (plus sensor noise of ``noise`` x 255), identical in every image;
- object: a disc with a bright highlight, a dark ring and a striped band, at a fixed position
  (jitter of at most ``jitter_px`` pixels) with a small global brightness change per image;
- defects (test only): a small filled ellipse or a thin scratch of another colour, on the object or
  on the background, with its pixel mask.

Images are (N, S, S, 3) uint8, masks (N, S, S) uint8 in {0, 1} (the layout of ``core.data``).
"""

from __future__ import annotations

import numpy as np


def _object(size: int, rng: np.random.Generator, jitter_px: int, noise: float) -> np.ndarray:
    """One normal image, (S, S, 3) float in [0, 1]."""
    dy, dx = rng.integers(-jitter_px, jitter_px + 1, size=2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx, radius = size / 2 + dy, size / 2 + dx, 0.32 * size
    distance = np.hypot(yy - cy, xx - cx)
    image = np.empty((size, size, 3))
    image[:] = (0.45, 0.45, 0.47)
    inside = distance < radius
    image[inside] = (0.70, 0.38, 0.20)
    ring = (distance > 0.62 * radius) & (distance < 0.75 * radius)
    image[ring] = (0.25, 0.15, 0.10)
    band = inside & (np.abs(yy - cy) < 0.18 * radius) & (np.sin((xx - cx) * 12.0 / size * np.pi) > 0)
    image[band] = (0.85, 0.60, 0.35)
    highlight = np.exp(-((yy - cy + 0.35 * radius) ** 2 + (xx - cx - 0.3 * radius) ** 2) / (2 * (0.08 * size) ** 2))
    image += 0.35 * highlight[..., None] * inside[..., None]
    image[inside] *= 1 + rng.uniform(-0.04, 0.04)
    image += rng.normal(0, noise, image.shape)
    return np.clip(image, 0, 1)


def _defect(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint an ellipse (spot, dent) or a thin rotated bar (scratch); returns (image, mask bool)."""
    size = image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = rng.uniform(0.2 * size, 0.8 * size, size=2)
    if rng.random() < 0.5:
        ry, rx = rng.uniform(0.04 * size, 0.09 * size, size=2)
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    else:
        angle = rng.uniform(0, np.pi)
        along = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        across = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        mask = (np.abs(along) < rng.uniform(0.08, 0.16) * size) & (np.abs(across) < max(1.0, 0.015 * size))
    colour = rng.uniform(0, 1, size=3)
    out = image.copy()
    out[mask] = 0.35 * out[mask] + 0.65 * colour
    return out, mask


def aligned_object_dataset(size: int = 64, n_train: int = 40, n_test_good: int = 10, n_test_defect: int = 20,
                           jitter_px: int = 1, noise: float = 0.01, seed: int = 0) -> dict[str, np.ndarray]:
    """A complete synthetic aligned-object category.

    Returns:
        {"train_images" (n_train, S, S, 3) uint8, "test_images" (n_test_good + n_test_defect, S, S, 3)
        uint8 (normal first), "test_masks" (same count, S, S) uint8 in {0, 1}, "test_labels" (0/1) int64}.
    """
    if size < 16:
        raise ValueError(f"aligned-object images need at least 16 px, got {size}")
    rng = np.random.default_rng(seed)
    to_uint8 = lambda image: np.round(image * 255).astype(np.uint8)  # noqa: E731
    train = np.stack([to_uint8(_object(size, rng, jitter_px, noise)) for _ in range(n_train)])
    tests, masks = [], []
    for index in range(n_test_good + n_test_defect):
        image = _object(size, rng, jitter_px, noise)
        mask = np.zeros((size, size), dtype=bool)
        if index >= n_test_good:
            image, mask = _defect(image, rng)
        tests.append(to_uint8(image))
        masks.append(mask.astype(np.uint8))
    labels = np.array([0] * n_test_good + [1] * n_test_defect, dtype=np.int64)
    return {"train_images": train, "test_images": np.stack(tests), "test_masks": np.stack(masks), "test_labels": labels}

"""Synthetic anomalies (the paper's Table 6 protocol) and the embedded demo dataset.

Anomalies are shapes (handwritten digits from scikit-learn's bundled digits, squares, ellipses,
hearts) filled with a random colour or with a patch of a natural photo, pasted with an exact mask.
Nothing here is CutPaste: no region of the image itself is moved, so a CutPaste-trained detector is
not graded on its own augmentation.

The demo dataset is cut from real texture photos that scikit-image bundles (brick, grass, gravel):
normal training and test crops come from disjoint bands of rows that alternate down each photo.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

SHAPES = ("digit", "square", "ellipse", "heart")
FILLS = ("color", "natural")
DEMO_CATEGORIES = ("brick", "grass", "gravel")
DEMO_LAYOUT = "alternating-bands"  # recorded in the manifest: data made another way is regenerated
_NATURAL_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _skimage_photo(name: str) -> np.ndarray:
    import skimage.data

    return getattr(skimage.data, name)()


def _digits() -> np.ndarray:
    """(1797, 8, 8) float in [0, 16]."""
    from sklearn.datasets import load_digits

    return load_digits().images


def shape_mask(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size) bool mask of one randomly rotated/sized shape touching the box's extent."""
    if shape == "digit":
        digits = _digits()
        glyph = digits[rng.integers(len(digits))] / 16.0
        big = Image.fromarray((glyph * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(big) > 100
    angle = rng.uniform(0, 2 * np.pi)
    if shape == "square":
        t = np.array([0.25, 0.75, 1.25, 1.75]) * np.pi
        points = np.stack([np.cos(t), np.sin(t)], 1) / np.sqrt(2)
    elif shape == "ellipse":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        points = np.stack([np.cos(t), rng.uniform(0.35, 0.9) * np.sin(t)], 1)
    elif shape == "heart":
        t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        points = np.stack([x, y], 1) / 17.0
    else:
        raise ValueError(f"unknown shape '{shape}', expected one of {SHAPES}")
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = points @ rotation.T
    points = (points - points.min(0)) / (points.max(0) - points.min(0)).max() * (size - 1)
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points], fill=255)
    return np.asarray(canvas) > 0


def paste_synthetic_anomaly(
    image: np.ndarray,
    rng: np.random.Generator,
    shape: str,
    fill: str,
    size_range: tuple[float, float] = (0.12, 0.3),
    natural_photos: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste one shape on an image.

    Args:
        image: (H, W, 3) uint8.
        shape: one of ``SHAPES``; fill: "color" (one random RGB colour) or "natural" (a patch of a
            natural photo).
        size_range: shape side as a fraction of min(H, W).

    Returns:
        (anomalous image (H, W, 3) uint8, mask (H, W) uint8 in {0, 1}).
    """
    height, width = image.shape[:2]
    side = int(round(rng.uniform(*size_range) * min(height, width)))
    side = max(side, 8)
    local = shape_mask(shape, side, rng)
    if fill == "color":
        patch = np.broadcast_to(rng.integers(0, 256, size=3, dtype=np.uint8), (side, side, 3))
    elif fill == "natural":
        photos = natural_photos or [_skimage_photo(name) for name in _NATURAL_PHOTOS]
        photo = photos[rng.integers(len(photos))]
        top = rng.integers(0, photo.shape[0] - side + 1)
        left = rng.integers(0, photo.shape[1] - side + 1)
        patch = photo[top : top + side, left : left + side, :3]
    else:
        raise ValueError(f"unknown fill '{fill}', expected one of {FILLS}")
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    out = image.copy()
    region = out[top : top + side, left : left + side]
    region[local] = patch[local]
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[top : top + side, left : left + side] = local
    return out, mask


def band_rows(height: int, crop_size: int, split: str) -> list[int]:
    """Top rows of the crop-high bands a split may use: bands alternate train, test, train, test ...
    down the photo, so the two splits never share a pixel yet both see its top and its bottom."""
    first = 0 if split == "train" else 1
    return [band * crop_size for band in range(first, height // crop_size, 2)]


def _crops(photo: np.ndarray, split: str, count: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    tops = band_rows(photo.shape[0], size, split)
    if not tops:
        raise ValueError(f"a {photo.shape[0]} px photo has no {split} band of {size} px")
    crops = []
    for _ in range(count):
        top = tops[int(rng.integers(len(tops)))]
        left = int(rng.integers(0, photo.shape[1] - size + 1))
        crops.append(photo[top : top + size, left : left + size])
    return crops


def generate_demo_category(
    root: str | Path,
    category: str,
    seed: int = 0,
    crop_size: int = 128,
    n_train: int = 100,
    n_test_good: int = 30,
    n_test_defect: int = 40,
) -> dict:
    """Write one demo category (a scikit-image texture photo) in MVTec layout under ``root``.

    Normal images are grayscale PNG crops (the bundled texture photos are grayscale); defect images
    are RGB with masks in ``ground_truth/<shape>_<fill>/``. The photo is cut into bands of ``crop_size`` rows
    that alternate between train and test (:func:`band_rows`): the splits never overlap and share
    the photo's statistics from top to bottom. Deterministic for a seed.

    Returns:
        The settings, also written to ``<root>/<category>/demo_manifest.json``.
    """
    if category not in DEMO_CATEGORIES:
        raise ValueError(f"no demo photo for category '{category}', expected one of {DEMO_CATEGORIES}")
    settings = {"seed": seed, "crop_size": crop_size, "n_train": n_train, "n_test_good": n_test_good, "n_test_defect": n_test_defect,
                "layout": DEMO_LAYOUT}
    category_dir = Path(root) / category
    natural = [_skimage_photo(name) for name in _NATURAL_PHOTOS]
    rng = np.random.default_rng([seed, DEMO_CATEGORIES.index(category)])
    photo = _skimage_photo(category)
    for split, count, defect in (("train", n_train, False), ("test", n_test_good, False), ("test", n_test_defect, True)):
        for number, crop in enumerate(_crops(photo, split, count, crop_size, rng)):
            if not defect:
                folder = category_dir / split / "good"
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(crop).save(folder / f"{number:03d}.png")
                continue
            shape = SHAPES[number % len(SHAPES)]
            fill = FILLS[(number // len(SHAPES)) % len(FILLS)]
            rgb = np.repeat(crop[..., None], 3, axis=2) if crop.ndim == 2 else crop
            image, mask = paste_synthetic_anomaly(rgb, rng, shape, fill, natural_photos=natural)
            defect_type = f"{shape}_{fill}"
            for folder, name, array in (
                (category_dir / "test" / defect_type, f"{number:03d}.png", image),
                (category_dir / "ground_truth" / defect_type, f"{number:03d}_mask.png", mask * 255),
            ):
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(folder / name)
    (category_dir / "demo_manifest.json").write_text(json.dumps(settings, indent=2))
    logger.info("demo data: wrote %s", category_dir)
    return settings


def ensure_demo_category(root: str | Path, category: str, **settings) -> dict:
    """Generate a demo category unless it already exists with the same settings."""
    manifest_path = Path(root) / category / "demo_manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest == {**manifest, **settings, "layout": DEMO_LAYOUT}:
            logger.info("demo data for %s already present at %s", category, manifest_path.parent)
            return manifest
        import shutil

        shutil.rmtree(manifest_path.parent)
    return generate_demo_category(root, category, **settings)

"""Synthetic anomalies (the paper's Table 6 protocol) and the embedded demo dataset.

Anomalies are shapes (handwritten digits from scikit-learn's bundled digits, squares, ellipses,
hearts) filled with a random colour or with a patch of a natural photo, pasted with an exact mask.
Nothing here is CutPaste: no region of the image itself is moved, so a CutPaste-trained detector is
not graded on its own augmentation.

The demo dataset is cut from real texture photos that scikit-image bundles (brick, grass, gravel):
every image is its own non-overlapping tile of the photo, dealt to train / test by one random
permutation, so no two images share a pixel and every split's normals are exchangeable. Defects are
the Table-6 shapes plus realistic surface defects (scratch, crack, stain, hole) with exact masks.
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
DEMO_LAYOUT = "shuffled-tiles"  # recorded in the manifest: data made another way is regenerated
NATURAL_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def skimage_photo(name: str) -> np.ndarray:
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
        photos = natural_photos or [skimage_photo(name) for name in NATURAL_PHOTOS]
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


DEFECT_KINDS = ("scratch", "crack", "stain", "hole")  # realistic surface defects beside the Table-6 shapes
DEFECT_TYPES = tuple(f"{shape}_{fill}" for fill in FILLS for shape in SHAPES) + DEFECT_KINDS


def _thick_polyline(points: np.ndarray, size: tuple[int, int], width: int) -> np.ndarray:
    canvas = Image.new("L", (size[1], size[0]), 0)
    ImageDraw.Draw(canvas).line([tuple(p) for p in points], fill=255, width=max(1, int(width)), joint="curve")
    return np.asarray(canvas) > 0


def surface_defect(image: np.ndarray, rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Paste one realistic surface defect on an (H, W, 3) uint8 image; sizes scale with min(H, W).

    - ``scratch``: a thin bright curved line (1 to 2 px at 64 px), 30 to 70 % of the side long;
    - ``crack``: a dark jagged line of random-walk segments with one branch;
    - ``stain``: a soft-edged blob tinted towards a random dark colour (opacity up to 0.7);
    - ``hole``: a dark ellipse with a lighter rim on its lower edge (a pit lit from above).

    Every changed pixel lies in the mask and every mask pixel is changed.

    Returns:
        (image (H, W, 3) uint8, mask (H, W) uint8 in {0, 1}).
    """
    height, width = image.shape[:2]
    side = min(height, width)
    scale = side / 64.0
    out = image.astype(np.float32)
    if kind in ("scratch", "crack"):
        if kind == "scratch":
            length = rng.uniform(0.3, 0.7) * side
            angle = rng.uniform(0, np.pi)
            bend = rng.uniform(-0.15, 0.15) * length
            t = np.linspace(0, 1, 24)[:, None]
            direction = np.array([np.cos(angle), np.sin(angle)])
            normal = np.array([-direction[1], direction[0]])
            points = t * length * direction + (4 * t * (1 - t)) * bend * normal
            stroke = max(1, round(rng.uniform(1, 2) * scale))
        else:
            steps = rng.integers(6, 11)
            step = rng.uniform(0.04, 0.07) * side
            heading = rng.uniform(0, 2 * np.pi)
            headings = heading + np.cumsum(rng.uniform(-0.7, 0.7, steps))
            points = np.concatenate([[[0.0, 0.0]], np.cumsum(step * np.stack([np.cos(headings), np.sin(headings)], 1), 0)])
            stroke = max(1, round(rng.uniform(1, 1.8) * scale))
        span = points.max(0) - points.min(0)
        offset = rng.uniform(0, 1, 2) * np.maximum(np.array([width, height]) - 1 - span, 0) - points.min(0)
        points = points + offset
        mask = _thick_polyline(points, (height, width), stroke)
        if kind == "crack":
            branch_start = points[len(points) // 2]
            branch_heading = rng.uniform(0, 2 * np.pi)
            branch = branch_start + np.cumsum(
                [[0, 0]] + [[np.cos(branch_heading + rng.uniform(-0.6, 0.6)) * 0.05 * side,
                             np.sin(branch_heading + rng.uniform(-0.6, 0.6)) * 0.05 * side] for _ in range(3)], 0)
            mask |= _thick_polyline(branch, (height, width), max(1, stroke - 1))
            out[mask] = out[mask] * rng.uniform(0.15, 0.35)
        else:
            out[mask] = out[mask] + rng.uniform(0.45, 0.7) * (255 - out[mask])
    elif kind == "stain":
        radius = rng.uniform(0.08, 0.18) * side
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        cy, cx = rng.uniform(radius, height - radius), rng.uniform(radius, width - radius)
        stretch = rng.uniform(0.6, 1.0)
        angle = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = (-(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)) / stretch
        alpha = np.exp(-0.5 * (u**2 + v**2) / (0.5 * radius) ** 2) * rng.uniform(0.5, 0.7)
        alpha[alpha < 0.12] = 0.0
        mask = alpha > 0
        tint = rng.uniform(20, 120, size=3).astype(np.float32)
        out = out * (1 - alpha[..., None]) + tint * alpha[..., None]
    elif kind == "hole":
        radius = rng.uniform(0.05, 0.12) * side
        cy, cx = rng.uniform(radius + 2, height - radius - 2), rng.uniform(radius + 2, width - radius - 2)
        stretch = rng.uniform(0.6, 1.0)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        inside = ((xx - cx) / radius) ** 2 + ((yy - cy) / (radius * stretch)) ** 2
        mask = inside <= 1.0
        rim = mask & (inside > 0.55) & (yy > cy)
        out[mask] = rng.uniform(10, 40)
        out[rim] = rng.uniform(150, 200)
    else:
        raise ValueError(f"unknown defect kind '{kind}', expected one of {DEFECT_KINDS}")
    result = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    changed = (result != image).any(-1)
    # a pixel the defect left unchanged by rounding (a stain's faint edge on a dark pixel) is not in the mask
    return result, (mask & changed).astype(np.uint8)


def defective_copies(images: np.ndarray, copies: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``copies`` defective copies of every (H, W, 3) uint8 image, one :func:`surface_defect` each, the
    kinds (``DEFECT_KINDS``) in turn; a grey image (all three channels equal) gets a grey defect.

    Returns:
        (copies (N * copies, H, W, 3) uint8, masks (N * copies, H, W) uint8 in {0, 1}, owners (N * copies,)
        the index of the image each copy was made from), in image order.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"need (N, H, W, 3) uint8 images for defective copies, got {images.shape} {images.dtype}")
    if copies < 1:
        raise ValueError(f"need at least one defective copy per image, got {copies}")
    rng = np.random.default_rng(seed)
    out, masks, owners = [], [], []
    for index, image in enumerate(images):
        grey = bool((image == image[..., :1]).all())
        for copy in range(copies):
            defective, mask = surface_defect(image, rng, DEFECT_KINDS[(index * copies + copy) % len(DEFECT_KINDS)])
            if grey:
                defective = np.repeat(np.rint(defective.astype(np.float32).mean(-1, keepdims=True)).astype(np.uint8), 3, -1)
                mask = (defective != image).any(-1).astype(np.uint8)
            out.append(defective)
            masks.append(mask)
            owners.append(index)
    return np.stack(out), np.stack(masks), np.asarray(owners)


def tile_grid(height: int, width: int, tile: int) -> list[tuple[int, int]]:
    """(top, left) of every non-overlapping ``tile`` x ``tile`` square of an image, row by row."""
    return [(row * tile, col * tile) for row in range(height // tile) for col in range(width // tile)]


def assign_tiles(count: int, split_sizes: dict[str, int], rng: np.random.Generator) -> dict[str, list[int]]:
    """Assign tile numbers to splits by one random permutation: each split draws from the whole photo,
    so the normal images of every split are exchangeable, and no two crops share a pixel.

    Raises:
        ValueError: when the splits ask for more tiles than the photo holds.
    """
    needed = sum(split_sizes.values())
    if needed > count:
        raise ValueError(f"the demo asks for {needed} crops ({split_sizes}) but the photo holds only {count} "
                         "non-overlapping tiles: lower the counts or demo.crop_size")
    order = rng.permutation(count)
    splits, start = {}, 0
    for name, size in split_sizes.items():
        splits[name] = [int(i) for i in order[start : start + size]]
        start += size
    return splits


def generate_demo_category(
    root: str | Path,
    category: str,
    seed: int = 0,
    crop_size: int = 64,
    n_train: int = 36,
    n_test_good: int = 12,
    n_test_defect: int = 16,
) -> dict:
    """Write one demo category (a scikit-image texture photo) in MVTec layout under ``root``.

    The photo is cut into non-overlapping ``crop_size`` tiles (a 512 px photo holds 64 tiles of
    64 px) and one random permutation deals them to train / test good / test defect
    (:func:`assign_tiles`): no two images share a pixel, and train, calibration and test normals are
    exchangeable draws from the whole photo. Normal images are grayscale PNG (the bundled photos are
    grayscale); defect images are RGB with masks in ``ground_truth/<type>/``. Defect types cycle
    through ``DEFECT_TYPES``: the paper's Table-6 shapes (digit, square, ellipse, heart filled with a
    random colour or a natural-photo patch) and realistic surface defects (scratch, crack, stain,
    hole). Deterministic for a seed.

    Returns:
        The settings plus the defect-area statistics (fraction of the image), also written to
        ``<root>/<category>/demo_manifest.json``.
    """
    if category not in DEMO_CATEGORIES:
        raise ValueError(f"no demo photo for category '{category}', expected one of {DEMO_CATEGORIES}")
    settings = {"seed": seed, "crop_size": crop_size, "n_train": n_train, "n_test_good": n_test_good, "n_test_defect": n_test_defect,
                "layout": DEMO_LAYOUT}
    category_dir = Path(root) / category
    natural = [skimage_photo(name) for name in NATURAL_PHOTOS]
    rng = np.random.default_rng([seed, DEMO_CATEGORIES.index(category)])
    photo = skimage_photo(category)
    tiles = tile_grid(photo.shape[0], photo.shape[1], crop_size)
    splits = assign_tiles(len(tiles), {"train": n_train, "test_good": n_test_good, "test_defect": n_test_defect}, rng)
    areas, sources = [], {}
    for split, numbers in splits.items():
        for number, tile_number in enumerate(numbers):
            top, left = tiles[tile_number]
            crop = photo[top : top + crop_size, left : left + crop_size]
            if split != "test_defect":
                folder = category_dir / split.split("_")[0] / "good"
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(crop).save(folder / f"{number:03d}.png")
                sources[f"{split.split('_')[0]}/good/{number:03d}.png"] = [top, left]
                continue
            defect_type = DEFECT_TYPES[number % len(DEFECT_TYPES)]
            sources[f"test/{defect_type}/{number:03d}.png"] = [top, left]
            rgb = np.repeat(crop[..., None], 3, axis=2) if crop.ndim == 2 else crop
            if defect_type in DEFECT_KINDS:
                image, mask = surface_defect(rgb, rng, defect_type)
            else:
                shape, fill = defect_type.split("_")
                image, mask = paste_synthetic_anomaly(rgb, rng, shape, fill, natural_photos=natural)
            areas.append(float(mask.mean()))
            for folder, name, array in (
                (category_dir / "test" / defect_type, f"{number:03d}.png", image),
                (category_dir / "ground_truth" / defect_type, f"{number:03d}_mask.png", mask * 255),
            ):
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(folder / name)
    manifest = {**settings, "photo": category, "crop_boxes_top_left": sources}
    if areas:
        manifest["defect_area_fraction"] = {"min": min(areas), "median": float(np.median(areas)), "max": max(areas)}
    (category_dir / "demo_manifest.json").write_text(json.dumps(manifest, indent=2))
    logger.info("demo data: wrote %s", category_dir)
    return manifest


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

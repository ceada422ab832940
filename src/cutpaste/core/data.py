"""MVTec-AD-layout scanning and loading.

Layout::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/<good|defect_type>/*.png
    <root>/<category>/ground_truth/<defect_type>/<stem>_mask.png

Images of any size and mode (gray, RGB, RGBA, palette) in PNG, JPEG or BMP are converted to RGB
and resized to the working resolution; masks are resized with nearest neighbour and binarized.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
INDEX_COLUMNS = ["path", "split", "defect_type", "label", "mask_path"]


class DatasetError(ValueError):
    """Raised for unusable input data; the message names the offending file or folder."""


class EmptyMaskWarning(UserWarning):
    """A defect image whose ground-truth mask has no foreground pixel."""


@dataclass
class CategoryData:
    """One category, decoded once at the working resolution.

    Attributes:
        train_images: (N_train, H, W, 3) uint8, normal training images.
        test_images: (N_test, H, W, 3) uint8.
        test_masks: (N_test, H, W) uint8 in {0, 1}; all zero for normal test images.
        index: one row per image, columns ``INDEX_COLUMNS``; train rows first, in array order.
    """

    train_images: np.ndarray
    test_images: np.ndarray
    test_masks: np.ndarray
    index: pd.DataFrame

    @property
    def test_labels(self) -> np.ndarray:
        """(N_test,) int64, 1 = anomalous."""
        return self.index.loc[self.index["split"] == "test", "label"].to_numpy(dtype=np.int64)

    def to_dict(self) -> dict[str, np.ndarray]:
        return {
            "train_images": self.train_images,
            "test_images": self.test_images,
            "test_masks": self.test_masks,
        }


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def discover_categories(root: str | Path) -> list[str]:
    """Sorted names of the sub-folders of ``root`` that contain ``train/good``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data root {root} does not exist or is not a folder")
    found = sorted(p.name for p in root.iterdir() if (p / "train" / "good").is_dir())
    if not found:
        raise DatasetError(f"no category with a train/good folder under {root}")
    return found


def scan_category(root: str | Path, category: str) -> pd.DataFrame:
    """Index every image of one category.

    Returns:
        DataFrame with columns ``path`` (str), ``split`` ("train" | "test"), ``defect_type``
        ("good" or the test sub-folder name), ``label`` (0 normal, 1 anomalous) and ``mask_path``
        (str, empty for normal images).

    Raises:
        DatasetError: missing ``train/good``, no training image, or a defect image without mask.
    """
    category_dir = Path(root) / category
    train_dir = category_dir / "train" / "good"
    if not train_dir.is_dir():
        raise DatasetError(f"{train_dir}: missing train/good folder for category '{category}'")
    rows = [(str(p), "train", "good", 0, "") for p in _image_files(train_dir)]
    if not rows:
        raise DatasetError(f"{train_dir}: no training image (expected {', '.join(IMAGE_SUFFIXES)})")
    test_dir = category_dir / "test"
    if test_dir.is_dir():
        for type_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
            defect_type = type_dir.name
            for image_path in _image_files(type_dir):
                if defect_type == "good":
                    rows.append((str(image_path), "test", "good", 0, ""))
                    continue
                mask_path = _find_mask(category_dir, defect_type, image_path)
                rows.append((str(image_path), "test", defect_type, 1, str(mask_path)))
    return pd.DataFrame(rows, columns=INDEX_COLUMNS)


def _find_mask(category_dir: Path, defect_type: str, image_path: Path) -> Path:
    mask_dir = category_dir / "ground_truth" / defect_type
    for suffix in IMAGE_SUFFIXES:
        candidate = mask_dir / f"{image_path.stem}_mask{suffix}"
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"{image_path}: defect image has no mask (expected {mask_dir / (image_path.stem + '_mask.png')})"
    )


def read_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image; errors name the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError as error:
        raise DatasetError(f"{path}: file not found") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"{path}: unreadable or corrupt image ({error})") from error


def to_rgb_array(image: Image.Image, image_size: int) -> np.ndarray:
    """Any PIL image -> (image_size, image_size, 3) uint8 RGB (alpha dropped, bilinear resize)."""
    if image.mode != "RGB":
        image = image.convert("RGBA").convert("RGB") if image.mode in ("P", "LA") else image.convert("RGB")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def load_image(path: str | Path, image_size: int) -> np.ndarray:
    """Read one image file as (image_size, image_size, 3) uint8."""
    return to_rgb_array(read_image(path), image_size)


def load_mask(mask_path: str | Path, image_path: str | Path, image_size_xy: tuple[int, int], image_size: int) -> np.ndarray:
    """Read a mask, check it matches its image's (width, height), binarize (> 0) and resize (nearest)."""
    mask = read_image(mask_path)
    if mask.size != image_size_xy:
        raise DatasetError(
            f"{mask_path}: mask size {mask.size[0]}x{mask.size[1]} differs from its image "
            f"{image_path} ({image_size_xy[0]}x{image_size_xy[1]})"
        )
    binary = (np.asarray(mask.convert("L")) > 0).astype(np.uint8)
    if binary.shape != (image_size, image_size):
        binary = np.asarray(
            Image.fromarray(binary).resize((image_size, image_size), Image.Resampling.NEAREST)
        )
    if not binary.any():
        warnings.warn(f"{mask_path}: mask is empty (no defect pixel); image kept", EmptyMaskWarning, stacklevel=2)
    return binary


def load_category(root: str | Path, category: str, image_size: int, progress: bool = False) -> CategoryData:
    """Scan and decode one category at ``image_size`` x ``image_size``.

    Raises:
        DatasetError: naming the file for any unreadable image, missing mask or mask size mismatch.
    """
    index = scan_category(root, category)
    iterator = index.itertuples(index=False)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(index), desc=f"ingest {category}", unit="img")
    images, masks = [], []
    for row in iterator:
        image = read_image(row.path)
        images.append(to_rgb_array(image, image_size))
        if row.split == "test":
            if row.label:
                masks.append(load_mask(row.mask_path, row.path, image.size, image_size))
            else:
                masks.append(np.zeros((image_size, image_size), dtype=np.uint8))
    is_train = (index["split"] == "train").to_numpy()
    stacked = np.stack(images)
    n_test = int((~is_train).sum())
    logger.info("%s: %d train, %d test images at %d px", category, int(is_train.sum()), n_test, image_size)
    return CategoryData(
        train_images=stacked[is_train],
        test_images=stacked[~is_train],
        test_masks=np.stack(masks) if masks else np.zeros((0, image_size, image_size), np.uint8),
        index=index,
    )

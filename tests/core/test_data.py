import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cutpaste.core.data import DatasetError, EmptyMaskWarning, discover_categories, load_category, scan_category

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def _save(path: Path, array: np.ndarray, mode: str | None = None, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path, **kwargs)
    return path


def make_category(root: Path, name: str = "widget", size: int = 40) -> Path:
    """A small MVTec-layout category with mixed formats, modes and sizes."""
    rng = np.random.default_rng(0)
    category = root / name
    for number in range(4):
        _save(category / "train/good" / f"{number:03d}.png", rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    _save(category / "train/good/004.jpg", rng.integers(0, 255, (size + 10, size, 3), dtype=np.uint8), quality=95)
    _save(category / "train/good/005.bmp", rng.integers(0, 255, (size, size), dtype=np.uint8))
    _save(category / "train/good/006.png", rng.integers(0, 255, (size, size, 4), dtype=np.uint8))
    _save(category / "test/good/000.png", rng.integers(0, 255, (size, size), dtype=np.uint8))
    _save(category / "test/crack/000.png", rng.integers(0, 255, (size * 2, size * 2, 3), dtype=np.uint8))
    mask = np.zeros((size * 2, size * 2), dtype=np.uint8)
    mask[10:30, 20:50] = 255
    _save(category / "ground_truth/crack/000_mask.png", mask)
    return category


def test_loads_mixed_formats_modes_and_sizes(tmp_path):
    make_category(tmp_path)
    data = load_category(tmp_path, "widget", image_size=32)
    assert data.train_images.shape == (7, 32, 32, 3) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (2, 32, 32, 3)
    assert data.test_masks.shape == (2, 32, 32)
    assert set(np.unique(data.test_masks)) <= {0, 1}
    test_rows = data.index[data.index["split"] == "test"].reset_index(drop=True)
    crack = int(test_rows.index[test_rows["defect_type"] == "crack"][0])
    good = 1 - crack
    assert data.test_masks[good].sum() == 0
    # the mask's 20x30 rectangle of an 80x80 image is 8x12 at 32 px (nearest neighbour)
    assert data.test_masks[crack].sum() == 8 * 12
    assert data.test_labels[crack] == 1 and data.test_labels[good] == 0
    assert test_rows.loc[crack, "mask_path"].endswith("ground_truth/crack/000_mask.png")
    assert list(data.index.columns) == ["path", "split", "defect_type", "label", "mask_path"]


def test_gray_input_becomes_three_equal_channels(tmp_path):
    make_category(tmp_path)
    data = load_category(tmp_path, "widget", image_size=40)
    gray = data.train_images[5]
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])


def test_corrupt_image_names_the_file(tmp_path):
    category = make_category(tmp_path)
    bad = category / "train/good/007.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(DatasetError, match=r"007\.png: unreadable or corrupt image"):
        load_category(tmp_path, "widget", 32)


def test_truncated_image_names_the_file(tmp_path):
    category = make_category(tmp_path)
    good = (category / "train/good/000.png").read_bytes()
    (category / "train/good/008.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetError, match=r"008\.png"):
        load_category(tmp_path, "widget", 32)


def test_missing_train_good(tmp_path):
    (tmp_path / "widget" / "test" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"widget/train/good: missing train/good"):
        scan_category(tmp_path, "widget")


def test_empty_train_set(tmp_path):
    (tmp_path / "widget" / "train" / "good").mkdir(parents=True)
    (tmp_path / "widget" / "train" / "good" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="no training image"):
        scan_category(tmp_path, "widget")


def test_defect_image_without_mask(tmp_path):
    category = make_category(tmp_path)
    _save(category / "test/crack/001.png", np.zeros((40, 40, 3), dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"crack/001\.png: defect image has no mask"):
        scan_category(tmp_path, "widget")


def test_mask_size_mismatch_names_both_files(tmp_path):
    category = make_category(tmp_path)
    _save(category / "ground_truth/crack/000_mask.png", np.zeros((33, 33), dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"000_mask\.png: mask size 33x33 differs from its image .*000\.png \(80x80\)"):
        load_category(tmp_path, "widget", 32)


def test_empty_mask_is_kept_with_a_warning(tmp_path):
    category = make_category(tmp_path)
    _save(category / "ground_truth/crack/000_mask.png", np.zeros((80, 80), dtype=np.uint8))
    with pytest.warns(EmptyMaskWarning, match="000_mask.png: mask is empty"):
        data = load_category(tmp_path, "widget", 32)
    assert sorted(data.test_labels.tolist()) == [0, 1]


def test_discover_categories(tmp_path):
    make_category(tmp_path, "alpha")
    make_category(tmp_path, "beta")
    (tmp_path / "not_a_category").mkdir()
    assert discover_categories(tmp_path) == ["alpha", "beta"]
    with pytest.raises(DatasetError, match="does not exist"):
        discover_categories(tmp_path / "missing")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")
@pytest.mark.parametrize("root, category", [("piped", None), ("", "magnetic_tile")])
def test_ingest_real_defect_data(root, category):
    base = SHARED_DATA / root
    categories = [category] if category else discover_categories(base)[:3]
    for name in categories:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EmptyMaskWarning)
            data = load_category(base, name, image_size=64)
        assert data.train_images.shape[1:] == (64, 64, 3)
        assert len(data.test_images) == len(data.test_masks) == int((data.index["split"] == "test").sum())
        labels = data.test_labels
        assert 0 < labels.sum() < len(labels)
        assert data.test_masks[labels == 1].any(axis=(1, 2)).mean() > 0.9
        assert not data.test_masks[labels == 0].any()

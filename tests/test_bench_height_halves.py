"""benchmarks/bench_height_halves.py: cutting a category's images and masks into top and bottom halves."""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_height_halves import main  # noqa: E402


def test_prepare_cuts_images_and_masks_at_half_their_height(tmp_path):
    rng = np.random.default_rng(0)
    category = tmp_path / "src" / "part"
    files = {"train/good/000.png": rng.integers(0, 256, (10, 4), dtype=np.uint8),
             "test/crack/000.png": rng.integers(0, 256, (10, 4), dtype=np.uint8),
             "ground_truth/crack/000_mask.png": np.where(np.arange(10)[:, None] == 7, 255, 0).repeat(4, 1).astype(np.uint8),
             "test/good/001.png": rng.integers(0, 256, (11, 4), dtype=np.uint8)}  # odd height: the last row is dropped
    for name, pixels in files.items():
        (category / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(category / name)
    (category / "notes.txt").write_text("not an image")
    assert main(["prepare", "--category-dir", str(category), "--out", str(tmp_path / "halves")]) == 4
    for name, pixels in files.items():
        top = np.asarray(Image.open(tmp_path / "halves" / "top" / "part" / name))
        bottom = np.asarray(Image.open(tmp_path / "halves" / "bottom" / "part" / name))
        half = len(pixels) // 2
        np.testing.assert_array_equal(top, pixels[:half])
        np.testing.assert_array_equal(bottom, pixels[half : 2 * half])
    mask = "ground_truth/crack/000_mask.png"
    assert not np.asarray(Image.open(tmp_path / "halves" / "top" / "part" / mask)).any()  # the defect row (7) is in the bottom half
    assert np.asarray(Image.open(tmp_path / "halves" / "bottom" / "part" / mask))[2].all()
    assert not (tmp_path / "halves" / "top" / "part" / "notes.txt").exists()

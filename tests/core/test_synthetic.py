import json

import numpy as np
import pytest
from PIL import Image

from cutpaste.core.data import load_category
from cutpaste.core.synthetic import (
    FILLS,
    SHAPES,
    ensure_demo_category,
    generate_demo_category,
    paste_synthetic_anomaly,
    shape_mask,
)


@pytest.mark.parametrize("shape", SHAPES)
def test_shape_masks_are_filled_and_fit_their_box(shape):
    mask = shape_mask(shape, 40, np.random.default_rng(0))
    assert mask.shape == (40, 40)
    assert 0.1 < mask.mean() < 0.95


@pytest.mark.parametrize("fill", FILLS)
def test_pasted_anomaly_changes_only_masked_pixels(fill):
    rng = np.random.default_rng(1)
    image = np.full((64, 64, 3), 128, dtype=np.uint8)
    out, mask = paste_synthetic_anomaly(image, rng, "heart", fill)
    changed = (out != image).any(-1)
    assert mask.any() and set(np.unique(mask)) <= {0, 1}
    assert not changed[mask == 0].any()
    assert changed[mask == 1].mean() > 0.5


def test_demo_category_is_deterministic_and_in_mvtec_layout(tmp_path):
    settings = {"seed": 3, "crop_size": 48, "n_train": 5, "n_test_good": 3, "n_test_defect": 12}
    generate_demo_category(tmp_path / "a", "gravel", **settings)
    generate_demo_category(tmp_path / "b", "gravel", **settings)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    assert files_a == files_b and len(files_a) == 5 + 3 + 12 + 12
    for relative in files_a:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / relative)), np.asarray(Image.open(tmp_path / "b" / relative)))
    data = load_category(tmp_path / "a", "gravel", 48)
    assert data.test_labels.sum() == 12
    defect_types = set(data.index["defect_type"]) - {"good"}
    assert defect_types == {f"{shape}_{fill}" for shape in SHAPES for fill in FILLS} | {"scratch", "crack", "stain", "hole"}
    # every defect image differs from a plain crop exactly inside its mask
    assert data.test_masks[data.test_labels == 1].any(axis=(1, 2)).all()


def test_ensure_reuses_matching_data_and_regenerates_on_change(tmp_path):
    settings = {"seed": 0, "crop_size": 32, "n_train": 3, "n_test_good": 2, "n_test_defect": 2}
    ensure_demo_category(tmp_path, "brick", **settings)
    marker = tmp_path / "brick" / "train" / "good" / "000.png"
    stamp = marker.stat().st_mtime_ns
    ensure_demo_category(tmp_path, "brick", **settings)
    assert marker.stat().st_mtime_ns == stamp
    ensure_demo_category(tmp_path, "brick", **{**settings, "n_train": 4})
    assert json.loads((tmp_path / "brick" / "demo_manifest.json").read_text())["n_train"] == 4
    assert len(list((tmp_path / "brick" / "train" / "good").glob("*.png"))) == 4


def test_unknown_demo_category(tmp_path):
    with pytest.raises(ValueError, match="no demo photo"):
        generate_demo_category(tmp_path, "bottle")


def test_demo_crops_never_share_a_pixel_and_are_the_photo_itself(tmp_path):
    import skimage.data

    settings = {"seed": 1, "crop_size": 64, "n_train": 36, "n_test_good": 12, "n_test_defect": 16}
    manifest = generate_demo_category(tmp_path, "grass", **settings)
    photo = skimage.data.grass()
    boxes = manifest["crop_boxes_top_left"]
    assert len(boxes) == 36 + 12 + 16
    owner = np.full(photo.shape[:2], -1)
    for number, (name, (top, left)) in enumerate(sorted(boxes.items())):
        region = owner[top : top + 64, left : left + 64]
        assert region.shape == (64, 64) and (region == -1).all(), f"{name} overlaps another crop"
        region[...] = number
        written = np.asarray(Image.open(tmp_path / "grass" / name).convert("L"))
        if "/good/" in name:  # normal images are the photo's pixels, unchanged
            assert np.array_equal(written, photo[top : top + 64, left : left + 64])


def test_demo_splits_draw_tiles_from_the_whole_photo():
    from cutpaste.core.synthetic import assign_tiles, tile_grid

    tiles = tile_grid(512, 512, 64)
    assert len(tiles) == 64 and len(set(tiles)) == 64
    splits = assign_tiles(len(tiles), {"train": 36, "test_good": 12, "test_defect": 16}, np.random.default_rng(0))
    assert sorted(sum(splits.values(), [])) == list(range(64))  # a partition: every tile used once
    for numbers in splits.values():  # each split reaches both halves of the photo, rows and columns
        rows = {tiles[n][0] for n in numbers}
        cols = {tiles[n][1] for n in numbers}
        assert min(rows) < 256 <= max(rows) and min(cols) < 256 <= max(cols)
    with pytest.raises(ValueError, match="holds only 64 non-overlapping tiles"):
        assign_tiles(len(tiles), {"train": 60, "test_good": 10}, np.random.default_rng(0))


@pytest.mark.parametrize("kind", ["scratch", "crack", "stain", "hole"])
def test_surface_defects_change_exactly_their_mask(kind):
    from cutpaste.core.synthetic import surface_defect

    rng = np.random.default_rng(2)
    image = np.random.default_rng(3).integers(60, 200, size=(64, 64, 3), dtype=np.uint8)
    out, mask = surface_defect(image, rng, kind)
    changed = (out != image).any(-1)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert np.array_equal(changed, mask.astype(bool))
    assert 0.001 < mask.mean() < 0.12  # within the range of real inspection defects (MVTec AD: ~0.1 to 10 %)


def test_old_layout_is_regenerated(tmp_path):
    settings = {"seed": 0, "crop_size": 32, "n_train": 2, "n_test_good": 1, "n_test_defect": 1}
    ensure_demo_category(tmp_path, "gravel", **settings)
    manifest = tmp_path / "gravel" / "demo_manifest.json"
    manifest.write_text(json.dumps({**settings}))  # as written before the layout was recorded
    ensure_demo_category(tmp_path, "gravel", **settings)
    assert json.loads(manifest.read_text())["layout"] == "shuffled-tiles"


def test_defective_copies_change_only_their_masks_take_the_kinds_in_turn_and_keep_grey_images_grey():
    from cutpaste.core.synthetic import defective_copies

    rng = np.random.default_rng(0)
    colour = rng.integers(60, 200, size=(2, 48, 48, 3), dtype=np.uint8)
    grey = np.repeat(rng.integers(60, 200, size=(1, 48, 48, 1), dtype=np.uint8), 3, -1)
    images = np.concatenate([colour, grey])
    copies, masks, owners = defective_copies(images, 4, seed=0)
    assert copies.shape == (12, 48, 48, 3) and masks.shape == (12, 48, 48) and owners.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for copy, mask, owner in zip(copies, masks, owners, strict=True):
        changed = (copy != images[owner]).any(-1)
        assert mask.sum() > 0
        np.testing.assert_array_equal(changed, mask.astype(bool))  # every changed pixel is in the mask and every mask pixel changed
    assert (copies[8:] == copies[8:, ..., :1]).all()  # a grey image gets grey defects
    # the kinds in turn: a hole (a dark ellipse) is the fourth of each image's copies
    assert copies[3][masks[3] > 0].mean() < images[0][masks[3] > 0].mean()
    np.testing.assert_array_equal(defective_copies(images, 4, seed=0)[0], copies)  # seeded
    with pytest.raises(ValueError, match="uint8"):
        defective_copies(images.astype(np.float32), 1)
    with pytest.raises(ValueError, match="at least one"):
        defective_copies(images, 0)

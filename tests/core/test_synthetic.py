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
    settings = {"seed": 3, "crop_size": 48, "n_train": 5, "n_test_good": 3, "n_test_defect": 8}
    generate_demo_category(tmp_path / "a", "gravel", **settings)
    generate_demo_category(tmp_path / "b", "gravel", **settings)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    assert files_a == files_b and len(files_a) == 5 + 3 + 8 + 8
    for relative in files_a:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / relative)), np.asarray(Image.open(tmp_path / "b" / relative)))
    data = load_category(tmp_path / "a", "gravel", 48)
    assert data.test_labels.sum() == 8
    defect_types = set(data.index["defect_type"]) - {"good"}
    assert defect_types == {f"{shape}_{fill}" for shape in SHAPES for fill in FILLS}
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


def test_train_and_test_bands_alternate_and_never_overlap():
    from cutpaste.core.synthetic import band_rows

    train, test = band_rows(512, 128, "train"), band_rows(512, 128, "test")
    assert train == [0, 256] and test == [128, 384]
    train_rows = {row for top in train for row in range(top, top + 128)}
    test_rows = {row for top in test for row in range(top, top + 128)}
    assert not train_rows & test_rows


def test_old_layout_is_regenerated(tmp_path):
    settings = {"seed": 0, "crop_size": 32, "n_train": 2, "n_test_good": 1, "n_test_defect": 1}
    ensure_demo_category(tmp_path, "gravel", **settings)
    manifest = tmp_path / "gravel" / "demo_manifest.json"
    manifest.write_text(json.dumps({**settings}))  # as written before the layout was recorded
    ensure_demo_category(tmp_path, "gravel", **settings)
    assert json.loads(manifest.read_text())["layout"] == "alternating-bands"

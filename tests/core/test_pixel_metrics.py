import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cutpaste.core.metrics import aupro, pixel_auroc, pro_curve


def test_pixel_auroc_matches_sklearn_over_all_pixels():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 8, 8)) > 0.8
    maps = rng.normal(size=(3, 8, 8)) + masks
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))


def test_perfect_and_inverted_maps():
    masks = np.zeros((2, 10, 10), dtype=np.uint8)
    masks[0, 2:4, 2:4] = 1
    masks[1, 6:9, 1:3] = 1
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    assert pixel_auroc(masks, masks.astype(float)) == pytest.approx(1.0)
    assert aupro(masks, 1.0 - masks) == pytest.approx(0.0)


def test_regions_weigh_equally_whatever_their_size():
    # one image, a 1-pixel region and a 9-pixel region, 90 normal pixels
    masks = np.zeros((1, 10, 10), dtype=np.uint8)
    masks[0, 0, 0] = 1
    masks[0, 5:8, 5:8] = 1
    maps = np.zeros((1, 10, 10))
    maps[0, 0, 0] = 3.0            # the small region is found first: PRO jumps to 1/2 at FPR 0
    maps[0, 5:8, 5:8] = 1.0        # the large one ties with 9 normal pixels
    maps[0, 9, :9] = 1.0
    fpr, pro = pro_curve(masks, maps)
    np.testing.assert_allclose(fpr, [0.0, 0.0, 9 / 90, 1.0])
    np.testing.assert_allclose(pro, [0.0, 0.5, 1.0, 1.0])
    # area up to FPR 0.3: PRO 0.5 at FPR 0, rising linearly to 1 at FPR 0.1, then flat:
    # 0.1 * (0.5 + 1) / 2 + 0.2 * 1 = 0.275, normalised by 0.3
    assert aupro(masks, maps) == pytest.approx(0.275 / 0.3)


def test_shape_mismatch_and_no_defect():
    with pytest.raises(ValueError, match="differ in shape"):
        pixel_auroc(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)))
    with pytest.raises(ValueError, match="at least one defect region"):
        aupro(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)))

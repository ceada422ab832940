import numpy as np
import pytest
import torch
from PIL import Image

from cutpaste.core.data import DatasetError
from cutpaste.core.density import GaussianDensity
from cutpaste.core.detector import Detector, fit_threshold, holdout_split, list_images
from cutpaste.core.models import CutPasteNet
from cutpaste.core.train import extract_features

DENSITY = {"shrinkage": "ledoit_wolf", "l2_normalize": False}


def test_holdout_split_is_a_disjoint_cover_of_the_training_images():
    split = holdout_split(100, fraction=0.2, min_images=10, seed=3)
    assert len(split["calibration"]) == 20 and len(split["fit"]) == 80
    assert sorted(split["fit"] + split["calibration"]) == list(range(100))
    assert split == holdout_split(100, fraction=0.2, min_images=10, seed=3)
    assert len(holdout_split(30, fraction=0.1, min_images=10)["calibration"]) == 10  # the minimum wins
    assert len(holdout_split(12, fraction=0.2, min_images=10)["calibration"]) == 6  # never more than half
    with pytest.raises(ValueError, match="holdout_fraction"):
        holdout_split(100, fraction=0.8)
    with pytest.raises(ValueError, match="at least 4"):
        holdout_split(3)


def test_threshold_quantile_sets_the_false_positive_rate_on_new_normals():
    rng = np.random.default_rng(0)
    gde = GaussianDensity(**DENSITY).fit(rng.normal(size=(2000, 4)))
    threshold = fit_threshold(gde.score_samples(rng.normal(size=(2000, 4))), quantile=0.9, method="empirical")
    fresh = gde.score_samples(rng.normal(size=(5000, 4)))
    assert (fresh > threshold.value).mean() == pytest.approx(0.1, abs=0.02)
    assert threshold.n_images == 2000 and threshold.quantile == 0.9
    with pytest.raises(ValueError, match="quantile"):
        fit_threshold(np.arange(20.0), quantile=1.0)
    with pytest.raises(ValueError, match="at least 2"):
        fit_threshold(np.array([1.0]))
    with pytest.raises(ValueError, match="method"):
        fit_threshold(np.arange(1.0, 20.0), method="max")
    with pytest.raises(ValueError, match="positive"):
        fit_threshold(np.array([0.0, 1.0, 2.0]), method="lognormal")


def test_lognormal_threshold_holds_its_rate_with_ten_calibration_images():
    """With n = 10 calibration images the empirical 0.99 quantile flags ~1/(n+1) of new normals;
    the log-normal prediction bound keeps the asked 1 %, averaged over many calibration draws."""
    rng = np.random.default_rng(1)
    rates = {"lognormal": [], "empirical": []}
    for _ in range(400):
        calibration = rng.lognormal(3.0, 0.4, size=10)
        fresh = rng.lognormal(3.0, 0.4, size=500)
        for method, observed in rates.items():
            observed.append((fresh > fit_threshold(calibration, 0.99, method).value).mean())
    assert np.mean(rates["lognormal"]) == pytest.approx(0.01, abs=0.004)
    assert np.mean(rates["empirical"]) > 0.05  # the highest of 10 scores: ~1/11 of new normals lie above it
    threshold = fit_threshold(np.exp(np.linspace(1, 2, 10)), 0.99)
    assert threshold.method == "lognormal" and threshold.value > np.exp(2)  # beyond the highest calibration score


def _detector(image_size=32):
    torch.manual_seed(0)
    network = CutPasteNet(num_classes=3, head_dims=(16,)).eval()
    images = np.random.default_rng(0).integers(0, 256, (12, image_size, image_size, 3), dtype=np.uint8)
    features = extract_features(network, images, 8, "cpu", "fp32")
    detector = Detector(
        category="widget", image_size=image_size, model_config={"backbone": "resnet18", "head_dims": [16]},
        state_dict=network.state_dict(), density=GaussianDensity(**DENSITY).fit(features),
        threshold=fit_threshold(GaussianDensity(**DENSITY).fit(features).score_samples(features), 0.9), feature_batch_size=8, precision="fp32", device="cpu",
    )
    return detector, images


def test_save_load_round_trip_scores_identically(tmp_path):
    detector, images = _detector()
    loaded = Detector.load(detector.save(tmp_path / "det"))
    np.testing.assert_array_equal(loaded.score_arrays(images), detector.score_arrays(images))
    assert loaded.threshold == detector.threshold and loaded.category == "widget"
    for key, value in detector.state_dict.items():
        assert torch.equal(loaded.state_dict[key], value)


def test_score_files_reports_bad_files_by_name_and_scores_the_rest(tmp_path):
    detector, images = _detector()
    folder = tmp_path / "new"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(images[0]).save(folder / "a.png")
    Image.fromarray(images[1]).resize((50, 70)).convert("L").save(folder / "sub" / "b.jpg")
    (folder / "notes.txt").write_text("not an image")
    (folder / "c.png").write_bytes(b"\x89PNG broken")
    table = detector.score_files(list_images(folder), progress=False)
    assert len(table) == 4
    ok = table[table["error"] == ""]
    assert sorted(p.rsplit("/", 1)[-1] for p in ok["file"]) == ["a.png", "b.jpg"]
    assert set(ok["decision"]) <= {"anomalous", "normal"}
    bad = table[table["error"] != ""]
    assert all(name in " ".join(bad["error"]) for name in ("notes.txt", "c.png"))
    assert bad["score"].isna().all()
    expected = detector.score_arrays(images[:1])[0]
    assert ok.loc[ok["file"].str.endswith("a.png"), "score"].item() == pytest.approx(expected, rel=1e-5)


def test_decisions_follow_the_threshold():
    detector, _ = _detector()
    value = detector.threshold.value
    table = detector.decide(np.array([value * 0.5, value * 2]))
    assert table["decision"].tolist() == ["normal", "anomalous"]


def test_empty_or_missing_input_folder(tmp_path):
    with pytest.raises(DatasetError, match="holds no file"):
        list_images(tmp_path)
    with pytest.raises(DatasetError, match="input folder not found"):
        list_images(tmp_path / "nope")

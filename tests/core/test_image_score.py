import numpy as np
import pytest
import torch

from cutpaste.core.density import GaussianDensity
from cutpaste.core.detector import Detector, fit_threshold
from cutpaste.core.image_score import (
    ImageScore,
    first_convolution,
    fit_image_score,
    fit_stem_density,
    stem_batches,
    stem_maps,
    stem_scores,
)
from cutpaste.core.models import CutPasteNet
from cutpaste.core.train import InferenceSetup, embed_images, prepare_for_inference

SIZE = 32


def _network():
    torch.manual_seed(0)
    network = CutPasteNet(num_classes=3, head_dims=(16,))
    return network, prepare_for_inference(network, "cpu", "fp32")


def _grey_textures(count, seed):
    """(count, SIZE, SIZE, 3) uint8 grayscale noise textures (R = G = B)."""
    rng = np.random.default_rng(seed)
    grey = rng.integers(40, 216, (count, SIZE, SIZE, 1), dtype=np.uint8)
    return np.repeat(grey, 3, axis=3)


def _with_colour_square(images, side=6):
    """The images with one saturated green square each: same luminance range, but colour."""
    out = images.copy()
    out[:, 10 : 10 + side, 12 : 12 + side] = (40, 200, 40)
    return out


def test_stem_responses_are_the_first_convolution_of_the_normalised_pixels():
    network, setup = _network()
    images = _grey_textures(5, 0)
    responses = torch.cat(list(stem_batches(network, images, setup, batch_size=2)))
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        expected = network.encoder.conv1(network.normalize(pixels))
    assert first_convolution(network) is network.encoder.conv1
    assert responses.shape == (5, 64, SIZE // 2, SIZE // 2)
    torch.testing.assert_close(responses, expected)


def test_block_group_responses_are_the_encoder_stages_in_float32():
    network, setup = _network()
    images = _grey_textures(3, 3)
    bf16 = InferenceSetup(setup.device, torch.bfloat16, setup.memory_format)
    responses = torch.cat(list(stem_batches(network, images, bf16, batch_size=2, level=1)))
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    encoder = network.encoder
    with torch.no_grad():
        expected = encoder.layer1(encoder.maxpool(encoder.relu(encoder.bn1(encoder.conv1(network.normalize(pixels))))))
    assert responses.shape == (3, 64, SIZE // 4, SIZE // 4) and responses.dtype == torch.float32
    torch.testing.assert_close(responses, expected)
    density = fit_stem_density(network, images, setup, level=1)
    maps = stem_maps(network, density, images, setup, level=1)
    assert maps.shape == (3, SIZE, SIZE) and np.isfinite(maps).all()
    with pytest.raises(ValueError, match="level must be 0..4 for resnet18, got 5"):
        next(stem_batches(network, images, setup, level=5))


def test_stem_runs_in_float32_under_a_bf16_setup():
    network, setup = _network()
    images = _grey_textures(3, 1)
    bf16 = InferenceSetup(setup.device, torch.bfloat16, setup.memory_format)
    exact = torch.cat(list(stem_batches(network, images, setup)))
    under_autocast = torch.cat(list(stem_batches(network, images, bf16)))
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, exact)


def test_stem_density_with_every_location_equals_the_gaussian_of_all_responses():
    network, setup = _network()
    images = _grey_textures(4, 2)
    density = fit_stem_density(network, images, setup, batch_size=3, max_vectors=10**9)
    responses = torch.cat(list(stem_batches(network, images, setup)))
    vectors = responses.permute(0, 2, 3, 1).reshape(-1, 64).double().numpy()
    reference = GaussianDensity(l2_normalize=False).fit(vectors)
    np.testing.assert_allclose(density.mean_, reference.mean_, rtol=1e-10)
    np.testing.assert_allclose(density.covariance_, reference.covariance_, rtol=1e-8, atol=1e-12)
    assert density.l2_normalize is False
    # a bounded draw: a different, seeded subset, the same for the same seed
    drawn = fit_stem_density(network, images, setup, max_vectors=300, seed=5)
    again = fit_stem_density(network, images, setup, max_vectors=300, seed=5)
    np.testing.assert_array_equal(drawn.mean_, again.mean_)
    assert not np.allclose(drawn.mean_, reference.mean_)


def test_stem_density_flags_a_colour_defect_on_grayscale_parts():
    """Grey training images never vary along a chroma direction of the stem responses, so a small
    colour square lies far outside every normal location; unseen grey images stay inside."""
    network, setup = _network()
    density = fit_stem_density(network, _grey_textures(10, 3), setup)
    normal = stem_scores(network, density, _grey_textures(8, 4), setup)
    defective = stem_scores(network, density, _with_colour_square(_grey_textures(8, 5)), setup)
    assert defective.min() > 10 * normal.max()


def test_fused_score_is_the_most_abnormal_component_in_units_of_its_own_threshold():
    score = ImageScore("fused", stem=GaussianDensity(), references={"pooled": np.log2(10.0), "stem": np.log2(200.0)})
    fused = score.combine({"pooled": np.array([10.0, 40.0, 10.0, 5.0]), "stem": np.array([200.0, 200.0, 1600.0, 100.0])})
    np.testing.assert_allclose(fused, [1.0, 4.0, 8.0, 0.5])
    assert ImageScore().combine({"pooled": np.array([3.0])}).tolist() == [3.0]
    with pytest.raises(ValueError, match="not calibrated"):
        ImageScore("fused", stem=GaussianDensity()).combine({"pooled": np.ones(1), "stem": np.ones(1)})
    with pytest.raises(ValueError, match="image_score.method"):
        ImageScore("mean")


def test_each_component_gets_its_own_bound_and_the_bounds_share_the_false_alarm_rate():
    """A component whose normal scores barely vary must not censor the other's spread: each is
    divided by its own prediction bound at 1 - (1 - q) / 2, and the decision threshold is 1."""
    rng = np.random.default_rng(0)
    wide, narrow = np.exp(rng.normal(3.0, 0.8, 10)), np.exp(rng.normal(1.0, 0.01, 10))
    score = ImageScore("fused", quantile=0.98, stem=GaussianDensity()).calibrate({"pooled": wide, "stem": narrow})
    for name, values in {"pooled": wide, "stem": narrow}.items():
        assert score.references[name] == pytest.approx(np.log2(fit_threshold(values, 0.99, "lognormal").value))
    threshold = score.threshold()
    assert threshold.value == 1.0 and threshold.quantile == 0.98 and threshold.n_images == 10
    np.testing.assert_allclose(score.calibration_scores, score.combine({"pooled": wide, "stem": narrow}))
    # new normal images from the same distributions: the share flagged stays near 1 - q
    fresh = {"pooled": np.exp(rng.normal(3.0, 0.8, 20000)), "stem": np.exp(rng.normal(1.0, 0.01, 20000))}
    assert (score.combine(fresh) > threshold.value).mean() < 0.06
    pooled = ImageScore("pooled", quantile=0.9, threshold_method="empirical").calibrate({"pooled": wide})
    assert pooled.threshold() == fit_threshold(wide, 0.9, "empirical")


def test_zsum_adds_the_components_z_scores_of_log_score_under_the_calibration_images():
    rng = np.random.default_rng(1)
    calibration = {"pooled": np.exp(rng.normal(3.0, 0.8, 10)), "stem": np.exp(rng.normal(1.0, 0.05, 10))}
    score = ImageScore("zsum", quantile=0.98, stem=GaussianDensity()).calibrate(calibration)
    for name, values in calibration.items():
        logs = np.log2(values)
        assert score.log_stats[name] == pytest.approx([logs.mean(), logs.std(ddof=1)])
    test = {"pooled": np.array([5.0, 80.0]), "stem": np.array([2.0, 2.0])}
    expected = sum((np.log2(test[name]) - score.log_stats[name][0]) / score.log_stats[name][1] for name in test)
    np.testing.assert_allclose(np.log2(score.combine(test)), expected)
    np.testing.assert_allclose(score.calibration_scores, score.combine(calibration))
    assert abs(np.log2(score.calibration_scores).mean()) < 1e-9
    # the threshold is the ordinary log-normal bound on the calibration images' combined scores
    threshold = score.threshold()
    assert threshold == fit_threshold(np.asarray(score.calibration_scores), 0.98, "lognormal")
    assert threshold.value > max(score.calibration_scores)
    # a component far off its normal level (a z of thousands) stays finite, and above the threshold
    extreme = score.combine({"pooled": np.array([20.0]), "stem": np.array([1e300])})
    assert np.isfinite(extreme).all() and extreme[0] > threshold.value
    with pytest.raises(ValueError, match="not calibrated"):
        ImageScore("zsum", stem=GaussianDensity()).combine(test)
    with pytest.raises(ValueError, match="stem scores do not vary"):
        ImageScore("zsum", stem=GaussianDensity()).calibrate({"pooled": calibration["pooled"], "stem": np.full(10, 4.0)})


@pytest.mark.parametrize(("count", "most"), [(10, 0.02), (40, 0.013)])
def test_zsum_threshold_holds_its_false_alarm_rate_over_calibration_draws(count, most):
    """Over many draws of the calibration images, new normal images exceed the q = 0.99 threshold
    near the nominal 1 % on average: a little above it with few calibration images (the statistics
    are fitted on the images the bound is fitted on), closer with more."""
    rng = np.random.default_rng(count)
    rates = []
    for _ in range(300):
        def draw(size):
            shared = rng.normal(size=size)
            return {"pooled": np.exp(3.0 + 0.8 * shared), "stem": np.exp(1.0 + 0.05 * (0.5 * shared + 0.87 * rng.normal(size=size)))}
        score = ImageScore("zsum", quantile=0.99, stem=GaussianDensity()).calibrate(draw(count))
        rates.append((score.combine(draw(1000)) > score.threshold().value).mean())
    assert 0.005 < np.mean(rates) <= most


def test_fit_image_score_calibrates_on_the_calibration_images_only():
    network, setup = _network()
    fit_images, calibration = _grey_textures(10, 6), _grey_textures(6, 7)
    pooled = GaussianDensity(l2_normalize=False).fit(embed_images(network, fit_images, setup))
    score = fit_image_score("fused", network, setup, fit_images, calibration, pooled, quantile=0.95)
    components = score.components(network, setup, calibration, pooled)
    expected = ImageScore("fused", quantile=0.95, stem=score.stem).calibrate(components)
    assert score.references == pytest.approx(expected.references)
    np.testing.assert_allclose(score.calibration_scores, expected.calibration_scores)
    assert len(score.calibration_scores) == 6
    summed = fit_image_score("zsum", network, setup, fit_images, calibration, pooled, quantile=0.95)
    expected_stats = ImageScore("zsum", quantile=0.95, stem=summed.stem).calibrate(components).log_stats
    for name in ("pooled", "stem"):
        assert summed.log_stats[name] == pytest.approx(expected_stats[name])
    np.testing.assert_allclose(summed.stem.mean_, score.stem.mean_)  # the same stem density, fitted on the fit images
    plain = fit_image_score("pooled", network, setup, fit_images, calibration, pooled)
    assert plain.stem is None and plain.references == {}
    np.testing.assert_allclose(plain.calibration_scores, pooled.score_samples(embed_images(network, calibration, setup)))
    with pytest.raises(ValueError, match="at least 2 calibration"):
        fit_image_score("fused", network, setup, fit_images, calibration[:1], pooled)


def _detector(method: str):
    """A detector with a ``method`` image score on untrained weights, its pooled GDE, network and test images."""
    network, setup = _network()
    fit_images, calibration = _grey_textures(10, 8), _grey_textures(6, 9)
    pooled = GaussianDensity(l2_normalize=False).fit(embed_images(network, fit_images, setup))
    score = fit_image_score(method, network, setup, fit_images, calibration, pooled)
    detector = Detector(category="widget", image_size=SIZE, model_config={"backbone": "resnet18", "head_dims": [16]},
                        state_dict=network.state_dict(), density=pooled, threshold=score.threshold(),
                        feature_batch_size=4, precision="fp32", device="cpu", image_score=score)
    images = np.concatenate([_grey_textures(3, 10), _with_colour_square(_grey_textures(3, 11))])
    return detector, (network, setup), images


def test_detector_with_a_fused_score_round_trips_and_old_folders_load_as_pooled(tmp_path):
    detector, (network, setup), images = _detector("fused")
    score, pooled = detector.image_score, detector.density
    folder = detector.save(tmp_path / "det")
    loaded = Detector.load(folder)
    np.testing.assert_array_equal(loaded.score_arrays(images), detector.score_arrays(images))
    assert loaded.image_score.method == "fused" and loaded.image_score.references == score.references
    assert loaded.image_score.quantile == score.quantile
    assert (folder / "image_score.npz").is_file()
    # a detector folder written before the image score existed: no image_score key, no npz -> the pooled score
    meta = (folder / "detector.json").read_text()
    import json

    data = json.loads(meta)
    data.pop("image_score")
    (folder / "detector.json").write_text(json.dumps(data))
    (folder / "image_score.npz").unlink()
    old = Detector.load(folder)
    assert old.image_score.method == "pooled"
    np.testing.assert_allclose(old.score_arrays(images), pooled.score_samples(embed_images(network, images, setup)), rtol=1e-6)


def test_detector_with_a_zsum_score_round_trips(tmp_path):
    detector, _, images = _detector("zsum")
    loaded = Detector.load(detector.save(tmp_path / "det"))
    np.testing.assert_array_equal(loaded.score_arrays(images), detector.score_arrays(images))
    assert loaded.image_score.method == "zsum" and loaded.image_score.log_stats == detector.image_score.log_stats
    assert loaded.threshold == detector.threshold

import json

import numpy as np
import pytest
import torch

from cutpaste.core.density import GaussianDensity
from cutpaste.core.localize import (
    LocationDensity,
    dense_features,
    gaussian_kernel,
    gradcam,
    grid_size,
    receptive_field_upsample,
    scaled,
)
from cutpaste.core.models import CutPasteNet


def test_grid_size_matches_the_paper_and_rejects_small_images():
    assert grid_size(256, 32, 4) == 57
    assert grid_size(64, 16, 4) == 13
    with pytest.raises(ValueError, match="smaller than the patch size"):
        grid_size(24, 32, 4)
    assert scaled(32, 128) == 16 and scaled(4, 64) == 1


def test_single_high_patch_spreads_as_the_gaussian_kernel():
    grid = np.zeros((1, 21, 21))
    grid[0, 10, 10] = 5.0
    patch, sigma = 9, 2.0
    upsampled = receptive_field_upsample(grid, patch, stride=1, sigma=sigma)
    assert upsampled.shape == (1, 29, 29)
    region = upsampled[0, 10 : 10 + patch, 10 : 10 + patch]
    kernel = gaussian_kernel(patch, sigma).numpy()
    # interior pixels are covered by patch^2 patches with the same total weight: the shape is the kernel's
    np.testing.assert_allclose(region / region.max(), kernel / kernel.max(), rtol=1e-5)
    outside = upsampled[0].copy()
    outside[10 : 10 + patch, 10 : 10 + patch] = 0
    assert np.abs(outside).max() == 0


def test_uniform_scores_stay_uniform_up_to_the_border():
    upsampled = receptive_field_upsample(np.full((2, 57, 57), 3.0), 32, stride=4, sigma=8.0)
    assert upsampled.shape == (2, 256, 256)
    np.testing.assert_allclose(upsampled, 3.0, rtol=1e-5)


def test_dense_features_embed_each_patch():
    torch.manual_seed(0)
    model = CutPasteNet(num_classes=3, head_dims=(8,)).eval()
    images = np.random.default_rng(0).integers(0, 256, (2, 24, 24, 3), dtype=np.uint8)
    features = dense_features(model, images, patch_size=16, stride=4, batch_size=3, device="cpu", precision="fp32")
    assert features.shape == (2, 3, 3, 512)
    patch = torch.from_numpy(images[1, 4:20, 8:24]).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        expected = model.embed(patch)[0].numpy()
    np.testing.assert_allclose(features[1, 1, 2], expected, rtol=1e-4, atol=1e-5)


def test_non_finite_bf16_features_are_recomputed_in_float32_and_non_finite_weights_are_named():
    torch.manual_seed(0)
    model = CutPasteNet(num_classes=3, head_dims=(8,)).eval()
    images = np.random.default_rng(1).integers(0, 256, (1, 24, 24, 3), dtype=np.uint8)
    exact = dense_features(model, images, patch_size=16, stride=4, device="cpu", precision="fp32")
    embed = model.embed

    def nan_under_autocast(batch, *args):
        out = embed(batch, *args)
        return out * float("nan") if torch.is_autocast_cpu_enabled() else out

    model.embed = nan_under_autocast
    recomputed = dense_features(model, images, patch_size=16, stride=4, device="cpu", precision="bf16")
    np.testing.assert_allclose(recomputed, exact, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="non-finite"):
        LocationDensity(per_location=False).fit(np.full((2, 3, 3, 4), np.nan))
    with pytest.raises(ValueError, match="non-finite"):
        LocationDensity(per_location=True).fit(np.full((2, 3, 3, 4), np.inf))


def _grid_features(count, seed):
    """Location (0, 0) varies along axis 0, every other location along axis 1."""
    rng = np.random.default_rng(seed)
    features = 0.05 * rng.normal(size=(count, 2, 2, 6))
    features[:, 0, 0, 0] += rng.normal(size=count) * 3
    features[:, 1:, :, 1] += rng.normal(size=(count, 1, 2)) * 3
    features[:, 0, 1, 1] += rng.normal(size=count) * 3
    return features + 10.0


def test_per_location_density_matches_a_gde_per_location():
    """The low-rank + isotropic form is exact at full rank: it equals scikit-learn's Ledoit-Wolf GDE
    (plus the same absolute floor) at every location."""
    features = _grid_features(60, 0)
    test = _grid_features(5, 1)
    for l2 in (False, True):
        density = LocationDensity(per_location=True, l2_normalize=l2, location_chunk=3, storage_dtype="float32").fit(features)
        assert density.floor_ > 0
        for row, column in ((0, 0), (1, 0)):
            reference = GaussianDensity(l2_normalize=l2, covariance_floor=density.floor_).fit(features[:, row, column])
            np.testing.assert_allclose(density.score_grid(test)[:, row, column], reference.score_samples(test[:, row, column]), rtol=1e-4)
    unfloored = LocationDensity(per_location=True, l2_normalize=False, floor_ratio=0.0, storage_dtype="float32").fit(features)
    plain = GaussianDensity(l2_normalize=False).fit(features[:, 1, 0]).score_samples(test[:, 1, 0])
    np.testing.assert_allclose(unfloored.score_grid(test)[:, 1, 0], plain, rtol=1e-4)


def test_a_neighbourhood_density_is_the_gde_of_the_pooled_window_and_survives_a_round_trip():
    """neighborhood r: each location's Gaussian is the GDE of the (2r + 1)^2 window's vectors, clipped at
    the border; both the eigh path (more pooled vectors than dimensions) and the SVD path are exact."""
    rng = np.random.default_rng(0)
    test = rng.normal(size=(4, 5, 5, 6)) + 10.0
    for count in (3, 40):  # 3 x 9 = 27 pooled vectors > 6 dims (eigh); an edge location of 2 images x 4 = 8 > 6 too
        features = rng.normal(size=(count, 5, 5, 6)) * np.linspace(0.5, 2, 6) + 10.0
        density = LocationDensity(per_location=True, neighborhood=1, max_rank=None, storage_dtype="float32").fit(features)
        assert density.settings()["neighborhood"] == 1
        for row, column in ((2, 2), (0, 0), (0, 3)):
            window = features[:, max(0, row - 1) : row + 2, max(0, column - 1) : column + 2].reshape(-1, 6)
            reference = GaussianDensity(covariance_floor=density.floor_).fit(window)
            np.testing.assert_allclose(density.score_grid(test)[:, row, column], reference.score_samples(test[:, row, column]), rtol=1e-4)
        rebuilt = LocationDensity.from_arrays(density.settings(), density.to_arrays())
        np.testing.assert_allclose(rebuilt.score_grid(test), density.score_grid(test), rtol=1e-6)
    few = rng.normal(size=(2, 5, 5, 30))  # 2 x 9 = 18 pooled vectors < 30 dims: the SVD path
    density = LocationDensity(per_location=True, neighborhood=1, max_rank=None, storage_dtype="float32").fit(few)
    reference = GaussianDensity(covariance_floor=density.floor_).fit(few[:, 1:4, 1:4].reshape(-1, 30))
    np.testing.assert_allclose(density.score_grid(few[:1])[:, 2, 2], reference.score_samples(few[:1, 2, 2]), rtol=1e-4)
    plain = LocationDensity(per_location=True, storage_dtype="float32").fit(few)
    assert plain.settings()["neighborhood"] == 0 and plain.bases_.shape[-1] == 2  # r = 0: rank N, as before
    with pytest.raises(ValueError, match="neighborhood"):
        LocationDensity(per_location=True, neighborhood=-1)


def _constant_location_features(count, seed, background_noise):
    """(count, 2, 2, 16): location (0, 0) is plain background (the same vector up to ``background_noise``),
    the others vary as object patches do."""
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(99).normal(size=(2, 2, 16)) + 2.0
    features = base + 0.3 * rng.normal(size=(count, 2, 2, 16))
    features[:, 0, 0] = base[0, 0] + background_noise * rng.normal(size=(count, 16))
    return features


def test_a_constant_location_scores_moderately_and_still_flags_a_change():
    train = _constant_location_features(40, 0, background_noise=1e-6)
    normal = _constant_location_features(20, 1, background_noise=1e-4)  # same background, slightly different lighting/noise
    floored = LocationDensity(per_location=True).fit(train)
    unfloored = LocationDensity(per_location=True, floor_ratio=0.0).fit(train)
    elsewhere = floored.score_grid(normal)[:, 1:, :].reshape(-1)
    background = floored.score_grid(normal)[:, 0, 0]
    assert np.isfinite(background).all() and background.max() < np.median(elsewhere)
    # without the floor the same normal background explodes (the 4e12 corners)
    assert unfloored.score_grid(normal)[:, 0, 0].min() > 1e3 * np.median(unfloored.score_grid(normal)[:, 1:, :])
    shifted = normal.copy()
    shifted[:, 0, 0] += 0.3 * np.random.default_rng(2).normal(size=(20, 16))  # an object-sized change on the background
    flagged = floored.score_grid(shifted)[:, 0, 0]
    assert np.median(flagged) > 10 * np.median(elsewhere) and flagged.min() > 100 * background.max()


def test_low_rank_float16_storage_stays_close_to_the_exact_density():
    features = np.random.default_rng(0).normal(size=(40, 2, 2, 32)) * np.linspace(2, 0.1, 32) + 1.0
    test = np.random.default_rng(1).normal(size=(30, 2, 2, 32)) * np.linspace(2, 0.1, 32) + 1.0
    exact = LocationDensity(per_location=True, max_rank=None, storage_dtype="float32").fit(features).score_grid(test)
    stored = LocationDensity(per_location=True, max_rank=8, storage_dtype="float16").fit(features)
    assert stored.bases_.shape == (4, 32, 8) and stored.bases_.dtype == np.float16
    approx = stored.score_grid(test)
    assert np.corrcoef(exact.ravel(), approx.ravel())[0, 1] > 0.95
    half = LocationDensity(per_location=True, max_rank=None, storage_dtype="float16").fit(features).score_grid(test)
    np.testing.assert_allclose(half, exact, rtol=2e-2)


def test_per_location_flags_a_pattern_that_is_normal_elsewhere():
    features = _grid_features(80, 0)
    test = _grid_features(10, 2)
    test[:, 1, 1] = test[:, 0, 0]  # location (0, 0)'s pattern shown at (1, 1)
    per_location = LocationDensity(per_location=True, l2_normalize=False).fit(features).score_grid(test)
    shared = LocationDensity(per_location=False, l2_normalize=False).fit(features).score_grid(test)
    per_location_ratio = np.median(per_location[:, 1, 1]) / np.median(per_location[:, 0, 1])
    shared_ratio = np.median(shared[:, 1, 1]) / np.median(shared[:, 0, 1])
    assert per_location_ratio > 10 and per_location_ratio > 5 * shared_ratio
    with pytest.raises(ValueError, match="grid"):
        LocationDensity(per_location=True).fit(features).score_grid(np.zeros((1, 3, 3, 6)))


def test_gradcam_is_a_nonnegative_map_at_image_size():
    torch.manual_seed(0)
    model = CutPasteNet(num_classes=3, head_dims=(8,)).eval()
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    with torch.inference_mode():
        pooled = model.embed(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).numpy()
    density = GaussianDensity().fit(np.concatenate([pooled, pooled + 0.01]))
    maps = gradcam(model, density, images, batch_size=2, device="cpu")
    assert maps.shape == (3, 64, 64) and np.isfinite(maps).all() and maps.min() >= 0


def test_streaming_fit_and_score_match_the_all_in_memory_path():
    from cutpaste.core.localize import fit_patch_density, score_patch_grid

    torch.manual_seed(0)
    model = CutPasteNet(num_classes=3, head_dims=(8,)).eval()
    images = np.random.default_rng(0).integers(0, 256, (5, 24, 24, 3), dtype=np.uint8)
    args = {"batch_size": 64, "device": "cpu", "precision": "fp32"}
    features = dense_features(model, images, 16, 4, **args)
    whole = LocationDensity(per_location=False).fit(features)
    streamed = fit_patch_density(model, images, LocationDensity(per_location=False), 16, 4, images_per_chunk=2, **args)
    np.testing.assert_allclose(streamed.shared_.mean_, whole.shared_.mean_, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(score_patch_grid(model, images, whole, 16, 4, images_per_chunk=2, **args), whole.score_grid(features), rtol=1e-5)
    subsampled = fit_patch_density(model, images, LocationDensity(per_location=False, max_fit_vectors=20), 16, 4, images_per_chunk=2, **args)
    assert subsampled.grid_ == 3 and np.isfinite(subsampled.shared_.precision_).all()


def _tiny_localizer(per_location: bool, images: np.ndarray, **density_args):
    from cutpaste.core.localize import Localizer, fit_patch_density

    torch.manual_seed(0)
    model = CutPasteNet(num_classes=3, head_dims=(8,)).eval()
    args = {"batch_size": 256, "device": "cpu", "precision": "fp32"}
    density = fit_patch_density(model, images, LocationDensity(per_location=per_location, **density_args), 16, 4, **args)
    return Localizer(model.state_dict(), {"head_dims": [8], "backbone": "resnet18"}, density, images.shape[1], 16, 4, 4.0, args)


def test_normalization_statistics_match_numpy_and_floor_the_scale():
    from cutpaste.core.localize import normalization_statistics

    grids = np.random.default_rng(0).gamma(2.0, size=(12, 3, 3))
    grids[:, 0, 0] = 5.0  # a location whose calibration scores do not vary
    center, scale = normalization_statistics(grids, "mean_std")
    np.testing.assert_allclose(center, grids.mean(0))
    np.testing.assert_allclose(scale.ravel()[1:], grids.std(0, ddof=1).ravel()[1:])
    assert scale[0, 0] == pytest.approx(0.1 * np.median(grids.std(0, ddof=1)))
    center, scale = normalization_statistics(grids, "median_mad")
    np.testing.assert_allclose(center, np.median(grids, 0))
    with pytest.raises(ValueError, match="statistic"):
        normalization_statistics(grids, "zscore")
    with pytest.raises(ValueError, match="K >= 2"):
        normalization_statistics(grids[:1])


def test_log_ratio_normalisation_reads_log2_of_the_score_over_the_locations_normal_score():
    from cutpaste.core.localize import normalization_statistics, normalize_grids

    rng = np.random.default_rng(0)
    typical = np.array([[1.0, 10.0], [100.0, 1e4]])  # locations whose normal scores differ by four decades
    calibration = typical * rng.lognormal(0.0, 0.3, size=(8, 2, 2))
    center, scale = normalization_statistics(calibration, "log_ratio")
    np.testing.assert_allclose(center, np.log2(calibration).mean(0))
    np.testing.assert_array_equal(scale, np.ones((2, 2)))
    geometric_mean = 2.0 ** center
    normalized = normalize_grids(np.stack([geometric_mean, 2 * geometric_mean, 0 * geometric_mean]), center, scale, "log_ratio")
    np.testing.assert_allclose(normalized[0], 0.0, atol=1e-12)  # as normal as the calibration images there
    np.testing.assert_allclose(normalized[1], 1.0)  # twice the normal score, at every location alike
    assert np.isfinite(normalized[2]).all()  # a zero score (floored) stays finite
    with pytest.raises(ValueError, match="statistic"):
        normalize_grids(calibration, center, scale, "zscore")


@pytest.mark.parametrize(("per_location", "statistic"), [(True, "log_ratio"), (False, "log_ratio"), (True, "mean_std")])
def test_localizer_round_trip_keeps_maps_and_normalisation(tmp_path, per_location, statistic):
    from cutpaste.core.aligned import aligned_object_dataset
    from cutpaste.core.localize import Localizer

    data = aligned_object_dataset(size=24, n_train=8, n_test_good=1, n_test_defect=2)
    localizer = _tiny_localizer(per_location, data["train_images"][:5])
    with pytest.raises(ValueError, match="no calibration statistics"):
        localizer.score_maps(data["test_images"], normalized=True)
    localizer.calibrate(data["train_images"][5:], statistic)
    maps = localizer.score_maps(data["test_images"])
    localizer.save(tmp_path / "loc")
    loaded = Localizer.load(tmp_path / "loc")
    assert loaded.normalized and loaded.norm_statistic == statistic
    np.testing.assert_allclose(loaded.score_maps(data["test_images"]), maps, rtol=1e-5, atol=1e-5)
    assert not (tmp_path / "loc" / "patch_density.pkl").exists()
    with pytest.raises(ValueError, match="localizer works at 24"):
        loaded.score_maps(np.zeros((1, 32, 32, 3), dtype=np.uint8))
    stored = dict(np.load(tmp_path / "loc" / "density.npz"))
    np.savez(tmp_path / "loc" / "density.npz", **{key: value for key, value in stored.items() if key not in ("means", "shared_mean")})
    with pytest.raises(ValueError, match="density.npz: missing arrays"):
        Localizer.load(tmp_path / "loc")


def test_synthetic_aligned_object_is_localized_by_a_per_location_density():
    """A fixed object on a constant background: even an untrained encoder's per-location GDE, with
    maps normalised from calibration images, points at the defects and ranks defective images first."""
    from cutpaste.core.aligned import aligned_object_dataset
    from cutpaste.core.metrics import image_auroc, pixel_auroc

    data = aligned_object_dataset(size=32, n_train=24, n_test_good=6, n_test_defect=10)
    assert data["test_masks"][:6].sum() == 0 and all(mask.sum() > 0 for mask in data["test_masks"][6:])
    localizer = _tiny_localizer(True, data["train_images"][:16])
    localizer.calibrate(data["train_images"][16:])
    maps = localizer.score_maps(data["test_images"])
    assert pixel_auroc(data["test_masks"], maps) > 0.8
    assert image_auroc(data["test_labels"], maps.reshape(len(maps), -1).max(1)) > 0.9


def _stem_localizer(images: np.ndarray, per_location: bool, registration=None):
    localizer = _tiny_localizer(True, images)
    if registration is not None:
        localizer.registration = registration.fit(images)
    localizer.fit_stem(images, max_vectors=10**6, seed=0, per_location=per_location)
    return localizer


def test_per_location_stem_maps_read_each_pixel_against_its_calibration_level(tmp_path):
    """A fixed object: its rim, ring and highlight are rare among all locations (the shared stem map
    lights them on every good image) but normal where they always are; per location they read ~0,
    and a defect still stands out. The level comes from the calibration images alone."""
    from cutpaste.core.aligned import aligned_object_dataset
    from cutpaste.core.localize import Localizer
    from cutpaste.core.metrics import pixel_auroc

    data = aligned_object_dataset(size=32, n_train=24, n_test_good=6, n_test_defect=10, jitter_px=0)
    fit, calibration = data["train_images"][:16], data["train_images"][16:]
    shared, local = _stem_localizer(fit, False), _stem_localizer(fit, True)
    with pytest.raises(ValueError, match="calibrate the localizer"):
        local.stem_maps(data["test_images"])
    shared.calibrate(calibration)
    local.calibrate(calibration)
    raw = shared.stem_maps(calibration)
    np.testing.assert_allclose(local.stem_center, raw.mean(0), rtol=1e-5, atol=1e-5)
    normal = local.stem_maps(data["test_images"][:6])
    assert np.abs(normal).max() < np.ptp(shared.stem_maps(data["test_images"][:6]).mean(0))  # flat where the object always is
    assert pixel_auroc(data["test_masks"], local.stem_maps(data["test_images"])) > 0.9
    local.save(tmp_path / "loc")
    loaded = Localizer.load(tmp_path / "loc")
    assert loaded.stem_per_location and not shared.stem_per_location
    np.testing.assert_array_equal(loaded.stem_center, local.stem_center)
    np.testing.assert_allclose(loaded.score_maps(data["test_images"]), local.score_maps(data["test_images"]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="K >= 2"):
        local.set_stem_center(raw[:1])
    # with a tolerance, a pixel's level is the highest level within that many pixels
    from scipy import ndimage

    tolerant = _stem_localizer(fit, True)
    tolerant.fit_stem(fit, max_vectors=10**6, seed=0, per_location=True, tolerance=2)
    tolerant.calibrate(calibration)
    np.testing.assert_allclose(tolerant.stem_center, ndimage.maximum_filter(local.stem_center, size=5, mode="nearest"), rtol=1e-5, atol=1e-5)
    assert (tolerant.stem_maps(data["test_images"]) <= local.stem_maps(data["test_images"]) + 1e-5).all()
    tolerant.save(tmp_path / "tolerant")
    assert Localizer.load(tmp_path / "tolerant").stem_tolerance == 2
    with pytest.raises(ValueError, match="tolerance"):
        tolerant.fit_stem(fit, per_location=True, tolerance=-1)


def test_held_out_fusion_references_read_each_calibration_image_as_a_new_one(tmp_path):
    """In sample, a calibration image reads against a level it helped set, so its readings, and the fusion
    references taken from them, come out low. Held out, each is read against the other K - 1 images' levels.
    With log_ratio means and no tolerance that is exactly K / (K - 1) times the in-sample reading: the
    references scale so, and the levels themselves are unchanged."""
    from cutpaste.core.aligned import aligned_object_dataset
    from cutpaste.core.localize import Localizer

    data = aligned_object_dataset(size=32, n_train=24, n_test_good=6, n_test_defect=10, jitter_px=0)
    fit, calibration = data["train_images"][:16], data["train_images"][16:]
    count = len(calibration)
    in_sample, held_out = _stem_localizer(fit, True), _stem_localizer(fit, True)
    held_out.held_out_references = True
    in_sample.calibrate(calibration)
    held_out.calibrate(calibration)
    np.testing.assert_allclose(held_out.norm_center, in_sample.norm_center)
    np.testing.assert_allclose(held_out.stem_center, in_sample.stem_center)
    for key in ("patch", "patch_sd", "stem", "stem_sd"):
        np.testing.assert_allclose(held_out.fusion_references[key], count / (count - 1) * in_sample.fusion_references[key], rtol=1e-4)
    assert held_out.fusion_references["patch"] > in_sample.fusion_references["patch"] > 0
    np.testing.assert_allclose(held_out.fusion_references["patch_mean"], 0.0, atol=1e-4)  # log_ratio readings average 0 either way
    held_out.save(tmp_path / "loc")
    assert Localizer.load(tmp_path / "loc").held_out_references
    few = _stem_localizer(fit, True)
    few.held_out_references = True
    few.calibrate(calibration[:2])  # too few to hold one out: read in sample, with a warning
    assert few.fusion_references["patch"] > 0


def test_image_max_fusion_references_weigh_a_smooth_map_and_a_fine_grained_one_alike(tmp_path):
    """Two normal maps with the same pixel distribution: a smooth one (few independent pixels, like the
    upsampled patch map) and a fine-grained one (like the stem map). Above their pixels' 99th percentiles
    the fine-grained map's noise decides nearly every image's maximum, and a smooth defect under it goes
    unseen; above the median of their calibration images' maxima ("image_max") a normal image's hottest
    pixel reads about 0 in either, and the maximum finds the defect."""
    from scipy import ndimage

    from cutpaste.core.aligned import aligned_object_dataset
    from cutpaste.core.localize import Localizer
    from cutpaste.core.metrics import image_auroc

    rng = np.random.default_rng(0)

    def normal_maps(count):
        smooth = ndimage.gaussian_filter(rng.normal(size=(count, 64, 64)), sigma=(0, 6, 6))
        smooth = smooth / smooth.std()
        return smooth, rng.normal(size=(count, 64, 64))

    data = aligned_object_dataset(size=32, n_train=20, n_test_good=2, n_test_defect=2, jitter_px=0)
    by_pixel = _stem_localizer(data["train_images"][:16], False)
    by_pixel.calibrate(data["train_images"][16:])
    by_image = Localizer(**{**vars(by_pixel), "fusion_reference": "image_max"})
    calibration = normal_maps(40)
    for localizer in (by_pixel, by_image):
        localizer.set_fusion_references(*calibration)
    references = by_image.fusion_references
    for name, maps in zip(("patch", "stem"), calibration, strict=True):
        assert references[f"{name}_image_max"] == pytest.approx(float(np.median(maps.reshape(40, -1).max(1))))
    assert abs(references["patch"] - references["stem"]) < 0.2  # the same pixel distribution
    assert references["stem_image_max"] > references["patch_image_max"] + 0.5  # but more independent pixels
    # normal test images: with pixel references the fine-grained map decides nearly every maximum
    patch, stem = normal_maps(60)
    patch_wins = {name: float(((patch - loc.fusion_references[key]).reshape(60, -1).max(1)
                               > (stem - loc.fusion_references[key.replace("patch", "stem")]).reshape(60, -1).max(1)).mean())
                  for name, loc, key in (("pixel", by_pixel, "patch"), ("image_max", by_image, "patch_image_max"))}
    assert patch_wins["pixel"] < 0.25 and 0.25 < patch_wins["image_max"] < 0.75
    # a smooth defect in the patch map, as high as the smooth map's typical maximum plus its spread
    defect_patch, defect_stem = normal_maps(60)
    blob = np.exp(-((np.arange(64)[:, None] - 32) ** 2 + (np.arange(64)[None] - 32) ** 2) / (2 * 6.0**2))
    defect_patch = defect_patch + 1.5 * references["patch_image_max"] * blob
    labels = np.r_[np.zeros(60), np.ones(60)]
    auroc = {name: image_auroc(labels, loc.fuse(np.concatenate([patch, defect_patch]), np.concatenate([stem, defect_stem])).reshape(120, -1).max(1))
             for name, loc in (("pixel", by_pixel), ("image_max", by_image))}
    assert auroc["image_max"] > auroc["pixel"] + 0.05
    # stored and reloaded with the localizer; a localizer saved before the setting reads "pixel"
    by_image.save(tmp_path / "loc")
    loaded = Localizer.load(tmp_path / "loc")
    assert loaded.fusion_reference == "image_max"
    np.testing.assert_array_equal(loaded.fuse(patch, stem), by_image.fuse(patch, stem))
    meta = json.loads((tmp_path / "loc" / "localizer.json").read_text())
    del meta["fusion_reference"]
    (tmp_path / "loc" / "localizer.json").write_text(json.dumps(meta))
    assert Localizer.load(tmp_path / "loc").fusion_reference == "pixel"
    # a localizer without the image-level references (calibrated before them) says what it needs
    by_image.fusion_references = {key: value for key, value in references.items() if not key.endswith("_image_max")}
    with pytest.raises(ValueError, match="patch_image_max"):
        by_image.fuse(patch, stem)
    with pytest.raises(ValueError, match="fusion reference must be one of"):
        Localizer(**{**vars(by_pixel), "fusion_reference": "image_mean"})
    with pytest.raises(ValueError, match="\"max\" fusion"):
        Localizer(**{**vars(by_pixel), "fusion": "zsum", "fusion_reference": "image_max"})


def test_per_location_stem_maps_follow_a_registered_part_and_ignore_filled_in_pixels():
    """A part that turns: the stem level is set in the reference pose, each map is warped back onto its
    input image, and pixels filled in from outside the photo neither set a level nor read one."""
    from cutpaste.core.aligned import aligned_object_dataset
    from cutpaste.core.register import RigidRegistration, warp

    data = aligned_object_dataset(size=32, n_train=24, n_test_good=4, n_test_defect=0, jitter_px=0)
    rng = np.random.default_rng(0)
    turns = np.stack([[angle, 0.0, 0.0] for angle in rng.uniform(-25, 25, len(data["train_images"]))])
    turned = warp(data["train_images"], turns)
    local = _stem_localizer(turned[:16], True, RigidRegistration(max_rotation_deg=30, rotation_step_deg=2, work_size=32))
    local.calibrate(turned[16:])
    test_turns = np.array([[20.0, 0, 0], [-20.0, 0, 0], [10.0, 0, 0], [0.0, 0, 0]])
    maps = local.stem_maps(warp(data["test_images"], test_turns))
    _, transforms = local.register(turned[16:])
    assert np.isfinite(local.stem_center).all()
    inner = np.zeros((32, 32), dtype=bool)
    inner[6:26, 6:26] = True
    assert np.abs(maps[:, inner]).max() < 1.5  # good parts, whatever their turn, read near their normal level
    fixed = _stem_localizer(turned[:16], True)  # without registration the turned rim lands off its level
    fixed.calibrate(turned[16:])
    assert np.abs(fixed.stem_maps(warp(data["test_images"], test_turns))[:, inner]).max() > np.abs(maps[:, inner]).max()
    assert transforms is not None


def test_map_component_chosen_on_synthetic_defects_in_held_out_calibration_images(tmp_path):
    """The components are the fusion's two terms; a probe made from calibration image k is read against the
    levels the other images set (the clean images themselves, read as probes in another order, read exactly as
    their held-out readings); the choice keeps the fused maps unless a single map scores ``margin`` higher,
    and survives a round trip."""
    from cutpaste.core.aligned import aligned_object_dataset
    from cutpaste.core.localize import Localizer

    data = aligned_object_dataset(size=32, n_train=24, n_test_good=6, n_test_defect=10, jitter_px=0)
    fit, calibration = data["train_images"][:16], data["train_images"][16:]
    localizer = _stem_localizer(fit, True)
    localizer.calibrate(calibration)
    patch, stem = localizer.maps_from_grids(localizer.score_grids(data["test_images"])), localizer.stem_maps(data["test_images"])
    terms = {"patch": patch - localizer.fusion_references["patch"], "stem": stem - localizer.fusion_references["stem"]}
    for name, term in terms.items():
        np.testing.assert_allclose(localizer.fuse(patch, stem, name), term, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(localizer.fuse(patch, stem), np.maximum(*terms.values()), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="map component must be one of fused, patch, stem"):
        localizer.fuse(patch, stem, "both")

    grids, transforms, stems = localizer._level_inputs(calibration)
    order = np.arange(len(calibration))[::-1]
    clean_patch, clean_stem, probe_patch, probe_stem = localizer._held_out_readings(
        grids, transforms, stems, "log_ratio", probes=(order, grids[order], None, tuple(None if maps is None else maps[order] for maps in stems)))
    np.testing.assert_allclose(probe_patch, clean_patch[order], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(probe_stem, clean_stem[order], rtol=1e-6, atol=1e-6)
    in_sample = localizer._readings(grids, transforms, stems)
    # held out, not in sample: an image's log ratio against the geometric mean of the other K - 1 is K / (K - 1) times
    # its log ratio against all K (both average 0 over the images, so compare spreads, not means)
    count = len(calibration)
    np.testing.assert_allclose(clean_patch, in_sample[0] * count / (count - 1), rtol=1e-4, atol=1e-4)
    assert np.abs(clean_patch).mean() > np.abs(in_sample[0]).mean() and not np.allclose(clean_stem, in_sample[1])

    scores = localizer.choose_component(calibration, copies=2, seed=0, margin=-1.0)  # the best, whatever the fused maps score
    best = max(("fused", "patch", "stem"), key=lambda name: scores[name]["score"])
    assert localizer.component == scores["chosen"] == best
    for name in ("fused", "patch", "stem"):
        assert 0.5 < scores[name]["pixel_auroc"] <= 1.0 and scores[name]["score"] == (scores[name]["pixel_auroc"] + scores[name]["image_auroc"]) / 2
    assert localizer.choose_component(calibration, copies=2, seed=0, margin=1.0)["chosen"] == "fused"  # nothing beats it by 1
    assert localizer.choose_component(calibration, copies=2, seed=0, margin=-1.0) == scores  # seeded: the same choice again
    localizer.save(tmp_path / "loc")
    loaded = Localizer.load(tmp_path / "loc")
    assert loaded.component == best and loaded.component_scores == scores
    np.testing.assert_allclose(loaded.score_maps(data["test_images"]), localizer.fuse(patch, stem, best), rtol=1e-5, atol=1e-5)
    loaded.calibrate(calibration)  # new levels: the choice stays, the scores read against the old levels go
    assert loaded.component == best and loaded.component_scores is None
    unfused = _tiny_localizer(True, fit)
    unfused.calibrate(calibration)
    with pytest.raises(ValueError, match="fused, calibrated localizer"):
        unfused.choose_component(calibration)
    with pytest.raises(ValueError, match="at least 3 calibration images"):
        localizer.choose_component(calibration[:2])


def test_centring_on_the_image_median_removes_a_whole_image_offset_and_keeps_the_order_within_each_image():
    from cutpaste.core.localize import center_on_image

    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 8, 8)).astype(np.float32)
    shifted = maps + np.array([-2.0, 0.0, 5.0], dtype=np.float32)[:, None, None]  # a softer, a typical, a sharper photo
    centred = center_on_image(shifted)
    np.testing.assert_allclose(centred, center_on_image(maps), atol=1e-5)
    np.testing.assert_allclose(np.median(centred.reshape(3, -1), 1), 0.0, atol=1e-6)
    for image, reading in zip(shifted, centred, strict=True):
        np.testing.assert_array_equal(np.argsort(image, axis=None, kind="stable"), np.argsort(reading, axis=None, kind="stable"))
    with pytest.raises(ValueError, match=r"need \(N, H, W\) maps to centre"):
        center_on_image(maps[0])


def test_a_centred_localizer_returns_its_maps_minus_each_image_median_and_keeps_the_setting(tmp_path):
    """map_center="image_median": the final (fused) maps minus each image's median, raw maps untouched; the
    setting survives a round trip, and a localizer saved before it existed loads uncentred."""
    import json

    from cutpaste.core.aligned import aligned_object_dataset
    from cutpaste.core.localize import Localizer, center_on_image

    data = aligned_object_dataset(size=32, n_train=24, n_test_good=4, n_test_defect=6, jitter_px=0)
    fit, calibration = data["train_images"][:16], data["train_images"][16:]
    localizer = _stem_localizer(fit, True)
    localizer.calibrate(calibration)
    plain = localizer.score_maps(data["test_images"])
    raw = localizer.score_maps(data["test_images"], normalized=False)
    localizer.map_center = "image_median"
    np.testing.assert_allclose(localizer.score_maps(data["test_images"]), center_on_image(plain), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(localizer.score_maps(data["test_images"], normalized=False), raw, rtol=1e-6)
    localizer.save(tmp_path / "loc")
    loaded = Localizer.load(tmp_path / "loc")
    assert loaded.map_center == "image_median"
    np.testing.assert_allclose(loaded.score_maps(data["test_images"]), center_on_image(plain), rtol=1e-5, atol=1e-5)
    meta = json.loads((tmp_path / "loc" / "localizer.json").read_text())
    del meta["map_center"]
    (tmp_path / "loc" / "localizer.json").write_text(json.dumps(meta))
    assert Localizer.load(tmp_path / "loc").map_center == "none"
    with pytest.raises(ValueError, match="map centre must be one of none, image_median, image_median_capped, got 'mean'"):
        Localizer(**{**vars(localizer), "map_center": "mean"})


def test_a_capped_centre_removes_offsets_up_to_the_cap_and_keeps_the_excess_above_it():
    from cutpaste.core.localize import center_on_image

    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 8, 8)).astype(np.float32)
    maps -= np.median(maps.reshape(3, -1), 1)[:, None, None]  # each median 0
    shifted = maps + np.array([-2.0, 0.5, 5.0], dtype=np.float32)[:, None, None]  # a softer, a typical, an abnormally hot photo
    capped = center_on_image(shifted, cap=1.0)
    np.testing.assert_allclose(capped[:2], maps[:2], atol=1e-5)  # offsets up to the cap are removed, one below any normal too
    np.testing.assert_allclose(capped[2], maps[2] + 4.0, atol=1e-5)  # 5 above, cap 1: the excess of 4 stays
    np.testing.assert_allclose(center_on_image(shifted, cap=None), center_on_image(shifted), atol=0)
    with pytest.raises(ValueError, match="cap must be a finite number"):
        center_on_image(shifted, cap=float("nan"))


def test_a_capped_localizer_takes_its_cap_from_held_out_calibration_maps_and_keeps_it_through_a_round_trip(tmp_path):
    """map_center="image_median_capped": calibrate reads each calibration image against the other images' levels
    and keeps every map's medians; the cap is the highest median of the maps the localizer returns (each component
    its own); a test map is centred on the lower of its median and the cap. The medians survive a round trip, new
    levels drop them (and the maps say what to do), and the same medians come from a stored localizer."""
    import json

    from cutpaste.core.aligned import aligned_object_dataset
    from cutpaste.core.localize import COMPONENTS, Localizer, center_on_image

    data = aligned_object_dataset(size=32, n_train=24, n_test_good=4, n_test_defect=6, jitter_px=0)
    fit, calibration = data["train_images"][:16], data["train_images"][16:]
    localizer = _stem_localizer(fit, True)
    localizer.calibrate(calibration)
    plain = localizer.score_maps(data["test_images"])
    capped = _stem_localizer(fit, True)
    capped.map_center = "image_median_capped"
    capped.calibrate(calibration)
    np.testing.assert_allclose(capped.norm_center, localizer.norm_center)  # the levels are those of all K images
    assert set(capped.calibration_medians) == set(COMPONENTS) and all(len(values) == len(calibration) for values in capped.calibration_medians.values())
    # held out: the medians of each calibration image's maps read against the levels the other images set
    held_patch, held_stem = localizer._held_out_readings(*localizer._level_inputs(calibration), "log_ratio")
    held = localizer.fuse(held_patch, held_stem)
    np.testing.assert_allclose(capped.calibration_medians["fused"], np.median(held.reshape(len(held), -1), 1), rtol=1e-5, atol=1e-6)
    cap = capped.center_cap()
    assert cap == max(capped.calibration_medians["fused"]) and capped.center_cap("stem") == max(capped.calibration_medians["stem"])
    np.testing.assert_allclose(capped.score_maps(data["test_images"]), center_on_image(plain, cap=cap), rtol=1e-5, atol=1e-5)
    capped.component = "stem"  # another component, its own cap
    stem_plain = localizer.fuse(localizer.maps_from_grids(localizer.score_grids(data["test_images"])), localizer.stem_maps(data["test_images"]), "stem")
    np.testing.assert_allclose(capped.score_maps(data["test_images"]), center_on_image(stem_plain, cap=capped.center_cap("stem")), rtol=1e-5, atol=1e-5)
    capped.component = "fused"
    capped.save(tmp_path / "loc")
    loaded = Localizer.load(tmp_path / "loc")
    assert loaded.map_center == "image_median_capped" and loaded.calibration_medians == capped.calibration_medians
    np.testing.assert_allclose(loaded.score_maps(data["test_images"]), center_on_image(plain, cap=cap), rtol=1e-5, atol=1e-5)
    assert "calibration_medians" in json.loads((tmp_path / "loc" / "localizer.json").read_text())
    # a stored localizer at another centre reads the same medians without calibrating again
    assert localizer.calibration_medians is None
    np.testing.assert_allclose(localizer.read_calibration_medians(calibration)["fused"], capped.calibration_medians["fused"], rtol=1e-5, atol=1e-6)
    loaded.fit_stem(fit, max_vectors=10**6, seed=0, per_location=True)  # new levels: the medians no longer hold
    assert loaded.calibration_medians is None
    with pytest.raises(ValueError, match="image_median_capped needs the calibration images' held-out map medians"):
        loaded.center_cap()
    few = _stem_localizer(fit, True)
    few.map_center = "image_median_capped"
    with pytest.raises(ValueError, match="needs at least 3 calibration images, got 2"):
        few.calibrate(calibration[:2])
    unfused = _tiny_localizer(True, fit)  # no stem density: the patch maps' medians
    unfused.map_center = "image_median_capped"
    unfused.calibrate(calibration)
    assert set(unfused.calibration_medians) == {"patch"}
    unfused_plain = unfused.maps_from_grids(unfused.score_grids(data["test_images"]))
    np.testing.assert_allclose(unfused.score_maps(data["test_images"]), center_on_image(unfused_plain, cap=unfused.center_cap()), rtol=1e-5, atol=1e-5)


def test_the_map_centre_is_chosen_on_synthetic_defects_with_the_components_readings(tmp_path):
    """choose_maps: one pass of held-out readings serves both choices, so the uncentred candidate of the centre
    choice is the chosen component's own score; image_median is taken only at or above none + margin; the choice and
    its scores survive a round trip, and new levels drop the scores but keep the choice."""
    from cutpaste.core.aligned import aligned_object_dataset
    from cutpaste.core.localize import Localizer, center_on_image

    data = aligned_object_dataset(size=32, n_train=24, n_test_good=4, n_test_defect=6, jitter_px=0)
    fit, calibration = data["train_images"][:16], data["train_images"][16:]
    localizer = _stem_localizer(fit, True)
    localizer.calibrate(calibration)
    chosen = localizer.choose_maps(calibration, component=True, center=True, copies=2, seed=0, margin=-1.0)
    component, center = chosen["component"], chosen["center"]
    assert center["none"] == component[localizer.component]  # the same readings: the chosen component, uncentred
    best = max(("none", "image_median"), key=lambda name: center[name]["score"])
    assert localizer.map_center == center["chosen"] == best and localizer.center_scores == center
    for name in ("none", "image_median"):
        assert 0.5 < center[name]["pixel_auroc"] <= 1.0 and center[name]["score"] == (center[name]["pixel_auroc"] + center[name]["image_auroc"]) / 2
    assert localizer.choose_map_center(calibration, copies=2, seed=0, margin=1.0)["chosen"] == "none" == localizer.map_center
    again = localizer.choose_map_center(calibration, copies=2, seed=0, margin=-1.0)
    assert {name: again[name] for name in ("none", "image_median")} == {name: center[name] for name in ("none", "image_median")}
    localizer.map_center = "image_median"
    localizer.center_scores = again
    localizer.save(tmp_path / "loc")
    loaded = Localizer.load(tmp_path / "loc")
    assert loaded.map_center == "image_median" and loaded.center_scores == again
    plain = localizer.fuse(localizer.maps_from_grids(localizer.score_grids(data["test_images"])), localizer.stem_maps(data["test_images"]))
    np.testing.assert_allclose(loaded.score_maps(data["test_images"]), center_on_image(plain), rtol=1e-5, atol=1e-5)
    loaded.calibrate(calibration)
    assert loaded.map_center == "image_median" and loaded.center_scores is None
    unfused = _tiny_localizer(True, fit)
    unfused.calibrate(calibration)
    with pytest.raises(ValueError, match="choosing the map centre needs a fused, calibrated localizer"):
        unfused.choose_map_center(calibration)
    with pytest.raises(ValueError, match="nothing to choose"):
        localizer.choose_maps(calibration, component=False, center=False)

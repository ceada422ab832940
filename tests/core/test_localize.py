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


def _grid_features(count, seed):
    """Location (0, 0) varies along axis 0, every other location along axis 1."""
    rng = np.random.default_rng(seed)
    features = 0.05 * rng.normal(size=(count, 2, 2, 6))
    features[:, 0, 0, 0] += rng.normal(size=count) * 3
    features[:, 1:, :, 1] += rng.normal(size=(count, 1, 2)) * 3
    features[:, 0, 1, 1] += rng.normal(size=count) * 3
    return features + 10.0


def test_per_location_density_matches_a_gde_per_location():
    features = _grid_features(60, 0)
    density = LocationDensity(per_location=True, l2_normalize=False, location_chunk=3).fit(features)
    test = _grid_features(5, 1)
    expected = GaussianDensity(l2_normalize=False).fit(features[:, 1, 0]).score_samples(test[:, 1, 0])
    np.testing.assert_allclose(density.score_grid(test)[:, 1, 0], expected, rtol=1e-4)


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

"""Rigid registration onto a reference pose: warps, estimates, the reference choice, the localizer."""

from __future__ import annotations

import numpy as np
import pytest

from cutpaste.core.register import RigidRegistration, compose, warp
from cutpaste.pipelines.localization.nodes import _registration


def _plate(size: int = 64) -> np.ndarray:
    """An asymmetric part on a constant background: a dark plate with a notch and a hole, off centre."""
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.full((size, size, 3), 200, dtype=np.uint8)
    plate = (abs(yy - 0.55 * size) < 0.2 * size) & (abs(xx - 0.5 * size) < 0.3 * size)
    plate &= ~((yy < 0.42 * size) & (xx > 0.7 * size))  # a notch in one corner
    image[plate] = (40, 60, 160)
    image[np.hypot(yy - 0.55 * size, xx - 0.4 * size) < 0.06 * size] = 200  # a hole
    return image


def _poses(count: int, seed: int = 0, max_angle: float = 40.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(-max_angle, max_angle, count), rng.uniform(-4, 4, count), rng.uniform(-4, 4, count)], 1)


def test_warp_then_inverse_returns_the_image_inside_the_frame():
    image = _plate()[None]
    transform = np.array([[25.0, 3.0, -2.5]])
    back = warp(warp(image, transform), transform, inverse=True)
    inner = slice(16, 48)
    difference = np.abs(back[0, inner, inner].astype(float) - image[0, inner, inner])
    assert difference.mean() < 4.0  # two bilinear resamplings blur edges a little
    assert warp(image, np.zeros((1, 3))).tolist() == image.tolist()  # identity is exact
    with pytest.raises(ValueError, match="1 images but 2 transforms"):
        warp(image, np.zeros((2, 3)))


def test_estimate_recovers_a_known_pose_and_align_undoes_it():
    base = _plate()[None]
    registration = RigidRegistration(max_rotation_deg=60, work_size=64).fit(base)
    np.testing.assert_allclose(registration.estimate(base), np.zeros((1, 3)), atol=0.6)
    truth = np.array([[20.0, 3.0, -4.0], [-35.0, -2.0, 2.0]])
    moved = warp(np.repeat(base, 2, 0), truth)
    aligned, transforms = registration.align(moved)
    # the estimate composes with the truth to the identity: angle -20 / +35
    np.testing.assert_allclose(transforms[:, 0], -truth[:, 0], atol=1.0)
    inner = slice(12, 52)
    error_before = np.abs(moved[:, inner, inner].astype(float) - base[:, inner, inner]).mean()
    error_after = np.abs(aligned[:, inner, inner].astype(float) - base[:, inner, inner]).mean()
    assert error_after < 0.25 * error_before


def test_compose_equals_two_warps_in_a_row():
    image = _plate()[None]
    first, second = np.array([[25.0, 3.0, -2.5]]), np.array([[-10.0, 1.5, 2.0]])
    twice = warp(warp(image, first), second)
    inner = slice(16, 48)

    def difference(transform):
        return np.abs(twice[0, inner, inner].astype(float) - warp(image, transform)[0, inner, inner]).mean()

    assert difference(compose(first, second)) < 1.5  # two bilinear resamplings blur edges a little
    assert difference(first + second) > 3.0 and difference(compose(second, first)) > 3.0  # the order and the turn matter
    zoomed = np.array([[-10.0, 1.5, 2.0, np.log(1.1)]])  # and with a zoom (fourth column: ln zoom)
    twice = warp(warp(image, first), zoomed)
    assert compose(first, zoomed).shape == (1, 4) and difference(compose(first, zoomed)) < 1.5
    assert difference(compose(first, second)) > 3.0
    np.testing.assert_array_equal(warp(image, np.zeros((1, 4))), image)
    with pytest.raises(ValueError, match=r"\(N, 3\) or \(N, 4\)"):
        warp(image, np.zeros((1, 2)))
    np.testing.assert_allclose(compose(first, np.zeros((1, 3))), first)
    np.testing.assert_allclose(compose(np.zeros((1, 3)), second), second)


def test_refinement_at_the_full_size_recovers_poses_the_coarse_grid_misses():
    """At a coarse work size (32 px for a 128 px image) the estimate is a degree or two and half a pixel
    off; refining at the full size brings it within a quarter degree and a quarter pixel."""
    base = _plate(128)[None]
    truth = np.array([[-27.7, -1.3, 4.1], [41.1, 3.7, 1.2], [8.6, -2.2, -3.1]])
    moved = warp(np.repeat(base, 3, 0), truth)
    errors = {}
    for refine in (False, True):
        registration = RigidRegistration(max_rotation_deg=60, work_size=32, refine=refine).fit(base)
        assert (registration.fine_reference is not None) == refine
        errors[refine] = np.abs(compose(truth, registration.estimate(moved)))  # the identity when exact
    assert errors[False][:, 0].max() > 1.0
    assert errors[True][:, 0].max() < 0.5 and errors[True][:, 1:].max() < 0.5, errors[True]
    with pytest.raises(ValueError, match="no full-size reference"):
        RigidRegistration(refine=True, reference=np.zeros((64, 64)), image_size=128).estimate(moved)


def test_a_zoom_search_registers_parts_that_look_larger_or_smaller():
    """A part nearer the camera looks larger: with max_scale_change the estimate recovers the zoom (and so
    the edges land on the reference's), where a rigid registration leaves them a few pixels off."""
    base = _plate(128)[None]
    truth = np.array([[12.0, 2.0, -1.0, np.log(1.1)], [-20.0, -1.5, 2.5, np.log(0.91)]])
    moved = warp(np.repeat(base, 2, 0), truth)
    inner = slice(20, 108)
    errors = {}
    for change in (0.0, 0.15):
        registration = RigidRegistration(max_rotation_deg=30, max_scale_change=change).fit(base)
        transforms = registration.estimate(moved)
        assert transforms.shape == ((2, 4) if change else (2, 3))
        if change:
            assert np.abs(compose(truth, transforms)[:, 3]).max() < np.log(1.02)  # the zoom, within 2 %
        errors[change] = np.abs(warp(moved, transforms)[:, inner, inner].astype(float) - base[:, inner, inner]).mean()
    assert errors[0.15] < 0.5 * errors[0.0], errors
    with pytest.raises(ValueError, match="max_scale_change < 1"):
        RigidRegistration(max_scale_change=1.5)


def test_fit_picks_a_typical_pose_and_registration_reduces_the_spread_of_training_images():
    base = _plate()
    poses = _poses(10)
    images = warp(np.repeat(base[None], 10, 0), poses)
    registration = RigidRegistration(max_rotation_deg=90).fit(images)
    assert registration.reference.shape == (64, 64) and registration.image_size == 64
    aligned, transforms = registration.align(images)
    assert aligned.astype(float).std(0).mean() < 0.5 * images.astype(float).std(0).mean()
    # relative poses are recovered: estimate + truth is the same angle for every image
    composed = transforms[:, 0] + poses[:, 0]
    assert np.abs(composed - np.median(composed)).max() < 2.5  # degrees, on a 64 px part


def test_translation_only_and_bad_settings_and_inputs():
    images = warp(np.repeat(_plate()[None], 3, 0), np.array([[0, 0, 0], [0, 3, -2], [0, -2, 4]], dtype=float))
    registration = RigidRegistration(max_rotation_deg=0).fit(images)
    transforms = registration.estimate(images)
    assert np.all(transforms[:, 0] == 0)
    np.testing.assert_allclose(transforms[:, 1:] - transforms[:1, 1:], [[0, 0], [-3, 2], [2, -4]], atol=0.7)
    with pytest.raises(ValueError, match="call fit first"):
        RigidRegistration().estimate(images)
    with pytest.raises(ValueError, match="fitted on 64 px"):
        registration.estimate(np.zeros((1, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="rotation_step_deg > 0"):
        RigidRegistration(rotation_step_deg=0)
    with pytest.raises(ValueError, match="at least one training image"):
        RigidRegistration().fit(images[:0])


def test_registered_localizer_maps_overlay_the_input_and_survive_a_round_trip(tmp_path):
    """A part that rotates between images: the registered localizer's maps point at a defect where it
    is in the input image (not where it would be in the reference pose), and load() keeps all of it."""
    import torch

    from cutpaste.core.localize import Localizer, LocationDensity, fit_patch_density
    from cutpaste.core.models import CutPasteNet

    base = _plate()
    train = warp(np.repeat(base[None], 16, 0), _poses(16, seed=1))
    registration = RigidRegistration(max_rotation_deg=60, refine=True).fit(train[:12])
    torch.manual_seed(0)
    model = CutPasteNet(num_classes=3, head_dims=(8,)).eval()
    args = {"batch_size": 256, "device": "cpu", "precision": "fp32"}
    fit, _ = registration.align(train[:12])
    density = fit_patch_density(model, fit, LocationDensity(per_location=True, neighborhood=1), 16, 4, **args)
    localizer = Localizer(model.state_dict(), {"head_dims": [8], "backbone": "resnet18"}, density, 64, 16, 4, 4.0, args,
                          registration=registration)
    localizer.calibrate(train[12:])
    test = warp(base[None], np.array([[30.0, 2.0, 1.0]]))
    test[0, 40:48, 18:26] = (250, 30, 30)  # a red defect on the rotated plate
    maps = localizer.score_maps(test)
    assert maps.shape == (1, 64, 64)
    peak = np.unravel_index(maps[0].argmax(), maps[0].shape)
    assert 34 <= peak[0] <= 54 and 12 <= peak[1] <= 32, peak
    localizer.save(tmp_path / "loc")
    loaded = Localizer.load(tmp_path / "loc")
    assert loaded.registration is not None and loaded.registration.max_rotation_deg == 60 and loaded.registration.refine
    np.testing.assert_allclose(loaded.score_maps(test), maps, rtol=1e-5, atol=1e-5)
    stored = dict(np.load(tmp_path / "loc" / "density.npz"))
    np.savez(tmp_path / "loc" / "density.npz", **{key: value for key, value in stored.items() if key != "registration_reference"})
    with pytest.raises(ValueError, match="registration_reference is missing"):
        Localizer.load(tmp_path / "loc")
    np.savez(tmp_path / "loc" / "density.npz", **{key: value for key, value in stored.items() if key != "registration_fine_reference"})
    with pytest.raises(ValueError, match="registration_fine_reference is missing"):
        Localizer.load(tmp_path / "loc")


def test_registration_is_built_only_for_listed_categories():
    settings = {"registration": {"categories": ["plate"], "max_rotation_deg": 45, "rotation_step_deg": 3}}
    assert _registration("brick", settings) is None
    assert _registration("brick", {}) is None
    registration = _registration("plate", settings)
    assert registration.max_rotation_deg == 45 and registration.rotation_step_deg == 3


def test_patches_outside_the_photo_read_as_normal_and_do_not_bias_the_calibration():
    """A registered image rotated by 45 degrees has corners filled in from outside the photo: their
    patches get the location's normal score (0 in a log_ratio map) instead of whatever the fill scores."""
    from types import SimpleNamespace

    from cutpaste.core.localize import Localizer
    from cutpaste.core.register import coverage

    transforms = np.array([[45.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    inside = coverage(transforms, 64, 16, 4)
    assert inside.shape == (3, 13, 13) and inside[0, 0, 0] < 0.5 and inside[0, 6, 6] == pytest.approx(1.0)
    assert np.all(inside[1:] == pytest.approx(1.0))
    localizer = Localizer({}, {}, SimpleNamespace(grid_=13), 64, 16, 4, 4.0, {}, registration=object())
    normal = np.full((3, 13, 13), 8.0)
    fill_scores = np.where(inside < 0.98, 1e6, normal)  # the fill region scores absurdly high
    localizer.set_normalization(fill_scores, "log_ratio", transforms)
    np.testing.assert_allclose(localizer.norm_center, 3.0)  # log2(8): the fill did not enter the statistics
    maps = localizer.maps_from_grids(fill_scores[:1], transforms=transforms[:1])
    assert np.abs(maps).max() < 1e-6


def _plate_on_a_wire(poses: np.ndarray) -> np.ndarray:
    """The plate in the given poses, hanging on a dark wire that stays where it is in the camera frame
    (it does not turn with the plate)."""
    images = warp(np.repeat(_plate()[None], len(poses), 0), poses)
    images[:, 0:16, 31:34] = (30, 30, 30)
    return images


def _wired_localizer(fit: np.ndarray, camera_level: bool):
    import torch

    from cutpaste.core.localize import Localizer, LocationDensity, fit_patch_density
    from cutpaste.core.models import CutPasteNet

    registration = RigidRegistration(max_rotation_deg=60).fit(fit)
    torch.manual_seed(0)
    model = CutPasteNet(num_classes=3, head_dims=(8,)).eval()
    args = {"batch_size": 256, "device": "cpu", "precision": "fp32"}
    aligned, _ = registration.align(fit)
    density = fit_patch_density(model, aligned, LocationDensity(per_location=True, neighborhood=1), 16, 4, **args)
    localizer = Localizer(model.state_dict(), {"head_dims": [8], "backbone": "resnet18"}, density, 64, 16, 4, 4.0, args,
                          registration=registration, camera_level=camera_level)
    localizer.fit_stem(fit, max_vectors=10**6, seed=0, per_location=True, tolerance=1)
    return localizer


def test_a_camera_frame_level_quiets_what_does_not_turn_with_the_part(tmp_path):
    """A plate that turns on a wire that does not: registered onto the plate's pose, the wire lands in a
    different place in every image and lights up good maps; read against the calibration images'
    level in the camera frame it does not, a defect on the plate still does, and load() keeps it."""
    from scipy import ndimage

    from cutpaste.core.localize import Localizer

    train = _plate_on_a_wire(_poses(22, seed=1))
    fit, calibration = train[:14], train[14:]
    leveled = _wired_localizer(fit, True)
    good = _plate_on_a_wire(_poses(6, seed=7))
    leveled.camera_level = False  # the same localizer calibrated without, then with, the camera-frame level
    leveled.calibrate(calibration)
    assert leveled.patch_camera_level is None and leveled.stem_camera_level is None
    before = leveled.score_maps(good)
    leveled.camera_level = True
    leveled.calibrate(calibration)
    assert leveled.patch_camera_level.shape == leveled.stem_camera_level.shape == (64, 64)
    assert (leveled.patch_camera_level >= 0).all()
    np.testing.assert_allclose(leveled.stem_camera_level, ndimage.maximum_filter(leveled._reference_stem_maps(calibration).mean(0), size=5,
                                                                                 mode="nearest"), rtol=1e-5, atol=1e-5)
    wire = np.zeros((64, 64), dtype=bool)
    wire[0:16, 28:37] = True
    after = leveled.score_maps(good)
    assert (before[:, wire].max(1) > before[:, ~wire].max(1)).all()  # the wire was the hottest spot of every good map
    assert (after[:, wire].max(1) < after[:, ~wire].max(1)).all()  # now it is not, in any
    assert (after.max((1, 2)) < before.max((1, 2))).all()  # every good image's hottest spot cools down
    defect = _plate_on_a_wire(np.array([[30.0, 2.0, 1.0]]))
    defect[0, 40:48, 18:26] = (250, 30, 30)
    maps = leveled.score_maps(defect)
    peak = np.unravel_index(maps[0].argmax(), maps[0].shape)
    assert 34 <= peak[0] <= 54 and 12 <= peak[1] <= 32, peak
    leveled.save(tmp_path / "loc")
    loaded = Localizer.load(tmp_path / "loc")
    assert loaded.camera_level and loaded.camera_tolerance == 2
    np.testing.assert_allclose(loaded.score_maps(defect), maps, rtol=1e-5, atol=1e-5)
    stored = dict(np.load(tmp_path / "loc" / "density.npz"))
    np.savez(tmp_path / "loc" / "density.npz", **{key: value for key, value in stored.items() if key != "patch_camera_level"})
    with pytest.raises(ValueError, match="patch_camera_level is missing"):
        Localizer.load(tmp_path / "loc")
    with pytest.raises(ValueError, match="needs a registering localizer"):
        Localizer({}, {}, None, 64, 16, 4, 4.0, {}, camera_level=True)
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        Localizer({}, {}, None, 64, 16, 4, 4.0, {}, registration=object(), camera_level=True, camera_tolerance=-1)


def test_camera_level_settings_stay_out_of_the_registration():
    from cutpaste.pipelines.localization.nodes import _camera_level

    settings = {"registration": {"categories": ["plate"], "max_rotation_deg": 45, "camera_level": True, "camera_level_tolerance_px": 3}}
    assert _registration("plate", settings).max_rotation_deg == 45
    assert _camera_level(settings) == {"camera_level": True, "camera_tolerance": 3}
    assert _camera_level({}) == {"camera_level": False, "camera_tolerance": 2}

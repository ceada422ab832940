"""The paper's baseline augmentations: each checked for its defining property."""

import pytest
import torch

from cutpaste.core.augment import (
    TASKS,
    Confetti,
    Cutout,
    CutPasteScar,
    Rotate90,
    ScarColor,
    box_mask,
    build_task,
)


def _images(batch=6, size=48, seed=0):
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(batch, 3, 6, 6, generator=generator)
    smooth = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    return (0.7 * smooth + 0.3 * torch.rand(batch, 3, size, size, generator=generator)).clamp(0, 1)


def _cutout_region(images, augmentation, seed):
    params = augmentation.sample(images, torch.Generator().manual_seed(seed))
    box, color = params
    inside = box_mask(box.target_top, box.target_left, box.height, box.width, *images.shape[-2:]).bool().expand_as(images)
    return augmentation.apply(images, params), inside, color


@pytest.mark.parametrize("fill", ["gray", "mean", "color"])
def test_cutout_box_is_one_constant_and_the_rest_untouched(fill):
    images = _images()
    out, inside, color = _cutout_region(images, Cutout(fill), seed=1)
    assert torch.equal(out[~inside], images[~inside])
    for index in range(images.shape[0]):
        region = out[index][inside[index]].view(3, -1)
        expected = {"gray": torch.full((3,), 0.5), "mean": images[index].mean((1, 2)), "color": color[index]}[fill]
        assert region.shape[1] > 0
        assert torch.allclose(region, expected[:, None].expand_as(region), atol=1e-6)


def test_cutout_color_differs_between_images_and_box_area_follows_the_ratio():
    images = _images(batch=64, size=64)
    _, inside, color = _cutout_region(images, Cutout("color", area_ratio=(0.02, 0.15)), seed=2)
    fractions = inside[:, 0].float().mean((1, 2))
    assert fractions.min() >= 0.015 and fractions.max() <= 0.16
    assert len({tuple(row) for row in color.tolist()}) == 64


def test_scar_color_fills_exactly_the_rotated_scar_with_one_colour():
    images = _images(size=64)
    augmentation = ScarColor()
    scar, color = augmentation.sample(images, torch.Generator().manual_seed(3))
    out = augmentation.apply(images, (scar, color))
    inside, _, _ = CutPasteScar.target_geometry(scar, 64, 64)
    inside = inside.unsqueeze(1).expand_as(images)
    assert torch.equal(out[~inside], images[~inside])
    for index in range(images.shape[0]):
        region = out[index][inside[index]].view(3, -1)
        assert region.shape[1] > 0 and torch.allclose(region, color[index][:, None].expand_as(region))
    # thin: the scar covers at most 16 x 25 px at 256 px, i.e. well under the CutPaste box area
    assert inside[:, 0].float().mean((1, 2)).max() < 16 * 25 / 256**2 * 1.5 + 0.02


def test_confetti_changes_only_its_local_boxes_and_keeps_their_position():
    images = _images()
    augmentation = Confetti(num_patches=2, jitter=0.5)
    params = augmentation.sample(images, torch.Generator().manual_seed(4))
    out = augmentation.apply(images, params)
    touched = torch.zeros_like(images, dtype=torch.bool)
    for patch in params:
        assert torch.equal(patch.target_top, patch.source_top) and torch.equal(patch.target_left, patch.source_left)
        touched |= box_mask(patch.source_top, patch.source_left, patch.height, patch.width, 48, 48).bool().expand_as(images)
    assert torch.equal(out[~touched], images[~touched])
    assert (out[touched] - images[touched]).abs().max() > 0.01
    assert touched[:, 0].float().mean((1, 2)).max() <= 2 * 0.16  # small: at most two boxes of <= 15 % each


def test_confetti_without_jitter_is_the_identity():
    images = _images()
    assert torch.allclose(Confetti(jitter=0.0)(images, torch.Generator().manual_seed(5)), images, atol=1e-6)


def test_rotation_task_labels_match_rot90_of_the_input():
    images = _images(batch=3)
    task = build_task("rotation")
    batch, labels = task(images, torch.Generator().manual_seed(0))
    assert task.num_classes == 4 and batch.shape == (12, 3, 48, 48)
    assert labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for position, label in enumerate(labels.tolist()):
        assert torch.equal(batch[position], torch.rot90(images[position % 3], label, dims=(1, 2)))
    with pytest.raises(ValueError, match="square"):
        Rotate90(1)(torch.zeros(1, 3, 8, 10))


@pytest.mark.parametrize("name, classes", [
    ("3way", 3), ("binary", 2), ("cutpaste", 2), ("scar", 2), ("rotation", 4),
    ("cutout_gray", 2), ("cutout_mean", 2), ("cutout_color", 2), ("scar_color", 2), ("confetti", 2),
])
def test_every_task_by_name_gives_equal_class_counts_and_altered_views(name, classes):
    images = _images(batch=5)
    task = build_task(name, {"area_ratio": [0.02, 0.15], "jitter": 0.1}, {"width_px": [2, 16]}, {"num_patches": 1})
    batch, labels = task(images, torch.Generator().manual_seed(6))
    assert task.num_classes == classes and batch.shape == (5 * classes, 3, 48, 48)
    assert torch.bincount(labels).tolist() == [5] * classes
    assert torch.equal(batch[:5], images)  # label 0 is the unaltered image
    for label in range(1, classes):
        view = batch[labels == label]
        assert view.shape == images.shape and (view - images).abs().amax((1, 2, 3)).min() > 0


def test_unknown_task_and_fill_are_rejected_by_name():
    assert len(TASKS) == 10
    with pytest.raises(ValueError, match="unknown proxy task 'cutout_blue'"):
        build_task("cutout_blue")
    with pytest.raises(ValueError, match="unknown cutout fill"):
        Cutout("blue")

import pytest
import torch
import torchvision.transforms.v2.functional as F
from oracle import cutpaste_reference, jitter_patch, scar_reference

from cutpaste.core.augment import (
    CutPaste,
    CutPaste3Way,
    CutPasteScar,
    Preprocess,
    build_task,
    color_jitter,
    hsv_to_rgb,
    random_translate,
    rgb_to_hsv,
    sample_jitter,
)


def _images(batch=6, size=48, seed=0):
    generator = torch.Generator().manual_seed(seed)
    # smooth colourful content plus noise so every pixel is distinguishable
    base = torch.rand(batch, 3, 6, 6, generator=generator)
    smooth = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    return (0.7 * smooth + 0.3 * torch.rand(batch, 3, size, size, generator=generator)).clamp(0, 1)


def test_hsv_round_trip():
    images = _images()
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(images)), images, atol=1e-5)


def test_color_jitter_matches_torchvision_per_image():
    images = _images()
    params = sample_jitter(images.shape[0], 0.4, torch.Generator().manual_seed(1), "cpu")
    batched = color_jitter(images, params)
    for index in range(images.shape[0]):
        factors = (params.brightness[index].item(), params.contrast[index].item(), params.saturation[index].item(), params.hue[index].item())
        expected = jitter_patch(images[index], factors, params.order[index].tolist())
        assert torch.allclose(batched[index], expected, atol=1e-5)


def test_jitter_orders_are_per_image_permutations():
    params = sample_jitter(500, 0.1, torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(params.order.sort(1).values, torch.arange(4).expand(500, 4))
    assert len({tuple(row) for row in params.order.tolist()}) > 12


def test_cutpaste_matches_per_image_reference():
    images = _images()
    augmentation = CutPaste(jitter=0.1)
    params = augmentation.sample(images, torch.Generator().manual_seed(3))
    assert torch.allclose(augmentation.apply(images, params), cutpaste_reference(images, params), atol=1e-5)


def test_pasted_patch_equals_its_source_region_without_jitter():
    images = _images()
    augmentation = CutPaste(jitter=0.0)
    params = augmentation.sample(images, torch.Generator().manual_seed(4))
    out = augmentation.apply(images, params)
    for index in range(images.shape[0]):
        height, width = params.height[index], params.width[index]
        source = images[index, :, params.source_top[index] : params.source_top[index] + height, params.source_left[index] : params.source_left[index] + width]
        target = out[index, :, params.target_top[index] : params.target_top[index] + height, params.target_left[index] : params.target_left[index] + width]
        assert torch.equal(source, target)
        outside = torch.ones_like(out[index], dtype=torch.bool)
        outside[:, params.target_top[index] : params.target_top[index] + height, params.target_left[index] : params.target_left[index] + width] = False
        assert torch.equal(out[index][outside], images[index][outside])


def test_cutpaste_area_and_aspect_ratios_in_range():
    images = torch.zeros(2000, 3, 256, 256)
    params = CutPaste().sample(images, torch.Generator().manual_seed(0))
    area = (params.height * params.width).float() / (256 * 256)
    aspect = params.width.float() / params.height.float()
    # integer rounding of the sides moves the ratios slightly
    assert area.min() >= 0.02 * 0.95 and area.max() <= 0.15 * 1.05
    assert aspect.min() >= 0.3 * 0.95 and aspect.max() <= 3.3 * 1.05
    assert (aspect < 1).float().mean().item() == pytest.approx(0.5, abs=0.05)
    for start, size in ((params.source_top, params.height), (params.source_left, params.width), (params.target_top, params.height), (params.target_left, params.width)):
        assert start.min() >= 0 and (start + size).max() <= 256


def test_scar_matches_per_image_reference():
    images = _images(batch=4, size=40)
    augmentation = CutPasteScar(jitter=0.1, reference_size=40)
    params = augmentation.sample(images, torch.Generator().manual_seed(5))
    assert torch.allclose(augmentation.apply(images, params), scar_reference(images, params), atol=1e-5)


def test_scar_geometry_in_range_and_pixels_come_from_source():
    images = _images(batch=64, size=256)
    augmentation = CutPasteScar(jitter=0.0)
    params = augmentation.sample(images, torch.Generator().manual_seed(6))
    assert params.width.min() >= 2 and params.width.max() <= 16
    assert params.height.min() >= 10 and params.height.max() <= 25
    assert params.angle_deg.abs().max() <= 45
    inside, patch_y, patch_x = augmentation.target_geometry(params, 256, 256)
    area = inside.sum((1, 2)).float()
    expected = (params.width * params.height).float()
    assert torch.all((area - expected).abs() <= 0.25 * expected + 4)  # pixel discretisation of a rotated box
    out = augmentation.apply(images, params)
    changed = (out != images).any(1)
    assert torch.all(changed <= inside)
    for index in range(8):
        ys, xs = patch_y[index][inside[index]], patch_x[index][inside[index]]
        assert ys.min() >= 0 and ys.max() < params.height[index]
        assert xs.min() >= 0 and xs.max() < params.width[index]
        source = images[index, :, params.source_top[index] + ys, params.source_left[index] + xs]
        assert torch.equal(out[index][:, inside[index]], source)  # every scar pixel is a source-patch pixel


def test_scar_scales_with_working_size():
    params = CutPasteScar().sample(torch.zeros(500, 3, 128, 128), torch.Generator().manual_seed(0))
    assert params.width.min() >= 1 and params.width.max() <= 8
    assert params.height.min() >= 5 and params.height.max() <= 13


def test_same_seed_same_batch_and_three_way_labels():
    images = _images()
    task = CutPaste3Way()
    batch_a, labels = task(images, torch.Generator().manual_seed(7))
    batch_b, _ = task(images, torch.Generator().manual_seed(7))
    assert torch.equal(batch_a, batch_b)
    assert labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert torch.equal(batch_a[:6], images)
    assert not torch.equal(batch_a[6:12], images) and not torch.equal(batch_a[12:], images)


def test_binary_union_uses_both_augmentations():
    images = _images(batch=200, size=64)
    task = build_task("binary", cutpaste={"jitter": 0.0}, scar={"jitter": 0.0})
    batch, labels = task(images, torch.Generator().manual_seed(0))
    assert task.num_classes == 2 and labels.sum() == 200
    changed = (batch[200:] != images).any(1).sum((1, 2))
    # CutPaste changes at least 2 % of 4096 pixels; scars at this size change far fewer
    assert (changed < 60).sum() > 50 and (changed > 80).sum() > 50


def test_unknown_task_is_rejected():
    with pytest.raises(ValueError, match="unknown proxy task"):
        build_task("rotation-ish")


def test_random_translate_shifts_content():
    images = _images(batch=3, size=32)
    out = random_translate(images, 0.25, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    for index in range(3):
        found = any(
            torch.equal(out[index, :, 8:24, 8:24], images[index, :, 8 + dy : 24 + dy, 8 + dx : 24 + dx])
            for dy in range(-8, 9) for dx in range(-8, 9)
        )
        assert found
    assert torch.equal(random_translate(images, 0.0, None), images)


def test_preprocess_keeps_range_and_shape():
    images = _images()
    out = Preprocess(max_translation=0.1, jitter=0.1)(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, images)


def test_gray_images_stay_gray_under_hue_jitter():
    gray = _images()[:, :1].repeat(1, 3, 1, 1)
    out = color_jitter(gray, sample_jitter(gray.shape[0], 0.5, torch.Generator().manual_seed(0), "cpu"))
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-5) and torch.allclose(out[:, 1], out[:, 2], atol=1e-5)


def test_contrast_of_patch_uses_the_patch_mean():
    images = _images(batch=2)
    params = CutPaste(jitter=0.3).sample(images, torch.Generator().manual_seed(9))
    expected = cutpaste_reference(images, params)
    assert torch.allclose(CutPaste(jitter=0.3).apply(images, params), expected, atol=1e-5)
    assert F.adjust_contrast is not None


def test_random_crop_takes_a_window_of_each_image():
    from cutpaste.core.augment import random_crop

    images = _images(batch=4, size=32)
    crops = random_crop(images, 12, torch.Generator().manual_seed(0))
    assert crops.shape == (4, 3, 12, 12)
    for index in range(4):
        assert any(torch.equal(crops[index], images[index, :, y : y + 12, x : x + 12]) for y in range(21) for x in range(21))
    with pytest.raises(ValueError, match="does not fit"):
        random_crop(images, 40, None)
    cropped = Preprocess(max_translation=0.0, jitter=0.0, crop_size=16)(images, torch.Generator().manual_seed(0))
    assert cropped.shape == (4, 3, 16, 16)


@pytest.mark.parametrize(("symmetry", "group_size"), [("hflip", 2), ("dihedral", 8)])
def test_symmetry_gives_each_image_an_element_of_its_group(symmetry, group_size):
    from cutpaste.core.augment.preprocess import random_symmetry

    images = _images(batch=64, size=16)
    out = random_symmetry(images, symmetry, torch.Generator().manual_seed(0))
    seen = set()
    for index in range(len(images)):
        image = images[index]
        elements = [torch.rot90(image.flip(-1) if element % 2 else image, element // 2, dims=(-2, -1)) for element in range(8)]
        matches = [number for number, element in enumerate(elements[: 2 if symmetry == "hflip" else 8]) if torch.equal(out[index], element)]
        assert matches, f"image {index} is not a {symmetry} image of its input"
        seen.add(matches[0])
    assert len(seen) == group_size  # 64 draws hit every element of the group
    assert torch.equal(random_symmetry(images, "none", None), images)


def test_symmetry_settings_are_checked():
    from cutpaste.core.augment.preprocess import random_symmetry

    with pytest.raises(ValueError, match="symmetry must be one of"):
        Preprocess(symmetry="rotate")
    with pytest.raises(ValueError, match="square images"):
        random_symmetry(torch.zeros(2, 3, 8, 12), "dihedral", None)
    out = Preprocess(max_translation=0.0, jitter=0.0, symmetry="hflip")(_images(batch=8), torch.Generator().manual_seed(1))
    assert out.shape == (8, 3, 48, 48)

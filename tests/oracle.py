"""Per-image reference implementations of CutPaste and CutPaste-Scar.

Written the plain way (one image at a time, torchvision's functional colour ops on the cropped
patch, slicing, explicit coordinate loops) from the same sampled parameters as the batched code.
The tests use them as the oracle; the augmentation benchmark uses them as the baseline.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as F

from cutpaste.core.augment import PatchParams

_OPS = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)


def jitter_patch(patch: torch.Tensor, factors: tuple[float, float, float, float], order: list[int]) -> torch.Tensor:
    """(3, h, w) patch -> jittered patch, ops applied in ``order``."""
    for op in order:
        patch = _OPS[op](patch, factors[op])
    return patch


def _jitter_args(params: PatchParams, index: int) -> tuple[tuple[float, ...], list[int]]:
    jitter = params.jitter
    factors = (float(jitter.brightness[index]), float(jitter.contrast[index]), float(jitter.saturation[index]), float(jitter.hue[index]))
    return factors, [int(op) for op in jitter.order[index]]


def cutpaste_reference(images: torch.Tensor, params: PatchParams) -> torch.Tensor:
    out = images.clone()
    for index in range(images.shape[0]):
        top, left = int(params.source_top[index]), int(params.source_left[index])
        height, width = int(params.height[index]), int(params.width[index])
        patch = images[index, :, top : top + height, left : left + width]
        patch = jitter_patch(patch, *_jitter_args(params, index))
        target_top, target_left = int(params.target_top[index]), int(params.target_left[index])
        out[index, :, target_top : target_top + height, target_left : target_left + width] = patch
    return out


def scar_reference(images: torch.Tensor, params: PatchParams) -> torch.Tensor:
    out = images.clone()
    _, _, image_h, image_w = images.shape
    for index in range(images.shape[0]):
        top, left = int(params.source_top[index]), int(params.source_left[index])
        scar_h, scar_w = int(params.height[index]), int(params.width[index])
        patch = jitter_patch(images[index, :, top : top + scar_h, left : left + scar_w], *_jitter_args(params, index))
        angle = math.radians(float(params.angle_deg[index]))
        cos, sin = math.cos(angle), math.sin(angle)
        bound_w = math.ceil(scar_w * abs(cos) + scar_h * abs(sin))
        bound_h = math.ceil(scar_w * abs(sin) + scar_h * abs(cos))
        centre_y = int(params.target_top[index]) + bound_h / 2
        centre_x = int(params.target_left[index]) + bound_w / 2
        for y in range(image_h):
            for x in range(image_w):
                dy, dx = y + 0.5 - centre_y, x + 0.5 - centre_x
                u = cos * dx + sin * dy
                v = -sin * dx + cos * dy
                if abs(u) < scar_w / 2 and abs(v) < scar_h / 2:
                    out[index, :, y, x] = patch[:, min(int(math.floor(v + scar_h / 2)), scar_h - 1), min(int(math.floor(u + scar_w / 2)), scar_w - 1)]
    return out

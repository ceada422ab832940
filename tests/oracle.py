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
    """Per image: crop the w x h patch, jitter it, and map every target pixel back into it."""
    out = images.clone()
    _, _, image_h, image_w = images.shape
    ys, xs = torch.meshgrid(torch.arange(image_h) + 0.5, torch.arange(image_w) + 0.5, indexing="ij")
    for index in range(images.shape[0]):
        top, left = int(params.source_top[index]), int(params.source_left[index])
        scar_h, scar_w = int(params.height[index]), int(params.width[index])
        patch = jitter_patch(images[index, :, top : top + scar_h, left : left + scar_w], *_jitter_args(params, index))
        angle = math.radians(float(params.angle_deg[index]))
        cos, sin = math.cos(angle), math.sin(angle)
        bound_w = math.ceil(scar_w * abs(cos) + scar_h * abs(sin))
        bound_h = math.ceil(scar_w * abs(sin) + scar_h * abs(cos))
        dy = ys - (int(params.target_top[index]) + bound_h / 2)
        dx = xs - (int(params.target_left[index]) + bound_w / 2)
        u = cos * dx + sin * dy
        v = -sin * dx + cos * dy
        inside = (u.abs() < scar_w / 2) & (v.abs() < scar_h / 2)
        rows = torch.floor(v[inside] + scar_h / 2).long().clamp(0, scar_h - 1)
        cols = torch.floor(u[inside] + scar_w / 2).long().clamp(0, scar_w - 1)
        out[index][:, inside] = patch[:, rows, cols]
    return out


def translate_reference(image: torch.Tensor, offset_y: int, offset_x: int, pad_y: int, pad_x: int) -> torch.Tensor:
    """One image, reflect-padded, cropped back at the given offset."""
    padded = torch.nn.functional.pad(image.unsqueeze(0), (pad_x, pad_x, pad_y, pad_y), mode="reflect")[0]
    return padded[:, offset_y : offset_y + image.shape[1], offset_x : offset_x + image.shape[2]]

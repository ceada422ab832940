"""Colour jitter (brightness, contrast, saturation, hue in a random order per image) as batched tensor ops,
optionally restricted to a region; the colour conversions it needs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cutpaste.core.augment.sampling import uniform

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
NUM_JITTER_OPS = 4  # brightness, contrast, saturation, hue


def rgb_to_gray(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma with ITU-R 601-2 weights (as torchvision)."""
    red, green, blue = images.unbind(1)
    return (GRAY_WEIGHTS[0] * red + GRAY_WEIGHTS[1] * green + GRAY_WEIGHTS[2] * blue).unsqueeze(1)


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> HSV in [0, 1] (the formulas torchvision uses)."""
    red, green, blue = images.unbind(1)
    max_c = images.amax(1)
    min_c = images.amin(1)
    equal = max_c == min_c
    chroma = max_c - min_c
    ones = torch.ones_like(max_c)
    saturation = chroma / torch.where(equal, ones, max_c)
    divisor = torch.where(equal, ones, chroma)
    red_c = (max_c - red) / divisor
    green_c = (max_c - green) / divisor
    blue_c = (max_c - blue) / divisor
    hue_r = (max_c == red) * (blue_c - green_c)
    hue_g = ((max_c == green) & (max_c != red)) * (2.0 + red_c - blue_c)
    hue_b = ((max_c != green) & (max_c != red)) * (4.0 + green_c - red_c)
    hue = torch.fmod((hue_r + hue_g + hue_b) / 6.0 + 1.0, 1.0)
    return torch.stack((hue, saturation, max_c), 1)


def hsv_to_rgb(images: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`: channel n in (R 5, G 3, B 1) is v - v s clamp(min(k, 4 - k), 0, 1)
    with k = (n + 6 h) mod 6, the sector formula of torchvision without its (B, 3, 6, H, W) table."""
    hue, saturation, value = images.unbind(1)
    offsets = torch.tensor((5.0, 3.0, 1.0), device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    k = torch.remainder(offsets + 6.0 * hue.unsqueeze(1), 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return (value.unsqueeze(1) * (1.0 - saturation.unsqueeze(1) * ramp)).clamp(0.0, 1.0)


@dataclass
class JitterParams:
    """Per-image colour-jitter factors, each (B,); ``order`` (B, 4) is a permutation of op ids
    0 brightness, 1 contrast, 2 saturation, 3 hue."""

    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    order: torch.Tensor


def sample_jitter(batch: int, intensity: float, generator: torch.Generator | None, device) -> JitterParams:
    """Factors as torchvision's ColorJitter(intensity, intensity, intensity, intensity)."""
    low, high = max(0.0, 1.0 - intensity), 1.0 + intensity
    return JitterParams(
        brightness=uniform(low, high, batch, generator, device),
        contrast=uniform(low, high, batch, generator, device),
        saturation=uniform(low, high, batch, generator, device),
        hue=uniform(-min(intensity, 0.5), min(intensity, 0.5), batch, generator, device),
        order=torch.rand(batch, NUM_JITTER_OPS, generator=generator, device=device).argsort(1),
    )


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    factor = factor.view(-1, 1, 1, 1)
    return (factor * images + (1.0 - factor) * other).clamp(0.0, 1.0)


def _jitter_op(op: int, images: torch.Tensor, factor: torch.Tensor, region: torch.Tensor | None) -> torch.Tensor:
    if op == 0:
        return (images * factor.view(-1, 1, 1, 1)).clamp(0.0, 1.0)
    if op == 1:
        gray = rgb_to_gray(images)
        if region is None:
            mean = gray.mean((1, 2, 3), keepdim=True)
        else:
            mean = (gray * region).sum((1, 2, 3), keepdim=True) / region.sum((1, 2, 3), keepdim=True).clamp_min(1)
        return _blend(images, mean, factor)
    if op == 2:
        return _blend(images, rgb_to_gray(images), factor)
    hsv = rgb_to_hsv(images)
    hue = torch.remainder(hsv[:, 0] + factor.view(-1, 1, 1), 1.0)
    return hsv_to_rgb(torch.stack((hue, hsv[:, 1], hsv[:, 2]), 1))


def color_jitter(images: torch.Tensor, params: JitterParams, region: torch.Tensor | None = None) -> torch.Tensor:
    """Apply per-image colour jitter in each image's own random op order.

    Args:
        images: (B, 3, H, W) float in [0, 1].
        region: optional (B, 1, H, W) float {0, 1}: the pixels over which contrast's mean grey is
            taken (the patch, when only a patch is jittered). Whole image when None.
    """
    factors = (params.brightness, params.contrast, params.saturation, params.hue)
    identity = (1.0, 1.0, 1.0, 0.0)
    out = images.clone()
    for position in range(NUM_JITTER_OPS):
        for op in range(NUM_JITTER_OPS):
            selected = ((params.order[:, position] == op) & (factors[op] != identity[op])).nonzero().squeeze(1)
            if selected.numel() == 0:
                continue
            sub_region = None if region is None else region[selected]
            out[selected] = _jitter_op(op, out[selected], factors[op][selected], sub_region)
    return out

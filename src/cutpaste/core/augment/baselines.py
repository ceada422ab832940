"""The paper's baselines: Cutout (gray, mean or random colour), Scar (random colour), Confetti noise and
4-way rotation prediction."""

from __future__ import annotations

import torch

from cutpaste.core.augment.boxes import box_mask
from cutpaste.core.augment.cutpaste import CutPaste, CutPasteScar, PatchParams
from cutpaste.core.augment.proxy import ProxyTask


class Cutout:
    """Fill a CutPaste-shaped box with a constant: ``fill`` "gray" (0.5 in every channel), "mean"
    (the image's own mean colour) or "color" (one uniformly random RGB colour per image).

    The box geometry is CutPaste's (area ratio, aspect ratio), so the only difference from CutPaste
    is what fills the box. Nothing outside the box changes.
    """

    FILLS = ("gray", "mean", "color")

    def __init__(
        self,
        fill: str = "gray",
        area_ratio: tuple[float, float] = (0.02, 0.15),
        aspect_ratio_low: tuple[float, float] = (0.3, 1.0),
        aspect_ratio_high: tuple[float, float] = (1.0, 3.3),
    ) -> None:
        if fill not in self.FILLS:
            raise ValueError(f"unknown cutout fill '{fill}', expected one of {self.FILLS}")
        self.fill = fill
        self.geometry = CutPaste(area_ratio, aspect_ratio_low, aspect_ratio_high, jitter=0.0)

    def sample(self, images: torch.Tensor, generator: torch.Generator | None = None) -> tuple[PatchParams, torch.Tensor]:
        """(box geometry, (B, 3) fill colour; its value is used only for fill "color")."""
        params = self.geometry.sample(images, generator)
        return params, torch.rand(images.shape[0], 3, generator=generator, device=images.device)

    def fill_values(self, images: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
        """(B, 3, 1, 1) constant written into each image's box."""
        if self.fill == "gray":
            return torch.full_like(color, 0.5).view(-1, 3, 1, 1)
        if self.fill == "mean":
            return images.mean((2, 3), keepdim=True)
        return color.view(-1, 3, 1, 1).to(images.dtype)

    def apply(self, images: torch.Tensor, params: tuple[PatchParams, torch.Tensor]) -> torch.Tensor:
        box, color = params
        _, _, height, width = images.shape
        inside = box_mask(box.target_top, box.target_left, box.height, box.width, height, width).bool()
        return torch.where(inside, self.fill_values(images, color), images)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(images, self.sample(images, generator))


class ScarColor:
    """The paper's "Scar" baseline: a thin rotated rectangle (CutPaste-Scar's geometry) filled with
    one random colour per image instead of a patch of the image."""

    def __init__(
        self,
        width_px: tuple[float, float] = (2, 16),
        length_px: tuple[float, float] = (10, 25),
        rotation_deg: tuple[float, float] = (-45, 45),
        reference_size: int = 256,
    ) -> None:
        self.geometry = CutPasteScar(width_px, length_px, rotation_deg, jitter=0.0, reference_size=reference_size)

    def sample(self, images: torch.Tensor, generator: torch.Generator | None = None) -> tuple[PatchParams, torch.Tensor]:
        params = self.geometry.sample(images, generator)
        return params, torch.rand(images.shape[0], 3, generator=generator, device=images.device)

    def apply(self, images: torch.Tensor, params: tuple[PatchParams, torch.Tensor]) -> torch.Tensor:
        scar, color = params
        _, _, height, width = images.shape
        inside, _, _ = CutPasteScar.target_geometry(scar, height, width)
        return torch.where(inside.unsqueeze(1), color.view(-1, 3, 1, 1).to(images.dtype), images)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(images, self.sample(images, generator))


class Confetti:
    """Confetti noise: colour-jitter ``num_patches`` local boxes of every image in place (nothing is
    moved). Box geometry as CutPaste's, with area ratio ``area_ratio``; the jitter (brightness,
    contrast, saturation, hue in random order) has intensity ``jitter``, drawn anew for every box.
    """

    def __init__(
        self,
        num_patches: int = 1,
        area_ratio: tuple[float, float] = (0.02, 0.15),
        aspect_ratio_low: tuple[float, float] = (0.3, 1.0),
        aspect_ratio_high: tuple[float, float] = (1.0, 3.3),
        jitter: float = 0.1,
    ) -> None:
        if num_patches < 1:
            raise ValueError(f"confetti needs at least one patch, got num_patches={num_patches}")
        self.num_patches = int(num_patches)
        self.geometry = CutPaste(area_ratio, aspect_ratio_low, aspect_ratio_high, jitter=jitter)

    def sample(self, images: torch.Tensor, generator: torch.Generator | None = None) -> list[PatchParams]:
        """One :class:`PatchParams` per patch; each box is jittered where it lies (source = target)."""
        samples = []
        for _ in range(self.num_patches):
            params = self.geometry.sample(images, generator)
            params.target_top, params.target_left = params.source_top, params.source_left
            samples.append(params)
        return samples

    def apply(self, images: torch.Tensor, params: list[PatchParams]) -> torch.Tensor:
        out = images
        for patch in params:
            out = self.geometry.apply(out, patch)
        return out

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(images, self.sample(images, generator))


class Rotate90:
    """Rotate every image by ``quarter_turns`` x 90 degrees counter-clockwise (``torch.rot90``);
    a view of the 4-way rotation-prediction task. Images must be square."""

    def __init__(self, quarter_turns: int) -> None:
        self.quarter_turns = int(quarter_turns) % 4

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if images.shape[-1] != images.shape[-2]:
            raise ValueError(f"rotation prediction needs square images, got {tuple(images.shape[-2:])}")
        return torch.rot90(images, self.quarter_turns, dims=(2, 3))


class RotationPrediction(ProxyTask):
    """4-way rotation prediction (0, 90, 180, 270 degrees): label k = k quarter turns."""

    def __init__(self) -> None:
        super().__init__([None, Rotate90(1), Rotate90(2), Rotate90(3)])

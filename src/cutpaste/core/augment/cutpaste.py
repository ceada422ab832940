"""CutPaste, CutPaste-Scar, their binary union and the 3-way task (the paper's method).

Defaults are the paper's (Li et al., CVPR 2021), at 256 x 256 px:

* CutPaste: patch area / image area ~ U(0.02, 0.15); aspect ratio ~ U(0.3, 1) or U(1, 3.3) with
  equal probability; source and target boxes lie inside the image; the patch is colour-jittered
  (brightness, contrast, saturation, hue, random order) with intensity 0.1 before pasting.
* CutPaste-Scar: a thin rectangle, width U[2, 16] px and length U[10, 25] px (scaled by H / 256),
  cut from the same image, jittered, rotated U(-45, 45) degrees and pasted elsewhere.
* 3-way: normal / CutPaste / CutPaste-Scar; binary union: normal / (CutPaste or Scar).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cutpaste.core.augment.boxes import box_mask, crop_boxes, paste_from_buffer
from cutpaste.core.augment.jitter import JitterParams, color_jitter, sample_jitter
from cutpaste.core.augment.proxy import ProxyTask
from cutpaste.core.augment.sampling import randint_below, uniform


@dataclass
class PatchParams:
    """Per-image patch geometry in pixels, each (B,) int64 (``angle_deg`` float, 0 for CutPaste)."""

    source_top: torch.Tensor
    source_left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    target_top: torch.Tensor
    target_left: torch.Tensor
    angle_deg: torch.Tensor
    jitter: JitterParams


class CutPaste:
    """Cut a rectangle, colour-jitter it, paste it at another place of the same image.

    Args:
        area_ratio: (min, max) patch area as a fraction of the image area.
        aspect_ratio_low / aspect_ratio_high: the two width/height ranges, each picked with p = 0.5.
        jitter: colour-jitter intensity applied to the patch.
    """

    def __init__(
        self,
        area_ratio: tuple[float, float] = (0.02, 0.15),
        aspect_ratio_low: tuple[float, float] = (0.3, 1.0),
        aspect_ratio_high: tuple[float, float] = (1.0, 3.3),
        jitter: float = 0.1,
    ) -> None:
        if not 0 < area_ratio[0] <= area_ratio[1] < 1:
            raise ValueError(f"area_ratio must satisfy 0 < min <= max < 1, got {area_ratio}")
        self.area_ratio = tuple(area_ratio)
        self.aspect_ratio_low = tuple(aspect_ratio_low)
        self.aspect_ratio_high = tuple(aspect_ratio_high)
        self.jitter = jitter

    def sample(self, images: torch.Tensor, generator: torch.Generator | None = None) -> PatchParams:
        batch, _, height, width = images.shape
        device = images.device
        area = uniform(*self.area_ratio, batch, generator, device) * height * width
        use_high = torch.rand(batch, generator=generator, device=device) < 0.5
        aspect = torch.where(
            use_high,
            uniform(*self.aspect_ratio_high, batch, generator, device),
            uniform(*self.aspect_ratio_low, batch, generator, device),
        )
        patch_w = torch.sqrt(area * aspect).round().long().clamp(1, width)
        patch_h = torch.sqrt(area / aspect).round().long().clamp(1, height)
        return PatchParams(
            source_top=randint_below(height - patch_h, generator),
            source_left=randint_below(width - patch_w, generator),
            height=patch_h,
            width=patch_w,
            target_top=randint_below(height - patch_h, generator),
            target_left=randint_below(width - patch_w, generator),
            angle_deg=torch.zeros(batch, device=device),
            jitter=sample_jitter(batch, self.jitter, generator, device),
        )

    def apply(self, images: torch.Tensor, params: PatchParams) -> torch.Tensor:
        _, _, height, width = images.shape
        patch, valid = crop_boxes(images, params.source_top, params.source_left, params.height, params.width)
        patch = color_jitter(patch, params.jitter, region=valid)
        inside = box_mask(params.target_top, params.target_left, params.height, params.width, height, width)[:, 0].bool()
        ys = torch.arange(height, device=images.device).view(1, -1, 1)
        xs = torch.arange(width, device=images.device).view(1, 1, -1)
        buffer_y = (ys - params.target_top.view(-1, 1, 1)).expand(-1, -1, width)
        buffer_x = (xs - params.target_left.view(-1, 1, 1)).expand(-1, height, -1)
        return paste_from_buffer(images, patch, inside, buffer_y, buffer_x)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(images, self.sample(images, generator))


class CutPasteScar:
    """Cut a thin rectangle, jitter it, rotate it and paste it elsewhere in the same image.

    Args:
        width_px / length_px: (min, max) at ``reference_size``; scaled by H / reference_size.
        rotation_deg: (min, max) rotation of the pasted scar.
    """

    def __init__(
        self,
        width_px: tuple[float, float] = (2, 16),
        length_px: tuple[float, float] = (10, 25),
        rotation_deg: tuple[float, float] = (-45, 45),
        jitter: float = 0.1,
        reference_size: int = 256,
    ) -> None:
        self.width_px = tuple(width_px)
        self.length_px = tuple(length_px)
        self.rotation_deg = tuple(rotation_deg)
        self.jitter = jitter
        self.reference_size = reference_size

    def sample(self, images: torch.Tensor, generator: torch.Generator | None = None) -> PatchParams:
        batch, _, height, width = images.shape
        device = images.device
        scale = height / self.reference_size
        scar_w = (uniform(*self.width_px, batch, generator, device) * scale).round().long().clamp(1, width)
        scar_h = (uniform(*self.length_px, batch, generator, device) * scale).round().long().clamp(1, height)
        angle = uniform(*self.rotation_deg, batch, generator, device)
        radians = torch.deg2rad(angle)
        cos, sin = radians.cos().abs(), radians.sin().abs()
        bound_w = torch.ceil(scar_w * cos + scar_h * sin).long().clamp(max=width)
        bound_h = torch.ceil(scar_w * sin + scar_h * cos).long().clamp(max=height)
        return PatchParams(
            source_top=randint_below(height - scar_h, generator),
            source_left=randint_below(width - scar_w, generator),
            height=scar_h,
            width=scar_w,
            target_top=randint_below(height - bound_h, generator),  # of the rotated bounding box
            target_left=randint_below(width - bound_w, generator),
            angle_deg=angle,
            jitter=sample_jitter(batch, self.jitter, generator, device),
        )

    @staticmethod
    def target_geometry(params: PatchParams, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inside (B, H, W) bool, patch_y, patch_x (B, H, W) int64) of the rotated paste: which
        target pixels the scar covers and which pixel of the (unrotated) h x w patch each shows.

        Target pixel centres are rotated back by -angle about the centre of the rotated bounding
        box; a pixel is inside the scar where it lands within the unrotated w x h box.
        """
        radians = torch.deg2rad(params.angle_deg).view(-1, 1, 1)
        cos, sin = radians.cos(), radians.sin()
        scar_w = params.width.view(-1, 1, 1).float()
        scar_h = params.height.view(-1, 1, 1).float()
        bound_w = torch.ceil(scar_w * cos.abs() + scar_h * sin.abs())
        bound_h = torch.ceil(scar_w * sin.abs() + scar_h * cos.abs())
        centre_y = params.target_top.view(-1, 1, 1) + bound_h / 2
        centre_x = params.target_left.view(-1, 1, 1) + bound_w / 2
        device = params.angle_deg.device
        dy = torch.arange(height, device=device).view(1, -1, 1) + 0.5 - centre_y
        dx = torch.arange(width, device=device).view(1, 1, -1) + 0.5 - centre_x
        u = cos * dx + sin * dy  # along the scar's width
        v = -sin * dx + cos * dy  # along its length
        inside = (u.abs() < scar_w / 2) & (v.abs() < scar_h / 2)
        patch_y = torch.floor(v + scar_h / 2).long()
        patch_x = torch.floor(u + scar_w / 2).long()
        return inside, patch_y, patch_x

    def apply(self, images: torch.Tensor, params: PatchParams) -> torch.Tensor:
        _, _, height, width = images.shape
        patch, valid = crop_boxes(images, params.source_top, params.source_left, params.height, params.width)
        patch = color_jitter(patch, params.jitter, region=valid)
        inside, patch_y, patch_x = self.target_geometry(params, height, width)
        return paste_from_buffer(images, patch, inside, patch_y, patch_x)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(images, self.sample(images, generator))


class CutPasteUnion:
    """Each image gets CutPaste or CutPaste-Scar with probability 1/2 (the binary "union" task)."""

    def __init__(self, cutpaste: CutPaste, scar: CutPasteScar) -> None:
        self.cutpaste = cutpaste
        self.scar = scar

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        use_scar = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
        out = images.clone()
        for selected, augmentation in ((~use_scar, self.cutpaste), (use_scar, self.scar)):
            index = selected.nonzero().squeeze(1)
            if index.numel():
                out[index] = augmentation(images[index], generator)
        return out


class CutPaste3Way(ProxyTask):
    """normal / CutPaste / CutPaste-Scar, the paper's best task."""

    def __init__(self, cutpaste: CutPaste | None = None, scar: CutPasteScar | None = None) -> None:
        super().__init__([None, cutpaste or CutPaste(), scar or CutPasteScar()])

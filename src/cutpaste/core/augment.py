"""CutPaste augmentations as batched tensor operations.

Every function takes a batch ``(B, 3, H, W)`` float tensor in [0, 1] on any device and returns a
new tensor of the same shape; nothing loops over images in Python. Randomness comes from an
explicit ``torch.Generator`` so a run repeats exactly. Each augmentation separates *sampling* its
random parameters (``sample``) from *applying* them (``apply``), so the parameters can be logged,
replayed, or checked against a per-image reference implementation.

Defaults are the paper's (Li et al., CVPR 2021), at 256 x 256 px:

* CutPaste: patch area / image area ~ U(0.02, 0.15); aspect ratio ~ U(0.3, 1) or U(1, 3.3) with
  equal probability; source and target boxes lie inside the image; the patch is colour-jittered
  (brightness, contrast, saturation, hue, random order) with intensity 0.1 before pasting.
* CutPaste-Scar: a thin rectangle, width U[2, 16] px and length U[10, 25] px (scaled by H / 256),
  cut from the same image, jittered, rotated U(-45, 45) degrees and pasted elsewhere.
* 3-way: normal / CutPaste / CutPaste-Scar; binary union: normal / (CutPaste or Scar).

The paper's baselines: Cutout (a CutPaste-shaped box filled with gray, the image's mean colour or a
random colour), Scar (CutPaste-Scar's rotated thin rectangle filled with a random colour), Confetti
noise (local boxes colour-jittered in place) and 4-way rotation prediction (0/90/180/270 degrees).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
NUM_JITTER_OPS = 4  # brightness, contrast, saturation, hue


def _uniform(low: float, high: float, size: int, generator: torch.Generator | None, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(size, generator=generator, device=device)


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
        brightness=_uniform(low, high, batch, generator, device),
        contrast=_uniform(low, high, batch, generator, device),
        saturation=_uniform(low, high, batch, generator, device),
        hue=_uniform(-min(intensity, 0.5), min(intensity, 0.5), batch, generator, device),
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


def random_translate(images: torch.Tensor, max_shift: float, generator: torch.Generator | None) -> torch.Tensor:
    """Shift every image by its own random offset up to ``max_shift`` x size, reflect-padded.

    Args:
        images: (B, C, H, W); max_shift: fraction of the side, e.g. 0.1.
    """
    if max_shift <= 0:
        return images
    batch, _, height, width = images.shape
    pad_y, pad_x = int(round(max_shift * height)), int(round(max_shift * width))
    padded = torch.nn.functional.pad(images, (pad_x, pad_x, pad_y, pad_y), mode="reflect")
    offset_y = torch.randint(0, 2 * pad_y + 1, (batch,), generator=generator, device=images.device)
    offset_x = torch.randint(0, 2 * pad_x + 1, (batch,), generator=generator, device=images.device)
    rows = offset_y[:, None] + torch.arange(height, device=images.device)
    cols = offset_x[:, None] + torch.arange(width, device=images.device)
    batch_index = torch.arange(batch, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def _box_mask(top: torch.Tensor, left: torch.Tensor, box_h: torch.Tensor, box_w: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 1, H, W) float {0, 1} of the boxes."""
    device = top.device
    ys = torch.arange(height, device=device).view(1, -1, 1)
    xs = torch.arange(width, device=device).view(1, 1, -1)
    inside = (
        (ys >= top.view(-1, 1, 1)) & (ys < (top + box_h).view(-1, 1, 1))
        & (xs >= left.view(-1, 1, 1)) & (xs < (left + box_w).view(-1, 1, 1))
    )
    return inside.unsqueeze(1).float()


def _crop_boxes(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, box_h: torch.Tensor, box_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather every image's box into one (B, C, max h, max w) buffer, top-left aligned, and the
    (B, 1, max h, max w) float mask of the pixels that belong to each box. Colour-jittering this
    buffer instead of whole images is what keeps the batched augmentation cheap."""
    _, _, height, width = images.shape
    device = images.device
    rows = torch.arange(int(box_h.max()), device=device)
    cols = torch.arange(int(box_w.max()), device=device)
    source_y = (top.view(-1, 1, 1) + rows.view(1, -1, 1)).clamp(max=height - 1).expand(-1, -1, len(cols))
    source_x = (left.view(-1, 1, 1) + cols.view(1, 1, -1)).clamp(max=width - 1).expand(-1, len(rows), -1)
    batch, channels = images.shape[:2]
    flat_index = (source_y * width + source_x).reshape(batch, 1, -1).expand(-1, channels, -1)
    buffer = images.reshape(batch, channels, -1).gather(2, flat_index).view(batch, channels, len(rows), len(cols))
    valid = (rows.view(1, -1, 1) < box_h.view(-1, 1, 1)) & (cols.view(1, 1, -1) < box_w.view(-1, 1, 1))
    return buffer, valid.unsqueeze(1).float()


def _paste_from_buffer(images: torch.Tensor, buffer: torch.Tensor, inside: torch.Tensor, buffer_y: torch.Tensor, buffer_x: torch.Tensor) -> torch.Tensor:
    """out[b, :, y, x] = buffer[b, :, buffer_y, buffer_x] where ``inside`` (B, H, W), else images."""
    batch, channels, height, width = images.shape
    buffer_w = buffer.shape[-1]
    flat_index = (buffer_y.clamp(0, buffer.shape[-2] - 1) * buffer_w + buffer_x.clamp(0, buffer_w - 1))
    flat_index = flat_index.reshape(batch, 1, -1).expand(-1, channels, -1)
    pasted = buffer.reshape(batch, channels, -1).gather(2, flat_index).view(batch, channels, height, width)
    return torch.where(inside.unsqueeze(1), pasted, images)


def _randint_below(high: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Per-element uniform integer in [0, high] (inclusive)."""
    return (torch.rand(high.shape, generator=generator, device=high.device) * (high + 1)).floor().long().clamp_max(high)


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
        area = _uniform(*self.area_ratio, batch, generator, device) * height * width
        use_high = torch.rand(batch, generator=generator, device=device) < 0.5
        aspect = torch.where(
            use_high,
            _uniform(*self.aspect_ratio_high, batch, generator, device),
            _uniform(*self.aspect_ratio_low, batch, generator, device),
        )
        patch_w = torch.sqrt(area * aspect).round().long().clamp(1, width)
        patch_h = torch.sqrt(area / aspect).round().long().clamp(1, height)
        return PatchParams(
            source_top=_randint_below(height - patch_h, generator),
            source_left=_randint_below(width - patch_w, generator),
            height=patch_h,
            width=patch_w,
            target_top=_randint_below(height - patch_h, generator),
            target_left=_randint_below(width - patch_w, generator),
            angle_deg=torch.zeros(batch, device=device),
            jitter=sample_jitter(batch, self.jitter, generator, device),
        )

    def apply(self, images: torch.Tensor, params: PatchParams) -> torch.Tensor:
        _, _, height, width = images.shape
        patch, valid = _crop_boxes(images, params.source_top, params.source_left, params.height, params.width)
        patch = color_jitter(patch, params.jitter, region=valid)
        inside = _box_mask(params.target_top, params.target_left, params.height, params.width, height, width)[:, 0].bool()
        ys = torch.arange(height, device=images.device).view(1, -1, 1)
        xs = torch.arange(width, device=images.device).view(1, 1, -1)
        buffer_y = (ys - params.target_top.view(-1, 1, 1)).expand(-1, -1, width)
        buffer_x = (xs - params.target_left.view(-1, 1, 1)).expand(-1, height, -1)
        return _paste_from_buffer(images, patch, inside, buffer_y, buffer_x)

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
        scar_w = (_uniform(*self.width_px, batch, generator, device) * scale).round().long().clamp(1, width)
        scar_h = (_uniform(*self.length_px, batch, generator, device) * scale).round().long().clamp(1, height)
        angle = _uniform(*self.rotation_deg, batch, generator, device)
        radians = torch.deg2rad(angle)
        cos, sin = radians.cos().abs(), radians.sin().abs()
        bound_w = torch.ceil(scar_w * cos + scar_h * sin).long().clamp(max=width)
        bound_h = torch.ceil(scar_w * sin + scar_h * cos).long().clamp(max=height)
        return PatchParams(
            source_top=_randint_below(height - scar_h, generator),
            source_left=_randint_below(width - scar_w, generator),
            height=scar_h,
            width=scar_w,
            target_top=_randint_below(height - bound_h, generator),  # of the rotated bounding box
            target_left=_randint_below(width - bound_w, generator),
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
        patch, valid = _crop_boxes(images, params.source_top, params.source_left, params.height, params.width)
        patch = color_jitter(patch, params.jitter, region=valid)
        inside, patch_y, patch_x = self.target_geometry(params, height, width)
        return _paste_from_buffer(images, patch, inside, patch_y, patch_x)

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


class ProxyTask:
    """A k-way classification task: view i of every base image gets label i.

    ``views[0]`` is normally ``None`` (the unaltered image). Calling the task on n base images
    returns (n * k, 3, H, W) images and (n * k,) int64 labels.
    """

    def __init__(self, views: list) -> None:
        if len(views) < 2:
            raise ValueError("a proxy task needs at least two views")
        self.views = views

    @property
    def num_classes(self) -> int:
        return len(self.views)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = [images if view is None else view(images, generator) for view in self.views]
        labels = torch.arange(self.num_classes, device=images.device).repeat_interleave(images.shape[0])
        return torch.cat(outputs), labels


class CutPaste3Way(ProxyTask):
    """normal / CutPaste / CutPaste-Scar, the paper's best task."""

    def __init__(self, cutpaste: CutPaste | None = None, scar: CutPasteScar | None = None) -> None:
        super().__init__([None, cutpaste or CutPaste(), scar or CutPasteScar()])


def random_crop(images: torch.Tensor, size: int, generator: torch.Generator | None) -> torch.Tensor:
    """A random size x size crop of every image (its own position each): (B, C, H, W) -> (B, C, size, size)."""
    batch, _, height, width = images.shape
    if size > min(height, width):
        raise ValueError(f"crop of {size} px does not fit images of {height}x{width} px")
    top = torch.randint(0, height - size + 1, (batch,), generator=generator, device=images.device)
    left = torch.randint(0, width - size + 1, (batch,), generator=generator, device=images.device)
    rows = top[:, None] + torch.arange(size, device=images.device)
    cols = left[:, None] + torch.arange(size, device=images.device)
    batch_index = torch.arange(batch, device=images.device)[:, None, None]
    return images.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


class Preprocess:
    """The ordinary augmentations applied to every view before the proxy task: random translation
    (reflect padding) and whole-image colour jitter; with ``crop_size``, a random crop first (the
    patch-level model of the paper: crop 64 x 64 of the 256 x 256 image, then CutPaste inside it)."""

    def __init__(self, max_translation: float = 0.1, jitter: float = 0.1, crop_size: int | None = None) -> None:
        self.max_translation = max_translation
        self.jitter = jitter
        self.crop_size = crop_size

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.crop_size:
            images = random_crop(images, self.crop_size, generator)
        images = random_translate(images, self.max_translation, generator)
        if self.jitter > 0:
            images = color_jitter(images, sample_jitter(images.shape[0], self.jitter, generator, images.device))
        return images


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
        inside = _box_mask(box.target_top, box.target_left, box.height, box.width, height, width).bool()
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


TASKS = ("3way", "binary", "cutpaste", "scar", "rotation", "cutout_gray", "cutout_mean", "cutout_color", "scar_color", "confetti")
_GEOMETRY_KEYS = ("area_ratio", "aspect_ratio_low", "aspect_ratio_high")
_SCAR_GEOMETRY_KEYS = ("width_px", "length_px", "rotation_deg", "reference_size")


def build_task(name: str, cutpaste: dict | None = None, scar: dict | None = None, confetti: dict | None = None) -> ProxyTask:
    """Proxy task by name.

    "3way" (the paper's default), "binary" (union), "cutpaste", "scar" (CutPaste-Scar), and the
    paper's baselines: "rotation" (4-way), "cutout_gray", "cutout_mean", "cutout_color" (box
    geometry from ``cutpaste``), "scar_color" (geometry from ``scar``), "confetti" (geometry from
    ``cutpaste``, ``confetti``: num_patches and jitter; default jitter ``cutpaste``'s).
    """
    if name not in TASKS:
        raise ValueError(f"unknown proxy task '{name}', expected one of {TASKS}")
    cutpaste, scar = dict(cutpaste or {}), dict(scar or {})
    geometry = {key: cutpaste[key] for key in _GEOMETRY_KEYS if key in cutpaste}
    if name == "rotation":
        return RotationPrediction()
    if name.startswith("cutout_"):
        view = Cutout(name.removeprefix("cutout_"), **geometry)
    elif name == "scar_color":
        view = ScarColor(**{key: scar[key] for key in _SCAR_GEOMETRY_KEYS if key in scar})
    elif name == "confetti":
        view = Confetti(**{**geometry, **({"jitter": cutpaste["jitter"]} if "jitter" in cutpaste else {}), **(confetti or {})})
    elif name == "3way":
        return CutPaste3Way(CutPaste(**cutpaste), CutPasteScar(**scar))
    elif name == "binary":
        view = CutPasteUnion(CutPaste(**cutpaste), CutPasteScar(**scar))
    else:
        view = CutPaste(**cutpaste) if name == "cutpaste" else CutPasteScar(**scar)
    return ProxyTask([None, view])

"""The ordinary augmentations every view gets before the proxy task: random crop, translation, jitter."""

from __future__ import annotations

import torch

from cutpaste.core.augment.jitter import color_jitter, sample_jitter


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


SYMMETRIES = ("none", "hflip", "dihedral")


def check_symmetry(symmetry: str) -> None:
    if symmetry not in SYMMETRIES:
        raise ValueError(f"augment.preprocess.symmetry must be one of {SYMMETRIES}, got {symmetry!r}")


def random_symmetry(images: torch.Tensor, symmetry: str, generator: torch.Generator | None) -> torch.Tensor:
    """Each image through its own random element of a symmetry group: ``hflip`` (identity or a
    left-right mirror) or ``dihedral`` (the 8 flips and quarter turns of the square; square images only)."""
    check_symmetry(symmetry)
    if symmetry == "none":
        return images
    batch, _, height, width = images.shape
    if symmetry == "dihedral" and height != width:
        raise ValueError(f"symmetry 'dihedral' needs square images, got {height}x{width} px (use 'hflip')")
    group = 2 if symmetry == "hflip" else 8
    element = torch.randint(0, group, (batch,), generator=generator, device=images.device)
    out = images.clone()
    mirror = (element % 2) == 1
    out[mirror] = out[mirror].flip(-1)
    for turns in (1, 2, 3):
        chosen = (element // 2) == turns
        if chosen.any():
            out[chosen] = torch.rot90(out[chosen], turns, dims=(-2, -1))
    return out


class Preprocess:
    """The ordinary augmentations applied to every view before the proxy task: random translation
    (reflect padding) and whole-image colour jitter; with ``crop_size``, a random crop first (the
    patch-level model of the paper: crop 64 x 64 of the 256 x 256 image, then CutPaste inside it).
    ``symmetry`` (not in the paper; ``none`` keeps its augmentations) adds a random mirror (``hflip``)
    or flip-and-quarter-turn (``dihedral``) per view: more distinct views of few training images,
    for textures and rotation-free parts; keep ``none`` for parts whose pose is fixed."""

    def __init__(self, max_translation: float = 0.1, jitter: float = 0.1, crop_size: int | None = None, symmetry: str = "none") -> None:
        check_symmetry(symmetry)
        self.max_translation = max_translation
        self.jitter = jitter
        self.crop_size = crop_size
        self.symmetry = symmetry

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.crop_size:
            images = random_crop(images, self.crop_size, generator)
        images = random_symmetry(images, self.symmetry, generator)
        images = random_translate(images, self.max_translation, generator)
        if self.jitter > 0:
            images = color_jitter(images, sample_jitter(images.shape[0], self.jitter, generator, images.device))
        return images

"""Boxes of pixels, batched: masks, gathering every image's box into one buffer, pasting from it."""

from __future__ import annotations

import torch


def box_mask(top: torch.Tensor, left: torch.Tensor, box_h: torch.Tensor, box_w: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 1, H, W) float {0, 1} of the boxes."""
    device = top.device
    ys = torch.arange(height, device=device).view(1, -1, 1)
    xs = torch.arange(width, device=device).view(1, 1, -1)
    inside = (
        (ys >= top.view(-1, 1, 1)) & (ys < (top + box_h).view(-1, 1, 1))
        & (xs >= left.view(-1, 1, 1)) & (xs < (left + box_w).view(-1, 1, 1))
    )
    return inside.unsqueeze(1).float()


def crop_boxes(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, box_h: torch.Tensor, box_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


def paste_from_buffer(images: torch.Tensor, buffer: torch.Tensor, inside: torch.Tensor, buffer_y: torch.Tensor, buffer_x: torch.Tensor) -> torch.Tensor:
    """out[b, :, y, x] = buffer[b, :, buffer_y, buffer_x] where ``inside`` (B, H, W), else images."""
    batch, channels, height, width = images.shape
    buffer_w = buffer.shape[-1]
    flat_index = (buffer_y.clamp(0, buffer.shape[-2] - 1) * buffer_w + buffer_x.clamp(0, buffer_w - 1))
    flat_index = flat_index.reshape(batch, 1, -1).expand(-1, channels, -1)
    pasted = buffer.reshape(batch, channels, -1).gather(2, flat_index).view(batch, channels, height, width)
    return torch.where(inside.unsqueeze(1), pasted, images)

"""Per-image random numbers drawn as one tensor op from an explicit ``torch.Generator``."""

from __future__ import annotations

import torch


def uniform(low: float, high: float, size: int, generator: torch.Generator | None, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(size, generator=generator, device=device)


def randint_below(high: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Per-element uniform integer in [0, high] (inclusive)."""
    return (torch.rand(high.shape, generator=generator, device=high.device) * (high + 1)).floor().long().clamp_max(high)

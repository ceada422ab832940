"""The proxy-task contract: k views of every base image, view i labelled i."""

from __future__ import annotations

import torch


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

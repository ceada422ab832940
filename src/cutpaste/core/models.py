"""Encoder + MLP projection head + linear classifier for the CutPaste proxy task."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKBONES = ("resnet18",)


def build_encoder(backbone: str = "resnet18") -> tuple[nn.Module, int]:
    """A randomly initialised torchvision encoder with its classifier removed, and its feature width."""
    if backbone == "resnet18":
        encoder = torchvision.models.resnet18(weights=None)
        width = encoder.fc.in_features
        encoder.fc = nn.Identity()
        return encoder, width
    raise ValueError(f"unknown backbone '{backbone}', expected one of {BACKBONES}")


class CutPasteNet(nn.Module):
    """ResNet encoder, MLP projection head (Linear-BN-ReLU blocks), linear classifier.

    Inputs are (B, 3, H, W) float in [0, 1]; ImageNet normalisation happens inside, so every caller
    (training, feature extraction, inference) feeds the same thing.

    Args:
        num_classes: proxy-task classes (3 for 3-way).
        head_dims: widths of the projection head's layers.
    """

    def __init__(self, num_classes: int = 3, head_dims: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512, 512, 128), backbone: str = "resnet18") -> None:
        super().__init__()
        self.encoder, self.feature_dim = build_encoder(backbone)
        layers: list[nn.Module] = []
        width = self.feature_dim
        for out_width in head_dims:
            layers += [nn.Linear(width, out_width, bias=False), nn.BatchNorm1d(out_width), nn.ReLU(inplace=True)]
            width = out_width
        self.head = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.pixel_mean) / self.pixel_std

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, feature_dim) average-pooled encoder features (the GDE's input)."""
        return self.encoder(self.normalize(images))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (logits (B, num_classes), pooled features (B, feature_dim))."""
        features = self.embed(images)
        return self.classifier(self.head(features)), features

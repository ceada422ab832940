"""Encoder + MLP projection head + linear classifier for the CutPaste proxy task.

Backbones: torchvision ``resnet18`` and ``efficientnet_b4``, randomly initialised or with ImageNet
weights (torchvision's weight enums, or a local state_dict file). Feature taps:

* ``"pool"``: global average pool of the last feature map (ResNet-18: 512-d, EfficientNet-B4: 1792-d).
* ``"level<k>"``: global average pool of the output of block group ``k``, numbered as in Rippel et
  al. (ICPR 2020), whose "level 7" the CutPaste paper uses (its appendix A.4). EfficientNet-B4:
  ``features[k]`` of torchvision's ``efficientnet_b4()`` (0: stem conv, 1..7: the seven MBConv stages,
  8: the final 1x1 conv to 1792 channels), so **level 7 = ``features[7]``**, the last MBConv stage
  (448 channels, stride 32) before the 1x1 conv head. ResNet-18: 0: stem (conv1, bn1, relu, maxpool),
  1..4: ``layer1``..``layer4``.
"""

from __future__ import annotations

import re
import socket
import urllib.error
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKBONES = ("resnet18", "efficientnet_b4")
# torchvision weight enums of the ImageNet weights, by backbone.
IMAGENET_WEIGHTS = {"resnet18": "ResNet18_Weights.IMAGENET1K_V1", "efficientnet_b4": "EfficientNet_B4_Weights.IMAGENET1K_V1"}
EFFICIENTNET_LEVEL7_INDEX = 7  # torchvision efficientnet_b4().features[7]: the 7th MBConv stage, before the 1x1 conv head
DOWNLOAD_TIMEOUT_S = 20.0


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights were requested but cannot be loaded (no file, no download)."""


def imagenet_weights_file(backbone: str) -> tuple[str, Path]:
    """The torchvision download URL of a backbone's ImageNet weights and its torch hub cache path."""
    from torchvision.models import get_weight

    if backbone not in IMAGENET_WEIGHTS:
        raise ValueError(f"unknown backbone '{backbone}', expected one of {BACKBONES}")
    url = get_weight(IMAGENET_WEIGHTS[backbone]).url
    return url, Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _check_pretrained(pretrained: bool | str | None) -> bool:
    if pretrained in (False, None, "none", "false", ""):
        return False
    if pretrained in (True, "imagenet"):
        return True
    raise ValueError(f"pretrained must be false or 'imagenet', got {pretrained!r}")


def _load_weights_file(path: Path, backbone: str) -> dict[str, torch.Tensor]:
    url, cached = imagenet_weights_file(backbone)
    if not path.is_file():
        raise PretrainedWeightsError(
            f"{path}: weights file not found. Download {url} and put it at {path} (weights_path), "
            f"or leave weights_path empty to use torchvision's cache {cached}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise PretrainedWeightsError(f"{path}: not a loadable torch state_dict ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict) or not state or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise PretrainedWeightsError(f"{path}: expected a torchvision {backbone} state_dict (parameter name -> tensor), got {type(state).__name__}")
    return state


def _download_imagenet_state(backbone: str, timeout_s: float) -> dict[str, torch.Tensor]:
    """ImageNet weights through torchvision's weight enum: the torch hub cache, else a download."""
    from torchvision.models import get_weight

    url, cached = imagenet_weights_file(backbone)
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)  # urllib has no other hook; an offline machine fails fast instead of hanging
    try:
        return get_weight(IMAGENET_WEIGHTS[backbone]).get_state_dict(progress=True, check_hash=True, weights_only=True)
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        raise PretrainedWeightsError(
            f"ImageNet weights for {backbone} are not available: {cached} does not exist and downloading {url} failed ({error}). "
            f"On a machine with internet, download {Path(cached).name} and either put it at {cached} or set weights_path to its location"
        ) from error
    finally:
        socket.setdefaulttimeout(previous_timeout)


def pretrained_state_dict(backbone: str, weights_path: str | Path | None = None, download_timeout_s: float = DOWNLOAD_TIMEOUT_S) -> dict[str, torch.Tensor]:
    """The torchvision state_dict of a backbone's ImageNet weights (classifier included).

    From ``weights_path`` when given (loaded with ``weights_only=True``), else from torchvision's
    weight enum (torch hub cache first, then a download).

    Raises:
        PretrainedWeightsError: the file is missing or unreadable, or there is no cached copy and
            the download fails; the message names the file to supply and where to put it.
    """
    if weights_path:
        return _load_weights_file(Path(weights_path), backbone)
    return _download_imagenet_state(backbone, download_timeout_s)


def torchvision_backbone(backbone: str) -> nn.Module:
    """The randomly initialised torchvision model of a backbone, classifier included."""
    if backbone == "resnet18":
        return torchvision.models.resnet18(weights=None)
    if backbone == "efficientnet_b4":
        return torchvision.models.efficientnet_b4(weights=None)
    raise ValueError(f"unknown backbone '{backbone}', expected one of {BACKBONES}")


def encoder_stages(encoder: nn.Module, backbone: str) -> list[nn.Module]:
    """The encoder's block groups in order; ``level<k>`` is the output of stage ``k`` (see module docstring)."""
    if backbone == "resnet18":
        return [nn.Sequential(encoder.conv1, encoder.bn1, encoder.relu, encoder.maxpool), encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4]
    if backbone == "efficientnet_b4":
        return list(encoder.features)
    raise ValueError(f"unknown backbone '{backbone}', expected one of {BACKBONES}")


def tap_level(backbone: str, feature_tap: str) -> int | None:
    """None for ``"pool"``, else the block-group index of ``"level<k>"`` (validated for the backbone)."""
    if feature_tap == "pool":
        return None
    match = re.fullmatch(r"level(\d+)", str(feature_tap))
    levels = 5 if backbone == "resnet18" else 9
    if match is None or int(match.group(1)) >= levels:
        raise ValueError(f"feature_tap must be 'pool' or 'level0'..'level{levels - 1}' for {backbone}, got '{feature_tap}'")
    return int(match.group(1))


def _stage_width(stage: nn.Module) -> int:
    """Output channels of a block group: its last BatchNorm's width."""
    norms = [module for module in stage.modules() if isinstance(module, nn.BatchNorm2d)]
    return norms[-1].num_features


class LevelTap(nn.Module):
    """Runs the encoder's block groups up to ``level`` and global-average-pools: (B, 3, H, W) -> (B, C)."""

    def __init__(self, stages: list[nn.Module], level: int) -> None:
        super().__init__()
        self.stages = nn.Sequential(*stages[: level + 1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.stages(images).mean((2, 3))


def build_encoder(backbone: str = "resnet18", pretrained: bool | str = False, weights_path: str | Path | None = None,
                  feature_tap: str = "pool") -> tuple[nn.Module, int]:
    """A torchvision encoder with its classifier removed, and the width of its output features.

    Args:
        backbone: "resnet18" or "efficientnet_b4".
        pretrained: False (random init) or "imagenet".
        weights_path: local torchvision state_dict file for the ImageNet weights (else torchvision's
            weight enum: torch hub cache, then download).
        feature_tap: "pool" -> the torchvision module itself (ResNet with ``fc`` = Identity,
            EfficientNet with ``classifier`` = Identity), pooled features of the last map;
            "level<k>" -> a :class:`LevelTap` on the first k+1 block groups.

    Raises:
        PretrainedWeightsError: pretrained weights asked for and not available (never a silent random init).
    """
    model = torchvision_backbone(backbone)
    level = tap_level(backbone, feature_tap)
    if _check_pretrained(pretrained):
        state = pretrained_state_dict(backbone, weights_path)
        source = weights_path or imagenet_weights_file(backbone)[1]
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as error:  # a shape mismatch
            raise PretrainedWeightsError(f"{source}: not a torchvision {backbone} state_dict ({' '.join(str(error).split())[:400]})") from error
        if missing or unexpected:
            raise PretrainedWeightsError(f"{source}: not a torchvision {backbone} state_dict "
                                         f"(missing keys: {missing[:5]}, unexpected keys: {unexpected[:5]})")
    if backbone == "resnet18":
        width = model.fc.in_features
        model.fc = nn.Identity()
    else:
        width = model.classifier[-1].in_features
        model.classifier = nn.Identity()
    if level is None:
        return model, width
    stages = encoder_stages(model, backbone)
    return LevelTap(stages, level), _stage_width(stages[level])


class CutPasteNet(nn.Module):
    """Encoder, MLP projection head (Linear-BN-ReLU blocks), linear classifier.

    Inputs are (B, 3, H, W) float in [0, 1]; ImageNet normalisation happens inside, so every caller
    (training, feature extraction, inference) feeds the same thing. The head sits on the pooled
    features of the last map; ``embed`` returns the features at ``feature_tap`` (the GDE's input).

    Args:
        num_classes: proxy-task classes (3 for 3-way).
        head_dims: widths of the projection head's layers.
        backbone: "resnet18" or "efficientnet_b4".
        pretrained, weights_path: ImageNet initialisation of the encoder (see :func:`build_encoder`).
        feature_tap: "pool" or "level<k>"; may be changed after construction.
    """

    def __init__(self, num_classes: int = 3, head_dims: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512, 512, 128), backbone: str = "resnet18",
                 pretrained: bool | str = False, weights_path: str | Path | None = None, feature_tap: str = "pool") -> None:
        super().__init__()
        tap_level(backbone, feature_tap)
        self.backbone = backbone
        self.feature_tap = feature_tap
        self.encoder, self.feature_dim = build_encoder(backbone, pretrained, weights_path)
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

    def tap_width(self, feature_tap: str | None = None) -> int:
        """Width of the features at ``feature_tap`` (default: this network's tap)."""
        level = tap_level(self.backbone, feature_tap or self.feature_tap)
        return self.feature_dim if level is None else _stage_width(encoder_stages(self.encoder, self.backbone)[level])

    def embed(self, images: torch.Tensor, feature_tap: str | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, D) average-pooled features at ``feature_tap`` (default: this
        network's tap; "pool": D = ``feature_dim``)."""
        level = tap_level(self.backbone, feature_tap or self.feature_tap)
        normalized = self.normalize(images)
        if level is None:
            return self.encoder(normalized)
        features = normalized
        for stage in encoder_stages(self.encoder, self.backbone)[: level + 1]:
            features = stage(features)
        return features.mean((2, 3))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (logits (B, num_classes), pooled features of the last map (B, feature_dim))."""
        features = self.encoder(self.normalize(images))
        return self.classifier(self.head(features)), features

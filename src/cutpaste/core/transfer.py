"""Fine-tuning a pretrained encoder with a proxy task, the way the CutPaste paper does (section 4.3, Table 3).

Two phases, both with :class:`~cutpaste.core.train.Trainer`:

1. **head only**: the encoder is frozen (no gradients, eval mode) and only the projection head and
   classifier learn (paper: 10 epochs at lr 0.03);
2. **all layers**: the encoder learns too (paper: 64 epochs at lr 1e-4).

The encoder's BatchNorm layers stay frozen throughout: eval mode, so their running mean and variance
keep the pretrained statistics, and ``requires_grad=False`` on their affine weights. The projection
head's BatchNorm1d layers are new and train normally. An epoch is ``steps_per_epoch`` steps (paper: 256).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from cutpaste.core.augment import Preprocess, ProxyTask
from cutpaste.core.train import TrainConfig, Trainer, warn_if_unlearned

logger = logging.getLogger(__name__)


@dataclass
class FineTuneConfig:
    """The paper's fine-tuning schedule (defaults) and the shared optimisation settings."""

    head_epochs: int = 10
    head_lr: float = 0.03
    full_epochs: int = 64
    full_lr: float = 1e-4
    steps_per_epoch: int = 256
    batch_size: int = 24
    momentum: float = 0.9
    weight_decay: float = 3e-5
    freeze_batchnorm: bool = True
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    memory_format: str = "auto"
    checkpoint_every: int = 500

    def phase_config(self, phase: str) -> TrainConfig:
        """The :class:`TrainConfig` of phase "head" or "full" (one cosine cycle per phase)."""
        epochs, lr = (self.head_epochs, self.head_lr) if phase == "head" else (self.full_epochs, self.full_lr)
        return TrainConfig(steps=int(epochs) * int(self.steps_per_epoch), batch_size=self.batch_size, lr=lr, momentum=self.momentum,
                           weight_decay=self.weight_decay, seed=self.seed, device=self.device, precision=self.precision,
                           memory_format=self.memory_format, checkpoint_every=self.checkpoint_every)


def batchnorm_layers(module: nn.Module) -> list[nn.Module]:
    """Every BatchNorm layer (1d, 2d, 3d) inside ``module``."""
    return [layer for layer in module.modules() if isinstance(layer, nn.modules.batchnorm._BatchNorm)]


class FrozenModules(nn.Module):
    """Wraps a network for training while keeping some of its sub-modules frozen.

    ``frozen`` modules get ``requires_grad=False`` and stay in eval mode even when the trainer calls
    ``train()`` (for BatchNorm: running statistics are used, never updated; for the whole encoder:
    no dropout or stochastic depth either). Forward is the wrapped network's.
    """

    def __init__(self, network: nn.Module, frozen: list[nn.Module]) -> None:
        super().__init__()
        self.network = network
        self._frozen = list(frozen)  # a plain list: not registered twice as sub-modules
        for module in self._frozen:
            module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> FrozenModules:
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    def forward(self, images: torch.Tensor):
        return self.network(images)


def _phase_modules(network: nn.Module, phase: str, freeze_batchnorm: bool) -> list[nn.Module]:
    network.requires_grad_(True)
    if phase == "head":
        return [network.encoder]
    return batchnorm_layers(network.encoder) if freeze_batchnorm else []


class DivergedError(FloatingPointError):
    """The proxy-task loss became NaN or infinite during fine-tuning."""


def _stop_if_diverged(phase: str, lr: float):
    def check(record: dict) -> None:
        if not math.isfinite(record["loss"]):
            raise DivergedError(f"fine-tuning phase '{phase}' diverged: loss {record['loss']} at step {record['step']} (lr {lr:g}); "
                                "lower the phase's learning rate, or check the pretrained weights (features near zero or huge)")

    return check


def fine_tune(network: nn.Module, images: np.ndarray, task: ProxyTask, preprocess: Preprocess, config: FineTuneConfig,
              checkpoint_dir: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Fine-tune ``network`` (a :class:`~cutpaste.core.models.CutPasteNet`) in place: head only, then all layers.

    Args:
        images: (N, H, W, 3) uint8 normal training images.
        checkpoint_dir: each phase checkpoints to ``<dir>/head.pt`` and ``<dir>/full.pt`` and resumes from
            there (same settings and images only); None disables checkpoints.
    Returns:
        History with one row per step: step (counted across both phases), loss, accuracy, lr, phase.

    Raises:
        DivergedError: the loss became NaN or infinite (stops at that step).
    """
    histories = []
    offset = 0
    for phase in ("head", "full"):
        train_config = config.phase_config(phase)
        if train_config.steps <= 0:
            continue
        frozen = _phase_modules(network, phase, config.freeze_batchnorm)
        wrapped = FrozenModules(network, frozen)
        trainable = sum(parameter.numel() for parameter in network.parameters() if parameter.requires_grad)
        logger.info("fine-tuning phase '%s': %d steps at lr %g, %d trainable parameters, %d frozen modules",
                    phase, train_config.steps, train_config.lr, trainable, len(frozen))
        checkpoint = Path(checkpoint_dir) / f"{phase}.pt" if checkpoint_dir else None
        trainer = Trainer(wrapped, task, preprocess, train_config, checkpoint)
        history = trainer.fit(images, progress=progress, callback=_stop_if_diverged(phase, train_config.lr))
        history["step"] += offset
        history["phase"] = phase
        offset += train_config.steps
        histories.append(history)
    network.requires_grad_(True)
    network.eval()
    if not histories:
        return pd.DataFrame(columns=["step", "loss", "accuracy", "lr", "phase"])
    warn_if_unlearned(histories[-1], task.num_classes, f"fine-tuning phase '{histories[-1]['phase'].iloc[0]}'")
    return pd.concat(histories, ignore_index=True)

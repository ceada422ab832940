"""Proxy-task training loop: device placement, bf16 autocast, channels_last, checkpoints, progress.

The category's images live on the training device as one uint8 tensor; each step samples base
images by index and augments them there, batched. No DataLoader, no per-image PIL work.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from cutpaste.core.augment import Preprocess, ProxyTask

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation settings; defaults are the paper's except ``steps`` (paper: 256 x 256)."""

    steps: int = 65536
    batch_size: int = 96
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 3e-5
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    memory_format: str = "auto"
    checkpoint_every: int = 500
    warmup_steps: int = 0  # linear lr warm-up from lr / 100 before the cosine decay (paper: none)


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> CUDA if available, then MPS, then CPU; otherwise the named device."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: "auto" -> bf16 on CUDA (when supported) and on CPUs with fast bf16, else None (fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"precision must be auto, fp32 or bf16, got '{precision}'")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


def resolve_memory_format(memory_format: str, device: torch.device, dtype: torch.dtype | None) -> torch.memory_format:
    """"auto" -> channels_last on CUDA and whenever bf16 runs on the CPU, else contiguous."""
    if memory_format == "channels_last":
        return torch.channels_last
    if memory_format == "contiguous":
        return torch.contiguous_format
    if memory_format != "auto":
        raise ValueError(f"memory_format must be auto, channels_last or contiguous, got '{memory_format}'")
    if device.type == "cuda" or dtype is not None:
        return torch.channels_last
    return torch.contiguous_format


def images_to_tensor(images: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) uint8 on ``device`` (pinned first when copying to CUDA)."""
    tensor = torch.as_tensor(images)
    if tensor.dtype != torch.uint8 or tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) uint8 images, got {tuple(tensor.shape)} {tensor.dtype}")
    tensor = tensor.permute(0, 3, 1, 2).contiguous()
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def _save_atomic(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def fingerprint(images: torch.Tensor) -> str:
    """Shape and content hash of the training images (a checkpoint resumes only on the same images)."""
    digest = hashlib.sha1(images.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
    return f"{tuple(images.shape)}:{digest}"


def state_fingerprint(module: nn.Module) -> str:
    """Short content hash of a module's parameters and buffers (which initial weights a run started from)."""
    digest = hashlib.sha1()
    for name, value in module.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())  # bf16 too
    return digest.hexdigest()[:12]


def make_schedule(optimizer: torch.optim.Optimizer, steps: int, warmup_steps: int = 0) -> torch.optim.lr_scheduler.LRScheduler:
    """One cycle of cosine decay over ``steps``, after ``warmup_steps`` of linear warm-up when > 0."""
    warmup_steps = min(max(0, int(warmup_steps)), max(0, steps - 1))
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps - warmup_steps))
    if warmup_steps == 0:
        return cosine
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=warmup_steps)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


class Trainer:
    """Trains a model on a proxy task from normal images only.

    Args:
        model: returns (logits, features) for (B, 3, H, W) float [0, 1] input.
        task: the proxy task (e.g. :class:`~cutpaste.core.augment.CutPaste3Way`).
        preprocess: augmentations applied to base images before the task.
        config: optimisation and device settings.
        checkpoint_path: where a checkpoint is written every ``config.checkpoint_every`` steps and
            read back on restart (same config, same images and same initial weights only); None
            disables checkpoints.
    """

    def __init__(self, model: nn.Module, task: ProxyTask, preprocess: Preprocess, config: TrainConfig, checkpoint_path: str | Path | None = None) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_precision(config.precision, self.device)
        self.memory_format = resolve_memory_format(config.memory_format, self.device, self.dtype)
        self.init_fingerprint = state_fingerprint(model)  # random seed or warm start: resume only from the same start
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.task = task
        self.preprocess = preprocess
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.base_per_step = max(1, config.batch_size // task.num_classes)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        self.scheduler = make_schedule(self.optimizer, config.steps, config.warmup_steps)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.step = 0
        self.history: list[dict] = []
        self.data_fingerprint = ""

    def _checkpoint_state(self) -> dict:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "generator": self.generator.get_state(),
            "step": self.step, "history": self.history, "config": asdict(self.config), "data": self.data_fingerprint,
            "init": self.init_fingerprint,
        }

    def _try_resume(self) -> None:
        if self.checkpoint_path is None or not self.checkpoint_path.is_file():
            return
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        if (state.get("config") != asdict(self.config) or state.get("data") != self.data_fingerprint
                or state.get("init") != self.init_fingerprint):
            logger.warning("%s: checkpoint was made with other settings, other images or other initial weights; starting from scratch",
                           self.checkpoint_path)
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"].cpu())
        self.step = int(state["step"])
        self.history = list(state["history"])
        logger.info("resumed from %s at step %d of %d", self.checkpoint_path, self.step, self.config.steps)

    def train_step(self, images_uint8: torch.Tensor) -> dict:
        """One optimisation step on a batch sampled from (N, 3, H, W) uint8 images on the device."""
        self.model.train()
        index = torch.randint(0, images_uint8.shape[0], (self.base_per_step,), generator=self.generator, device=self.device)
        base = images_uint8[index].float().div_(255.0)
        base = self.preprocess(base, self.generator)
        batch, labels = self.task(base, self.generator)
        batch = batch.contiguous(memory_format=self.memory_format)
        with torch.autocast(device_type=self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            logits, _ = self.model(batch)
            loss = nn.functional.cross_entropy(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        accuracy = (logits.argmax(1) == labels).float().mean()
        return {"step": self.step, "loss": float(loss.detach()), "accuracy": float(accuracy), "lr": self.scheduler.get_last_lr()[0]}

    def fit(self, images: np.ndarray | torch.Tensor, progress: bool = True, callback: Callable[[dict], None] | None = None) -> pd.DataFrame:
        """Train to ``config.steps`` (resuming from a checkpoint when one matches).

        Args:
            images: (N, H, W, 3) uint8 normal training images.
        Returns:
            History with one row per step: step, loss, accuracy, lr.
        """
        images_uint8 = images_to_tensor(images, self.device)
        self.data_fingerprint = fingerprint(images_uint8)
        self._try_resume()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.config.steps, initial=self.step, desc="train", unit="step")
        while self.step < self.config.steps:
            record = self.train_step(images_uint8)
            self.history.append(record)
            if callback:
                callback(record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.2f}")
            if self.checkpoint_path and (self.step % self.config.checkpoint_every == 0 or self.step == self.config.steps):
                _save_atomic(self._checkpoint_state(), self.checkpoint_path)
        if bar is not None:
            bar.close()
        self.model.eval()
        return pd.DataFrame(self.history, columns=["step", "loss", "accuracy", "lr"])


LEARNED_MARGIN = 0.05  # proxy-task training accuracy at most this far above chance at the end: the network did not learn


def final_accuracy(history: pd.DataFrame, fraction: float = 0.1) -> float:
    """Mean training accuracy of the proxy task over the last ``fraction`` of the steps (at least one step)."""
    if len(history) == 0:
        return float("nan")
    return float(history["accuracy"].tail(max(1, int(round(len(history) * fraction)))).mean())


def warn_if_unlearned(history: pd.DataFrame, num_classes: int, what: str) -> bool:
    """Log a warning and return True when the proxy task ended near chance: training accuracy over the
    last tenth of the steps at most ``LEARNED_MARGIN`` above 1 / ``num_classes``. Such a network's
    features are close to its random initialisation, and so are the densities and maps built on them."""
    accuracy, chance = final_accuracy(history), 1.0 / num_classes
    if not accuracy > chance + LEARNED_MARGIN:
        logger.warning("%s: the proxy task ended near chance (training accuracy %.2f over the last tenth of %d steps, chance %.2f): "
                       "its features are close to untrained; give it more steps", what, accuracy, len(history), chance)
        return True
    return False


@dataclass(frozen=True)
class InferenceSetup:
    """Where and how a prepared model runs: device, autocast dtype (None = fp32), memory format."""

    device: torch.device
    dtype: torch.dtype | None
    memory_format: torch.memory_format


def prepare_for_inference(model: nn.Module, device: str = "auto", precision: str = "auto", memory_format: str = "auto") -> InferenceSetup:
    """Move ``model`` (in place) to its device and memory format and put it in eval mode.

    Done outside inference mode, so the parameters stay ordinary tensors and the model can still be
    trained afterwards. ``Module.to`` rewrites every parameter's ``.data``: it must never run while
    another thread runs the model (see :meth:`cutpaste.core.detector.Detector.prepare`).
    """
    torch_device = resolve_device(device)
    dtype = resolve_precision(precision, torch_device)
    fmt = resolve_memory_format(memory_format, torch_device, dtype)
    model.to(torch_device, memory_format=fmt).eval()
    return InferenceSetup(torch_device, dtype, fmt)


def embed_images(model: nn.Module, images: np.ndarray | torch.Tensor, setup: InferenceSetup, batch_size: int = 64) -> np.ndarray:
    """Pooled features of (N, H, W, 3) uint8 images -> (N, D) float32, with a model already prepared
    by :func:`prepare_for_inference`. Reads the model only (no move, no conversion, no mode change),
    so threads may share one prepared model."""
    chunks = []
    with torch.inference_mode():
        images_uint8 = images_to_tensor(images, setup.device)
        for start in range(0, images_uint8.shape[0], batch_size):
            batch = images_uint8[start : start + batch_size].float().div_(255.0).contiguous(memory_format=setup.memory_format)
            with torch.autocast(device_type=setup.device.type, dtype=setup.dtype or torch.float32, enabled=setup.dtype is not None):
                chunks.append(model.embed(batch).float().cpu())
    return torch.cat(chunks).numpy()


def extract_features(model: nn.Module, images: np.ndarray | torch.Tensor, batch_size: int = 64, device: str = "auto", precision: str = "auto", memory_format: str = "auto") -> np.ndarray:
    """Pooled features of (N, H, W, 3) uint8 images in eval mode -> (N, D) float32.

    The model is moved (device, memory format) first, outside inference mode, so its parameters stay
    ordinary tensors and it can still be trained afterwards. Not for a model shared by threads:
    prepare it once with :func:`prepare_for_inference` and call :func:`embed_images`.
    """
    setup = prepare_for_inference(model, device, precision, memory_format)
    return embed_images(model, images, setup, batch_size)

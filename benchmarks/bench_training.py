"""Training-step throughput and batched-augmentation speed-up, measured in one run on this machine.

(a) the project's full 3-way training step (augmentation on the device, auto precision and memory
    format: bf16 autocast + channels_last on CPUs with native bf16 and on CUDA) vs
(b) a plain torchvision ResNet-18 forward + backward + SGD step on the same batch shape, fp32,
    default memory format.
Also: batched augmentation (preprocess + 3-way) vs the per-image reference of tests/oracle.py.

    python benchmarks/bench_training.py [--size 256] [--batch 96] [--steps 5]

Prints images per second and the ratios; goals: (a)/(b) >= 3.0, augmentation >= 5x.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from oracle import cutpaste_reference, jitter_patch, scar_reference, translate_reference  # noqa: E402

from cutpaste.core.augment import CutPaste3Way, Preprocess, sample_jitter  # noqa: E402
from cutpaste.core.models import CutPasteNet  # noqa: E402
from cutpaste.core.train import TrainConfig, Trainer, images_to_tensor  # noqa: E402


def _time(step, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def plain_step_seconds(size: int, batch: int, repeats: int, fast: bool = False) -> float:
    """A bare torchvision ResNet-18 step; ``fast``: bf16 autocast + channels_last (no augmentation, no head)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, weight_decay=3e-5)
    images, labels = torch.rand(batch, 3, size, size), torch.randint(0, 3, (batch,))
    if fast:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
            loss = torch.nn.functional.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return _time(step, repeats)


def project_step_seconds(size: int, batch: int, repeats: int, precision: str = "auto") -> tuple[float, Trainer]:
    torch.manual_seed(0)
    images = np.random.default_rng(0).integers(0, 256, (64, size, size, 3), dtype=np.uint8)
    config = TrainConfig(steps=10**6, batch_size=batch, precision=precision, device="auto")
    trainer = Trainer(CutPasteNet(num_classes=3), CutPaste3Way(), Preprocess(), config)
    on_device = images_to_tensor(images, trainer.device)
    return _time(lambda: trainer.train_step(on_device), repeats), trainer


def per_image_augment(base: torch.Tensor, task: CutPaste3Way, generator: torch.Generator) -> torch.Tensor:
    """The reference: preprocess and both augmentations one image at a time (same random draws)."""
    batch, _, height, width = base.shape
    pad_y, pad_x = round(0.1 * height), round(0.1 * width)
    offsets_y = torch.randint(0, 2 * pad_y + 1, (batch,), generator=generator)
    offsets_x = torch.randint(0, 2 * pad_x + 1, (batch,), generator=generator)
    jitter = sample_jitter(batch, 0.1, generator, "cpu")
    pre = []
    for index in range(batch):
        image = translate_reference(base[index], int(offsets_y[index]), int(offsets_x[index]), pad_y, pad_x)
        factors = (float(jitter.brightness[index]), float(jitter.contrast[index]), float(jitter.saturation[index]), float(jitter.hue[index]))
        pre.append(jitter_patch(image, factors, jitter.order[index].tolist()))
    pre = torch.stack(pre)
    cutpaste, scar = task.views[1], task.views[2]
    return torch.cat([pre, cutpaste_reference(pre, cutpaste.sample(pre, generator)), scar_reference(pre, scar.sample(pre, generator))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, size {args.size}, batch {args.batch} (3-way)")

    plain = plain_step_seconds(args.size, args.batch, args.steps)
    project, trainer = project_step_seconds(args.size, args.batch, args.steps)
    print(f"(b) plain ResNet-18 step, fp32, contiguous      : {args.batch / plain:7.1f} img/s")
    print(f"(a) project 3-way step incl. augmentation ({trainer.device.type}, {trainer.dtype or 'fp32'}, "
          f"{'channels_last' if trainer.memory_format == torch.channels_last else 'contiguous'}): {args.batch / project:7.1f} img/s")
    print(f"ratio (a)/(b) = {plain / project:.2f}  (goal >= 3.0)")
    bare_fast = plain_step_seconds(args.size, args.batch, args.steps, fast=True)
    print(f"(c) bare ResNet-18 step, bf16 autocast + channels_last: {args.batch / bare_fast:7.1f} img/s; "
          f"(c)/(b) = {plain / bare_fast:.2f}: the ceiling of the precision/format change here; (a)/(c) = {bare_fast / project:.2f}")

    task = CutPaste3Way()
    base = torch.rand(args.batch // 3, 3, args.size, args.size)
    preprocess = Preprocess()
    batched = _time(lambda: task(preprocess(base, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(0)), args.steps, warmup=1)
    reference = _time(lambda: per_image_augment(base, task, torch.Generator().manual_seed(0)), args.steps, warmup=1)
    print(f"augmentation, {args.batch} views: batched {1000 * batched:.1f} ms, per-image reference {1000 * reference:.1f} ms, "
          f"speed-up {reference / batched:.2f}x  (goal >= 5)")
    print(f"augmentation share of the project step: {100 * batched / project:.0f} %")


if __name__ == "__main__":
    main()

"""Write a randomly initialised torchvision state_dict in the format of the ImageNet weight files.

Lets ``kedro run --pipelines=transfer`` run end to end on a machine without internet (the numbers then
measure time, not transfer learning):

    python benchmarks/make_random_weights.py --backbone efficientnet_b4 --out data/06_models/pretrained/random_efficientnet_b4.pth
    kedro run --pipelines=transfer --params=transfer.model.weights_path=data/06_models/pretrained/random_efficientnet_b4.pth

A freshly initialised network has BatchNorm running statistics of mean 0 and variance 1; in eval mode
(as pretrained encoders are used, and as the fine-tuning keeps them) the activations of a deep random
network then shrink layer after layer (EfficientNet-B4's pooled features come out near 1e-14) and a
BatchNorm projection head on top of them diverges. Like a trained network, the file's running
statistics are therefore estimated on a few batches of standard-normal inputs (``--calibration-batches``,
0 keeps the untouched init).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from cutpaste.core.models import BACKBONES, torchvision_backbone


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, batches: int, batch_size: int = 16, image_size: int = 64) -> None:
    """Running mean and variance of every BatchNorm layer estimated (cumulative average) on random inputs."""
    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    for _ in range(batches):
        model(torch.randn(batch_size, 3, image_size, image_size))
    for norm in norms:
        norm.momentum = 0.1
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", choices=BACKBONES, default="efficientnet_b4")
    parser.add_argument("--out", type=Path, required=True, help="state_dict file to write (data/06_models/ is git-ignored)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration-batches", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = torchvision_backbone(args.backbone)
    calibrate_batchnorm(model, args.calibration_batches)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    print(f"wrote random-init {args.backbone} weights to {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()

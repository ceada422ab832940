"""Does the fast precision keep the detector's quality? Image AUROC of the default configuration
trained in fp32 vs in the auto precision (bf16 autocast + channels_last here), same seed, same data,
measured in one run; also the wall time of each.

    python benchmarks/bench_precision_auroc.py --data-root data/01_raw/demo --categories brick grass gravel
    python benchmarks/bench_precision_auroc.py --data-root ../shared/data/piped --categories PA_BDP01_TL PA_BFT01_TL

Settings come from conf/base (working size, steps, batch, augmentation, GDE); --steps overrides.
Goal: |AUROC(auto) - AUROC(fp32)| <= 0.01.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from kedro.config import OmegaConfigLoader

from cutpaste.core.augment import Preprocess, build_task
from cutpaste.core.data import load_category
from cutpaste.core.density import GaussianDensity
from cutpaste.core.metrics import image_auroc
from cutpaste.core.models import CutPasteNet
from cutpaste.core.train import TrainConfig, Trainer, extract_features

PROJECT = Path(__file__).resolve().parents[1]


def run(data, params: dict, precision: str, steps: int | None) -> tuple[float, float]:
    training = {key: value for key, value in params["training"].items() if key in TrainConfig.__dataclass_fields__}
    training.update(precision=precision, checkpoint_every=10**9, **({"steps": steps} if steps else {}))
    config = TrainConfig(**training)
    augment = params["augment"]
    torch.manual_seed(config.seed)
    task = build_task(augment["task"], augment["cutpaste"], augment["scar"])
    model = CutPasteNet(task.num_classes, tuple(params["model"]["head_dims"]), params["model"]["backbone"])
    start = time.perf_counter()
    Trainer(model, task, Preprocess(**augment["preprocess"]), config).fit(data.train_images, progress=False)
    kwargs = {"precision": precision, "batch_size": params["features"]["batch_size"]}
    gde = GaussianDensity(**params["density"]).fit(extract_features(model, data.train_images, **kwargs))
    auroc = image_auroc(data.test_labels, gde.score_samples(extract_features(model, data.test_images, **kwargs)))
    return auroc, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--categories", nargs="+", required=True)
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    params = OmegaConfigLoader(str(PROJECT / "conf"), base_env="base", default_run_env="base")["parameters"]
    print(f"image size {params['ingest']['image_size']}, steps {args.steps or params['training']['steps']}, "
          f"batch {params['training']['batch_size']}, task {params['augment']['task']}")
    print(f"{'category':<16} {'AUROC fp32':>10} {'AUROC auto':>10} {'delta':>7} {'time fp32':>9} {'time auto':>9}")
    deltas = []
    for category in args.categories:
        data = load_category(args.data_root, category, int(params["ingest"]["image_size"]))
        fp32, fp32_seconds = run(data, params, "fp32", args.steps)
        auto, auto_seconds = run(data, params, "auto", args.steps)
        deltas.append(auto - fp32)
        print(f"{category:<16} {fp32:10.4f} {auto:10.4f} {auto - fp32:+7.4f} {fp32_seconds:8.0f}s {auto_seconds:8.0f}s", flush=True)
    print(f"max |delta| = {max(abs(d) for d in deltas):.4f} (goal <= 0.01)")


if __name__ == "__main__":
    main()

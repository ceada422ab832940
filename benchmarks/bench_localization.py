"""Dense-scoring throughput vs the encoder bound, measured in one run on this machine.

Bound: patches per image / the encoder's throughput on one large batch of patches (the best the
dense scorer could do if unfolding, chunking, GDE scoring and upsampling cost nothing). Measured:
the project's full score-map path (dense_features -> shared GDE -> receptive-field upsampling).

    python benchmarks/bench_localization.py [--size 256] [--patch 32] [--stride 4] [--images 8]
    python benchmarks/bench_localization.py --localizer data/06_models/PA_BDP01_TL/localizer \
        --data-root ../shared/data/piped --category PA_BDP01_TL

Goal: measured >= 70 % of the bound. Prints peak resident memory too.

Aligned-object check (``--aligned-size``, default 64 px; 0 skips it): the synthetic aligned object of
``core.aligned`` (a fixed object on a constant background, defects with masks) scored by an untrained
encoder with a per-location and a shared GDE, raw and normalised from calibration images, the
per-location density exact (float32, full rank), as stored (float16, rank <= 128) and fitted on each
location's 5 x 5 neighbourhood: pixel AUROC,
map-max image AUROC and storage bytes, all from one run. With ``--localizer`` (a
trained one, from ``kedro run --pipelines=localization``) it also scores that category's test set in
fp32 and in the fast precision and prints both pixel AUROCs (goal: within 0.01).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from cutpaste.core.aligned import aligned_object_dataset
from cutpaste.core.data import load_category
from cutpaste.core.localize import (
    Localizer,
    LocationDensity,
    dense_features,
    fit_patch_density,
    grid_size,
    receptive_field_upsample,
)
from cutpaste.core.metrics import image_auroc, pixel_auroc
from cutpaste.core.models import CutPasteNet
from cutpaste.core.train import resolve_device, resolve_memory_format, resolve_precision


def encoder_patches_per_second(model, patch: int, batch: int, precision: str) -> float:
    device = resolve_device("auto")
    dtype = resolve_precision(precision, device)
    fmt = resolve_memory_format("auto", device, dtype)
    model = model.to(device, memory_format=fmt).eval()
    patches = torch.rand(batch, 3, patch, patch, device=device).contiguous(memory_format=fmt)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        model.embed(patches)
        start = time.perf_counter()
        for _ in range(3):
            model.embed(patches)
        seconds = (time.perf_counter() - start) / 3
    return batch / seconds


def precision_check(folder: str, data_root: str, category: str) -> None:
    """Pixel AUROC of one trained localizer on its category's test set, fp32 vs the auto precision."""
    localizer = Localizer.load(folder)
    data = load_category(data_root, category, localizer.image_size)
    results = {}
    for precision in ("fp32", "auto"):
        localizer.embed_args = {**localizer.embed_args, "precision": precision}
        start = time.perf_counter()
        maps = localizer.score_maps(data.test_images)
        results[precision] = (pixel_auroc(data.test_masks, maps), len(maps) / (time.perf_counter() - start))
    for precision, (auroc, rate) in results.items():
        print(f"{category} {precision:>5}: pixel AUROC {100 * auroc:.2f}, {rate:.2f} test images/s")
    print(f"{category}: |pixel AUROC auto - fp32| = {abs(results['auto'][0] - results['fp32'][0]):.4f} (goal <= 0.01)")


def storage_check(folder: str, data_root: str, category: str, holdout_fraction: float = 0.2, min_holdout: int = 10) -> None:
    """A trained localizer's stored density against the exact one (float32, full rank) refitted on the
    same fit split, and the raw maps against both normalisation statistics (calibration split): pixel
    AUROC, AUPRO, map-max image AUROC on the test set. Nothing here chooses a setting."""
    from cutpaste.core.detector import holdout_split
    from cutpaste.core.localize import normalization_statistics
    from cutpaste.core.metrics import aupro

    stored = Localizer.load(folder)
    data = load_category(data_root, category, stored.image_size)
    labels = (data.test_masks.reshape(len(data.test_masks), -1).max(1) > 0).astype(int)
    split = holdout_split(len(data.train_images), holdout_fraction, min_holdout)
    exact_density = LocationDensity(**{**stored.density.settings(), "max_rank": None, "storage_dtype": "float32"})
    exact_density = fit_patch_density(stored._network(), data.train_images[split["fit"]], exact_density, stored.patch_size, stored.stride, **stored.embed_args)
    exact = Localizer(stored.state_dict, stored.model_config, exact_density, stored.image_size, stored.patch_size, stored.stride, stored.sigma, stored.embed_args)
    for name, localizer in (("stored", stored), ("exact", exact)):
        calibration = localizer.score_grids(data.train_images[split["calibration"]])
        grids = localizer.score_grids(data.test_images)
        print(f"{category} {name}: density {localizer.density.nbytes() / 1e6:.0f} MB")
        for statistic in (None, "log_ratio", "mean_std", "median_mad"):
            if statistic:
                localizer.norm_center, localizer.norm_scale = normalization_statistics(calibration, statistic)
                localizer.norm_statistic = statistic
            maps = localizer.maps_from_grids(grids, normalized=statistic is not None)
            print(f"  {statistic or 'raw':>10}: pixel AUROC {100 * pixel_auroc(data.test_masks, maps):5.1f}, AUPRO {100 * aupro(data.test_masks, maps):5.1f}, "
                  f"map-max image AUROC {100 * image_auroc(labels, maps.reshape(len(maps), -1).max(1)):5.1f}")


def aligned_check(size: int, batch: int) -> None:
    """Per-location vs shared, raw vs normalised, exact vs stored density on the synthetic aligned object."""
    data = aligned_object_dataset(size=size, n_train=40, n_test_good=10, n_test_defect=20)
    torch.manual_seed(0)
    model = CutPasteNet(num_classes=3).eval()
    patch, stride = max(8, size // 4), max(1, size // 16)
    args = {"batch_size": batch, "device": "cpu", "precision": "fp32"}
    fit, calibration = data["train_images"][:30], data["train_images"][30:]
    print(f"aligned object {size} px, {patch} px patches at stride {stride}, 30 fit + 10 calibration normal images, untrained encoder")
    variants = {"per-location exact (float32, full rank)": {"per_location": True, "max_rank": None, "storage_dtype": "float32"},
                "per-location stored (float16, rank <= 128)": {"per_location": True},
                "per-location stored, neighbourhood 2 (5 x 5 locations)": {"per_location": True, "neighborhood": 2},
                "shared": {"per_location": False}}
    for name, settings in variants.items():
        density = fit_patch_density(model, fit, LocationDensity(**settings), patch, stride, **args)
        localizer = Localizer(model.state_dict(), {"head_dims": [512] * 8 + [128], "backbone": "resnet18"}, density, size, patch, stride, patch / 4, args)
        localizer.calibrate(calibration)
        grids = localizer.score_grids(data["test_images"])
        for normalized in (False, True):
            maps = localizer.maps_from_grids(grids, normalized)
            print(f"  {name:<56} {'normalised' if normalized else 'raw':>10}: pixel AUROC {100 * pixel_auroc(data['test_masks'], maps):5.1f}, "
                  f"map-max image AUROC {100 * image_auroc(data['test_labels'], maps.reshape(len(maps), -1).max(1)):5.1f}, "
                  f"density {density.nbytes() / 1e6:.2f} MB")


def throughput(args: argparse.Namespace) -> None:
    """Measured dense scoring vs the encoder bound (random images, untrained encoder)."""
    torch.manual_seed(0)
    model = CutPasteNet(num_classes=3)
    images = np.random.default_rng(0).integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)
    grid = grid_size(args.size, args.patch, args.stride)
    print(f"{args.images} images of {args.size} px, {args.patch} px patches at stride {args.stride}: {grid}x{grid} = {grid * grid} patches/image")
    train = dense_features(model, images[:2], args.patch, args.stride, args.batch, precision="fp32")
    density = LocationDensity(per_location=False).fit(train)
    for precision in ("fp32", "auto"):
        bound = encoder_patches_per_second(model, args.patch, args.batch, precision) / (grid * grid)
        start = time.perf_counter()
        features = dense_features(model, images, args.patch, args.stride, args.batch, precision=precision)
        maps = receptive_field_upsample(density.score_grid(features), args.patch, args.stride, sigma=args.patch / 4)
        measured = args.images / (time.perf_counter() - start)
        print(f"{precision:>5}: measured {measured:6.2f} images/s, encoder bound {bound:6.2f} images/s, "
              f"ratio {measured / bound:.2f} (goal >= 0.70); map {maps.shape[1:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--localizer", help="a trained localizer folder: also compare pixel AUROC fp32 vs fast precision")
    parser.add_argument("--data-root")
    parser.add_argument("--category")
    parser.add_argument("--storage", action="store_true", help="with --localizer: stored vs exact density, raw vs normalised maps (instead of fp32 vs fast)")
    parser.add_argument("--aligned-size", type=int, default=64, help="synthetic aligned-object check at this size (0: skip)")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    if args.aligned_size:
        aligned_check(args.aligned_size, args.batch)
    if not args.skip_throughput:
        throughput(args)
    if args.localizer and args.storage:
        storage_check(args.localizer, args.data_root, args.category)
    elif args.localizer:
        precision_check(args.localizer, args.data_root, args.category)
    print(f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()

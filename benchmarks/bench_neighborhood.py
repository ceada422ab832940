"""Per-location patch GDE fitted on a grid location alone (r = 0) or on its (2r + 1)^2 neighbourhood.

For each aligned category of an MVTec-layout root: trains the patch model once with the project's
settings (``conf/<env>``, ``--set`` overrides), embeds the fit, calibration and test images once,
then fits the per-location density for every radius in ``--radii`` on the same features and prints
pixel AUROC, AUPRO and map-max image AUROC of the raw and the ``log_ratio`` maps (statistics from
the calibration split: normal training images the patch model and the density never saw), with
each fit's wall time. Writes ``<out>/neighborhood.csv``. Test labels feed the reported metrics only.

    .venv/bin/python benchmarks/bench_neighborhood.py --data-root ../shared/data \\
        --categories mpdd_metal_plate kolektorsdd --radii 0 1 2
    .venv/bin/python benchmarks/bench_neighborhood.py --synthetic   # the synthetic aligned object, no data needed

``--register yes`` (or ``both``) first registers every image onto a reference pose with the
``localization.registration`` settings (``core.register``, fitted on the fit split) and warps the
test maps back, as the pipeline does for the categories listed there.

``--synthetic`` runs the same comparison on the synthetic aligned object of ``core.aligned`` (a fixed
pose, constant background; 30 fit, 10 calibration, 30 test images at the localization working size,
the base patch geometry, an untrained encoder): what a neighbourhood costs where nothing moves.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_budget import cpu_kind, project_parameters  # noqa: E402

from cutpaste.core.localize import Localizer, dense_features  # noqa: E402
from cutpaste.core.metrics import aupro, image_auroc, pixel_auroc  # noqa: E402
from cutpaste.pipelines.localization import nodes  # noqa: E402


def compare_radii(name: str, network, params: dict, features: dict, masks, labels, image_size: int, radii: list[int],
                  localization: dict | None = None, transforms: dict | None = None) -> list[dict]:
    """Fit the pipeline's density (``_location_density``) for each radius on ``features["fit"]``; raw and
    ``log_ratio`` maps (statistics from ``features["calibration"]``): pixel AUROC, AUPRO, map-max image AUROC.
    With ``transforms`` ({"calibration": ..., "test": ...}) the features are of registered images: the
    normalisation skips locations outside each photo and the test maps are warped back (as ``Localizer``)."""
    localization = localization or params["localization"]
    sizes, embed = nodes._sizes(localization, image_size), nodes._embed_args(localization)
    rows = []
    for radius in radii:
        start = time.perf_counter()
        settings = {**localization, "density": {**localization["density"], "neighborhood": radius}}
        density = nodes._location_density(name, settings, params["density"]).fit(features["fit"])
        fit_s = time.perf_counter() - start
        localizer = Localizer(network.state_dict(), dict(params["model"]), density, image_size, sizes["extract_patch_size"],
                              sizes["stride"], sizes["sigma"], embed)
        calibration, test = density.score_grid(features["calibration"]), density.score_grid(features["test"])
        localizer.set_normalization(calibration, "log_ratio", None if transforms is None else transforms["calibration"])
        for maps_kind in ("raw", "log_ratio"):
            maps = localizer.maps_from_grids(test, normalized=maps_kind == "log_ratio", transforms=None if transforms is None else transforms["test"])
            row = {"category": name, "density": "per-location" if density.per_location else "shared", "neighborhood": radius,
                   "registered": transforms is not None,
                   "maps": maps_kind, "pixel_auroc": pixel_auroc(masks, maps), "aupro": aupro(masks, maps),
                   "map_max_image_auroc": image_auroc(labels, maps.reshape(len(maps), -1).max(1)), "fit_s": round(fit_s, 1),
                   "density_mb": round(density.nbytes() / 1e6)}
            rows.append(row)
            print(f"{name}{' registered' if transforms is not None else ''} r={radius} {maps_kind:>9}: pixel AUROC {100 * row['pixel_auroc']:5.1f}, AUPRO {100 * row['aupro']:5.1f}, "
                  f"map-max image AUROC {100 * row['map_max_image_auroc']:5.1f} (fit {fit_s:.0f} s, density {row['density_mb']} MB)", flush=True)
    return rows


def embed_splits(network, localization: dict, image_size: int, splits: dict) -> dict:
    """Dense patch features of each split's images, computed once for every radius."""
    sizes, embed = nodes._sizes(localization, image_size), nodes._embed_args(localization)
    return {name: dense_features(network, images, sizes["extract_patch_size"], sizes["stride"], **embed) for name, images in splits.items()}


def synthetic(params: dict, radii: list[int]) -> list[dict]:
    """The comparison on the synthetic aligned object (fixed pose), untrained encoder, base geometry."""
    import torch

    from cutpaste.core.aligned import aligned_object_dataset

    localization, size = params["localization"], int(params["localization_ingest"]["image_size"])
    localization = {**localization, "per_location_categories": ["synthetic_aligned"]}
    data = aligned_object_dataset(size=size, n_train=40, n_test_good=10, n_test_defect=20)
    torch.manual_seed(0)
    network = nodes.build_model(params["model"], 3).eval()
    features = embed_splits(network, localization, size, {"fit": data["train_images"][:30], "calibration": data["train_images"][30:],
                                                          "test": data["test_images"]})
    grid = features["fit"].shape[1]
    print(f"synthetic aligned object, {size} px, {grid}x{grid} grid, untrained encoder", flush=True)
    return compare_radii("synthetic_aligned", network, params, features, data["test_masks"], data["test_labels"], size, radii, localization)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root")
    parser.add_argument("--categories", nargs="*", default=[])
    parser.add_argument("--synthetic", action="store_true", help="also the synthetic aligned object (no data needed)")
    parser.add_argument("--radii", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--register", choices=["no", "yes", "both"], default="no",
                        help="register the images onto a reference pose first (localization.registration settings)")
    parser.add_argument("--env", default="base")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=str(ROOT / "data" / "08_reporting" / "neighborhood"))
    args = parser.parse_args()
    params = project_parameters(args.env, ["localization.training.progress=false", "localization_ingest.progress=false",
                                           "localization.training.checkpoint_dir=null", *args.set])
    localization = params["localization"]
    print(f"# {cpu_kind()}; image size {params['localization_ingest']['image_size']} "
          f"(by category: {params['localization_ingest'].get('image_size_by_category') or {}}), patch model {localization['training']['steps']} steps", flush=True)
    if args.categories and not args.data_root:
        parser.error("--categories needs --data-root")
    rows = synthetic(params, args.radii) if args.synthetic else []
    for category in args.categories:
        start = time.perf_counter()
        dataset, _ = nodes.ingest_localization(category, args.data_root, params["localization_ingest"])
        split = nodes.split_training_images(dataset, params["threshold"])
        network, _ = nodes.train_patch_model(dataset, split, params["model"], localization, params["augment"])
        network.eval()
        features = embed_splits(network, localization, dataset["image_size"], {
            "fit": dataset["train_images"][split["fit"]], "calibration": dataset["train_images"][split["calibration"]],
            "test": dataset["test_images"]})
        masks = dataset["test_masks"]
        labels = (masks.reshape(len(masks), -1).max(1) > 0).astype(int)
        grid = features["fit"].shape[1]
        print(f"{category}: patch model and features in {time.perf_counter() - start:.0f} s; {len(split['fit'])} fit, "
              f"{len(split['calibration'])} calibration, {len(masks)} test images at {dataset['image_size']} px; {grid}x{grid} grid", flush=True)
        if args.register in ("no", "both"):
            rows += compare_radii(category, network, params, features, masks, labels, dataset["image_size"], args.radii)
        if args.register in ("yes", "both"):
            start = time.perf_counter()
            settings = {**localization, "registration": {**(localization.get("registration") or {}), "categories": [category]}}
            registration = nodes._registration(category, settings).fit(dataset["train_images"][split["fit"]])
            (fit, _), (calibration, calibration_transforms), (test, transforms) = (registration.align(images) for images in (
                dataset["train_images"][split["fit"]], dataset["train_images"][split["calibration"]], dataset["test_images"]))
            registered = embed_splits(network, localization, dataset["image_size"], {"fit": fit, "calibration": calibration, "test": test})
            print(f"{category}: registration and features in {time.perf_counter() - start:.0f} s; test rotations "
                  f"{abs(transforms[:, 0]).mean():.1f} degrees on average", flush=True)
            rows += compare_radii(category, network, params, registered, masks, labels, dataset["image_size"], args.radii,
                                  transforms={"calibration": calibration_transforms, "test": transforms})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "neighborhood.csv", index=False)
    print(f"wrote {out / 'neighborhood.csv'}; peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()

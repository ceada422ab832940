"""How the localization maps move when a normal image is darker or brighter (lighting drift).

For each category of a project that has run ``kedro run --pipelines=localization``, takes the
calibration images of its localizer (normal training images that neither the patch model nor its
density saw; the same images set the localizer's normal levels), scales their intensities by each
factor in ``--factors`` (1.0 is the reference) and computes the patch maps (normalised when the localizer is
calibrated), the stem maps and the maps as configured (fused when the localizer has a stem density). It prints and writes
to ``<out>/lighting.csv``, per category, factor and map:

- ``above_normal_pct``: the share of pixels above the 99th percentile of the same map kind on the
  unscaled images (1 % at factor 1.0 by construction): how much of a normal image a drift lights up;
- ``median_image_max``: the median over images of each map's maximum, the image score from the map.

No test image is read; nothing is fitted. A map that does not depend on lighting keeps about 1 % at
every factor.

    .venv/bin/python benchmarks/bench_lighting.py --categories brick grass gravel
    .venv/bin/python benchmarks/bench_lighting.py --project-dir /path/to/run --categories kolektorsdd --images 16
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_budget import cpu_kind  # noqa: E402

from cutpaste.core.localize import Localizer  # noqa: E402


def localization_outputs(project: Path, category: str, limit: int) -> tuple[Localizer, np.ndarray]:
    """The category's localizer and its calibration images, as the localization pipeline stored them."""
    folder = project / "data/06_models" / category / "localizer"
    dataset_path = project / "data/02_intermediate" / category / "localization_dataset.pkl"
    split_path = project / "data/05_model_input" / category / "localization_split.json"
    for path in (folder, dataset_path, split_path):
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; run `kedro run --pipelines=localization` for {category!r} in {project} first")
    with open(dataset_path, "rb") as handle:
        images = pickle.load(handle)["train_images"]
    indices = json.loads(split_path.read_text())["calibration"][:limit]
    return Localizer.load(folder), images[indices]


def maps_by_kind(localizer: Localizer, images: np.ndarray) -> dict[str, np.ndarray]:
    """Patch maps (normalised when the localizer is calibrated), stem maps (when it has a stem density)
    and the maps as configured."""
    registered, transforms = localizer.register(images)
    patch = localizer.maps_from_grids(localizer.score_grids(registered, registered=True), transforms=transforms)
    maps = {"patch": patch}
    if localizer.stem is not None:
        maps["stem"] = localizer.stem_maps(images, (registered, transforms))
    maps["configured"] = localizer.with_stem(patch, images, (registered, transforms))
    return maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--project-dir", type=Path, default=ROOT, help="a project folder with the localization pipeline's outputs")
    parser.add_argument("--categories", nargs="+", required=True)
    parser.add_argument("--factors", nargs="+", type=float, default=[0.8, 0.9, 1.0, 1.1, 1.25])
    parser.add_argument("--images", type=int, default=16, help="calibration images per category (the first ones)")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "08_reporting" / "lighting")
    args = parser.parse_args()
    if 1.0 not in args.factors:
        args.factors.append(1.0)
    print(f"CPU: {cpu_kind()}", flush=True)
    rows = []
    for category in args.categories:
        localizer, images = localization_outputs(args.project_dir, category, args.images)
        by_factor = {}
        for factor in sorted(args.factors):
            start = time.time()
            scaled = np.clip(np.rint(images.astype(np.float32) * factor), 0, 255).astype(np.uint8)
            by_factor[factor] = maps_by_kind(localizer, scaled)
            print(f"{category} x{factor:g}: {len(images)} images in {time.time() - start:.0f} s", flush=True)
        for kind, reference_maps in by_factor[1.0].items():
            level = float(np.percentile(reference_maps, 99))
            for factor, maps in by_factor.items():
                rows.append({"category": category, "map": kind, "factor": factor,
                             "above_normal_pct": round(100 * float(np.mean(maps[kind] > level)), 2),
                             "median_image_max": round(float(np.median(maps[kind].reshape(len(maps[kind]), -1).max(1))), 3)})
    table = pd.DataFrame(rows).sort_values(["category", "map", "factor"])
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "lighting.csv", index=False)
    print(table.pivot_table(index=["category", "map"], columns="factor", values="above_normal_pct").to_string())
    print(f"(% of pixels above the unscaled images' 99th percentile; {args.out / 'lighting.csv'} has the image maxima too)")


if __name__ == "__main__":
    main()

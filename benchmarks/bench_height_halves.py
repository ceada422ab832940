"""Does a tall category gain from its native height resolution, or from a deeper map term?

A category of tall images (kolektorsdd: about 203 x 512, squashed to 256 x 256 by the localization
pipeline, which halves a crack's height) is cut into its top and bottom halves, each a category of its
own in the MVTec layout. Each half is localized by the pipeline at the same working size, so the height
keeps twice the resolution of the whole image's run. ``score`` stitches the two halves' maps back into
whole images and scores them against the whole images' masks, resized to ``size`` x ``size`` as the
pipeline resizes them, so the figures compare with the whole-image run's. The test labels only judge.

``--level k`` also reads a third map term: a shared Gaussian of the patch model's block group ``k``
responses (``cutpaste.core.image_score.fit_stem_density`` with ``level``), read like the per-location stem
map (log2 score minus each pixel's mean calibration level, the highest within 2 px, above the 99th
percentile of its calibration pixels), fused with the localizer's maps by a maximum.

    .venv/bin/python benchmarks/bench_height_halves.py prepare --category-dir ../shared/data/kolektorsdd --out /tmp/halves
    # then, in two checkouts (conf/local/categories.yml: categories: [kolektorsdd]):
    #   kedro run --pipelines=localization --params=data_root=/tmp/halves/top,ingest.image_size=128,training.steps=50
    #   kedro run --pipelines=localization --params=data_root=/tmp/halves/bottom,ingest.image_size=128,training.steps=50
    .venv/bin/python benchmarks/bench_height_halves.py score --category-dir ../shared/data/kolektorsdd \\
        --halves /tmp/halves --top-data /path/to/top/checkout/data --bottom-data /path/to/bottom/checkout/data --level 1
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_budget import cpu_kind  # noqa: E402

from cutpaste.core.data import IMAGE_SUFFIXES, load_mask  # noqa: E402
from cutpaste.core.image_score import fit_stem_density, stem_maps  # noqa: E402
from cutpaste.core.localize import FUSION_QUANTILE, STEM_BATCH_IMAGES, Localizer, highest_within  # noqa: E402
from cutpaste.core.metrics import aupro, image_auroc, pixel_auroc  # noqa: E402

HALVES = ("top", "bottom")


def prepare(category_dir: Path, out: Path) -> int:
    """Write every image and mask of ``category_dir`` cut at half its height into ``out/top/<category>`` and
    ``out/bottom/<category>`` (same relative paths; an odd height drops its last row). Returns the number of files cut."""
    count = 0
    for path in sorted(category_dir.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        with Image.open(path) as image:
            image.load()
        width, height = image.size
        if height < 2:
            raise ValueError(f"{path}: {height} px high, cannot be cut in two")
        for half, box in zip(HALVES, ((0, height // 2), (height // 2, 2 * (height // 2))), strict=True):
            target = out / half / category_dir.name / path.relative_to(category_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            image.crop((0, box[0], width, box[1])).save(target)
        count += 1
    return count


def _resize(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)).unsqueeze(1)
    return torch.nn.functional.interpolate(tensor, size=shape, mode="bilinear", align_corners=False).squeeze(1).numpy()


def level_term(localizer: Localizer, dataset: dict, split: dict, level: int) -> np.ndarray:
    """The block group ``level`` map term of the test images (see the module docstring)."""
    network, setup = localizer._stem_network()
    train = localizer._normalized_intensity(dataset["train_images"])
    density = fit_stem_density(network, train[split["fit"]], setup, batch_size=STEM_BATCH_IMAGES, shrinkage=localizer.density.shrinkage, level=level)
    calibration = stem_maps(network, density, train[split["calibration"]], setup, STEM_BATCH_IMAGES, level=level)
    center = highest_within(calibration.mean(0), 2)
    reference = float(np.quantile(calibration - center, FUSION_QUANTILE))
    test = stem_maps(network, density, localizer._normalized_intensity(dataset["test_images"]), setup, STEM_BATCH_IMAGES, level=level)
    return (test - center - reference).astype(np.float32)


def score(category_dir: Path, halves_root: Path, data_dirs: dict[str, Path], size: int, level: int | None) -> pd.DataFrame:
    category = category_dir.name
    stitched, paths = {}, None
    for half in HALVES:
        data = data_dirs[half]
        localizer = Localizer.load(data / f"06_models/{category}/localizer")
        with open(data / f"02_intermediate/{category}/localization_dataset.pkl", "rb") as handle:
            dataset = pickle.load(handle)
        split = json.loads((data / f"05_model_input/{category}/localization_split.json").read_text())
        index = pd.read_csv(data / f"02_intermediate/{category}/localization_index.csv")
        names = [str(Path(p).relative_to(halves_root / half / category)) for p in index.loc[index["split"] == "test", "path"]]
        if paths is not None and names != paths:
            raise ValueError(f"{data}: the {half} half's test images are not those of the top half, in the same order")
        paths = names
        maps = {"fused": localizer.score_maps(dataset["test_images"])}
        if level is not None:
            maps[f"level{level}"] = level_term(localizer, dataset, split, level)
            maps[f"fused + level{level}"] = np.maximum(maps["fused"], maps[f"level{level}"])
        for name, values in maps.items():
            stitched.setdefault(name, []).append(_resize(values, (size, size)))
        print(f"{half}: {len(names)} test images scored", flush=True)
    labels = np.array([0 if Path(path).parts[1] == "good" else 1 for path in paths])
    masks = np.zeros((len(paths), size, size), dtype=np.uint8)
    for row, (path, label) in enumerate(zip(paths, labels, strict=True)):
        if label:
            parts = Path(path)
            with Image.open(category_dir / path) as image:
                image_size_xy = image.size
            masks[row] = load_mask(category_dir / "ground_truth" / parts.parts[1] / f"{parts.stem}_mask.png", category_dir / path, image_size_xy, size)
    rows = []
    for name, parts in stitched.items():
        whole = _resize(np.concatenate(parts, axis=1), (size, size))  # two (size, size) halves stacked, then squashed as the pipeline squashes
        rows.append({"maps": name, "pixel_auroc": 100 * pixel_auroc(masks, whole), "aupro": 100 * aupro(masks, whole),
                     "map_max_image_auroc": 100 * image_auroc(labels, whole.reshape(len(whole), -1).max(1))})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    cut = commands.add_parser("prepare", help="cut a category's images and masks into top and bottom halves")
    cut.add_argument("--category-dir", type=Path, required=True)
    cut.add_argument("--out", type=Path, required=True)
    scoring = commands.add_parser("score", help="stitch the two halves' maps and score them against the whole images' masks")
    scoring.add_argument("--category-dir", type=Path, required=True)
    scoring.add_argument("--halves", type=Path, required=True, help="the prepare --out folder")
    scoring.add_argument("--top-data", type=Path, required=True, help="the data/ folder of the top half's pipeline run")
    scoring.add_argument("--bottom-data", type=Path, required=True)
    scoring.add_argument("--size", type=int, default=256, help="the whole image's working size in the pipeline run it is compared with")
    scoring.add_argument("--level", type=int, default=None, help="also read the block group LEVEL map term")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        count = prepare(args.category_dir, args.out)
        print(f"{count} files cut into {args.out / 'top'} and {args.out / 'bottom'}")
        return count
    print(f"CPU: {cpu_kind()}", flush=True)
    table = score(args.category_dir, args.halves, {"top": args.top_data, "bottom": args.bottom_data}, args.size, args.level)
    print(table.round(1).to_string(index=False))
    return table


if __name__ == "__main__":
    main()

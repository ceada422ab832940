"""How well registration lines up a category's normal training images, and what each setting costs.

For one category in the MVTec layout, reads its normal training images (``train/good``; no test image,
no mask) at the working size and registers them with each registration setting in turn: rigid (the
base), ``refine`` (the full-size refinement), ``max_scale_change`` (the zoom search) and both. For each it
prints and writes to ``<out>/registration.csv``:

- ``fit_align_s``: seconds to choose the reference pose and align every image (one run);
- ``edge_spread``: the variance over the aligned images of their Sobel gradient magnitude, averaged over
  the pixels: low when the part's edges land on the same pixels in every image;
- ``grey_spread``: the same for the grey level;
- each one's ratio to the rigid setting's, measured in the same run.

Labels play no part: this is the registration's own objective, read on the training images.

    .venv/bin/python benchmarks/bench_registration.py                     # ../shared/data mpdd_metal_plate at 128 px
    .venv/bin/python benchmarks/bench_registration.py --data-root /path/to/data --category metal_nut --image-size 256
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_budget import cpu_kind  # noqa: E402

from cutpaste.core.data import _image_files, load_image  # noqa: E402
from cutpaste.core.register import RigidRegistration  # noqa: E402

SETTINGS = {  # name -> RigidRegistration settings beside the shared ones
    "rigid": {},
    "refine": {"refine": True},
    "zoom": {"max_scale_change": 0.15},
    "zoom + refine": {"max_scale_change": 0.15, "refine": True},
}


def training_images(data_root: Path, category: str, image_size: int, limit: int | None) -> np.ndarray:
    folder = data_root / category / "train" / "good"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (a category in the MVTec layout: <category>/train/good)")
    paths = _image_files(folder)[:limit]
    if len(paths) < 2:
        raise ValueError(f"{folder}: {len(paths)} image(s); registration needs at least 2")
    return np.stack([load_image(path, image_size) for path in paths])


def spreads(aligned: np.ndarray) -> tuple[float, float]:
    """(edge spread, grey spread) of aligned (N, S, S, 3) images."""
    grey = aligned.astype(np.float32).mean(-1)
    edges = np.stack([np.hypot(ndimage.sobel(plane, 0), ndimage.sobel(plane, 1)) for plane in grey])
    return float(edges.var(0).mean()), float(grey.var(0).mean())


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--category", default="mpdd_metal_plate")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--limit", type=int, default=None, help="at most this many training images")
    parser.add_argument("--max-rotation-deg", type=float, default=90.0)
    parser.add_argument("--work-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "08_reporting" / "benchmarks")
    args = parser.parse_args(argv)
    images = training_images(args.data_root, args.category, args.image_size, args.limit)
    print(f"{args.category}: {len(images)} training images at {args.image_size} px; CPU: {cpu_kind()}")
    rows = []
    for name, settings in SETTINGS.items():
        registration = RigidRegistration(max_rotation_deg=args.max_rotation_deg, work_size=args.work_size, **settings)
        start = time.perf_counter()
        aligned, _ = registration.fit(images).align(images)
        seconds = time.perf_counter() - start
        edge, grey = spreads(aligned)
        rows.append({"setting": name, "fit_align_s": seconds, "edge_spread": edge, "grey_spread": grey})
    table = pd.DataFrame(rows)
    for column in ("fit_align_s", "edge_spread", "grey_spread"):
        table[f"{column}_ratio"] = table[column] / table.loc[0, column]
    print(table.to_string(index=False, float_format=lambda value: f"{value:.3g}"))
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "registration.csv", index=False)
    return table


if __name__ == "__main__":
    main()

"""Choosing the map centre per category on synthetic defects (``localization.map_center: synthetic``), and what
each centre (none, image_median, image_median_capped) gives on the test set, from one localization run's stored outputs.

For every category of a finished ``kedro run --pipelines=localization`` (run at ``map_center: none``): the stored
localizer makes the centre choice on its own calibration images (synthetic defects, no labels, as
``fit_localizer`` does with ``map_center: synthetic``), and the stored test maps are scored as they are
(none), centred on each image's median (image_median) and centred on the lower of that median and the highest
median of the held-out calibration maps (image_median_capped; the stored localizer reads its calibration images
again, each against the others' levels): pixel AUROC, AUPRO (FPR <= 0.3) and map-max image AUROC. ``--no-choice``
skips the synthetic-defect choice (copies x calibration images: minutes at 256 px). The test labels only judge; the choice never sees them. Prints one Markdown table, the choice's time
and the peak resident memory.

    .venv/bin/python benchmarks/bench_map_center.py --data path/to/checkout/data --categories mpdd_metal_plate kolektorsdd
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_budget import cpu_kind  # noqa: E402

from cutpaste.core.localize import MAP_CENTERS, SYNTHETIC_CENTERS, Localizer, center_on_image  # noqa: E402
from cutpaste.core.metrics import aupro, image_auroc, pixel_auroc  # noqa: E402


def test_figures(maps: np.ndarray, masks: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"pixel_auroc": pixel_auroc(masks, maps), "aupro": aupro(masks, maps),
            "image_auroc_from_map": image_auroc(labels, maps.reshape(len(maps), -1).max(1))}


def category_row(data: Path, category: str, copies: int, seed: int, choice: bool = True) -> dict:
    with open(data / f"02_intermediate/{category}/localization_dataset.pkl", "rb") as handle:
        dataset = pickle.load(handle)
    index = pd.read_csv(data / f"02_intermediate/{category}/localization_index.csv")
    split = json.loads((data / f"05_model_input/{category}/localization_split.json").read_text())
    with open(data / f"07_model_output/{category}/score_maps.pkl", "rb") as handle:
        stored = pickle.load(handle)
    localizer = Localizer.load(data / f"06_models/{category}/localizer")
    if localizer.map_center != "none":
        raise SystemExit(f"{category}: the stored localizer's maps are centred ({localizer.map_center}); run the pipeline at map_center: none")
    calibration = dataset["train_images"][split["calibration"]]
    start = time.perf_counter()
    medians = localizer.read_calibration_medians(calibration)
    cap = localizer.center_cap()
    cap_seconds = time.perf_counter() - start
    labels = index.loc[index["split"] == "test", "label"].to_numpy()
    masks = dataset["test_masks"]
    figures = {"none": test_figures(stored, masks, labels), "image_median": test_figures(center_on_image(stored), masks, labels),
               "image_median_capped": test_figures(center_on_image(stored, cap=cap), masks, labels)}
    key = localizer.medians_key()
    test_medians = np.median(stored.reshape(len(stored), -1), axis=1)
    row = {"category": category, "calibration images": len(split["calibration"]),
           "calibration medians (min / max = cap)": f"{min(medians[key]):.2f} / {cap:.2f}",
           "test images above the cap (normal / defective)": f"{int((test_medians[labels == 0] > cap).sum())}/{int((labels == 0).sum())} / "
                                                             f"{int((test_medians[labels == 1] > cap).sum())}/{int((labels == 1).sum())}",
           "cap s": round(cap_seconds, 1)}
    centers = MAP_CENTERS
    if choice:
        start = time.perf_counter()
        scores = localizer.choose_map_center(calibration, copies=copies, seed=seed)
        row.update({"chosen": scores["chosen"], "choice s": round(time.perf_counter() - start, 1)})
        for center in SYNTHETIC_CENTERS:
            row[f"synthetic {center} (pixel / image)"] = f"{100 * scores[center]['pixel_auroc']:.1f} / {100 * scores[center]['image_auroc']:.1f}"
        centers = (*MAP_CENTERS, "chosen")
    for center in centers:
        shown = figures[scores["chosen"] if center == "chosen" else center]
        row[f"test {center} (pixel / AUPRO / map-max)"] = " / ".join(f"{100 * shown[key]:.1f}" for key in ("pixel_auroc", "aupro", "image_auroc_from_map"))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data", help="the data/ folder of a finished localization run")
    parser.add_argument("--categories", nargs="+", required=True)
    parser.add_argument("--copies", type=int, default=4, help="defective copies of every calibration image (the base default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-choice", dest="choice", action="store_false", help="skip the synthetic-defect choice")
    args = parser.parse_args()
    rows = [category_row(args.data, category, args.copies, args.seed, args.choice) for category in args.categories]
    print(f"map centres{' and the one chosen on synthetic defects' if args.choice else ''} ({cpu_kind()}):")
    print(pd.DataFrame(rows).to_markdown(index=False))
    print(f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()

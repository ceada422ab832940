"""Localization against the image model over training seeds: is a gap between two figures larger than a seed's noise?

Reads finished ``kedro run --pipelines=localization`` runs, one checkout per training seed (``training.seed`` and
``localization.training.seed`` set to the same value, everything else equal), and prints per category and run: the
final maps' pixel AUROC, AUPRO (FPR <= 0.3) and map-max image AUROC, and the image model's image AUROC, both from its
pooled GDE (the paper's score, ``score_pooled`` in ``scores.csv`` when the image score combines components) and from
the configured image score (``score``). Then the mean and standard error over the runs, and the paired difference
map-max minus pooled: per run, its mean, and a 95 % paired bootstrap interval over test images (stratified by label;
each resample draws the same test images for every run, so the interval is of the mean over these seeds on
resampled test sets). Only finished outputs are read; nothing is trained or selected.

    .venv/bin/python benchmarks/bench_seeds.py --category mpdd_metal_plate --runs ../seed0/data ../seed1/data ../seed2/data
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cutpaste.core.metrics import aupro, image_auroc, pixel_auroc  # noqa: E402


def read_run(data: Path, category: str) -> dict:
    """One run's test labels, map maxima, image-model scores (aligned on the test images' paths) and map figures."""
    needed = {name: data / relative for name, relative in {
        "dataset": f"02_intermediate/{category}/localization_dataset.pkl",
        "index": f"02_intermediate/{category}/localization_index.csv",
        "maps": f"07_model_output/{category}/score_maps.pkl",
        "scores": f"07_model_output/{category}/scores.csv",
    }.items()}
    missing = [str(path) for path in needed.values() if not path.is_file()]
    if missing:
        raise SystemExit(f"{data}: not a finished localization run of {category}; missing {', '.join(missing)}")
    with open(needed["dataset"], "rb") as handle:
        dataset = pickle.load(handle)
    with open(needed["maps"], "rb") as handle:
        maps = np.asarray(pickle.load(handle))
    index = pd.read_csv(needed["index"])
    test = index.loc[index["split"] == "test"].reset_index(drop=True)
    if len(test) != len(maps):
        raise SystemExit(f"{needed['maps']}: {len(maps)} maps for {len(test)} test images in {needed['index']}")
    scores = pd.read_csv(needed["scores"]).set_index("path")
    absent = sorted(set(test["path"]) - set(scores.index))
    if absent:
        raise SystemExit(f"{needed['scores']}: no image-model score for {len(absent)} test images, e.g. {absent[0]}")
    scores = scores.loc[test["path"]]
    labels = test["label"].to_numpy().astype(int)
    pooled = scores["score_pooled"] if "score_pooled" in scores.columns else scores["score"]
    return {"labels": labels, "map_max": maps.reshape(len(maps), -1).max(1), "pooled": pooled.to_numpy(float),
            "image_score": scores["score"].to_numpy(float),
            "pixel_auroc": pixel_auroc(dataset["test_masks"], maps), "aupro": aupro(dataset["test_masks"], maps)}


def paired_bootstrap(runs: list[dict], resamples: int, seed: int) -> tuple[float, float]:
    """95 % interval of the mean over runs of AUROC(map-max) - AUROC(pooled), test images resampled within each label."""
    labels = runs[0]["labels"]
    if any(not np.array_equal(run["labels"], labels) for run in runs):
        raise SystemExit("the runs' test sets differ: a paired comparison needs the same test images in every run")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == value) for value in (0, 1)]
    differences = np.empty(resamples)
    for draw in range(resamples):
        chosen = np.concatenate([rng.choice(group, len(group)) for group in groups])
        picked = labels[chosen]
        differences[draw] = np.mean([roc_auc_score(picked, run["map_max"][chosen]) - roc_auc_score(picked, run["pooled"][chosen])
                                     for run in runs])
    low, high = np.percentile(differences, [2.5, 97.5])
    return float(low), float(high)


def mean_and_error(values: list[float]) -> str:
    values = np.asarray(values, float)
    error = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{100 * values.mean():.1f} +- {100 * error:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--category", required=True)
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="each run's data folder (one per seed)")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0, help="of the bootstrap draws")
    args = parser.parse_args()
    runs = [read_run(data, args.category) for data in args.runs]
    columns = ("pixel AUROC", "AUPRO", "map-max image AUROC", "image model, pooled GDE", "image model, image score",
               "map-max - pooled")
    print(f"{args.category}: {len(runs)} runs, {int((runs[0]['labels'] == 0).sum())} normal and "
          f"{int(runs[0]['labels'].sum())} defective test images\n")
    print("| run | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    rows = []
    for data, run in zip(args.runs, runs):
        figures = [run["pixel_auroc"], run["aupro"], image_auroc(run["labels"], run["map_max"]),
                   image_auroc(run["labels"], run["pooled"]), image_auroc(run["labels"], run["image_score"])]
        metrics_path = data / f"08_reporting/{args.category}/localization_metrics.json"
        if metrics_path.is_file():  # the pipeline's own figure: the maps read here are the ones it scored
            stored = json.loads(metrics_path.read_text())["image_auroc_from_map"]
            if abs(stored - figures[2]) > 1e-9:
                raise SystemExit(f"{metrics_path}: map-max image AUROC {stored} differs from the stored maps'")
        rows.append(figures + [figures[2] - figures[3]])
        print(f"| {data} | " + " | ".join(f"{100 * value:.1f}" for value in rows[-1]) + " |")
    print("| mean +- standard error over runs | " + " | ".join(mean_and_error([row[k] for row in rows]) for k in range(len(columns))) + " |")
    low, high = paired_bootstrap(runs, args.resamples, args.seed)
    print(f"\nmap-max - pooled, mean over runs: {100 * np.mean([row[-1] for row in rows]):.1f}; "
          f"95 % paired bootstrap interval over test images ({args.resamples} resamples): {100 * low:.1f} to {100 * high:.1f}")


if __name__ == "__main__":
    main()

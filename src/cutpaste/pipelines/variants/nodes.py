"""Nodes of the variants pipeline: per-run settings, synthetic anomalies, per-run evaluation, tables.

Training, feature extraction, the GDE and test scoring are the detection pipeline's nodes, called
with each grid point's settings.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from cutpaste.core import study, synthetic
from cutpaste.core.density import GaussianDensity
from cutpaste.core.metrics import image_auroc
from cutpaste.pipelines.detection import nodes as detection

logger = logging.getLogger(__name__)


def expand_grid(built_for: dict[str, list[int]], study_params: dict, training: dict, augment: dict) -> dict[str, dict]:
    """Every grid point's effective training and augmentation settings (see :func:`study.expand_grid`).

    ``built_for`` (point -> seeds) is the grid the pipeline's nodes were built for; parameters of the run
    that ask for another grid stop the run here, before anything trains.
    """
    points = study.expand_grid(study_params, training, augment)
    asked = {name: [int(seed) for seed in point["seeds"]] for name, point in points.items()}
    if asked != built_for:
        raise ValueError(f"variants: this run's parameters ask for the grid {asked}, but the pipeline was built for {built_for}. "
                         "The grid (study.variants, seeds, sweeps) is read from the conf files when Kedro registers the pipelines, so `--params` cannot change it: set it in conf/<env>/parameters_variants.yml (e.g. conf/local/parameters_variants.yml)")
    logger.info("variants: %d grid points: %s", len(points), ", ".join(points))
    return points


def run_settings(points: dict[str, dict], point: str, seed: int) -> tuple[dict, dict]:
    """(training, augment) of one run: the point's settings with its seed and its own checkpoint folder."""
    settings = points[point]
    training = {**settings["training"], "seed": int(seed)}
    if training.get("checkpoint_dir"):
        training["checkpoint_dir"] = str(Path(training["checkpoint_dir"]) / "variants" / point)
    return training, settings["augment"]


def train_run(point: str, seed: int, dataset: dict, split: dict, points: dict, model: dict):
    """The detection pipeline's training node with this run's task, settings and seed."""
    training, augment = run_settings(points, point, seed)
    return detection.train_model(dataset, split, model, training, augment)


def extract_run_features(point: str, seed: int, state_dict: dict, dataset: dict, points: dict, model: dict, features: dict) -> np.ndarray:
    training, _ = run_settings(points, point, seed)
    return detection.extract_train_features(state_dict, dataset, model, training, features)


def score_run(point: str, seed: int, state_dict: dict, gde: GaussianDensity, train_features: np.ndarray, split: dict, dataset: dict,
              index: pd.DataFrame, points: dict, model: dict, features: dict) -> pd.DataFrame:
    """Test scores (the detection node's) plus ``normalized_score``: standardized by the mean and
    standard deviation of the scores of the held-out normal training images (calibration split),
    which makes seeds' scores comparable for the ensemble without looking at any test image."""
    training, _ = run_settings(points, point, seed)
    scores = detection.score_test_images(state_dict, gde, dataset, index, model, training, features)
    reference = gde.score_samples(train_features[split["calibration"]])
    scores["normalized_score"] = study.normalize_scores(scores["score"].to_numpy(), reference)
    return scores


def _run_metrics(point: str, seed: int, category: str, points: dict) -> dict:
    settings = points[point]
    training, augment = run_settings(points, point, seed)
    return {
        "point": point, "variant": settings["variant"], "sweep": settings["sweep"] or "", "value": settings["value"],
        "category": category, "seed": int(seed), "lr": float(training["lr"]), "steps": int(training["steps"]),
        "jitter": float(augment.get("cutpaste", {}).get("jitter", np.nan)),
        "max_area": float(augment.get("cutpaste", {}).get("area_ratio", [np.nan, np.nan])[1]),
    }


def evaluate_run(point: str, seed: int, scores: pd.DataFrame, dataset: dict, points: dict) -> dict:
    """Image AUROC of one run with its settings (numbers are logged as MLflow metrics of its child run)."""
    metrics = _run_metrics(point, seed, dataset["category"], points)
    metrics.update(image_auroc=image_auroc(scores["label"].to_numpy(), scores["score"].to_numpy()), n_test=int(len(scores)))
    logger.info("%s %s seed %d: image AUROC %.4f", dataset["category"], point, seed, metrics["image_auroc"])
    return metrics


def make_synthetic_set(dataset: dict, index: pd.DataFrame, synthetic_params: dict) -> dict:
    """Table 6's test set: the category's normal test images (label 0) and, for each of them and each
    shape x fill, one synthetic anomaly pasted on it (label 1, kind "<shape>_<fill>").

    Deterministic for ``synthetic_params.seed`` and the category; the same for every run.
    """
    test = index.loc[index["split"] == "test"].reset_index(drop=True)
    normal = dataset["test_images"][test.index[test["label"] == 0].to_numpy()]
    if len(normal) == 0:
        raise ValueError(f"{dataset['category']}: no normal test image to paste synthetic anomalies on")
    shapes = list(synthetic_params.get("shapes", synthetic.SHAPES))
    fills = list(synthetic_params.get("fills", synthetic.FILLS))
    rng = np.random.default_rng([int(synthetic_params.get("seed", 0)), zlib.crc32(dataset["category"].encode())])
    natural = [synthetic.skimage_photo(name) for name in synthetic.NATURAL_PHOTOS] if "natural" in fills else None
    size_range = tuple(synthetic_params.get("size_range", (0.12, 0.3)))
    images, kinds = list(normal), ["good"] * len(normal)
    for image in normal:
        for shape in shapes:
            for fill in fills:
                anomalous, _ = synthetic.paste_synthetic_anomaly(image, rng, shape, fill, size_range, natural_photos=natural)
                images.append(anomalous)
                kinds.append(f"{shape}_{fill}")
    kinds = np.array(kinds)
    return {"images": np.stack(images), "kinds": kinds, "labels": (kinds != "good").astype(np.int64)}


def evaluate_synthetic(point: str, seed: int, state_dict: dict, gde: GaussianDensity, synthetic_set: dict, dataset: dict,
                       points: dict, model: dict, features: dict) -> dict:
    """AUROC of one trained model on the synthetic set: normal test images against every anomaly
    kind separately ("synthetic_auroc_<kind>") and against all of them ("synthetic_auroc_all")."""
    training, _ = run_settings(points, point, seed)
    scores = GaussianDensity.score_samples(gde, detection.image_features(state_dict, synthetic_set["images"], model, training, features))
    kinds, labels = synthetic_set["kinds"], synthetic_set["labels"]
    metrics = _run_metrics(point, seed, dataset["category"], points)
    metrics["synthetic_auroc_all"] = image_auroc(labels, scores)
    for kind in sorted(set(kinds) - {"good"}):
        keep = (kinds == "good") | (kinds == kind)
        metrics[f"synthetic_auroc_{kind}"] = image_auroc(labels[keep], scores[keep])
    return metrics


def _long_tables(inputs: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict[tuple[str, str], dict[int, pd.DataFrame]]]:
    results, synthetic_rows, scores = [], [], {}
    for name, value in inputs.items():
        kind = name.rsplit("__", 1)[-1]
        if kind == "metrics":
            results.append(value)
        elif kind == "synthetic":
            info = {key: value[key] for key in ("point", "variant", "category", "seed")}
            synthetic_rows += [{**info, "kind": key.removeprefix("synthetic_auroc_"), "auroc": auroc}
                               for key, auroc in value.items() if key.startswith("synthetic_auroc_")]
        elif kind == "scores":
            category, point, seed = name.split("__")[:3]
            scores.setdefault((point, category), {})[int(seed)] = value
    return pd.DataFrame(results), pd.DataFrame(synthetic_rows), scores


NOTE = ("Image AUROC in %, mean ± standard error over seeds (group means: category average per seed, then mean ± SE). "
        "Paper: Li et al., CVPR 2021 (MVTec AD, ResNet-18 from scratch, 5 seeds, 256 px, ~65k steps); a paper mean is shown only "
        "when this run covers the same MVTec AD categories. Ensemble: average of the seeds' scores, each standardized with the "
        "scores of held-out normal training images.")


def build_tables(points: dict, study_params: dict, **inputs) -> dict:
    """Tables 1, 4, 5, 6, 7, 8 (DataFrame and Markdown each) and the long results table.

    Args:
        points: the grid (:func:`expand_grid`).
        inputs: ``<category>__<point>__<seed>__metrics`` / ``__synthetic`` / ``__scores`` per run.
    """
    results, synthetic_results, scores = _long_tables(inputs)
    ensembles = pd.DataFrame(
        [{"point": point, "category": category, "n_seeds": len(by_seed), "ensemble_auroc": study.ensemble_auroc(by_seed)}
         for (point, category), by_seed in sorted(scores.items()) if len(by_seed) > 1],
        columns=["point", "category", "n_seeds", "ensemble_auroc"],
    )
    main = [name for name, point in points.items() if point["sweep"] is None]
    ensemble_point = study_params.get("ensemble_variant", "3way")
    ensemble_point = ensemble_point if ensemble_point in main else (main[-1] if main else None)
    tables = {
        "table1": (study.table1(results, ensembles, main, ensemble_point), "Table 1: image AUROC per category and proxy task"),
        "table4": (study.comparison_table(results, [p for p in study.TABLE4_VARIANTS if p in main]), "Table 4: Cutout variants and baselines vs CutPaste"),
        "table5": (study.comparison_table(results, [p for p in study.TABLE5_VARIANTS if p in main]), "Table 5: CutPaste, CutPaste-Scar, binary union, 3-way"),
        "table6": (study.synthetic_table(synthetic_results, main) if len(synthetic_results) else pd.DataFrame(),
                   "Table 6: synthetic anomalies pasted on normal test images"),
        "table7": (study.sweep_table(results, points, study.TABLE7_SWEEPS), "Table 7: learning rate and training steps"),
        "table8": (study.sweep_table(results, points, study.TABLE8_SWEEPS), "Table 8: jitter intensity and max patch area"),
    }
    notes = {"table6": NOTE.replace("Image AUROC", "AUROC of normal test images vs the same images with a synthetic shape pasted on")
             + " Paper (Table 6, MVTec pill): CutPaste 98.3, Cutout 81.5.",
             "table7": NOTE + f" Sweeps change one setting of the {study_params.get('sweeps', {}).get('variant', '3way')} task.",
             "table8": NOTE + " jitter: colour-jitter intensity of the pasted patch; max_area: upper bound of the patch area ratio."}
    out = {"results": results, "ensembles": ensembles}
    for name, (table, title) in tables.items():
        out[name] = table
        out[f"{name}_markdown"] = study.to_markdown(table, title, notes.get(name, NOTE)) if len(table) else f"## {title}\n\nNo run of this table in the grid.\n"
    return out

"""Inference nodes."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from cutpaste.core.detector import Detector, list_images

logger = logging.getLogger(__name__)


def score_folder(detector: Detector, category: str, input_dir: str | None, inference: dict) -> pd.DataFrame:
    """Score every file under ``input_dir`` (recursively) with the category's detector.

    Returns:
        One row per file: file, score, normalized_score, decision ("anomalous" | "normal"), error
        (empty, or why the file could not be read; such rows have no score).
    """
    if not input_dir:
        raise ValueError("no input folder: run with --params=category=<category>,input_dir=/path/to/images")
    if detector.category != category:
        raise ValueError(f"the detector loaded is for '{detector.category}', not '{category}': pass --params=category={category} on the command line")
    table = detector.score_files(list_images(input_dir), progress=inference.get("progress", True))
    scored = table["error"] == ""
    logger.info("%s: scored %d images from %s: %d anomalous at threshold %.4g; %d unreadable",
                category, int(scored.sum()), input_dir, int((table["decision"] == "anomalous").sum()),
                detector.threshold.value, int((~scored).sum()))
    for row in table.loc[~scored].itertuples():
        logger.warning("skipped %s", row.error)
    return table


def heatmap_overlays(localizer, table: pd.DataFrame, inference: dict) -> dict:
    """One overlay figure per scored image (input, patch-model heatmap), when the category has a
    trained localizer; an empty dict otherwise. At most ``inference.max_heatmaps`` images."""
    if localizer is None:
        logger.info("no localizer for this category (run --pipelines=localization): no heatmaps")
        return {}
    import numpy as np

    from cutpaste.core.data import load_image
    from cutpaste.core.report import heatmap_figure

    rows = table[table["error"].isna() | (table["error"].astype(str) == "")].head(int(inference.get("max_heatmaps", 200)))  # CSV reads "" as NaN
    images = np.stack([load_image(path, localizer.image_size) for path in rows["file"]]) if len(rows) else None
    if images is None:
        return {}
    maps = localizer.score_maps(images)
    low, high = np.percentile(maps, 1), np.percentile(maps, 99.5)  # one colour scale for the whole folder
    figures = {}
    for (row, image, heat) in zip(rows.itertuples(), images, maps):
        path = Path(row.file)
        name = f"{path.parent.name}__{path.stem}.png"
        figures[name] = heatmap_figure(image, heat, (low, high), f"{row.decision}: score {row.score:.4g}")
    return figures

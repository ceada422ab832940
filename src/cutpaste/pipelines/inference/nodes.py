"""Inference nodes."""

from __future__ import annotations

import logging

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

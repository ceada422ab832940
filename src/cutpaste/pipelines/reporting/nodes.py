"""Report nodes: gather per-category metrics into the paper's tables."""

from __future__ import annotations

import pandas as pd

from cutpaste.core import report


def build_detection_report(**metrics_by_category: dict) -> tuple[pd.DataFrame, str]:
    """Detection table (image AUROC per category and mean, paper beside ours) as DataFrame and Markdown."""
    table = report.detection_table(metrics_by_category)
    return table, report.to_markdown(table, "Image-level detection (image AUROC)")

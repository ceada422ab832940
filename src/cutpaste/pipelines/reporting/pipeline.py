"""Gathers every category's metrics into ``data/08_reporting`` tables."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node, pipeline

from cutpaste import project_params
from cutpaste.pipelines.reporting import nodes


def create_pipeline(categories: list[str] | None = None) -> Pipeline:
    categories = project_params.categories() if categories is None else categories
    return pipeline([
        node(nodes.build_detection_report, {category: f"{category}.metrics" for category in categories},
             ["detection_table", "detection_table_markdown"], name="build_detection_report"),
    ])

"""``kedro run --pipelines=inference --params=category=<name>,input_dir=/path/to/images``."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node, pipeline

from cutpaste.pipelines.inference import nodes


def create_pipeline(**_) -> Pipeline:
    return pipeline([
        node(nodes.score_folder, ["inference_detector", "params:category", "params:input_dir", "params:inference"],
             "inference_scores", name="score_folder"),
        node(nodes.heatmap_overlays, ["inference_localizer", "inference_scores", "params:inference"], "inference_heatmaps", name="heatmap_overlays"),
    ])

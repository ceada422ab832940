"""Patch-level localization, one namespace per category, beside the image-level model (GradCAM).

``kedro run --pipelines=localization`` (or the deprecated ``--pipeline=localization``) runs the
image-level detection pipeline too (GradCAM needs its model, and so does the patch model when it
starts from it: ``localization.training.init: image_model``), then the paper's Table 2.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline, node, pipeline

from cutpaste import registration
from cutpaste.pipelines.common import bind_category
from cutpaste.pipelines.detection.pipeline import build as build_detection
from cutpaste.pipelines.localization import nodes

LOCALIZATION_PARAMETERS = ("model", "training", "augment", "density", "localization", "localization_ingest", "threshold")


def create_category_pipeline(category: str) -> Pipeline:
    template = pipeline([
        node(bind_category(nodes.ingest_localization, category), ["raw_data_root", "params:localization_ingest"],
             ["localization_dataset", "localization_index"], name="ingest_localization"),
        node(nodes.split_training_images, ["localization_dataset", "params:threshold"], "localization_split", name="split_localization_images"),
        node(nodes.train_patch_model, ["localization_dataset", "localization_split", "params:model", "params:localization", "params:augment",
                                       "model"],  # the image-level model: the patch encoder's start with localization.training.init: image_model
             ["patch_model", "patch_training_history"], name="train_patch_model"),
        node(nodes.fit_localizer, ["patch_model", "localization_dataset", "localization_split", "params:model", "params:localization",
                                   "params:density"], "localizer", name="fit_localizer"),
        node(nodes.score_maps, ["localizer", "localization_dataset", "params:localization"],
             ["score_maps", "raw_score_maps", "patch_score_maps", "map_settings"], name="score_maps"),
        node(nodes.gradcam_maps, ["model", "density", "dataset", "localization_dataset", "params:model", "params:training"],
             "gradcam_maps", name="gradcam_maps"),
        node(nodes.evaluate_localization, ["score_maps", "raw_score_maps", "patch_score_maps", "gradcam_maps", "localization_dataset",
                                           "localization_index", "params:localization", "patch_training_history", "map_settings"],
             ["localization_metrics", "localization_figure"], name="evaluate_localization"),
    ])
    return pipeline(template, namespace=category, parameters={f"params:{name}" for name in LOCALIZATION_PARAMETERS})


def build(categories: list[str], parameters: dict) -> Pipeline:
    """Image-level detection (for GradCAM) + patch-level localization + Table 2 report, per category."""
    patch_level = sum((create_category_pipeline(category) for category in categories), Pipeline([]))
    report = pipeline([
        node(nodes.build_localization_report, {category: f"{category}.localization_metrics" for category in categories},
             ["localization_table", "localization_table_markdown"], name="build_localization_report"),
    ])
    return build_detection(categories, parameters) + patch_level + report


@registration.guarded("localization")
def create_pipeline(**_) -> Pipeline:
    config = registration.load()
    return build(config.categories, config.parameters)

"""Transfer learning, one namespace per category, and the paper's Table 3.

ingest (the detection pipeline's nodes and datasets) -> features of the pretrained encoder ->
fine-tuning (head only, then all layers, BatchNorm frozen) -> features of the fine-tuned encoder ->
per feature tap a GDE and image AUROC for both -> ``data/08_reporting/transfer_table.{csv,md}``.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline, node, pipeline

from cutpaste import registration
from cutpaste.pipelines.detection.pipeline import build as build_detection
from cutpaste.pipelines.transfer import nodes

TRANSFER_PARAMETERS = ("transfer", "augment", "density")


def create_category_pipeline(category: str) -> Pipeline:
    template = pipeline([
        node(nodes.extract_pretrained_features, ["dataset", "params:transfer"], "pretrained_features", name="extract_pretrained_features"),
        node(nodes.fine_tune_model, ["dataset", "params:transfer", "params:augment"], ["transfer_model", "transfer_training_history"],
             name="fine_tune"),
        node(nodes.training_figure, ["transfer_training_history", "dataset"], "transfer_training_figure", name="plot_fine_tuning"),
        node(nodes.extract_fine_tuned_features, ["transfer_model", "dataset", "params:transfer"], "fine_tuned_features",
             name="extract_fine_tuned_features"),
        node(nodes.evaluate_transfer, ["pretrained_features", "fine_tuned_features", "dataset", "index", "params:density", "params:transfer"],
             ["transfer_metrics", "transfer_scores"], name="evaluate_transfer"),
    ])
    return pipeline(template, namespace=category, parameters={f"params:{name}" for name in TRANSFER_PARAMETERS})


def build(categories: list[str], parameters: dict) -> Pipeline:
    """The detection pipeline's ingest nodes + the per-category transfer template + the Table 3 report."""
    ingest = build_detection(categories, parameters).to_outputs(*[f"{category}.{name}" for category in categories for name in ("dataset", "index")])
    per_category = sum((create_category_pipeline(category) for category in categories), Pipeline([]))
    report = pipeline([
        node(nodes.build_transfer_report, {category: f"{category}.transfer_metrics" for category in categories},
             ["transfer_table", "transfer_table_markdown"], name="build_transfer_report"),
    ])
    return ingest + per_category + report


@registration.guarded("transfer")
def create_pipeline(**_) -> Pipeline:
    config = registration.load()
    return build(config.categories, config.parameters)

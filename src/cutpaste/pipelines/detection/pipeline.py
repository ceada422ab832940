"""Image-level CutPaste detection, one namespace per category, and the detection report.

ingest -> train proxy task -> features of normal training images -> GDE -> image score (pooled, or combined
with the stem's local density: zsum, fused) -> threshold -> score test images ->
image AUROC and figures; then ``build_detection_report`` gathers every category's metrics into
``data/08_reporting/detection_table.{csv,md}``. Every artifact is a catalog dataset (see
``conf/base/catalog.yml``). ``kedro run --namespaces=brick`` runs one category (the report needs all).
"""

from __future__ import annotations

from kedro.pipeline import Pipeline, node, pipeline

from cutpaste import registration
from cutpaste.pipelines.common import bind_category
from cutpaste.pipelines.detection import nodes

SHARED_PARAMETERS = ("data_root", "demo", "ingest", "model", "training", "augment", "features", "density", "image_score", "threshold")


def create_category_pipeline(category: str, tsne: bool = False) -> Pipeline:
    """The detection template in namespace ``category``; ``tsne`` adds the paper's Figure 3 node."""
    template = pipeline([
        node(bind_category(nodes.prepare_raw_data, category), ["params:data_root", "params:demo"], "raw_data_root", name="prepare_raw_data"),
        node(bind_category(nodes.ingest_category, category), ["raw_data_root", "params:ingest"], ["dataset", "index"], name="ingest"),
        node(nodes.split_training_images, ["dataset", "params:threshold"], "holdout_split", name="split_training_images"),
        node(nodes.train_model, ["dataset", "holdout_split", "params:model", "params:training", "params:augment"], ["model", "training_history"], name="train"),
        node(nodes.training_figure, ["training_history", "dataset"], "training_figure", name="plot_training"),
        node(nodes.extract_train_features, ["model", "dataset", "params:model", "params:training", "params:features"], "train_features", name="extract_features"),
        node(nodes.fit_density, ["train_features", "holdout_split", "params:density"], "density", name="fit_density"),
        node(nodes.fit_image_score, ["model", "density", "dataset", "holdout_split", "params:model", "params:training", "params:features",
                                     "params:image_score", "params:threshold"], "image_score", name="fit_image_score"),
        node(nodes.calibrate_threshold, "image_score", "threshold", name="calibrate_threshold"),
        node(nodes.package_detector, ["model", "density", "image_score", "threshold", "dataset", "params:model", "params:training", "params:features"],
             "detector", name="package_detector"),
        node(nodes.score_test_images, ["model", "density", "dataset", "index", "params:model", "params:training", "params:features", "image_score"],
             "scores", name="score_test_images"),
        node(nodes.evaluate_detection, ["scores", "threshold", "dataset"], ["metrics", "roc_figure", "score_histogram"], name="evaluate"),
    ])
    parameters = {f"params:{name}" for name in SHARED_PARAMETERS}
    if tsne:
        template += pipeline([node(nodes.tsne_figure, ["model", "dataset", "index", "params:model", "params:training", "params:features",
                                                       "params:augment", "params:tsne"], ["tsne_figure", "tsne_points"], name="tsne")])
        parameters.add("params:tsne")
    return pipeline(template, namespace=category, parameters=parameters)


def create_report_pipeline(categories: list[str]) -> Pipeline:
    """One node gathering ``<category>.metrics`` of every category into the detection table."""
    return pipeline([
        node(nodes.build_detection_report, {category: f"{category}.metrics" for category in categories},
             ["detection_table", "detection_table_markdown"], name="build_detection_report"),
    ])


def tsne_enabled(parameters: dict) -> bool:
    """Whether the parameters ask for the t-SNE figure (``tsne.enabled``, off when absent)."""
    return bool((parameters.get("tsne") or {}).get("enabled", False))


def build(categories: list[str], parameters: dict) -> Pipeline:
    """Every category's detection template plus the report."""
    tsne = tsne_enabled(parameters)
    per_category = sum((create_category_pipeline(category, tsne) for category in categories), Pipeline([]))
    return per_category + create_report_pipeline(categories)


@registration.guarded("detection")
def create_pipeline(**_) -> Pipeline:
    config = registration.load()
    return build(config.categories, config.parameters)

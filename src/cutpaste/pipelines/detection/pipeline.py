"""Image-level CutPaste detection, one namespace per category.

ingest -> train proxy task -> features of normal training images -> GDE -> score test images ->
image AUROC and figures. Every artifact is a catalog dataset (see ``conf/base/catalog.yml``).
"""

from __future__ import annotations

from collections.abc import Callable

from kedro.pipeline import Pipeline, node, pipeline

from cutpaste import project_params
from cutpaste.pipelines.detection import nodes

SHARED_PARAMETERS = ("data_root", "demo", "ingest", "model", "training", "augment", "features", "density", "threshold")


def bind_category(function: Callable, category: str) -> Callable:
    """``function(category, *inputs)`` as a node function of the remaining inputs."""

    def bound(*inputs):
        return function(category, *inputs)

    bound.__name__ = bound.__qualname__ = function.__name__
    bound.__doc__ = function.__doc__
    return bound


def create_category_pipeline(category: str) -> Pipeline:
    template = pipeline([
        node(bind_category(nodes.prepare_raw_data, category), ["params:data_root", "params:demo"], "raw_data_root", name="prepare_raw_data"),
        node(bind_category(nodes.ingest_category, category), ["raw_data_root", "params:ingest"], ["dataset", "index"], name="ingest"),
        node(nodes.split_training_images, ["dataset", "params:threshold"], "holdout_split", name="split_training_images"),
        node(nodes.train_model, ["dataset", "holdout_split", "params:model", "params:training", "params:augment"], ["model", "training_history"], name="train"),
        node(nodes.training_figure, ["training_history", "dataset"], "training_figure", name="plot_training"),
        node(nodes.extract_train_features, ["model", "dataset", "params:model", "params:training", "params:features"], "train_features", name="extract_features"),
        node(nodes.fit_density, ["train_features", "holdout_split", "params:density"], "density", name="fit_density"),
        node(nodes.calibrate_threshold, ["density", "train_features", "holdout_split", "params:threshold"], "threshold", name="calibrate_threshold"),
        node(nodes.package_detector, ["model", "density", "threshold", "dataset", "params:model", "params:training", "params:features"], "detector", name="package_detector"),
        node(nodes.score_test_images, ["model", "density", "dataset", "index", "params:model", "params:training", "params:features"], "scores", name="score_test_images"),
        node(nodes.evaluate_detection, ["scores", "threshold", "dataset"], ["metrics", "roc_figure", "score_histogram"], name="evaluate"),
    ])
    parameters = {f"params:{name}" for name in SHARED_PARAMETERS}
    if tsne_enabled():  # the paper's Figure 3 (parameters "tsne")
        template += pipeline([node(nodes.tsne_figure, ["model", "dataset", "index", "params:model", "params:training", "params:features",
                                                       "params:augment", "params:tsne"], ["tsne_figure", "tsne_points"], name="tsne")])
        parameters.add("params:tsne")
    return pipeline(template, namespace=category, parameters=parameters)


def tsne_enabled(params: dict | None = None) -> bool:
    """Whether the run's parameters ask for the t-SNE figure (``tsne.enabled``, default off when absent)."""
    params = project_params.get_params() if params is None else params
    return bool((params.get("tsne") or {}).get("enabled", False))


def create_pipeline(categories: list[str] | None = None) -> Pipeline:
    categories = project_params.categories() if categories is None else categories
    return sum((create_category_pipeline(category) for category in categories), Pipeline([]))

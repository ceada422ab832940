"""The grid of proxy tasks x categories x seeds (plus ablation sweeps) and the paper's Tables 1, 4-8.

Per category (namespace ``variants.<category>``), once: prepare data, ingest, split off the
calibration images, build the synthetic-anomaly set. Per grid point and seed (namespace
``variants.<category>.<point>.s<seed>``): train -> features of normal training images -> GDE ->
test scores (and their normalized form for the ensemble) -> image AUROC, and the synthetic-anomaly
AUROC. One report node gathers every run into the tables. The grid is ``study`` in
``conf/<env>/parameters_variants.yml``.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline, node, pipeline

from cutpaste import registration
from cutpaste.core import study
from cutpaste.core.config import as_list
from cutpaste.namespaces import category_namespace, run_namespace
from cutpaste.pipelines.common import bind, bind_category, bind_run
from cutpaste.pipelines.detection import nodes as detection
from cutpaste.pipelines.variants import nodes

TABLES = ("table1", "table4", "table5", "table6", "table7", "table8")


def create_category_pipeline(category: str) -> Pipeline:
    namespace = category_namespace(category)
    return pipeline([
        node(bind_category(detection.prepare_raw_data, category), ["params:data_root", "params:demo"], "raw_data_root", name="prepare_raw_data"),
        node(bind_category(detection.ingest_category, category), ["raw_data_root", "params:ingest"], ["dataset", "index"], name="ingest"),
        node(detection.split_training_images, ["dataset", "params:threshold"], "holdout_split", name="split_training_images"),
        node(nodes.make_synthetic_set, ["dataset", "index", "params:study.synthetic"], "synthetic_set", name="make_synthetic_set"),
    ], namespace=namespace, parameters={"params:data_root", "params:demo", "params:ingest", "params:threshold", "params:study.synthetic"})


def create_run_pipeline(category: str, point: str, seed: int) -> Pipeline:
    """One trained model: the detection nodes with the point's settings and the seed bound in."""
    shared = category_namespace(category)
    template = pipeline([
        node(bind_run(nodes.train_run, point, seed), ["dataset", "holdout_split", "variants_settings", "params:model"],
             ["model", "training_history"], name="train"),
        node(bind_run(nodes.extract_run_features, point, seed), ["model", "dataset", "variants_settings", "params:model", "params:features"],
             "train_features", name="extract_features"),
        node(detection.fit_density, ["train_features", "holdout_split", "params:density"], "density", name="fit_density"),
        node(bind_run(nodes.score_run, point, seed),
             ["model", "density", "train_features", "holdout_split", "dataset", "index", "variants_settings", "params:model", "params:features"],
             "scores", name="score_test_images"),
        node(bind_run(nodes.evaluate_run, point, seed), ["scores", "dataset", "variants_settings"], "metrics", name="evaluate"),
        node(bind_run(nodes.evaluate_synthetic, point, seed),
             ["model", "density", "synthetic_set", "dataset", "variants_settings", "params:model", "params:features"],
             "synthetic_metrics", name="evaluate_synthetic"),
    ])
    return pipeline(
        template, namespace=run_namespace(category, point, seed),
        inputs={"dataset": f"{shared}.dataset", "index": f"{shared}.index", "holdout_split": f"{shared}.holdout_split",
                "synthetic_set": f"{shared}.synthetic_set", "variants_settings": "variants_settings"},
        parameters={"params:model", "params:features", "params:density"},
    )


def grid(parameters: dict) -> dict[str, dict]:
    """The grid points of the parameters ``study``, ``training`` and ``augment``."""
    if "study" not in parameters:
        raise registration.PipelineSettingsError("parameters: no 'study' section (conf/base/parameters_variants.yml) to build the variants grid from")
    return study.expand_grid(parameters["study"], parameters.get("training", {}), parameters.get("augment", {}))


def study_categories(categories: list[str], parameters: dict) -> list[str]:
    """``study.categories`` (a subset of the registered categories; the variant study is costly), else all."""
    chosen = (parameters.get("study") or {}).get("categories")
    if chosen is None:
        return list(categories)
    chosen = [str(name) for name in as_list(chosen)]
    unknown = [name for name in chosen if name not in categories]
    if unknown:
        raise registration.PipelineSettingsError(f"parameters study.categories: {unknown} not among the registered categories {categories}")
    return chosen


@registration.guarded("variants")
def create_pipeline(**_) -> Pipeline:
    config = registration.load()
    return build(study_categories(config.categories, config.parameters), grid(config.parameters))


def build(categories: list[str], points: dict[str, dict]) -> Pipeline:
    """Per category the shared data nodes, per grid point and seed one trained model, then the tables."""
    built_for = {point: [int(seed) for seed in settings["seeds"]] for point, settings in points.items()}
    parts = [pipeline([node(bind(nodes.expand_grid, built_for), ["params:study", "params:training", "params:augment"], "variants_settings",
                            name="variants_grid")])]
    report_inputs = {"points": "variants_settings", "study_params": "params:study"}
    for category in categories:
        parts.append(create_category_pipeline(category))
        for point, settings in points.items():
            for seed in settings["seeds"]:
                parts.append(create_run_pipeline(category, point, seed))
                namespace = run_namespace(category, point, seed)
                for kind, dataset in (("metrics", "metrics"), ("synthetic", "synthetic_metrics"), ("scores", "scores")):
                    report_inputs[f"{category}__{point}__{seed}__{kind}"] = f"{namespace}.{dataset}"
    outputs = {"results": "variants_results", "ensembles": "variants_ensembles"}
    for table in TABLES:
        outputs[table] = f"variants_{table}"
        outputs[f"{table}_markdown"] = f"variants_{table}_markdown"
    parts.append(pipeline([node(nodes.build_tables, report_inputs, outputs, name="build_variant_tables")]))
    return sum(parts, Pipeline([]))

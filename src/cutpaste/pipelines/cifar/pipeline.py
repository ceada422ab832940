"""CIFAR-10 one-class semantic anomaly detection (the paper's section 5.4), one namespace per class.

load the local CIFAR-10 (``cifar_root``) once -> per class (namespace ``cifar_<class>``): the
class's training images and the class-vs-rest test set -> per proxy task (rotation, Cutout,
CutPaste by default): train -> GDE of the training features -> test scores -> AUROC -> one table
of every task and class beside the paper's means. Settings: ``cifar`` in ``parameters_cifar.yml``.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline, node, pipeline

from cutpaste import registration
from cutpaste.pipelines.cifar import nodes
from cutpaste.pipelines.common import bind, bind_category, named_like


def settings(parameters: dict) -> tuple[list[str], list[str]]:
    """The classes and proxy tasks of the ``cifar`` parameters (checked)."""
    return nodes.classes_and_tasks(parameters.get("cifar") or {})


def namespace(normal_class: str) -> str:
    return f"cifar_{normal_class}"


def create_class_pipeline(normal_class: str, tasks: list[str]) -> Pipeline:
    nodes_ = [node(bind_category(nodes.one_class_dataset, normal_class), ["cifar_data", "params:cifar"], "dataset", name="one_class_dataset")]
    for task in tasks:
        nodes_ += [
            node(bind_category(nodes.train_task, task), ["dataset", "params:cifar"], [f"{task}_model", f"{task}_training_history"], name=f"train_{task}"),
            node(bind_category(nodes.score_task, task), [f"{task}_model", "dataset", "params:cifar"], f"{task}_scores", name=f"score_{task}"),
            node(bind_category(nodes.evaluate_task, task), [f"{task}_scores", "dataset"], f"{task}_metrics", name=f"evaluate_{task}"),
        ]
    return pipeline(nodes_, namespace=namespace(normal_class), inputs={"cifar_data"}, parameters={"params:cifar"})


@registration.guarded("cifar")
def create_pipeline(**_) -> Pipeline:
    return build(*settings(registration.load().parameters))


def build(classes: list[str], tasks: list[str]) -> Pipeline:
    """Load CIFAR-10 once, per class and proxy task train / score / evaluate, then one table."""
    metrics = {nodes.metrics_key(normal_class, task): f"{namespace(normal_class)}.{task}_metrics" for normal_class in classes for task in tasks}

    def build_table(**inputs):
        return nodes.build_table(list(classes), list(tasks), inputs)

    named_like(build_table, nodes.build_table)
    load = pipeline([node(bind(nodes.load_cifar, (list(classes), list(tasks))), ["params:cifar_root", "params:cifar"], "cifar_data", name="load_cifar")])
    report = pipeline([node(build_table, metrics, ["cifar_table", "cifar_table_markdown"], name="cifar_report")])
    return load + sum((create_class_pipeline(normal_class, list(tasks)) for normal_class in classes), Pipeline([])) + report

"""CIFAR-10 one-class semantic anomaly detection (the paper's section 5.4), one namespace per class.

load the local CIFAR-10 (``cifar_root``) once -> per class (namespace ``cifar_<class>``): the
class's training images and the class-vs-rest test set -> per proxy task (rotation, Cutout,
CutPaste by default): train -> GDE of the training features -> test scores -> AUROC -> one table
of every task and class beside the paper's means. Settings: ``cifar`` in ``parameters_cifar.yml``.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline, node, pipeline

from cutpaste import project_params
from cutpaste.core.augment import TASKS
from cutpaste.core.cifar import CIFAR10_CLASSES, class_index
from cutpaste.core.config import as_list
from cutpaste.pipelines.cifar import nodes
from cutpaste.pipelines.detection.pipeline import bind_category

DEFAULT_TASKS = ("rotation", "cutout_gray", "cutpaste")


def _as_list(value, default: tuple[str, ...]) -> list[str]:
    """A config list, a string separated by ";" (``--params`` splits on commas), or ``default`` for null / "all"."""
    if value is None or value == "all":
        return list(default)
    return [str(item) for item in as_list(value)]


def settings(params: dict | None = None) -> tuple[list[str], list[str]]:
    """The classes and proxy tasks of the run's ``cifar`` parameters (checked)."""
    params = project_params.get_params() if params is None else params
    section = params.get("cifar") or {}
    classes = _as_list(section.get("classes"), CIFAR10_CLASSES)
    tasks = _as_list(section.get("tasks"), DEFAULT_TASKS)
    for name in classes:
        class_index(name)
    unknown = [task for task in tasks if task not in TASKS]
    if unknown:
        raise ValueError(f"parameters cifar.tasks: unknown proxy task(s) {unknown}, expected some of {TASKS}")
    return classes, tasks


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


def create_pipeline(classes: list[str] | None = None, tasks: list[str] | None = None) -> Pipeline:
    if classes is None or tasks is None:
        configured_classes, configured_tasks = settings()
        classes = configured_classes if classes is None else classes
        tasks = configured_tasks if tasks is None else tasks
    metrics = {nodes.metrics_key(normal_class, task): f"{namespace(normal_class)}.{task}_metrics" for normal_class in classes for task in tasks}

    def build_table(**inputs):
        return nodes.build_table(list(classes), list(tasks), inputs)

    build_table.__name__ = build_table.__qualname__ = "build_table"
    build_table.__doc__ = nodes.build_table.__doc__
    load = pipeline([node(nodes.load_cifar, ["params:cifar_root", "params:cifar"], "cifar_data", name="load_cifar")])
    report = pipeline([node(build_table, metrics, ["cifar_table", "cifar_table_markdown"], name="cifar_report")])
    return load + sum((create_class_pipeline(normal_class, list(tasks)) for normal_class in classes), Pipeline([])) + report

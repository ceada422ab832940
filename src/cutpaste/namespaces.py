"""Namespaces of the variants pipeline and the MLflow child run each one maps to.

* ``variants.<category>``: ingestion, training/calibration split and synthetic anomalies of a
  category, shared by every run of that category (logged to the parent MLflow run);
* ``variants.<category>.<point>.s<seed>``: one trained model (one MLflow child run tagged
  variant, category, seed, point, sweep, value). A point is a proxy-task name, or
  ``<task>_<sweep>_<value>`` for an ablation sweep (e.g. ``3way_lr_0p01``).
"""

from __future__ import annotations

import re

PREFIX = "variants"
_SWEEP_POINT = re.compile(r"^(?P<variant>.+?)_(?P<sweep>lr|steps|jitter|max_area)_(?P<value>[0-9pm.e+]+)$")


def category_namespace(category: str) -> str:
    return f"{PREFIX}.{category}"


def run_namespace(category: str, point: str, seed: int) -> str:
    return f"{PREFIX}.{category}.{point}.s{int(seed)}"


def parse_point(point: str) -> dict[str, str]:
    """{"variant", "sweep", "value"} of a point name ("" when not a sweep point)."""
    match = _SWEEP_POINT.match(point)
    if not match:
        return {"variant": point, "sweep": "", "value": ""}
    value = match["value"].replace("p", ".").replace("m", "-")
    return {"variant": match["variant"], "sweep": match["sweep"], "value": value}


def child_run(namespace: str | None) -> tuple[str | None, dict[str, str]] | None:
    """The MLflow run of a node namespace: None when it is not a variants namespace, (None, {}) for
    the parent run (category-level nodes), (run name, tags) for one model's child run."""
    parts = (namespace or "").split(".")
    if parts[0] != PREFIX or len(parts) < 2:
        return None
    if len(parts) != 4 or not re.fullmatch(r"s\d+", parts[3]):
        return None, {}
    _, category, point, seed = parts
    tags = {"category": category, "point": point, "seed": seed[1:], **parse_point(point)}
    return f"{point} {category} s{tags['seed']}", tags

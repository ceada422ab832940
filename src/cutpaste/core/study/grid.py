"""The grid of the study: every point (a proxy task, or one ablation-sweep setting of it) with its settings.

A *point* of the grid is one training configuration: a proxy task (``variant``) and, for the
ablation sweeps, one changed setting (learning rate, steps, jitter intensity, max patch area).
Every point runs for every category and every seed.
"""

from __future__ import annotations

import copy

from cutpaste.core.config import as_list

SWEEPS = {  # sweep name -> (section, key) of the setting it changes
    "lr": ("training", "lr"),
    "steps": ("training", "steps"),
    "jitter": ("augment", "jitter"),
    "max_area": ("augment", "max_area"),
}


def value_label(value) -> str:
    """A sweep value as a name part: 0.003 -> "0p003", -1 -> "m1"."""
    return f"{value:g}".replace(".", "p").replace("-", "m") if isinstance(value, float) else str(value)


def _apply_override(training: dict, augment: dict, sweep: str, value) -> None:
    if sweep == "lr":
        training["lr"] = float(value)
    elif sweep == "steps":
        training["steps"] = int(value)
    elif sweep == "jitter":
        for section in ("cutpaste", "scar"):
            augment.setdefault(section, {})["jitter"] = float(value)
    elif sweep == "max_area":
        low = float(augment.setdefault("cutpaste", {}).get("area_ratio", (0.02, 0.15))[0])
        augment["cutpaste"]["area_ratio"] = [min(low, float(value)), float(value)]
    else:
        raise ValueError(f"unknown sweep '{sweep}', expected one of {tuple(SWEEPS)}")


def _variant_training(study: dict, base_training: dict, variant: str) -> dict:
    return {**copy.deepcopy(base_training), **((study.get("variant_training") or {}).get(variant) or {})}


def expand_grid(study: dict, training: dict, augment: dict) -> dict[str, dict]:
    """Every point of the study: point name -> settings.

    Args:
        study: ``variants`` (list of task names), ``seeds``, optional ``training`` (overrides of the
            training parameters for every point, e.g. a smaller step budget), optional
            ``variant_training`` (task -> further overrides, e.g. the paper's batch 96 for 3-way), optional ``sweeps``:
            ``variant`` (task swept), ``seeds``, and lists for any of ``lr``, ``steps``, ``jitter``,
            ``max_area``.
        training / augment: the project's training and augmentation parameters.

    Returns:
        point -> {"variant", "sweep" (None for the main grid), "value", "seeds", "training", "augment"}.
        A sweep value that reproduces a main-grid point's settings reuses that point (no retraining).
    """
    from cutpaste.core.augment import TASKS

    base_training = {**training, **(study.get("training") or {})}
    seeds = [int(seed) for seed in as_list(study.get("seeds", [0]))]
    points: dict[str, dict] = {}
    for variant in as_list(study.get("variants")):
        if variant not in TASKS:
            raise ValueError(f"study.variants: unknown proxy task '{variant}', expected names from {TASKS}")
        points[variant] = {"variant": variant, "sweep": None, "value": None, "seeds": seeds,
                           "training": _variant_training(study, base_training, variant), "augment": {**copy.deepcopy(augment), "task": variant}}
    sweeps = dict(study.get("sweeps") or {})
    sweep_variant = sweeps.pop("variant", "3way")
    sweep_seeds = [int(seed) for seed in as_list(sweeps.pop("seeds", seeds))]
    for sweep, values in sweeps.items():
        for raw in as_list(values):
            value = float(raw) if sweep != "steps" else int(float(raw))
            point_training = _variant_training(study, base_training, sweep_variant)
            point_augment = {**copy.deepcopy(augment), "task": sweep_variant}
            _apply_override(point_training, point_augment, sweep, value)
            same = [name for name, point in points.items() if point["sweep"] is None and point["training"] == point_training
                    and point["augment"] == point_augment]
            name = f"{sweep_variant}_{sweep}_{value_label(value)}"
            if same:
                points[same[0]].setdefault("also", []).append({"sweep": sweep, "value": value})
                continue
            points[name] = {"variant": sweep_variant, "sweep": sweep, "value": value, "seeds": sweep_seeds,
                            "training": point_training, "augment": point_augment}
    if not points:
        raise ValueError("study: no grid point (set study.variants or study.sweeps)")
    return points

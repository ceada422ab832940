"""Proxy tasks by name, as the pipelines' ``augment.task`` setting names them."""

from __future__ import annotations

from cutpaste.core.augment.baselines import Confetti, Cutout, RotationPrediction, ScarColor
from cutpaste.core.augment.cutpaste import CutPaste, CutPaste3Way, CutPasteScar, CutPasteUnion
from cutpaste.core.augment.proxy import ProxyTask

TASKS = ("3way", "binary", "cutpaste", "scar", "rotation", "cutout_gray", "cutout_mean", "cutout_color", "scar_color", "confetti")
_GEOMETRY_KEYS = ("area_ratio", "aspect_ratio_low", "aspect_ratio_high")
_SCAR_GEOMETRY_KEYS = ("width_px", "length_px", "rotation_deg", "reference_size")


def build_task(name: str, cutpaste: dict | None = None, scar: dict | None = None, confetti: dict | None = None) -> ProxyTask:
    """Proxy task by name.

    "3way" (the paper's default), "binary" (union), "cutpaste", "scar" (CutPaste-Scar), and the
    paper's baselines: "rotation" (4-way), "cutout_gray", "cutout_mean", "cutout_color" (box
    geometry from ``cutpaste``), "scar_color" (geometry from ``scar``), "confetti" (geometry from
    ``cutpaste``, ``confetti``: num_patches and jitter; default jitter ``cutpaste``'s).
    """
    if name not in TASKS:
        raise ValueError(f"unknown proxy task '{name}', expected one of {TASKS}")
    cutpaste, scar = dict(cutpaste or {}), dict(scar or {})
    geometry = {key: cutpaste[key] for key in _GEOMETRY_KEYS if key in cutpaste}
    if name == "rotation":
        return RotationPrediction()
    if name.startswith("cutout_"):
        view = Cutout(name.removeprefix("cutout_"), **geometry)
    elif name == "scar_color":
        view = ScarColor(**{key: scar[key] for key in _SCAR_GEOMETRY_KEYS if key in scar})
    elif name == "confetti":
        view = Confetti(**{**geometry, **({"jitter": cutpaste["jitter"]} if "jitter" in cutpaste else {}), **(confetti or {})})
    elif name == "3way":
        return CutPaste3Way(CutPaste(**cutpaste), CutPasteScar(**scar))
    elif name == "binary":
        view = CutPasteUnion(CutPaste(**cutpaste), CutPasteScar(**scar))
    else:
        view = CutPaste(**cutpaste) if name == "cutpaste" else CutPasteScar(**scar)
    return ProxyTask([None, view])

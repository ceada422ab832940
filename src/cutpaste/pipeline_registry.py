"""Project pipelines.

* ``__default__`` / ``detection``: per-category image-level CutPaste (one namespace per category)
  followed by the cross-category report.
* ``localization``: the image-level pipeline plus the patch-level model, dense score maps,
  GradCAM, pixel metrics and the paper's Table 2.
* ``inference``: score a folder of new images with one category's trained detector.

Categories come from the run's parameters (``categories``, or discovered under ``data_root``).
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from cutpaste import project_params
from cutpaste.pipelines import detection, inference, localization, reporting


def register_pipelines() -> dict[str, Pipeline]:
    categories = project_params.categories()
    image_level = detection.create_pipeline(categories) + reporting.create_pipeline(categories)
    return {
        "__default__": image_level,
        "detection": image_level,
        "localization": localization.create_pipeline(categories) + reporting.create_pipeline(categories),
        "inference": inference.create_pipeline(),
    }

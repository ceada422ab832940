"""Project pipelines.

* ``__default__`` / ``detection``: per-category image-level CutPaste (one namespace per category)
  followed by the cross-category report.
* ``localization``: the image-level pipeline plus the patch-level model, dense score maps,
  GradCAM, pixel metrics and the paper's Table 2.
* ``inference``: score a folder of new images with one category's trained detector.
* ``transfer``: ImageNet-pretrained backbone, pretrained-only vs CutPaste fine-tuned, feature
  taps pool and level 7: the paper's Table 3.
* ``variants``: every proxy task (and ablation sweep point) x category x seed, the paper's Tables
  1, 4, 5, 6, 7, 8 (grid: ``study`` in ``parameters_variants.yml``).
* ``cifar``: CIFAR-10 one-class semantic detection from a local copy (``cifar_root``), rotation vs
  Cutout vs CutPaste (paper section 5.4; settings: ``cifar`` in ``parameters_cifar.yml``).

Categories come from the run's parameters (``categories``, or discovered under ``data_root``).
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from cutpaste import project_params
from cutpaste.pipelines import cifar as cifar_one_class
from cutpaste.pipelines import detection, inference, localization, reporting, transfer
from cutpaste.pipelines import variants as variant_study


def register_pipelines() -> dict[str, Pipeline]:
    categories = project_params.categories()
    image_level = detection.create_pipeline(categories) + reporting.create_pipeline(categories)
    return {
        "__default__": image_level,
        "detection": image_level,
        "localization": localization.create_pipeline(categories) + reporting.create_pipeline(categories),
        "inference": inference.create_pipeline(),
        "transfer": transfer.create_pipeline(categories),
        "variants": variant_study.create_pipeline(categories),
        "cifar": cifar_one_class.create_pipeline(),
    }

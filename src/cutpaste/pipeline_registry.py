"""Project pipelines, one package each under ``pipelines/`` (found by Kedro's ``find_pipelines``).

* ``__default__`` / ``detection``: per-category image-level CutPaste (one namespace per category)
  followed by the cross-category detection report.
* ``localization``: the image-level pipeline plus the patch-level model, dense score maps,
  GradCAM, pixel metrics and the paper's Table 2.
* ``inference``: score a folder of new images with one category's trained detector.
* ``transfer``: ImageNet-pretrained backbone, pretrained-only vs CutPaste fine-tuned, feature
  taps pool and level 7: the paper's Table 3.
* ``variants``: every proxy task (and ablation sweep point) x category x seed, the paper's Tables
  1, 4, 5, 6, 7, 8 (grid: ``study`` in ``parameters_variants.yml``).
* ``cifar``: CIFAR-10 one-class semantic detection from a local copy (``cifar_root``), rotation vs
  Cutout vs CutPaste (paper section 5.4; settings: ``cifar`` in ``parameters_cifar.yml``).

``kedro run --pipelines=<name>`` imports and builds only that package (Kedro's selective loading).
What each pipeline is built for (categories, variants grid) is read from configuration files by
:mod:`cutpaste.registration`; a settings mistake breaks only its own pipeline.
"""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline


def register_pipelines() -> dict[str, Pipeline]:
    found = find_pipelines(raise_errors=True)
    if "detection" in found:
        found["__default__"] = found["detection"]
    return found

"""CutPaste augmentations as batched tensor operations.

Every function takes a batch ``(B, 3, H, W)`` float tensor in [0, 1] on any device and returns a
new tensor of the same shape; nothing loops over images in Python. Randomness comes from an
explicit ``torch.Generator`` so a run repeats exactly. Each augmentation separates *sampling* its
random parameters (``sample``) from *applying* them (``apply``), so the parameters can be logged,
replayed, or checked against a per-image reference implementation.

Defaults are the paper's (Li et al., CVPR 2021), at 256 x 256 px:

* CutPaste: patch area / image area ~ U(0.02, 0.15); aspect ratio ~ U(0.3, 1) or U(1, 3.3) with
  equal probability; source and target boxes lie inside the image; the patch is colour-jittered
  (brightness, contrast, saturation, hue, random order) with intensity 0.1 before pasting.
* CutPaste-Scar: a thin rectangle, width U[2, 16] px and length U[10, 25] px (scaled by H / 256),
  cut from the same image, jittered, rotated U(-45, 45) degrees and pasted elsewhere.
* 3-way: normal / CutPaste / CutPaste-Scar; binary union: normal / (CutPaste or Scar).

The paper's baselines: Cutout (a CutPaste-shaped box filled with gray, the image's mean colour or a
random colour), Scar (CutPaste-Scar's rotated thin rectangle filled with a random colour), Confetti
noise (local boxes colour-jittered in place) and 4-way rotation prediction (0/90/180/270 degrees).

Modules, one idea each: ``cutpaste`` (CutPaste, Scar, union, 3-way), ``baselines`` (Cutout, Scar colour,
Confetti, rotation), ``jitter`` (colour jitter), ``preprocess`` (crop, translation), ``boxes`` and
``sampling`` (batched box and random-number helpers), ``proxy`` (the k-way task), ``tasks``
(``build_task`` by name). Every public name is re-exported here.
"""

from cutpaste.core.augment.baselines import Confetti, Cutout, Rotate90, RotationPrediction, ScarColor
from cutpaste.core.augment.boxes import box_mask, crop_boxes, paste_from_buffer
from cutpaste.core.augment.cutpaste import CutPaste, CutPaste3Way, CutPasteScar, CutPasteUnion, PatchParams
from cutpaste.core.augment.jitter import (
    GRAY_WEIGHTS,
    NUM_JITTER_OPS,
    JitterParams,
    color_jitter,
    hsv_to_rgb,
    rgb_to_gray,
    rgb_to_hsv,
    sample_jitter,
)
from cutpaste.core.augment.preprocess import Preprocess, random_crop, random_translate
from cutpaste.core.augment.proxy import ProxyTask
from cutpaste.core.augment.sampling import randint_below, uniform
from cutpaste.core.augment.tasks import TASKS, build_task

__all__ = [
    "GRAY_WEIGHTS", "NUM_JITTER_OPS", "TASKS", "Confetti", "CutPaste", "CutPaste3Way", "CutPasteScar", "CutPasteUnion", "Cutout",
    "JitterParams", "PatchParams", "Preprocess", "ProxyTask", "Rotate90", "RotationPrediction", "ScarColor", "box_mask", "build_task",
    "color_jitter", "crop_boxes", "hsv_to_rgb", "paste_from_buffer", "randint_below", "random_crop", "random_translate", "rgb_to_gray",
    "rgb_to_hsv", "sample_jitter", "uniform",
]

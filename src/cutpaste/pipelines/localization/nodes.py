"""Nodes of the per-category localization pipeline (patch-level CutPaste, the paper's section 2.4)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from cutpaste.core import localize, report
from cutpaste.core.augment import Preprocess, build_task
from cutpaste.core.density import GaussianDensity
from cutpaste.core.localize import LocationDensity, gradcam, grid_size, scaled
from cutpaste.core.metrics import aupro, image_auroc, pixel_auroc
from cutpaste.core.register import RigidRegistration
from cutpaste.core.train import Trainer, final_accuracy, warn_if_unlearned
from cutpaste.pipelines.detection.nodes import build_model, ingest_category, load_model, train_config
from cutpaste.pipelines.detection.nodes import split_training_images as _split_training_images

logger = logging.getLogger(__name__)


def _sizes(localization: dict, image_size: int) -> dict:
    """Patch sizes and stride, given at 256 px in config, scaled to the working size."""
    sizes = {key: scaled(int(localization[key]), image_size) for key in ("train_patch_size", "extract_patch_size", "stride")}
    sizes["sigma"] = float(localization["sigma"]) * image_size / 256
    sizes["grid"] = grid_size(image_size, sizes["extract_patch_size"], sizes["stride"])
    return sizes


def localization_image_size(category: str, localization_ingest: dict) -> int:
    """The category's localization working size: ``image_size_by_category[category]`` where listed,
    else ``image_size``."""
    by_category = localization_ingest.get("image_size_by_category") or {}
    if not isinstance(by_category, dict):
        raise ValueError(f"localization_ingest.image_size_by_category must map category names to sizes, got {by_category!r}")
    size = by_category.get(category, localization_ingest["image_size"])
    if isinstance(size, bool) or not isinstance(size, int) or size < 16:
        raise ValueError(f"localization_ingest: the working size of {category!r} must be an integer of at least 16 px, got {size!r}")
    return size


def ingest_localization(category: str, data_root: str, localization_ingest: dict) -> tuple[dict, pd.DataFrame]:
    """Decode a category once at its localization working size (``localization_image_size``)."""
    return ingest_category(category, data_root, {**localization_ingest, "image_size": localization_image_size(category, localization_ingest)})


def split_training_images(dataset: dict, threshold: dict) -> dict[str, list[int]]:
    """The calibration split of the normal training images (``threshold`` settings, as the detection
    pipeline): the patch model and its density see only ``fit``; ``calibration`` normalises the maps."""
    return _split_training_images(dataset, threshold)


PATCH_INITS = ("random", "image_model")


def _patch_init(localization: dict) -> str:
    init = localization["training"].get("init", "random")
    if init not in PATCH_INITS:
        raise ValueError(f"localization.training.init must be one of {', '.join(PATCH_INITS)}, got {init!r}")
    return init


def warm_start_encoder(network: torch.nn.Module, image_model: dict | torch.nn.Module, category: str) -> None:
    """Copy the image-level model's encoder (weights and BatchNorm statistics) into the patch model.

    Both are trained on the same ``fit`` images with the same proxy task, so the calibration images
    stay unseen; the projection head and classifier start afresh.
    """
    state = image_model.state_dict() if isinstance(image_model, torch.nn.Module) else image_model
    encoder = {key.removeprefix("encoder."): value for key, value in state.items() if key.startswith("encoder.")}
    try:
        network.encoder.load_state_dict(encoder)
    except RuntimeError as error:
        raise ValueError(f"{category}: the image model's encoder does not fit the patch model's (both are built from the "
                         f"`model` parameters; was data/06_models/{category}/model.pt trained with another backbone?): {error}") from error


def _patch_training(category: str, localization: dict) -> dict:
    """The patch model's training settings for a category: ``aligned_steps`` (when set) replaces ``steps``
    for the per-location (aligned) categories."""
    training = dict(localization["training"])
    aligned_steps = training.pop("aligned_steps", None)
    if aligned_steps is not None and _per_location(category, localization):
        if not isinstance(aligned_steps, int) or isinstance(aligned_steps, bool) or aligned_steps < 0:
            raise ValueError(f"localization.training.aligned_steps must be a whole number of steps >= 0 or null, got {aligned_steps!r}")
        training["steps"] = aligned_steps
    return training


def train_patch_model(dataset: dict, split: dict, model: dict, localization: dict, augment: dict,
                      image_model: dict | torch.nn.Module | None = None):
    """Train the 3-way task on random patches (crop first, then CutPaste inside the patch) of the
    ``fit`` split of the normal training images.

    With ``localization.training.init: image_model`` the encoder starts from ``image_model`` (the
    category's image-level model, :func:`warm_start_encoder`); with ``random`` from a seeded random init.
    ``localization.training.aligned_steps`` (when set) replaces ``steps`` for the per-location (aligned) categories.
    """
    sizes = _sizes(localization, dataset["image_size"])
    config = train_config(_patch_training(dataset["category"], localization))
    torch.manual_seed(config.seed)
    scale = dataset["image_size"] / 256  # scars keep their size in working-image pixels, not in patch pixels
    scar = {**augment.get("scar", {}), "reference_size": sizes["train_patch_size"]}
    scar["width_px"] = [value * scale for value in augment["scar"]["width_px"]]
    scar["length_px"] = [value * scale for value in augment["scar"]["length_px"]]
    task = build_task(augment["task"], augment.get("cutpaste"), scar)
    network = build_model(model, task.num_classes)
    init = _patch_init(localization)
    if init == "image_model":
        if image_model is None:
            raise ValueError(f"{dataset['category']}: localization.training.init is image_model but no image model was given")
        warm_start_encoder(network, image_model, dataset["category"])
    preprocess = Preprocess(**{**augment.get("preprocess", {}), "crop_size": sizes["train_patch_size"]})
    checkpoint = None
    if localization["training"].get("checkpoint_dir"):
        from pathlib import Path

        checkpoint = Path(localization["training"]["checkpoint_dir"]) / dataset["category"] / f"patch_{augment['task']}_seed{config.seed}.pt"
    logger.info("%s: patch model on %d px crops of %d px images, %d steps, encoder from %s", dataset["category"], sizes["train_patch_size"],
                dataset["image_size"], config.steps, "the image model" if init == "image_model" else "a random init")
    history = Trainer(network, task, preprocess, config, checkpoint).fit(dataset["train_images"][split["fit"]], progress=localization["training"].get("progress", True))
    warn_if_unlearned(history, task.num_classes, f"{dataset['category']}: patch model")
    return network.cpu(), history


def _embed_args(localization: dict) -> dict:
    training = localization["training"]
    return {"batch_size": int(localization["batch_size"]), "device": training["device"], "precision": training["precision"],
            "memory_format": training["memory_format"]}


def _normalization(localization: dict) -> str | None:
    """The statistic the maps are normalised with (``localization.normalize_statistic``), None for raw maps."""
    return str(localization.get("normalize_statistic", "log_ratio")) if localization.get("normalize", True) else None


def _fused(localization: dict) -> bool:
    """Whether the maps are fused with the stem map (``localization.stem.fuse``, with log_ratio maps only)."""
    return bool((localization.get("stem") or {}).get("fuse", False)) and _normalization(localization) == "log_ratio"


def _fusion(localization: dict) -> str:
    """How fused maps combine the patch and stem maps (``localization.stem.fusion``: max or zsum)."""
    return str((localization.get("stem") or {}).get("fusion", "max"))


def _fusion_reference(localization: dict) -> str:
    """The "max" fusion's reference of each map (``localization.stem.reference``: pixel or image_max)."""
    reference = (localization.get("stem") or {}).get("reference", "pixel")
    try:
        localize.check_fusion_reference(reference, _fusion(localization))
    except ValueError as error:
        raise ValueError(f"localization.stem.reference: {error}") from error
    return reference


def _fixed_or_synthetic(value: str, check, key: str) -> str:
    """A map setting that is either one of its fixed values (``check`` refuses others) or "synthetic" (chosen per
    category on synthetic defects); a bad value is refused naming ``localization.<key>``."""
    if value != "synthetic":
        try:
            check(value)
        except ValueError as error:
            raise ValueError(f"localization.{key}: {error} or 'synthetic'") from error
    return value


def _component(localization: dict) -> str:
    """The maps a fused localizer returns (``localization.stem.component``: fused, patch, stem or synthetic)."""
    return _fixed_or_synthetic(str((localization.get("stem") or {}).get("component", "fused")), localize.check_component, "stem.component")


def _map_center(localization: dict) -> str:
    """How the final normalised maps are centred (``localization.map_center``: none, image_median or synthetic)."""
    return _fixed_or_synthetic(str(localization.get("map_center", "none")), localize.check_map_center, "map_center")


def _figure_unit(localization: dict) -> str:
    """The fused maps' unit as :func:`cutpaste.core.report.localization_figure` names it."""
    if _fusion(localization) != "max":
        return "fused_zsum"
    return "fused_image_max" if _fusion_reference(localization) == "image_max" else "fused"


def _per_location(category: str, localization: dict) -> bool:
    return category in set(localization.get("per_location_categories") or [])


def _location_density(category: str, localization: dict, density: dict) -> LocationDensity:
    storage = localization.get("density") or {}
    return LocationDensity(_per_location(category, localization), density["shrinkage"], density["l2_normalize"],
                           floor_ratio=float(storage.get("floor_ratio", 0.1)), max_rank=storage.get("max_rank", 128),
                           storage_dtype=str(storage.get("storage_dtype", "float16")),
                           neighborhood=int(storage.get("neighborhood", 0)))


CAMERA_LEVEL_KEYS = ("camera_level", "camera_level_tolerance_px")


def _registration(category: str, localization: dict):
    """An unfitted :class:`RigidRegistration` for the categories listed under
    ``localization.registration.categories`` (parts that rotate or move), else None."""
    settings = dict(localization.get("registration") or {})
    for key in CAMERA_LEVEL_KEYS:
        settings.pop(key, None)
    if category not in set(settings.pop("categories", None) or []):
        return None
    return RigidRegistration(**settings)


def _camera_level(localization: dict) -> dict:
    """The camera-frame level's settings for a registering localizer (``localization.registration.camera_level``,
    ``camera_level_tolerance_px``)."""
    settings = localization.get("registration") or {}
    return {"camera_level": bool(settings.get("camera_level", False)), "camera_tolerance": int(settings.get("camera_level_tolerance_px", 2))}


def fit_localizer(state_dict: dict, dataset: dict, split: dict, model: dict, localization: dict, density: dict) -> localize.Localizer:
    """Patch model + density + geometry (+ normalisation), the one stored copy of the patch density.

    The density (one GDE per grid location for aligned objects, one shared otherwise) is fitted on
    the ``fit`` split of the normal training images (with ``localization.normalize_intensity``, each
    scaled to the fit images' median grey level, and so is every image the localizer scores later); with ``localization.normalize`` the per-location
    normalisation statistics come from the ``calibration`` split alone (no test image is read).
    """
    sizes = _sizes(localization, dataset["image_size"])
    component = _component(localization)  # a bad setting fails before the fit
    map_center = _map_center(localization)
    location_density = _location_density(dataset["category"], localization, density)
    fit_images = dataset["train_images"][split["fit"]]
    intensity_reference = None
    if localization.get("normalize_intensity", False):
        intensity_reference = float(np.median(localize.intensity_levels(fit_images)))
        logger.info("%s: every image scaled to the fit images' median grey level, %.1f", dataset["category"], intensity_reference)
        fit_images = localize.normalize_intensity(fit_images, intensity_reference)
    registration = _registration(dataset["category"], localization)
    if registration is not None:
        logger.info("%s: registering images onto a reference pose (rotations up to %g degrees)", dataset["category"], registration.max_rotation_deg)
        fit_images, _ = registration.fit(fit_images).align(fit_images)
    logger.info("%s: fitting a %s GDE on %dx%d patch grids of %d images", dataset["category"],
                "per-location" if location_density.per_location else "shared", sizes["grid"], sizes["grid"], len(split["fit"]))
    fitted = localize.fit_patch_density(load_model(state_dict, model), fit_images, location_density,
                                        sizes["extract_patch_size"], sizes["stride"], **_embed_args(localization))
    stem = localization.get("stem") or {}
    localizer = localize.Localizer(state_dict, dict(model), fitted, dataset["image_size"], sizes["extract_patch_size"],
                                   sizes["stride"], sizes["sigma"], _embed_args(localization), registration=registration,
                                   intensity_reference=intensity_reference, held_out_references=bool(stem.get("held_out_references", False)),
                                   fusion_reference=_fusion_reference(localization), map_center="none" if map_center == "synthetic" else map_center,
                                   **(_camera_level(localization) if registration is not None else {}))
    statistic = _normalization(localization)
    if _fused(localization):
        per_location = _per_location(dataset["category"], localization) and bool(stem.get("per_location", False))
        logger.info("%s: fitting the stem density (first-convolution responses) for fused maps%s", dataset["category"],
                    ", read per location" if per_location else "")
        localizer.fit_stem(dataset["train_images"][split["fit"]], int(stem.get("max_vectors", 100_000)), int(stem.get("seed", 0)), per_location,
                           int(stem.get("tolerance_px", 0)), _fusion(localization))
    elif stem.get("fuse", False):
        logger.warning("%s: localization.stem.fuse needs normalised log_ratio maps (normalize: true, normalize_statistic: log_ratio); "
                       "the maps stay unfused", dataset["category"])
    if statistic is not None:
        logger.info("%s: normalising maps per location (%s) from %d calibration images", dataset["category"], statistic, len(split["calibration"]))
        localizer.calibrate(dataset["train_images"][split["calibration"]], statistic)
    fused_maps = localizer.fused and localizer.normalized
    for setting, value in (("stem.component", component), ("map_center", "synthetic" if map_center == "synthetic" else "none")):
        if value not in ("fused", "none") and not fused_maps:  # a fixed centre applies to any normalised maps
            logger.warning("%s: localization.%s %r needs fused maps (stem.fuse with log_ratio normalisation); the maps stay as they are",
                           dataset["category"], setting, value)
    if component != "synthetic" and fused_maps:
        localizer.component = component
    choose = [name for name, value in (("component", component), ("centre", map_center)) if value == "synthetic"] if fused_maps else []
    if choose:
        synthetic = stem.get("synthetic") or {}
        logger.info("%s: choosing the map %s on synthetic defects in the calibration images", dataset["category"], " and ".join(choose))
        localizer.choose_maps(dataset["train_images"][split["calibration"]], component="component" in choose, center="centre" in choose,
                              copies=int(synthetic.get("copies", 4)), seed=int(synthetic.get("seed", 0)),
                              progress=localization["training"].get("progress", True))  # copies x calibration images: minutes at 256 px
    logger.info("%s: patch density %.1f MB", dataset["category"], fitted.nbytes() / 1e6)
    return localizer


def map_settings(localizer: localize.Localizer) -> dict:
    """What the localizer's final maps are: normalised or not, fused or not, the component a fused localizer
    returns and how its maps are centred, with the synthetic-defect scores of a choice made per category."""
    center = localizer.map_center if localizer.normalized else "none"
    return {"normalized": localizer.normalized, "fused": localizer.fused, "component": localizer.component, "map_center": center,
            "center_cap": localizer.center_cap() if center == "image_median_capped" else None,
            "component_scores": localizer.component_scores, "center_scores": localizer.center_scores}


def score_maps(localizer: localize.Localizer, dataset: dict, localization: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(N_test, S, S) float32 pixel anomaly scores, three times, from one pass of dense scoring: the
    localizer's maps (normalised when it is calibrated, fused with the stem map when it has one), the
    raw patch maps (squared Mahalanobis distances) and the patch maps before fusion; and the
    localizer's :func:`map_settings` (what the first maps are)."""
    images, transforms = localizer.register(dataset["test_images"])
    grids = localizer.score_grids(images, progress=localization["training"].get("progress", True), registered=True)
    patch_maps = localizer.maps_from_grids(grids, transforms=transforms)
    maps = localizer.with_stem(patch_maps, dataset["test_images"], (images, transforms))
    return maps, localizer.maps_from_grids(grids, normalized=False, transforms=transforms), patch_maps, map_settings(localizer)


def gradcam_maps(state_dict: dict, gde: GaussianDensity, image_dataset: dict, dataset: dict, model: dict, training: dict) -> np.ndarray:
    """GradCAM of the image-level model, resized to the localization working size: (N_test, S, S)."""
    maps = gradcam(load_model(state_dict, model), gde, image_dataset["test_images"], device=training["device"])
    resized = torch.nn.functional.interpolate(torch.from_numpy(maps)[:, None], size=(dataset["image_size"],) * 2, mode="bilinear", align_corners=False)
    return resized[:, 0].numpy()


def evaluate_localization(maps: np.ndarray, raw_maps: np.ndarray, patch_maps: np.ndarray, cams: np.ndarray, dataset: dict, index: pd.DataFrame,
                          localization: dict, patch_history: pd.DataFrame | None = None, settings: dict | None = None):
    """Pixel AUROC, AUPRO (FPR <= 0.3), image AUROC from the map's max, of the maps, of the raw
    (unnormalised) maps and, when the maps are fused with the stem, of the patch maps alone (``settings``,
    from :func:`map_settings`, say how the maps are centred; without them, ``localization.map_center``);
    GradCAM pixel AUROC; the patch model's proxy-task training accuracy at the end of its training
    (from ``patch_history``; near chance: its maps rest on close to untrained features); Figure 4
    with the maps and colour bars."""
    masks = dataset["test_masks"]
    fused = _fused(localization)
    labels = index.loc[index["split"] == "test", "label"].to_numpy()
    normalization = _normalization(localization)
    fusion = _fusion(localization)
    metrics = {
        "pixel_auroc": pixel_auroc(masks, maps), "aupro": aupro(masks, maps),
        "image_auroc_from_map": image_auroc(labels, maps.reshape(len(maps), -1).max(1)),
        "pixel_auroc_raw": pixel_auroc(masks, raw_maps), "aupro_raw": aupro(masks, raw_maps),
        "image_auroc_from_raw_map": image_auroc(labels, raw_maps.reshape(len(raw_maps), -1).max(1)),
        "gradcam_pixel_auroc": pixel_auroc(masks, cams),
        "gradcam_image_auroc_from_map": image_auroc(labels, cams.reshape(len(cams), -1).max(1)),
        "density": "per-location" if _per_location(dataset["category"], localization) else "shared",
        "maps": (f"fused with the stem ({fusion})" if fused else "normalised") if normalization is not None else "raw",
    }
    center = (settings or {}).get("map_center", _map_center(localization))
    centred = center if normalization is not None and center in ("image_median", "image_median_capped") else False
    if centred:
        metrics["maps"] += ", centred on each image's median" + (" (at most the calibration images' highest)" if centred == "image_median_capped" else "")
    if patch_history is not None:
        metrics["patch_proxy_accuracy"] = final_accuracy(patch_history)
    if fused:
        metrics.update({"pixel_auroc_patch": pixel_auroc(masks, patch_maps), "aupro_patch": aupro(masks, patch_maps),
                        "image_auroc_from_patch_map": image_auroc(labels, patch_maps.reshape(len(patch_maps), -1).max(1))})
    logger.info("%s: pixel AUROC %.4f (GradCAM %.4f), AUPRO %.4f", dataset["category"], metrics["pixel_auroc"], metrics["gradcam_pixel_auroc"], metrics["aupro"])
    defective = np.flatnonzero(labels)
    chosen = defective[np.linspace(0, len(defective) - 1, min(int(localization["figure_images"]), len(defective))).astype(int)]
    names = [str(path).rsplit("/", 2)[-2] + "/" + str(path).rsplit("/", 1)[-1] for path in index.loc[index["split"] == "test", "path"].to_numpy()[chosen]]
    figure = report.localization_figure(dataset["test_images"][chosen], masks[chosen], maps[chosen], cams[chosen], names,
                                        f"{dataset['category']}: localization", normalization=_figure_unit(localization) if fused else normalization,
                                        centred=centred)
    return metrics, figure


def build_localization_report(**metrics_by_category: dict) -> tuple[pd.DataFrame, str]:
    """Table 2 (pixel AUROC per category and mean, paper beside ours) as DataFrame and Markdown."""
    table = report.localization_table(metrics_by_category)
    return table, report.to_markdown(table, "Localization (pixel AUROC, AUPRO)", report.LOCALIZATION_NOTE)

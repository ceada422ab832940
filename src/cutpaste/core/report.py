"""Paper-style tables (pandas) and figures (matplotlib)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
OBJECTS = ("bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper")

# Li et al., CVPR 2021, Table 1: image AUROC (%) of the 3-way model, ResNet-18 from scratch, mean of 5 seeds.
PAPER_IMAGE_AUROC_3WAY = {
    "carpet": 93.1, "grid": 99.9, "leather": 100.0, "tile": 93.4, "wood": 98.6,
    "bottle": 98.3, "cable": 80.6, "capsule": 96.2, "hazelnut": 97.3, "metal_nut": 99.3,
    "pill": 92.4, "screw": 86.3, "toothbrush": 98.3, "transistor": 95.5, "zipper": 99.4,
}
PAPER_IMAGE_AUROC_3WAY_MEAN = {"texture": 97.0, "object": 94.3, "all": 95.2}


def category_group(category: str) -> str:
    if category in TEXTURES:
        return "texture"
    if category in OBJECTS:
        return "object"
    return "other"


METRIC_COLUMNS = {  # metrics key -> table column, all in %
    "image_auroc": "image_auroc",
    "fpr_normal_test_at_threshold": "threshold_fpr_normal_test",
    "tpr_defective_test_at_threshold": "threshold_tpr_defective_test",
    "f1_max_test_oracle": "f1_max_test_oracle",
}


def _category_rows(metrics: dict[str, dict], percent_columns: dict[str, str], paper_column: str, paper: dict[str, float], extra_key: str) -> list[dict]:
    """One row per category: group, ``extra_key`` as is, the paper's value, metrics in % (NaN if absent)."""
    rows = []
    for category, values in sorted(metrics.items()):
        row = {"category": category, "group": category_group(category), extra_key: values.get(extra_key),
               paper_column: paper.get(category, np.nan)}
        row.update({column: round(100 * values[key], 1) if key in values else np.nan for key, column in percent_columns.items()})
        rows.append(row)
    return rows


def _mean_row(label: str, group: str, part: pd.DataFrame, paper: float) -> dict:
    row = {"category": label, "group": group, "n_test": int(part["n_test"].sum()), "paper_image_auroc": paper}
    row.update({column: round(part[column].mean(), 1) for column in METRIC_COLUMNS.values()})
    return row


def detection_table(metrics: dict[str, dict]) -> pd.DataFrame:
    """Image-level results per category and their means, in %.

    Columns: category, group (texture / object / other), n_test, image_auroc, paper_image_auroc
    (Table 1, 3-way, where the category is in MVTec AD), threshold_fpr_normal_test and
    threshold_tpr_defective_test (the threshold fitted on normal training images, applied to the
    test set), f1_max_test_oracle (best F1 over thresholds chosen *on the test set*: a reference,
    not a deployable number). A paper mean is shown only when its whole group is present.

    Args:
        metrics: category -> the evaluation node's metrics (fractions in [0, 1]).
    """
    rows = _category_rows(metrics, METRIC_COLUMNS, "paper_image_auroc", PAPER_IMAGE_AUROC_3WAY, "n_test")
    columns = ["category", "group", "n_test", "image_auroc", "paper_image_auroc", *list(METRIC_COLUMNS.values())[1:]]
    table = pd.DataFrame(rows)[columns]
    means = []
    groups_present = set(table["group"])
    if len(groups_present) > 1:
        for group, members in (("texture", TEXTURES), ("object", OBJECTS)):
            part = table[table["group"] == group]
            if len(part):
                complete = set(part["category"]) == set(members)
                means.append(_mean_row(f"mean ({group})", group, part, PAPER_IMAGE_AUROC_3WAY_MEAN[group] if complete else np.nan))
    all_paper = PAPER_IMAGE_AUROC_3WAY_MEAN["all"] if set(table["category"]) == set(PAPER_IMAGE_AUROC_3WAY) else np.nan
    means.append(_mean_row("mean", "all", table, all_paper))
    return pd.concat([table, pd.DataFrame(means)[columns]], ignore_index=True)


DETECTION_NOTE = ("All values in %. Paper: Li et al., CVPR 2021, Table 1, 3-way, ResNet-18 from scratch, mean of 5 seeds. "
                  "threshold_*: the decision threshold fitted on normal training images only; "
                  "f1_max_test_oracle: threshold chosen on the test set, for reference only.")


def to_markdown(table: pd.DataFrame, title: str, note: str = DETECTION_NOTE) -> str:
    """A Markdown section: title, the table, and a note on units and sources."""
    body = table.to_markdown(index=False, floatfmt=".1f", missingval="-")
    return f"## {title}\n\n{body}\n\n{note}\n"


def roc_figure(labels: np.ndarray, scores: np.ndarray, title: str) -> plt.Figure:
    """ROC curve of image scores."""
    false_positive, true_positive, _ = roc_curve(labels, scores)
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.plot(false_positive, true_positive, lw=2)
    axis.plot([0, 1], [0, 1], ls="--", c="gray", lw=1)
    axis.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    figure.tight_layout()
    return figure


def score_histogram(scores: pd.DataFrame, title: str, threshold: float | None = None) -> plt.Figure:
    """Histogram of anomaly scores, normal vs defective (columns label, score), with the decision
    threshold (fitted on normal training images) as a vertical line. Every image score is positive
    and spreads by factors (Mahalanobis distances, 2 ** a z-sum, ratios to a bound), so the axis is
    logarithmic when all scores are positive."""
    figure, axis = plt.subplots(figsize=(6, 4))
    values = scores["score"].to_numpy(dtype=np.float64)
    positive = len(values) > 0 and bool((values > 0).all()) and (threshold is None or threshold > 0)
    if positive:
        low, high = min(values.min(), threshold or values.min()), max(values.max(), threshold or values.max())
        bins = np.geomspace(low, high * 1.0001 if high > low else low * 2, 31)
        axis.set_xscale("log", base=2)
    else:
        bins = np.histogram_bin_edges(values, bins=30)
    axis.hist(scores.loc[scores["label"] == 0, "score"], bins=bins, alpha=0.6, label="good", color="tab:green")
    axis.hist(scores.loc[scores["label"] == 1, "score"], bins=bins, alpha=0.6, label="defective", color="tab:red")
    if threshold is not None:
        axis.axvline(threshold, color="black", ls="--", lw=1, label="threshold (train normals)")
    axis.set(xlabel="anomaly score (log scale)" if positive else "anomaly score", ylabel="test images", title=title)
    axis.legend()
    figure.tight_layout()
    return figure


def loss_figure(history: pd.DataFrame, title: str) -> plt.Figure:
    """Training loss and proxy-task accuracy per step."""
    figure, axis = plt.subplots(figsize=(6, 3.5))
    window = max(1, len(history) // 50)
    axis.plot(history["step"], history["loss"].rolling(window, min_periods=1).mean(), label="loss")
    axis.set(xlabel="step", ylabel="cross-entropy", title=title)
    twin = axis.twinx()
    twin.plot(history["step"], history["accuracy"].rolling(window, min_periods=1).mean(), color="tab:orange", label="accuracy")
    twin.set(ylabel="proxy accuracy", ylim=(0, 1.02))
    figure.tight_layout()
    return figure


# Li et al., CVPR 2021, Table 2: pixel AUROC (%) of the patch-level 3-way model.
PAPER_PIXEL_AUROC = {
    "carpet": 98.3, "grid": 97.5, "leather": 99.5, "tile": 90.5, "wood": 95.5,
    "bottle": 97.6, "cable": 90.0, "capsule": 97.4, "hazelnut": 97.3, "metal_nut": 93.1,
    "pill": 95.7, "screw": 96.7, "toothbrush": 98.1, "transistor": 93.0, "zipper": 99.3,
}
PAPER_PIXEL_AUROC_MEAN = {"texture": 96.3, "object": 95.8, "all": 96.0}
PAPER_GRADCAM_PIXEL_AUROC_MEAN = 88.3
LOCALIZATION_NOTE = ("All values in %. Paper: Li et al., CVPR 2021, Table 2, patch-level 3-way model "
                     f"(their GradCAM on the image-level model: {PAPER_GRADCAM_PIXEL_AUROC_MEAN} mean pixel AUROC). "
                     "aupro_0.3: per-region overlap integrated up to FPR 0.3, normalised. pixel_auroc, aupro_0.3 and "
                     "image_auroc_from_map are of the maps as configured (normalised per location from the calibration "
                     "images when localization.normalize, fused with the stem map when localization.stem.fuse); "
                     "*_raw: of the unnormalised patch maps; *_patch: of the normalised patch maps before fusion. "
                     "patch_proxy_accuracy: the patch model's training accuracy on its proxy task over its last tenth of "
                     "steps (chance: 100 / the number of classes, 33.3 for 3-way; near chance, the maps rest on close to untrained features).")
LOCALIZATION_COLUMNS = {
    "pixel_auroc": "pixel_auroc", "aupro": "aupro_0.3", "image_auroc_from_map": "image_auroc_from_map",
    "pixel_auroc_raw": "pixel_auroc_raw", "image_auroc_from_raw_map": "image_auroc_from_raw_map",
    "gradcam_pixel_auroc": "gradcam_pixel_auroc", "patch_proxy_accuracy": "patch_proxy_accuracy",
    "pixel_auroc_patch": "pixel_auroc_patch", "image_auroc_from_patch_map": "image_auroc_from_patch_map",
}


def localization_table(metrics: dict[str, dict]) -> pd.DataFrame:
    """The paper's Table 2 with our columns: per category and mean, in %."""
    rows = _category_rows(metrics, LOCALIZATION_COLUMNS, "paper_pixel_auroc", PAPER_PIXEL_AUROC, "density")
    columns = ["category", "group", "density", "pixel_auroc", "paper_pixel_auroc", "aupro_0.3", "image_auroc_from_map",
               "pixel_auroc_raw", "image_auroc_from_raw_map", "gradcam_pixel_auroc", "patch_proxy_accuracy", "pixel_auroc_patch",
               "image_auroc_from_patch_map"]
    table = pd.DataFrame(rows)[columns]
    if table[["pixel_auroc_patch", "image_auroc_from_patch_map"]].isna().all().all():  # maps not fused: no separate patch columns
        columns = columns[:-2]
        table = table[columns]
    complete = set(table["category"]) == set(PAPER_PIXEL_AUROC)
    mean = {"category": "mean", "group": "all", "density": "", "paper_pixel_auroc": PAPER_PIXEL_AUROC_MEAN["all"] if complete else np.nan}
    mean.update({column: round(table[column].mean(), 1) for column in LOCALIZATION_COLUMNS.values() if column in table})
    return pd.concat([table, pd.DataFrame([mean])[columns]], ignore_index=True)


def _outline(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask.astype(bool) & ~ndimage.binary_erosion(mask.astype(bool))


def localization_figure(images: np.ndarray, masks: np.ndarray, patch_maps: np.ndarray, gradcam_maps: np.ndarray | None, names: list[str],
                        title: str, normalization: str | None = "log_ratio", centred: bool | str = False) -> plt.Figure:
    """The paper's Figure 4: per image, input / ground-truth outline / GradCAM / patch-model heatmap,
    each heatmap with a colour bar.

    Patch maps share one colour scale across rows. ``normalization`` names the maps' unit: "log_ratio"
    (log2 of the score over the location's normal score: 0 = normal there, 1 = twice it), "fused"
    (patch and stem maps fused: log2 above the 99th percentile of the normal calibration pixels of
    whichever map is higher; the scale runs from the shown maps' median), "fused_image_max" (the same
    above the median of the normal calibration images' maxima), "fused_zsum" (the sum of the
    patch and stem maps' z-scores under their normal calibration pixels; the same scale) or "mean_std" /
    "median_mad" (calibration spreads above the normal level); the scale runs from 0 to
    the 99.9th percentile of the shown maps (at least 3; one hot spot does not wash out the others).
    None: raw maps, spanning the 1st to 99.9th percentile of the shown maps. ``centred``: the maps are read
    minus each image's median (True or "image_median": ``localization.map_center: image_median``; "image_median_capped":
    minus the lower of the median and the calibration images' highest), which the colour bar says.
    GradCAM maps are scaled per image to their maximum (GradCAM has no absolute unit).

    Args:
        images: (K, S, S, 3) uint8; masks (K, S, S); patch_maps and gradcam_maps (K, S, S).
    """
    columns = 4 if gradcam_maps is not None else 3
    if normalization in ("fused", "fused_image_max", "fused_zsum"):  # most pixels are normal: show from the shown maps' median
        low = float(np.percentile(patch_maps, 50))
        patch_range = (low, max(low + 1.0, float(np.percentile(patch_maps, 99.9))))
        patch_label = {"fused": "log2 of score / 99th pct of normal pixels",
                       "fused_image_max": "log2 of score / a normal image's max"}.get(normalization, "patch + stem z-scores (normal pixel spreads)")
    elif normalization is not None:
        patch_range = (0.0, max(3.0, float(np.percentile(patch_maps, 99.9))))
        patch_label = ("patch score (log2 of score / normal score here)" if normalization == "log_ratio"
                       else "patch score (normal spreads above normal)")
    else:
        patch_range = (float(np.percentile(patch_maps, 1)), float(np.percentile(patch_maps, 99.9)))
        patch_label = "patch score (raw Mahalanobis$^2$)"
    if centred and normalization is not None:
        # a second line: one line overflows the panel
        patch_label += "\nminus min(median, normal max)" if centred == "image_median_capped" else "\nminus the image's median"
    figure, axes = plt.subplots(len(images), columns, figsize=(2.7 * columns, 2.4 * len(images)), squeeze=False)
    for row, image in enumerate(images):
        overlay = image.copy()
        overlay[_outline(masks[row])] = (255, 0, 0)
        panels = [(image, None, names[row], None, None), (overlay, None, "ground truth", None, None)]
        if gradcam_maps is not None:
            cam = gradcam_maps[row] / max(float(gradcam_maps[row].max()), 1e-12)
            panels.append((image, cam, "GradCAM (image model)", (0.0, 1.0), "GradCAM / its max"))
        title = {"fused": "patch + stem (fused)", "fused_image_max": "patch + stem (fused)", "fused_zsum": "patch + stem (z-sum)", None: "patch model"}.get(normalization, "patch model (normalised)")
        panels.append((image, patch_maps[row], title, patch_range, patch_label))
        for column, (picture, heat, label, value_range, bar_label) in enumerate(panels):
            axis = axes[row, column]
            axis.imshow(picture)
            if heat is not None:
                shown = axis.imshow(heat, cmap="jet", alpha=0.45, vmin=value_range[0], vmax=value_range[1])
                bar = figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.03)
                bar.ax.tick_params(labelsize=6)
                bar.set_label(bar_label, fontsize=6)
            axis.set_title(label, fontsize=8)
            axis.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def heatmap_figure(image: np.ndarray, heat: np.ndarray, value_range: tuple[float, float], title: str) -> plt.Figure:
    """Input beside its heatmap overlay; ``value_range`` fixes the colour scale across images."""
    figure, axes = plt.subplots(1, 2, figsize=(5, 2.7))
    axes[0].imshow(image)
    axes[1].imshow(image)
    axes[1].imshow(heat, cmap="jet", alpha=0.45, vmin=value_range[0], vmax=value_range[1])
    for axis, label in zip(axes, ("input", "patch-model heatmap")):
        axis.set_title(label, fontsize=8)
        axis.axis("off")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


# Li et al., CVPR 2021, Table 3: mean image AUROC (%) over the 15 MVTec AD categories, EfficientNet-B4
# pretrained on ImageNet, features pooled globally or at level 7, without and with 3-way fine-tuning.
PAPER_TRANSFER_AUROC_MEAN = {
    ("pool", "pretrained"): 94.5, ("pool", "fine_tuned"): 96.6,
    ("level7", "pretrained"): 96.8, ("level7", "fine_tuned"): 97.1,
}
PAPER_TRANSFER_BACKBONE = "efficientnet_b4"
TRANSFER_STAGES = ("pretrained", "fine_tuned")
TRANSFER_NOTE = ("All values in %. Image AUROC of a GDE on the features of the pretrained encoder (pretrained) and of the encoder after "
                 "3-way fine-tuning (fine_tuned), per feature tap (pool: global average pool of the last map; level7: of EfficientNet-B4's "
                 "7th MBConv stage, torchvision features[7]). Paper: Li et al., CVPR 2021, Table 3, EfficientNet-B4 (ImageNet), mean over "
                 "the 15 MVTec AD categories: pool 94.5 / 96.6, level-7 96.8 / 97.1 (pretrained / fine-tuned); shown in the mean row "
                 "only when all 15 categories ran with that backbone and ImageNet weights.")


def transfer_metric_key(stage: str, tap: str) -> str:
    """Metrics key of one Table-3 cell, e.g. ``image_auroc_fine_tuned_level7``."""
    return f"image_auroc_{stage}_{tap}"


def transfer_table(metrics: dict[str, dict]) -> pd.DataFrame:
    """The paper's Table 3 with our columns: per category and mean, image AUROC in %.

    Columns: category, group, backbone, n_test, then per feature tap ``<tap>_pretrained``,
    ``paper_<tap>_pretrained``, ``<tap>_fine_tuned``, ``paper_<tap>_fine_tuned``. The paper reports
    means only, so its columns are filled in the mean row, and only for a complete MVTec AD run
    with EfficientNet-B4 and ImageNet weights.

    Args:
        metrics: category -> the transfer evaluation's metrics: ``taps`` (list), ``backbone``,
            ``pretrained``, ``n_test`` and ``image_auroc_<stage>_<tap>`` fractions in [0, 1].
    """
    taps: list[str] = []
    for values in metrics.values():
        taps += [tap for tap in values["taps"] if tap not in taps]
    value_columns = [f"{tap}_{stage}" for tap in taps for stage in TRANSFER_STAGES]
    columns = ["category", "group", "backbone", "n_test"]
    for tap in taps:
        for stage in TRANSFER_STAGES:
            columns += [f"{tap}_{stage}", f"paper_{tap}_{stage}"]
    rows = []
    for category, values in sorted(metrics.items()):
        row = {"category": category, "group": category_group(category), "backbone": values["backbone"], "n_test": values["n_test"]}
        for tap in taps:
            for stage in TRANSFER_STAGES:
                key = transfer_metric_key(stage, tap)
                row[f"{tap}_{stage}"] = round(100 * values[key], 1) if key in values else np.nan
                row[f"paper_{tap}_{stage}"] = np.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    comparable = (set(table["category"]) == set(PAPER_IMAGE_AUROC_3WAY)
                  and all(values["backbone"] == PAPER_TRANSFER_BACKBONE and values.get("pretrained") == "imagenet" for values in metrics.values()))
    mean = {"category": "mean", "group": "all", "backbone": "/".join(sorted(set(table["backbone"]))), "n_test": int(table["n_test"].sum())}
    mean.update({column: round(table[column].mean(), 1) for column in value_columns})
    for tap in taps:
        for stage in TRANSFER_STAGES:
            mean[f"paper_{tap}_{stage}"] = PAPER_TRANSFER_AUROC_MEAN.get((tap, stage), np.nan) if comparable else np.nan
    return pd.concat([table, pd.DataFrame([mean])], ignore_index=True)[columns]

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


def detection_table(metrics: dict[str, dict]) -> pd.DataFrame:
    """Image AUROC per category (%) with the paper's 3-way value where the category is in MVTec AD.

    Args:
        metrics: category -> {"image_auroc": float in [0, 1], ...}.
    Returns:
        Rows per category, then "mean" rows (per group present, and all); columns category, group,
        n_test, image_auroc, paper_image_auroc.
    """
    rows = [
        {
            "category": category, "group": category_group(category),
            "n_test": values.get("n_test"),
            "image_auroc": round(100 * values["image_auroc"], 1),
            "paper_image_auroc": PAPER_IMAGE_AUROC_3WAY.get(category, np.nan),
        }
        for category, values in sorted(metrics.items())
    ]
    table = pd.DataFrame(rows, columns=["category", "group", "n_test", "image_auroc", "paper_image_auroc"])
    means = []
    groups = [g for g in ("texture", "object") if (table["group"] == g).any()]
    for group in groups if len(groups) > 1 or (table["group"] == "other").any() else []:
        part = table[table["group"] == group]
        means.append({"category": f"mean ({group})", "group": group, "n_test": part["n_test"].sum(),
                      "image_auroc": round(part["image_auroc"].mean(), 1),
                      "paper_image_auroc": PAPER_IMAGE_AUROC_3WAY_MEAN[group] if len(part) == len(TEXTURES if group == "texture" else OBJECTS) else np.nan})
    all_paper = PAPER_IMAGE_AUROC_3WAY_MEAN["all"] if set(table["category"]) == set(PAPER_IMAGE_AUROC_3WAY) else np.nan
    means.append({"category": "mean", "group": "all", "n_test": table["n_test"].sum(),
                  "image_auroc": round(table["image_auroc"].mean(), 1), "paper_image_auroc": all_paper})
    return pd.concat([table, pd.DataFrame(means)], ignore_index=True)


def to_markdown(table: pd.DataFrame, title: str) -> str:
    """A Markdown section: title, the table, and a note on the units."""
    body = table.to_markdown(index=False, floatfmt=".1f")
    return f"## {title}\n\n{body}\n\nAUROC in %. Paper: Li et al., CVPR 2021, 3-way, ResNet-18 from scratch, mean of 5 seeds.\n"


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
    threshold (fitted on normal training images) as a vertical line."""
    figure, axis = plt.subplots(figsize=(6, 4))
    bins = np.histogram_bin_edges(scores["score"], bins=30)
    axis.hist(scores.loc[scores["label"] == 0, "score"], bins=bins, alpha=0.6, label="good", color="tab:green")
    axis.hist(scores.loc[scores["label"] == 1, "score"], bins=bins, alpha=0.6, label="defective", color="tab:red")
    if threshold is not None:
        axis.axvline(threshold, color="black", ls="--", lw=1, label="threshold (train normals)")
    axis.set(xlabel="anomaly score (Mahalanobis)", ylabel="test images", title=title)
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

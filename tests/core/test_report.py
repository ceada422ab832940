import numpy as np
import pytest

from cutpaste.core.report import OBJECTS, PAPER_IMAGE_AUROC_3WAY, TEXTURES, detection_table, to_markdown


def _metrics(auroc):
    return {"image_auroc": auroc, "n_test": 10, "fpr_normal_test_at_threshold": 0.1,
            "tpr_defective_test_at_threshold": 0.5, "f1_max_test_oracle": 0.8}


def test_demo_categories_have_no_paper_value_and_one_mean_row():
    table = detection_table({"brick": _metrics(0.9), "grass": _metrics(0.7)})
    assert table["category"].tolist() == ["brick", "grass", "mean"]
    assert table["image_auroc"].tolist() == [90.0, 70.0, 80.0]
    assert table["paper_image_auroc"].isna().all()
    assert table.loc[2, "n_test"] == 20 and table.loc[2, "threshold_fpr_normal_test"] == pytest.approx(10.0)


def test_full_mvtec_gets_paper_means():
    metrics = {name: _metrics(0.95) for name in (*TEXTURES, *OBJECTS)}
    table = detection_table(metrics).set_index("category")
    assert table.loc["bottle", "paper_image_auroc"] == PAPER_IMAGE_AUROC_3WAY["bottle"]
    assert table.loc["mean (texture)", "paper_image_auroc"] == 97.0
    assert table.loc["mean (object)", "paper_image_auroc"] == 94.3
    assert table.loc["mean", "paper_image_auroc"] == 95.2


def test_partial_group_has_no_paper_mean():
    table = detection_table({"bottle": _metrics(0.9), "carpet": _metrics(0.8)}).set_index("category")
    assert np.isnan(table.loc["mean (object)", "paper_image_auroc"]) and np.isnan(table.loc["mean", "paper_image_auroc"])
    assert table.loc["carpet", "paper_image_auroc"] == 93.1
    assert "| carpet" in to_markdown(table.reset_index(), "t")


def test_localization_table_has_paper_pixel_auroc_beside_ours():
    from cutpaste.core.report import localization_table

    values = {"pixel_auroc": 0.9, "aupro": 0.7, "image_auroc_from_map": 0.8, "gradcam_pixel_auroc": 0.6, "density": "shared"}
    table = localization_table({"tile": values, "brick": values}).set_index("category")
    assert table.loc["tile", "paper_pixel_auroc"] == 90.5 and np.isnan(table.loc["brick", "paper_pixel_auroc"])
    assert table.loc["mean", "pixel_auroc"] == 90.0 and table.loc["mean", "aupro_0.3"] == 70.0


def test_localization_figure_gives_every_heatmap_a_colour_bar():
    from cutpaste.core.report import localization_figure

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    masks = np.zeros((2, 16, 16), dtype=np.uint8)
    masks[:, 4:8, 4:8] = 1
    figure = localization_figure(images, masks, rng.normal(size=(2, 16, 16)), rng.random((2, 16, 16)), ["a", "b"], "t")
    labels = [axis.get_ylabel() for axis in figure.axes if axis.get_ylabel()]
    assert len(figure.axes) == 2 * 4 + 2 * 2 and labels.count("GradCAM / its max") == 2
    assert labels.count("patch score (log2 of score / normal score here)") == 2
    spreads = localization_figure(images, masks, rng.normal(size=(2, 16, 16)), None, ["a", "b"], "t", normalization="mean_std")
    assert [axis.get_ylabel() for axis in spreads.axes if axis.get_ylabel()].count("patch score (normal spreads above normal)") == 2
    fused_maps = rng.normal(-3.0, 1.0, size=(2, 16, 16))
    zsum = localization_figure(images, masks, fused_maps, None, ["a", "b"], "t", normalization="fused_zsum")
    assert [axis.get_ylabel() for axis in zsum.axes if axis.get_ylabel()].count("patch + stem z-scores (normal pixel spreads)") == 2
    assert [axis.get_title() for axis in zsum.axes].count("patch + stem (z-sum)") == 2
    fused = localization_figure(images, masks, fused_maps, None, ["a", "b"], "t", normalization="fused")
    bars = [axis for axis in fused.axes if axis.get_ylabel() == "log2 of score / 99th pct of normal pixels"]
    assert len(bars) == 2 and bars[0].get_ylim()[0] == np.percentile(fused_maps, 50)  # from the median: most fused values are < 0
    assert [axis.get_title() for axis in fused.axes].count("patch + stem (fused)") == 2
    raw = localization_figure(images, masks, rng.normal(size=(2, 16, 16)), None, ["a", "b"], "t", normalization=None)
    assert [axis.get_ylabel() for axis in raw.axes if axis.get_ylabel()].count("patch score (raw Mahalanobis$^2$)") == 2


def test_score_histogram_spreads_scores_that_differ_by_factors_on_a_log_axis():
    import pandas as pd

    from cutpaste.core.report import score_histogram

    scores = pd.DataFrame({"label": [0] * 4 + [1] * 4, "score": [0.5, 1.0, 1.2, 2.0, 3.0, 200.0, 2e4, 1e9]})
    figure = score_histogram(scores, "widget", threshold=2.5)
    axis = figure.axes[0]
    assert axis.get_xscale() == "log" and axis.get_xlabel() == "anomaly score (log scale)"
    counts = [patch.get_height() for patch in axis.patches]
    assert sum(counts) == 8 and max(counts) < 4  # not all piled into the first bin, as on a linear axis
    centred = score_histogram(pd.DataFrame({"label": [0, 1], "score": [-1.0, 3.0]}), "widget", threshold=0.5)
    assert centred.axes[0].get_xscale() == "linear"

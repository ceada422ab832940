"""Seed statistics, the seeds' ensemble, the grid expansion and the paper-style tables."""

import math

import numpy as np
import pandas as pd
import pytest

from cutpaste.core import study
from cutpaste.core.report import OBJECTS, TEXTURES
from cutpaste.namespaces import child_run, parse_point, run_namespace


def test_mean_and_standard_error_by_hand():
    mean, se = study.mean_se([90.0, 92.0, 97.0])
    assert mean == pytest.approx(93.0)
    # sample variance ((-3)^2 + (-1)^2 + 4^2) / 2 = 13; SE = sqrt(13 / 3)
    assert se == pytest.approx(math.sqrt(13 / 3))
    assert study.mean_se([80.0])[0] == 80.0 and math.isnan(study.mean_se([80.0])[1])
    assert all(math.isnan(value) for value in study.mean_se([]))


def test_normalization_uses_only_the_reference_statistics():
    reference = np.array([1.0, 3.0])  # mean 2, std 1
    assert study.normalize_scores(np.array([2.0, 4.0, 0.0]), reference).tolist() == [0.0, 2.0, -2.0]
    with pytest.raises(ValueError, match="reference"):
        study.normalize_scores(np.array([1.0]), np.array([5.0, 5.0]))


def test_ensemble_averages_normalized_scores_and_can_beat_each_member():
    # model A ranks image 2 wrong, model B ranks image 1 wrong; their normalized average ranks all right
    labels = [0, 0, 1, 1]
    model_a = pd.DataFrame({"path": ["a", "b", "c", "d"], "label": labels, "normalized_score": [0.0, 3.0, 2.0, 5.0]})
    model_b = pd.DataFrame({"path": ["a", "b", "c", "d"], "label": labels, "normalized_score": [0.0, 1.0, 5.0, 0.5]})
    assert study.ensemble_scores([model_a["normalized_score"], model_b["normalized_score"]]).tolist() == [0.0, 2.0, 3.5, 2.75]
    assert study.ensemble_auroc({0: model_a, 1: model_b.iloc[::-1]}) == 1.0  # rows are matched by path
    with pytest.raises(ValueError, match="different"):
        study.ensemble_auroc({0: model_a, 1: model_b.assign(path=["a", "b", "c", "e"])})


def _results(points, categories, seeds, value):
    rows = [{"point": point, "variant": point, "sweep": None, "value": None, "category": category, "seed": seed,
             "image_auroc": value(point, category, seed)} for point in points for category in categories for seed in seeds]
    return pd.DataFrame(rows)


def test_group_means_average_categories_per_seed_then_take_the_se_over_seeds():
    results = _results(["3way"], ["carpet", "bottle", "brick"], [0, 1], lambda p, c, s: {"carpet": 0.9, "bottle": 0.7, "brick": 0.5}[c] + 0.1 * s)
    summary = study.group_summary(results, "3way")
    # all: per-seed means 70 and 80 -> 75 +- 5; texture: carpet only, 90 and 100 -> 95 +- 5
    assert summary["all"] == pytest.approx(75.0) and summary["all_se"] == pytest.approx(5.0)
    assert summary["texture"] == pytest.approx(95.0) and summary["object"] == pytest.approx(75.0)


def test_table1_has_per_category_rows_group_means_ensemble_and_paper_numbers():
    results = _results(["cutpaste", "3way"], ["carpet", "bottle"], [0, 1], lambda p, c, s: 0.8 + 0.1 * s if p == "3way" else 0.6)
    ensembles = pd.DataFrame({"point": ["3way", "3way"], "category": ["carpet", "bottle"], "ensemble_auroc": [0.95, 0.85]})
    table = study.table1(results, ensembles, ["cutpaste", "3way"], "3way")
    assert table["category"].tolist() == ["carpet", "bottle", "mean (texture)", "mean (object)", "mean"]
    carpet = table.iloc[0]
    assert carpet["3way"] == pytest.approx(85.0) and carpet["3way_se"] == pytest.approx(5.0) and carpet["paper_3way"] == 93.1
    assert carpet["ensemble_3way"] == pytest.approx(95.0)
    mean = table.iloc[-1]
    assert mean["ensemble_3way"] == pytest.approx(90.0) and mean["cutpaste"] == pytest.approx(60.0)
    assert math.isnan(mean["paper_3way"])  # only two of the 15 MVTec AD categories ran
    markdown = study.to_markdown(table, "Table 1", "note")
    assert "85.0 ± 5.0" in markdown and "3way_se" not in markdown


def test_comparison_table_shows_the_paper_mean_only_for_a_complete_mvtec_run():
    everything = list(TEXTURES + OBJECTS)
    results = _results(["cutout_gray", "3way"], everything, [0, 1], lambda p, c, s: 0.7)
    table = study.comparison_table(results, ["cutout_gray", "3way"])
    assert table["paper_all"].tolist() == [71.3, 95.2]
    assert table.loc[1, "paper_texture"] == 97.0 and math.isnan(table.loc[0, "paper_texture"])
    partial = study.comparison_table(results[results["category"] != "zipper"], ["3way"])
    assert math.isnan(partial.loc[0, "paper_all"]) and partial.loc[0, "paper_texture"] == 97.0


def test_grid_expands_variants_and_sweeps_reusing_identical_settings():
    training = {"lr": 0.03, "steps": 100, "seed": 0}
    augment = {"task": "3way", "cutpaste": {"area_ratio": [0.02, 0.15], "jitter": 0.1}, "scar": {"jitter": 0.1}}
    config = {"variants": "cutpaste;3way", "seeds": [0, 1], "training": {"steps": 20}, "variant_training": {"3way": {"batch_size": 96}},
              "sweeps": {"variant": "3way", "seeds": [0], "lr": [0.01, 0.03], "max_area": [0.3], "jitter": [0.0]}}
    points = study.expand_grid(config, training, augment)
    assert list(points) == ["cutpaste", "3way", "3way_lr_0p01", "3way_max_area_0p3", "3way_jitter_0"]
    assert points["cutpaste"]["training"]["steps"] == 20 and "batch_size" not in points["cutpaste"]["training"]
    assert points["3way"]["training"]["batch_size"] == 96 and points["3way"]["also"] == [{"sweep": "lr", "value": 0.03}]
    assert points["3way_lr_0p01"]["training"]["lr"] == 0.01 and points["3way_lr_0p01"]["seeds"] == [0]
    assert points["3way_max_area_0p3"]["augment"]["cutpaste"]["area_ratio"] == [0.02, 0.3]
    assert points["3way_jitter_0"]["augment"]["scar"]["jitter"] == 0.0
    assert augment["cutpaste"]["area_ratio"] == [0.02, 0.15]  # the project's settings are not modified
    with pytest.raises(ValueError, match="unknown proxy task 'mixup'"):
        study.expand_grid({"variants": ["mixup"]}, training, augment)


def test_namespaces_map_to_tagged_child_runs():
    assert child_run("brick") is None and child_run(None) is None
    assert child_run("variants.brick") == (None, {})
    name, tags = child_run(run_namespace("metal_nut", "3way_max_area_0p3", 2))
    assert name == "3way_max_area_0p3 metal_nut s2"
    assert tags == {"category": "metal_nut", "point": "3way_max_area_0p3", "seed": "2", "variant": "3way", "sweep": "max_area", "value": "0.3"}
    assert parse_point("cutout_gray") == {"variant": "cutout_gray", "sweep": "", "value": ""}


def test_synthetic_table_averages_categories_then_seeds_and_gates_the_paper_number_on_pill():
    rows = [{"point": "cutpaste", "variant": "cutpaste", "category": category, "seed": seed, "kind": kind, "auroc": auroc}
            for category, offset in (("pill", 0.0), ("brick", 0.2)) for seed in (0, 1)
            for kind, auroc in (("digit_color", 0.5 + offset + 0.1 * seed), ("all", 0.6 + offset))]
    table = study.synthetic_table(pd.DataFrame(rows), ["cutpaste", "3way"])
    assert table["point"].tolist() == ["cutpaste"]
    # per seed: (50 + 70) / 2 = 60 and (60 + 80) / 2 = 70 -> 65 +- 5
    assert table.loc[0, "digit_color"] == pytest.approx(65.0) and table.loc[0, "digit_color_se"] == pytest.approx(5.0)
    assert table.loc[0, "paper_pill_all"] == 98.3
    no_pill = study.synthetic_table(pd.DataFrame(rows).query("category != 'pill'"), ["cutpaste"])
    assert math.isnan(no_pill.loc[0, "paper_pill_all"])
    assert "| -" in study.to_markdown(no_pill, "Table 6", "note")


def test_sweep_table_lists_each_value_including_a_reused_main_point():
    points = {"3way": {"variant": "3way", "sweep": None, "value": None, "also": [{"sweep": "lr", "value": 0.03}]},
              "3way_lr_0p1": {"variant": "3way", "sweep": "lr", "value": 0.1}}
    results = pd.DataFrame([{"point": point, "variant": "3way", "sweep": points[point]["sweep"], "value": points[point]["value"],
                             "category": "brick", "seed": 0, "image_auroc": auroc} for point, auroc in (("3way", 0.8), ("3way_lr_0p1", 0.6))])
    table = study.sweep_table(results, points, study.TABLE7_SWEEPS)
    assert table[["point", "sweep", "value", "all"]].values.tolist() == [["3way", "lr", 0.03, 80.0], ["3way_lr_0p1", "lr", 0.1, 60.0]]
    assert "| 0.03 " in study.to_markdown(table, "Table 7", "note")
    assert study.sweep_table(results, points, study.TABLE8_SWEEPS).empty

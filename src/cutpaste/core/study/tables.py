"""The paper's Tables 1 and 4-8 from the study's long results table (one row per point, category, seed).

For group averages (texture / object / all), the category average is taken per seed first; a paper
number appears only where the run covers the same MVTec AD categories.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cutpaste.core.report import OBJECTS, PAPER_IMAGE_AUROC_3WAY, PAPER_IMAGE_AUROC_3WAY_MEAN, TEXTURES, category_group
from cutpaste.core.study.statistics import mean_se

# Li et al., CVPR 2021: mean image AUROC (%) over the 15 MVTec AD categories per proxy task (Tables 4, 5).
PAPER_VARIANT_AUROC_MEAN = {
    "rotation": 73.1, "cutout_gray": 71.3, "cutout_mean": 73.9, "cutout_color": 76.1, "scar_color": 85.0,
    "confetti": 77.8, "cutpaste": 90.9, "scar": 93.5, "binary": 94.3, "3way": 95.2,
}
PAPER_ENSEMBLE_AUROC_MEAN = 96.1  # ensemble of five 3-way models
# Table 6: synthetic anomalies pasted on normal images of MVTec AD pill, mean AUROC (%).
PAPER_SYNTHETIC_AUROC_MEAN = {"cutpaste": 98.3, "cutout_gray": 81.5}
TABLE4_VARIANTS = ("rotation", "cutout_gray", "cutout_mean", "cutout_color", "confetti", "scar_color", "cutpaste")
TABLE5_VARIANTS = ("cutpaste", "scar", "binary", "3way")
TABLE7_SWEEPS = ("lr", "steps")
TABLE8_SWEEPS = ("jitter", "max_area")
GROUPS = ("texture", "object", "all")


def _group_members(categories, group: str) -> list[str]:
    if group == "all":
        return list(categories)
    return [category for category in categories if category_group(category) == group]


def _paper_group(group: str, categories, paper_all: float | None, paper_groups: dict | None = None) -> float:
    """The paper's mean for a group, only when our run covers the same MVTec AD categories."""
    expected = {"texture": set(TEXTURES), "object": set(OBJECTS), "all": set(TEXTURES) | set(OBJECTS)}[group]
    if set(_group_members(categories, group)) != expected:
        return np.nan
    if paper_groups and group in paper_groups:
        return paper_groups[group]
    return paper_all if group == "all" and paper_all is not None else np.nan


def group_summary(results: pd.DataFrame, point: str, metric: str = "image_auroc") -> dict[str, float]:
    """Per group: mean +- SE over seeds of the per-seed category average, in %."""
    part = results[results["point"] == point]
    summary = {}
    for group in GROUPS:
        members = _group_members(sorted(part["category"].unique()), group)
        per_seed = part[part["category"].isin(members)].groupby("seed")[metric].mean() * 100 if members else []
        summary[group], summary[f"{group}_se"] = mean_se(per_seed)
    return summary


def _fmt(mean: float, se: float) -> str:
    if np.isnan(mean):
        return "-"
    return f"{mean:.1f}" if np.isnan(se) else f"{mean:.1f} ± {se:.1f}"


def table1(results: pd.DataFrame, ensembles: pd.DataFrame, points: list[str], ensemble_point: str | None) -> pd.DataFrame:
    """Table 1: image AUROC (%) per category (rows) and point (columns ``<point>``, ``<point>_se``),
    texture / object / all averages, the ensemble of ``ensemble_point``'s seeds and the paper's
    3-way and ensemble numbers.

    Args:
        results: one row per point, category, seed with ``image_auroc`` in [0, 1].
        ensembles: one row per point and category with ``ensemble_auroc`` in [0, 1].
    """
    categories = sorted(results["category"].unique(), key=lambda name: (("texture", "object", "other").index(category_group(name)), name))
    rows = []
    for category in categories:
        row = {"category": category, "group": category_group(category)}
        for point in points:
            values = results[(results["point"] == point) & (results["category"] == category)]["image_auroc"] * 100
            row[point], row[f"{point}_se"] = mean_se(values)
        if ensemble_point:
            match = ensembles[(ensembles["point"] == ensemble_point) & (ensembles["category"] == category)]["ensemble_auroc"]
            row[f"ensemble_{ensemble_point}"] = 100 * float(match.iloc[0]) if len(match) else np.nan
        row["paper_3way"] = PAPER_IMAGE_AUROC_3WAY.get(category, np.nan)
        row["paper_ensemble"] = np.nan
        rows.append(row)
    for group in GROUPS:
        members = _group_members(categories, group)
        if not members or (group != "all" and len(members) == len(categories) == 0):
            continue
        row = {"category": "mean" if group == "all" else f"mean ({group})", "group": group}
        for point in points:
            summary = group_summary(results[results["category"].isin(members)], point)
            row[point], row[f"{point}_se"] = summary["all"], summary["all_se"]
        if ensemble_point:
            part = ensembles[(ensembles["point"] == ensemble_point) & ensembles["category"].isin(members)]["ensemble_auroc"]
            row[f"ensemble_{ensemble_point}"] = 100 * part.mean() if len(part) else np.nan
        row["paper_3way"] = _paper_group(group, categories, PAPER_VARIANT_AUROC_MEAN["3way"], PAPER_IMAGE_AUROC_3WAY_MEAN)
        row["paper_ensemble"] = _paper_group("all", categories, PAPER_ENSEMBLE_AUROC_MEAN) if group == "all" else np.nan
        rows.append(row)
    return pd.DataFrame(rows).round(2)


def comparison_table(results: pd.DataFrame, points: list[str], paper: dict[str, float] | None = None, metric: str = "image_auroc",
                     sweep_columns: bool = False) -> pd.DataFrame:
    """One row per point: texture / object / all means (%) +- SE over seeds, seeds, and the paper's
    mean over MVTec AD where the point's task has one and our run covers the same categories
    (columns ``sweep`` and ``value`` of a sweep point with ``sweep_columns``)."""
    paper = PAPER_VARIANT_AUROC_MEAN if paper is None else paper
    categories = sorted(results["category"].unique())
    rows = []
    for point in points:
        part = results[results["point"] == point]
        if part.empty:
            continue
        first = part.iloc[0]
        row = {"point": point, "variant": first["variant"], "sweep": first.get("sweep"), "value": first.get("value"),
               "n_seeds": int(part["seed"].nunique()), **group_summary(results, point, metric)}
        paper_all = paper.get(point) if first.get("sweep") in (None, "") or pd.isna(first.get("sweep")) else None
        groups = PAPER_IMAGE_AUROC_3WAY_MEAN if point == "3way" and paper is PAPER_VARIANT_AUROC_MEAN else None
        for group in GROUPS:
            row[f"paper_{group}"] = _paper_group(group, categories, paper_all, groups)
        rows.append(row)
    columns = ["point", "variant", *(["sweep", "value"] if sweep_columns else []), "n_seeds", *[f"{group}{suffix}" for group in GROUPS for suffix in ("", "_se")],
               *[f"paper_{group}" for group in GROUPS]]
    return pd.DataFrame(rows, columns=columns).round(2)


def sweep_table(results: pd.DataFrame, points: dict[str, dict], sweeps: tuple[str, ...]) -> pd.DataFrame:
    """Tables 7 / 8: one row per value of each sweep in ``sweeps``, in the comparison format; a value
    that equals a main-grid point's settings shows that point's runs."""
    rows = []
    for name, point in points.items():
        entries = ([{"sweep": point["sweep"], "value": point["value"]}] if point["sweep"] else []) + point.get("also", [])
        for entry in entries:
            if entry["sweep"] not in sweeps:
                continue
            table = comparison_table(results, [name], paper={}, sweep_columns=True)
            if table.empty:
                continue
            table["sweep"], table["value"] = entry["sweep"], entry["value"]
            rows.append(table)
    if not rows:
        return comparison_table(results.iloc[:0], [], paper={}, sweep_columns=True)
    table = pd.concat(rows, ignore_index=True)
    table["order"] = table["sweep"].map({sweep: index for index, sweep in enumerate(sweeps)})
    return table.sort_values(["order", "value"]).drop(columns="order").reset_index(drop=True)


def synthetic_table(synthetic: pd.DataFrame, points: list[str]) -> pd.DataFrame:
    """Table 6: AUROC (%) on synthetic anomalies per point (rows) and anomaly kind (columns), mean
    over categories then mean +- SE over seeds, with the paper's overall numbers (measured on MVTec AD
    pill: shown when pill is among the categories).

    Args:
        synthetic: one row per point, category, seed and ``kind`` (e.g. "digit_color", or "all")
            with ``auroc`` in [0, 1].
    """
    kinds = [kind for kind in synthetic["kind"].unique() if kind != "all"] + ["all"]
    rows = []
    for point in points:
        part = synthetic[synthetic["point"] == point]
        if part.empty:
            continue
        row = {"point": point, "variant": part["variant"].iloc[0]}
        for kind in kinds:
            per_seed = part[part["kind"] == kind].groupby("seed")["auroc"].mean() * 100
            row[kind], row[f"{kind}_se"] = mean_se(per_seed)
        row["paper_pill_all"] = PAPER_SYNTHETIC_AUROC_MEAN.get(point, np.nan) if "pill" in set(part["category"]) else np.nan
        rows.append(row)
    return pd.DataFrame(rows).round(2)


def _cell(value, float_format: str) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return "-"
    if isinstance(value, (float, np.floating)):
        return format(float(value), float_format)
    return str(value)


def to_markdown(table: pd.DataFrame, title: str, note: str) -> str:
    """Markdown with every ``<x>`` / ``<x>_se`` column pair shown as "mean ± SE"."""
    shown = pd.DataFrame(index=table.index)
    for column in table.columns:
        if column.endswith("_se") and column.removesuffix("_se") in table.columns:
            continue
        if f"{column}_se" in table.columns:
            shown[column] = [_fmt(mean, se) for mean, se in zip(table[column], table[f"{column}_se"])]
        else:
            shown[column] = [_cell(value, "g" if column == "value" else ".1f") for value in table[column]]
    body = shown.to_markdown(index=False, disable_numparse=True)
    return f"## {title}\n\n{body}\n\n{note}\n"

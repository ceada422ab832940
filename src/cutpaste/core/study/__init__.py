"""The paper's comparison of proxy tasks: the grid of runs (``grid``), seed statistics and ensembles
(``statistics``) and Tables 1, 4-8 (``tables``). Every public name is re-exported here."""

from cutpaste.core.study.grid import SWEEPS, expand_grid, value_label
from cutpaste.core.study.statistics import ensemble_auroc, ensemble_scores, mean_se, normalize_scores
from cutpaste.core.study.tables import (
    GROUPS,
    PAPER_ENSEMBLE_AUROC_MEAN,
    PAPER_SYNTHETIC_AUROC_MEAN,
    PAPER_VARIANT_AUROC_MEAN,
    TABLE4_VARIANTS,
    TABLE5_VARIANTS,
    TABLE7_SWEEPS,
    TABLE8_SWEEPS,
    comparison_table,
    group_summary,
    sweep_table,
    synthetic_table,
    table1,
    to_markdown,
)

__all__ = [
    "GROUPS", "PAPER_ENSEMBLE_AUROC_MEAN", "PAPER_SYNTHETIC_AUROC_MEAN", "PAPER_VARIANT_AUROC_MEAN", "SWEEPS", "TABLE4_VARIANTS",
    "TABLE5_VARIANTS", "TABLE7_SWEEPS", "TABLE8_SWEEPS", "comparison_table", "ensemble_auroc", "ensemble_scores", "expand_grid",
    "group_summary", "mean_se", "normalize_scores", "synthetic_table", "sweep_table", "table1", "to_markdown", "value_label",
]

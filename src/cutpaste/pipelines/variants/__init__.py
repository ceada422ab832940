"""The paper's comparison of proxy tasks: variants x categories x seeds, ablation sweeps, Tables 1, 4-8."""

from cutpaste.pipelines.variants.pipeline import create_pipeline

__all__ = ["create_pipeline"]

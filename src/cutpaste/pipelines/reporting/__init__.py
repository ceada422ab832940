"""Cross-category report: the paper's detection table."""

from cutpaste.pipelines.reporting.pipeline import create_pipeline

__all__ = ["create_pipeline"]

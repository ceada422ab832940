"""Per-category image-level detection pipeline."""

from cutpaste.pipelines.detection.pipeline import create_pipeline

__all__ = ["create_pipeline"]

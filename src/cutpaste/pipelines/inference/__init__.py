"""Score a folder of new images with a trained category detector."""

from cutpaste.pipelines.inference.pipeline import create_pipeline

__all__ = ["create_pipeline"]

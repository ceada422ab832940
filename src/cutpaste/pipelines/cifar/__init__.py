"""CIFAR-10 one-class semantic anomaly detection (the paper's section 5.4)."""

from cutpaste.pipelines.cifar.pipeline import create_pipeline

__all__ = ["create_pipeline"]

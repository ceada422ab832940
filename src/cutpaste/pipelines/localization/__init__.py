"""Patch-level CutPaste localization (dense score maps, receptive-field upsampling, GradCAM)."""

from cutpaste.pipelines.localization.pipeline import create_pipeline

__all__ = ["create_pipeline"]

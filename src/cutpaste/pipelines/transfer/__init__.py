"""Transfer learning (the paper's Table 3): ImageNet-pretrained backbone, pretrained-only vs CutPaste fine-tuned."""

from cutpaste.pipelines.transfer.pipeline import create_pipeline

__all__ = ["create_pipeline"]

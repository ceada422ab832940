"""Framework-free CutPaste library: data, augmentation, models, training, density, metrics.

Nothing in this package imports Kedro or MLflow, so every piece can be used in any training loop.
"""

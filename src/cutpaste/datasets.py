"""Kedro datasets of the project."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset

from cutpaste.core.detector import Detector
from cutpaste.core.localize import Localizer


class DetectorDataset(AbstractDataset[Detector, Detector]):
    """A :class:`~cutpaste.core.detector.Detector` stored as a folder (model.pt, density.npz,
    detector.json): no pickle, loads with ``weights_only``.

    Example (catalog)::

        "{category}.detector":
          type: cutpaste.datasets.DetectorDataset
          path: data/06_models/{category}/detector
    """

    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> Detector:
        if not self._exists():
            raise FileNotFoundError(f"{self._path}: no trained detector here (run the detection pipeline for this category first)")
        return Detector.load(self._path)

    def save(self, data: Detector) -> None:
        data.save(self._path)

    def _exists(self) -> bool:
        return (self._path / "detector.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


class LocalizerDataset(AbstractDataset[Localizer, Localizer | None]):
    """A :class:`~cutpaste.core.localize.Localizer` folder. With ``optional: true`` loading a missing
    folder gives None (inference then writes no heatmaps) instead of failing."""

    def __init__(self, path: str, optional: bool = False, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self._optional = optional
        self.metadata = metadata

    def load(self) -> Localizer | None:
        if not self._exists():
            if self._optional:
                return None
            raise FileNotFoundError(f"{self._path}: no trained localizer here (run the localization pipeline first)")
        return Localizer.load(self._path)

    def save(self, data: Localizer) -> None:
        data.save(self._path)

    def _exists(self) -> bool:
        return (self._path / "localizer.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "optional": self._optional}

"""Kedro datasets of the project: trained artifacts stored as folders (no pickle)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset

from cutpaste.core.detector import Detector
from cutpaste.core.localize import Localizer


class _FolderDataset(AbstractDataset):
    """An object with ``save(folder)`` / ``load(folder)`` kept in a folder marked by ``marker``.
    With ``optional: true`` loading a missing folder gives None instead of failing."""

    artifact: type
    marker: str
    missing_hint: str

    def __init__(self, path: str, optional: bool = False, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self._optional = optional
        self.metadata = metadata

    def load(self) -> Any:
        if not self._exists():
            if self._optional:
                return None
            raise FileNotFoundError(f"{self._path}: {self.missing_hint}")
        return self.artifact.load(self._path)

    def save(self, data: Any) -> None:
        data.save(self._path)

    def _exists(self) -> bool:
        return (self._path / self.marker).is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "optional": self._optional}


class DetectorDataset(_FolderDataset):
    """A :class:`~cutpaste.core.detector.Detector` folder (model.pt, density.npz, detector.json).

    Example (catalog)::

        "{category}.detector":
          type: cutpaste.datasets.DetectorDataset
          path: data/06_models/{category}/detector
    """

    artifact = Detector
    marker = "detector.json"
    missing_hint = "no trained detector here (run the detection pipeline for this category first)"


class LocalizerDataset(_FolderDataset):
    """A :class:`~cutpaste.core.localize.Localizer` folder; ``optional: true`` lets inference write
    no heatmaps for a category without one."""

    artifact = Localizer
    marker = "localizer.json"
    missing_hint = "no trained localizer here (run the localization pipeline first)"

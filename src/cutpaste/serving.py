"""MLflow pyfunc wrapper of a trained :class:`~cutpaste.core.detector.Detector`.

Request: a DataFrame (or JSON ``{"dataframe_records": [...]}``) with a column ``image`` holding
base64-encoded image files (PNG, JPEG, BMP; any size, grey or colour) and an optional ``name``.
Response: one row per image with ``name``, ``score``, ``normalized_score`` and ``decision``.
A row that is not a decodable image makes the request fail with a message naming the row.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from PIL import Image, UnidentifiedImageError

from cutpaste.core.detector import Detector


def encode_image_file(path: str | Path) -> str:
    """A file's bytes as base64 text, the way requests carry images."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def decode_image(text: str, name: str) -> Image.Image:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError) as error:
        raise ValueError(f"{name}: 'image' is not valid base64 ({error})") from error
    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"{name}: not a readable image ({error})") from error


class DetectorModel(mlflow.pyfunc.PythonModel):
    """Serves a detector saved with :meth:`Detector.save` (artifact key ``detector``)."""

    def load_context(self, context) -> None:
        self.detector = Detector.load(context.artifacts["detector"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        if "image" not in model_input.columns:
            raise MlflowException("request needs a column 'image' with base64-encoded image files", INVALID_PARAMETER_VALUE)
        names = model_input["name"].astype(str).tolist() if "name" in model_input.columns else [f"row {i}" for i in range(len(model_input))]
        try:
            images = [decode_image(text, name) for text, name in zip(model_input["image"], names)]
        except ValueError as error:
            raise MlflowException(str(error), INVALID_PARAMETER_VALUE) from error
        result = self.detector.score_pil(images)
        result.insert(0, "name", names)
        return result


def _requirements() -> list[str]:
    from importlib.metadata import version

    packages = ("torch", "torchvision", "scikit-learn", "numpy", "pandas", "pillow", "mlflow")
    return [f"{name}=={version(name)}" for name in packages]


def _pyfunc_arguments(detector_dir: str | Path) -> dict:
    import cutpaste

    return {
        "python_model": DetectorModel(),
        "artifacts": {"detector": str(detector_dir)},
        "code_paths": [str(Path(cutpaste.__file__).parent)],  # the model carries the project's code
        "pip_requirements": _requirements(),
    }


def save_pyfunc(detector_dir: str | Path, path: str | Path) -> None:
    """Write the detector as a self-contained MLflow pyfunc model folder."""
    mlflow.pyfunc.save_model(path=str(path), **_pyfunc_arguments(detector_dir))


def log_pyfunc(detector_dir: str | Path, name: str = "detector"):
    """Log the detector as a pyfunc model to the active MLflow run; returns the ModelInfo."""
    return mlflow.pyfunc.log_model(name=name, **_pyfunc_arguments(detector_dir))

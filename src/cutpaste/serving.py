"""MLflow pyfunc wrapper of a trained :class:`~cutpaste.core.detector.Detector`.

Request: a DataFrame (or JSON ``{"dataframe_records": [...]}``) with a column ``image`` holding
base64-encoded image files (PNG, JPEG, BMP; grey or colour) and an optional ``name``.

Response: one row per input row, in order, with ``name``, ``score``, ``normalized_score``,
``decision`` and ``error``, the contract of batch inference (:meth:`Detector.score_files`): a row
that cannot be decoded, or is over the pixel limit, gets its ``error`` text naming the row and no
score (``None``); the other rows are scored and have ``error == ""``.

Whole-request errors are HTTP 400 with a message: no ``image`` column, no row, more rows than
``max_images``. A failure inside the model is HTTP 500 and the server goes on serving.

Limits (:class:`ServingLimits`): ``max_pixels`` per image (width x height read from the file's
header, before any pixel is decoded) and ``max_images`` per request. Defaults
``DEFAULT_MAX_PIXELS`` and ``DEFAULT_MAX_IMAGES``; set them with :func:`save_pyfunc`'s arguments
(stored in the model's config) or, at serve time, with the environment variables
``CUTPASTE_SERVE_MAX_PIXELS`` / ``CUTPASTE_SERVE_MAX_IMAGES``, which win.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from PIL import Image

from cutpaste.core.data import to_rgb_array
from cutpaste.core.detector import Detector

DEFAULT_MAX_PIXELS = 40_000_000  # e.g. 6300 x 6300; a 40-Mpx PNG decodes to 120 MB of RGB
DEFAULT_MAX_IMAGES = 32
ENV_MAX_PIXELS = "CUTPASTE_SERVE_MAX_PIXELS"
ENV_MAX_IMAGES = "CUTPASTE_SERVE_MAX_IMAGES"
RESPONSE_COLUMNS = ["name", "score", "normalized_score", "decision", "error"]


class ImageRowError(ValueError):
    """One request row cannot be scored; the message names the row and what is wrong."""


@dataclass(frozen=True)
class ServingLimits:
    """What one request may hold.

    Attributes:
        max_pixels: most pixels (width x height, as stated in the file's header) of one image.
        max_images: most rows of one request.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_images: int = DEFAULT_MAX_IMAGES

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"serving limit {name} must be a positive integer, got {value!r}")

    @classmethod
    def resolve(cls, model_config: Mapping | None = None, environ: Mapping[str, str] | None = None) -> ServingLimits:
        """Defaults, overridden by the model config (``max_pixels``, ``max_images``), overridden by
        the environment (``CUTPASTE_SERVE_MAX_PIXELS``, ``CUTPASTE_SERVE_MAX_IMAGES``)."""
        environ = os.environ if environ is None else environ
        values = asdict(cls())
        values.update({key: model_config[key] for key in values if model_config and model_config.get(key) is not None})
        for key, variable in (("max_pixels", ENV_MAX_PIXELS), ("max_images", ENV_MAX_IMAGES)):
            text = environ.get(variable, "").strip()
            if text:
                try:
                    values[key] = int(text)
                except ValueError as error:
                    raise ValueError(f"environment variable {variable} must be a positive integer, got {text!r}") from error
        return cls(**values)


def encode_image_file(path: str | Path) -> str:
    """A file's bytes as base64 text, the way requests carry images."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def decode_image(text: object, label: str, image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """One base64-encoded image file -> (image_size, image_size, 3) uint8 RGB.

    The header is read first (``Image.open`` is lazy): an image over ``max_pixels`` is refused before
    a pixel is decoded. A JPEG is decoded at the smallest DCT scale (1/2, 1/4 or 1/8) that is still
    at least ``image_size`` on each side (``Image.draft``), so a big JPEG never expands in full; other
    formats decode in full (at most ``max_pixels``) and are resized like batch inference does.

    Raises:
        ImageRowError: naming ``label`` and what is wrong (not base64, not an image, truncated, too big).
    """
    if not isinstance(text, str) or not text.strip():
        raise ImageRowError(f"{label}: 'image' is empty or not a string (expected a base64-encoded image file)")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ImageRowError(f"{label}: 'image' is not valid base64 ({error})") from error
    try:
        with Image.open(io.BytesIO(raw)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRowError(f"{label}: image is {width} x {height} = {width * height:,} pixels, over this server's limit of {max_pixels:,} pixels per image (max_pixels)")
            if image.format == "JPEG":
                image.draft("RGB", (image_size, image_size))
            image.load()
            return to_rgb_array(image, image_size)
    except Image.DecompressionBombError as error:  # Pillow's own limit (2 x Image.MAX_IMAGE_PIXELS), met before ours
        raise ImageRowError(f"{label}: image is over this server's limit of {max_pixels:,} pixels per image (max_pixels): {error}") from error
    except ImageRowError:
        raise
    except Exception as error:  # noqa: BLE001 - any decoder failure on untrusted bytes is this row's error, not the server's
        raise ImageRowError(f"{label}: not a readable image ({type(error).__name__}: {error})") from error


class DetectorModel(mlflow.pyfunc.PythonModel):
    """Serves a detector saved with :meth:`Detector.save` (artifact key ``detector``).

    Thread safety: ``mlflow models serve`` runs ``predict`` from several request threads at once on
    one shared model. ``load_context`` therefore builds the network and puts it in its final
    device/memory format before the first request (:meth:`Detector.prepare`; building or converting
    it from request threads crashed a fresh server with a segmentation fault), and runs one warm-up
    forward so that the one-time kernel set-up (oneDNN primitives, bf16 weight reorders) happens
    before any request. After that, request threads only read the network (no build, no ``.to``, no
    mode change; autocast state is per thread), so their forward passes run concurrently without a
    lock: on the 2-core test machine that served 8 concurrent clients about 1.4x faster than a lock
    around the forward did, with no crash in the cold-start trials (see README, Serve a detector).
    """

    def load_context(self, context) -> None:
        self.detector = Detector.load(context.artifacts["detector"])
        self.limits = ServingLimits.resolve(getattr(context, "model_config", None))
        self.detector.prepare()
        size = self.detector.image_size
        self.detector.score_arrays(np.zeros((1, size, size, 3), dtype=np.uint8))  # warm-up forward

    def _request_error(self, message: str):
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        return MlflowException(message, INVALID_PARAMETER_VALUE)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """One row per input row: name, score, normalized_score, decision, error ("" when scored)."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INTERNAL_ERROR

        if isinstance(model_input, pd.DataFrame) and len(model_input) == 0:
            raise self._request_error("request holds no row: send at least one record with an 'image'")
        if not isinstance(model_input, pd.DataFrame) or "image" not in model_input.columns:
            raise self._request_error("request needs a column 'image' with base64-encoded image files, e.g. "
                                      '{"dataframe_records": [{"name": "part-1.png", "image": "<base64>"}]}')
        count = len(model_input)
        if count > self.limits.max_images:
            raise self._request_error(f"request holds {count} images, over this server's limit of {self.limits.max_images} images per request "
                                      f"(max_images, environment variable {ENV_MAX_IMAGES}); split it into smaller requests")
        raw_names = model_input["name"].tolist() if "name" in model_input.columns else [None] * count
        names = [str(name) if isinstance(name, str) and name else f"row {i}" for i, name in enumerate(raw_names)]
        arrays, scored_rows, errors = [], [], [""] * count
        for i, (text, name) in enumerate(zip(model_input["image"], names)):
            label = name if name == f"row {i}" else f"row {i} ({name})"
            try:
                arrays.append(decode_image(text, label, self.detector.image_size, self.limits.max_pixels))
                scored_rows.append(i)
            except ImageRowError as error:
                errors[i] = str(error)
        result = pd.DataFrame({"name": names, "score": None, "normalized_score": None, "decision": None, "error": errors}, columns=RESPONSE_COLUMNS)
        result[["score", "normalized_score", "decision"]] = result[["score", "normalized_score", "decision"]].astype(object)
        if scored_rows:
            try:
                scores = self.detector.score_arrays(np.stack(arrays))
                decided = self.detector.decide(scores)
            except Exception as error:
                raise MlflowException(f"scoring failed inside the model ({type(error).__name__}: {error}); "
                                      "the server goes on serving", INTERNAL_ERROR) from error
            for column in ("score", "normalized_score", "decision"):
                result.loc[scored_rows, column] = pd.Series(decided[column].tolist(), index=scored_rows, dtype=object)
        return result


def _requirements() -> list[str]:
    from importlib.metadata import version

    packages = ("torch", "torchvision", "scikit-learn", "numpy", "pandas", "pillow", "mlflow")
    return [f"{name}=={version(name)}" for name in packages]


def _pyfunc_arguments(detector_dir: str | Path, max_pixels: int, max_images: int) -> dict:
    import cutpaste

    limits = ServingLimits(max_pixels=max_pixels, max_images=max_images)  # checked now, not at serve time
    return {
        "python_model": DetectorModel(),
        "artifacts": {"detector": str(detector_dir)},
        "code_paths": [str(Path(cutpaste.__file__).parent)],  # the model carries the project's code
        "pip_requirements": _requirements(),
        "model_config": asdict(limits),
    }


def save_pyfunc(detector_dir: str | Path, path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, max_images: int = DEFAULT_MAX_IMAGES) -> None:
    """Write the detector as a self-contained MLflow pyfunc model folder, with its serving limits
    (pixels per image, images per request; see :class:`ServingLimits`)."""
    mlflow.pyfunc.save_model(path=str(path), **_pyfunc_arguments(detector_dir, max_pixels, max_images))


def log_pyfunc(detector_dir: str | Path, name: str = "detector", max_pixels: int = DEFAULT_MAX_PIXELS, max_images: int = DEFAULT_MAX_IMAGES):
    """Log the detector as a pyfunc model to the active MLflow run; returns the ModelInfo."""
    return mlflow.pyfunc.log_model(name=name, **_pyfunc_arguments(detector_dir, max_pixels, max_images))

"""A trained detector as one object: network weights, GDE, image score, decision threshold, preprocessing.

The threshold is fitted from normal training images only, and from images the model never learned
from: before training, a calibration split of the normal training images is set aside (see
:func:`holdout_split`); the network and the densities are fitted on the rest, and the threshold is a
high quantile of the image scores (:mod:`cutpaste.core.image_score`) of the calibration images. No
defect and no test image is looked at.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cutpaste.core.data import IMAGE_SUFFIXES, DatasetError, load_image, to_rgb_array
from cutpaste.core.density import GaussianDensity
from cutpaste.core.image_score import ImageScore
from cutpaste.core.models import CutPasteNet
from cutpaste.core.threshold import THRESHOLD_METHODS, Threshold, fit_threshold  # noqa: F401 (public names of this module)
from cutpaste.core.train import InferenceSetup, prepare_for_inference

# Serialises building and preparing networks (rare, at load time); a module-level lock keeps Detector
# picklable and deep-copyable (Kedro copies node outputs).
_PREPARE_LOCK = threading.Lock()


def holdout_split(count: int, fraction: float = 0.2, min_images: int = 10, seed: int = 0) -> dict[str, list[int]]:
    """Split ``count`` normal training images into a fit set (proxy task + GDE) and a calibration set.

    The calibration set has ``max(min_images, round(fraction * count))`` images, at most half of them.

    Returns:
        {"fit": sorted indices, "calibration": sorted indices}.
    Raises:
        ValueError: on a fraction outside (0, 0.5] or fewer than 4 images.
    """
    if not 0 < fraction <= 0.5:
        raise ValueError(f"threshold holdout_fraction must be in (0, 0.5], got {fraction}")
    if count < 4:
        raise ValueError(f"{count} training images: at least 4 are needed to hold out a calibration split")
    n_calibration = min(count // 2, max(int(min_images), round(fraction * count)))
    order = np.random.default_rng(seed).permutation(count)
    return {"fit": sorted(int(i) for i in order[n_calibration:]), "calibration": sorted(int(i) for i in order[:n_calibration])}


@dataclass
class Detector:
    """Everything needed to score a new image of one category.

    ``score_arrays`` takes (N, S, S, 3) uint8 at the working size; ``score_files`` takes paths of any
    size and format and reports unreadable files by name instead of stopping.
    """

    category: str
    image_size: int
    model_config: dict
    state_dict: dict
    density: GaussianDensity
    threshold: Threshold
    feature_batch_size: int = 64
    precision: str = "auto"
    device: str = "auto"
    image_score: ImageScore = field(default_factory=ImageScore)
    _prepared: tuple[CutPasteNet, InferenceSetup] | None = field(default=None, repr=False, compare=False)

    def prepare(self) -> tuple[CutPasteNet, InferenceSetup]:
        """Build the network and put it on its device, memory format and eval mode, once.

        Thread-safe and idempotent. A served detector is shared by the server's request threads:
        building it lazily from each thread, or moving/converting it per call (``Module.to`` rewrites
        every parameter while another thread's convolution reads it), crashed a fresh server with a
        segmentation fault. So the network is built and converted once, under a lock, and published
        only when final; after that, scoring only reads it (:func:`~cutpaste.core.train.embed_images`).
        """
        prepared = self._prepared
        if prepared is None:
            with _PREPARE_LOCK:
                prepared = self._prepared
                if prepared is None:
                    num_classes = int(self.state_dict["classifier.weight"].shape[0])
                    network = CutPasteNet(num_classes, tuple(self.model_config["head_dims"]), self.model_config["backbone"])
                    network.load_state_dict(self.state_dict)
                    setup = prepare_for_inference(network, self.device, self.precision)
                    prepared = self._prepared = (network, setup)
        return prepared

    @property
    def network(self) -> CutPasteNet:
        """The network, prepared for inference (see :meth:`prepare`)."""
        return self.prepare()[0]

    def score_arrays(self, images: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 -> (N,) anomaly scores."""
        if len(images) == 0:
            return np.zeros(0)
        network, setup = self.prepare()
        return self.image_score.score(network, setup, images, self.density, self.feature_batch_size)

    def decide(self, scores: np.ndarray) -> pd.DataFrame:
        """score, normalized_score ((score - normal mean) / normal std) and decision per score."""
        scores = np.asarray(scores, dtype=np.float64)
        return pd.DataFrame({
            "score": scores,
            "normalized_score": (scores - self.threshold.normal_mean) / self.threshold.normal_std,
            "decision": np.where(scores > self.threshold.value, "anomalous", "normal"),
        })

    def score_files(self, paths: list[str | Path], progress: bool = True) -> pd.DataFrame:
        """Score image files; a file that cannot be read gets its error in the ``error`` column."""
        loaded, errors = [], {}
        iterator = paths
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(paths, desc=f"read {self.category}", unit="img")
        for path in iterator:
            try:
                loaded.append((str(path), load_image(path, self.image_size)))
            except DatasetError as error:
                errors[str(path)] = str(error)
        scores = self.score_arrays(np.stack([image for _, image in loaded])) if loaded else np.zeros(0)
        table = self.decide(scores)
        table.insert(0, "file", [path for path, _ in loaded])
        table["error"] = ""
        failed = pd.DataFrame({"file": list(errors), "error": list(errors.values())})
        return pd.concat([table, failed], ignore_index=True) if len(failed) else table

    def score_pil(self, images: list) -> pd.DataFrame:
        """Score already-decoded PIL images (the served model's path)."""
        arrays = np.stack([to_rgb_array(image, self.image_size) for image in images])
        return self.decide(self.score_arrays(arrays))

    # --- persistence: a folder with model.pt (state dict), density.npz, image_score.npz (with a stem density) and
    # detector.json; no pickle
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict, folder / "model.pt")
        np.savez(folder / "density.npz", **self.density.to_arrays())
        image_score_arrays = self.image_score.to_arrays()
        if image_score_arrays:
            np.savez(folder / "image_score.npz", **image_score_arrays)
        meta = {
            "category": self.category, "image_size": self.image_size, "model_config": self.model_config,
            "density": self.density.settings(), "image_score": self.image_score.settings(), "threshold": asdict(self.threshold),
            "feature_batch_size": self.feature_batch_size, "precision": self.precision, "device": self.device,
        }
        (folder / "detector.json").write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Detector:
        folder = Path(folder)
        meta = json.loads((folder / "detector.json").read_text())
        state_dict = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
        with np.load(folder / "density.npz") as arrays:
            density = GaussianDensity.from_arrays(meta["density"], dict(arrays))
        image_score_arrays = {}
        if (folder / "image_score.npz").is_file():
            with np.load(folder / "image_score.npz") as arrays:
                image_score_arrays = dict(arrays)
        return cls(
            category=meta["category"], image_size=meta["image_size"], model_config=meta["model_config"],
            state_dict=state_dict, density=density, threshold=Threshold(**meta["threshold"]),
            feature_batch_size=meta["feature_batch_size"], precision=meta["precision"], device=meta["device"],
            image_score=ImageScore.from_arrays(meta.get("image_score"), image_score_arrays),
        )


def list_images(folder: str | Path) -> list[Path]:
    """Every file under ``folder`` (recursively), sorted; non-image suffixes included so that the
    scoring table can report them by name.

    Raises:
        DatasetError: the folder does not exist or holds no file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: input folder not found")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DatasetError(f"{folder}: input folder holds no file (expected {', '.join(IMAGE_SUFFIXES)} images)")
    return files

"""CIFAR-10 one-class semantic anomaly detection (the paper's section 5.4).

One class is normal: the proxy task and the GDE see only that class's training images; the whole
test set is scored, the class's own test images are normal (label 0) and the other nine classes'
are anomalous (label 1); the metric is the class-vs-rest image AUROC.

CIFAR-10 is read from a local copy in torchvision's format (the ``cifar-10-batches-py`` folder of
pickled ``data_batch_1`` ... ``data_batch_5``, ``test_batch`` and ``batches.meta``) with
``torchvision.datasets.CIFAR10(root, download=False)``; nothing is downloaded.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
BASE_FOLDER = CIFAR10.base_folder  # "cifar-10-batches-py"
FILES = tuple(name for name, _ in CIFAR10.train_list + CIFAR10.test_list) + (CIFAR10.meta["filename"],)
# Li et al., CVPR 2021, section 5.4: mean one-class AUROC (%) over the 10 CIFAR-10 classes.
PAPER_CIFAR_AUROC_MEAN = {"rotation": 91.3, "cutout_gray": 60.2, "cutpaste": 69.4}


class CifarError(ValueError):
    """A local CIFAR-10 copy is absent or malformed."""


class _UncheckedCIFAR10(CIFAR10):
    """torchvision's reader without the MD5 checks (files need only exist): for subsets and test fixtures."""

    train_list = [[name, None] for name, _ in CIFAR10.train_list]
    test_list = [[name, None] for name, _ in CIFAR10.test_list]
    meta = {**CIFAR10.meta, "md5": None}


@dataclass
class CifarData:
    """CIFAR-10 as arrays: images (N, 32, 32, 3) uint8, labels (N,) int64 class indices."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"train_images": self.train_images, "train_labels": self.train_labels, "test_images": self.test_images,
                "test_labels": self.test_labels, "classes": list(self.classes)}


def resolve_root(root: str | Path | None) -> Path:
    """The folder that holds ``cifar-10-batches-py`` (that folder itself is accepted too).

    Raises:
        CifarError: when ``root`` is unset or the folder or one of its files is missing.
    """
    if root in (None, "", "null"):
        raise CifarError(f"no CIFAR-10 location set: set cifar_root to the folder that holds {BASE_FOLDER}/ "
                         f"(torchvision format), e.g. kedro run --pipelines=cifar --params=cifar_root=/path/to/cifar")
    root = Path(root).expanduser()
    if root.name == BASE_FOLDER and not (root / BASE_FOLDER).is_dir():
        root = root.parent
    folder = root / BASE_FOLDER
    if not folder.is_dir():
        raise CifarError(f"{folder}: CIFAR-10 folder not found (cifar_root must hold torchvision's {BASE_FOLDER}/; nothing is downloaded)")
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise CifarError(f"{folder}: missing {', '.join(missing)} (expected torchvision's CIFAR-10 python batches)")
    return root


def _diagnose(folder: Path) -> str:
    """The first file of ``folder`` that is not a CIFAR-10 batch, with the problem."""
    for name in FILES:
        path = folder / name
        try:
            with open(path, "rb") as handle:
                entry = pickle.load(handle, encoding="latin1")
        except Exception as error:  # noqa: BLE001 - any unpickling failure is the file's problem
            return f"{path}: not a pickled CIFAR-10 batch ({type(error).__name__}: {error})"
        if not isinstance(entry, dict):
            return f"{path}: expected a pickled dict, found {type(entry).__name__}"
        if name == CIFAR10.meta["filename"]:
            if CIFAR10.meta["key"] not in entry:
                return f"{path}: no '{CIFAR10.meta['key']}' entry"
            continue
        data, labels = entry.get("data"), entry.get("labels")
        if data is None or labels is None:
            return f"{path}: expected 'data' and 'labels' entries, found {sorted(entry)}"
        data = np.asarray(data)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
            return f"{path}: 'data' must be (N, 3072) with N labels, found {data.shape} and {len(labels)} labels"
    return f"{folder}: unreadable CIFAR-10 batches"


def load_cifar10(root: str | Path | None, verify_checksums: bool = True) -> CifarData:
    """Read a local CIFAR-10 (torchvision format) as arrays.

    Args:
        root: the folder that holds ``cifar-10-batches-py``.
        verify_checksums: check torchvision's MD5 sums of the official files (off for subsets
            and fixtures in the same format).
    Raises:
        CifarError: naming the folder or file when the copy is absent or malformed.
    """
    root = resolve_root(root)
    folder = root / BASE_FOLDER
    reader = CIFAR10 if verify_checksums else _UncheckedCIFAR10
    try:
        train, test = reader(str(root), train=True, download=False), reader(str(root), train=False, download=False)
    except RuntimeError as error:
        if verify_checksums and "corrupted" in str(error):
            raise CifarError(f"{folder}: files do not match the official CIFAR-10 checksums ({error}); "
                             "set cifar.verify_checksums: false for a subset in the same format") from error
        raise CifarError(_diagnose(folder)) from error
    except Exception as error:  # noqa: BLE001 - malformed pickles fail in many ways
        raise CifarError(_diagnose(folder)) from error
    classes = tuple(train.classes)
    if len(classes) != len(CIFAR10_CLASSES):
        raise CifarError(f"{folder / CIFAR10.meta['filename']}: expected the 10 CIFAR-10 classes, found {list(classes)}")
    data = CifarData(np.ascontiguousarray(train.data, dtype=np.uint8), np.asarray(train.targets, dtype=np.int64),
                     np.ascontiguousarray(test.data, dtype=np.uint8), np.asarray(test.targets, dtype=np.int64), classes)
    for split, labels in (("training", data.train_labels), ("test", data.test_labels)):
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            raise CifarError(f"{folder}: {split} labels outside 0..{len(classes) - 1}")
    return data


def class_index(name: str, classes: tuple[str, ...] | list[str] = CIFAR10_CLASSES) -> int:
    if name not in classes:
        raise ValueError(f"unknown CIFAR-10 class '{name}', expected one of {list(classes)}")
    return list(classes).index(name)


def _subsample(indices: np.ndarray, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    if limit is None or limit <= 0 or len(indices) <= limit:
        return indices
    return np.sort(rng.choice(indices, size=int(limit), replace=False))


def one_class_split(data: dict, normal_class: str, max_train: int | None = None, max_test: int | None = None, seed: int = 0) -> dict:
    """The one-class task of ``normal_class``.

    Training: that class's training images only (at most ``max_train``, a seeded random subset).
    Test: the whole test set (or a seeded subset of at most ``max_test`` images drawn per class in
    proportion, so the normal share is kept), label 0 for the class, 1 for the nine others.

    Returns:
        {"category", "image_size", "train_images", "test_images", "test_labels" (0/1),
        "test_classes" (class names)}.
    """
    classes = list(data["classes"])
    target = class_index(normal_class, classes)
    rng = np.random.default_rng(seed)
    train = _subsample(np.flatnonzero(data["train_labels"] == target), max_train, rng)
    if len(train) == 0:
        raise CifarError(f"CIFAR-10 has no training image of class '{normal_class}'")
    test_labels = np.asarray(data["test_labels"])
    test = np.arange(len(test_labels))
    if max_test is not None and 0 < max_test < len(test):
        share = max_test / len(test)
        test = np.sort(np.concatenate([
            _subsample(np.flatnonzero(test_labels == index), max(1, round(share * int((test_labels == index).sum()))), rng)
            for index in range(len(classes)) if (test_labels == index).any()
        ]))
    binary = (test_labels[test] != target).astype(np.int64)
    if binary.min() == binary.max():
        raise CifarError(f"CIFAR-10 test set: class '{normal_class}' needs normal and anomalous test images")
    return {
        "category": normal_class, "image_size": int(data["train_images"].shape[1]),
        "train_images": data["train_images"][train], "test_images": data["test_images"][test],
        "test_labels": binary, "test_classes": [classes[index] for index in test_labels[test]],
    }

"""Localization: dense patch embedding, receptive-field upsampling, per-location GDE, GradCAM.

Shapes: images are (N, S, S, 3) uint8; a patch grid has G x G locations with
G = (S - patch_size) // stride + 1 (paper: S 256, patch 32, stride 4 -> G 57); score maps are
(N, S, S) float.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn

from cutpaste.core.density import GaussianDensity, l2_normalize
from cutpaste.core.image_score import _log2, fit_stem_density
from cutpaste.core.image_score import stem_maps as stem_score_maps
from cutpaste.core.register import RigidRegistration, coverage, warp
from cutpaste.core.train import (
    InferenceSetup,
    images_to_tensor,
    prepare_for_inference,
    resolve_device,
    resolve_memory_format,
    resolve_precision,
)

logger = logging.getLogger(__name__)


def grid_size(image_size: int, patch_size: int, stride: int) -> int:
    """Number of patch positions per side; raises ValueError for an image smaller than a patch."""
    if patch_size > image_size:
        raise ValueError(f"image of {image_size} px is smaller than the patch size {patch_size} px")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    return (image_size - patch_size) // stride + 1


@torch.inference_mode()
def dense_features(
    model: nn.Module, images: np.ndarray, patch_size: int, stride: int, batch_size: int = 512,
    device: str = "auto", precision: str = "auto", memory_format: str = "auto", progress: bool = False,
) -> np.ndarray:
    """Embed every patch_size x patch_size patch at ``stride``: (N, S, S, 3) uint8 -> (N, G, G, D) float32.

    Memory stays bounded: one image's patches at a time, encoded in chunks of ``batch_size``.
    """
    torch_device = resolve_device(device)
    dtype = resolve_precision(precision, torch_device)
    fmt = resolve_memory_format(memory_format, torch_device, dtype)
    model = model.to(torch_device, memory_format=fmt).eval()
    size = images.shape[1]
    grid = grid_size(size, patch_size, stride)
    iterator = range(len(images))
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="dense features", unit="img")
    outputs = []
    for index in iterator:
        image = images_to_tensor(images[index : index + 1], torch_device).float().div_(255.0)
        patches = nn.functional.unfold(image, patch_size, stride=stride)  # (1, 3 p p, G G)
        patches = patches.transpose(1, 2).reshape(-1, 3, patch_size, patch_size)
        chunks = []
        for chunk in patches.split(batch_size):
            with torch.autocast(device_type=torch_device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                embedded = model.embed(chunk.contiguous(memory_format=fmt)).float()
            if dtype is not None and not bool(torch.isfinite(embedded).all()):
                # seen once in a test run at 4 px patches (bf16 on an AMX CPU): recompute the chunk in float32
                logger.warning("dense features: non-finite values under %s autocast; recomputing %d patches in float32", dtype, len(chunk))
                embedded = model.embed(chunk.contiguous(memory_format=fmt).float()).float()
            chunks.append(embedded.cpu())
        outputs.append(torch.cat(chunks).reshape(grid, grid, -1))
    return torch.stack(outputs).numpy()


def fit_patch_density(model: nn.Module, images: np.ndarray, density: LocationDensity, patch_size: int, stride: int,
                      images_per_chunk: int = 8, **embed_args) -> LocationDensity:
    """Fit ``density`` on the dense features of normal images, embedding a chunk of images at a time.

    Shared: each chunk gives a random share of its patch vectors (``max_fit_vectors`` in all).
    Per location: every vector is needed; they are written into one preallocated (N, G, G, D)
    float32 array (N G^2 D x 4 bytes: 51 x 3249 x 512 x 4 = 340 MB for 51 images at a 57 x 57 grid).
    """
    if density.per_location:
        features = None
        for start in range(0, len(images), images_per_chunk):
            chunk = dense_features(model, images[start : start + images_per_chunk], patch_size, stride, **embed_args)
            if features is None:
                features = np.empty((len(images), *chunk.shape[1:]), dtype=np.float32)
            features[start : start + len(chunk)] = chunk
        return density.fit(features)
    rng = np.random.default_rng(density.seed)
    per_image = max(1, -(-density.max_fit_vectors // len(images)))
    kept, grid = [], None
    for start in range(0, len(images), images_per_chunk):
        features = dense_features(model, images[start : start + images_per_chunk], patch_size, stride, **embed_args)
        grid, dim = features.shape[1], features.shape[-1]
        for image_features in features.reshape(len(features), -1, dim):
            kept.append(image_features[rng.choice(len(image_features), min(per_image, len(image_features)), replace=False)])
    return density.fit_shared(np.concatenate(kept), grid)


def score_patch_grid(model: nn.Module, images: np.ndarray, density: LocationDensity, patch_size: int, stride: int,
                     images_per_chunk: int = 8, progress: bool = False, **embed_args) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, G, G) patch scores, embedding and scoring a chunk of images at a time
    (memory: one chunk's features, not N G^2 D)."""
    starts = range(0, len(images), images_per_chunk)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="score maps", unit=f"chunk of {images_per_chunk}")
    return np.concatenate([
        density.score_grid(dense_features(model, images[start : start + images_per_chunk], patch_size, stride, **embed_args))
        for start in starts
    ])


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """(size, size) Gaussian, peak 1, centred on the patch."""
    coordinates = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    profile = torch.exp(-(coordinates**2) / (2 * sigma**2))
    return torch.outer(profile, profile).float()


def receptive_field_upsample(score_grid: np.ndarray | torch.Tensor, patch_size: int, stride: int, sigma: float) -> np.ndarray:
    """Map (N, G, G) patch scores to (N, S, S) pixel scores, S = (G - 1) * stride + patch_size.

    A transposed convolution with stride ``stride`` spreads each patch score over the patch's
    pixels with one Gaussian kernel of the patch size; dividing by the same transposed convolution
    of ones makes each pixel a Gaussian-weighted mean of the patches that cover it (so border pixels,
    covered by fewer patches, are not darker).
    """
    grid = torch.as_tensor(np.asarray(score_grid), dtype=torch.float32).unsqueeze(1)
    kernel = gaussian_kernel(patch_size, sigma).view(1, 1, patch_size, patch_size)
    weighted = nn.functional.conv_transpose2d(grid, kernel, stride=stride)
    coverage = nn.functional.conv_transpose2d(torch.ones_like(grid[:1]), kernel, stride=stride)
    return (weighted / coverage).squeeze(1).numpy()


def _shrinkage_coefficient(centered: np.ndarray, shrinkage: str | float) -> float:
    """The weight of the scaled-identity target, from scikit-learn's estimators: (N, D) centred -> [0, 1]."""
    from sklearn.covariance import ledoit_wolf_shrinkage, oas

    if shrinkage == "ledoit_wolf":
        return float(ledoit_wolf_shrinkage(centered, assume_centered=True))
    if shrinkage == "oas":
        return float(oas(centered, assume_centered=True)[1])
    if shrinkage == "empirical":
        return 0.0
    return float(shrinkage)


class LocationDensity:
    """GDE over a patch grid: one shared by every location, or one per location.

    Shared (textures, randomly rotated objects): one Gaussian over all N x G x G training vectors
    (subsampled to ``max_fit_vectors``). Per location (aligned objects): G x G Gaussians, each over
    the N training vectors at that location, or with ``neighborhood`` r > 0 over the vectors of the
    (2r + 1) x (2r + 1) locations around it (clipped at the grid's border): a part whose pose varies
    by a few pixels between images then has its edges inside each location's normal spread, and
    every covariance is estimated from up to (2r + 1)^2 N vectors instead of N.

    Soundness: every covariance gets an absolute floor, ``floor_ratio`` times the mean per-dimension
    feature variance over all locations (after L2 normalisation), added to the shrunk estimate. A
    location that barely varies across training images (plain background) then has a precision of
    at most 1 / floor instead of 1 / (its own vanishing variance).

    Storage of the per-location Gaussians, low-rank plus isotropic: the shrunk covariance of N
    vectors is V diag(l) V^T + c I with V (D, N) the eigenvectors of the sample covariance, so it is
    exact with rank min(N, D). Each location keeps its top ``max_rank`` eigen-directions V_r (D, r) in
    ``storage_dtype``, the weights 1 / (l_k + c) - 1 / s (r,) and 1 / s, where s = c plus the mean of
    the dropped eigenvalues over the D - r remaining directions (probabilistic PCA's residual; s = c
    when nothing is dropped). Score: |z|^2 / s + sum_k w_k (v_k . z)^2 with z = f - mu. At the paper's
    57 x 57 grid, D = 512, r = 128, float16: 3249 x 512 x 128 x 2 bytes = 426 MB (full float32
    precision matrices: 3.4 GB).
    """

    def __init__(self, per_location: bool, shrinkage: str | float = "ledoit_wolf", l2_normalize: bool = True,
                 max_fit_vectors: int = 200_000, location_chunk: int = 256, seed: int = 0, floor_ratio: float = 0.1,
                 max_rank: int | None = 128, storage_dtype: str = "float16", neighborhood: int = 0) -> None:
        if int(neighborhood) < 0:
            raise ValueError(f"neighborhood must be >= 0 grid cells, got {neighborhood}")
        if storage_dtype not in ("float16", "float32"):
            raise ValueError(f"storage_dtype must be float16 or float32, got '{storage_dtype}'")
        if not floor_ratio >= 0:
            raise ValueError(f"floor_ratio must be >= 0, got {floor_ratio}")
        if max_rank is not None and int(max_rank) < 1:
            raise ValueError(f"max_rank must be >= 1 or null, got {max_rank}")
        self.per_location = per_location
        self.shrinkage = shrinkage
        self.l2_normalize = l2_normalize
        self.max_fit_vectors = max_fit_vectors
        self.location_chunk = location_chunk
        self.seed = seed
        self.floor_ratio = float(floor_ratio)
        self.max_rank = None if max_rank is None else int(max_rank)
        self.storage_dtype = storage_dtype
        self.neighborhood = int(neighborhood)

    def settings(self) -> dict:
        """Constructor arguments (JSON-serialisable) that rebuild this density."""
        return {"per_location": self.per_location, "shrinkage": self.shrinkage, "l2_normalize": self.l2_normalize,
                "floor_ratio": self.floor_ratio, "max_rank": self.max_rank, "storage_dtype": self.storage_dtype,
                "location_chunk": self.location_chunk, "neighborhood": self.neighborhood}

    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float64)
        return l2_normalize(vectors) if self.l2_normalize else vectors

    def fit(self, features: np.ndarray) -> LocationDensity:
        """features: (N, G, G, D) float of normal training images."""
        count, grid, _, dim = features.shape
        if not self.per_location:
            return self.fit_shared(features.reshape(-1, dim), grid)
        if count < 2:
            raise ValueError(f"need at least 2 training images to fit a per-location Gaussian, got {count}")
        if not np.isfinite(features).all():
            raise ValueError("patch features hold non-finite values: the patch model's weights are not finite (training diverged?)")
        self.grid_ = grid
        locations = grid * grid
        by_location = features.reshape(count, locations, dim)
        variances = np.array([self._prepare(by_location[:, location]).var(0).mean() for location in range(locations)])
        self.floor_ = float(self.floor_ratio * variances.mean())
        radius = self.neighborhood
        pooled = count * min(2 * radius + 1, grid) ** 2  # vectors per location away from the border
        rank = min(pooled, dim) if self.max_rank is None else min(self.max_rank, pooled, dim)
        self.means_ = np.empty((locations, dim), dtype=np.float32)
        self.bases_ = np.zeros((locations, dim, rank), dtype=self.storage_dtype)
        self.weights_ = np.zeros((locations, rank), dtype=np.float32)
        self.inv_residual_ = np.empty(locations, dtype=np.float32)
        for location in range(locations):
            if radius and location and location % max(1, locations // 4) == 0:  # minutes on a CPU: say how far it is
                logger.info("per-location GDE over %dx%d neighbourhoods: %d of %d locations fitted", 2 * radius + 1, 2 * radius + 1,
                            location, locations)
            row, col = divmod(location, grid)  # the window of locations this Gaussian is fitted on (r = 0: the location itself)
            window = features[:, max(0, row - radius) : row + radius + 1, max(0, col - radius) : col + radius + 1]
            vectors = self._prepare(window.reshape(-1, dim))
            samples = len(vectors)
            mean = vectors.mean(0)
            centered = vectors - mean
            alpha = _shrinkage_coefficient(centered, self.shrinkage)
            isotropic = alpha * float((centered**2).sum()) / (samples * dim) + self.floor_
            if samples > dim:  # many pooled vectors: the D x D covariance's eigenvectors are cheaper than an SVD
                sample_eigen, vectors_by_column = np.linalg.eigh(centered.T @ centered / samples)
                sample_eigen, right = np.clip(sample_eigen[::-1], 0, None), vectors_by_column[:, ::-1].T
            else:
                _, singular, right = np.linalg.svd(centered / math.sqrt(samples), full_matrices=False)
                sample_eigen = singular**2
            eigen = (1 - alpha) * sample_eigen  # (min(N, D),) descending
            kept = eigen[:rank]
            residual = isotropic + (eigen[rank:].sum() / (dim - rank) if rank < dim else 0.0)
            if residual <= 0:
                raise ValueError(f"location {location}: covariance is singular (all training vectors equal and floor_ratio 0); "
                                 "set localization.density.floor_ratio > 0")
            self.means_[location] = mean
            self.bases_[location, :, : len(kept)] = right[: len(kept)].T
            self.weights_[location, : len(kept)] = 1.0 / (kept + isotropic) - 1.0 / residual
            self.inv_residual_[location] = 1.0 / residual
        return self

    def fit_shared(self, vectors: np.ndarray, grid: int) -> LocationDensity:
        """Fit the shared GDE on (M, D) patch vectors (subsampled to ``max_fit_vectors``) of a G x G grid."""
        self.grid_ = grid
        if len(vectors) > self.max_fit_vectors:
            vectors = vectors[np.random.default_rng(self.seed).choice(len(vectors), self.max_fit_vectors, replace=False)]
        if not np.isfinite(vectors).all():
            raise ValueError("patch features hold non-finite values: the patch model's weights are not finite (training diverged?)")
        self.floor_ = float(self.floor_ratio * self._prepare(vectors).var(0).mean())
        self.shared_ = GaussianDensity(self.shrinkage, self.l2_normalize, covariance_floor=self.floor_).fit(vectors)
        return self

    def score_grid(self, features: np.ndarray) -> np.ndarray:
        """(M, G, G, D) -> (M, G, G) anomaly scores (squared Mahalanobis distance)."""
        count, grid, _, dim = features.shape
        if grid != self.grid_:
            raise ValueError(f"features are on a {grid}x{grid} grid, the density was fitted on {self.grid_}x{self.grid_}")
        if not self.per_location:
            return self.shared_.score_samples(features.reshape(-1, dim)).reshape(count, grid, grid)
        vectors = torch.from_numpy(np.ascontiguousarray(features.reshape(count, grid * grid, dim), dtype=np.float32))
        if self.l2_normalize:
            vectors = nn.functional.normalize(vectors, dim=-1)
        scores = torch.empty(count, grid * grid)
        for start in range(0, grid * grid, self.location_chunk):
            stop = min(start + self.location_chunk, grid * grid)
            centered = vectors[:, start:stop] - torch.from_numpy(self.means_[start:stop])
            projected = torch.einsum("mld,ldr->mlr", centered, torch.from_numpy(self.bases_[start:stop]).float())
            scores[:, start:stop] = ((centered**2).sum(-1) * torch.from_numpy(self.inv_residual_[start:stop])
                                     + (projected**2 * torch.from_numpy(self.weights_[start:stop])).sum(-1))
        return scores.reshape(count, grid, grid).numpy().astype(np.float64)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The fitted state as arrays (for ``np.savez``; no pickle)."""
        if self.per_location:
            return {"means": self.means_, "bases": self.bases_, "weights": self.weights_, "inv_residual": self.inv_residual_,
                    "grid": np.array(self.grid_), "floor": np.array(self.floor_)}
        return {**{f"shared_{key}": value for key, value in self.shared_.to_arrays().items()},
                "grid": np.array(self.grid_), "floor": np.array(self.floor_)}

    @classmethod
    def from_arrays(cls, settings: dict, arrays: dict[str, np.ndarray], source: str = "density arrays") -> LocationDensity:
        """Rebuild from :meth:`settings` and :meth:`to_arrays`; ``source`` names the file in errors."""
        density = cls(**settings)
        expected = ("means", "bases", "weights", "inv_residual") if density.per_location else ("shared_mean", "shared_precision")
        missing = [key for key in expected if key not in arrays]
        if missing:
            hint = " (a localizer saved before the low-rank format: re-run the localization pipeline)" if "precisions" in arrays else ""
            raise ValueError(f"{source}: missing arrays {missing}, found {sorted(arrays)}{hint}")
        density.grid_, density.floor_ = int(arrays["grid"]), float(arrays["floor"])
        if density.per_location:
            density.means_, density.bases_, density.weights_, density.inv_residual_ = (
                arrays["means"], arrays["bases"], arrays["weights"], arrays["inv_residual"])
        else:
            shared = {key.removeprefix("shared_"): arrays[key] for key in arrays if key.startswith("shared_")}
            density.shared_ = GaussianDensity.from_arrays(
                {"shrinkage": density.shrinkage, "l2_normalize": density.l2_normalize, "covariance_floor": density.floor_}, shared)
        return density

    def nbytes(self) -> int:
        """Bytes of the fitted arrays (what :meth:`to_arrays` stores)."""
        return int(sum(np.asarray(value).nbytes for value in self.to_arrays().values()))


NORMALIZE_STATISTICS = ("log_ratio", "mean_std", "median_mad")
FUSIONS = ("max", "zsum")  # how the patch and stem maps are fused (Localizer docstring)
_SCORE_FLOOR = 1e-12  # squared Mahalanobis distances are >= 0; the log needs > 0


def check_statistic(statistic: str) -> None:
    if statistic not in NORMALIZE_STATISTICS:
        raise ValueError(f"normalize statistic must be one of {NORMALIZE_STATISTICS}, got '{statistic}'")


FUSION_REFERENCES = ("pixel", "image_max")


def check_fusion_reference(reference: str, fusion: str = "max") -> None:
    if reference not in FUSION_REFERENCES:
        raise ValueError(f"the fusion reference must be one of {', '.join(FUSION_REFERENCES)}, got {reference!r}")
    if reference != "pixel" and fusion != "max":
        raise ValueError(f"the fusion reference {reference!r} is a reference of \"max\" fusion; {fusion!r} fusion reads the calibration pixels' mean and spread")


COMPONENTS = ("fused", "patch", "stem")
COMPONENT_MARGIN = 0.01  # a single map replaces the fused one only if its synthetic-defect score is at least this much higher


MAP_CENTERS = ("none", "image_median", "image_median_capped")
SYNTHETIC_CENTERS = ("none", "image_median")  # what map_center "synthetic" chooses between


def check_map_center(center: str) -> None:
    if center not in MAP_CENTERS:
        raise ValueError(f"the map centre must be one of {', '.join(MAP_CENTERS)}, got {center!r}")


def center_on_image(maps: np.ndarray, cap: float | None = None) -> np.ndarray:
    """(N, H, W) maps, each minus its own median pixel: 0 = the image's typical reading. A photo whose whole
    surface reads higher or lower than the calibration images' (sharper, softer, another finish) moves back,
    and what stands out within the image stays; a defect over more than half the image would be centred away.
    ``cap``: each map minus the lower of its median and ``cap`` (the highest median normal images show), so a
    map whose whole surface reads above every normal image's keeps that excess."""
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"need (N, H, W) maps to centre, got shape {maps.shape}")
    medians = np.median(maps.reshape(len(maps), -1), axis=1)
    if cap is not None:
        if not np.isfinite(cap):
            raise ValueError(f"the centre's cap must be a finite number, got {cap}")
        medians = np.minimum(medians, np.float32(cap))
    return (maps - medians[:, None, None]).astype(np.float32)


def check_component(component: str) -> None:
    if component not in COMPONENTS:
        raise ValueError(f"the map component must be one of {', '.join(COMPONENTS)}, got {component!r}")


def check_fusion(fusion: str) -> None:
    if fusion not in FUSIONS:
        raise ValueError(f"map fusion must be one of {FUSIONS}, got '{fusion}'")


def log2_scores(grids: np.ndarray) -> np.ndarray:
    """log2 of patch scores (squared Mahalanobis distances), floored above zero."""
    return _log2(grids, _SCORE_FLOOR)


def normalization_statistics(calibration_grids: np.ndarray, statistic: str = "log_ratio", scale_floor_ratio: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Per-location centre and scale of the patch scores of normal calibration images.

    Args:
        calibration_grids: (K, G, G) patch scores of K >= 2 normal images that neither the patch model
            nor the density saw (the calibration split of the training images).
        statistic: "log_ratio" (centre: the mean of the log2 scores, the log of the location's
            geometric-mean normal score; scale 1: a map reads log2(score / normal score here), so
            1 = twice the normal score; no spread is estimated from the few calibration images),
            "mean_std" (mean, standard deviation) or "median_mad" (median, 1.4826 x median absolute
            deviation: robust to one odd calibration image).
        scale_floor_ratio: for "mean_std" / "median_mad", each scale is at least this times the median
            scale over locations, so a location whose calibration scores barely vary is not magnified
            without bound.
    Returns:
        center (G, G), scale (G, G), float64, scale > 0 (apply with :func:`normalize_grids`).
    """
    grids = np.asarray(calibration_grids, dtype=np.float64)
    if grids.ndim != 3 or len(grids) < 2:
        raise ValueError(f"need (K >= 2, G, G) calibration score grids, got shape {grids.shape}")
    check_statistic(statistic)
    if statistic == "log_ratio":
        return log2_scores(grids).mean(0), np.ones(grids.shape[1:])
    if statistic == "mean_std":
        center, scale = grids.mean(0), grids.std(0, ddof=1)
    else:  # median_mad
        center = np.median(grids, 0)
        scale = 1.4826 * np.median(np.abs(grids - center), 0)
    floor = scale_floor_ratio * float(np.median(scale))
    scale = np.maximum(scale, floor if floor > 0 else 1e-12)
    return center, scale


def normalize_grids(grids: np.ndarray, center: np.ndarray, scale: np.ndarray, statistic: str) -> np.ndarray:
    """Raw (N, G, G) patch scores -> normalised ones, with the statistics of :func:`normalization_statistics`."""
    check_statistic(statistic)
    values = log2_scores(grids) if statistic == "log_ratio" else grids
    return (values - center) / scale


def gradcam(model: nn.Module, density: GaussianDensity, images: np.ndarray, batch_size: int = 16, device: str = "auto") -> np.ndarray:
    """GradCAM of the GDE anomaly score of an image-level model: (N, S, S, 3) uint8 -> (N, S, S).

    The score's gradient w.r.t. the last convolutional feature map (ResNet ``layer4``) is averaged
    per channel to weight that map; the ReLU of the weighted sum is upsampled bilinearly to the image.
    Runs in fp32 (gradients of a Mahalanobis distance are sensitive to bf16 rounding).
    """
    torch_device = resolve_device(device)
    model = model.to(torch_device).eval()
    encoder = model.encoder
    mean = torch.as_tensor(density.mean_, dtype=torch.float32, device=torch_device)
    precision = torch.as_tensor(density.precision_, dtype=torch.float32, device=torch_device)
    maps = []
    for start in range(0, len(images), batch_size):
        batch = images_to_tensor(images[start : start + batch_size], torch_device).float().div_(255.0)
        x = model.normalize(batch)
        x = encoder.maxpool(encoder.relu(encoder.bn1(encoder.conv1(x))))
        x = encoder.layer3(encoder.layer2(encoder.layer1(x)))
        feature_map = encoder.layer4(x).detach().requires_grad_(True)
        pooled = feature_map.mean((2, 3))
        if density.l2_normalize:
            pooled = nn.functional.normalize(pooled, dim=-1)
        centered = pooled - mean
        score = ((centered @ precision) * centered).sum()
        (gradient,) = torch.autograd.grad(score, feature_map)
        weights = gradient.mean((2, 3), keepdim=True)
        cam = torch.relu((weights * feature_map).sum(1, keepdim=True))
        cam = nn.functional.interpolate(cam, size=batch.shape[-2:], mode="bilinear", align_corners=False)
        maps.append(cam.squeeze(1).detach().cpu())
    return torch.cat(maps).numpy()


def scaled(value_at_256: int, image_size: int) -> int:
    """A pixel size given at 256 px, scaled to the working size (at least 1)."""
    return max(1, int(math.floor(value_at_256 * image_size / 256 + 0.5)))


def intensity_levels(images: np.ndarray) -> np.ndarray:
    """(N, S, S, C) uint8 -> (N,) each image's median grey level (the mean over channels)."""
    images = np.asarray(images)
    return np.array([np.median(image.mean(-1)) for image in images], dtype=np.float64)


def normalize_intensity(images: np.ndarray, reference: float) -> np.ndarray:
    """Scale each (S, S, C) uint8 image so that its median grey level is ``reference`` (a lamp that dims or
    an exposure that changes scales every pixel by a factor; this undoes the factor). Pixels clip at 255."""
    if not (np.isfinite(reference) and reference > 0):
        raise ValueError(f"the intensity reference must be a positive grey level, got {reference}")
    images = np.asarray(images)
    out = np.empty_like(images)
    for index, (image, level) in enumerate(zip(images, intensity_levels(images), strict=True)):
        factor = reference / max(level, 1.0)
        out[index] = np.clip(np.rint(image.astype(np.float32) * factor), 0, 255).astype(images.dtype)
    return out


def highest_within(level: np.ndarray, tolerance_px: int) -> np.ndarray:
    """Each pixel's highest ``level`` within ``tolerance_px`` pixels (unchanged at 0): an edge that lands a
    pixel or two off its place still finds its normal level."""
    if not tolerance_px:
        return level
    from scipy import ndimage

    return ndimage.maximum_filter(level, size=2 * tolerance_px + 1, mode="nearest")


COVERAGE_MIN = 0.98  # a registered patch with less of its area inside the input photo gets the normal score
FUSION_QUANTILE = 0.99  # "max" fusion: each map component is read in log2 units above this quantile of its calibration pixels
STEM_BATCH_IMAGES = 8  # images per stem pass: at 256 px, 8 x 128 x 128 locations of 64 responses (67 MB in float64)


def _take_inputs(inputs: tuple, selection) -> tuple:
    """Some images' part of (grids, transforms, stems) as :meth:`Localizer._level_inputs` returns them."""
    grids, transforms, stems = inputs
    stems = None if stems is None else tuple(None if maps is None else maps[selection] for maps in stems)
    return grids[selection], None if transforms is None else transforms[selection], stems


class Localizer:
    """A trained patch model with its density, geometry and (optionally) per-location normalisation:
    new images -> (N, S, S) score maps.

    Normalisation (:meth:`calibrate`): the patch scores at each grid location are compared with the
    scores of normal calibration images at that location (see :func:`normalization_statistics`),
    before upsampling. With "log_ratio" (the default) a map reads log2(score / the location's normal
    score): 0 = as normal as the calibration images there, 1 = twice that; with "mean_std" /
    "median_mad" it reads in normal spreads above the normal level. Either way comparable across
    locations and images.

    Registration (``registration``, a fitted :class:`cutpaste.core.register.RigidRegistration`):
    parts that rotate or move between images are first rotated and shifted onto the reference pose
    the density was fitted in; the maps are warped back, so they overlay the input images.

    Stem fusion (:meth:`fit_stem`, log_ratio maps only): a shared Gaussian of the patch model's first
    convolution responses (:func:`cutpaste.core.image_score.fit_stem_density`) gives a second map at
    the stem's 2 px stride; each map is read in log2 units above the 99th percentile of its own
    calibration pixels, and the fused map is the larger of the two at every pixel (``fusion="max"``), or
    (``fusion="zsum"``) each map is read as a z-score of its calibration pixels (their mean and standard
    deviation, two numbers per map) and the fused map is the sum of the two. The stem density is
    shared by all locations, so it needs no registration. For aligned objects (``per_location`` in
    :meth:`fit_stem`) the stem map is read per pixel too: log2 of the stem score minus the calibration
    images' mean log2 stem score at that pixel (in the reference pose when the localizer registers), so
    an edge, a highlight or a background corner that every good part shows at the same place reads 0.
    ``stem_tolerance`` px: a pixel's level is the highest level within that distance, so an edge that
    registration leaves a pixel or two off its place still reads as normal.

    Camera-frame level (``camera_level``, registered localizers only): what does not turn with the part
    (the wire it hangs on, a fixture, a fixed highlight) has no fixed place in the reference pose and
    lights up every map. The normalised patch map, warped back onto the input image, is read against a
    second level in the input (camera) frame: the mean of the calibration images' patch maps at that
    pixel, the highest within ``camera_tolerance`` px, where it is above 0 (a pixel the calibration
    images read as normal is left as it is). The per-location stem map reads the lower of its two
    readings: against the level in the reference pose (above) and against the level in the camera frame
    (log2 stem score minus the calibration images' mean log2 stem score at that input pixel, the highest
    within ``camera_tolerance`` px): a pixel is normal if it is normal where the part is or where the
    camera is. The fusion references come from the maps so read.

    Held-out fusion references (``held_out_references``): in sample, each calibration image is read against
    levels it helped set (the normalisation centre, the stem and camera-frame levels are means over the
    calibration images), so its readings, and the fusion references from them, come out lower than a new
    normal image's. With ``held_out_references`` each calibration image is read, for the references only,
    against the levels the other K - 1 images set; the levels themselves stay those of all K.

    Image-level fusion references (``fusion_reference="image_max"``, "max" fusion only): the map's maximum is
    the image score, and a map's maximum over a normal image lies the further above its pixels' 99th
    percentile the more independent pixels it has (the stem map, at a 2 px stride, has many more than the
    smoothed patch map). With "image_max" each map is read above the median of its calibration images'
    maxima instead, so a normal image's hottest pixel reads about 0 in either map and the fused map's
    maximum weighs the two alike.

    Map component (``component``): the maps a fused localizer returns, "fused" (both maps, as above), or one of
    the two terms fusion combines alone, "patch" or "stem", in the same units. :meth:`choose_component` picks it
    per category without labels: defects from :func:`cutpaste.core.synthetic.defective_copies` pasted into the
    calibration images, each copy read against the levels the other calibration images set.

    Map centre (``map_center``, normalised maps only): "image_median" reads every final map minus its own median
    pixel (:func:`center_on_image`), so a photo whose whole surface reads above or below the calibration images'
    level moves back and only what stands out within it remains; "image_median_capped" subtracts the lower of
    the median and the highest median among the calibration images' maps (each read against the levels the other
    calibration images set, as a new image is: ``calibration_medians``, set by :meth:`calibrate`), so a whole-map
    offset within the range normal images show is removed and one above it stays; "none" leaves the maps as read.
    :meth:`choose_map_center` picks it per category on the same synthetic defects as the component.

    Intensity normalisation (``intensity_reference``, a grey level): every image is first scaled so its
    median grey level is that reference, the fit images' median level (:func:`normalize_intensity`), so a
    lamp that dims or an exposure that changes does not light up the maps. The density must have been
    fitted on fit images so normalised.

    Saved as a folder (patch_model.pt state dict, density.npz, localizer.json); no pickle.
    """

    def __init__(self, state_dict: dict, model_config: dict, density: LocationDensity, image_size: int,
                 patch_size: int, stride: int, sigma: float, embed_args: dict,
                 norm_center: np.ndarray | None = None, norm_scale: np.ndarray | None = None, norm_statistic: str | None = None,
                 registration: RigidRegistration | None = None, stem: GaussianDensity | None = None,
                 fusion_references: dict[str, float] | None = None, stem_per_location: bool = False,
                 stem_center: np.ndarray | None = None, stem_tolerance: int = 0, fusion: str = "max",
                 camera_level: bool = False, camera_tolerance: int = 2, patch_camera_level: np.ndarray | None = None,
                 stem_camera_level: np.ndarray | None = None, intensity_reference: float | None = None,
                 held_out_references: bool = False, fusion_reference: str = "pixel", component: str = "fused",
                 component_scores: dict | None = None, map_center: str = "none", center_scores: dict | None = None,
                 calibration_medians: dict[str, list[float]] | None = None) -> None:
        check_fusion(fusion)
        check_map_center(map_center)
        check_fusion_reference(fusion_reference, fusion)
        check_component(component)
        if camera_level and registration is None:
            raise ValueError("a camera-frame level (camera_level) needs a registering localizer: without registration every map is read in the camera frame already")
        if camera_tolerance < 0:
            raise ValueError(f"the camera-frame level's tolerance must be >= 0 px, got {camera_tolerance}")
        self.state_dict, self.model_config, self.density = state_dict, model_config, density
        self.image_size, self.patch_size, self.stride, self.sigma = image_size, patch_size, stride, sigma
        self.embed_args = embed_args
        self.norm_center, self.norm_scale, self.norm_statistic = norm_center, norm_scale, norm_statistic
        self.registration = registration
        self.stem, self.fusion_references = stem, dict(fusion_references or {})
        self.stem_per_location, self.stem_center, self.stem_tolerance = bool(stem_per_location), stem_center, int(stem_tolerance)
        self.fusion = fusion
        self.camera_level, self.camera_tolerance = bool(camera_level), int(camera_tolerance)
        self.patch_camera_level, self.stem_camera_level = patch_camera_level, stem_camera_level
        self.intensity_reference = None if intensity_reference is None else float(intensity_reference)
        self.held_out_references = bool(held_out_references)
        self.fusion_reference = str(fusion_reference)
        self.component, self.component_scores = str(component), component_scores
        self.map_center, self.center_scores = str(map_center), center_scores
        self.calibration_medians = None if calibration_medians is None else {key: [float(v) for v in values] for key, values in calibration_medians.items()}

    @property
    def normalized(self) -> bool:
        return self.norm_center is not None

    def _network(self) -> nn.Module:
        from cutpaste.core.models import CutPasteNet

        num_classes = int(self.state_dict["classifier.weight"].shape[0])
        network = CutPasteNet(num_classes, tuple(self.model_config["head_dims"]), self.model_config["backbone"])
        network.load_state_dict(self.state_dict)
        return network.eval()

    def _check_size(self, images: np.ndarray) -> None:
        if images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"images are {images.shape[1:3]}, the localizer works at {self.image_size} x {self.image_size} px")

    def _normalized_intensity(self, images: np.ndarray) -> np.ndarray:
        """Input images as the density sees them: intensity-normalised when the localizer is."""
        return images if self.intensity_reference is None else normalize_intensity(images, self.intensity_reference)

    def register(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(input images as the density sees them, in its reference pose, their (N, 3) transforms):
        intensity-normalised when the localizer is, registered when it registers (else transforms None)."""
        self._check_size(images)
        return self._align(self._normalized_intensity(images))

    def _align(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return (images, None) if self.registration is None else self.registration.align(images)

    def _input_frame(self, images: np.ndarray, registered: tuple[np.ndarray, np.ndarray | None] | None) -> np.ndarray:
        """Input images as the density sees them, in the input frame: the :meth:`register` result itself
        when it registered nothing, else the images intensity-normalised anew."""
        if registered is not None and registered[1] is None:
            return registered[0]
        return self._normalized_intensity(images)

    def score_grids(self, images: np.ndarray, progress: bool = False, registered: bool = False) -> np.ndarray:
        """(N, S, S, 3) uint8 at ``image_size`` -> (N, G, G) raw patch scores (squared Mahalanobis), in
        the reference pose: the images go through :meth:`register` first unless ``registered`` says they did."""
        self._check_size(images)
        if not registered:
            images, _ = self.register(images)
        return score_patch_grid(self._network(), images, self.density, self.patch_size, self.stride, progress=progress, **self.embed_args)

    def _outside(self, transforms: np.ndarray) -> np.ndarray:
        """(N, G, G) True where a registered image's patch reaches outside the input photo: filled-in
        pixels, no evidence about the part."""
        return coverage(transforms, self.image_size, self.patch_size, self.stride) < COVERAGE_MIN

    def _neutral_scores(self, grids: np.ndarray, transforms: np.ndarray | None) -> np.ndarray:
        """Raw scores with every location outside the input photo set to that location's normal score
        (the calibration level; without calibration the image's median over the covered locations)."""
        if transforms is None:
            return grids
        outside = self._outside(transforms)
        if not outside.any():
            return grids
        grids = np.array(grids, dtype=np.float64)
        if self.normalized:
            level = 2.0**self.norm_center if self.norm_statistic == "log_ratio" else self.norm_center
            normal = np.broadcast_to(level, grids.shape)
        else:
            normal = np.stack([np.full(grids.shape[1:], np.median(grid[~out]) if (~out).any() else np.median(grid))
                               for grid, out in zip(grids, outside, strict=True)])
        grids[outside] = normal[outside]
        return grids

    def calibrate(self, calibration_images: np.ndarray, statistic: str = "log_ratio", progress: bool = False) -> np.ndarray:
        """Set the per-location normalisation from normal calibration images (unseen by the patch model
        and the density), and with a stem density both maps' fusion references; returns their
        (K, G, G) raw patch scores. With registration, a location's statistics come from the
        calibration images whose registered patch there lies inside the photo."""
        grids, transforms, stems = self._level_inputs(calibration_images, progress)
        self.component_scores = self.center_scores = self.calibration_medians = None  # read against the levels set before
        self._set_levels(grids, transforms, stems, statistic)
        capped = self.map_center == "image_median_capped"
        if capped and len(grids) < 3:
            raise ValueError(f"map_center image_median_capped reads each calibration image against the others' levels: "
                             f"it needs at least 3 calibration images, got {len(grids)}")
        held_out_readings = self._held_out_readings(grids, transforms, stems, statistic) if capped else None
        if self.stem is not None:
            held_out = self.held_out_references and len(grids) >= 3
            if self.held_out_references and not held_out:
                logger.warning("held-out fusion references need at least 3 calibration images, got %d: read in sample", len(grids))
            if held_out:
                patch, stem = held_out_readings or self._held_out_readings(grids, transforms, stems, statistic)
            else:
                patch, stem = self._readings(grids, transforms, stems)
            self.set_fusion_references(patch, stem)
        if capped:
            self.calibration_medians = self._map_medians(*held_out_readings)
        return grids

    def read_calibration_medians(self, calibration_images: np.ndarray, progress: bool = False) -> dict[str, list[float]]:
        """Set ``calibration_medians`` (what ``map_center`` "image_median_capped" needs) on a calibrated localizer
        without calibrating it again: each calibration image read against the levels the other calibration
        images set. Give the images it was calibrated on. Returns {map: [median per image]}."""
        if not self.normalized:
            raise ValueError("the calibration map medians need a calibrated localizer (calibrate)")
        if len(calibration_images) < 3:
            raise ValueError(f"the held-out calibration map medians need at least 3 calibration images, got {len(calibration_images)}")
        grids, transforms, stems = self._level_inputs(calibration_images, progress)
        self.calibration_medians = self._map_medians(*self._held_out_readings(grids, transforms, stems, self.norm_statistic))
        return self.calibration_medians

    def _map_medians(self, patch: np.ndarray, stem: np.ndarray | None) -> dict[str, list[float]]:
        """Each image's median pixel in every map this localizer can return (the fused maps and each
        component with a stem density, else the patch maps), uncentred: {map: [median per image]}."""
        def medians(maps: np.ndarray) -> list[float]:
            return np.median(np.asarray(maps, dtype=np.float64).reshape(len(maps), -1), axis=1).tolist()

        if not self.fused:
            return {"patch": medians(patch)}
        return {name: medians(self.fuse(patch, stem, name)) for name in COMPONENTS}

    def medians_key(self, component: str | None = None) -> str:
        """Which maps' entry of ``calibration_medians`` belongs to ``component`` (default: the maps this localizer
        returns): that component when the maps are fused, else the patch maps."""
        return (component or self.component) if self.fused else "patch"

    def center_cap(self, component: str | None = None) -> float:
        """The highest median among the held-out calibration maps of ``component`` (default: the maps this
        localizer returns), what ``map_center`` "image_median_capped" subtracts at most."""
        if not self.calibration_medians:
            raise ValueError("map_center image_median_capped needs the calibration images' held-out map medians: calibrate the localizer")
        key = self.medians_key(component)
        if key not in self.calibration_medians:
            raise ValueError(f"the calibration map medians hold {sorted(self.calibration_medians)}, not the {key!r} maps this localizer returns")
        return float(max(self.calibration_medians[key]))

    def _level_inputs(self, images: np.ndarray, progress: bool = False) -> tuple[np.ndarray, np.ndarray | None, tuple | None]:
        """What the levels are set from and read against: the images' (N, G, G) raw patch scores, their
        registration transforms (None without registration) and, with a stem density, their stem maps
        (the reference-pose maps for per-location levels, the input-frame maps; each None when not needed)."""
        self._check_size(images)
        normalized = self._normalized_intensity(images)
        aligned, transforms = self._align(normalized)
        grids = self.score_grids(aligned, progress=progress, registered=True)
        stems = None
        if self.stem is not None:
            stems = (self._reference_stem_maps(aligned) if self.stem_per_location else None,
                     self._reference_stem_maps(normalized) if not self.stem_per_location or self.camera_level else None)
        return grids, transforms, stems

    def _set_levels(self, grids: np.ndarray, transforms: np.ndarray | None, stems: tuple | None, statistic: str) -> None:
        """Every per-location level from the calibration images' (K, G, G) raw patch scores and their stem maps
        (``stems``, as :meth:`calibrate` computes them): the normalisation, the camera-frame levels and the stem level."""
        self.patch_camera_level = self.stem_camera_level = None
        self.set_normalization(grids, statistic, transforms)
        if self.camera_level:
            self.patch_camera_level = np.maximum(self._camera_frame_level(self.maps_from_grids(grids, normalized=True, transforms=transforms)), 0.0)
        if stems is not None and self.stem_per_location:  # the level from the calibration images' stem maps
            reference, camera = stems
            self.set_stem_center(reference, transforms)
            if self.camera_level:  # and the level where the camera sees them
                self.stem_camera_level = self._camera_frame_level(camera)

    def _readings(self, grids: np.ndarray, transforms: np.ndarray | None, stems: tuple | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Images' patch and stem maps read against the localizer's levels, from their raw patch scores and
        their stem maps (``stems``, as :meth:`calibrate` computes them; None without a stem density: no stem maps)."""
        patch = self.maps_from_grids(grids, normalized=True, transforms=transforms)
        return patch, None if stems is None else self._stem_reading(*stems, transforms)

    def _held_out_readings(self, grids: np.ndarray, transforms: np.ndarray | None, stems: tuple, statistic: str,
                           probes: tuple | None = None) -> tuple[np.ndarray, ...]:
        """The calibration images' patch and stem maps, each read against the levels the other K - 1 images
        set (as a new normal image is read): what the fusion references come from with ``held_out_references``.
        ``probes``: (owners, grids, transforms, stems) of other images, each made from calibration image
        ``owners[i]`` and read against the levels set without it; their patch and stem maps follow."""
        import copy

        count = len(grids)
        if probes is not None and not np.isin(probes[0], np.arange(count)).all():
            raise ValueError(f"every probe's owner must be one of the {count} calibration images, got owners {sorted(set(np.asarray(probes[0]).tolist()))}")
        patch, stem, probe_reads = [], [], []
        for index in range(count):
            other = copy.copy(self)
            other._set_levels(*_take_inputs((grids, transforms, stems), np.arange(count) != index), statistic)
            one_patch, one_stem = other._readings(*_take_inputs((grids, transforms, stems), slice(index, index + 1)))
            patch.append(one_patch)
            stem.append(one_stem)
            if probes is not None and (made := np.flatnonzero(probes[0] == index)).size:
                probe_reads.append((made, *other._readings(*_take_inputs(probes[1:], made))))
        readings = (np.concatenate(patch), None if stems is None else np.concatenate(stem))
        if probes is None:
            return readings
        made = np.concatenate([read[0] for read in probe_reads])
        read_patch, read_stem = (np.concatenate([read[part] for read in probe_reads]) for part in (1, 2))
        probe_patch, probe_stem = np.empty_like(read_patch), np.empty_like(read_stem)
        probe_patch[made], probe_stem[made] = read_patch, read_stem  # read owner by owner -> the probes' own order
        return (*readings, probe_patch, probe_stem)

    def _stem_reading(self, reference: np.ndarray | None, camera: np.ndarray | None, transforms: np.ndarray | None) -> np.ndarray:
        """Stem maps as the localizer reads them, from the log2 stem maps in the reference pose (``reference``)
        and in the input frame (``camera``): per location, against the level (and with a camera-frame level,
        the lower of that and the camera-frame reading); shared, the input-frame maps themselves."""
        if not self.stem_per_location:
            return camera
        maps = self._against_level(reference, transforms)
        if self.stem_camera_level is not None and transforms is not None:  # normal where the part is or where the camera is
            maps = np.minimum(maps, camera - self.stem_camera_level)
        return maps

    def _camera_frame_level(self, calibration_maps: np.ndarray) -> np.ndarray:
        """(S, S) input-frame level of (K, S, S) calibration maps: their mean per pixel, the highest within
        ``camera_tolerance`` px."""
        maps = np.asarray(calibration_maps, dtype=np.float64)
        if maps.ndim != 3 or len(maps) < 2:
            raise ValueError(f"need (K >= 2, S, S) calibration maps for a camera-frame level, got shape {maps.shape}")
        return highest_within(maps.mean(0), self.camera_tolerance).astype(np.float32)

    @property
    def fused(self) -> bool:
        return self.stem is not None

    def _stem_network(self) -> tuple[nn.Module, InferenceSetup]:
        network = self._network()
        return network, prepare_for_inference(network, self.embed_args.get("device", "auto"), self.embed_args.get("precision", "auto"),
                                              self.embed_args.get("memory_format", "auto"))

    def fit_stem(self, fit_images: np.ndarray, max_vectors: int = 100_000, seed: int = 0, per_location: bool = False,
                 tolerance: int = 0, fusion: str = "max") -> None:
        """Fit the stem density on normal (N, S, S, 3) images (the fit split, as input: no registration).
        ``per_location``: read the stem map against each pixel's normal level (set by :meth:`calibrate`),
        the highest within ``tolerance`` px. ``fusion``: "max" or "zsum" (class docstring)."""
        if tolerance < 0:
            raise ValueError(f"the stem level's tolerance must be >= 0 px, got {tolerance}")
        check_fusion(fusion)
        check_fusion_reference(self.fusion_reference, fusion)
        self._check_size(fit_images)
        network, setup = self._stem_network()
        self.stem = fit_stem_density(network, self._normalized_intensity(fit_images), setup, batch_size=STEM_BATCH_IMAGES, max_vectors=max_vectors, seed=seed,
                                     shrinkage=self.density.shrinkage)
        self.fusion_references, self.component_scores, self.center_scores, self.calibration_medians = {}, None, None, None
        self.stem_per_location, self.stem_center, self.stem_tolerance = bool(per_location), None, int(tolerance)
        self.fusion = fusion

    def _reference_stem_maps(self, images: np.ndarray) -> np.ndarray:
        """(N, S, S) log2 stem scores of images as given (in the reference pose when registered)."""
        if self.stem is None:
            raise ValueError("this localizer has no stem density (fit_stem)")
        network, setup = self._stem_network()
        return stem_score_maps(network, self.stem, images, setup, STEM_BATCH_IMAGES)

    def _outside_pixels(self, transforms: np.ndarray) -> np.ndarray:
        """(N, S, S) True where a registered image's stem filter (7 px) reaches outside the input photo."""
        return coverage(transforms, self.image_size, 7, 1, padding=3) < COVERAGE_MIN

    def _against_level(self, reference_maps: np.ndarray, transforms: np.ndarray | None) -> np.ndarray:
        """Reference-pose log2 stem maps minus each pixel's normal level, warped back onto the input
        images; pixels whose stem filter reaches outside the photo read 0."""
        if self.stem_center is None:
            raise ValueError("per-location stem maps need each pixel's normal level (calibrate the localizer)")
        maps = reference_maps - self.stem_center
        if transforms is not None:
            maps[self._outside_pixels(transforms)] = 0.0
            maps = warp(maps, transforms, inverse=True)
        return maps.astype(np.float32)

    def set_stem_center(self, calibration_stem_maps: np.ndarray, transforms: np.ndarray | None = None) -> None:
        """Each pixel's normal stem level: the mean log2 stem score of the calibration images there (in the
        reference pose; a pixel outside a registered photo does not count, and one outside all of them
        takes the median level), then the highest such level within ``stem_tolerance`` px."""
        maps = np.asarray(calibration_stem_maps, dtype=np.float64)
        if maps.ndim != 3 or len(maps) < 2:
            raise ValueError(f"need (K >= 2, S, S) calibration stem maps, got shape {maps.shape}")
        if transforms is not None:
            maps = np.where(self._outside_pixels(transforms), np.nan, maps)
        counted = np.isfinite(maps).any(0)
        center = np.nanmean(np.where(counted, maps, 0.0), 0)
        center = np.where(counted, center, np.median(center[counted]) if counted.any() else 0.0)
        self.stem_center = highest_within(center, self.stem_tolerance).astype(np.float32)

    def stem_maps(self, images: np.ndarray, registered: tuple[np.ndarray, np.ndarray | None] | None = None) -> np.ndarray:
        """(N, S, S, 3) uint8 -> (N, S, S) log2 stem scores (:func:`cutpaste.core.image_score.stem_maps`);
        per location, minus each pixel's normal level (computed in the reference pose, warped back
        onto the input images; pixels whose stem filter reaches outside the photo read 0), and with a
        camera-frame level the lower of that and the log2 stem score minus the camera-frame level.
        ``registered``: the images' :meth:`register` result when the caller has it already."""
        if self.stem is None:
            raise ValueError("this localizer has no stem density (fit_stem)")
        self._check_size(images)
        if not self.stem_per_location:
            return self._reference_stem_maps(self._input_frame(images, registered))
        aligned, transforms = registered if registered is not None else self.register(images)
        camera = None
        if self.stem_camera_level is not None and transforms is not None:
            camera = self._reference_stem_maps(self._input_frame(images, registered))
        return self._stem_reading(self._reference_stem_maps(aligned), camera, transforms)

    def set_fusion_references(self, calibration_patch_maps: np.ndarray, calibration_stem_maps: np.ndarray) -> None:
        """Each component's references from its normal calibration maps (log2 units): the 99th percentile of
        their pixels and the median of the images' maxima ("max" fusion, ``fusion_reference`` "pixel" or
        "image_max"), and their pixels' mean and standard deviation ("zsum" fusion); every kind is kept."""
        if self.norm_statistic != "log_ratio":
            raise ValueError("stem fusion needs log_ratio-normalised patch maps (calibrate with statistic log_ratio)")
        references = {}
        for name, maps in (("patch", calibration_patch_maps), ("stem", calibration_stem_maps)):
            values = np.asarray(maps, dtype=np.float64)
            spread = float(values.std())
            if self.fusion == "zsum" and not (np.isfinite(spread) and spread > 0):
                raise ValueError(f"the calibration images' {name} maps do not vary (standard deviation {spread}): cannot fuse by z-score")
            references.update({name: float(np.quantile(values, FUSION_QUANTILE)), f"{name}_mean": float(values.mean()), f"{name}_sd": spread,
                               f"{name}_image_max": float(np.median(values.reshape(len(values), -1).max(1)))})
        self.fusion_references = references

    def fuse(self, patch_maps: np.ndarray, stem_maps: np.ndarray, component: str | None = None) -> np.ndarray:
        """(N, S, S) normalised patch maps and log2 stem maps -> the fused maps. "max": at every pixel the
        larger of the two, each in log2 units above its reference (0 = that level): the 99th percentile of
        its calibration pixels (``fusion_reference`` "pixel") or the median of its calibration images'
        maxima ("image_max": 0 = as high as a typical normal image's hottest pixel); "zsum": the sum of the
        two, each in standard deviations of its calibration pixels above their mean (0 = both maps at
        their normal mean). ``component`` (default: the localizer's): "patch" or "stem" return that map's
        term alone, in the same units."""
        suffix = "_image_max" if self.fusion_reference == "image_max" else ""
        needed = {f"patch{suffix}", f"stem{suffix}"} if self.fusion == "max" else {"patch_mean", "patch_sd", "stem_mean", "stem_sd"}
        if not needed <= set(self.fusion_references):
            raise ValueError(f"the {self.fusion!r} fused maps need the fusion references {sorted(needed)} (calibrate the localizer)")
        references = self.fusion_references
        if self.fusion == "max":
            patch, stem = patch_maps - references[f"patch{suffix}"], stem_maps - references[f"stem{suffix}"]
        else:
            patch, stem = (patch_maps - references["patch_mean"]) / references["patch_sd"], (stem_maps - references["stem_mean"]) / references["stem_sd"]
        component = self.component if component is None else component
        check_component(component)
        if component != "fused":
            return np.asarray(patch if component == "patch" else stem, dtype=np.float32)
        return (np.maximum(patch, stem) if self.fusion == "max" else patch + stem).astype(np.float32)

    def choose_component(self, calibration_images: np.ndarray, copies: int = 4, seed: int = 0, margin: float = COMPONENT_MARGIN,
                         progress: bool = False) -> dict[str, dict[str, float]]:
        """Choose the maps this localizer returns (``component``) without labels, on synthetic defects
        (:meth:`choose_maps` with the component alone). Returns each candidate's scores (also kept as
        ``component_scores``)."""
        return self.choose_maps(calibration_images, component=True, center=False, copies=copies, seed=seed, margin=margin,
                                progress=progress)["component"]

    def choose_map_center(self, calibration_images: np.ndarray, copies: int = 4, seed: int = 0, margin: float = COMPONENT_MARGIN,
                          progress: bool = False) -> dict[str, dict[str, float]]:
        """Choose how this localizer's maps are centred (``map_center``) without labels, on synthetic defects
        (:meth:`choose_maps` with the centre alone). Returns each candidate's scores (also kept as ``center_scores``)."""
        return self.choose_maps(calibration_images, component=False, center=True, copies=copies, seed=seed, margin=margin,
                                progress=progress)["center"]

    def choose_maps(self, calibration_images: np.ndarray, component: bool = True, center: bool = False, copies: int = 4, seed: int = 0,
                    margin: float = COMPONENT_MARGIN, progress: bool = False) -> dict[str, dict]:
        """Choose the maps this localizer returns without labels, on synthetic defects: the map ``component``
        (fused, patch or stem) and/or the ``map_center`` (none or image_median).

        Every calibration image gets ``copies`` defective copies (:func:`cutpaste.core.synthetic.defective_copies`,
        seeded by ``seed``); each copy, and each clean calibration image, is read against the levels the
        other calibration images set, as a new image is (one pass of readings serves both choices). Every
        candidate is scored by the mean of its pixel AUROC (the copies' defect pixels against all other pixels,
        clean images included) and its image AUROC (the map's maximum, copies against clean images).
        The component first, at the localizer's centre: the fused maps are kept unless a single map scores at
        least ``margin`` higher. Then the centre, for that component: maps centred on each image's median are
        taken only if they score at least ``margin`` higher than uncentred ones. Call after :meth:`calibrate`,
        on the same images. Returns {"component": scores, "center": scores} for the choices made (also kept as
        ``component_scores`` / ``center_scores``)."""
        from cutpaste.core.metrics import image_auroc, pixel_auroc
        from cutpaste.core.synthetic import defective_copies

        if not (component or center):
            raise ValueError("choose_maps: nothing to choose (component and center are both off)")
        if not (self.fused and self.normalized):
            raise ValueError(f"choosing the map {'component' if component else 'centre'} needs a fused, calibrated localizer (fit_stem, then calibrate)")
        if len(calibration_images) < 3:
            raise ValueError(f"choosing the maps on synthetic defects needs at least 3 calibration images, got {len(calibration_images)}")
        defective, masks, owners = defective_copies(calibration_images, copies, seed)
        inputs = self._level_inputs(np.concatenate([calibration_images, defective]), progress)
        count = len(calibration_images)
        clean_patch, clean_stem, probe_patch, probe_stem = self._held_out_readings(
            *_take_inputs(inputs, slice(0, count)), self.norm_statistic, probes=(owners, *_take_inputs(inputs, slice(count, None))))

        def read(name: str) -> np.ndarray:  # clean calibration images, then the copies: uncentred maps of component ``name``
            return np.concatenate([self.fuse(clean_patch, clean_stem, name), self.fuse(probe_patch, probe_stem, name)])
        truth = np.concatenate([np.zeros((count, *masks.shape[1:]), dtype=np.uint8), masks])
        labels = np.r_[np.zeros(count), np.ones(len(masks))]

        def score(maps: np.ndarray) -> dict[str, float]:
            pixel, image = pixel_auroc(truth, maps), image_auroc(labels, maps.reshape(len(maps), -1).max(1))
            return {"pixel_auroc": pixel, "image_auroc": image, "score": (pixel + image) / 2}

        settings = {"copies": int(copies), "seed": int(seed), "margin": float(margin)}
        chosen = {}
        if component:
            scores = {name: score(self._centred(read(name), name)) for name in COMPONENTS}
            best = max(COMPONENTS, key=lambda name: scores[name]["score"])
            self.component = best if scores[best]["score"] >= scores["fused"]["score"] + margin else "fused"
            self.component_scores = chosen["component"] = {**scores, "chosen": self.component, **settings}
            logger.info("map component on synthetic defects in %d calibration images (x%d): %s -> %s", count, copies,
                        ", ".join(f"{name} {scores[name]['pixel_auroc']:.3f}/{scores[name]['image_auroc']:.3f}" for name in COMPONENTS), self.component)
        if center:
            maps = read(self.component)
            scores = {"none": score(maps), "image_median": score(center_on_image(maps))}
            self.map_center = "image_median" if scores["image_median"]["score"] >= scores["none"]["score"] + margin else "none"
            self.center_scores = chosen["center"] = {**scores, "chosen": self.map_center, **settings}
            logger.info("map centre on synthetic defects in %d calibration images (x%d): %s -> %s", count, copies,
                        ", ".join(f"{name} {scores[name]['pixel_auroc']:.3f}/{scores[name]['image_auroc']:.3f}" for name in SYNTHETIC_CENTERS), self.map_center)
        return chosen

    def set_normalization(self, calibration_grids: np.ndarray, statistic: str = "log_ratio", transforms: np.ndarray | None = None) -> None:
        """The per-location normalisation from the (K, G, G) raw patch scores of normal calibration
        images (registered by ``transforms``: locations outside a photo do not count there)."""
        reference = calibration_grids
        if transforms is not None:
            outside = self._outside(transforms)
            masked = np.where(outside, np.nan, calibration_grids)
            covered = (~outside).any(0)
            typical = np.where(covered, np.nanmedian(np.where(covered, masked, 0.0), 0), np.median(calibration_grids, 0))
            reference = np.where(outside, typical, calibration_grids)
        self.norm_center, self.norm_scale = normalization_statistics(reference, statistic)
        self.norm_statistic = statistic

    def maps_from_grids(self, grids: np.ndarray, normalized: bool | None = None, transforms: np.ndarray | None = None) -> np.ndarray:
        """(N, G, G) raw patch scores -> (N, S, S) float32 pixel maps (normalised when ``normalized``,
        default: whenever the localizer is calibrated); border pixels a stride does not reach take
        the nearest computed value. With ``transforms`` (from :meth:`register`) the maps are warped
        from the reference pose back onto the input images."""
        normalized = self.normalized if normalized is None else normalized
        if normalized and not self.normalized:
            raise ValueError("normalised maps asked for, but the localizer has no calibration statistics (call calibrate)")
        grids = self._neutral_scores(grids, transforms)
        grids = normalize_grids(grids, self.norm_center, self.norm_scale, self.norm_statistic) if normalized else grids
        maps = receptive_field_upsample(grids, self.patch_size, self.stride, self.sigma)
        pad = self.image_size - maps.shape[-1]
        maps = np.pad(maps, ((0, 0), (0, pad), (0, pad)), mode="edge").astype(np.float32) if pad else maps.astype(np.float32)
        if transforms is not None:
            maps = warp(maps, transforms, inverse=True)
            if normalized and self.patch_camera_level is not None:
                maps = (maps - self.patch_camera_level).astype(np.float32)
        return maps

    def score_maps(self, images: np.ndarray, progress: bool = False, normalized: bool | None = None) -> np.ndarray:
        """(N, S, S, 3) uint8 at ``image_size`` -> (N, S, S) float32 pixel scores (normalised when
        calibrated, fused with the stem map when the localizer has one and centred on each image's median
        with ``map_center``), registered onto the reference pose and back when the localizer registers."""
        registered, transforms = self.register(images)
        maps = self.maps_from_grids(self.score_grids(registered, progress, registered=True), normalized, transforms)
        normalized = self.normalized if normalized is None else normalized
        return self.with_stem(maps, images, (registered, transforms)) if normalized else maps

    def with_stem(self, patch_maps: np.ndarray, images: np.ndarray, registered: tuple[np.ndarray, np.ndarray | None] | None = None) -> np.ndarray:
        """The localizer's maps from its normalised (N, S, S) patch maps of ``images``: fused with the
        stem maps when the localizer has a stem density, else the patch maps themselves; centred on each
        image's median with ``map_center`` "image_median"."""
        maps = self.fuse(patch_maps, self.stem_maps(images, registered)) if self.fused and self.normalized else patch_maps
        return self._centred(maps) if self.normalized else maps

    def _centred(self, maps: np.ndarray, component: str | None = None) -> np.ndarray:
        """Final maps (of ``component``, default the localizer's) centred as ``map_center`` says."""
        if self.map_center == "image_median":
            return center_on_image(maps)
        if self.map_center == "image_median_capped":
            return center_on_image(maps, cap=self.center_cap(component))
        return maps

    def save(self, folder) -> None:
        import json
        from pathlib import Path

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict, folder / "patch_model.pt")
        arrays = self.density.to_arrays()
        if self.normalized:
            arrays.update(norm_center=self.norm_center, norm_scale=self.norm_scale)
        if self.registration is not None:
            arrays.update(registration_reference=self.registration.reference)
            if self.registration.fine_reference is not None:
                arrays.update(registration_fine_reference=self.registration.fine_reference)
        if self.stem is not None:
            arrays.update({f"stem_{key}": value for key, value in self.stem.to_arrays().items()})
        if self.stem_center is not None:
            arrays.update(stem_center=self.stem_center)
        for name in ("patch_camera_level", "stem_camera_level"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        np.savez(folder / "density.npz", **arrays)
        meta = {"model_config": self.model_config, "image_size": self.image_size, "patch_size": self.patch_size,
                "stride": self.stride, "sigma": self.sigma, "embed_args": self.embed_args, "grid": self.density.grid_,
                "density": self.density.settings(), "normalization": self.norm_statistic,
                "registration": None if self.registration is None else self.registration.settings(),
                "stem": None if self.stem is None else self.stem.settings(), "fusion_references": self.fusion_references,
                "stem_per_location": self.stem_per_location, "stem_tolerance": self.stem_tolerance, "fusion": self.fusion,
                "camera_level": self.camera_level, "camera_tolerance": self.camera_tolerance,
                "intensity_reference": self.intensity_reference, "held_out_references": self.held_out_references,
                "fusion_reference": self.fusion_reference, "component": self.component, "component_scores": self.component_scores,
                "map_center": self.map_center, "center_scores": self.center_scores, "calibration_medians": self.calibration_medians}
        (folder / "localizer.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder) -> Localizer:
        import json
        from pathlib import Path

        folder = Path(folder)
        meta = json.loads((folder / "localizer.json").read_text())
        with np.load(folder / "density.npz") as stored:
            arrays = {key: stored[key] for key in stored.files}
        density = LocationDensity.from_arrays(meta["density"], arrays, source=str(folder / "density.npz"))
        normalization = {}
        if meta.get("normalization"):
            if "norm_center" not in arrays:
                raise ValueError(f"{folder / 'density.npz'}: localizer.json says normalised ({meta['normalization']}) but norm_center/norm_scale are missing")
            normalization = {"norm_center": arrays["norm_center"], "norm_scale": arrays["norm_scale"], "norm_statistic": meta["normalization"]}
        registration = None
        if meta.get("registration"):
            if "registration_reference" not in arrays:
                raise ValueError(f"{folder / 'density.npz'}: localizer.json says registered but registration_reference is missing")
            if meta["registration"].get("refine") and "registration_fine_reference" not in arrays:
                raise ValueError(f"{folder / 'density.npz'}: localizer.json says the registration refines at the full size "
                                 "but registration_fine_reference is missing")
            registration = RigidRegistration(**meta["registration"], reference=arrays["registration_reference"],
                                             fine_reference=arrays.get("registration_fine_reference"))
        stem = None
        if meta.get("stem"):
            stem_arrays = {key[len("stem_"):]: value for key, value in arrays.items()
                           if key.startswith("stem_") and key not in ("stem_center", "stem_camera_level")}
            if not stem_arrays:
                raise ValueError(f"{folder / 'density.npz'}: localizer.json has a stem density but its stem_* arrays are missing")
            stem = GaussianDensity.from_arrays(meta["stem"], stem_arrays)
        camera_level = bool(meta.get("camera_level", False))
        if camera_level and normalization and "patch_camera_level" not in arrays:
            raise ValueError(f"{folder / 'density.npz'}: localizer.json says calibrated with a camera-frame level but patch_camera_level is missing")
        state_dict = torch.load(folder / "patch_model.pt", map_location="cpu", weights_only=True)
        return cls(state_dict, meta["model_config"], density, meta["image_size"], meta["patch_size"], meta["stride"], meta["sigma"],
                   meta["embed_args"], **normalization, registration=registration, stem=stem, fusion_references=meta.get("fusion_references"),
                   stem_per_location=bool(meta.get("stem_per_location", False)), stem_center=arrays.get("stem_center"),
                   stem_tolerance=int(meta.get("stem_tolerance", 0)), fusion=str(meta.get("fusion", "max")),
                   camera_level=camera_level, camera_tolerance=int(meta.get("camera_tolerance", 2)),
                   patch_camera_level=arrays.get("patch_camera_level"), stem_camera_level=arrays.get("stem_camera_level"),
                   intensity_reference=meta.get("intensity_reference"), held_out_references=bool(meta.get("held_out_references", False)),
                   fusion_reference=str(meta.get("fusion_reference", "pixel")), component=str(meta.get("component", "fused")),
                   component_scores=meta.get("component_scores"), map_center=str(meta.get("map_center", "none")),
                   center_scores=meta.get("center_scores"), calibration_medians=meta.get("calibration_medians"))

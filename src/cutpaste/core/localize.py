"""Localization: dense patch embedding, receptive-field upsampling, per-location GDE, GradCAM.

Shapes: images are (N, S, S, 3) uint8; a patch grid has G x G locations with
G = (S - patch_size) // stride + 1 (paper: S 256, patch 32, stride 4 -> G 57); score maps are
(N, S, S) float.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from cutpaste.core.density import GaussianDensity
from cutpaste.core.train import images_to_tensor, resolve_device, resolve_memory_format, resolve_precision


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
                chunks.append(model.embed(chunk.contiguous(memory_format=fmt)).float().cpu())
        outputs.append(torch.cat(chunks).reshape(grid, grid, -1))
    return torch.stack(outputs).numpy()


def fit_patch_density(model: nn.Module, images: np.ndarray, density: LocationDensity, patch_size: int, stride: int,
                      images_per_chunk: int = 8, **embed_args) -> LocationDensity:
    """Fit ``density`` on the dense features of normal images without holding them all when it is
    shared: each chunk of images gives a random share of its patch vectors (``max_fit_vectors`` in
    all). A per-location density needs every vector (N G^2 D float32 in memory)."""
    if density.per_location:
        return density.fit(dense_features(model, images, patch_size, stride, **embed_args))
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


class LocationDensity:
    """GDE over a patch grid: one shared by every location, or one per location.

    Shared (textures, randomly rotated objects): one Gaussian over all N x G x G training vectors
    (subsampled to ``max_fit_vectors``). Per location (aligned objects): G x G Gaussians, each over
    the N training vectors at that location; the precision matrices take G^2 D^2 x 4 bytes
    (3249 x 512^2 x 4 = 3.4 GB at the paper's sizes), so they are fitted and stored as float32
    and scoring walks the grid in chunks of ``location_chunk`` locations.
    """

    def __init__(self, per_location: bool, shrinkage: str | float = "ledoit_wolf", l2_normalize: bool = True,
                 max_fit_vectors: int = 200_000, location_chunk: int = 256, seed: int = 0) -> None:
        self.per_location = per_location
        self.shrinkage = shrinkage
        self.l2_normalize = l2_normalize
        self.max_fit_vectors = max_fit_vectors
        self.location_chunk = location_chunk
        self.seed = seed

    def fit(self, features: np.ndarray) -> LocationDensity:
        """features: (N, G, G, D) float of normal training images."""
        count, grid, _, dim = features.shape
        if not self.per_location:
            return self.fit_shared(features.reshape(-1, dim), grid)
        self.grid_ = grid
        by_location = features.reshape(count, grid * grid, dim).transpose(1, 0, 2)
        self.means_ = np.empty((grid * grid, dim), dtype=np.float32)
        self.precisions_ = np.empty((grid * grid, dim, dim), dtype=np.float32)
        for location, vectors in enumerate(by_location):
            gaussian = GaussianDensity(self.shrinkage, self.l2_normalize).fit(vectors)
            self.means_[location] = gaussian.mean_
            self.precisions_[location] = gaussian.precision_
        return self

    def fit_shared(self, vectors: np.ndarray, grid: int) -> LocationDensity:
        """Fit the shared GDE on (M, D) patch vectors (subsampled to ``max_fit_vectors``) of a G x G grid."""
        self.grid_ = grid
        if len(vectors) > self.max_fit_vectors:
            vectors = vectors[np.random.default_rng(self.seed).choice(len(vectors), self.max_fit_vectors, replace=False)]
        self.shared_ = GaussianDensity(self.shrinkage, self.l2_normalize).fit(vectors)
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
            projected = torch.einsum("mld,lde->mle", centered, torch.from_numpy(self.precisions_[start:stop]))
            scores[:, start:stop] = (projected * centered).sum(-1)
        return scores.reshape(count, grid, grid).numpy().astype(np.float64)


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


class Localizer:
    """A trained patch model with its density and geometry: new images -> (N, S, S) score maps.

    Saved as a folder (patch_model.pt state dict, density.npz, localizer.json); no pickle.
    """

    def __init__(self, state_dict: dict, model_config: dict, density: LocationDensity, image_size: int,
                 patch_size: int, stride: int, sigma: float, embed_args: dict) -> None:
        self.state_dict, self.model_config, self.density = state_dict, model_config, density
        self.image_size, self.patch_size, self.stride, self.sigma = image_size, patch_size, stride, sigma
        self.embed_args = embed_args

    def score_maps(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
        """(N, S, S, 3) uint8 at ``image_size`` -> (N, S, S) float32 pixel scores; border pixels a
        stride does not reach take the nearest computed value."""
        from cutpaste.core.models import CutPasteNet

        num_classes = int(self.state_dict["classifier.weight"].shape[0])
        network = CutPasteNet(num_classes, tuple(self.model_config["head_dims"]), self.model_config["backbone"])
        network.load_state_dict(self.state_dict)
        grid_scores = score_patch_grid(network.eval(), images, self.density, self.patch_size, self.stride, progress=progress, **self.embed_args)
        maps = receptive_field_upsample(grid_scores, self.patch_size, self.stride, self.sigma)
        pad = self.image_size - maps.shape[-1]
        return np.pad(maps, ((0, 0), (0, pad), (0, pad)), mode="edge").astype(np.float32) if pad else maps.astype(np.float32)

    def save(self, folder) -> None:
        import json
        from pathlib import Path

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict, folder / "patch_model.pt")
        density = self.density
        arrays = ({"means": density.means_, "precisions": density.precisions_} if density.per_location
                  else {f"shared_{key}": value for key, value in density.shared_.to_arrays().items()})
        np.savez(folder / "density.npz", **arrays)
        meta = {"model_config": self.model_config, "image_size": self.image_size, "patch_size": self.patch_size,
                "stride": self.stride, "sigma": self.sigma, "embed_args": self.embed_args, "grid": density.grid_,
                "density": {"per_location": density.per_location, "shrinkage": density.shrinkage, "l2_normalize": density.l2_normalize}}
        (folder / "localizer.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder) -> Localizer:
        import json
        from pathlib import Path

        folder = Path(folder)
        meta = json.loads((folder / "localizer.json").read_text())
        density = LocationDensity(**meta["density"])
        density.grid_ = meta["grid"]
        with np.load(folder / "density.npz") as arrays:
            if density.per_location:
                density.means_, density.precisions_ = arrays["means"], arrays["precisions"]
            else:
                shared = {key.removeprefix("shared_"): arrays[key] for key in arrays.files}
                density.shared_ = GaussianDensity.from_arrays({"shrinkage": density.shrinkage, "l2_normalize": density.l2_normalize}, shared)
        state_dict = torch.load(folder / "patch_model.pt", map_location="cpu", weights_only=True)
        return cls(state_dict, meta["model_config"], density, meta["image_size"], meta["patch_size"], meta["stride"], meta["sigma"], meta["embed_args"])

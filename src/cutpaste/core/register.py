"""Rigid registration of aligned objects: rotate and shift every image onto one reference pose.

A per-location density assumes that a grid location sees the same part of the object in every
image. Parts that hang or lie loosely (a plate on a wire) rotate by tens of degrees and move by
tens of pixels between images, so their edges land on locations that saw background in other
training images and light up in every map. Registering each image onto a reference pose first
(what inspection systems do before comparing with a golden sample) removes that motion; the maps
are computed in the reference frame and warped back, so they overlay the input image.

Estimation (:meth:`RigidRegistration.estimate`): the images are reduced to grey ``work_size`` px
planes, slightly blurred, windowed, and compared with the reference by normalised
cross-correlation (FFT) at every rotation of a grid over ``[-max_rotation_deg, max_rotation_deg]``;
the best rotation is refined on a finer grid and the peak of the correlation gives the shift
(sub-pixel). The reference (:meth:`RigidRegistration.fit`) is the normal training image the other
training images match best: a golden sample in a typical pose. Only normal training images are used.

Refinement (``refine``): at ``work_size`` one pixel is several image pixels and the rotation is felt
mostly through the blur, so an estimate can be a degree or two and a pixel or two off, and the part's
edges then light up the maps. With ``refine`` each image, aligned by its coarse estimate, is matched
again with the reference at the full image size: rotations within one coarse step either way in
eighths of it, shifts within two work pixels, and the two transforms are composed (again from there
when the best rotation lies on the edge of that range).

Transforms are (angle in degrees, dy, dx in pixels of the full image): the aligned image is the
input rotated by ``angle`` about the image centre, then shifted by (dy, dx).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)


def _rotation(angle_deg: float) -> np.ndarray:
    """2x2 rotation in (row, col) coordinates."""
    angle = np.deg2rad(angle_deg)
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def _affine(plane: np.ndarray, matrix: np.ndarray, offset: np.ndarray, order: int, fill: float | None) -> np.ndarray:
    if fill is None:
        return ndimage.affine_transform(plane, matrix, offset=offset, order=order, mode="nearest")
    return ndimage.affine_transform(plane, matrix, offset=offset, order=order, mode="constant", cval=fill)


def warp(images: np.ndarray, transforms: np.ndarray, inverse: bool = False, order: int = 1, fill: float | None = None) -> np.ndarray:
    """Apply (or with ``inverse`` undo) rigid transforms: (N, H, W[, C]) -> same shape and dtype.

    Forward: a point p of the input lands at q = R(angle) (p - c) + c + t in the aligned image
    (c the centre, t = (dy, dx)); pixels from outside the input take the nearest border value, or
    ``fill`` when given (warp an image of ones with ``fill=0`` to see which pixels the input covers).
    """
    images, transforms = np.asarray(images), np.asarray(transforms, dtype=np.float64)
    if len(images) != len(transforms):
        raise ValueError(f"{len(images)} images but {len(transforms)} transforms")
    centre = (np.array(images.shape[1:3], dtype=np.float64) - 1) / 2
    output = np.empty_like(images)
    for index, (image, (angle, dy, dx)) in enumerate(zip(images, transforms, strict=True)):
        shift = np.array([dy, dx])
        if inverse:  # output p reads the aligned image at q(p)
            matrix = _rotation(angle)
            offset = centre + shift - matrix @ centre
        else:  # output q reads the input at p(q) = R(-angle) (q - c - t) + c
            matrix = _rotation(-angle)
            offset = centre - matrix @ (centre + shift)
        planes = image[..., None] if image.ndim == 2 else image
        warped = np.stack([_affine(planes[..., channel].astype(np.float32), matrix, offset, order, fill)
                           for channel in range(planes.shape[-1])], -1)
        if np.issubdtype(images.dtype, np.integer):
            warped = np.clip(np.rint(warped), np.iinfo(images.dtype).min, np.iinfo(images.dtype).max)
        output[index] = warped.reshape(image.shape).astype(images.dtype)
    return output


def compose(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(N, 3) transforms: warping by ``first`` and then by ``second`` equals warping by the result
    (angles add; the first shift turns with the second rotation)."""
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    shifts = np.stack([_rotation(angle) @ shift for angle, shift in zip(second[:, 0], first[:, 1:], strict=True)]) if len(first) else first[:, 1:]
    return np.concatenate([first[:, :1] + second[:, :1], shifts + second[:, 1:]], 1)


def coverage(transforms: np.ndarray, image_size: int, patch_size: int, stride: int, padding: int = 0) -> np.ndarray:
    """(N, G, G) fraction of each patch of the registered images that lies inside the input photo
    (the rest was filled in from outside it by the rotation and shift). ``padding``: patches may hang
    over the image's border by that much (their part beyond it does not count)."""
    import torch

    inside = warp(np.ones((len(transforms), image_size, image_size), dtype=np.float32), transforms, fill=0.0)
    pooled = torch.nn.functional.avg_pool2d(torch.from_numpy(inside)[:, None], patch_size, stride, padding=padding, count_include_pad=False)
    return pooled[:, 0].numpy()


def _grey(images: np.ndarray, work_size: int) -> np.ndarray:
    """(N, H, W[, 3]) -> (N, w, w) float32 grey images at ``work_size``, blurred by one work pixel
    (a smooth correlation landscape over rotations)."""
    grey = images.astype(np.float32).mean(-1) if images.ndim == 4 else images.astype(np.float32)
    small = ndimage.zoom(grey, (1, work_size / grey.shape[1], work_size / grey.shape[2]), order=1)
    return ndimage.gaussian_filter(small, (0, 1, 1)).astype(np.float32)


def _prepare(planes: np.ndarray) -> np.ndarray:
    """Zero mean, Hann window, unit norm (per image): correlation peaks become comparable (-1 to 1)."""
    window = np.outer(np.hanning(planes.shape[-2]), np.hanning(planes.shape[-1])).astype(np.float32)
    centred = (planes - planes.mean((-2, -1), keepdims=True)) * window
    norm = np.sqrt((centred**2).sum((-2, -1), keepdims=True))
    return centred / np.maximum(norm, 1e-12)


class RigidRegistration:
    """Rotation + translation of images onto a reference pose, estimated from normal training images.

    Args:
        max_rotation_deg: largest rotation searched, either way (0: translation only).
        rotation_step_deg: step of the coarse rotation grid (refined to a quarter of it).
        work_size: side (px) at which the transforms are estimated.
        reference_candidates: training images tried as the reference pose.
        refine: refine each estimate at the full image size (module docstring).
    """

    def __init__(self, max_rotation_deg: float = 30.0, rotation_step_deg: float = 2.0, work_size: int = 64,
                 reference_candidates: int = 12, reference: np.ndarray | None = None, image_size: int | None = None,
                 refine: bool = False, fine_reference: np.ndarray | None = None) -> None:
        if max_rotation_deg < 0 or rotation_step_deg <= 0 or work_size < 8 or reference_candidates < 1:
            raise ValueError(f"registration needs max_rotation_deg >= 0, rotation_step_deg > 0, work_size >= 8, "
                             f"reference_candidates >= 1; got {max_rotation_deg}, {rotation_step_deg}, {work_size}, {reference_candidates}")
        self.max_rotation_deg, self.rotation_step_deg = float(max_rotation_deg), float(rotation_step_deg)
        self.work_size, self.reference_candidates = int(work_size), int(reference_candidates)
        self.reference = None if reference is None else np.asarray(reference, dtype=np.float32)
        self.image_size = None if image_size is None else int(image_size)
        self.refine = bool(refine)
        self.fine_reference = None if fine_reference is None else np.asarray(fine_reference, dtype=np.float32)

    def settings(self) -> dict:
        return {"max_rotation_deg": self.max_rotation_deg, "rotation_step_deg": self.rotation_step_deg, "work_size": self.work_size,
                "reference_candidates": self.reference_candidates, "image_size": self.image_size, "refine": self.refine}

    def fit(self, images: np.ndarray) -> RigidRegistration:
        """Choose the reference pose among normal training images (N, S, S, 3): of
        ``reference_candidates`` evenly spaced images, the one the others match best (highest mean
        correlation peak after registration), a real image in a typical pose."""
        if len(images) == 0:
            raise ValueError("registration needs at least one training image")
        self.image_size = int(images.shape[1])
        planes = _grey(images, self.work_size)
        candidates = np.unique(np.linspace(0, len(planes) - 1, min(self.reference_candidates, len(planes))).astype(int))
        agreement = []
        for candidate in candidates:
            self.reference = planes[candidate]
            agreement.append(self._estimate_planes(planes)[1].mean())
        chosen = candidates[int(np.argmax(agreement))]
        self.reference = planes[chosen]
        self.fine_reference = _grey(images[chosen : chosen + 1], self.image_size)[0] if self.refine else None
        logger.info("registration: reference pose = training image %d of %d (mean correlation %.3f)",
                    candidates[int(np.argmax(agreement))], len(planes), max(agreement))
        return self

    def _check(self, images: np.ndarray) -> None:
        if self.reference is None:
            raise ValueError("registration has no reference pose: call fit first")
        if images.ndim != 4 or images.shape[1] != self.image_size:
            raise ValueError(f"images are {images.shape[1:]}, the registration was fitted on {self.image_size} px images (N, S, S, 3)")
        if self.refine and self.fine_reference is None:
            raise ValueError("registration refines at the full size but has no full-size reference: call fit first")

    def _estimate_planes(self, planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, w, w) grey planes -> ((N, 3) transforms in work-size pixels, (N,) correlation peaks)."""
        reference = np.fft.rfft2(_prepare(self.reference[None]))[0]
        count = int(np.floor(self.max_rotation_deg / self.rotation_step_deg))
        coarse = self.rotation_step_deg * np.arange(-count, count + 1)
        results, peaks = np.zeros((len(planes), 3)), np.zeros(len(planes))
        for index, plane in enumerate(planes):
            best, _ = self._best(plane, coarse, reference)
            fine = best[0] + self.rotation_step_deg / 4 * np.arange(-3, 4)
            results[index], peaks[index] = self._best(plane, fine[np.abs(fine) <= self.max_rotation_deg + 1e-9], reference)
        return results, peaks

    def _best(self, plane: np.ndarray, angles: np.ndarray, reference: np.ndarray, window: int | None = None) -> tuple[np.ndarray, float]:
        """The rotation of ``angles`` whose correlation with the reference peaks highest, the shift at
        that peak (sub-pixel; within ``window`` px either way when given), and the peak value."""
        zeros = np.zeros_like(angles)
        rotated = warp(np.repeat(plane[None], len(angles), 0), np.stack([angles, zeros, zeros], 1))
        correlation = np.fft.irfft2(reference[None] * np.conj(np.fft.rfft2(_prepare(rotated))), s=plane.shape)
        flat = correlation.reshape(len(angles), -1)
        if window is not None:  # only shifts within the window (the correlation is circular: wrap the offsets)
            offsets = [np.minimum(np.arange(n), n - np.arange(n)) for n in plane.shape]
            inside = (offsets[0][:, None] <= window) & (offsets[1][None, :] <= window)
            flat = np.where(inside.ravel()[None], flat, -np.inf)
        peaks = flat.argmax(1)
        best = int(flat[np.arange(len(angles)), peaks].argmax())
        peak = np.array(np.unravel_index(peaks[best], plane.shape))
        size = np.array(plane.shape)
        surface = correlation[best]
        shift = peak.astype(np.float64)
        for axis in range(2):  # sub-pixel: the vertex of a parabola through the peak and its neighbours
            before, after = peak.copy(), peak.copy()
            before[axis], after[axis] = (peak[axis] - 1) % size[axis], (peak[axis] + 1) % size[axis]
            low, mid, high = surface[tuple(before)], surface[tuple(peak)], surface[tuple(after)]
            curvature = low - 2 * mid + high
            if curvature < 0:
                shift[axis] += float(np.clip(0.5 * (low - high) / curvature, -0.5, 0.5))
        shift = (shift + size / 2) % size - size / 2  # wrap to [-w/2, w/2)
        return np.array([angles[best], *shift], dtype=np.float64), float(flat[best, peaks[best]])

    def estimate(self, images: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) images -> (N, 3) transforms (angle deg, dy, dx in image pixels) onto the reference."""
        self._check(images)
        transforms, _ = self._estimate_planes(_grey(images, self.work_size))
        transforms[:, 1:] *= self.image_size / self.work_size
        return self._refined(images, transforms) if self.refine else transforms

    def _refined(self, images: np.ndarray, transforms: np.ndarray, passes: int = 3) -> np.ndarray:
        """Coarse transforms refined at the full image size (module docstring): the images, aligned by
        them, matched with the full-size reference over small rotations and shifts, then composed; an
        image whose best rotation lies on the edge of that range is searched again from there (at most
        ``passes`` times)."""
        reference = np.fft.rfft2(_prepare(self.fine_reference[None]))[0]
        angles = self.rotation_step_deg / 8 * np.arange(-8, 9)
        window = max(1, round(2 * self.image_size / self.work_size))
        transforms = np.array(transforms, dtype=np.float64)
        pending = np.arange(len(images))
        for _ in range(passes):
            planes = _grey(warp(images[pending], transforms[pending]), self.image_size)
            residual = np.stack([self._best(plane, angles, reference, window)[0] for plane in planes])
            transforms[pending] = compose(transforms[pending], residual)
            pending = pending[np.abs(residual[:, 0]) >= angles[-1] - 1e-9]
            if not len(pending):
                break
        return transforms

    def align(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(aligned images, transforms): every image rotated and shifted onto the reference pose."""
        transforms = self.estimate(images)
        return warp(images, transforms), transforms

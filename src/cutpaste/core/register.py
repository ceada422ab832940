"""Registration of aligned objects: rotate, shift (and optionally zoom) every image onto one reference pose.

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

Scale (``max_scale_change``): a part that hangs nearer to or farther from the camera, or tilts, looks
larger or smaller, and its edges again land off their place. With ``max_scale_change`` m > 0 the fine
search (and the refinement) also tries zooms from 1 / (1 + m) to 1 + m in ``scale_step`` steps.

Transforms are (angle in degrees, dy, dx in pixels of the full image[, ln zoom]): the aligned image is
the input zoomed by exp(ln zoom) and rotated by ``angle`` about the image centre, then shifted by
(dy, dx). Three columns mean no zoom; a row of zeros is the identity.
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


def _with_zoom(transforms: np.ndarray) -> np.ndarray:
    """(N, 3) or (N, 4) transforms -> (N, 4), the ln zoom 0 where it was not given."""
    transforms = np.asarray(transforms, dtype=np.float64)
    if transforms.ndim != 2 or transforms.shape[1] not in (3, 4):
        raise ValueError(f"transforms must be (N, 3) or (N, 4): angle, dy, dx[, ln zoom]; got shape {transforms.shape}")
    return transforms if transforms.shape[1] == 4 else np.concatenate([transforms, np.zeros((len(transforms), 1))], 1)


def warp(images: np.ndarray, transforms: np.ndarray, inverse: bool = False, order: int = 1, fill: float | None = None) -> np.ndarray:
    """Apply (or with ``inverse`` undo) transforms: (N, H, W[, C]) -> same shape and dtype.

    Forward: a point p of the input lands at q = z R(angle) (p - c) + c + t in the aligned image
    (c the centre, t = (dy, dx), z the zoom); pixels from outside the input take the nearest border value, or
    ``fill`` when given (warp an image of ones with ``fill=0`` to see which pixels the input covers).
    """
    images = np.asarray(images)
    if len(images) != len(transforms):
        raise ValueError(f"{len(images)} images but {len(transforms)} transforms")
    transforms = _with_zoom(transforms)
    centre = (np.array(images.shape[1:3], dtype=np.float64) - 1) / 2
    output = np.empty_like(images)
    for index, (image, (angle, dy, dx, log_zoom)) in enumerate(zip(images, transforms, strict=True)):
        shift, zoom = np.array([dy, dx]), float(np.exp(log_zoom))
        if inverse:  # output p reads the aligned image at q(p)
            matrix = zoom * _rotation(angle)
            offset = centre + shift - matrix @ centre
        else:  # output q reads the input at p(q) = R(-angle) (q - c - t) / z + c
            matrix = _rotation(-angle) / zoom
            offset = centre - matrix @ (centre + shift)
        planes = image[..., None] if image.ndim == 2 else image
        warped = np.stack([_affine(planes[..., channel].astype(np.float32), matrix, offset, order, fill)
                           for channel in range(planes.shape[-1])], -1)
        if np.issubdtype(images.dtype, np.integer):
            warped = np.clip(np.rint(warped), np.iinfo(images.dtype).min, np.iinfo(images.dtype).max)
        output[index] = warped.reshape(image.shape).astype(images.dtype)
    return output


def compose(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Transforms: warping by ``first`` and then by ``second`` equals warping by the result (angles and
    ln zooms add; the first shift turns and zooms with the second). (N, 4) when either has a zoom, else (N, 3)."""
    columns = max(np.shape(first)[1], np.shape(second)[1])
    first, second = _with_zoom(first), _with_zoom(second)
    shifts = np.stack([np.exp(log_zoom) * _rotation(angle) @ shift
                       for angle, log_zoom, shift in zip(second[:, 0], second[:, 3], first[:, 1:3], strict=True)]) if len(first) else first[:, 1:3]
    return np.concatenate([first[:, :1] + second[:, :1], shifts + second[:, 1:3], first[:, 3:] + second[:, 3:]], 1)[:, :columns]


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
    """Rotation + translation (+ zoom) of images onto a reference pose, estimated from normal training images.

    Args:
        max_rotation_deg: largest rotation searched, either way (0: translation only).
        rotation_step_deg: step of the coarse rotation grid (refined to a quarter of it).
        work_size: side (px) at which the transforms are estimated.
        reference_candidates: training images tried as the reference pose.
        refine: refine each estimate at the full image size (module docstring).
        max_scale_change: zooms searched, from 1 / (1 + m) to 1 + m (0: none, a rigid transform).
        scale_step: relative step of the zoom grid (refined to half of it).
    """

    def __init__(self, max_rotation_deg: float = 30.0, rotation_step_deg: float = 2.0, work_size: int = 64,
                 reference_candidates: int = 12, reference: np.ndarray | None = None, image_size: int | None = None,
                 refine: bool = False, fine_reference: np.ndarray | None = None, max_scale_change: float = 0.0,
                 scale_step: float = 0.02) -> None:
        if max_rotation_deg < 0 or rotation_step_deg <= 0 or work_size < 8 or reference_candidates < 1:
            raise ValueError(f"registration needs max_rotation_deg >= 0, rotation_step_deg > 0, work_size >= 8, "
                             f"reference_candidates >= 1; got {max_rotation_deg}, {rotation_step_deg}, {work_size}, {reference_candidates}")
        if not (0 <= max_scale_change < 1 and 0 < scale_step < 1):
            raise ValueError(f"registration needs 0 <= max_scale_change < 1 and 0 < scale_step < 1; got {max_scale_change}, {scale_step}")
        self.max_scale_change, self.scale_step = float(max_scale_change), float(scale_step)
        self.max_rotation_deg, self.rotation_step_deg = float(max_rotation_deg), float(rotation_step_deg)
        self.work_size, self.reference_candidates = int(work_size), int(reference_candidates)
        self.reference = None if reference is None else np.asarray(reference, dtype=np.float32)
        self.image_size = None if image_size is None else int(image_size)
        self.refine = bool(refine)
        self.fine_reference = None if fine_reference is None else np.asarray(fine_reference, dtype=np.float32)

    def settings(self) -> dict:
        return {"max_rotation_deg": self.max_rotation_deg, "rotation_step_deg": self.rotation_step_deg, "work_size": self.work_size,
                "reference_candidates": self.reference_candidates, "image_size": self.image_size, "refine": self.refine,
                "max_scale_change": self.max_scale_change, "scale_step": self.scale_step}

    def _log_zooms(self, fine: bool = False) -> np.ndarray:
        """The ln zooms searched: the grid over +-ln(1 + max_scale_change) (``fine``: one step either way in
        halves, around an estimate); [0] without a zoom."""
        if not self.max_scale_change:
            return np.zeros(1)
        step = np.log1p(self.scale_step)
        if fine:
            return step / 2 * np.arange(-2, 3)
        limit = np.log1p(self.max_scale_change)
        count = int(np.ceil(limit / step - 1e-9))
        return np.clip(step * np.arange(-count, count + 1), -limit, limit)

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
                    chosen, len(planes), max(agreement))
        return self

    def _check(self, images: np.ndarray) -> None:
        if self.reference is None:
            raise ValueError("registration has no reference pose: call fit first")
        if images.ndim != 4 or images.shape[1] != self.image_size:
            raise ValueError(f"images are {images.shape[1:]}, the registration was fitted on {self.image_size} px images (N, S, S, 3)")
        if self.refine and self.fine_reference is None:
            raise ValueError("registration refines at the full size but has no full-size reference: call fit first")

    def _estimate_planes(self, planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, w, w) grey planes -> ((N, 4) transforms in work-size pixels, (N,) correlation peaks): the
        coarse rotations without a zoom, then the fine rotations around the best one with every zoom."""
        reference = np.fft.rfft2(_prepare(self.reference[None]))[0]
        count = int(np.floor(self.max_rotation_deg / self.rotation_step_deg))
        coarse = self.rotation_step_deg * np.arange(-count, count + 1)
        results, peaks = np.zeros((len(planes), 4)), np.zeros(len(planes))
        for index, plane in enumerate(planes):
            best, _ = self._best(plane, coarse, reference)
            fine = best[0] + self.rotation_step_deg / 4 * np.arange(-3, 4)
            results[index], peaks[index] = self._best(plane, fine[np.abs(fine) <= self.max_rotation_deg + 1e-9], reference,
                                                      log_zooms=self._log_zooms())
        return results, peaks

    def _best(self, plane: np.ndarray, angles: np.ndarray, reference: np.ndarray, window: int | None = None,
              log_zooms: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """The rotation of ``angles`` (and ln zoom of ``log_zooms``, default none) whose correlation with the
        reference peaks highest, the shift at that peak (sub-pixel; within ``window`` px either way when
        given), as (angle, dy, dx, ln zoom), and the peak value."""
        log_zooms = np.zeros(1) if log_zooms is None else np.asarray(log_zooms, dtype=np.float64)
        angles, log_zooms = (grid.ravel() for grid in np.meshgrid(angles, log_zooms))
        zeros = np.zeros_like(angles)
        rotated = warp(np.repeat(plane[None], len(angles), 0), np.stack([angles, zeros, zeros, log_zooms], 1))
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
        return np.array([angles[best], *shift, log_zooms[best]], dtype=np.float64), float(flat[best, peaks[best]])

    def estimate(self, images: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) images -> transforms onto the reference: (N, 3) (angle deg, dy, dx in image pixels),
        or (N, 4) with the ln zoom when zooms are searched (``max_scale_change`` > 0)."""
        self._check(images)
        transforms, _ = self._estimate_planes(_grey(images, self.work_size))
        transforms[:, 1:3] *= self.image_size / self.work_size
        if self.refine:
            transforms = self._refined(images, transforms)
        return transforms if self.max_scale_change else transforms[:, :3]

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
            residual = np.stack([self._best(plane, angles, reference, window, self._log_zooms(fine=True))[0] for plane in planes])
            transforms[pending] = compose(transforms[pending], residual)
            pending = pending[np.abs(residual[:, 0]) >= angles[-1] - 1e-9]
            if not len(pending):
                break
        return transforms

    def align(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(aligned images, transforms): every image rotated and shifted onto the reference pose."""
        transforms = self.estimate(images)
        return warp(images, transforms), transforms

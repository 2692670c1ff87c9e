"""Hand-centred square crop (paper §3.1, Eq. 1) and per-image normalisation (§3.2).

    from keyhand.data.crop import crop_params, crop_sample, normalize
    box = crop_params(sample.joints_2d)                 # CropBox(cx, cy, side), original px
    cropped = crop_sample(sample, out_size=256)         # image, mask, joints_2d, intrinsics follow
    x = normalize(cropped.image)                        # (3, 256, 256) float32, zero mean unit var

Pixel convention (OpenCV, as the readers use): pixel centres at integer coordinates, so an image of
width W spans the continuous interval [-0.5, W - 0.5]. The crop square of side ``l`` centred on p_c
spans [p_c - l/2, p_c + l/2] and is mapped onto [-0.5, out_size - 0.5]; p_c lands on the crop's
centre ``(out_size - 1) / 2``.

The affine ``A`` (3×3, last row 0 0 1) maps original pixels to crop pixels: ``[u', v', 1] = A [u, v, 1]``.
It is a scale and translation only, so the cropped intrinsics are ``K' = A K`` (projecting the
unchanged camera-frame 3D joints with ``K'`` gives the cropped 2D joints).

Mirroring (:func:`mirror_sample`, used at preparation to turn left hands into right ones for the right MANO
model): the image is flipped about its vertical centre line, ``u' = W − 1 − u`` (pixel flip ``F``), the
camera-frame 3D points are reflected ``X' = −X`` (``D = diag(−1, 1, 1)``) and the intrinsics become
``K' = F K D``: then ``K' X' = F K X``, i.e. the mirrored 3D joints project exactly onto the mirrored 2D
joints, whatever the principal point (``c_x' = W − 1 − c_x``). On a crop it is the same as cropping the
mirrored image with the mirrored box (the crop affine commutes with the flip about the crop's centre).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from keyhand.data.record import MIDDLE_MCP, NUM_JOINTS, AnnotationError, DatasetError, HandSample

__all__ = ["CropBox", "crop_params", "crop_affine", "crop_image", "transform_points", "crop_intrinsics",
           "crop_sample", "mirror_matrix", "mirror_sample", "normalize"]

#: Smallest crop side (px) accepted, so that degenerate annotations (all joints on one pixel) still crop.
MIN_SIDE = 8.0
#: Reflection of the camera frame used by :func:`mirror_sample`: X -> -X.
MIRROR_3D = np.diag([-1.0, 1.0, 1.0])
#: ``extra`` entries holding camera-frame 3D points (..., 3) that :func:`mirror_sample` reflects too.
EXTRA_3D_KEYS = ("palm", "verts_3d")
_OTHER_SIDE = {"left": "right", "right": "left"}


@dataclass(frozen=True)
class CropBox:
    """A square crop in original-image pixels: centre (cx, cy) and side length ``side`` (px)."""

    cx: float
    cy: float
    side: float

    def as_array(self) -> np.ndarray:
        """``[cx, cy, side]`` float32 (3,)."""
        return np.array([self.cx, self.cy, self.side], np.float32)


def crop_params(joints_2d: np.ndarray, enlarge: float = 0.2, min_side: float = MIN_SIDE) -> CropBox:
    """Eq. 1: the square crop centred on the middle-finger MCP p_c.

    ``l = 2 · max(p_max − p_c, p_c − p_min)`` where the max runs over x and y (the largest per-axis
    extent of the joints from p_c), then ``l ← l · (1 + enlarge)`` ("enlarged by another 20 %").

    Args:
        joints_2d: (21, 2) px, original image, manopth order (p_c = joints_2d[MIDDLE_MCP]).
        enlarge: relative enlargement of l (0.2 in the paper).
        min_side: lower bound on the side (px) for degenerate annotations.
    Returns:
        CropBox in original-image pixels.
    """
    j = np.asarray(joints_2d, np.float64)
    if j.shape != (NUM_JOINTS, 2) or not np.all(np.isfinite(j)):
        raise AnnotationError(f"crop_params: joints_2d must be finite with shape (21, 2), got {j.shape}")
    pc = j[MIDDLE_MCP]
    extent = max(float(np.max(j.max(axis=0) - pc)), float(np.max(pc - j.min(axis=0))))
    side = max(2.0 * extent * (1.0 + enlarge), min_side)
    return CropBox(float(pc[0]), float(pc[1]), float(side))


def crop_affine(box: CropBox, out_size: int = 256) -> np.ndarray:
    """(3, 3) float64 affine from original pixels to crop pixels (see module docstring)."""
    if box.side <= 0:
        raise DatasetError(f"crop_affine: crop side must be > 0, got {box.side}")
    s = out_size / box.side
    c = (out_size - 1) / 2.0
    return np.array([[s, 0.0, c - s * box.cx], [0.0, s, c - s * box.cy], [0.0, 0.0, 1.0]])


def _as3x3(A: np.ndarray) -> np.ndarray:
    A = np.asarray(A, np.float64)
    if A.shape == (2, 3):
        return np.vstack([A, [0.0, 0.0, 1.0]])
    if A.shape != (3, 3):
        raise ValueError(f"affine must be (2, 3) or (3, 3), got {A.shape}")
    return A


def crop_image(image: np.ndarray, box: CropBox, out_size: int = 256, pad_value: int | float = 0,
               interpolation: int = cv2.INTER_LINEAR) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``box`` out of ``image`` and resize it to ``out_size``² (cv2.warpAffine, BORDER_CONSTANT).

    Parts of the box outside the image are padded with ``pad_value``. With bilinear interpolation and a
    box more than twice ``out_size``, the image is first smoothed (Gaussian σ = 0.5 · side / out_size px)
    against aliasing.

    Args:
        image: (H, W) or (H, W, C) array (uint8 image, uint8 mask, float depth ...).
        box: the crop square, original px.
        out_size: side of the output, px.
        interpolation: cv2 flag; use ``cv2.INTER_NEAREST`` for masks and label maps.
    Returns:
        ``(out, A)``: out is (out_size, out_size[, C]) of the input dtype; A the (3, 3) affine
        original px → crop px.
    """
    A = crop_affine(box, out_size)
    if interpolation == cv2.INTER_LINEAR and box.side > 2 * out_size and image.ndim >= 2:
        # Strong downscale: pre-smooth to limit aliasing (bilinear samples only 2×2 pixels).
        sigma = 0.5 * box.side / out_size
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma)
    channels = 1 if image.ndim == 2 else image.shape[2]
    border = pad_value if channels == 1 else (pad_value,) * min(channels, 4)
    out = cv2.warpAffine(image, A[:2], (out_size, out_size), flags=interpolation,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=border)
    if image.ndim == 3 and out.ndim == 2:  # cv2 drops a trailing channel axis of size 1
        out = out[:, :, None]
    return out, A


def transform_points(A: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) or (3, 3) affine to (..., 2) points; returns float32 (..., 2)."""
    A = _as3x3(A)
    p = np.asarray(pts, np.float64)
    out = p @ A[:2, :2].T + A[:2, 2]
    return out.astype(np.float32)


def crop_intrinsics(K: np.ndarray, A: np.ndarray) -> np.ndarray:
    """``K' = A K`` (3, 3) float32: projecting camera-frame points with K' gives crop pixels."""
    return (_as3x3(A) @ np.asarray(K, np.float64)).astype(np.float32)


def crop_sample(sample: HandSample, out_size: int = 256, enlarge: float = 0.2,
                box: CropBox | None = None) -> HandSample:
    """Crop a sample to the §3.1 square (Eq. 1), or to ``box`` when given.

    ``box`` overrides Eq. 1 (gesture datasets without joints, whose hand box comes from elsewhere).
    The image is resampled bilinearly, the mask (and a depth map of the image's size) with nearest
    neighbour, both padded with 0 outside the original image. joints_2d and intrinsics are mapped
    with the crop affine; joints_3d (camera frame, mm) are unchanged. Joints falling outside the crop
    get visibility 0. ``extra["crop_box"]`` ([cx, cy, side] original px) and ``extra["crop_affine"]``
    ((3, 3) original px → crop px) record the crop.

    Returns:
        A new HandSample with an (out_size, out_size, 3) uint8 image.
    """
    if box is None:
        if sample.joints_2d is None:
            raise DatasetError(f"{sample.key}: crop_sample needs joints_2d (Eq. 1) or an explicit box")
        box = crop_params(sample.joints_2d, enlarge)
    image, A = crop_image(sample.image, box, out_size)
    mask = depth = None
    if sample.mask is not None:
        mask, _ = crop_image(sample.mask, box, out_size, interpolation=cv2.INTER_NEAREST)
    depth = sample.depth
    if depth is not None and depth.shape[:2] == sample.image.shape[:2]:
        depth, _ = crop_image(depth, box, out_size, interpolation=cv2.INTER_NEAREST)
    joints_2d = visibility = None
    if sample.joints_2d is not None:
        joints_2d = transform_points(A, sample.joints_2d)
        inside = np.all((joints_2d >= -0.5) & (joints_2d <= out_size - 0.5), axis=1)
        vis = np.ones(NUM_JOINTS, np.float32) if sample.visibility is None else sample.visibility
        visibility = (vis * inside).astype(np.float32)
    intrinsics = None if sample.intrinsics is None else crop_intrinsics(sample.intrinsics, A)
    extra = dict(sample.extra, crop_box=box.as_array(), crop_affine=A.astype(np.float32))
    return replace(sample, image=image, mask=mask, depth=depth, joints_2d=joints_2d, visibility=visibility,
                   intrinsics=intrinsics, extra=extra)


def _flip(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.ascontiguousarray(a[:, ::-1])


def mirror_matrix(width: int) -> np.ndarray:
    """(3, 3) float64 pixel flip of an image ``width`` px wide: ``u' = width − 1 − u`` (pixel centres at integers)."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def mirror_sample(sample: HandSample) -> HandSample:
    """The sample seen in a mirror: a left hand becomes a right one (module docstring: ``u' = W − 1 − u``,
    ``X' = −X``, ``K' = F K D``), re-projection preserved.

    Flipped: image, mask and depth (each about its own vertical centre line), joints_2d, joints_3d,
    intrinsics, the 3D points of ``extra`` (:data:`EXTRA_3D_KEYS`, e.g. ground-truth vertices); ``side``
    changes (left ↔ right). ``extra["crop_affine"]`` becomes ``F A`` (original px → the mirrored sample's px;
    ``F`` alone on an uncropped sample); other per-pixel maps in ``extra`` stay in original pixels, which
    that affine maps. ``extra["mirrored"]`` toggles. Visibility, labels and everything else are kept.
    """
    width = sample.image.shape[1]
    F = mirror_matrix(width)
    joints_2d = None if sample.joints_2d is None else transform_points(F, sample.joints_2d)
    joints_3d = None if sample.joints_3d is None else (sample.joints_3d * MIRROR_3D.diagonal()).astype(np.float32)
    intrinsics = None
    if sample.intrinsics is not None:
        intrinsics = (F @ np.asarray(sample.intrinsics, np.float64) @ MIRROR_3D).astype(np.float32)
    extra = dict(sample.extra)
    for key in EXTRA_3D_KEYS:
        if extra.get(key) is not None:
            value = np.asarray(extra[key])
            extra[key] = (value * MIRROR_3D.diagonal()).astype(value.dtype)
    previous = np.asarray(extra.get("crop_affine", np.eye(3)), np.float64)
    extra["crop_affine"] = (F @ _as3x3(previous)).astype(np.float32)
    extra["mirrored"] = not bool(extra.get("mirrored", False))
    return replace(sample, image=_flip(sample.image), mask=_flip(sample.mask), depth=_flip(sample.depth),
                   joints_2d=joints_2d, joints_3d=joints_3d, intrinsics=intrinsics,
                   side=_OTHER_SIDE.get(sample.side, sample.side), extra=extra)


def normalize(image: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Per-image, per-channel standardisation: §3.2's "normalized (i.e., with zero-mean and unit variance)".

    Each channel of each image is shifted by its own mean and divided by its own standard deviation
    (a flat channel is only centred).

    Args:
        image: (H, W, 3) uint8 RGB.
    Returns:
        (3, H, W) float32 with per-channel mean 0 and std 1.
    """
    if image.ndim != 3:
        raise ValueError(f"normalize: expected (H, W, C), got {image.shape}")
    mean, std = cv2.meanStdDev(image)               # (C, 1) float64 each
    scale = 1.0 / np.maximum(std.ravel(), eps)
    offset = (-mean.ravel() * scale).astype(np.float32)
    scale = scale.astype(np.float32)
    x = np.empty((image.shape[2], *image.shape[:2]), np.float32)
    for c, plane in enumerate(cv2.split(np.ascontiguousarray(image))):  # planar: no strided transpose
        np.multiply(plane, scale[c], out=x[c], dtype=np.float32)
        x[c] += offset[c]
    return x

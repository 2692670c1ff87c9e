"""2D joint heatmaps, the SFE's ground truth (paper §3.5: "a 2D Gaussian with a standard deviation
of 2.5 pixels, centered on the 2D joint locations"), and their arg-max decoding.

    from keyhand.data.heatmaps import joint_heatmaps, heatmap_argmax
    hm, vis = joint_heatmaps(joints_2d, visibility)        # (21, 64, 64) float32, (21,) float32
    uv = heatmap_argmax(hm, in_size=256)                    # (21, 2) crop px

Resolution: the hourglass predicts 64×64 maps from the 256×256 crop (§3.2), so the Gaussian is
drawn on the 64×64 grid and σ = 2.5 is in *heatmap* pixels (= 10 crop pixels); the paper does not
say which grid its 2.5 px refers to, and 2.5 heatmap px is the usual stacked-hourglass choice.

Coordinates (OpenCV convention, pixel centres at integers): a crop pixel u maps to the heatmap
coordinate ``(u + 0.5) · out/in − 0.5``. Each map peaks at 1 at the joint (unnormalised Gaussian).
A joint outside the crop ([-0.5, in_size - 0.5]²) or with visibility 0 gets an all-zero map and
visibility 0.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["DEFAULT_SIGMA", "joint_heatmaps", "joint_heatmaps_torch", "heatmap_argmax", "to_heatmap_coords",
           "to_input_coords"]

DEFAULT_SIGMA = 2.5  # heatmap px (§3.5)


def to_heatmap_coords(uv, in_size: int = 256, out_size: int = 64):
    """Crop px → heatmap px (array or tensor (..., 2))."""
    r = out_size / in_size
    return (uv + 0.5) * r - 0.5


def to_input_coords(xy, in_size: int = 256, out_size: int = 64):
    """Heatmap px → crop px (array or tensor (..., 2))."""
    r = in_size / out_size
    return (xy + 0.5) * r - 0.5


def joint_heatmaps(joints_2d: np.ndarray, visibility: np.ndarray | None = None, in_size: int = 256,
                   out_size: int = 64, sigma: float = DEFAULT_SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian heatmaps for one sample (§3.5), vectorised (separable outer product).

    Args:
        joints_2d: (J, 2) crop px (x right, y down).
        visibility: (J,) in {0, 1}, or None (all visible).
        in_size: crop side (px); out_size: heatmap side (px); sigma: heatmap px.
    Returns:
        ``(heatmaps, visibility)``: (J, out_size, out_size) float32 peaking at 1, and (J,) float32
        with 0 for joints outside the crop or not visible (their maps are all zero).
    """
    j = np.asarray(joints_2d, np.float32)
    vis = np.ones(len(j), np.float32) if visibility is None else np.asarray(visibility, np.float32).copy()
    inside = np.all((j >= -0.5) & (j <= in_size - 0.5), axis=1) & np.all(np.isfinite(j), axis=1)
    vis = (vis > 0) & inside
    xy = to_heatmap_coords(np.where(vis[:, None], j, 0.0), in_size, out_size)  # (J, 2)
    grid = np.arange(out_size, dtype=np.float32)
    g = np.exp(-((grid[None, None, :] - xy[:, :, None]) ** 2) / np.float32(2 * sigma * sigma))  # (J, 2, S)
    g[~vis] = 0.0
    hm = g[:, 1, :, None] * g[:, 0, None, :]  # (J, S, S): rows y, columns x
    return hm.astype(np.float32, copy=False), vis.astype(np.float32)


def joint_heatmaps_torch(joints_2d: torch.Tensor, visibility: torch.Tensor | None = None,
                         in_size: int = 256, out_size: int = 64,
                         sigma: float = DEFAULT_SIGMA) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched :func:`joint_heatmaps` on any device: (B, J, 2) crop px → ((B, J, S, S), (B, J))."""
    j = joints_2d.float()
    vis = torch.ones(j.shape[:-1], device=j.device) if visibility is None else visibility.float()
    inside = ((j >= -0.5) & (j <= in_size - 0.5)).all(-1) & torch.isfinite(j).all(-1)
    vis = (vis > 0) & inside
    xy = to_heatmap_coords(torch.where(vis[..., None], j, torch.zeros_like(j)), in_size, out_size)
    grid = torch.arange(out_size, dtype=torch.float32, device=j.device)
    g = torch.exp(-((grid - xy[..., None]) ** 2) / (2 * sigma * sigma)) * vis[..., None, None]  # (B, J, 2, S)
    hm = g[..., 1, :, None] * g[..., 0, None, :]
    return hm, vis.float()


def heatmap_argmax(hm, in_size: int | None = None, subpixel: bool = True):
    """Decode joint positions from heatmaps (numpy or torch, (..., J, S, S)).

    The arg-max pixel, refined (``subpixel``) by the vertex of a parabola through the logarithms of it
    and its two neighbours along each axis (exact for a Gaussian blob; clamped to ±0.5 px).
    Returns (..., J, 2) [x, y] float in heatmap px, or in crop px when ``in_size`` is given (inverse of
    :func:`to_heatmap_coords`). All-zero maps decode to pixel (0, 0): mask them with the visibility.
    """
    is_np = isinstance(hm, np.ndarray)
    t = torch.from_numpy(np.asarray(hm, np.float32)) if is_np else hm.float()
    *lead, h, w = t.shape
    flat = t.reshape(-1, h, w)
    idx = flat.reshape(flat.shape[0], -1).argmax(-1)
    y, x = (idx // w), (idx % w)
    xy = torch.stack([x, y], -1).float()
    if subpixel:
        n = torch.arange(flat.shape[0], device=t.device)
        xl, xr = (x - 1).clamp(0, w - 1), (x + 1).clamp(0, w - 1)
        yu, yd = (y - 1).clamp(0, h - 1), (y + 1).clamp(0, h - 1)
        def lg(v: torch.Tensor) -> torch.Tensor:
            return v.clamp(min=1e-10).log()

        c = lg(flat[n, y, x])
        pairs = ((flat[n, y, xl], flat[n, y, xr]), (flat[n, yu, x], flat[n, yd, x]))
        for axis, (lo, hi) in enumerate((lg(a), lg(b)) for a, b in pairs):
            denom = lo - 2 * c + hi
            off = torch.where(denom < 0, 0.5 * (lo - hi) / denom.clamp(max=-1e-12), torch.zeros_like(c))
            xy[:, axis] += off.clamp(-0.5, 0.5)
    xy = xy.reshape(*lead, 2)
    if in_size is not None:
        xy = to_input_coords(xy, in_size, w)
    return xy.numpy() if is_np else xy

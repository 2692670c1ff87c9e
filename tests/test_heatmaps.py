"""§3.5 heatmap ground truth: Gaussians of σ = 2.5 heatmap px peaking at the joints; decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from keyhand.data.heatmaps import (
    heatmap_argmax,
    joint_heatmaps,
    joint_heatmaps_torch,
    to_heatmap_coords,
    to_input_coords,
)


def test_peaks_at_joints_with_sigma():
    k = np.arange(21) * 3 % 60 + 2
    joints = np.stack([4 * k + 1.5, 4 * (63 - k) + 1.5], 1).astype(np.float32)  # heatmap centres (k, 63-k)
    hm, vis = joint_heatmaps(joints)
    assert hm.shape == (21, 64, 64) and hm.dtype == np.float32 and vis.tolist() == [1.0] * 21
    for i in range(21):
        y, x = np.unravel_index(hm[i].argmax(), hm[i].shape)
        assert (x, y) == (k[i], 63 - k[i])
        assert hm[i, y, x] == pytest.approx(1.0)
        assert hm[i, y, x + 1] == pytest.approx(np.exp(-1 / (2 * 2.5**2)), rel=1e-5)
        assert hm[i, y + 2, x] == pytest.approx(np.exp(-4 / (2 * 2.5**2)), rel=1e-5)


def test_coordinate_convention_round_trip():
    uv = np.array([[0.0, 255.0], [127.5, 127.5], [-0.5, 255.5]])
    xy = to_heatmap_coords(uv)
    np.testing.assert_allclose(xy[1], [31.5, 31.5])
    np.testing.assert_allclose(xy[2], [-0.5, 63.5])
    np.testing.assert_allclose(to_input_coords(xy), uv)


def test_outside_or_invisible_joints_are_empty():
    j = np.full((21, 2), 100.0, np.float32)
    j[0] = (-5.0, 100.0)
    j[1] = (100.0, 256.0)
    j[2] = (np.nan, 3.0)
    vis = np.ones(21, np.float32)
    vis[3] = 0
    hm, v = joint_heatmaps(j, vis)
    assert v[:4].tolist() == [0, 0, 0, 0] and v[4:].tolist() == [1.0] * 17
    assert np.all(hm[:4] == 0) and np.all(hm[4:].max(axis=(1, 2)) > 0.9)
    assert np.isfinite(hm).all()


def test_argmax_subpixel_and_torch_batch():
    rng = np.random.default_rng(0)
    j = rng.uniform(8, 248, (4, 21, 2)).astype(np.float32)
    hm_t, vis_t = joint_heatmaps_torch(torch.from_numpy(j), None, sigma=2.5)
    assert hm_t.shape == (4, 21, 64, 64) and vis_t.shape == (4, 21)
    hm0, _ = joint_heatmaps(j[0])
    np.testing.assert_allclose(hm_t[0].numpy(), hm0, atol=1e-6)
    uv = heatmap_argmax(hm_t, in_size=256)
    assert isinstance(uv, torch.Tensor) and uv.shape == (4, 21, 2)
    np.testing.assert_allclose(uv.numpy(), j, atol=0.05)            # sub-pixel: exact for a Gaussian
    coarse = heatmap_argmax(hm0, in_size=256, subpixel=False)
    assert isinstance(coarse, np.ndarray) and np.abs(coarse - j[0]).max() <= 2.0 + 1e-4  # half a 4-px cell

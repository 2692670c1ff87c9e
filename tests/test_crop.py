"""§3.1 crop (Eq. 1): hand-computed boxes, exact pixel/joint mapping, padding at the border, intrinsics,
left ↔ right mirroring (re-projection preserved), and the §3.2 per-image normalisation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from keyhand.data.crop import (
    CropBox,
    crop_affine,
    crop_image,
    crop_intrinsics,
    crop_params,
    crop_sample,
    mirror_matrix,
    mirror_sample,
    normalize,
    transform_points,
)
from keyhand.data.record import MIDDLE_MCP, AnnotationError, DatasetError, HandSample


def _joints(centre=(100.0, 100.0)) -> np.ndarray:
    j = np.tile(np.asarray(centre, np.float32), (21, 1))
    return j


def test_crop_params_eq1_hand_computed():
    j = _joints()
    j[4] = (130.0, 95.0)   # +30 in x: largest extent above p_c
    j[8] = (80.0, 110.0)   # -20 in x, +10 in y
    j[0] = (100.0, 75.0)   # -25 in y
    box = crop_params(j, enlarge=0.2)
    assert (box.cx, box.cy) == (100.0, 100.0)
    assert box.side == pytest.approx(2 * 30 * 1.2)
    # The extent below p_c can be the largest as well.
    j[0] = (100.0, 60.0)   # -40 in y
    assert crop_params(j, enlarge=0.0).side == pytest.approx(80.0)
    assert crop_params(j, enlarge=0.5).side == pytest.approx(120.0)


def test_crop_params_uses_middle_mcp_and_validates():
    j = np.random.default_rng(0).uniform(0, 200, (21, 2)).astype(np.float32)
    box = crop_params(j)
    assert (box.cx, box.cy) == pytest.approx(tuple(j[MIDDLE_MCP]))
    assert crop_params(_joints()).side > 0  # degenerate: minimum side
    with pytest.raises(AnnotationError):
        crop_params(j[:20])
    j[3, 0] = np.nan
    with pytest.raises(AnnotationError):
        crop_params(j)


def test_affine_maps_box_onto_crop():
    box = CropBox(200.0, 150.0, 100.0)
    A = crop_affine(box, 256)
    corners = transform_points(A, [[150.0, 100.0], [250.0, 200.0], [200.0, 150.0]])
    np.testing.assert_allclose(corners, [[-0.5, -0.5], [255.5, 255.5], [127.5, 127.5]], atol=1e-4)
    # (2, 3) and (3, 3) forms agree
    np.testing.assert_allclose(transform_points(A[:2], [[7.0, 9.0]]), transform_points(A, [[7.0, 9.0]]))


def test_crop_image_integer_shift_is_exact_slice():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (400, 500, 3), dtype=np.uint8)
    box = CropBox(150.5 + 20, 140.5, 256.0)   # scale 1, crop origin at (43, 13)
    out, A = crop_image(img, box, 256)
    np.testing.assert_array_equal(out, img[13:13 + 256, 43:43 + 256])
    np.testing.assert_allclose(transform_points(A, [[43.0, 13.0]]), [[0.0, 0.0]], atol=1e-5)


def test_crop_at_image_border_is_padded():
    img = np.full((100, 120, 3), 200, np.uint8)
    box = CropBox(0.5 - 0.5, 0.5 - 0.5, 128.0)   # centre on the top-left pixel: 3/4 of the box is outside
    out, A = crop_image(img, box, 128, pad_value=0)
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    # crop pixel (j, i) ↔ original (j - 63.5, i - 63.5): rows/cols < 63 are outside, > 64 inside.
    assert (out[:63] == 0).all() and (out[:, :63] == 0).all()
    assert (out[65:, 65:] == 200).all()
    m, _ = crop_image(np.ones((100, 120), np.uint8), box, 128, interpolation=cv2.INTER_NEAREST)
    assert m.shape == (128, 128) and set(np.unique(m)) == {0, 1}


def test_joint_lands_where_transform_points_says():
    img = np.zeros((300, 300, 3), np.uint8)
    u, v = 170, 121
    img[v, u] = 255
    box = CropBox(160.0, 130.0, 128.0)   # scale 2 upsampling
    out, A = crop_image(img, box, 256)
    w = out[..., 0].astype(np.float64)
    ys, xs = np.mgrid[0:256, 0:256]
    centroid = np.array([(w * xs).sum(), (w * ys).sum()]) / w.sum()
    np.testing.assert_allclose(centroid, transform_points(A, [[u, v]])[0], atol=0.02)


def test_crop_intrinsics_consistent_with_projection():
    rng = np.random.default_rng(2)
    K = np.array([[600.0, 0, 320], [0, 610.0, 240], [0, 0, 1]], np.float32)
    X = rng.uniform([-80, -80, 400], [80, 80, 700], (21, 3)).astype(np.float32)  # mm, camera frame
    uv = (X @ K.T)[:, :2] / (X @ K.T)[:, 2:]
    box = crop_params(uv)
    A = crop_affine(box, 256)
    Kc = crop_intrinsics(K, A)
    uvc = (X @ Kc.T)[:, :2] / (X @ Kc.T)[:, 2:]
    np.testing.assert_allclose(uvc, transform_points(A, uv), atol=1e-3)
    assert Kc[2].tolist() == [0, 0, 1] and Kc[0, 1] == 0 and Kc[1, 0] == 0


def test_crop_sample_everything_follows():
    rng = np.random.default_rng(3)
    K = np.array([[500.0, 0, 160], [0, 500.0, 120], [0, 0, 1]], np.float32)
    X = rng.uniform([-60, -60, 400], [60, 60, 500], (21, 3)).astype(np.float32)
    uv = ((X @ K.T)[:, :2] / (X @ K.T)[:, 2:]).astype(np.float32)
    img = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    mask = (rng.random((240, 320)) > 0.5).astype(np.uint8)
    s = HandSample(image=img, key="a/1", source="test", joints_2d=uv, joints_3d=X, intrinsics=K, mask=mask)
    c = crop_sample(s, out_size=256).validate()
    assert c.image.shape == (256, 256, 3) and c.mask.shape == (256, 256)
    assert set(np.unique(c.mask)) <= {0, 1}
    A = c.extra["crop_affine"]
    np.testing.assert_allclose(c.joints_2d, transform_points(A, uv), atol=1e-4)
    # Eq. 1 + 20 %: all joints inside, and the farthest one ~1/1.2 of the half side from the centre
    assert c.visibility.tolist() == [1.0] * 21
    assert np.abs(c.joints_2d - 127.5).max() == pytest.approx(128 / 1.2, rel=1e-3)
    np.testing.assert_allclose(c.joints_2d[MIDDLE_MCP], [127.5, 127.5], atol=1e-4)
    uvc = (X @ c.intrinsics.T)[:, :2] / (X @ c.intrinsics.T)[:, 2:]
    np.testing.assert_allclose(uvc, c.joints_2d, atol=1e-3)
    np.testing.assert_array_equal(c.joints_3d, X)
    assert s.image.shape == (240, 320, 3)  # the input sample is left alone


def test_crop_sample_with_given_box_and_outside_joints():
    img = np.zeros((240, 320, 3), np.uint8)
    j = np.tile(np.float32([100.0, 100.0]), (21, 1))
    j[20] = (300.0, 200.0)
    s = HandSample(image=img, key="g", source="test", joints_2d=j)
    c = crop_sample(s, 128, box=CropBox(100.0, 100.0, 64.0))
    assert c.visibility[20] == 0 and c.visibility[:20].tolist() == [1.0] * 20
    g = HandSample(image=img, key="gesture", source="test", gesture=3)
    assert crop_sample(g, 64, box=CropBox(160, 120, 100)).image.shape == (64, 64, 3)
    with pytest.raises(DatasetError, match="gesture"):
        crop_sample(g, 64)


def _left_sample(seed: int = 5) -> HandSample:
    """A full-size sample with an off-centre principal point, skew, a mesh and a palm point in ``extra``."""
    rng = np.random.default_rng(seed)
    K = np.array([[520.0, 3.0, 190.0], [0, 515.0, 101.0], [0, 0, 1]], np.float32)   # cx far from (W - 1) / 2
    X = rng.uniform([-70, -60, 380], [70, 60, 520], (21, 3)).astype(np.float32)
    uv = ((X @ K.T)[:, :2] / (X @ K.T)[:, 2:]).astype(np.float32)
    verts = rng.uniform([-90, -90, 380], [90, 90, 520], (50, 3)).astype(np.float32)
    return HandSample(image=rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), key="stb/left", source="stb",
                      joints_2d=uv, joints_3d=X, intrinsics=K, mask=(rng.random((240, 320)) > 0.5).astype(np.uint8),
                      side="left", extra={"verts_3d": verts, "palm": X[0].copy()})


def _project(X: np.ndarray, K: np.ndarray) -> np.ndarray:
    p = np.asarray(X, np.float64) @ np.asarray(K, np.float64).T
    return p[:, :2] / p[:, 2:]


def test_mirror_matrix_hand_computed():
    F = mirror_matrix(320)
    np.testing.assert_allclose(transform_points(F, [[0.0, 5.0], [319.0, 7.0], [159.5, 1.0], [-0.5, 0.0]]),
                               [[319.0, 5.0], [0.0, 7.0], [159.5, 1.0], [319.5, 0.0]])


def test_mirror_sample_keeps_reprojection_and_flips_everything():
    s = _left_sample()
    m = mirror_sample(s).validate()
    assert m.side == "right" and m.extra["mirrored"] is True
    np.testing.assert_array_equal(m.image, s.image[:, ::-1])
    np.testing.assert_array_equal(m.mask, s.mask[:, ::-1])
    np.testing.assert_allclose(m.joints_3d, s.joints_3d * np.float32([-1, 1, 1]))
    np.testing.assert_allclose(m.joints_2d[:, 0], 319.0 - s.joints_2d[:, 0], atol=1e-4)
    np.testing.assert_allclose(m.joints_2d[:, 1], s.joints_2d[:, 1], atol=1e-4)
    # the mirrored 3D joints project onto the mirrored 2D joints; principal point c_x' = W - 1 - c_x
    np.testing.assert_allclose(_project(m.joints_3d, m.intrinsics), m.joints_2d, atol=1e-3)
    assert m.intrinsics[0, 2] == pytest.approx(319.0 - 190.0) and m.intrinsics[1, 2] == pytest.approx(101.0)
    assert m.intrinsics[0, 0] == pytest.approx(520.0) and m.intrinsics[0, 1] == pytest.approx(-3.0)
    # the mesh is reflected like the joints and projects where the flipped image shows it
    np.testing.assert_allclose(m.extra["verts_3d"], s.extra["verts_3d"] * np.float32([-1, 1, 1]))
    np.testing.assert_allclose(_project(m.extra["verts_3d"], m.intrinsics)[:, 0],
                               319.0 - _project(s.extra["verts_3d"], s.intrinsics)[:, 0], atol=1e-3)
    assert m.extra["palm"][0] == pytest.approx(-s.extra["palm"][0])
    # crop_affine maps the original pixels onto the mirrored sample's
    np.testing.assert_allclose(transform_points(m.extra["crop_affine"], s.joints_2d), m.joints_2d, atol=1e-3)
    # twice is the identity
    mm = mirror_sample(m)
    assert mm.side == "left" and mm.extra["mirrored"] is False
    np.testing.assert_array_equal(mm.image, s.image)
    np.testing.assert_allclose(mm.joints_2d, s.joints_2d, atol=1e-4)
    np.testing.assert_allclose(mm.intrinsics, s.intrinsics, atol=1e-4)
    np.testing.assert_allclose(mm.extra["crop_affine"], np.eye(3), atol=1e-6)


def test_mirroring_the_crop_equals_cropping_the_mirrored_image():
    """What preparation does (crop, then mirror about the crop's centre) = mirror the image, crop the mirrored
    box: same pixels, joints, intrinsics."""
    s = _left_sample(6)
    box = crop_params(s.joints_2d)
    a = mirror_sample(crop_sample(s, 96))
    b = crop_sample(mirror_sample(s), 96, box=CropBox(319.0 - box.cx, box.cy, box.side))
    assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_allclose(a.joints_2d, b.joints_2d, atol=1e-3)
    np.testing.assert_allclose(a.intrinsics, b.intrinsics, atol=1e-3)
    # a's affine maps original px; b's maps the mirrored image's px: F_S A = A_m F_W
    np.testing.assert_allclose(a.extra["crop_affine"], b.extra["crop_affine"] @ mirror_matrix(320), atol=1e-4)
    np.testing.assert_allclose(_project(a.joints_3d, a.intrinsics), a.joints_2d, atol=1e-3)
    assert a.visibility.tolist() == b.visibility.tolist()
    # Eq. 1 on the mirrored joints picks the mirrored box
    mb = crop_params(mirror_sample(s).joints_2d)
    assert (mb.cx, mb.cy, mb.side) == pytest.approx((319.0 - box.cx, box.cy, box.side), abs=1e-3)


def test_normalize_zero_mean_unit_variance():
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    img[..., 2] = 7  # a flat channel is only centred
    x = normalize(img)
    assert x.shape == (3, 64, 48) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x[:2].mean(axis=(1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(x[:2].std(axis=(1, 2)), 1, atol=1e-4)
    assert np.all(x[2] == 0)
    ref = (img[..., 0] - img[..., 0].mean()) / img[..., 0].std()
    np.testing.assert_allclose(x[0], ref, atol=1e-4)

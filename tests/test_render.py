"""keyhand's silhouette renderer (§3.4.2-3.4.3, Eqs. 6-11): rasteriser vs OpenCV, NMR and soft gradients,
silhouette fitting, bad input. CPU only."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from keyhand.geometry.render import (
    axis_angle_to_matrix,
    closed_blob_mesh,
    ndc_to_pixels,
    pixels_to_ndc,
    rasterize,
    render_silhouette,
    weak_perspective,
    weak_perspective_with_depth,
)


# --------------------------------------------------------------------------------------------
# Helpers: an independent rasteriser (OpenCV) and meshes.
# --------------------------------------------------------------------------------------------
def cv_silhouette(verts: torch.Tensor, faces: torch.Tensor, size: int, k: int | None = None, shift: int = 8):
    """Union of cv2.fillPoly of every projected triangle, sampled at the pixel centres.

    fillPoly rounds span ends to the nearest pixel (a half-pixel dilation), so it fills at k x the
    resolution (k odd) with ``shift`` fractional bits and reads the fine pixel that sits on each coarse
    pixel centre: the dilation shrinks to about 0.5/k pixel (k = 63 at 64^2, 9 at 256^2 by default).
    """
    k = k or (63 if size <= 64 else 9)
    px = ndc_to_pixels(verts[..., :2].double(), size).numpy()
    fine = ((px + 0.5) * k - 0.5) * (1 << shift)                      # fine-grid pixel coords, fixed point
    tris = np.ascontiguousarray(np.round(fine).astype(np.int32)[:, faces.numpy()])          # (B, F, 3, 2)
    out = []
    for b in range(px.shape[0]):
        img = np.zeros((size * k, size * k), np.uint8)
        for tri in tris[b]:
            cv2.fillPoly(img, [tri], 1, lineType=cv2.LINE_8, shift=shift)
        out.append(img[(k - 1) // 2::k, (k - 1) // 2::k])
    return torch.from_numpy(np.stack(out)).bool()


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum()) / max(float((a | b).sum()), 1.0)


def random_triangles(n: int, batch: int, seed: int, size: float = 0.35) -> tuple[torch.Tensor, torch.Tensor]:
    """Well-shaped random triangles (no slivers) with random depths."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(batch, n, 1, 2, generator=g) * 1.6 - 0.8
    ang = torch.rand(batch, n, 1, generator=g) * 2 * math.pi + torch.tensor([0.0, 2.1, 4.2])
    ang = ang + 0.4 * torch.rand(batch, n, 3, generator=g)
    rad = size * (0.4 + 0.6 * torch.rand(batch, n, 3, generator=g))
    xy = centre + rad[..., None] * torch.stack([ang.cos(), ang.sin()], -1)
    z = torch.rand(batch, n, 3, 1, generator=g)
    return torch.cat([xy, z], -1).reshape(batch, 3 * n, 3), torch.arange(3 * n).reshape(n, 3)


def posed_mesh(verts: torch.Tensor, batch: int, seed: int, scale: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rot = axis_angle_to_matrix(torch.randn(batch, 3, generator=g, dtype=verts.dtype))
    t = 0.15 * torch.randn(batch, 2, generator=g, dtype=verts.dtype)
    s = torch.full((batch,), scale, dtype=verts.dtype)
    return weak_perspective_with_depth(verts[None].expand(batch, -1, -1), s, t, rot)


def _hand():
    """(ManoLayer, faces) or None: the hand only exists once the MANO layer and its proxy model do."""
    try:
        mano = pytest.importorskip("keyhand.geometry.mano")
        pytest.importorskip("keyhand.geometry.proxy_hand")
    except pytest.skip.Exception:
        return None
    layer = mano.ManoLayer(side="right", unit="m")
    return layer


@pytest.fixture(scope="module")
def blob():
    return closed_blob_mesh()


# --------------------------------------------------------------------------------------------
# Projection and conventions.
# --------------------------------------------------------------------------------------------
def test_projection_and_conventions():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    s, t = torch.tensor([2.0, 0.5], dtype=torch.float64), torch.randn(2, 2, generator=g, dtype=torch.float64)
    aa = torch.randn(2, 3, generator=g, dtype=torch.float64)
    R = axis_angle_to_matrix(aa)
    eye = torch.eye(3, dtype=torch.float64).expand(2, 3, 3)
    assert torch.allclose(R @ R.transpose(1, 2), eye, atol=1e-12)
    assert torch.allclose(torch.det(R), torch.ones(2, dtype=torch.float64))
    rp = p @ R.transpose(1, 2)
    assert torch.allclose(weak_perspective(p, s, t, R), s[:, None, None] * rp[..., :2] + t[:, None])
    v = weak_perspective_with_depth(p, s[:, None], t, R)
    assert torch.allclose(v[..., 2], s[:, None] * rp[..., 2])
    assert torch.allclose(weak_perspective(p, s, t), s[:, None, None] * p[..., :2] + t[:, None])
    # Rodrigues: gradient finite at zero, matches a small rotation about z
    z = torch.zeros(1, 3, requires_grad=True)
    axis_angle_to_matrix(z).sum().backward()
    assert torch.isfinite(z.grad).all()
    rz = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2]))
    assert torch.allclose(rz @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    # pixel centres: (row i, col j) <-> x = (2j+1)/W - 1, y = (2i+1)/H - 1
    h, w = 4, 8
    centre = pixels_to_ndc(torch.tensor([[3.0, 1.0]]), (h, w))                # col 3, row 1
    assert torch.allclose(centre, torch.tensor([[7 / 8 - 1, 3 / 4 - 1]]))
    assert torch.allclose(ndc_to_pixels(centre, (h, w)), torch.tensor([[3.0, 1.0]]))
    # one tiny triangle around the centre of (row 1, col 3) covers exactly that pixel (y down)
    tri = centre + torch.tensor([[-0.05, -0.05], [0.05, -0.05], [0.0, 0.05]])
    fr = rasterize(tri[None], torch.tensor([[0, 1, 2]]), (h, w))
    assert fr.face_idx.shape == (1, h, w)
    assert (fr.face_idx[0] >= 0).nonzero().tolist() == [[1, 3]]


# --------------------------------------------------------------------------------------------
# Forward: hard rasteriser vs OpenCV, z-buffer, watertightness.
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [64, 256])
def test_rasterize_random_triangles_vs_opencv(size):
    verts, faces = random_triangles(40, batch=2, seed=size)
    mine = rasterize(verts, faces, size).face_idx >= 0
    ref = cv_silhouette(verts, faces, size)
    assert mine.any() and (~mine).any()
    for b in range(2):
        assert iou(mine[b], ref[b]) >= 0.99, (b, iou(mine[b], ref[b]))


@pytest.mark.parametrize("size", [64, 256])
def test_rasterize_closed_mesh_vs_opencv(blob, size):
    verts, faces = blob
    v = posed_mesh(verts, batch=3, seed=size, scale=0.5)
    mine = rasterize(v, faces, size).face_idx >= 0
    ref = cv_silhouette(v, faces, size)
    for b in range(3):
        assert iou(mine[b], ref[b]) >= 0.99, (b, iou(mine[b], ref[b]))
    # the hard silhouette of render_silhouette is exactly the rasterised coverage
    assert torch.equal(render_silhouette(v, faces, size), mine.float())


@pytest.mark.parametrize("size", [64, 256])
def test_rasterize_hand_vs_opencv(size):
    layer = _hand()
    if layer is None:
        pytest.skip("the MANO layer / proxy hand is not available yet")
    g = torch.Generator().manual_seed(size)
    with torch.no_grad():
        out = layer(global_orient=torch.randn(3, 3, generator=g),
                    hand_pose=0.8 * torch.randn(3, layer.num_pca_comps, generator=g),
                    betas=torch.randn(3, 10, generator=g))
    v = out.vertices - out.vertices.mean(1, keepdim=True)
    extent = float((v[..., :2].amax(1) - v[..., :2].amin(1)).max())
    v = weak_perspective_with_depth(v, torch.full((3,), 1.6 / extent), torch.zeros(3, 2))
    mine = rasterize(v, layer.faces, size).face_idx >= 0
    ref = cv_silhouette(v, layer.faces, size)
    for b in range(3):
        assert iou(mine[b], ref[b]) >= 0.99, (b, iou(mine[b], ref[b]))


def test_zbuffer_picks_nearest_face():
    # two overlapping triangles; the far one comes first in the face list
    near = torch.tensor([[-0.6, -0.6, 0.2], [0.6, -0.6, 0.2], [0.0, 0.6, 0.4]])
    far = torch.tensor([[-0.8, -0.4, 0.5], [0.8, -0.4, 0.5], [0.0, 0.8, 0.5]])
    verts = torch.cat([far, near])[None]
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    fr = rasterize(verts, faces, 32)
    both = (rasterize(verts, faces[:1], 32).face_idx >= 0) & (rasterize(verts, faces[1:], 32).face_idx >= 0)
    assert both.sum() > 50
    assert (fr.face_idx[both] == 1).all()                              # the near face wins
    only_far = (fr.face_idx == 0)
    assert only_far.any() and torch.allclose(fr.depth[only_far], torch.tensor(0.5))
    # depth of the near face is the plane through its vertices: z = 0.3 + 0.1 * y / 0.6 there
    ys = pixels_to_ndc(torch.stack([torch.zeros(32), torch.arange(32.0)], 1), 32)[:, 1]
    sel = fr.face_idx[0] == 1
    expect = (0.3 + ys[:, None] / 6).expand(32, 32)[sel]
    assert torch.allclose(fr.depth[0][sel], expect, atol=1e-5)
    assert torch.allclose(fr.bary[0][sel].sum(-1), torch.ones(int(sel.sum())), atol=1e-5)
    assert (fr.bary[0][sel] >= -1e-6).all()
    bg = fr.face_idx < 0
    assert torch.isinf(fr.depth[bg]).all() and (fr.bary[bg] == 0).all()
    # the same result whatever the face order, and per batch element
    fr2 = rasterize(torch.cat([near, far])[None].expand(2, -1, -1), faces, 32)
    assert torch.equal(fr2.face_idx[0], 1 - fr.face_idx[0].where(fr.face_idx[0] >= 0, torch.tensor(2)))


def test_watertight_shared_edges_through_pixel_centres():
    # a square split along its diagonal; edges pass exactly through pixel centres (both orientations)
    for diag in ([[0, 1, 2], [0, 2, 3]], [[0, 1, 2], [2, 3, 0]], [[0, 2, 1], [0, 3, 2]]):
        px = torch.tensor([[2.0, 2.0], [13.0, 2.0], [13.0, 13.0], [2.0, 13.0]])
        verts = pixels_to_ndc(px, 16)[None]
        fr = rasterize(verts, torch.tensor(diag), 16)
        cov = fr.face_idx[0] >= 0
        assert cov.sum() == 12 * 12 and cov[2:14, 2:14].all()
    # a fan of thin triangles around a centre: no cracks inside the disc
    n = 37
    ang = torch.arange(n) * 2 * math.pi / n
    ring = torch.stack([0.83 * ang.cos(), 0.83 * ang.sin()], 1)
    verts = torch.cat([torch.zeros(1, 2), ring])[None]
    k = torch.arange(n)
    faces = torch.stack([torch.zeros(n, dtype=torch.long), 1 + k, 1 + (k + 1) % n], 1)
    cov = rasterize(verts, faces, 64).face_idx[0] >= 0
    grid = torch.stack(torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="xy"), -1)
    centres = pixels_to_ndc(grid, 64)
    assert cov[centres.norm(dim=-1) < 0.8].all()


def test_chunking_gives_identical_results(blob):
    verts, faces = blob
    v = posed_mesh(verts, batch=2, seed=3, scale=0.5).requires_grad_(True)
    ref = rasterize(v, faces, 48)
    small = rasterize(v, faces, 48, chunk_size=1000)
    assert torch.equal(ref.face_idx, small.face_idx) and torch.equal(ref.depth, small.depth)
    # a face whose bbox exceeds the chunk, last in the list, then first
    big = torch.tensor([[[-0.5, -0.5, 0], [0.5, -0.5, 0], [0, 0.5, 0], [-1, -1, 1], [1, -1, 1], [0, 1, 1]]])
    for order in ([[0, 1, 2], [3, 4, 5]], [[3, 4, 5], [0, 1, 2]]):
        fb = torch.tensor(order)
        assert torch.equal(rasterize(big, fb, 32, chunk_size=7).face_idx, rasterize(big, fb, 32).face_idx)
    target = torch.roll(render_silhouette(v, faces, 48), 2, 1).detach()
    for mode in ("nmr", "soft"):
        grads = []
        for chunk in (None, 1000):
            v.grad = None
            sil = render_silhouette(v, faces, 48, mode=mode, chunk_size=chunk)
            ((sil - target) ** 2).sum().backward()
            grads.append((sil.detach(), v.grad.clone()))
        assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6)
        assert torch.allclose(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Backward, NMR mode (Eqs. 8-11).
# --------------------------------------------------------------------------------------------
H = 16


def _single_triangle(px=((3.0, 2.0), (8.3, 2.0), (8.3, 12.0))):
    v = pixels_to_ndc(torch.tensor(px, dtype=torch.float64), H)
    return torch.cat([v, torch.zeros(3, 1, dtype=torch.float64)], -1)[None].requires_grad_(True)


def _nmr_grad(verts, faces, grad_pixels: dict) -> torch.Tensor:
    sil = render_silhouette(verts, faces, H)
    g = torch.zeros_like(sil)
    for (i, j), val in grad_pixels.items():
        g[0, i, j] = val
    verts.grad = None
    sil.backward(g)
    return verts.grad[0] / (H / 2)        # pixel units


@pytest.mark.parametrize("col", [9, 10, 15])
def test_nmr_gradient_outside_pixel_matches_eq8(col):
    # right edge x = 8.3 (vertices 1, 2); the row-7 crossing is half-way: rates 1/2, 1/2.
    v = _single_triangle()
    g = _nmr_grad(v, torch.tensor([[0, 1, 2]]), {(7, col): -1.0})   # the loss wants pixel (7, col) covered
    dist = col - 8.3
    expect = torch.tensor([0.0, -0.5 / dist, -0.5 / dist], dtype=torch.float64)
    assert torch.allclose(g[:, 0], expect, rtol=3e-3)                # far pixels: <= 0.2% series error
    assert (g[:, 1:] == 0).all()                                    # column not spanned: no y, no z gradient


def test_nmr_gradient_inside_pixel_matches_eqs_9_11():
    v = _single_triangle()
    g = _nmr_grad(v, torch.tensor([[0, 1, 2]]), {(7, 8): 1.0})    # the loss wants pixel (7, 8) darker
    # right end (x=8.3, rates 1/2 for v1, v2) at distance 0.3; left end (x=5.65, rates 1/2 for v2, v0) at 2.35
    expect = torch.tensor([-0.5 / 2.35, 0.5 / 0.3, 0.5 / 0.3 - 0.5 / 2.35], dtype=torch.float64)
    assert torch.allclose(g[:, 0], expect, rtol=1e-9)
    assert g[:, 1].abs().sum() > 0                                  # column 8 also moves along y


def test_nmr_gradient_zero_when_rule_says_so():
    faces = torch.tensor([[0, 1, 2]])
    v = _single_triangle()
    # dP * dI >= 0: a covered pixel that should be brighter, a background pixel that should be darker
    assert (_nmr_grad(v, faces, {(7, 8): -1.0, (7, 6): -3.0}) == 0).all()
    assert (_nmr_grad(v, faces, {(7, 10): 1.0, (7, 0): 2.0, (1, 5): 1.0}) == 0).all()
    # pixels the face cannot reach by moving along x or y: rows and columns outside its bbox
    assert (_nmr_grad(v, faces, {(14, 12): -1.0, (15, 15): 1.0, (0, 0): -1.0, (13, 14): -5.0}) == 0).all()
    # a pixel that face 1 could cover but that another face already covers: dI = 0
    two = torch.cat([v.detach(), _single_triangle(((9.0, 5.0), (15.0, 5.0), (15.0, 9.0))).detach()], 1)
    two.requires_grad_(True)
    g = _nmr_grad(two, torch.tensor([[0, 1, 2], [3, 4, 5]]), {(6, 13): -1.0})   # (6, 13) is in face 2
    assert (g == 0).all()


def test_nmr_gradient_is_exactly_zero_for_a_far_vertex(blob):
    # two meshes in opposite corners; incoming gradient only near the second one
    verts, faces = blob
    a = weak_perspective_with_depth(verts[None], torch.tensor([0.2]), torch.tensor([[-0.65, -0.65]]))
    b = weak_perspective_with_depth(verts[None], torch.tensor([0.2]), torch.tensor([[0.65, 0.65]]))
    both = torch.cat([a, b], 1).requires_grad_(True)
    faces2 = torch.cat([faces, faces + verts.shape[0]])
    sil = render_silhouette(both, faces2, 64)
    target = torch.roll(sil.detach(), (2, -1), (1, 2))
    weight = torch.zeros_like(sil)
    weight[:, 34:, 34:] = 1
    ((sil - target) ** 2 * weight).sum().backward()
    n = verts.shape[0]
    assert (both.grad[0, :n] == 0).all()
    assert both.grad[0, n:].abs().sum() > 0
    assert (both.grad[..., 2] == 0).all()


@pytest.mark.parametrize("mode", ["nmr", "soft"])
def test_gradients_transpose_with_the_image(mode):
    # (H, W) image vs the transposed scene in a (W, H) image: the same silhouette, x and y swapped;
    # a square image (both NMR axes in one pass) vs a non-square one (two passes)
    verts, faces = random_triangles(6, batch=2, seed=11)
    verts = verts.double()
    g = torch.Generator().manual_seed(2)
    for h, w in ((24, 40), (32, 32)):
        target = (torch.rand(2, h, w, generator=g) > 0.5).double()
        grads = []
        scenes = ((verts, target, (h, w)), (verts[..., [1, 0, 2]], target.transpose(1, 2), (w, h)))
        for v, tgt, size in scenes:
            v = v.clone().requires_grad_(True)
            sil = render_silhouette(v, faces, size, mode=mode)
            ((sil - tgt) ** 2).sum().backward()
            grads.append((sil.detach(), v.grad))
        assert torch.equal(grads[0][0], grads[1][0].transpose(1, 2))
        assert grads[0][1].abs().sum() > 0
        assert torch.allclose(grads[0][1], grads[1][1][..., [1, 0, 2]], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("vertex", [0, 1, 2])
def test_nmr_descent_lowers_l2_loss(vertex):
    faces = torch.tensor([[0, 1, 2]])
    px = torch.tensor([[10.0, 8.0], [50.0, 14.0], [22.0, 52.0]], dtype=torch.float64)
    target_px = px.clone()
    target_px[vertex] += torch.tensor([3.0, -2.0], dtype=torch.float64)

    def verts_of(p):
        return torch.cat([pixels_to_ndc(p, 64), torch.zeros(3, 1, dtype=torch.float64)], -1)[None]

    target = render_silhouette(verts_of(target_px), faces, 64)
    v = verts_of(px).requires_grad_(True)
    loss = ((render_silhouette(v, faces, 64) - target) ** 2).sum()
    loss.backward()
    grad = v.grad[0, vertex, :2]
    assert grad.norm() > 0
    step = -grad / grad.norm() * (1.5 * 2 / 64)                      # 1.5 pixels along -grad
    moved = v.detach().clone()
    moved[0, vertex, :2] += step
    new_loss = ((render_silhouette(moved, faces, 64) - target) ** 2).sum()
    assert new_loss < loss


# --------------------------------------------------------------------------------------------
# Soft mode.
# --------------------------------------------------------------------------------------------
def _soft_reference(verts, faces, size, sigma):
    """Dense autograd SoftRas silhouette (B x F x H x W): only for tiny cases."""
    xy = verts[..., :2]
    tri = xy[:, faces]                                                 # (B, F, 3, 2)
    r = torch.arange(size, dtype=xy.dtype)
    ii, jj = torch.meshgrid(r, r, indexing="ij")
    p = torch.stack([(2 * jj + 1) / size - 1, (2 * ii + 1) / size - 1], -1).reshape(-1, 2)
    a = tri[:, :, None]                                                 # (B, F, 1, 3, 2)
    e = torch.roll(tri, -1, 2)[:, :, None] - a
    ap = p[None, None, :, None, :] - a                                  # (B, F, P, 3, 2)
    t = ((ap * e).sum(-1) / (e * e).sum(-1)).clamp(0, 1)
    d2 = ((ap - t[..., None] * e) ** 2).sum(-1).amin(-1)               # (B, F, P)
    cross = e[..., 0] * ap[..., 1] - e[..., 1] * ap[..., 0]
    inside = (cross >= 0).all(-1) | (cross <= 0).all(-1)
    dmap = torch.sigmoid(torch.where(inside, d2, -d2) / sigma)
    return (1 - torch.prod(1 - dmap, 1)).reshape(-1, size, size)


def test_soft_matches_dense_reference_and_gradients():
    verts, faces = random_triangles(4, batch=2, seed=5, size=0.5)
    verts = verts.double().requires_grad_(True)
    sigma = 3e-3
    target = torch.rand(2, 12, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = render_silhouette(verts, faces, 12, mode="soft", sigma=sigma, soft_eps=1e-15)
    ((ours - target) ** 2).sum().backward()
    g_ours = verts.grad.clone()
    verts.grad = None
    ref = _soft_reference(verts, faces, 12, sigma)
    ((ref - target) ** 2).sum().backward()
    assert torch.allclose(ours, ref, atol=1e-12)
    assert torch.allclose(g_ours[..., :2], verts.grad[..., :2], rtol=1e-9, atol=1e-10)
    assert (g_ours[..., 2] == 0).all()


def test_soft_range_sharpening_and_finite_gradients(blob):
    verts, faces = blob
    v = posed_mesh(verts, batch=2, seed=7, scale=0.5).requires_grad_(True)
    hard = render_silhouette(v, faces, 64)
    prev = 0.0
    for sigma in (1e-3, 1e-4, 1e-5):
        soft = render_silhouette(v, faces, 64, mode="soft", sigma=sigma)
        assert ((soft >= 0) & (soft <= 1)).all()
        assert ((soft > 0) & (soft < 1)).any()
        score = iou(soft, hard)
        assert score >= prev - 1e-9
        prev = score
        v.grad = None
        (soft * torch.linspace(-1, 1, 64)).sum().backward()
        assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0
    assert prev >= 0.98


# --------------------------------------------------------------------------------------------
# Fitting scale, translation and rotation to a silhouette (both modes).
# --------------------------------------------------------------------------------------------
def _fit_mesh():
    layer = _hand()
    if layer is None:
        v, f = closed_blob_mesh()
        return v.double(), f, "blob"
    with torch.no_grad():
        out = layer(global_orient=torch.zeros(1, 3), hand_pose=0.5 * torch.ones(1, layer.num_pca_comps))
    v = out.vertices[0].double()
    v = v - v.mean(0)
    return v / float((v[:, :2].amax(0) - v[:, :2].amin(0)).max()) * 2.7, layer.faces, "hand"


@pytest.mark.parametrize("mode", ["nmr", "soft"])
def test_fit_pose_to_silhouette(mode):
    verts, faces, _name = _fit_mesh()
    size = 64
    dt = torch.float64

    def project(log_s, t, aa):
        return weak_perspective_with_depth(verts[None], log_s.exp(), t, axis_angle_to_matrix(aa))

    s_true, t_true = torch.tensor([0.45], dtype=dt), torch.tensor([[0.05, -0.05]], dtype=dt)
    aa_true = torch.tensor([[0.3, -0.2, 0.5]], dtype=dt)
    target = render_silhouette(project(s_true.log(), t_true, aa_true), faces, size)
    # start: scale x1.2, translation +0.1, rotation composed with 15 degrees about (1, 1, 0)
    axis = torch.tensor([1.0, 1.0, 0.0], dtype=dt) / math.sqrt(2)
    r_start = (axis_angle_to_matrix(axis * math.radians(15)) @ axis_angle_to_matrix(aa_true[0])).numpy()
    aa_start = cv2.Rodrigues(r_start)[0].reshape(1, 3)
    log_s = (s_true * 1.2).log().clone().requires_grad_(True)
    t = (t_true + 0.1).clone().requires_grad_(True)
    aa = torch.tensor(aa_start, dtype=dt).requires_grad_(True)
    start_iou = iou(render_silhouette(project(log_s, t, aa).detach(), faces, size), target)
    opt = torch.optim.Adam([{"params": [log_s, t], "lr": 0.01}, {"params": [aa], "lr": 0.02}])
    sigma = 1e-5   # sharp enough at 64^2 that the soft silhouette is not biased fatter than the hard one
    for _ in range(200):
        sil = render_silhouette(project(log_s, t, aa), faces, size, mode=mode, sigma=sigma)
        loss = ((sil - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = iou(render_silhouette(project(log_s, t, aa).detach(), faces, size), target)
    assert start_iou < 0.8
    assert final >= 0.95, (start_iou, final)


# --------------------------------------------------------------------------------------------
# Bad input.
# --------------------------------------------------------------------------------------------
def test_bad_input_messages():
    verts, faces = random_triangles(3, batch=2, seed=0)
    bad = verts.clone()
    bad[1, 4, 0] = float("nan")
    for fn in (lambda v, f: rasterize(v, f, 16), lambda v, f: render_silhouette(v, f, 16)):
        with pytest.raises(ValueError, match=r"render: verts contain NaN/inf at batch 1 \(vertex 4"):
            fn(bad, faces)
        inf = verts.clone()
        inf[0, 2, 1] = float("inf")
        with pytest.raises(ValueError, match="NaN/inf at batch 0"):
            fn(inf, faces)
        with pytest.raises(ValueError, match=r"max index 9\) but verts have V=9"):
            fn(verts, faces + 1)
        with pytest.raises(ValueError, match="face index out of range"):
            fn(verts, faces - 1)
        with pytest.raises(ValueError, match=r"faces must have shape \(F, 3\)"):
            fn(verts, faces[:, :2])
        with pytest.raises(ValueError, match=r"verts must have shape \(B, V, 3\)"):
            fn(verts[0], faces)
    with pytest.raises(ValueError, match="mode must be"):
        render_silhouette(verts, faces, 16, mode="phong")
    # empty face list: all background
    assert not render_silhouette(verts, faces[:0], 8).any()

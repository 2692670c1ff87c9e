"""MANO layer (§3.4.1, Eqs. 2-5) against smplx.MANO on the proxy hand; restricted unpickler."""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import torch

from keyhand.geometry.mano import (
    JOINT_NAMES_21,
    ManoFileError,
    ManoLayer,
    SkeletonAdaptation,
    UnsafePickleError,
    axis_angle_to_matrix,
    load_mano_pickle,
    resolve_model_path,
)

smplx = pytest.importorskip("smplx")


def _random_inputs(n_pose: int, batch: int = 4, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (
        0.8 * torch.randn(batch, 3, generator=g, dtype=dtype),
        0.6 * torch.randn(batch, n_pose, generator=g, dtype=dtype),
        1.0 * torch.randn(batch, 10, generator=g, dtype=dtype),
        0.05 * torch.randn(batch, 3, generator=g, dtype=dtype),
    )


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("flat", [True, False])
@pytest.mark.parametrize("ncomps", [15, 30, 45, None])  # None = full axis-angle, no PCA
def test_layer_matches_smplx(proxy_dir: Path, side: str, flat: bool, ncomps: int | None) -> None:
    path = proxy_dir / f"MANO_{side.upper()}.pkl"
    use_pca = ncomps is not None
    ours = ManoLayer(path, side=side, num_pca_comps=ncomps or 45, use_pca=use_pca,
                     flat_hand_mean=flat, unit="mm", dtype=torch.float64)
    seed = 100 * (side == "left") + 50 * flat + (ncomps or 0)
    orient, pose, betas, transl = _random_inputs(ours.num_pca_comps, seed=seed)
    out = ours(orient, pose, betas, transl)

    # smplx treats 45 PCA components as "no PCA": feed it the axis-angle equivalent then.
    smplx_pca = use_pca and ncomps < 45
    ref_layer = smplx.MANO(str(path), is_rhand=side == "right", use_pca=smplx_pca,
                           num_pca_comps=ncomps or 45, flat_hand_mean=flat, dtype=torch.float64)
    ref_pose = pose if smplx_pca or not use_pca else pose @ ours.hands_components
    ref = ref_layer(global_orient=orient, hand_pose=ref_pose, betas=betas, transl=transl)

    np.testing.assert_allclose(out.vertices.numpy() / 1000, ref.vertices.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.mano_joints.numpy() / 1000, ref.joints.numpy(), atol=1e-5, rtol=0)
    tips_ref = ref.vertices[:, list(ours.tip_vertex_ids)].numpy()
    np.testing.assert_allclose(out.joints[:, [4, 8, 12, 16, 20]].numpy() / 1000, tips_ref, atol=1e-5)
    # the 21 joints are the 16 MANO joints reordered plus the tips
    names = dict(zip(JOINT_NAMES_21, out.joints[0], strict=True))
    torch.testing.assert_close(names["thumb1"], out.mano_joints[0, 13])
    torch.testing.assert_close(names["little3"], out.mano_joints[0, 9])


def test_units_dtype_and_shapes(proxy_dir: Path) -> None:
    mm = ManoLayer(proxy_dir, num_pca_comps=30)
    m = ManoLayer(proxy_dir, num_pca_comps=30, unit="m")
    orient, pose, betas, _ = _random_inputs(30, batch=3, dtype=torch.float32)
    a, b = mm(orient, pose, betas), m(orient, pose, betas)
    assert a.vertices.shape == (3, 778, 3) and a.joints.shape == (3, 21, 3)
    assert a.vertices.dtype == torch.float32
    torch.testing.assert_close(a.vertices / 1000, b.vertices)
    # the proxy is an adult hand: wrist to middle tip between 15 and 22 cm in the flat pose
    flat = ManoLayer(proxy_dir, use_pca=False, flat_hand_mean=True)(torch.zeros(1, 3), torch.zeros(1, 45))
    length = (flat.joints[0, 12] - flat.joints[0, 0]).norm().item()
    assert 150 < length < 220, length
    with pytest.raises(ValueError, match="expects 30"):
        mm(orient, torch.zeros(3, 45), betas)


def test_gradients_reach_pose_shape_and_adaptation(proxy_dir: Path) -> None:
    layer = ManoLayer(proxy_dir, num_pca_comps=15)
    adapt = SkeletonAdaptation(21, 21)
    orient, pose, betas, _ = _random_inputs(15, batch=2, dtype=torch.float32)
    for t in (orient, pose, betas):
        t.requires_grad_(True)
    out = layer(orient, pose, betas)
    joints = adapt(out.joints)
    torch.testing.assert_close(joints, out.joints)  # identity at initialisation
    (joints.square().mean() + out.vertices.square().mean()).backward()
    for name, t in [("orient", orient), ("pose", pose), ("betas", betas), ("adaptation", adapt.weight)]:
        assert t.grad is not None and torch.isfinite(t.grad).all(), name
        assert t.grad.abs().sum() > 0, name


def test_rodrigues_is_exact_and_smooth_at_zero() -> None:
    aa = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    r = axis_angle_to_matrix(aa)
    torch.testing.assert_close(r, torch.eye(3, dtype=torch.float64).expand(2, 3, 3))
    r.sum().backward()
    assert torch.isfinite(aa.grad).all()
    v = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64)
    rot = axis_angle_to_matrix(v)[0]
    torch.testing.assert_close(rot @ rot.T, torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(rot @ v[0], v[0])  # the axis is fixed


def test_anatomy_fist_closes_and_thumb_side(proxy_dir: Path) -> None:
    for side, sign in (("right", -1.0), ("left", 1.0)):
        layer = ManoLayer(proxy_dir, side=side, num_pca_comps=45, flat_hand_mean=False)
        pose = torch.zeros(2, 45)
        pose[1, 0] = 2.5  # first PCA component: whole-hand flexion
        out = layer(hand_pose=pose)
        tips = out.joints[:, [8, 12, 16, 20]]                          # index..little tips
        d = (tips - out.joints[:, :1]).norm(dim=-1)                    # to the wrist
        assert (d[1] < 0.75 * d[0]).all(), (side, d)
        # thumb on -z for the right hand, +z for the left (proxy frame: fingers +x, dorsum +y)
        thumb_z = (out.joints[0, 4, 2] - out.joints[0, 12, 2]).item()
        assert sign * thumb_z > 0, (side, thumb_z)
        # fingertips are the farthest joints of their finger from the wrist
        for f in range(5):
            chain = out.joints[0, 1 + 4 * f: 5 + 4 * f]
            dist = (chain - out.joints[0, 0]).norm(dim=-1)
            assert dist.argmax().item() == 3


def test_proxy_created_on_first_use(keyhand_cache: Path) -> None:
    path = resolve_model_path(None, "right")
    assert path.is_file() and str(keyhand_cache) in str(path)
    layer = ManoLayer()  # no file configured: the cached proxy
    assert layer.model_path == path
    assert layer.faces.shape[1] == 3 and layer.v_template.shape == (778, 3)


def test_missing_file_says_where_to_get_it(tmp_path: Path) -> None:
    pattern = r"not found: .*MANO_RIGHT.pkl .*mano.model_path.*mano.is.tue.mpg.de"
    with pytest.raises(ManoFileError, match=pattern):
        ManoLayer(tmp_path)


def test_wrong_shape_names_the_key(tmp_path: Path, proxy_dir: Path) -> None:
    data = load_mano_pickle(proxy_dir / "MANO_RIGHT.pkl")
    data["weights"] = data["weights"][:, :10]
    bad = tmp_path / "MANO_RIGHT.pkl"
    bad.write_bytes(pickle.dumps(data, protocol=2))
    with pytest.raises(ManoFileError, match=r"MANO_RIGHT.pkl: key 'weights' has shape \(778, 10\)"):
        ManoLayer(bad)


def _fake_chumpy_pickle(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a pickle whose arrays are chumpy.ch.Ch objects, as the official files are."""
    mod = types.ModuleType("chumpy.ch")
    pkg = types.ModuleType("chumpy")

    class Ch:  # mimics chumpy's pickled state: __dict__ with the value in 'x'
        def __init__(self, x):
            self.x = x
            self._dirty_vars = {"x"}
            self.dterms = ()

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    mod.Ch = Ch
    pkg.ch = mod
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = pkg, mod
    try:
        data = {k: Ch(v) for k, v in arrays.items()}
        data["J_regressor"] = scipy.sparse.csc_matrix(np.eye(3))
        data["bs_style"] = "lbs"
        path.write_bytes(pickle.dumps(data, protocol=2))
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]


def test_unpickler_reads_chumpy_objects_without_chumpy(tmp_path: Path) -> None:
    path = tmp_path / "chumpy_like.pkl"
    shapedirs = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    _fake_chumpy_pickle(path, {"shapedirs": shapedirs, "hands_mean": np.ones(45)})
    assert "chumpy" not in sys.modules
    data = load_mano_pickle(path)
    assert isinstance(data["shapedirs"], np.ndarray)
    np.testing.assert_array_equal(data["shapedirs"], shapedirs)
    assert scipy.sparse.issparse(data["J_regressor"])
    np.testing.assert_array_equal(data["J_regressor"].toarray(), np.eye(3))
    assert data["bs_style"] == "lbs"


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_unpickler_refuses_malicious_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(pickle.dumps({"v_template": np.zeros((3, 3)), "evil": _Evil(marker)}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"MANO_RIGHT.pkl: refused to unpickle (posix|os|nt)\.system"):
        load_mano_pickle(path)
    assert not marker.exists()
    # protocol 0 and a builtins.eval reduce are refused too
    path.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        load_mano_pickle(path)


def test_truncated_file_is_one_clear_error(tmp_path: Path, proxy_dir: Path) -> None:
    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes((proxy_dir / "MANO_RIGHT.pkl").read_bytes()[:1000])
    with pytest.raises(ManoFileError, match="not a readable MANO pickle"):
        load_mano_pickle(path)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu(proxy_dir: Path) -> None:  # runs on the GPU machine only
    cpu = ManoLayer(proxy_dir, num_pca_comps=30)
    gpu = ManoLayer(proxy_dir, num_pca_comps=30).cuda()
    orient, pose, betas, _ = _random_inputs(30, dtype=torch.float32)
    a = cpu(orient, pose, betas).vertices
    b = gpu(orient.cuda(), pose.cuda(), betas.cuda()).vertices.cpu()
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-4)

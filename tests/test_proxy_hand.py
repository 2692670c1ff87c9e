"""The license-free proxy hand (§3.4.1, Eqs. 2-5): MANO's file format, a closed manifold mesh, a
plausible skeleton and skinning, meaningful shape / pose bases, and smplx.MANO as the LBS oracle."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

from keyhand.geometry import proxy_hand as ph

DIGIT_JOINTS = {"index": (1, 2, 3), "middle": (4, 5, 6), "little": (7, 8, 9), "ring": (10, 11, 12),
                "thumb": (13, 14, 15)}
FINGERS = ("index", "middle", "ring", "little")
TIPS = ph.TIP_VERTEX_IDS


@pytest.fixture(scope="module")
def right() -> dict:
    return ph.build_proxy_hand(seed=0, side="right")


@pytest.fixture(scope="module")
def left() -> dict:
    return ph.build_proxy_hand(seed=0, side="left")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, right: dict, left: dict) -> dict[str, Path]:
    """MANO_RIGHT.pkl / MANO_LEFT.pkl as write_proxy_hand writes them (smplx reads the side from the name)."""
    folder = tmp_path_factory.mktemp("proxy") / "nested" / "dir"
    return {side: ph.write_proxy_hand(folder / f"MANO_{side.upper()}.pkl", seed=0, side=side)
            for side in ("right", "left")}


def fist_pose(model: dict) -> np.ndarray:
    return model["hands_mean"] + 2.5 * model["hands_components"][0]


def flexion_axes(model: dict) -> np.ndarray:
    """(15, 3) flexion axis of each finger joint from the template skeleton: dorsum (+y) x bone."""
    j = model["J"]
    v = model["v_template"]
    axes = np.zeros((15, 3))
    for name, (a, b, c) in DIGIT_JOINTS.items():
        ends = {a: j[b], b: j[c], c: v[TIPS[name]]}
        for k, end in ends.items():
            bone = end - j[k]
            axes[k - 1] = np.cross([0.0, 1.0, 0.0], bone / np.linalg.norm(bone))
    return axes


# ------------------------------------------------------------------------------------------------
def test_keys_dtypes_and_shapes(right: dict, left: dict) -> None:
    expect = {
        "v_template": (np.float64, (778, 3)), "f": (np.uint32, (1552, 3)), "J": (np.float64, (16, 3)),
        "kintree_table": (np.int64, (2, 16)), "weights": (np.float64, (778, 16)),
        "shapedirs": (np.float64, (778, 3, 10)), "posedirs": (np.float64, (778, 3, 135)),
        "hands_components": (np.float64, (45, 45)), "hands_mean": (np.float64, (45,)),
    }
    for model in (right, left):
        extra = {"J_regressor", "hands_coeffs", "bs_style", "bs_type", "keyhand_meta"}
        assert set(model) == set(expect) | extra
        for key, (dtype, shape) in expect.items():
            assert model[key].dtype == dtype and model[key].shape == shape, key
            assert np.all(np.isfinite(model[key])), key
        reg = model["J_regressor"]
        assert isinstance(reg, scipy.sparse.csc_matrix) and reg.shape == (16, 778) and reg.dtype == np.float64
        coeffs = model["hands_coeffs"]
        assert coeffs.dtype == np.float64 and coeffs.ndim == 2 and coeffs.shape[1] == 45
        assert model["bs_style"] == "lbs" and model["bs_type"] == "lrotmin"
        kin = model["kintree_table"]
        assert kin[0, 0] == 4294967295 and list(kin[0, 1:]) == list(ph.PARENTS[1:])
        assert list(kin[1]) == list(range(16))
    meta = right["keyhand_meta"]
    assert meta["generator"] == "keyhand proxy hand" and meta["version"] == ph.PROXY_VERSION
    assert meta["seed"] == 0 and meta["side"] == "right" and meta["units"] == "m"
    assert meta["tip_vertex_ids"] == [745, 317, 444, 556, 673]
    assert meta["shape_directions"] == list(ph.SHAPE_DIRECTIONS) and len(ph.SHAPE_DIRECTIONS) == 10
    assert len(meta["joint_names"]) == 16 and left["keyhand_meta"]["side"] == "left"
    with pytest.raises(ValueError, match="side"):
        ph.build_proxy_hand(side="both")


def test_write_is_deterministic_atomic_and_plain(files: dict[str, Path], tmp_path: Path) -> None:
    again = ph.write_proxy_hand(tmp_path / "a" / "MANO_RIGHT.pkl", seed=0)
    assert again.read_bytes() == files["right"].read_bytes()
    other = ph.write_proxy_hand(tmp_path / "b" / "MANO_RIGHT.pkl", seed=1)
    assert other.read_bytes() != files["right"].read_bytes()
    assert sorted(p.name for p in files["right"].parent.iterdir()) == ["MANO_LEFT.pkl", "MANO_RIGHT.pkl"]
    data = pickle.loads(files["right"].read_bytes(), encoding="latin1")
    assert data["keyhand_meta"]["seed"] == 0
    assert all(isinstance(v, str | int | float | list) for v in data["keyhand_meta"].values())
    assert files["right"].read_bytes()[:2] == b"\x80\x02"   # protocol 2, like the official files
    assert files["right"].stat().st_size < 5_000_000


@pytest.mark.parametrize("side", ["right", "left"])
def test_mesh_is_closed_manifold_and_outward(right: dict, left: dict, side: str) -> None:
    model = right if side == "right" else left
    v, f = model["v_template"], model["f"].astype(np.int64)
    assert len(np.unique(f)) == 778 and np.all(f[:, 0] != f[:, 1]) and np.all(f[:, 1] != f[:, 2])
    directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    # consistent orientation: each directed edge once, and its reverse exists (closed, 2-manifold)
    assert len(np.unique(directed, axis=0)) == len(directed)
    undirected = np.unique(np.sort(directed, axis=1), axis=0)
    assert len(undirected) * 2 == len(directed)
    assert 778 - len(undirected) + len(f) == 2                      # Euler characteristic: genus 0
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    assert area.min() > 1e-8                                         # no degenerate faces (m^2)
    volume = np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0
    assert 2.5e-4 < volume < 6e-4                                    # outward, 250-600 cm^3


def test_weights_and_joint_regressor(right: dict) -> None:
    w, v = right["weights"], right["v_template"]
    assert w.min() >= 0 and np.allclose(w.sum(1), 1.0)
    reg = right["J_regressor"]
    dense = reg.toarray()
    assert dense.min() >= 0 and np.allclose(dense.sum(1), 1.0)
    assert reg.nnz <= 16 * 80                                        # rings of vertices, not all of them
    np.testing.assert_allclose(right["J"], reg @ v, atol=1e-12)
    np.testing.assert_allclose(right["J"][0], 0.0, atol=1e-12)       # the wrist joint at the origin
    children = {j: {c for c in range(16) if ph.PARENTS[c] == j} for j in range(16)}
    for i in range(778):
        on = set(np.flatnonzero(w[i]).tolist())
        # a vertex follows one bone, or blends a bone with its children (never far-away joints)
        assert any(on <= {r} | children[r] for r in on), (i, on)
    f = right["f"].astype(np.int64)
    edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    assert np.abs(w[edges[:, 0]] - w[edges[:, 1]]).max() < 0.7     # smooth across the mesh
    palm = (np.argmax(w, 1) == 0) & (v[:, 0] > 0.015) & (v[:, 0] < 0.06)
    assert palm.sum() > 60 and w[palm, 0].mean() > 0.9


def test_pose_space_pca(right: dict, left: dict) -> None:
    comps = right["hands_components"]
    np.testing.assert_allclose(comps @ comps.T, np.eye(45), atol=1e-10)
    coeffs = right["hands_coeffs"]
    var = coeffs.var(0)
    assert np.all(np.diff(var) <= 1e-12) and np.allclose(coeffs.mean(0), 0.0, atol=1e-10)
    axes = flexion_axes(right)
    finger = np.zeros(15, bool)
    finger[:12] = True
    load = np.einsum("cjk,jk->cj", comps.reshape(45, 15, 3), axes)  # (45 components, 15 joints)
    assert np.all(load[0, finger] > 0.1)                            # PC1 closes every finger joint
    assert np.argmax(np.abs(load[:, finger].sum(1))) == 0
    assert var[0] > 0.4 * var.sum()
    mean_flex = np.einsum("jk,jk->j", right["hands_mean"].reshape(15, 3), axes)[finger]
    assert np.all((mean_flex > 0.1) & (mean_flex < 1.2))            # relaxed, slightly curled
    # left: the same basis under the reflection z -> -z of axis-angle vectors
    mirror = np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(left["hands_components"].reshape(45, 15, 3), comps.reshape(45, 15, 3) * mirror)
    np.testing.assert_allclose(left["hands_mean"].reshape(15, 3), right["hands_mean"].reshape(15, 3) * mirror)


def test_anatomy_and_sizes(right: dict, left: dict) -> None:
    v, j, w = right["v_template"], right["J"], right["weights"]
    owner = np.argmax(w, 1)
    wrist = j[0]
    dist = np.linalg.norm(v - wrist, axis=1)
    lengths = {}
    for name, joints in DIGIT_JOINTS.items():
        digit = np.flatnonzero(np.isin(owner, joints))
        tip = TIPS[name]
        assert tip in digit and dist[tip] == dist[digit].max(), name   # the tip is the digit's far end
        assert dist[tip] > np.linalg.norm(j[joints[0]] - wrist) + 0.04, name
        lengths[name] = dist[tip]
    assert max(lengths, key=lengths.get) == "middle"
    assert 0.17 < lengths["middle"] < 0.20                           # wrist to middle fingertip (m)
    assert v[TIPS["thumb"], 2] < -0.03 and left["v_template"][TIPS["thumb"], 2] > 0.03
    np.testing.assert_allclose(left["v_template"], v * [1.0, 1.0, -1.0])
    knuckles = j[[1, 4, 10, 7]]
    assert np.all(np.diff(knuckles[:, 2]) > 0)                      # index .. little from -z to +z
    palm = (owner == 0) & (v[:, 0] > 0.02) & (v[:, 0] < knuckles[:, 0].min())
    width = np.ptp(v[palm, 2])
    assert 0.07 < width < 0.095, width                               # palm width
    assert 0.022 < np.ptp(v[palm, 1]) < 0.04                         # palm thickness
    for name in FINGERS:
        seg = v[owner == DIGIT_JOINTS[name][0]]
        assert 0.014 < np.ptp(seg[:, 1]) < 0.021, name               # finger thickness
    assert np.all(np.abs(j[1:13, 1]) < 0.005)                       # knuckles mid-thickness


@pytest.mark.parametrize("side", ["right", "left"])
def test_smplx_loads_it_and_a_fist_closes(files: dict[str, Path], side: str) -> None:
    torch = pytest.importorskip("torch")
    smplx = pytest.importorskip("smplx")
    path = files[side]
    model = pickle.loads(path.read_bytes(), encoding="latin1")
    layer = smplx.MANO(model_path=str(path), is_rhand=side == "right", use_pca=False, flat_hand_mean=True,
                       dtype=torch.float64)
    rng = np.random.default_rng(0)
    poses = np.stack([np.zeros(45), fist_pose(model), model["hands_mean"] + 0.7 * rng.normal(size=45) @ model[
        "hands_components"]])
    betas = np.stack([np.zeros(10), np.zeros(10), rng.normal(size=10)])
    out = layer(hand_pose=torch.as_tensor(poses), betas=torch.as_tensor(betas),
                global_orient=torch.zeros(3, 3, dtype=torch.float64))
    verts = out.vertices.detach().numpy()
    assert np.all(np.isfinite(verts))
    # our numpy LBS (Eqs. 2-5) and smplx agree, pose correctives and shape blend shapes included
    ours, joints = ph.numpy_lbs(model, poses, betas)
    np.testing.assert_allclose(verts, ours, atol=1e-6)
    np.testing.assert_allclose(out.joints.detach().numpy()[:, :16], joints, atol=1e-6)
    # fist: each fingertip gets much closer to the palm centre (wrist and four knuckles)
    centre = joints[:, [0, 1, 4, 7, 10]].mean(1)
    tips = verts[:, [TIPS[name] for name in FINGERS]]
    d = np.linalg.norm(tips - centre[:, None], axis=-1)
    assert np.all(d[1] < 0.6 * d[0]), d
    assert np.all(tips[1, :, 1] < joints[1, 0, 1])                  # fingers curl to the palm side (-y)


def test_left_is_the_mirrored_right(files: dict[str, Path]) -> None:
    right = pickle.loads(files["right"].read_bytes(), encoding="latin1")
    left = pickle.loads(files["left"].read_bytes(), encoding="latin1")
    rng = np.random.default_rng(1)
    pose = right["hands_mean"] + 0.8 * rng.normal(size=(2, 45)) @ right["hands_components"]
    betas = rng.normal(size=(2, 10))
    mirrored = (pose.reshape(2, 15, 3) * [-1.0, -1.0, 1.0]).reshape(2, 45)
    vr, _ = ph.numpy_lbs(right, pose, betas)
    vl, _ = ph.numpy_lbs(left, mirrored, betas)
    np.testing.assert_allclose(vl, vr * [1.0, 1.0, -1.0], atol=1e-12)


def test_shape_directions(right: dict) -> None:
    s, v = right["shapedirs"], right["v_template"]
    mags = np.linalg.norm(s, axis=1).max(0)                          # (10,) max displacement at 1 std
    assert np.all((mags > 5e-4) & (mags < 0.015)), dict(zip(ph.SHAPE_DIRECTIONS, mags, strict=True))
    size = s[..., ph.SHAPE_DIRECTIONS.index("overall_size")]
    scale = float((size * v).sum() / (v * v).sum())
    assert 0.02 < scale < 0.07 and np.abs(size - scale * v).max() < 1e-9   # uniform about the wrist
    tip = TIPS["middle"]
    fingers = s[..., ph.SHAPE_DIRECTIONS.index("finger_length")]
    assert fingers[tip, 0] > 0.002 and np.abs(fingers[TIPS["thumb"]]).max() < 1e-9
    thumb = s[..., ph.SHAPE_DIRECTIONS.index("thumb_length")]
    assert np.linalg.norm(thumb[TIPS["thumb"]]) > 0.002 and np.abs(thumb[tip]).max() < 1e-9
    width = s[..., ph.SHAPE_DIRECTIONS.index("palm_width")]
    assert width[TIPS["index"], 2] < 0 < width[TIPS["little"], 2]          # index on -z (right hand)
    thick = s[..., ph.SHAPE_DIRECTIONS.index("thickness")]
    assert np.abs(thick[:, 1]).sum() > 3 * np.abs(thick[:, 0]).sum()
    ratio = s[..., ph.SHAPE_DIRECTIONS.index("index_vs_little_length")]
    assert ratio[TIPS["index"], 0] > 0 > ratio[TIPS["little"], 0]


def test_pose_correctives_are_small_local_and_keep_volume(right: dict) -> None:
    p = right["posedirs"]
    assert np.abs(p).max() < 0.02
    single = (right["weights"] > 0).sum(1) == 1
    assert np.all(p[single] == 0)                                    # rigidly skinned: nothing to correct
    no_corr = dict(right, posedirs=np.zeros_like(p))
    fist = fist_pose(right)[None]
    f = right["f"].astype(np.int64)

    def volume(x: np.ndarray) -> float:
        return float(np.einsum("ij,ij->i", x[f[:, 0]], np.cross(x[f[:, 1]], x[f[:, 2]])).sum() / 6.0)

    rest = volume(right["v_template"])
    with_p, without = volume(ph.numpy_lbs(right, fist)[0][0]), volume(ph.numpy_lbs(no_corr, fist)[0][0])
    assert abs(with_p - rest) < abs(without - rest)                  # LBS loses volume at bent joints


def test_render_views(right: dict, tmp_path: Path) -> None:
    out = ph.render_views(right, tmp_path / "docs" / "hand.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 300_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1200, 800)

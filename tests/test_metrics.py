"""keyhand.metrics: EPE / 3D PCK / AUC as lmb-freiburg/hand3d computes them, the aligned EPEs, F-scores and mesh
errors beyond the paper (FreiHAND's definitions), and gesture metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes
from scipy.spatial.transform import Rotation

from keyhand.metrics import (
    PCK_GRID_FULL_MM,
    PCK_THRESHOLDS_MM,
    SCALE_BONE,
    SUMMARY_KEYS,
    PoseEvaluator,
    accuracy,
    auc,
    confusion_matrix,
    epe,
    f_scores,
    gesture_metrics,
    joint_errors,
    pck_curve,
    per_class_accuracy,
    pose_metrics,
    procrustes_align,
    scale_align,
)

J = 21


def hand3d_reference(errors: np.ndarray, vis: np.ndarray) -> tuple[float, float, float, np.ndarray, float]:
    """Direct numpy transcription of the hand3d protocol (utils/general.py EvalUtil.get_measures(0, 50, 20) and
    eval_full.py's 20-50 mm subset ``[8:]`` with calc_auc), written independently of keyhand.metrics."""
    thresholds = np.linspace(0.0, 50.0, 20)
    norm = np.trapezoid(np.ones_like(thresholds), thresholds)
    means, medians, aucs, curves = [], [], [], []
    for k in range(errors.shape[1]):
        d = errors[vis[:, k] > 0, k]
        if len(d) == 0:
            continue
        means.append(d.mean())
        medians.append(np.median(d))
        curve = np.array([np.mean(d <= t) for t in thresholds])
        curves.append(curve)
        aucs.append(np.trapezoid(curve, thresholds) / norm)
    curve = np.mean(curves, 0)
    sub_t, sub_c = thresholds[8:], curve[8:]
    auc_20_50 = np.trapezoid(sub_c, sub_t) / np.trapezoid(np.ones_like(sub_c), sub_t)
    return float(np.mean(means)), float(np.mean(medians)), float(np.mean(aucs)), sub_c, float(auc_20_50)


def poses_with_errors(dist_mm: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, J) wanted errors -> gt, pred (N, J, 3) mm whose root-relative errors are exactly ``dist_mm``
    (joint 0 error must be 0); gt in a camera frame far from the origin."""
    rng = np.random.default_rng(seed)
    n = dist_mm.shape[0]
    gt = rng.normal(0, 40, (n, J, 3)) + np.array([30.0, -10.0, 600.0])
    direction = rng.normal(size=(n, J, 3))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    pred = gt + direction * dist_mm[..., None]
    pred += rng.normal(0, 100, (n, 1, 3)) - (pred[:, :1] - gt[:, :1])     # any global offset: root-relative
    return gt, pred


def test_threshold_grid_is_hand3d_stb_subset():
    assert len(PCK_GRID_FULL_MM) == 20 and PCK_GRID_FULL_MM[0] == 0 and PCK_GRID_FULL_MM[-1] == 50
    assert len(PCK_THRESHOLDS_MM) == 12
    assert PCK_THRESHOLDS_MM[0] == pytest.approx(8 * 50 / 19) and PCK_THRESHOLDS_MM[-1] == 50.0
    assert np.allclose(np.diff(PCK_THRESHOLDS_MM), 50 / 19)


def test_all_errors_10mm_auc_one():
    dist = np.full((5, J), 10.0)
    dist[:, 0] = 0.0
    gt, pred = poses_with_errors(dist)
    ev = PoseEvaluator()
    ev.update(pred, gt)
    r = ev.compute()
    assert r["auc"] == pytest.approx(1.0) and r["pck"]["values"] == pytest.approx([1.0] * 12)
    assert r["epe_mean"] == pytest.approx(10.0 * 20 / 21)          # the root (error 0) counts, as in hand3d
    assert r["epe_median"] == pytest.approx(10.0 * 20 / 21)
    assert r["count"] == 5 and r["pck"]["thresholds_mm"] == pytest.approx(list(PCK_THRESHOLDS_MM))


def test_all_errors_35mm_auc_by_hand():
    # grid 50k/19, k = 8..19: thresholds >= 35 mm are k >= 14 (36.84 mm). PCK (excluding the root) is 0 for
    # k = 8..13 and 1 for k = 14..19: trapezoids 0.5 + 5 = 5.5 steps out of 11 -> 0.5; the root (error 0,
    # PCK 1 everywhere) adds 1/21 of the gap: AUC = (20 * 0.5 + 1) / 21.
    dist = np.full((3, J), 35.0)
    dist[:, 0] = 0.0
    gt, pred = poses_with_errors(dist, seed=1)
    ev = PoseEvaluator()
    ev.update(pred, gt)
    r = ev.compute()
    assert r["auc"] == pytest.approx((20 * 0.5 + 1) / 21)
    # full 0-50 grid: PCK 0 for k = 0..13, 1 for k = 14..19 -> (0.5 + 5) / 19
    assert r["auc_0_50"] == pytest.approx((20 * 5.5 / 19 + 1) / 21)
    assert r["epe_mean"] == pytest.approx(35.0 * 20 / 21)


def test_matches_hand3d_reference_with_visibility():
    rng = np.random.default_rng(7)
    dist = rng.gamma(2.0, 12.0, (40, J))
    dist[:, 0] = 0.0
    vis = (rng.random((40, J)) > 0.2).astype(np.float32)
    vis[:, 7] = 0                                              # a keypoint never visible: skipped
    gt, pred = poses_with_errors(dist, seed=2)
    ev = PoseEvaluator()
    for sl in (slice(0, 13), slice(13, 30), slice(30, 40)):    # accumulate over batches, torch and numpy
        ev.update(torch.from_numpy(pred[sl]).float(), gt[sl], torch.from_numpy(vis[sl]))
    r = ev.compute()
    mean, median, auc_full, curve, auc_20_50 = hand3d_reference(dist, vis)
    assert r["epe_mean"] == pytest.approx(mean, rel=1e-5)
    assert r["epe_median"] == pytest.approx(median, rel=1e-5)
    assert r["auc"] == pytest.approx(auc_20_50, rel=1e-5)
    assert r["auc_0_50"] == pytest.approx(auc_full, rel=1e-5)
    assert np.allclose(r["pck"]["values"], curve, atol=1e-6)
    assert r["count"] == 40
    # per-keypoint averaging differs from pooling all errors when visibility varies
    assert abs(r["epe_mean"] - dist[vis > 0].mean()) > 1e-3


def test_epe_median_is_mean_of_per_keypoint_medians():
    errors = np.array([[0.0, 1.0, 10.0], [0.0, 3.0, 20.0], [0.0, 8.0, 90.0]])
    mean, median = epe(errors)
    assert mean == pytest.approx((0 + 4 + 40) / 3)
    assert median == pytest.approx((0 + 3 + 20) / 3)
    assert np.isnan(epe(errors, np.zeros_like(errors))[0])


def test_pck_inclusive_and_auc_normalisation():
    errors = np.array([[20.0, 30.0]])
    assert pck_curve(errors, [19.0, 20.0, 30.0]).tolist() == [0.0, 0.5, 1.0]
    assert auc([20.0, 30.0, 50.0], [0.0, 1.0, 1.0]) == pytest.approx((5 + 20) / 30)
    with pytest.raises(ValueError, match="increasing thresholds"):
        auc([20.0], [1.0])


def test_root_relative_and_errors():
    gt = np.random.default_rng(0).normal(size=(2, J, 3))
    assert np.allclose(joint_errors(gt + 100.0, gt), 0.0)
    assert np.allclose(joint_errors(gt + 3.0, gt, relative=False), np.sqrt(27.0))
    with pytest.raises(ValueError, match="\\(N, J, 3\\)"):
        joint_errors(gt[:, :, :2], gt[:, :, :2])
    ev = PoseEvaluator()
    with pytest.raises(ValueError, match="21 joints"):
        ev.update(gt[:, :20], gt[:, :20])
    r = ev.compute()
    assert r["count"] == 0 and np.isnan(r["epe_mean"]) and np.isnan(r["auc"])
    ev.update(gt, gt)
    ev.reset()
    assert ev.count == 0


# --------------------------------------------------------------------------------------- beyond the paper

def hand(seed: int = 0, n: int = 4, points: int = J) -> np.ndarray:
    """(n, points, 3) mm: random hands in a camera frame (not centred, not planar)."""
    rng = np.random.default_rng(seed)
    return rng.normal(0, 40, (n, points, 3)) + np.array([20.0, -30.0, 550.0])


def similarity(x: np.ndarray, seed: int, scale: float, about: np.ndarray | None = None) -> np.ndarray:
    """x (n, P, 3) rotated (random), scaled by ``scale`` about ``about`` (default its first point) and moved."""
    rng = np.random.default_rng(seed)
    rot = Rotation.random(len(x), random_state=seed).as_matrix()
    c = x[:, :1] if about is None else about
    return scale * np.einsum("nij,npj->npi", rot, x - c) + c + rng.normal(0, 80, (len(x), 1, 3))


def freihand_align_w_scale(mtx1: np.ndarray, mtx2: np.ndarray) -> np.ndarray:
    """FreiHAND eval.py ``align_w_scale`` (gt, pred) -> pred aligned, transcribed as an independent reference
    (orthogonal_procrustes: it would accept a reflection; the inputs here never need one)."""
    t1, t2 = mtx1.mean(0), mtx2.mean(0)
    a, b = mtx1 - t1, mtx2 - t2
    s1, s2 = np.linalg.norm(a) + 1e-8, np.linalg.norm(b) + 1e-8
    a, b = a / s1, b / s2
    R, s = orthogonal_procrustes(a, b)
    return np.dot(b, R.T) * s * s1 + t1


def test_scale_aligned_epe_is_zero_for_a_scaled_copy_and_hand_computed():
    gt = hand(1)
    pred = (gt - gt[:, :1]) * 1.7 + 300.0                      # scaled about the root, moved
    r = pose_metrics(pred, gt)
    assert r["epe_scaled_mean"] == pytest.approx(0.0, abs=1e-9) and r["epe_mean"] > 5.0
    assert r["epe_pa_mean"] == pytest.approx(0.0, abs=1e-9)
    # by hand: gt bone 9 -> 10 of 10 mm, predicted bone 20 mm (scale 1/2); joint 4 off by 6 mm -> 3 mm
    a, b = SCALE_BONE
    g = np.zeros((1, J, 3))
    g[0, 1:, 0] = np.arange(1, J) * 10.0
    p = 2.0 * g
    p[0, 4, 1] += 6.0
    ps, gs = scale_align(p, g + 100.0)
    assert np.linalg.norm(g[0, b] - g[0, a]) == pytest.approx(10.0)
    err = np.linalg.norm(ps - gs, axis=-1)
    assert err[0, 4] == pytest.approx(3.0) and np.delete(err[0], 4) == pytest.approx(np.zeros(J - 1), abs=1e-9)
    assert pose_metrics(p, g)["epe_scaled_mean"] == pytest.approx(3.0 / J)


def test_procrustes_epe_is_zero_for_a_rotated_scaled_copy():
    gt = hand(2)
    pred = similarity(gt, 3, 0.6)
    r = pose_metrics(pred, gt)
    assert r["epe_pa_mean"] == pytest.approx(0.0, abs=1e-8) and r["epe_pa_median"] == pytest.approx(0.0, abs=1e-8)
    assert r["epe_scaled_mean"] > 5.0 and r["epe_mean"] > 5.0                  # rotation: only PA undoes it
    assert r["f5_joints"] == pytest.approx(1.0) and r["f15_joints"] == pytest.approx(1.0)


def test_procrustes_matches_freihand_and_refuses_reflections():
    gt = hand(4, n=6)
    noisy = similarity(gt, 5, 1.3) + np.random.default_rng(6).normal(0, 6, gt.shape)
    ours = procrustes_align(noisy, gt)
    ref = np.stack([freihand_align_w_scale(g, p) for g, p in zip(gt, noisy, strict=True)])
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    # a mirror image is not a match: FreiHAND's transform would reflect it back, ours keeps det R = +1
    mirrored = gt * np.array([-1.0, 1.0, 1.0])
    assert pose_metrics(mirrored, gt)["epe_pa_mean"] > 5.0
    assert np.allclose(freihand_align_w_scale(gt[0], mirrored[0]), gt[0], atol=1e-6)
    # weights: fitted on the first 15 points only, the 6 others (moved) keep their own error
    moved = gt.copy()
    moved[:, 15:] += 50.0
    al = procrustes_align(moved, gt, weights=(np.arange(J) < 15)[None].repeat(len(gt), 0))
    np.testing.assert_allclose(al[:, :15], gt[:, :15], atol=1e-8)
    np.testing.assert_allclose(np.linalg.norm(al[:, 15:] - gt[:, 15:], axis=-1), np.sqrt(3) * 50.0, rtol=1e-9)
    # a degenerate prediction (one spot) lands on the ground truth's centroid
    np.testing.assert_allclose(procrustes_align(np.zeros_like(gt), gt), gt.mean(1, keepdims=True).repeat(J, 1))


def test_f_score_hand_computed():
    gt = np.array([[[0.0, 0, 0], [10.0, 0, 0]]])
    pred = np.array([[[0.0, 0, 3], [30.0, 0, 0]]])
    # pred -> gt: 3, 20; gt -> pred: 3, 10. 5 mm: P = 1/2, R = 1/2, F = 1/2. 15 mm: P = 1/2, R = 1 -> 2/3.
    np.testing.assert_allclose(f_scores(pred, gt, (5.0, 15.0)), [[0.5, 2 / 3]])
    # strictly closer than the threshold (FreiHAND: d < th); no point close at all: F = 0
    np.testing.assert_allclose(f_scores(pred, gt, (3.0, 1.0)), [[0.0, 0.0]])
    # point sets, not correspondences: a permuted prediction scores the same; sizes may differ
    np.testing.assert_allclose(f_scores(pred[:, ::-1], gt, (5.0, 15.0)), [[0.5, 2 / 3]])
    assert f_scores(pred[:, :1], gt, (5.0,))[0, 0] == pytest.approx(2 * 1.0 * 0.5 / 1.5)


def test_mesh_errors_and_summary_keys():
    gt = hand(7, n=5)
    gt_v = hand(8, n=5, points=50)
    # a prediction off by a similarity (joints and mesh alike), then rooted elsewhere: PA mesh error 0, F = 1
    both = similarity(np.concatenate([gt, gt_v], 1), 9, 0.8, about=gt[:, :1])
    pred, pred_v = both[:, :J], both[:, J:]
    ev = PoseEvaluator()
    ev.update(pred[:3], gt[:3], pred_vertices=pred_v[:3], gt_vertices=gt_v[:3])
    missing = gt_v[3:].copy()
    missing[0] = np.nan                                        # sample 3 has no ground-truth mesh
    ev.update(torch.from_numpy(pred[3:]), gt[3:], pred_vertices=torch.from_numpy(pred_v[3:]), gt_vertices=missing)
    r = ev.compute()
    assert set(SUMMARY_KEYS) <= set(r) and r["count"] == 5 and r["mesh_count"] == 4
    assert r["mesh_error_pa_mean"] == pytest.approx(0.0, abs=1e-8) and r["mesh_error_mean"] > 5.0
    assert r["f5_mesh"] == pytest.approx(1.0) and r["f15_mesh"] == pytest.approx(1.0)
    # root-aligned: a translation of the whole prediction changes nothing; a mesh offset of 4 mm shows as 4 mm
    shifted = pose_metrics(gt + 70.0, gt, pred_vertices=gt_v + 70.0 + np.array([0.0, 0.0, 4.0]), gt_vertices=gt_v)
    assert shifted["mesh_error_mean"] == pytest.approx(4.0) and shifted["mesh_error_pa_mean"] == pytest.approx(0.0)
    assert shifted["epe_mean"] == pytest.approx(0.0) and shifted["mesh_count"] == 5
    # without meshes: NaN (not logged), count 0
    plain = pose_metrics(pred, gt)
    assert plain["mesh_count"] == 0 and np.isnan(plain["mesh_error_mean"]) and np.isnan(plain["f5_mesh"])
    with pytest.raises(ValueError, match="pred_vertices"):
        pose_metrics(pred, gt, pred_vertices=pred_v[:, :10], gt_vertices=gt_v)
    # F thresholds are configurable and name their keys
    assert "f10_joints" in PoseEvaluator(f_thresholds_mm=(10.0,)).compute()


def test_gesture_metrics_hand_computed():
    y_true = np.array([0, 0, 1, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0, 2])
    cm = confusion_matrix(y_true, y_pred, labels=[0, 1, 2, 3])
    assert cm.tolist() == [[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    pca = per_class_accuracy(y_true, y_pred, labels=[0, 1, 2, 3])
    assert pca[:3] == pytest.approx([0.5, 2 / 3, 1.0]) and np.isnan(pca[3])
    # label order is respected
    assert confusion_matrix(y_true, y_pred, labels=[2, 1, 0]).tolist() == [[1, 0, 0], [0, 2, 1], [0, 1, 1]]
    m = gesture_metrics(torch.tensor(y_true), torch.tensor(y_pred), labels=[0, 1, 2])
    assert m["accuracy"] == pytest.approx(4 / 6) and m["count"] == 6 and m["confusion"][1] == [1, 2, 0]
    with pytest.raises(ValueError, match="y_pred has labels \\[5\\]"):
        confusion_matrix([0, 1], [0, 5], labels=[0, 1])
    with pytest.raises(ValueError, match="differ in length"):
        accuracy([0, 1], [0])


def test_table5_auc_is_hand3d_stb_protocol_palm_root_and_gt_scale() -> None:
    """hand3d's eval_full.py (lmb-freiburg/hand3d, a6215d1) evaluates STB with use_wrist_coord=False (keypoint 0
    = STB's palm centre, the ground truth centred on it) and multiplies the scale-free prediction by the ground
    truth's middle MCP -> PIP length. keyhand's STB joint 0 is the wrist extrapolated from the palm: palm_rooted
    must recover STB's palm exactly, and a prediction that is right up to its global size scores a perfect
    hand3d-STB AUC while the wrist-rooted AUC (no scale given) does not."""
    from keyhand.data.stb import palm_to_wrist
    from keyhand.metrics import palm_rooted, pose_metrics

    rng = np.random.default_rng(0)
    stb_palm_rooted = rng.normal(0, 40, (5, 21, 3))            # joint 0 = STB's palm centre
    wrist_rooted = palm_to_wrist(stb_palm_rooted)               # what the STB reader gives the network
    np.testing.assert_allclose(palm_rooted(wrist_rooted), stb_palm_rooted, atol=1e-9)
    pred = 0.7 * wrist_rooted + 5.0                             # right shape, wrong size and origin
    m = pose_metrics(pred, wrist_rooted)
    assert m["auc_hand3d_stb"] == pytest.approx(1.0) and m["epe_hand3d_stb_mean"] == pytest.approx(0.0, abs=1e-9)
    assert m["auc"] < 0.9 and m["epe_mean"] > 5
    noisy = pose_metrics(wrist_rooted + rng.normal(0, 15, wrist_rooted.shape), wrist_rooted)
    assert 0 < noisy["auc_hand3d_stb"] < 1 and noisy["epe_hand3d_stb_mean"] > 5

"""Evaluation metrics of §4.3: 3D EPE, 3D PCK and its AUC (pose), accuracy and confusion matrix (gestures).

    from keyhand.metrics import PoseEvaluator, confusion_matrix, gesture_metrics
    ev = PoseEvaluator()
    for batch in loader:
        ev.update(out.joints_3d, batch["joints_3d"])          # (B, 21, 3) mm, any frame: made root-relative
    ev.compute()   # {"epe_mean", "epe_median", "auc", "auc_0_50", "pck": {"thresholds_mm", "values"}, "count",
                   #  "epe_scaled_mean", "epe_pa_mean", "f5_joints", "f15_joints", ...: SUMMARY_KEYS}
    ev.update(out.joints_3d, gt, pred_vertices=out.vertices, gt_vertices=gt_mesh)   # + mesh metrics

Pose metrics, computed the way the public evaluation the paper uses ([33], Zimmermann & Brox,
lmb-freiburg/hand3d) computes them — checked against ``utils/general.py`` (``EvalUtil.feed`` /
``EvalUtil.get_measures`` / ``calc_auc``) and the STB evaluation script ``eval_full.py`` (commit a6215d1):

* Ground truth and prediction are root-relative: joint 0 (wrist) is subtracted from both (hand3d centres the
  ground truth on keypoint 0; its prediction is root-relative by construction). The root keeps its (zero)
  error and is counted like every other keypoint, as in hand3d (21 keypoints).
* Per keypoint ``k``: the Euclidean distances d (mm) of all samples where ``k`` is visible.
  EPE mean = mean over keypoints of mean_k(d); EPE median = mean over keypoints of median_k(d) (a mean of
  per-keypoint medians, not a pooled median); keypoints with no visible sample are skipped.
* PCK_k(τ) = fraction of d_k with d ≤ τ (inclusive); the PCK curve is the mean of PCK_k over keypoints.
* Threshold grid: hand3d's STB evaluation calls ``get_measures(0.0, 0.050, 20)`` (metres), i.e.
  ``np.linspace(0, 50, 20)`` mm (step 50/19 ≈ 2.632 mm), and for "AUC 20-50 mm" keeps the points from index 8 on:
  ``np.linspace(0, 50, 20)[8:]`` = 12 thresholds 21.053, 23.684, …, 47.368, 50.0 mm (the grid starts at
  8·50/19 ≈ 21.05 mm, not at 20 mm). This is :data:`PCK_THRESHOLDS_MM`, the paper's Table 5 / §4.3 AUC.
* AUC = ``trapz(pck, τ) / trapz(ones, τ)`` — trapezoidal area divided by the width of the threshold range
  (50 − 21.053 = 28.947 mm on the 20-50 grid), so it lies in [0, 1]. ``"auc_0_50"`` is the same on the full
  ``linspace(0, 50, 20)`` grid (hand3d's main AUC output, mean of per-keypoint AUCs = AUC of the mean curve).

Table 5 as hand3d evaluates STB (``auc_hand3d_stb``, ``epe_hand3d_stb_mean``): ``eval_full.py`` reads STB with
``use_wrist_coord=False``, so its keypoint 0 is STB's annotated **palm centre**, the ground truth is centred on
it, and the network's scale-normalised prediction is multiplied by the ground truth's ``keypoint_scale`` (the
middle MCP → PIP bone). keyhand's STB joint 0 is a wrist extrapolated from the palm (``2·palm − ring MCP``,
``keyhand.data.stb.palm_to_wrist``), so the palm is recovered exactly as the midpoint of joints 0 and 13
(:func:`palm_rooted`, the same midpoint of the prediction), both skeletons are centred on it and the prediction
is scaled to the ground truth's MCP → PIP length (:func:`scale_align`); PCK / AUC on the 20-50 mm grid. The
default ``auc`` (wrist root, no scale given) is reported beside it: a stricter number, since the prediction's
global size is then an error too.

Beyond the paper (issue 11; reported beside EPE/AUC, never instead of them). The aligned EPEs are aggregated
like the EPE above (per keypoint over its visible samples, then over keypoints); mesh errors and F-scores are
means over samples:

* ``epe_scaled_mean`` / ``_median``: **scale-aligned EPE**. Both skeletons root-relative (joint 0), then the
  prediction is multiplied by ``‖g₁₀ − g₉‖ / ‖p₁₀ − p₉‖``: the ground truth's length of the reference bone
  :data:`SCALE_BONE` = middle-finger MCP → PIP (manopth joints 9 → 10). That is the bone hand3d [33] normalises
  by (its ``keypoint_scale``: keypoints 12 → 11 in its order, "index_root_bone_length") and multiplies its
  normalised prediction with at evaluation, so this is the EPE of a prediction whose global size is given.
* ``epe_pa_mean`` / ``_median``: **Procrustes-aligned EPE** (PA-EPE). Per sample, the similarity transform
  (rotation, uniform scale, translation; least squares, Umeyama 1991) that maps the predicted joints onto the
  ground truth is applied first (:func:`procrustes_align`, fitted to the visible joints). As FreiHAND's
  ``align_w_scale``, except that a reflection is never allowed (det R = +1): a mirrored hand is an error.
* ``f5_joints`` / ``f15_joints``: **F-score at 5 / 15 mm** on the 21 Procrustes-aligned joints, FreiHAND's
  definition (``eval.py calculate_fscore``): point sets, nearest-neighbour distances both ways (no
  correspondence), precision = fraction of predicted points closer than τ (strictly) to some ground-truth
  point, recall = the converse, F = 2PR / (P + R) (0 when both are 0); mean of the per-sample F.
* Where a ground-truth mesh exists (the synthetic sets: :func:`keyhand.data.prepare.read_split_vertices`):
  ``mesh_error_mean``, the mean per-vertex Euclidean distance with each mesh translated by its own skeleton's
  joint 0 (the EPE's root alignment); ``mesh_error_pa_mean`` after a Procrustes alignment estimated on the
  vertices (FreiHAND ``mesh_al_mean3d``); ``f5_mesh`` / ``f15_mesh``, the F-scores on those Procrustes-aligned
  vertices (FreiHAND's F@5 / F@15 mm); ``mesh_count`` samples. NaN (and not logged) without any mesh.

Gesture metrics (§4.3.3, Table 6): accuracy, per-class accuracy (recall) and the confusion matrix
(rows = true class, columns = predicted class, in the order of ``labels``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.spatial import cKDTree

__all__ = ["PCK_GRID_FULL_MM", "PCK_THRESHOLDS_MM", "ROOT_JOINT", "SCALE_BONE", "F_THRESHOLDS_MM", "SUMMARY_KEYS",
           "PALM_FROM", "palm_rooted", "procrustes_errors",
           "root_relative", "joint_errors", "epe", "pck_curve", "auc", "scale_align", "procrustes_align",
           "f_scores", "PoseEvaluator", "pose_metrics", "accuracy", "confusion_matrix", "per_class_accuracy",
           "gesture_metrics"]

#: hand3d ``get_measures(0.0, 0.050, 20)`` grid in mm: 20 thresholds 0, 2.632, …, 50.
PCK_GRID_FULL_MM = np.linspace(0.0, 50.0, 20)
#: hand3d STB "20-50 mm" subset (``eval_full.py``: ``threshs[8:]``): 12 thresholds 21.053 … 50 mm.
PCK_THRESHOLDS_MM = PCK_GRID_FULL_MM[8:]
ROOT_JOINT = 0
#: Reference bone of the scale-aligned EPE: middle-finger MCP -> PIP (manopth 9 -> 10; hand3d's keypoints 12 -> 11).
SCALE_BONE = (9, 10)
#: STB's palm centre as the midpoint of joints 0 (the extrapolated wrist) and 13 (ring MCP, the joint
#: keyhand.data.stb.palm_to_wrist extrapolates from): hand3d's STB root.
PALM_FROM = (0, 13)
#: FreiHAND's F-score thresholds (``f_threshs = [0.005, 0.015]`` m), in mm.
F_THRESHOLDS_MM = (5.0, 15.0)
#: The scalar keys of :meth:`PoseEvaluator.compute` (default F thresholds), the paper's first.
SUMMARY_KEYS = ("epe_mean", "epe_median", "auc", "auc_0_50", "epe_scaled_mean", "epe_scaled_median", "epe_pa_mean",
                "epe_pa_median", "f5_joints", "f15_joints", "mesh_error_mean", "mesh_error_pa_mean", "f5_mesh",
                "f15_mesh", "mesh_count", "count", "auc_hand3d_stb", "epe_hand3d_stb_mean")


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def palm_rooted(joints) -> np.ndarray:
    """(N, J, 3) joints with joint 0 replaced by the palm centre, the midpoint of joints :data:`PALM_FROM`
    (STB's annotated palm when joint 0 is the extrapolated wrist; hand3d's STB root, module docstring)."""
    j = _np(joints).copy()
    a, b = PALM_FROM
    j[:, ROOT_JOINT] = 0.5 * (j[:, a] + j[:, b])
    return j


def root_relative(joints, root: int = ROOT_JOINT) -> np.ndarray:
    """(N, J, 3) joints -> the same with joint ``root`` (wrist) subtracted, float64."""
    j = _np(joints)
    return j - j[:, root:root + 1]


def joint_errors(pred, gt, relative: bool = True) -> np.ndarray:
    """Per-joint Euclidean distances (N, J) in the unit of the inputs (mm) between (N, J, 3) arrays/tensors,
    after making both root-relative (wrist = joint 0) unless ``relative`` is False."""
    p, g = _np(pred), _np(gt)
    if p.ndim != 3 or p.shape[-1] != 3 or p.shape != g.shape:
        raise ValueError(f"joint_errors: pred {p.shape} and gt {g.shape} must both be (N, J, 3)")
    if relative:
        p, g = root_relative(p), root_relative(g)
    return np.sqrt(((p - g) ** 2).sum(-1))


def _per_keypoint(errors: np.ndarray, visibility: np.ndarray | None) -> list[np.ndarray]:
    errors = np.asarray(errors, np.float64)
    if errors.ndim != 2:
        raise ValueError(f"errors must be (N, J), got {errors.shape}")
    vis = np.ones(errors.shape, bool) if visibility is None else np.asarray(visibility) > 0
    if vis.shape != errors.shape:
        raise ValueError(f"visibility {vis.shape} does not match errors {errors.shape}")
    return [errors[vis[:, k], k] for k in range(errors.shape[1]) if vis[:, k].any()]


def epe(errors: np.ndarray, visibility: np.ndarray | None = None) -> tuple[float, float]:
    """(mean, median) end-point error of (N, J) distances (mm): mean over keypoints of the per-keypoint
    mean / median over visible samples (hand3d ``EvalUtil.get_measures``). NaN when nothing is visible."""
    per_kp = _per_keypoint(errors, visibility)
    if not per_kp:
        return float("nan"), float("nan")
    return float(np.mean([d.mean() for d in per_kp])), float(np.mean([np.median(d) for d in per_kp]))


def pck_curve(errors: np.ndarray, thresholds_mm=PCK_THRESHOLDS_MM, visibility: np.ndarray | None = None
              ) -> np.ndarray:
    """(T,) 3D PCK: mean over keypoints of the fraction of visible samples with error ≤ τ, per threshold."""
    per_kp = _per_keypoint(errors, visibility)
    t = np.asarray(thresholds_mm, np.float64)
    if not per_kp:
        return np.full(t.shape, np.nan)
    return np.mean([(d[:, None] <= t[None, :]).mean(0) for d in per_kp], axis=0)


def auc(thresholds_mm, values) -> float:
    """Normalised area under a PCK curve: trapz(values, τ) / trapz(1, τ) = trapz / (τ_max − τ_min) ∈ [0, 1]
    (hand3d ``calc_auc``). Needs ≥ 2 increasing thresholds."""
    t, v = np.asarray(thresholds_mm, np.float64), np.asarray(values, np.float64)
    if t.ndim != 1 or t.shape != v.shape or len(t) < 2 or np.any(np.diff(t) <= 0):
        raise ValueError(f"auc: need >= 2 increasing thresholds and as many values, got {t.shape} and {v.shape}")
    area = float(np.sum((v[1:] + v[:-1]) * np.diff(t)) / 2.0)
    return area / float(t[-1] - t[0])


def scale_align(pred, gt, bone: tuple[int, int] = SCALE_BONE, root: int = ROOT_JOINT, eps: float = 1e-9
                ) -> tuple[np.ndarray, np.ndarray]:
    """Root-relative (N, J, 3) prediction rescaled to the ground truth's ``bone`` length, and the root-relative
    ground truth (both float64). Scale per sample = ‖g[b] − g[a]‖ / ‖p[b] − p[a]‖ with ``bone = (a, b)``
    (a predicted bone shorter than ``eps`` is divided by ``eps``)."""
    p, g = root_relative(pred, root), root_relative(gt, root)
    a, b = bone
    scale = np.linalg.norm(g[:, b] - g[:, a], axis=-1) / np.maximum(np.linalg.norm(p[:, b] - p[:, a], axis=-1), eps)
    return p * scale[:, None, None], g


def procrustes_errors(pred, gt, weights=None) -> np.ndarray:
    """(N, J) joint errors (mm) of ``pred`` after its per-sample Procrustes alignment onto ``gt``
    (:func:`procrustes_align`, fitted to the ``weights`` points): the errors of the PA-EPE."""
    return joint_errors(procrustes_align(pred, gt, weights), gt, relative=False)


def procrustes_align(pred, gt, weights=None, eps: float = 1e-12) -> np.ndarray:
    """(N, P, 3) ``pred`` mapped onto (N, P, 3) ``gt`` by the least-squares similarity transform, per sample.

    Minimises Σ_i w_i ‖s R p_i + t − g_i‖² over rotations R (det +1, no reflection), scales s > 0 and
    translations t (Umeyama 1991): with weighted centroids μ_p, μ_g and Σ = Σ_i w_i (g_i − μ_g)(p_i − μ_p)ᵀ =
    U D Vᵀ, R = U diag(1, 1, sign det(U Vᵀ)) Vᵀ, s = tr(D diag(1, 1, ±1)) / Σ_i w_i ‖p_i − μ_p‖². ``weights``
    (N, P) ≥ 0 (e.g. visibility) choose the points the transform is fitted to (default: all); every point is
    mapped. A degenerate prediction (all points on one spot) is moved onto μ_g. Returns float64 (N, P, 3).
    """
    p, g = _np(pred), _np(gt)
    if p.ndim != 3 or p.shape[-1] != 3 or p.shape != g.shape:
        raise ValueError(f"procrustes_align: pred {p.shape} and gt {g.shape} must both be (N, P, 3)")
    w = np.ones(p.shape[:2]) if weights is None else _np(weights)
    if w.shape != p.shape[:2]:
        raise ValueError(f"procrustes_align: weights {w.shape} must be {p.shape[:2]}")
    wn = w / np.maximum(w.sum(1, keepdims=True), eps)                       # (N, P), sums to 1
    mu_p = np.einsum("np,npk->nk", wn, p)[:, None]
    mu_g = np.einsum("np,npk->nk", wn, g)[:, None]
    x, y = p - mu_p, g - mu_g
    cov = np.einsum("np,npi,npj->nij", wn, y, x)                            # (N, 3, 3) Σ w (g−μg)(p−μp)ᵀ
    u, d, vt = np.linalg.svd(cov)
    sign = np.sign(np.linalg.det(u @ vt))
    sign[sign == 0] = 1.0
    fix = np.stack([np.ones_like(sign), np.ones_like(sign), sign], -1)        # (N, 3)
    rot = u @ (fix[:, :, None] * vt)                                         # U diag(fix) Vᵀ
    var = np.einsum("np,npk->n", wn, x * x)
    scale = np.where(var > eps, (d * fix).sum(-1) / np.maximum(var, eps), 0.0)
    return scale[:, None, None] * np.einsum("nij,npj->npi", rot, x) + mu_g


def f_scores(pred, gt, thresholds_mm: Sequence[float] = F_THRESHOLDS_MM) -> np.ndarray:
    """(N, T) per-sample F-scores between point sets (N, P, 3) ``pred`` and (N, Q, 3) ``gt`` (FreiHAND's
    ``calculate_fscore``): nearest-neighbour distances both ways, precision = fraction of predicted points with
    distance < τ to the ground truth, recall = fraction of ground-truth points with distance < τ to the
    prediction, F = 2PR / (P + R), 0 when P + R = 0. No point correspondence is used."""
    p, g = _np(pred), _np(gt)
    if p.ndim != 3 or g.ndim != 3 or p.shape[-1] != 3 or g.shape[-1] != 3 or len(p) != len(g):
        raise ValueError(f"f_scores: pred {p.shape} and gt {g.shape} must be (N, P, 3) and (N, Q, 3)")
    t = np.asarray(thresholds_mm, np.float64)
    out = np.zeros((len(p), len(t)))
    for n in range(len(p)):
        d_pred = cKDTree(g[n]).query(p[n])[0]                                # each predicted point -> gt
        d_gt = cKDTree(p[n]).query(g[n])[0]                                  # each gt point -> prediction
        prec = (d_pred[:, None] < t).mean(0)
        rec = (d_gt[:, None] < t).mean(0)
        total = prec + rec
        out[n] = np.where(total > 0, 2 * prec * rec / np.where(total > 0, total, 1.0), 0.0)
    return out


def _f_key(t: float, what: str) -> str:
    return f"f{t:g}_{what}"


def _joined(parts: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(shape)


class PoseEvaluator:
    """Accumulates per-joint 3D errors over batches and reports EPE / PCK / AUC (hand3d protocol, module doc),
    the scale- and Procrustes-aligned EPE, F-scores and, when meshes are given, the vertex errors.

    Args:
        num_joints: J (21).
        thresholds_mm: PCK grid for ``"pck"`` and ``"auc"`` (default :data:`PCK_THRESHOLDS_MM`, 20-50 mm).
        root_relative: subtract joint 0 (wrist) from prediction and ground truth (default True).
        f_thresholds_mm: F-score thresholds (default :data:`F_THRESHOLDS_MM`, FreiHAND's 5 and 15 mm).
    """

    def __init__(self, num_joints: int = 21, thresholds_mm: Sequence[float] | np.ndarray = PCK_THRESHOLDS_MM,
                 root_relative: bool = True, f_thresholds_mm: Sequence[float] = F_THRESHOLDS_MM) -> None:
        self.num_joints = int(num_joints)
        self.thresholds_mm = np.asarray(thresholds_mm, np.float64)
        self.root_relative = bool(root_relative)
        self.f_thresholds_mm = tuple(float(t) for t in f_thresholds_mm)
        self.reset()

    def reset(self) -> None:
        self._errors: list[np.ndarray] = []
        self._vis: list[np.ndarray] = []
        self._scaled: list[np.ndarray] = []
        self._hand3d_stb: list[np.ndarray] = []   # palm-rooted, scale-aligned (Table 5 as hand3d evaluates STB)
        self._pa: list[np.ndarray] = []
        self._f_joints: list[np.ndarray] = []
        self._mesh: list[np.ndarray] = []       # (B,) mean vertex error, root-aligned
        self._mesh_pa: list[np.ndarray] = []    # (B,) mean vertex error, Procrustes-aligned
        self._f_mesh: list[np.ndarray] = []     # (B, T)

    def update(self, pred, gt, visibility=None, pred_vertices=None, gt_vertices=None) -> None:
        """Add a batch: pred, gt (B, J, 3) mm (arrays or tensors); visibility (B, J) {0, 1} or None (all);
        pred_vertices / gt_vertices (B, V, 3) mm in the frames of pred / gt (any origin: each mesh is moved by
        its own skeleton's joint 0), or None. Ground-truth meshes holding NaN are samples without a mesh."""
        err = joint_errors(pred, gt, self.root_relative)
        if err.shape[1] != self.num_joints:
            raise ValueError(f"PoseEvaluator: expected {self.num_joints} joints, got {err.shape[1]}")
        vis = np.ones(err.shape, bool) if visibility is None else _np(visibility) > 0
        if vis.shape != err.shape:
            raise ValueError(f"PoseEvaluator: visibility {vis.shape} does not match joints {err.shape}")
        p, g = _np(pred), _np(gt)
        self._errors.append(err)
        self._vis.append(vis)
        ps, gs = scale_align(p, g)
        self._scaled.append(np.sqrt(((ps - gs) ** 2).sum(-1)))
        ps, gs = scale_align(palm_rooted(p), palm_rooted(g))
        self._hand3d_stb.append(np.sqrt(((ps - gs) ** 2).sum(-1)))
        pa = procrustes_align(p, g, vis.astype(np.float64))
        self._pa.append(joint_errors(pa, g, relative=False))
        self._f_joints.append(f_scores(pa, g, self.f_thresholds_mm))
        if pred_vertices is None or gt_vertices is None:
            return
        pv, gv = _np(pred_vertices), _np(gt_vertices)
        if pv.ndim != 3 or pv.shape[-1] != 3 or pv.shape != gv.shape or len(pv) != len(p):
            raise ValueError(f"PoseEvaluator: pred_vertices {pv.shape} and gt_vertices {gv.shape} must both be "
                             f"(B, V, 3) with B = {len(p)}")
        has = np.all(np.isfinite(gv), axis=(1, 2))
        if not has.any():
            return
        pv, gv, p, g = pv[has], gv[has], p[has], g[has]
        rel_p, rel_g = pv - p[:, ROOT_JOINT:ROOT_JOINT + 1], gv - g[:, ROOT_JOINT:ROOT_JOINT + 1]
        self._mesh.append(np.sqrt(((rel_p - rel_g) ** 2).sum(-1)).mean(-1))
        al = procrustes_align(pv, gv)
        self._mesh_pa.append(np.sqrt(((al - gv) ** 2).sum(-1)).mean(-1))
        self._f_mesh.append(f_scores(al, gv, self.f_thresholds_mm))

    @property
    def count(self) -> int:
        """Number of samples fed so far."""
        return int(sum(len(e) for e in self._errors))

    def errors(self) -> tuple[np.ndarray, np.ndarray]:
        """All (N, J) errors in mm and the (N, J) visibility fed so far."""
        if not self._errors:
            return np.zeros((0, self.num_joints)), np.zeros((0, self.num_joints), bool)
        return np.concatenate(self._errors), np.concatenate(self._vis)

    def compute(self) -> dict:
        """{"epe_mean", "epe_median" (mm), "auc" (on ``thresholds_mm``), "auc_0_50", "pck": {"thresholds_mm",
        "values"}, "count"} (the paper's) + "epe_scaled_mean/_median", "epe_pa_mean/_median", "f{τ}_joints",
        "mesh_error_mean", "mesh_error_pa_mean", "f{τ}_mesh", "mesh_count" (module doc); NaNs (and count 0)
        before any visible joint was fed, mesh values NaN without any ground-truth mesh."""
        err, vis = self.errors()
        mean, median = epe(err, vis)
        curve = pck_curve(err, self.thresholds_mm, vis)
        full = pck_curve(err, PCK_GRID_FULL_MM, vis)
        out = {
            "epe_mean": mean,
            "epe_median": median,
            "auc": auc(self.thresholds_mm, curve) if np.all(np.isfinite(curve)) else float("nan"),
            "auc_0_50": auc(PCK_GRID_FULL_MM, full) if np.all(np.isfinite(full)) else float("nan"),
            "pck": {"thresholds_mm": [float(t) for t in self.thresholds_mm], "values": [float(v) for v in curve]},
            "count": self.count,
        }
        nan = float("nan")
        out["epe_scaled_mean"], out["epe_scaled_median"] = epe(_joined(self._scaled, (0, self.num_joints)), vis)
        out["epe_pa_mean"], out["epe_pa_median"] = epe(_joined(self._pa, (0, self.num_joints)), vis)
        stb = _joined(self._hand3d_stb, (0, self.num_joints))
        stb_curve = pck_curve(stb, PCK_THRESHOLDS_MM, vis)
        out["epe_hand3d_stb_mean"] = epe(stb, vis)[0]
        out["auc_hand3d_stb"] = auc(PCK_THRESHOLDS_MM, stb_curve) if np.all(np.isfinite(stb_curve)) else nan
        nt = len(self.f_thresholds_mm)
        fj = _joined(self._f_joints, (0, nt))
        fm = _joined(self._f_mesh, (0, nt))
        for i, t in enumerate(self.f_thresholds_mm):
            out[_f_key(t, "joints")] = float(fj[:, i].mean()) if len(fj) else nan
        mesh, mesh_pa = _joined(self._mesh, (0,)), _joined(self._mesh_pa, (0,))
        out["mesh_count"] = int(len(mesh))
        out["mesh_error_mean"] = float(mesh.mean()) if len(mesh) else nan
        out["mesh_error_pa_mean"] = float(mesh_pa.mean()) if len(mesh_pa) else nan
        for i, t in enumerate(self.f_thresholds_mm):
            out[_f_key(t, "mesh")] = float(fm[:, i].mean()) if len(fm) else nan
        return out


def pose_metrics(pred, gt, visibility=None, pred_vertices=None, gt_vertices=None, **kwargs) -> dict:
    """Every pose metric of one set in one call: :class:`PoseEvaluator` (``kwargs``) fed once, computed."""
    ev = PoseEvaluator(**kwargs)
    ev.update(pred, gt, visibility, pred_vertices, gt_vertices)
    return ev.compute()


# ---------------------------------------------------------------------------------------------------------
# gestures (§4.3.3)
# ---------------------------------------------------------------------------------------------------------

def _labels(y, name: str) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D class ids, got shape {y.shape}")
    return y


def accuracy(y_true, y_pred) -> float:
    """Fraction of equal entries of two 1-D label arrays (NaN when empty)."""
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"accuracy: y_true {t.shape} and y_pred {p.shape} differ in length")
    return float(np.mean(t == p)) if len(t) else float("nan")


def confusion_matrix(y_true, y_pred, labels: Sequence[int]) -> np.ndarray:
    """(K, K) int64 counts: entry [i, j] = samples of true class labels[i] predicted as labels[j]."""
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"confusion_matrix: y_true {t.shape} and y_pred {p.shape} differ in length")
    labels = list(labels)
    if len(set(labels)) != len(labels):
        raise ValueError(f"confusion_matrix: labels contain duplicates: {labels}")
    index = {lab: i for i, lab in enumerate(labels)}
    for name, y in (("y_true", t), ("y_pred", p)):
        unknown = sorted({v.item() for v in np.unique(y)} - set(index))
        if unknown:
            raise ValueError(f"confusion_matrix: {name} has labels {unknown} not in labels {labels}")
    cm = np.zeros((len(labels), len(labels)), np.int64)
    np.add.at(cm, ([index[v.item()] for v in t], [index[v.item()] for v in p]), 1)
    return cm


def per_class_accuracy(y_true, y_pred, labels: Sequence[int]) -> np.ndarray:
    """(K,) recall per class in ``labels`` order (correct / true count); NaN for a class with no sample."""
    cm = confusion_matrix(y_true, y_pred, labels)
    n = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.diag(cm) / np.maximum(n, 1), np.nan)


def gesture_metrics(y_true, y_pred, labels: Sequence[int]) -> dict:
    """{"accuracy", "per_class_accuracy" (list, NaN = no sample), "confusion" (K×K list), "labels", "count"}."""
    cm = confusion_matrix(y_true, y_pred, labels)
    return {
        "accuracy": accuracy(y_true, y_pred),
        "per_class_accuracy": [float(v) for v in per_class_accuracy(y_true, y_pred, labels)],
        "confusion": cm.tolist(),
        "labels": list(labels),
        "count": int(cm.sum()),
    }

"""Evaluation metrics of §4.3: 3D EPE, 3D PCK and its AUC (pose), accuracy and confusion matrix (gestures).

    from keyhand.metrics import PoseEvaluator, confusion_matrix, gesture_metrics
    ev = PoseEvaluator()
    for batch in loader:
        ev.update(out.joints_3d, batch["joints_3d"])          # (B, 21, 3) mm, any frame: made root-relative
    ev.compute()   # {"epe_mean", "epe_median", "auc", "auc_0_50", "pck": {"thresholds_mm", "values"}, "count"}

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

Gesture metrics (§4.3.3, Table 6): accuracy, per-class accuracy (recall) and the confusion matrix
(rows = true class, columns = predicted class, in the order of ``labels``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["PCK_GRID_FULL_MM", "PCK_THRESHOLDS_MM", "ROOT_JOINT", "root_relative", "joint_errors", "epe",
           "pck_curve", "auc", "PoseEvaluator", "accuracy", "confusion_matrix", "per_class_accuracy",
           "gesture_metrics"]

#: hand3d ``get_measures(0.0, 0.050, 20)`` grid in mm: 20 thresholds 0, 2.632, …, 50.
PCK_GRID_FULL_MM = np.linspace(0.0, 50.0, 20)
#: hand3d STB "20-50 mm" subset (``eval_full.py``: ``threshs[8:]``): 12 thresholds 21.053 … 50 mm.
PCK_THRESHOLDS_MM = PCK_GRID_FULL_MM[8:]
ROOT_JOINT = 0


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


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


class PoseEvaluator:
    """Accumulates per-joint 3D errors over batches and reports EPE / PCK / AUC (hand3d protocol, module doc).

    Args:
        num_joints: J (21).
        thresholds_mm: PCK grid for ``"pck"`` and ``"auc"`` (default :data:`PCK_THRESHOLDS_MM`, 20-50 mm).
        root_relative: subtract joint 0 (wrist) from prediction and ground truth (default True).
    """

    def __init__(self, num_joints: int = 21, thresholds_mm: Sequence[float] | np.ndarray = PCK_THRESHOLDS_MM,
                 root_relative: bool = True) -> None:
        self.num_joints = int(num_joints)
        self.thresholds_mm = np.asarray(thresholds_mm, np.float64)
        self.root_relative = bool(root_relative)
        self.reset()

    def reset(self) -> None:
        self._errors: list[np.ndarray] = []
        self._vis: list[np.ndarray] = []

    def update(self, pred, gt, visibility=None) -> None:
        """Add a batch: pred, gt (B, J, 3) mm (arrays or tensors); visibility (B, J) {0, 1} or None (all)."""
        err = joint_errors(pred, gt, self.root_relative)
        if err.shape[1] != self.num_joints:
            raise ValueError(f"PoseEvaluator: expected {self.num_joints} joints, got {err.shape[1]}")
        vis = np.ones(err.shape, bool) if visibility is None else _np(visibility) > 0
        if vis.shape != err.shape:
            raise ValueError(f"PoseEvaluator: visibility {vis.shape} does not match joints {err.shape}")
        self._errors.append(err)
        self._vis.append(vis)

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
        "values"}, "count"}; NaNs (and count 0) before any visible joint was fed."""
        err, vis = self.errors()
        mean, median = epe(err, vis)
        curve = pck_curve(err, self.thresholds_mm, vis)
        full = pck_curve(err, PCK_GRID_FULL_MM, vis)
        return {
            "epe_mean": mean,
            "epe_median": median,
            "auc": auc(self.thresholds_mm, curve) if np.all(np.isfinite(curve)) else float("nan"),
            "auc_0_50": auc(PCK_GRID_FULL_MM, full) if np.all(np.isfinite(full)) else float("nan"),
            "pck": {"thresholds_mm": [float(t) for t in self.thresholds_mm], "values": [float(v) for v in curve]},
            "count": self.count,
        }


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

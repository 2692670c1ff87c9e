"""Hand-gesture recognition on the estimated 3D joints (§4.3.3, Table 6) and its cross-validation splits.

    from keyhand.model.gesture import GestureClassifier, cv_splits
    clf = GestureClassifier(num_classes=11, hidden=128)
    logits = clf(out.joints_3d.detach())                      # (B, 21, 3) mm -> (B, 11); framework frozen
    for train_idx, test_idx in cv_splits(labels, k=10, seed=0):            # stratified 80/20
        ...
    cv_splits(labels, k=4, subjects=subject_ids, mode="subject")           # subject-exclusive

Classifier (§4.3.3, [33]): ``Linear(63, hidden) → ReLU → Linear(hidden, hidden) → ReLU → Linear(hidden,
num_classes)`` on :func:`normalize_joints` (root-relative, divided by the palm length ‖j₉ − j₀‖: unitless).
Folds (§4.3.3, [9]): ``mode="stratified"`` = k seeded stratified 80/20 shuffle splits (train and test of a fold
never share a sample; test sets of different folds may); ``mode="subject"`` = subject-exclusive folds built in
rounds of shuffled subject groups. Why these readings of the paper, and what they give on RWTH (20 signers) and
Senz3D (4 subjects): docs/gesture_cv.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor, nn

from keyhand.skeleton import MIDDLE_MCP, WRIST

__all__ = ["GestureClassifier", "normalize_joints", "cv_splits", "PALM_JOINTS"]

#: (root, reference) joints of the scale normalisation: wrist and middle-finger MCP (manopth order).
PALM_JOINTS = (WRIST, MIDDLE_MCP)


def normalize_joints(joints: Tensor, eps: float = 1e-6) -> Tensor:
    """(B, 21, 3) joints (any length unit) -> (B, 21, 3) root-relative, divided by the palm length
    ‖j₉ − j₀‖ (unitless; a degenerate palm shorter than ``eps`` is divided by ``eps``)."""
    if joints.dim() != 3 or joints.shape[-1] != 3 or joints.shape[1] <= max(PALM_JOINTS):
        raise ValueError(f"normalize_joints: expected (B, 21, 3) joints, got {tuple(joints.shape)}")
    root, ref = PALM_JOINTS
    rel = joints - joints[:, root:root + 1]
    scale = rel[:, ref].norm(dim=-1).clamp_min(eps)                 # (B,)
    return rel / scale[:, None, None]


class GestureClassifier(nn.Module):
    """Three fully connected layers with ReLU on the 63 normalised joint coordinates (§4.3.3).

    Args:
        num_classes: number of gestures (RWTH 30, Senz3D 11).
        hidden: width of the two hidden layers.
        num_joints: J (21); the input layer has 3·J inputs.
        dropout: dropout before the last layer (0 = none; the paper does not mention any).
    """

    def __init__(self, num_classes: int, hidden: int = 128, num_joints: int = 21, dropout: float = 0.0) -> None:
        super().__init__()
        if num_classes < 2 or hidden < 1 or num_joints < max(PALM_JOINTS) + 1 or not 0 <= dropout < 1:
            raise ValueError(f"GestureClassifier: need num_classes >= 2, hidden >= 1, num_joints >= 10 and "
                             f"0 <= dropout < 1, got {num_classes}, {hidden}, {num_joints}, {dropout}")
        self.num_classes, self.hidden, self.num_joints = num_classes, hidden, num_joints
        self.net = nn.Sequential(
            nn.Linear(3 * num_joints, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, joints: Tensor) -> Tensor:
        """(B, J, 3) or (B, 3·J) 3D joints (mm from the MANO layer, or any unit) -> (B, num_classes) logits."""
        if joints.dim() == 2:
            joints = joints.reshape(joints.shape[0], -1, 3)
        if joints.dim() != 3 or joints.shape[1:] != (self.num_joints, 3):
            raise ValueError(f"GestureClassifier: expected ({self.num_joints}, 3) joints per sample, "
                             f"got {tuple(joints.shape)}")
        return self.net(normalize_joints(joints).flatten(1))


# ---------------------------------------------------------------------------------------------------------
# cross-validation splits
# ---------------------------------------------------------------------------------------------------------

def _allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Integer test counts per class: proportional to ``counts`` summing to ``total`` (largest remainders),
    each capped at count − 1 so every class keeps a training sample."""
    cap = np.maximum(counts - 1, 0)
    total = int(min(total, cap.sum()))
    quota = counts * (total / counts.sum())
    alloc = np.minimum(np.floor(quota).astype(np.int64), cap)
    rest = quota - alloc
    while alloc.sum() < total:                       # terminates: total <= cap.sum()
        i = int(np.argmax(np.where(alloc < cap, rest, -np.inf)))
        alloc[i] += 1
        rest[i] -= 1.0
    return alloc


def _stratified(labels: np.ndarray, k: int, test_fraction: float, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    classes, inverse = np.unique(labels, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(classes))
    n_test = int(round(test_fraction * len(labels)))
    alloc = _allocate(counts, n_test)
    folds = []
    for f in range(k):
        rng = np.random.default_rng([seed, f])
        test = np.concatenate([rng.permutation(np.flatnonzero(inverse == c))[:alloc[c]] for c in range(len(classes))])
        mask = np.zeros(len(labels), bool)
        mask[test] = True
        folds.append((np.flatnonzero(~mask), np.flatnonzero(mask)))
    return folds


def _subject_groups(order: np.ndarray, sizes: dict, target: float) -> list[list]:
    groups: list[list] = []
    cur: list = []
    cum = 0
    for s in order:
        n = sizes[s]
        if cur and abs(cum + n - target) > abs(cum - target):
            groups.append(cur)
            cur, cum = [], 0
        cur.append(s)
        cum += n
    if cur:
        if groups and cum < target / 2:
            groups[-1].extend(cur)
        else:
            groups.append(cur)
    return groups


def _by_subject(subjects: np.ndarray, k: int, test_fraction: float, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    uniq, inverse = np.unique(subjects, return_inverse=True)
    if len(uniq) < 2:
        raise ValueError(f"cv_splits: mode='subject' needs >= 2 subjects, got {len(uniq)}")
    sizes = dict(enumerate(np.bincount(inverse)))
    target = test_fraction * len(subjects)
    folds: list[tuple[np.ndarray, np.ndarray]] = []
    r = 0
    while len(folds) < k:
        order = np.random.default_rng([seed, r]).permutation(len(uniq))
        for group in _subject_groups(order, sizes, target):
            if len(group) == len(uniq):           # cannot happen with >= 2 subjects, kept as a guard
                continue
            mask = np.isin(inverse, group)
            folds.append((np.flatnonzero(~mask), np.flatnonzero(mask)))
            if len(folds) == k:
                break
        r += 1
    return folds


def cv_splits(labels: Sequence[int] | np.ndarray, k: int = 10, test_fraction: float = 0.2, seed: int = 0,
              subjects: Sequence[int] | np.ndarray | None = None, mode: str = "stratified"
              ) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train_idx, test_idx) pairs of sorted int64 indices, each pair disjoint and covering all samples.

    Args:
        labels: (N,) gesture class ids (≥ 0; -1 = "no gesture" is rejected).
        k: number of folds (paper: 10).
        test_fraction: test share per fold (paper: 0.2), in (0, 1).
        seed: folds are a pure function of (labels, subjects, k, test_fraction, seed, mode).
        subjects: (N,) subject ids, required for ``mode="subject"``.
        mode: "stratified" (k stratified shuffle splits) or "subject" (no subject in both sets); see the
            module docstring for the protocol and why.
    """
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) < 2:
        raise ValueError(f"cv_splits: labels must be 1-D with >= 2 samples, got shape {y.shape}")
    if np.issubdtype(y.dtype, np.number) and np.any(y < 0):
        raise ValueError("cv_splits: labels contain negative ids (-1 = sample without a gesture label)")
    if not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"cv_splits: k must be a positive integer, got {k!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"cv_splits: test_fraction must be in (0, 1), got {test_fraction}")
    if mode == "stratified":
        return _stratified(y, int(k), float(test_fraction), int(seed))
    if mode == "subject":
        if subjects is None:
            raise ValueError("cv_splits: mode='subject' needs subjects")
        s = np.asarray(subjects)
        if s.shape != y.shape:
            raise ValueError(f"cv_splits: subjects {s.shape} must match labels {y.shape}")
        return _by_subject(s, int(k), float(test_fraction), int(seed))
    raise ValueError(f"cv_splits: mode must be 'stratified' or 'subject', got {mode!r}")

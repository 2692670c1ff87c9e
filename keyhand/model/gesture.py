"""Hand-gesture recognition on the estimated 3D joints (§4.3.3, Table 6) and its cross-validation splits.

    from keyhand.model.gesture import GestureClassifier, cv_splits
    clf = GestureClassifier(num_classes=11, hidden=128)
    logits = clf(out.joints_3d.detach())                      # (B, 21, 3) mm -> (B, 11); framework frozen
    for train_idx, test_idx in cv_splits(labels, k=10, seed=0):            # Table 6: 2 × 5 stratified 80/20
        ...
    cv_splits(labels, k=10, subjects=subject_ids, mode="subject")          # min(10, subjects) subject folds

Classifier (§4.3.3, [33]): ``Linear(63, hidden) → ReLU → Linear(hidden, hidden) → ReLU → Linear(hidden,
num_classes)`` on :func:`normalize_joints` (root-relative, divided by the palm length ‖j₉ − j₀‖: unitless).

Folds. ``mode="stratified"`` gives Table 6's numbers, the folds comparable to the paper's (§4.3.3, following
Dibra et al. [9]: "10-fold cross-validation with non-overlapping 80/20 splits for the training and test
sets"). Our reading: every fold is a random stratified 80/20 split whose training and test sets never share a
sample, and "non-overlapping" also asks the folds' test sets to be as disjoint as ten 20 % test sets can be:
10 × 20 % = 200 % of the data, so every sample must be tested twice on average, and the least overlap is
every sample tested exactly twice. keyhand builds k folds as ⌈k / m⌉ repetitions of a stratified partition
into m = ⌊1 / test_fraction⌋ disjoint test sets (0.2 → m = 5: 10 folds = 2 repetitions × 5 disjoint test
fifths, i.e. repeated stratified 5-fold CV), each repetition with its own generator ``default_rng([seed, r])``.
Within a repetition the test sets are disjoint and (for test_fraction = 1/m) cover every sample once; test
sets of different repetitions overlap at random (≈ test_fraction of a test set). Per class a test set holds
⌊n_c/m⌋ or ⌈n_c/m⌉ samples (stratified to within one sample), test sizes differ by at most one, every class
keeps a training sample. Fold f depends only on (seed, f // m): the first folds of k = 5 are those of k = 10.

``mode="subject"`` (beside them, not the paper's protocol): leave-subjects-out, folds = min(k, number of
subjects), every subject in exactly one test fold, train and test subject-disjoint (RWTH's 20 signers with
k = 10: 10 folds of 2 signers; Senz3D's 4 subjects: 4 leave-one-subject-out folds). Why: docs/gesture_cv.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor, nn

from keyhand.skeleton import MIDDLE_MCP, WRIST

__all__ = ["GestureClassifier", "normalize_joints", "cv_splits", "describe_folds", "subject_fold_count",
           "parts_per_repetition", "FOLD_KINDS", "PALM_JOINTS"]

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

#: Fold kinds: "stratified" = the paper-comparable folds of Table 6, "subject" = leave-subjects-out beside them.
FOLD_KINDS = ("stratified", "subject")


def _allocate(counts: np.ndarray, total: int, cap: np.ndarray | None = None) -> np.ndarray:
    """Integer counts per class: proportional to ``counts`` summing to ``total`` (largest remainders), each
    capped at ``cap`` (default count − 1, so that every class keeps a training sample)."""
    cap = np.maximum(counts - 1, 0) if cap is None else np.maximum(np.asarray(cap, np.int64), 0)
    total = int(min(total, cap.sum()))
    quota = counts * (total / counts.sum())
    alloc = np.minimum(np.floor(quota).astype(np.int64), cap)
    rest = quota - alloc
    while alloc.sum() < total:                       # terminates: total <= cap.sum()
        i = int(np.argmax(np.where(alloc < cap, rest, -np.inf)))
        alloc[i] += 1
        rest[i] -= 1.0
    return alloc


def parts_per_repetition(test_fraction: float) -> int:
    """m = ⌊1 / test_fraction⌋ mutually disjoint test sets per repetition of the stratified folds (0.2 → 5)."""
    return max(1, int(np.floor(1.0 / test_fraction + 1e-9)))


def _partition(inverse: np.ndarray, counts: np.ndarray, m: int, test_fraction: float,
               rng: np.random.Generator) -> list[np.ndarray]:
    """One repetition: m disjoint stratified test sets. Class by class (classes in a random order, each
    class's samples shuffled), the class's first T_c samples are dealt round-robin into the m parts,
    continuing the deal where the previous class stopped: per class, every part gets ⌊T_c/m⌋ or ⌈T_c/m⌉,
    and the parts' sizes differ by at most one. T_c = all of the class when m · test_fraction = 1 (0.2),
    else its share of round(m · test_fraction · N) (largest remainders); capped so that every part leaves
    the class a training sample (a class of one sample is never tested)."""
    cap = np.minimum(counts, m * np.maximum(counts - 1, 0)) if m > 1 else np.maximum(counts - 1, 0)
    take = _allocate(counts, int(round(m * test_fraction * counts.sum())), cap)
    parts: list[list[np.ndarray]] = [[] for _ in range(m)]
    offset = 0
    for c in rng.permutation(len(counts)):
        idx = rng.permutation(np.flatnonzero(inverse == c))[:take[c]]
        slot = (offset + np.arange(len(idx))) % m
        for j in range(m):
            parts[j].append(idx[slot == j])
        offset += len(idx)
    return [np.concatenate(p) if p else np.zeros(0, np.int64) for p in parts]


def _split(test: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros(n, bool)
    mask[test] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _stratified(labels: np.ndarray, k: int, test_fraction: float, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Repeated stratified partitions: fold f is part ``f % m`` of repetition ``f // m`` (generator
    ``default_rng([seed, f // m])``), m = :func:`parts_per_repetition` (module docstring)."""
    _classes, inverse = np.unique(labels, return_inverse=True)
    counts = np.bincount(inverse)
    m = parts_per_repetition(test_fraction)
    folds = []
    for r in range(-(-k // m)):
        for test in _partition(inverse, counts, m, test_fraction, np.random.default_rng([seed, r])):
            if len(folds) < k:
                folds.append(_split(test, len(labels)))
    return folds


def subject_fold_count(subjects: Sequence[int] | np.ndarray, k: int) -> int:
    """Folds of ``mode="subject"``: min(k, number of distinct subjects)."""
    return int(min(k, len(np.unique(np.asarray(subjects)))))


def _by_subject(subjects: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Leave-subjects-out: the subjects split into K = min(k, S) disjoint groups, one test group per fold.
    Subjects (shuffled by ``default_rng([seed])``, then stably sorted by sample count, largest first) go one
    by one to the group with the fewest samples so far (lowest index on ties): groups of near-equal size."""
    uniq, inverse = np.unique(subjects, return_inverse=True)
    if len(uniq) < 2:
        raise ValueError(f"cv_splits: mode='subject' needs >= 2 subjects, got {len(uniq)}")
    if k < 2:
        raise ValueError(f"cv_splits: mode='subject' needs k >= 2 (one fold would test every subject), got {k}")
    n_folds = min(k, len(uniq))
    sizes = np.bincount(inverse)
    order = np.random.default_rng([seed]).permutation(len(uniq))
    order = order[np.argsort(-sizes[order], kind="stable")]
    load = np.zeros(n_folds, np.int64)
    group = np.empty(len(uniq), np.int64)
    for s in order:
        g = int(np.argmin(load))
        group[s] = g
        load[g] += sizes[s]
    return [_split(np.flatnonzero(group[inverse] == g), len(subjects)) for g in range(n_folds)]


def describe_folds(mode: str, k: int, test_fraction: float = 0.2, n_subjects: int | None = None) -> str:
    """One line naming the folds :func:`cv_splits` builds (the stage's output and the report quote it)."""
    if mode == "stratified":
        m = parts_per_repetition(test_fraction)
        reps, pct = -(-k // m), round(100 * test_fraction)
        text = (f"{k} stratified random {100 - pct}/{pct} folds: {reps} repetition{'s' * (reps > 1)} of {m} "
                "disjoint stratified test sets")
        if m * test_fraction > 1 - 1e-9:
            text += " (each sample tested once per repetition)"
        return text + (f"; the last repetition has {k - (reps - 1) * m} of them" if k % m else "")
    if mode == "subject":
        if n_subjects is None:
            return f"leave-subjects-out: min({k}, subjects) folds, each subject in exactly one test fold"
        n = min(k, n_subjects)
        per = n_subjects / n
        who = ("leave-one-subject-out" if n == n_subjects else f"leave-{per:g}-subjects-out" if per == int(per)
               else "leave-subjects-out")
        return (f"{who}: {n} folds = min(cv.folds {k}, {n_subjects} subjects), each subject in exactly one "
                "test fold, train and test subject-disjoint")
    raise ValueError(f"describe_folds: mode must be one of {FOLD_KINDS}, got {mode!r}")


def cv_splits(labels: Sequence[int] | np.ndarray, k: int = 10, test_fraction: float = 0.2, seed: int = 0,
              subjects: Sequence[int] | np.ndarray | None = None, mode: str = "stratified"
              ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train_idx, test_idx) pairs of sorted int64 indices, each pair disjoint and covering all samples.

    ``mode="stratified"``: k folds (Table 6's, paper-comparable; see the module docstring); ``mode="subject"``:
    min(k, subjects) leave-subjects-out folds (:func:`subject_fold_count`; ``test_fraction`` unused).

    Args:
        labels: (N,) gesture class ids (≥ 0; -1 = "no gesture" is rejected).
        k: number of folds (paper: 10).
        test_fraction: test share per stratified fold (paper: 0.2), in (0, 1).
        seed: folds are a pure function of (labels, subjects, k, test_fraction, seed, mode).
        subjects: (N,) subject ids, required for ``mode="subject"``.
        mode: "stratified" or "subject"; see the module docstring for the protocol and why.
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
        return _by_subject(s, int(k), int(seed))
    raise ValueError(f"cv_splits: mode must be 'stratified' or 'subject', got {mode!r}")

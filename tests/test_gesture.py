"""keyhand.model.gesture (§4.3.3): the 3-layer classifier on 3D joints and the cross-validation splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from keyhand.model.gesture import GestureClassifier, cv_splits, normalize_joints

J = 21


def test_classifier_shapes_and_layers():
    clf = GestureClassifier(num_classes=11, hidden=32)
    linears = [m for m in clf.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(63, 32), (32, 32), (32, 11)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in clf.modules()) == 2
    x = torch.randn(5, J, 3) * 50
    assert clf(x).shape == (5, 11)
    assert torch.allclose(clf(x), clf(x.reshape(5, 63)))
    with pytest.raises(ValueError, match="\\(21, 3\\) joints"):
        clf(torch.randn(5, 20, 3))
    with pytest.raises(ValueError, match="num_classes >= 2"):
        GestureClassifier(num_classes=1)


def test_normalisation_invariant_to_translation_scale_and_unit():
    x = torch.randn(4, J, 3) * 40
    n = normalize_joints(x)
    assert torch.allclose(n[:, 0], torch.zeros(4, 3))
    assert torch.allclose(n[:, 9].norm(dim=-1), torch.ones(4))
    moved = x * 0.001 * torch.tensor([2.0, 0.5, 1.0, 3.0])[:, None, None] + torch.randn(4, 1, 3)  # m, resized
    assert torch.allclose(normalize_joints(moved), n, atol=1e-5)
    assert torch.isfinite(normalize_joints(torch.zeros(2, J, 3))).all()


def test_classifier_fits_separable_joint_dataset():
    gen = torch.Generator().manual_seed(0)
    templates = torch.randn(4, J, 3, generator=gen) * 30                # 4 "gestures"
    y = torch.arange(4).repeat_interleave(40)
    x = templates[y] + torch.randn(len(y), J, 3, generator=gen) * 3     # noise in mm
    x = x * (0.7 + 0.6 * torch.rand(len(y), 1, 1, generator=gen)) + torch.randn(len(y), 1, 3, generator=gen) * 200
    torch.manual_seed(0)
    clf = GestureClassifier(num_classes=4, hidden=32)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(clf(x), y)
        loss.backward()
        opt.step()
    assert (clf(x).argmax(1) == y).float().mean() > 0.97
    x_test = templates[y] + torch.randn(len(y), J, 3, generator=gen) * 3 + 500.0
    assert (clf(x_test).argmax(1) == y).float().mean() > 0.9


def _check_disjoint_cover(folds, n):
    for train, test in folds:
        assert len(np.intersect1d(train, test)) == 0
        assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(n))
        assert train.dtype.kind == "i" and np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)


def _test_counts(folds, n):
    """How many folds test each sample."""
    c = np.zeros(n, int)
    for _, test in folds:
        c[test] += 1
    return c


def test_stratified_splits_sizes_stratification_determinism():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 283)
    labels[:3] = 7                                           # a rare class of 3 samples
    folds = cv_splits(labels, k=10, test_fraction=0.2, seed=0)
    assert len(folds) == 10
    _check_disjoint_cover(folds, len(labels))
    counts = np.bincount(labels)
    for train, test in folds:
        assert abs(len(test) - 0.2 * len(labels)) < 1          # 80/20 (to within one sample)
        tc = np.bincount(labels[test], minlength=len(counts))
        assert np.all(np.abs(tc - 0.2 * counts) < 1.0)      # stratified to within one sample per class
        assert np.all(np.bincount(labels[train], minlength=len(counts)) >= 1)
    assert max(len(t) for _, t in folds) - min(len(t) for _, t in folds) <= 1
    tests = {tuple(t) for _, t in folds}
    assert len(tests) == 10                                  # different random test sets
    again = cv_splits(labels, k=10, test_fraction=0.2, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    other = cv_splits(labels, k=10, test_fraction=0.2, seed=1)
    assert not np.array_equal(folds[0][1], other[0][1])
    # a fold depends only on (seed, repetition): the first folds of k=3 are those of k=10
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(cv_splits(labels, k=3), folds[:3], strict=False))


def test_stratified_test_sets_overlap_as_documented():
    """10 × 20 %: two repetitions of 5 disjoint test fifths; every sample tested exactly twice, once per
    repetition; test sets of different repetitions overlap only at random."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 30, 1160)                       # RWTH-sized
    folds = cv_splits(labels, k=10, test_fraction=0.2, seed=0)
    n = len(labels)
    for rep in (folds[:5], folds[5:]):
        assert np.array_equal(_test_counts(rep, n), np.ones(n, int))     # a partition: disjoint, covering
    assert np.array_equal(_test_counts(folds, n), np.full(n, 2))          # the least overlap 200 % allows
    cross = [len(np.intersect1d(a[1], b[1])) / len(a[1]) for a in folds[:5] for b in folds[5:]]
    assert 0.1 < np.mean(cross) < 0.3 and max(cross) < 0.5                # ≈ 20 %: a new random partition
    assert not any(np.array_equal(a[1], b[1]) for a in folds[:5] for b in folds[5:])
    # a count that is not a multiple of 5: the last repetition is partial, still disjoint
    seven = cv_splits(labels, k=7, seed=0)
    assert len(seven) == 7 and set(_test_counts(seven[5:], n)) <= {0, 1}
    # a fraction that is not 1/m: m = 3 disjoint 30 % test sets per repetition, 10 % untested in it
    thirty = cv_splits(labels, k=3, test_fraction=0.3, seed=0)
    assert set(_test_counts(thirty, n)) == {0, 1} and all(abs(len(t) - 0.3 * n) <= 1 for _, t in thirty)


def test_describe_folds():
    from keyhand.model.gesture import describe_folds

    assert describe_folds("stratified", 10, 0.2) == ("10 stratified random 80/20 folds: 2 repetitions of 5 disjoint "
                                                      "stratified test sets (each sample tested once per repetition)")
    assert describe_folds("subject", 10, n_subjects=4).startswith("leave-one-subject-out: 4 folds = min(cv.folds 10, "
                                                                  "4 subjects), each subject in exactly one test fold")
    assert describe_folds("subject", 10, n_subjects=20).startswith("leave-2-subjects-out: 10 folds")
    with pytest.raises(ValueError, match="mode must be"):
        describe_folds("kfold", 10)


def test_stratified_keeps_a_training_sample_per_class():
    labels = np.array([0, 0, 1, 1, 2])
    for train, _test in cv_splits(labels, k=5, test_fraction=0.6):
        assert set(labels[train]) == {0, 1, 2}
    for train, _test in cv_splits(labels, k=10, test_fraction=0.2):
        assert set(labels[train]) == {0, 1, 2}


def _check_subject_folds(folds, subjects, expected, k=10):
    from keyhand.model.gesture import subject_fold_count

    assert len(folds) == expected == subject_fold_count(subjects, k) == min(k, len(set(subjects)))
    _check_disjoint_cover(folds, len(subjects))
    tested = [s for _, test in folds for s in set(subjects[test])]
    assert sorted(tested) == sorted(set(subjects))                       # every subject in exactly one test fold
    for train, test in folds:
        assert not set(subjects[train]) & set(subjects[test])            # train and test subject-disjoint


def test_subject_splits_rwth_like():
    subjects = np.repeat(np.arange(20), 30)
    labels = np.tile(np.arange(30), 20)
    folds = cv_splits(labels, k=10, subjects=subjects, mode="subject", seed=3)
    _check_subject_folds(folds, subjects, 10)                            # min(10 folds, 20 signers)
    for _, test in folds:
        assert len(set(subjects[test])) == 2                             # 2 of 20 equal signers per fold
        assert np.all(np.bincount(labels[test], minlength=30) == 2)     # every subject does every gesture
    again = cv_splits(labels, k=10, subjects=subjects, mode="subject", seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    other = cv_splits(labels, k=10, subjects=subjects, mode="subject", seed=4)
    assert {frozenset(subjects[t]) for _, t in other} != {frozenset(subjects[t]) for _, t in folds}
    # 5 folds asked: 4 signers per fold (20 %)
    _check_subject_folds(cv_splits(labels, k=5, subjects=subjects, mode="subject"), subjects, 5, k=5)


def test_subject_splits_senz3d_four_subjects():
    subjects = np.repeat([10, 11, 12, 13], 33)
    labels = np.tile(np.arange(11), 12)
    folds = cv_splits(labels, k=10, subjects=subjects, mode="subject")
    _check_subject_folds(folds, subjects, 4)                             # leave-one-subject-out, not 10 folds
    assert [len(set(subjects[t])) for _, t in folds] == [1, 1, 1, 1]
    # unequal subjects: min(k, 6) groups of near-equal size, each subject tested once
    subjects = np.repeat(np.arange(6), [50, 10, 10, 40, 30, 60])
    labels = np.zeros(len(subjects), int)
    folds = cv_splits(labels, k=3, subjects=subjects, mode="subject")
    assert len(folds) == 3
    _check_disjoint_cover(folds, len(subjects))
    assert sorted(s for _, t in folds for s in set(subjects[t])) == list(range(6))
    assert sorted(len(t) for _, t in folds) == [60, 70, 70]             # greedy largest-first balancing


def test_cv_split_errors():
    with pytest.raises(ValueError, match="needs subjects"):
        cv_splits([0, 1, 0, 1], mode="subject")
    with pytest.raises(ValueError, match=">= 2 subjects"):
        cv_splits([0, 1, 0, 1], subjects=[1, 1, 1, 1], mode="subject")
    with pytest.raises(ValueError, match="k >= 2"):
        cv_splits([0, 1, 0, 1], k=1, subjects=[1, 1, 2, 2], mode="subject")
    with pytest.raises(ValueError, match="negative ids"):
        cv_splits([0, -1, 1])
    with pytest.raises(ValueError, match="test_fraction"):
        cv_splits([0, 1, 0, 1], test_fraction=1.0)
    with pytest.raises(ValueError, match="mode must be"):
        cv_splits([0, 1, 0, 1], mode="kfold")

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


def test_stratified_splits_sizes_stratification_determinism():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 283)
    labels[:3] = 7                                           # a rare class of 3 samples
    folds = cv_splits(labels, k=10, test_fraction=0.2, seed=0)
    assert len(folds) == 10
    _check_disjoint_cover(folds, len(labels))
    counts = np.bincount(labels)
    for train, test in folds:
        assert len(test) == round(0.2 * len(labels))
        tc = np.bincount(labels[test], minlength=len(counts))
        assert np.all(np.abs(tc - 0.2 * counts) < 1.0)      # stratified to within one sample per class
        assert np.all(np.bincount(labels[train], minlength=len(counts)) >= 1)
    tests = {tuple(t) for _, t in folds}
    assert len(tests) == 10                                  # different random test sets
    again = cv_splits(labels, k=10, test_fraction=0.2, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    other = cv_splits(labels, k=10, test_fraction=0.2, seed=1)
    assert not np.array_equal(folds[0][1], other[0][1])
    # a fold depends only on (seed, fold index): the first folds of k=3 are those of k=10
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(cv_splits(labels, k=3), folds[:3], strict=False))


def test_stratified_keeps_a_training_sample_per_class():
    labels = np.array([0, 0, 1, 1, 2])
    for train, _test in cv_splits(labels, k=5, test_fraction=0.6):
        assert set(labels[train]) == {0, 1, 2}


def test_subject_splits_rwth_like():
    subjects = np.repeat(np.arange(20), 30)
    labels = np.tile(np.arange(30), 20)
    folds = cv_splits(labels, k=10, subjects=subjects, mode="subject", seed=3)
    assert len(folds) == 10
    _check_disjoint_cover(folds, len(labels))
    for train, test in folds:
        assert not set(subjects[train]) & set(subjects[test])            # subject exclusivity
        assert len(test) / len(labels) == pytest.approx(0.2)            # 4 of 20 equal subjects
        assert np.all(np.bincount(labels[test], minlength=30) == 4)     # every subject does every gesture
    first_round = np.concatenate([t for _, t in folds[:5]])
    assert np.array_equal(np.sort(first_round), np.arange(len(labels)))  # 5 folds test each subject once
    again = cv_splits(labels, k=10, subjects=subjects, mode="subject", seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))


def test_subject_splits_senz3d_four_subjects():
    subjects = np.repeat([10, 11, 12, 13], 33)
    labels = np.tile(np.arange(11), 12)
    folds = cv_splits(labels, k=10, subjects=subjects, mode="subject")
    per_fold = [set(subjects[t]) for _, t in folds]
    assert all(len(s) == 1 for s in per_fold)                            # 25 %: one subject per fold
    assert set().union(*per_fold[:4]) == {10, 11, 12, 13}                 # each round is leave-one-subject-out
    # unequal subjects: groups approach 20 % and stay exclusive
    subjects = np.repeat(np.arange(6), [50, 10, 10, 40, 30, 60])
    labels = np.zeros(len(subjects), int)
    for train, test in cv_splits(labels, k=6, subjects=subjects, mode="subject"):
        assert not set(subjects[train]) & set(subjects[test])
        assert 0.04 < len(test) / len(labels) < 0.4


def test_cv_split_errors():
    with pytest.raises(ValueError, match="needs subjects"):
        cv_splits([0, 1, 0, 1], mode="subject")
    with pytest.raises(ValueError, match=">= 2 subjects"):
        cv_splits([0, 1, 0, 1], subjects=[1, 1, 1, 1], mode="subject")
    with pytest.raises(ValueError, match="negative ids"):
        cv_splits([0, -1, 1])
    with pytest.raises(ValueError, match="test_fraction"):
        cv_splits([0, 1, 0, 1], test_fraction=1.0)
    with pytest.raises(ValueError, match="mode must be"):
        cv_splits([0, 1, 0, 1], mode="kfold")

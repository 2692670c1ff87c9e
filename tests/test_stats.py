"""keyhand.stats (bootstrap over seeds and images, paired differences, PCK bands) and keyhand.controls."""

from __future__ import annotations

import numpy as np
import pytest

from keyhand.controls import mean_pose, mean_pose_errors
from keyhand.metrics import joint_errors
from keyhand.stats import bootstrap_mean, paired_difference, pck_band


def _coverage(confidence: float, reps: int = 300, seeds: int = 3, images: int = 40) -> float:
    rng = np.random.default_rng(1)
    hits = 0
    for r in range(reps):
        # per-image EPEs: an image's difficulty shared by every run, a small seed effect, cell noise
        x = (20.0 + 0.5 * rng.standard_normal((seeds, 1)) + 5.0 * rng.standard_normal((1, images))
             + 2.0 * rng.standard_normal((seeds, images)))
        e = bootstrap_mean(x, confidence=confidence, n_boot=400, seed=r)
        hits += e.lo <= 20.0 <= e.hi
    return hits / reps


def test_interval_covers_the_true_mean_at_its_level() -> None:
    assert 0.89 <= _coverage(0.95) <= 0.99
    assert 0.35 <= _coverage(0.5) <= 0.65       # a narrower level covers less: the width is not arbitrary


def test_estimate_fields_and_width_shrinks_with_data() -> None:
    rng = np.random.default_rng(0)
    small = bootstrap_mean(10 + rng.standard_normal((2, 20)))
    large = bootstrap_mean(10 + rng.standard_normal((2, 2000)))
    assert small.seeds == 2 and small.images == 20 and small.lo < small.mean < small.hi
    assert (large.hi - large.lo) < 0.3 * (small.hi - small.lo)
    one = bootstrap_mean(np.arange(10.0))                           # (N,): one seed
    assert one.seeds == 1 and one.mean == 4.5


def test_seed_variance_widens_the_interval() -> None:
    """Two-way resampling: runs that disagree (a seed effect) give a wider interval than images alone."""
    rng = np.random.default_rng(3)
    img = rng.standard_normal(50)
    agree = np.stack([10 + img] * 3)
    disagree = agree + np.array([[-4.0], [0.0], [4.0]])
    a, d = bootstrap_mean(agree), bootstrap_mean(disagree)
    assert a.hi - a.lo < d.hi - d.lo


def test_identical_inputs_differ_by_exactly_zero() -> None:
    x = np.random.default_rng(0).gamma(2.0, 10.0, (3, 48))
    d = paired_difference(x, x.copy())
    assert d.mean == 0.0 and d.lo == 0.0 and d.hi == 0.0 and not d.resolved and d.verdict == "within noise"


def test_known_shift_is_resolved_and_pairing_helps() -> None:
    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 20.0, (3, 48))                             # image difficulty dominates (sd ~ 28 mm)
    shifted = base + 3.0 + 0.5 * rng.standard_normal(base.shape)
    d = paired_difference(shifted, base)
    assert d.resolved and d.lo < 3.0 < d.hi and d.verdict == "resolved"
    a, b = bootstrap_mean(shifted), bootstrap_mean(base)
    assert a.lo < b.hi                                               # unpaired intervals overlap ...
    assert d.hi - d.lo < 0.2 * (b.hi - b.lo)                         # ... the paired one is far narrower
    noise = paired_difference(base + 0.5 * rng.standard_normal(base.shape), base)
    assert not noise.resolved and noise.lo < 0 < noise.hi


def test_one_seed_broadcasts_and_bad_inputs_fail() -> None:
    rng = np.random.default_rng(0)
    runs = rng.normal(50, 5, (3, 10))
    const = rng.normal(60, 5, (1, 10))
    d = paired_difference(const, runs)
    assert d.seeds == 3 and d.mean == pytest.approx((const - runs).mean())
    with pytest.raises(ValueError, match="same test set"):
        paired_difference(runs, runs[:, :5])
    with pytest.raises(ValueError, match="non-finite"):
        bootstrap_mean([1.0, np.nan])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean([1.0, 2.0], confidence=1.5)


def test_pck_band_brackets_the_curve() -> None:
    rng = np.random.default_rng(0)
    e = rng.gamma(3.0, 10.0, (2, 30, 21))
    t = np.linspace(20, 50, 7)
    band = pck_band(e, t)
    pck, lo, hi = (np.array(band[k]) for k in ("pck", "lo", "hi"))
    expected = (e[..., None] <= t).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(pck, expected)
    assert np.all(lo <= pck + 1e-12) and np.all(pck <= hi + 1e-12) and np.all(np.diff(pck) >= 0)
    assert np.any(hi - lo > 0.01)


def test_mean_pose_control() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(0, 30, (40, 21, 3)) + rng.normal(0, 100, (40, 1, 3))   # any global offset
    tmpl = mean_pose(train)
    assert tmpl.shape == (21, 3) and np.allclose(tmpl[0], 0)
    test = rng.normal(0, 30, (8, 21, 3))
    per_image, per_joint = mean_pose_errors(tmpl, test)
    np.testing.assert_allclose(per_joint, joint_errors(np.broadcast_to(tmpl, test.shape), test))
    np.testing.assert_allclose(per_image, per_joint.mean(1))
    same, _ = mean_pose_errors(tmpl, tmpl[None] + 7.0)                          # the template itself: 0 mm
    assert np.allclose(same, 0)
    with pytest.raises(ValueError, match="no training joints"):
        mean_pose(np.zeros((0, 21, 3)))


def test_compare_rows_pairs_each_row_with_the_base() -> None:
    from keyhand.stats import compare_rows

    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 20.0, (2, 30))
    table = compare_rows({"base": base, "same": base.copy(), "worse": base + 10.0, "mean_pose": base[:1] + 30})
    assert table["base"]["vs_base"] is None and table["base"]["lo"] < table["base"]["mean"] < table["base"]["hi"]
    assert table["same"]["vs_base"]["verdict"] == "within noise" and table["same"]["vs_base"]["hi"] == 0.0
    assert table["worse"]["vs_base"]["resolved"] and table["worse"]["vs_base"]["mean"] == pytest.approx(10.0)
    assert table["mean_pose"]["seeds"] == 1 and table["mean_pose"]["vs_base"]["seeds"] == 2

"""§4.2 augmentation: appearance only, seeded, up to four groups, each group within its stated range."""

from __future__ import annotations

import pickle
from collections import Counter

import cv2
import numpy as np
import pytest

from keyhand.data.augment import GROUPS, Augmenter


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A textured image with values in [40, 160] (no clipping for ±20 or ×1.5; no exact 0 or 255)."""
    rng = np.random.default_rng(0)
    low = cv2.resize(rng.uniform(40, 160, (8, 8, 3)).astype(np.float32), (128, 96),
                     interpolation=cv2.INTER_CUBIC)
    img = np.clip(low + rng.normal(0, 15, low.shape), 40, 160)
    return img.astype(np.uint8)


def test_shape_dtype_and_input_untouched(image):
    aug = Augmenter(seed=0, min_groups=4)
    before = image.copy()
    for i in range(10):
        out = aug(image, i)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert not np.array_equal(out, image)
    np.testing.assert_array_equal(image, before)
    ro = image.copy()
    ro.flags.writeable = False  # a memory-mapped cache row
    assert aug(ro, 3).shape == image.shape


def test_deterministic_given_seed_and_key(image):
    a, b = Augmenter(seed=7), Augmenter(seed=7)
    c = pickle.loads(pickle.dumps(a))
    for i in range(20):
        np.testing.assert_array_equal(a(image, i), b(image, i))
        np.testing.assert_array_equal(a(image, (2, i)), c(image, (2, i)))
    # Order of calls does not matter; other seeds / epochs give other draws.
    np.testing.assert_array_equal(a(image, 5), Augmenter(seed=7)(image, 5))
    plans = {tuple(Augmenter(seed=s).plan(1)) for s in range(20)}
    assert len(plans) > 5
    assert [a.plan((0, i)) for i in range(20)] != [a.plan((1, i)) for i in range(20)]


def test_up_to_four_distinct_groups():
    aug = Augmenter(seed=0)
    ks = Counter()
    for i in range(500):
        plan = aug.plan(i)
        groups = [g for g, _ in plan]
        assert len(groups) == len(set(groups)) <= 4
        assert groups == [g for g in GROUPS if g in groups]  # canonical order
        ks[len(plan)] += 1
    assert set(ks) == {0, 1, 2, 3, 4} and min(ks.values()) > 60  # k uniform in {0..4}
    assert len(Augmenter(seed=0, min_groups=4).plan(0)) == 4


def test_disabled_is_identity(image):
    for aug in (Augmenter(enabled=False), Augmenter(groups=()), Augmenter(max_groups=0)):
        assert all(aug(image, i) is image for i in range(5))
        assert aug.plan(0) == []


def test_blur_smooths(image):
    aug = Augmenter()
    sharp = cv2.Laplacian(image, cv2.CV_32F).std()
    for alt in aug.alternatives("blur"):
        for i in range(5):
            out = aug.apply(image, "blur", alt, np.random.default_rng(i))
            assert cv2.Laplacian(out, cv2.CV_32F).std() < 0.6 * sharp
            assert abs(float(out.mean()) - float(image.mean())) < 2


def test_noise_std_and_channel_sharing(image):
    aug = Augmenter()
    rng = np.random.default_rng(0)
    d = aug.apply(image, "noise", "per_channel", rng).astype(np.float32) - image
    assert d.std() == pytest.approx(0.05 * 255, rel=0.1) and abs(d.mean()) < 1
    assert not np.allclose(d[..., 0], d[..., 1])
    d = aug.apply(image, "noise", "per_pixel", rng).astype(np.float32) - image
    assert d.std() == pytest.approx(0.05 * 255, rel=0.1)
    np.testing.assert_allclose(d[..., 0], d[..., 1], atol=1)  # one draw per pixel (rounding aside)


def test_occlusion_limits(image):
    aug = Augmenter()
    for i in range(30):
        out = aug.apply(image, "occlusion", "dropout", np.random.default_rng(i))
        black = (out == 0).all(-1)
        assert 0 < black.mean() <= 0.30
        ys, xs = np.nonzero(black)  # one contiguous rectangle
        assert black[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()
        assert np.array_equal(out[~black], image[~black])
        out = aug.apply(image, "occlusion", "salt_pepper", np.random.default_rng(i))
        changed = (out != image).any(-1)
        assert changed.mean() <= 0.20
        assert np.isin(out[changed], [0, 255]).all()


def test_photometric_ranges(image):
    aug = Augmenter()
    img = image.astype(np.float32)
    means = []
    for i in range(30):
        rng = np.random.default_rng(i)
        d = aug.apply(image, "photometric", "add", rng).astype(np.float32) - img
        assert d.max() - d.min() <= 1 and -20.5 <= d.mean() <= 20.5   # one value added everywhere
        ratio = aug.apply(image, "photometric", "multiply", rng).astype(np.float32).mean() / img.mean()
        assert 0.49 <= ratio <= 1.51
        means.append(ratio)
        out = aug.apply(image, "photometric", "contrast", rng).astype(np.float32)
        alpha = (out - 128).std() / (img - 128).std()
        assert 0.48 <= alpha <= 1.52
    assert max(means) - min(means) > 0.5  # the multiplier varies over its range


def test_bad_config_and_input():
    with pytest.raises(ValueError, match="unknown groups"):
        Augmenter(groups=("blur", "warp"))
    with pytest.raises(ValueError, match="30 %"):
        Augmenter(dropout_side=(0.1, 0.8))
    with pytest.raises(ValueError, match="uint8"):
        Augmenter()(np.zeros((4, 4, 3), np.float32), 0)

"""Honest statistics for compared configurations: bootstrap means, paired differences, PCK bands (issue 11).

    from keyhand.stats import bootstrap_mean, paired_difference, pck_band
    errors = np.stack([epe_seed0, epe_seed1, epe_seed2])          # (S seeds, N test images), mm
    m = bootstrap_mean(errors)                 # Estimate(mean, lo, hi) with a 95 % interval
    d = paired_difference(row_errors, base_errors)                # row − base, paired by seed and image
    d.resolved                                 # the interval excludes 0: "resolved", else "within noise"
    band = pck_band(joint_errors, thresholds)  # (S, N, J) per-joint errors -> PCK mean, lo, hi per threshold

Everything is pure numpy. Errors of a configuration are a matrix ``x[s, i]``: seed ``s`` (an independent
training run) and test image ``i``. The estimate is the grand mean (for per-image EPEs with every joint
visible, the paper's EPE: mean over keypoints of the per-keypoint mean equals the mean of per-image means).

**Two-way bootstrap.** Both the training seed and the test image are random draws the number depends on,
so each of ``n_boot`` replicates resamples the seeds with replacement AND the images with replacement (the
same image draw for every seed: an image's difficulty is shared by the runs), and takes the mean of the
resampled cells (multinomial weights; vectorised as ``w_seed · x · w_image``). The interval is the
percentile interval of the replicates. With one seed only the images are resampled (the seed variance is
then unknown: the report says how many seeds each row had). Coverage (tests/test_stats.py): nominal when
the image effect dominates, as with per-image EPEs; conservative (wider) for cells with no shared image
effect; too narrow when the seed-to-seed spread dominates and there are only a few seeds.

**Paired difference.** Two configurations evaluated on the same test images with the same seeds (seed k of
one and seed k of the other start from the same seed value) are compared through ``d[s, i] = a[s, i] − b[s, i]``,
bootstrapped the same way; pairing removes the image difficulty both share, so the interval is much
narrower than the two separate ones. Identical inputs give exactly 0 with a zero-width interval. A
deterministic predictor (the mean pose) has one "seed": its row is broadcast over the other's seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Estimate", "Difference", "bootstrap_mean", "paired_difference", "pck_band", "compare_rows", "DEFAULT_BOOT",
           "DEFAULT_CONFIDENCE"]

DEFAULT_BOOT = 2000
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean with its bootstrap interval: ``mean``, ``lo``, ``hi`` (the input's unit), seeds and images."""

    mean: float
    lo: float
    hi: float
    seeds: int
    images: int
    confidence: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Difference(Estimate):
    """A paired difference ``a − b`` with its interval; ``resolved`` when the interval excludes 0."""

    resolved: bool = False

    @property
    def verdict(self) -> str:
        return "resolved" if self.resolved else "within noise"

    def as_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}


def _matrix(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{name}: expected (seeds, images) errors, got shape {np.shape(x)}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: {int((~np.isfinite(a)).sum())} non-finite errors (drop the images without "
                         "ground truth first)")
    return a


def _weights(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """(n_boot, n) bootstrap multiplicities divided by n (each row sums to 1)."""
    if n == 1:
        return np.ones((n_boot, 1))
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot) / n


def _replicates(x: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot,) means of two-way resampled matrices (module docstring)."""
    rng = np.random.default_rng(seed)
    ws = _weights(rng, x.shape[0], n_boot)
    wi = _weights(rng, x.shape[1], n_boot)
    return np.einsum("bs,sn,bn->b", ws, x, wi)


def _interval(reps: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(reps, [alpha, 1 - alpha])
    return float(lo), float(hi)


def bootstrap_mean(errors, confidence: float = DEFAULT_CONFIDENCE, n_boot: int = DEFAULT_BOOT,
                   seed: int = 0) -> Estimate:
    """Mean of ``errors`` (S, N) or (N,) with its two-way bootstrap ``confidence`` interval."""
    x = _matrix(errors, "errors")
    reps = _replicates(x, n_boot, seed)
    lo, hi = _interval(reps, confidence)
    return Estimate(float(x.mean()), lo, hi, x.shape[0], x.shape[1], confidence)


def paired_difference(a, b, confidence: float = DEFAULT_CONFIDENCE, n_boot: int = DEFAULT_BOOT,
                      seed: int = 0) -> Difference:
    """``mean(a − b)`` paired by seed and image, with its interval (module docstring).

    ``a`` and ``b``: (S, N) errors on the same N images; seed k of one pairs with seed k of the other (the
    first min(S_a, S_b) seeds are used); a one-seed input is broadcast over the other's seeds.
    """
    x, y = _matrix(a, "a"), _matrix(b, "b")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"paired_difference: a has {x.shape[1]} images and b {y.shape[1]}: not the same test set")
    if x.shape[0] == 1 and y.shape[0] > 1:
        x = np.repeat(x, y.shape[0], axis=0)
    elif y.shape[0] == 1 and x.shape[0] > 1:
        y = np.repeat(y, x.shape[0], axis=0)
    s = min(x.shape[0], y.shape[0])
    d = x[:s] - y[:s]
    reps = _replicates(d, n_boot, seed)
    lo, hi = _interval(reps, confidence)
    return Difference(float(d.mean()), lo, hi, s, d.shape[1], confidence, resolved=bool(lo > 0 or hi < 0))


def pck_band(joint_errors, thresholds_mm: Sequence[float], confidence: float = DEFAULT_CONFIDENCE,
             n_boot: int = 1000, seed: int = 0) -> dict[str, list[float]]:
    """3D PCK curve with a band: ``joint_errors`` (S, N, J) mm (or (N, J)) -> ``{"thresholds_mm", "pck",
    "lo", "hi"}``. PCK(τ) per image is the fraction of its J joints within τ (inclusive, as
    :func:`keyhand.metrics.pck_curve` with every joint visible); seeds and images are resampled as in
    :func:`bootstrap_mean`, one draw for all thresholds (the band of a curve, pointwise percentiles)."""
    e = np.asarray(joint_errors, dtype=np.float64)
    if e.ndim == 2:
        e = e[None]
    if e.ndim != 3 or not np.isfinite(e).all():
        raise ValueError(f"joint_errors: expected finite (seeds, images, joints), got shape {np.shape(joint_errors)}")
    t = np.asarray(thresholds_mm, dtype=np.float64)
    per_image = (e[..., None] <= t).mean(axis=2)              # (S, N, T)
    rng = np.random.default_rng(seed)
    ws = _weights(rng, e.shape[0], n_boot)
    wi = _weights(rng, e.shape[1], n_boot)
    reps = np.einsum("bs,snt,bn->bt", ws, per_image, wi)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(reps, [alpha, 1 - alpha], axis=0)
    return {"thresholds_mm": t.tolist(), "pck": per_image.mean(axis=(0, 1)).tolist(), "lo": lo.tolist(),
            "hi": hi.tolist()}


def compare_rows(errors: dict[str, np.ndarray], base: str = "base", confidence: float = DEFAULT_CONFIDENCE,
                 n_boot: int = DEFAULT_BOOT, seed: int = 0) -> dict[str, dict]:
    """Every row's mean with its interval, and its paired difference to ``base`` (the rows' shared baseline).

    ``errors``: ``{row: (S, N) per-image errors}`` on the same N test images (seed k of every row trained from
    the same seed value). Returns ``{row: {"mean", "lo", "hi", "seeds", "images", "confidence",
    "vs_base": {"mean", "lo", "hi", "resolved", "verdict", ...} | None}}`` (None for the base itself or when
    there is no base row).
    """
    out: dict[str, dict] = {}
    ref = errors.get(base)
    for row, x in errors.items():
        est = bootstrap_mean(x, confidence, n_boot, seed).as_dict()
        diff = None
        if ref is not None and row != base:
            diff = paired_difference(x, ref, confidence, n_boot, seed).as_dict()
        out[row] = {**est, "vs_base": diff}
    return out

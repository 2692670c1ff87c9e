"""Honest statistics for compared configurations: bootstrap means, paired differences, PCK bands (issue 11;
the seed rule and the block bootstrap: issue 19).

    from keyhand.stats import bootstrap_mean, paired_difference, pck_band
    errors = np.stack([epe_seed0, epe_seed1, epe_seed2])          # (S seeds, N test images), mm
    m = bootstrap_mean(errors)                 # Estimate(mean, lo, hi) with a 95 % interval
    d = paired_difference(row_errors, base_errors)                # row − base, paired by seed and image
    d.verdict                                  # "resolved" / "within noise" / "no verdict" (< 3 seeds)
    band = pck_band(joint_errors, thresholds)  # (S, N, J) per-joint errors -> PCK mean, lo, hi per threshold
    m = bootstrap_mean(errors, groups=sequence_of_each_image)     # video frames: block bootstrap (below)

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

**Block bootstrap for video frames** (``groups``: the sequence of each test image, the images of a sequence in
frame order). Consecutive frames of a video are not independent draws: a hand pose the model gets wrong stays
wrong for many frames, so resampling frames one by one treats 1,500 near-copies as 1,500 samples and the
interval is far too narrow (two sequences of 1,500 frames, STB's test set: simulated 95 % intervals of a null
difference covered 0 in 15-20 % of the datasets in issue 19's simulation, 21-33 % in ours below). With
``groups`` the images are resampled in **non-overlapping blocks of consecutive frames within each sequence**
(Carlstein's block bootstrap; the bootstrap form of the method of batch means): each sequence is cut
into ``k = ceil(L / block)`` blocks of near-equal length (``numpy.array_split``: sizes differ by at most one frame),
each replicate draws ``k`` of its blocks with replacement, and every sequence keeps its share ``L / N`` of the
weight (the design is stratified by sequence: with two sequences, resampling the sequences themselves would
say nothing, so the interval is about frames like these sequences', not about other subjects or backgrounds).
Why these blocks and not moving / circular ones: the variance estimate of non-overlapping blocks is the
textbook batch-means one, whose small-sample behaviour is known exactly, so it can be corrected (next); a
circular block joins a sequence's last frames to its first, and moving blocks under-weight the sequence ends;
the price, a noisier variance estimate than moving blocks' (about 1.5 times the variance, Lahiri 1999), is
what the Student factor below pays for.

*Small-sample correction.* With ``K`` blocks over ``G`` sequences, the bootstrap variance of a sequence's
mean is the between-block variance divided by ``k`` rather than ``k − 1``, and the interval should use a
Student quantile with ``K − G`` degrees of freedom (the batch-means interval, Schmeiser 1982), not the
normal one the percentile interval implies. Both are applied to the image part of every replicate: the
image weights are ``1/N + c_s (w − 1/N)`` with ``c_s = sqrt(k_s / (k_s − 1)) · t_{K−G}(q) / z(q)``, ``q = (1 +
confidence) / 2`` (the replicate mean is linear in the weights, so this scales the image resampling's
deviations exactly, and leaves the seed resampling as it is). Without it the simulated coverage of a 95 %
interval was about 3 points lower (90.2 against 92.8 %, and 91.7 against 94.7 % at STB's size).

*Block length* (``block``: frames per block; :func:`default_block`): by default **10 blocks per sequence**,
``block = ceil(L_max / 10)`` for the longest sequence (STB's test set: 150-frame blocks, 20 blocks, 18
degrees of freedom), one length for every sequence (the correlation time is the video's, not a sequence's).
Why: the bias of a block variance estimate is about ``−(Σ_k |k| γ_k) / block``, so a block must be much
longer than the errors' correlation time, which we do not know (it depends on the model and on how fast the
hand moves); the rates of the asymptotic theory (``N^{1/3}``: 12 frames for 1,500) leave the constant open,
and 12-frame blocks gave 67-80 % coverage in simulation (2 × 1,500 frames, AR(1) errors with correlation
0.95-0.9 from frame to frame). With the Student correction few long blocks stay valid (as the batch size
grows with a fixed number of batches the batch means become independent normal and the t interval exact),
and 10 per sequence (20 for STB) is within the 10-30 batches Schmeiser recommends; the cost is width (t_18
= 2.10 against 1.96), and a test set with short sequences gets short blocks.

*Measured* (one seed per configuration, a null difference: shared image difficulty plus each run's AR(1)
errors with frame-to-frame correlation 0.9; tests/test_stats.py): two sequences of 600 frames, the block
bootstrap's 95 % interval covers 0 in 92.8 % of 600 datasets, the frame-by-frame bootstrap's in 35 %; two of
1,500 (STB's size), 94.7 % against 33 %; correlation 0.95: 94.0 % against 21 % at 1,500 frames, 89 % at 600.
With 3 seeds per configuration the two-way bootstrap also resamples the runs and the block intervals are
conservative (99.7 %; frame by frame 78 %). It is still an approximation: errors correlated over more than a
block make it too narrow, and a test set of one sequence is resampled only within it.

**Paired difference.** Two configurations evaluated on the same test images with the same seeds (seed k of
one and seed k of the other start from the same seed value) are compared through ``d[s, i] = a[s, i] − b[s, i]``,
bootstrapped the same way; pairing removes the image difficulty both share, so the interval is much
narrower than the two separate ones. Identical inputs give exactly 0 with a zero-width interval. A
deterministic predictor (the mean pose) has one "seed": its row is broadcast over the other's seeds.

**No verdict below 3 seeds** (:data:`MIN_SEEDS_FOR_VERDICT`). A difference is "resolved" when its interval
excludes 0, "within noise" when it does not, and "no verdict" when fewer than 3 independent training runs
stand behind it: the difference and its interval are still given, ``resolved`` is None and ``reason`` says
why. With one seed the seed-to-seed variance is not in the interval at all (a run's luck is indistinguishable
from the configuration's effect); with two, the seed resampling has three outcomes, half of the replicates
use a single run, and the interval is still too narrow when the seeds disagree; three is the floor, not a
guarantee. The rule counts the runs of each side that has seed variance: ``verdict_seeds = min(S_a, S_b)``
over the sides that are trained; a side declared ``deterministic`` (the mean-pose control: no training,
no seed, the same predictions whatever the seed) contributes no seed variance, so the mean pose against
a 3-seed base gets a verdict (its seed count is the base's, 3), against a 1-seed base it does not; a trained
row of which one seed finished is broadcast like the mean pose for the estimate, but counts as 1 seed.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Estimate", "Difference", "BlockLayout", "block_layout", "default_block", "bootstrap_mean",
           "paired_difference", "pck_band", "compare_rows", "resampling_note", "DEFAULT_BOOT",
           "DEFAULT_CONFIDENCE", "MIN_SEEDS_FOR_VERDICT", "BLOCKS_PER_SEQUENCE"]

DEFAULT_BOOT = 2000
DEFAULT_CONFIDENCE = 0.95
#: Fewest independent training runs behind a difference for a verdict (module docstring).
MIN_SEEDS_FOR_VERDICT = 3
#: The default block length cuts the longest sequence into this many blocks (module docstring).
BLOCKS_PER_SEQUENCE = 10


@dataclass(frozen=True)
class Estimate:
    """A mean with its bootstrap interval: ``mean``, ``lo``, ``hi`` (the input's unit), seeds and images;
    ``resampling`` "iid" (image by image) or "block" (blocks of ``block`` consecutive frames per sequence)."""

    mean: float
    lo: float
    hi: float
    seeds: int
    images: int
    confidence: float
    resampling: str = "iid"
    block: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Difference(Estimate):
    """A paired difference ``a − b`` with its interval; ``resolved`` when the interval excludes 0, None when
    there is no verdict (``verdict_seeds`` < :data:`MIN_SEEDS_FOR_VERDICT`; ``reason`` says so)."""

    resolved: bool | None = False
    verdict_seeds: int | None = None
    reason: str | None = None

    @property
    def verdict(self) -> str:
        if self.resolved is None:
            return "no verdict"
        return "resolved" if self.resolved else "within noise"

    def as_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}


@dataclass(frozen=True)
class BlockLayout:
    """How :func:`block_layout` cut the test images into blocks: per image its block (``image_block``) and
    sequence (``image_sequence``); per block its sequence (``block_sequence``) and size; per sequence its
    name, length and block count; ``block`` the frames per block."""

    block: int
    names: tuple
    lengths: np.ndarray
    blocks_per_sequence: np.ndarray
    image_block: np.ndarray
    image_sequence: np.ndarray
    block_sequence: np.ndarray
    block_sizes: np.ndarray

    @property
    def images(self) -> int:
        return int(self.image_block.size)

    @property
    def dof(self) -> int:
        """Degrees of freedom of the batch-means variance: blocks minus sequences."""
        return int(self.block_sizes.size - self.lengths.size)

    def describe(self) -> str:
        return (f"blocks of {self.block} consecutive frames within each of {self.lengths.size} sequence(s) "
                f"({int(self.block_sizes.size)} blocks, {self.dof} degrees of freedom)")


def default_block(lengths: Sequence[int]) -> int:
    """Frames per block when none is given: ``ceil(L_max / BLOCKS_PER_SEQUENCE)`` (module docstring)."""
    return max(1, math.ceil(max(int(n) for n in lengths) / BLOCKS_PER_SEQUENCE))


def block_layout(groups, block: int | None = None) -> BlockLayout:
    """Cut the images into blocks: ``groups`` holds each image's sequence (any hashable labels; the images of
    one sequence in frame order, interleaving allowed); each sequence of ``L`` frames is split into
    ``ceil(L / block)`` consecutive blocks of near-equal size. ``block`` None: :func:`default_block`."""
    g = np.asarray(groups)
    if g.ndim != 1 or g.size == 0:
        raise ValueError(f"groups: expected one sequence label per test image, got shape {g.shape}")
    names, inverse = np.unique(g, return_inverse=True)
    lengths = np.bincount(inverse, minlength=names.size)
    b = default_block(lengths) if block is None else int(block)
    if b < 1:
        raise ValueError(f"block must be ≥ 1 frame, got {block}")
    image_block = np.empty(g.size, np.int64)
    block_sequence, block_sizes, per_seq = [], [], []
    for s in range(names.size):
        positions = np.flatnonzero(inverse == s)          # frame order = array order within the sequence
        parts = np.array_split(positions, math.ceil(positions.size / b))
        per_seq.append(len(parts))
        for part in parts:
            image_block[part] = len(block_sizes)
            block_sequence.append(s)
            block_sizes.append(part.size)
    return BlockLayout(b, tuple(names.tolist()), lengths, np.asarray(per_seq), image_block, inverse,
                       np.asarray(block_sequence), np.asarray(block_sizes))


def resampling_note(layout: BlockLayout | None) -> str:
    """A sentence saying how test images were resampled (for ablation.json / evaluate.json)."""
    if layout is None:
        return "test images resampled one by one (independent images)"
    return ("test images resampled in " + layout.describe() + ", Student-corrected (keyhand.stats: "
            "non-overlapping block bootstrap)")


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


def _student_factor(dof: int, confidence: float) -> float:
    from scipy.stats import norm, t

    q = (1 + confidence) / 2
    return float(t.ppf(q, dof) / norm.ppf(q))


def _block_weights(rng: np.random.Generator, layout: BlockLayout, n_boot: int, confidence: float) -> np.ndarray:
    """(n_boot, N) image weights of the Student-corrected non-overlapping block bootstrap (module docstring);
    each row sums to 1, every sequence keeps its share L / N."""
    if layout.dof < 1:
        raise ValueError(f"block bootstrap: {layout.describe()}: every sequence is a single block, so the "
                         "sampling variation of the frames cannot be estimated (use a shorter block)")
    n_blocks = layout.block_sizes.size
    k = layout.blocks_per_sequence
    first = np.concatenate([[0], np.cumsum(k)[:-1]])          # each sequence's first block
    slot_seq = layout.block_sequence                           # one draw per block, within its sequence
    draws = first[slot_seq] + np.floor(rng.random((n_boot, n_blocks)) * k[slot_seq]).astype(np.int64)
    counts = np.bincount((draws + n_blocks * np.arange(n_boot)[:, None]).ravel(),
                         minlength=n_boot * n_blocks).reshape(n_boot, n_blocks).astype(np.float64)
    drawn = np.zeros((n_boot, layout.lengths.size))           # resampled frames per sequence
    np.add.at(drawn.T, slot_seq, (counts * layout.block_sizes).T)
    n = layout.images
    share = layout.lengths / n                                 # each sequence's fixed weight
    seq = layout.image_sequence
    w = counts[:, layout.image_block] * (share / drawn)[:, seq]
    kk = k.astype(np.float64)
    scale = np.where(kk > 1, np.sqrt(kk / np.maximum(kk - 1, 1)), 0.0) * _student_factor(layout.dof, confidence)
    return 1.0 / n + scale[seq] * (w - 1.0 / n)


def _layout(groups, block: int | None, n: int) -> BlockLayout | None:
    if groups is None:
        if block is not None:
            raise ValueError("block given without groups: blocks are cut within the sequences of `groups`")
        return None
    layout = groups if isinstance(groups, BlockLayout) else block_layout(groups, block)
    if layout.images != n:
        raise ValueError(f"groups: {layout.images} labels for {n} test images")
    return layout


def _image_weights(rng: np.random.Generator, n: int, n_boot: int, layout: BlockLayout | None,
                   confidence: float) -> np.ndarray:
    return _weights(rng, n, n_boot) if layout is None else _block_weights(rng, layout, n_boot, confidence)


def _replicates(x: np.ndarray, n_boot: int, seed: int, layout: BlockLayout | None = None,
                confidence: float = DEFAULT_CONFIDENCE) -> np.ndarray:
    """(n_boot,) means of two-way resampled matrices (module docstring)."""
    rng = np.random.default_rng(seed)
    ws = _weights(rng, x.shape[0], n_boot)
    wi = _image_weights(rng, x.shape[1], n_boot, layout, confidence)
    return np.einsum("bs,sn,bn->b", ws, x, wi)


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _interval(reps: np.ndarray, confidence: float) -> tuple[float, float]:
    _check_confidence(confidence)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(reps, [alpha, 1 - alpha])
    return float(lo), float(hi)


def _how(layout: BlockLayout | None) -> dict:
    return {"resampling": "iid", "block": None} if layout is None else {"resampling": "block",
                                                                        "block": layout.block}


def bootstrap_mean(errors, confidence: float = DEFAULT_CONFIDENCE, n_boot: int = DEFAULT_BOOT,
                   seed: int = 0, groups=None, block: int | None = None) -> Estimate:
    """Mean of ``errors`` (S, N) or (N,) with its two-way bootstrap ``confidence`` interval; with ``groups``
    (the sequence of each image) the images are resampled in blocks of ``block`` frames (module docstring)."""
    x = _matrix(errors, "errors")
    _check_confidence(confidence)
    layout = _layout(groups, block, x.shape[1])
    reps = _replicates(x, n_boot, seed, layout, confidence)
    lo, hi = _interval(reps, confidence)
    return Estimate(float(x.mean()), lo, hi, x.shape[0], x.shape[1], confidence, **_how(layout))


def _verdict_seeds(s_a: int, s_b: int, a_deterministic: bool, b_deterministic: bool) -> int | None:
    trained = [s for s, det in ((s_a, a_deterministic), (s_b, b_deterministic)) if not det]
    return min(trained) if trained else None


def paired_difference(a, b, confidence: float = DEFAULT_CONFIDENCE, n_boot: int = DEFAULT_BOOT,
                      seed: int = 0, groups=None, block: int | None = None, *, a_deterministic: bool = False,
                      b_deterministic: bool = False) -> Difference:
    """``mean(a − b)`` paired by seed and image, with its interval and verdict (module docstring).

    ``a`` and ``b``: (S, N) errors on the same N images; seed k of one pairs with seed k of the other (the
    first min(S_a, S_b) seeds are used); a one-seed input is broadcast over the other's seeds. ``groups`` /
    ``block``: as :func:`bootstrap_mean`. ``a_deterministic`` / ``b_deterministic``: that side is a
    deterministic predictor (no seed variance: it does not count against :data:`MIN_SEEDS_FOR_VERDICT`).
    """
    x, y = _matrix(a, "a"), _matrix(b, "b")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"paired_difference: a has {x.shape[1]} images and b {y.shape[1]}: not the same test set")
    runs = _verdict_seeds(x.shape[0], y.shape[0], a_deterministic, b_deterministic)
    if x.shape[0] == 1 and y.shape[0] > 1:
        x = np.repeat(x, y.shape[0], axis=0)
    elif y.shape[0] == 1 and x.shape[0] > 1:
        y = np.repeat(y, x.shape[0], axis=0)
    s = min(x.shape[0], y.shape[0])
    d = x[:s] - y[:s]
    _check_confidence(confidence)
    layout = _layout(groups, block, d.shape[1])
    reps = _replicates(d, n_boot, seed, layout, confidence)
    lo, hi = _interval(reps, confidence)
    resolved: bool | None = bool(lo > 0 or hi < 0)
    reason = None
    if runs is not None and runs < MIN_SEEDS_FOR_VERDICT:
        resolved = None
        reason = f"{runs} seed{'s' if runs != 1 else ''}: a verdict needs ≥ {MIN_SEEDS_FOR_VERDICT}"
    return Difference(float(d.mean()), lo, hi, s, d.shape[1], confidence, **_how(layout), resolved=resolved,
                      verdict_seeds=runs, reason=reason)


def pck_band(joint_errors, thresholds_mm: Sequence[float], confidence: float = DEFAULT_CONFIDENCE,
             n_boot: int = 1000, seed: int = 0, groups=None, block: int | None = None) -> dict[str, list[float]]:
    """3D PCK curve with a band: ``joint_errors`` (S, N, J) mm (or (N, J)) -> ``{"thresholds_mm", "pck",
    "lo", "hi"}``. PCK(τ) per image is the fraction of its J joints within τ (inclusive, as
    :func:`keyhand.metrics.pck_curve` with every joint visible); seeds and images are resampled as in
    :func:`bootstrap_mean` (blocks of frames with ``groups``), one draw for all thresholds (the band of a
    curve, pointwise percentiles)."""
    _check_confidence(confidence)
    e = np.asarray(joint_errors, dtype=np.float64)
    if e.ndim == 2:
        e = e[None]
    if e.ndim != 3 or not np.isfinite(e).all():
        raise ValueError(f"joint_errors: expected finite (seeds, images, joints), got shape {np.shape(joint_errors)}")
    t = np.asarray(thresholds_mm, dtype=np.float64)
    per_image = (e[..., None] <= t).mean(axis=2)              # (S, N, T)
    layout = _layout(groups, block, e.shape[1])
    rng = np.random.default_rng(seed)
    ws = _weights(rng, e.shape[0], n_boot)
    wi = _image_weights(rng, e.shape[1], n_boot, layout, confidence)
    reps = np.einsum("bs,snt,bn->bt", ws, per_image, wi)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(reps, [alpha, 1 - alpha], axis=0)
    return {"thresholds_mm": t.tolist(), "pck": per_image.mean(axis=(0, 1)).tolist(), "lo": lo.tolist(),
            "hi": hi.tolist()}


def compare_rows(errors: dict[str, np.ndarray], base: str = "base", confidence: float = DEFAULT_CONFIDENCE,
                 n_boot: int = DEFAULT_BOOT, seed: int = 0, *, bases: dict[str, str] | None = None, groups=None,
                 block: int | None = None, deterministic: Collection[str] = ()) -> dict[str, dict]:
    """Every row's mean with its interval, and its paired difference to its base row.

    ``errors``: ``{row: (S, N) per-image errors}`` on the same N test images (seed k of every row trained from
    the same seed value). A row's base is ``bases[row]`` when given (the row it differs from), else ``base``.
    ``groups`` / ``block``: the test images' sequences for the block bootstrap (:func:`bootstrap_mean`);
    ``deterministic``: rows without seed variance (the mean-pose control; the verdict rule, module
    docstring). Returns ``{row: {"mean", "lo", "hi", "seeds", "images", "confidence", "resampling", "block",
    "vs_base": {"base", "mean", "lo", "hi", "resolved", "verdict", "verdict_seeds", "reason", ...} | None}}``
    (None for a row that is its own base or whose base has no errors).
    """
    bases = bases or {}
    if groups is None and block is not None:
        raise ValueError("block given without groups: blocks are cut within the sequences of `groups`")
    layout = groups if groups is None or isinstance(groups, BlockLayout) else block_layout(groups, block)
    out: dict[str, dict] = {}
    for row, x in errors.items():
        est = bootstrap_mean(x, confidence, n_boot, seed, groups=layout).as_dict()
        ref = bases.get(row, base)
        diff = None
        if ref != row and ref in errors:
            diff = {"base": ref, **paired_difference(x, errors[ref], confidence, n_boot, seed, groups=layout,
                                                     a_deterministic=row in deterministic,
                                                     b_deterministic=ref in deterministic).as_dict()}
        out[row] = {**est, "vs_base": diff}
    return out

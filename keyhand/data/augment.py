"""Appearance-only data augmentation (paper §4.2).

    from keyhand.data.augment import Augmenter
    aug = Augmenter(seed=0)
    out = aug(image, index)              # (H, W, 3) uint8 → (H, W, 3) uint8, same geometry
    out = aug(image, (epoch, index))     # a fresh draw per epoch, still reproducible
    aug.plan(index)                      # [("blur", "gaussian"), ("photometric", "multiply")]

Reading of §4.2 ("up to four different groups of transformations, randomly selected during each
iteration ... were applied"): per call, ``k`` is drawn uniformly from {0, 1, 2, 3, 4} (imgaug's
``SomeOf((0, 4), ...)``, which the paper's wording follows), ``k`` distinct groups are drawn among the
four, and each chosen group applies one of its alternatives picked uniformly. Chosen groups run in the
paper's order (blur, noise, occlusion, photometric), so noise is never blurred away. The groups:

* blur: Gaussian filter with σ ∈ [1, 3] (``A.GaussianBlur``), or a mean filter with an odd square
  kernel of 3×3 to 9×9 (``A.Blur``);
* noise: additive Gaussian noise N(0, (0.05·255)²), drawn per pixel and channel or once per pixel and
  shared by the channels (``A.GaussNoise``, std = 0.05 of the uint8 range);
* occlusion: one black rectangle covering at most 30 % of the image (``A.CoarseDropout``, height and
  width each 10-54 % of the image side, so ≤ 29.2 % of the pixels), or salt-and-pepper noise on up to
  20 % of the pixels (``A.SaltAndPepper``);
* photometric: add a value in [-20, 20] to every pixel (numpy LUT), change the contrast around mid-grey
  ``128 + α (v − 128)`` with α ∈ [0.5, 1.5] (numpy LUT; albumentations' "contrast" is a plain scaling),
  or multiply the brightness by a factor in [0.5, 1.5] (``A.MultiplicativeNoise``, one scalar).

Only the image changes: the augmenter takes and returns an image, so joints, masks and intrinsics are
untouched by construction. Draws are a function of ``(seed, key)`` only (``key`` an int index, a tuple of
ints such as ``(epoch, index)``, or a ``numpy.random.Generator``), hence the same in any DataLoader worker.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import albumentations as A
import cv2
import numpy as np

__all__ = ["GROUPS", "Augmenter"]

GROUPS = ("blur", "noise", "occlusion", "photometric")

Op = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _albu(transform: A.BasicTransform) -> Op:
    """Wrap an albumentations transform (p=1) so its draws come from our generator."""

    def op(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        seed = int(rng.integers(2**63 - 1))
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        return transform(image=image)["image"]

    return op


def _lut(table: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    lut = np.clip(np.rint(table), 0, 255).astype(np.uint8)
    return lambda image: cv2.LUT(image, lut)


class Augmenter:
    """§4.2 augmentation: up to four randomly chosen groups of appearance transforms.

    Args:
        seed: base seed; every draw is a function of ``(seed, key)``.
        groups: the groups that may be drawn (subset of :data:`GROUPS`); empty = identity.
        max_groups / min_groups: ``k`` is uniform in [min_groups, min(max_groups, len(groups))].
        enabled: False = identity.
        blur_sigma, mean_kernel, noise_std (fraction of 255), dropout_side (fraction range of the image
        side, per axis), salt_pepper (max fraction of pixels), add (max |value|), contrast (α range),
        brightness (multiplier range): the §4.2 ranges, overridable.
    """

    def __init__(self, seed: int = 0, groups: Sequence[str] = GROUPS, max_groups: int = 4,
                 min_groups: int = 0, enabled: bool = True, blur_sigma: tuple[float, float] = (1.0, 3.0),
                 mean_kernel: tuple[int, int] = (3, 9), noise_std: float = 0.05,
                 dropout_side: tuple[float, float] = (0.1, 0.54), salt_pepper: float = 0.2,
                 add: float = 20.0, contrast: tuple[float, float] = (0.5, 1.5),
                 brightness: tuple[float, float] = (0.5, 1.5)) -> None:
        unknown = set(groups) - set(GROUPS)
        if unknown:
            raise ValueError(f"Augmenter: unknown groups {sorted(unknown)}; choose among {GROUPS}")
        if dropout_side[1] ** 2 > 0.3 + 1e-9:
            raise ValueError(f"Augmenter: dropout_side {dropout_side} allows > 30 % occlusion (§4.2)")
        self.seed = int(seed)
        self.groups = tuple(g for g in GROUPS if g in groups)  # canonical order
        self.max_groups, self.min_groups = int(max_groups), int(min_groups)
        self.enabled = bool(enabled)
        self.params = dict(blur_sigma=blur_sigma, mean_kernel=mean_kernel, noise_std=noise_std,
                           dropout_side=dropout_side, salt_pepper=salt_pepper, add=add, contrast=contrast,
                           brightness=brightness)
        self._ops = self._build()

    def _build(self) -> dict[str, dict[str, Op]]:
        p = self.params
        return {
            "blur": {
                "gaussian": _albu(A.GaussianBlur(blur_limit=0, sigma_limit=tuple(p["blur_sigma"]), p=1.0)),
                "mean": _albu(A.Blur(blur_limit=tuple(p["mean_kernel"]), p=1.0)),
            },
            "noise": {
                "per_channel": _albu(A.GaussNoise(std_range=(p["noise_std"],) * 2, per_channel=True, p=1.0)),
                "per_pixel": _albu(A.GaussNoise(std_range=(p["noise_std"],) * 2, per_channel=False, p=1.0)),
            },
            "occlusion": {
                "dropout": _albu(A.CoarseDropout(num_holes_range=(1, 1),
                                                 hole_height_range=tuple(p["dropout_side"]),
                                                 hole_width_range=tuple(p["dropout_side"]), fill=0, p=1.0)),
                "salt_pepper": _albu(A.SaltAndPepper(amount=(0.0, p["salt_pepper"]), p=1.0)),
            },
            "photometric": {
                "add": self._add,
                "contrast": self._contrast,
                "multiply": _albu(A.MultiplicativeNoise(multiplier=tuple(p["brightness"]), per_channel=False,
                                                        elementwise=False, p=1.0)),
            },
        }

    def _add(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        value = rng.uniform(-self.params["add"], self.params["add"])
        return _lut(np.arange(256) + value)(image)

    def _contrast(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        alpha = rng.uniform(*self.params["contrast"])
        return _lut(128.0 + alpha * (np.arange(256) - 128.0))(image)

    def alternatives(self, group: str) -> tuple[str, ...]:
        """The alternatives of one group, e.g. ``("gaussian", "mean")`` for blur."""
        return tuple(self._ops[group])

    def rng(self, key: int | Sequence[int] | np.random.Generator) -> np.random.Generator:
        """The generator for one call: ``default_rng([seed, *key])``, or ``key`` itself if a Generator."""
        if isinstance(key, np.random.Generator):
            return key
        key = [int(key)] if np.isscalar(key) else [int(k) for k in key]
        return np.random.default_rng([self.seed, *key])

    def _plan(self, rng: np.random.Generator) -> list[tuple[str, str]]:
        if not self.enabled or not self.groups:
            return []
        hi = min(self.max_groups, len(self.groups))
        k = int(rng.integers(min(self.min_groups, hi), hi + 1))
        chosen = sorted(rng.choice(len(self.groups), size=k, replace=False).tolist())
        plan = []
        for g in chosen:
            alts = self.alternatives(self.groups[g])
            plan.append((self.groups[g], alts[int(rng.integers(len(alts)))]))
        return plan

    def plan(self, key: int | Sequence[int]) -> list[tuple[str, str]]:
        """The (group, alternative) steps ``__call__(image, key)`` applies, in order."""
        return self._plan(self.rng(key))

    def apply(self, image: np.ndarray, group: str, alternative: str, rng: np.random.Generator) -> np.ndarray:
        """Apply one alternative of one group (for tests and figures)."""
        return self._ops[group][alternative](np.ascontiguousarray(image), rng)

    def __call__(self, image: np.ndarray, key: int | Sequence[int] | np.random.Generator) -> np.ndarray:
        """Augment one (H, W, 3) uint8 RGB image; returns (H, W, 3) uint8 (the input itself if no step)."""
        if image.dtype != np.uint8 or image.ndim != 3:
            raise ValueError(f"Augmenter: expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
        rng = self.rng(key)
        steps = self._plan(rng)
        if not steps:
            return image
        out = np.array(image, copy=True, order="C")  # never write into the caller's (maybe mmapped) array
        for group, alt in steps:
            out = self._ops[group][alt](out, rng)
        return out

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_ops")  # closures over albumentations transforms: rebuilt on unpickling
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._ops = self._build()

    def __repr__(self) -> str:
        return (f"Augmenter(seed={self.seed}, groups={self.groups}, "
                f"k∈[{self.min_groups}, {self.max_groups}], enabled={self.enabled})")

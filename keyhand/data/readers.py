"""Readers for the four real datasets of paper §4.1, all yielding :class:`~keyhand.data.record.HandSample`.

    from keyhand.data.readers import READERS, open_dataset
    reader = open_dataset("stb", "/data/stb", "test")           # or READERS["stb"]("/data/stb", "test")
    len(reader), reader.keys[:3]                                 # stable, naturally sorted keys
    sample = reader[0]                                           # HandSample, image loaded now (lazy)
    reader = open_dataset("senz3d", root, "all", on_corrupt="skip")   # drops unreadable images up front
    box = reader.hand_box(reader[0])                             # gesture readers: (x0, y0, x1, y1) | None

| name   | module                     | paper  | joints | split(s)                        |
|--------|----------------------------|--------|--------|---------------------------------|
| obman  | :mod:`keyhand.data.obman`  | §4.1.1 | 2D+3D  | train / val / test (folders)    |
| stb    | :mod:`keyhand.data.stb`    | §4.1.2 | 2D+3D  | train (B2-B6) / test (B1) / all |
| rwth   | :mod:`keyhand.data.rwth`   | §4.1.3 | none   | all / train / test (80/20)      |
| senz3d | :mod:`keyhand.data.senz3d` | §4.1.4 | none   | all / train / test (80/20)      |

Each module's docstring documents the dataset's genuine on-disk layout, its annotation format and the
conversion to the common record (manopth joint order, OpenCV camera frame, millimetres).

Common behaviour (:class:`DatasetReader`):

* ``root`` missing → :class:`DatasetNotFoundError`, one line: the path, the param (``data.<name>.root``
  in params.yaml) and where the dataset is obtained.
* Index built at construction from the file listing (and the small annotation files where the dataset
  has them); images are decoded only in ``__getitem__``.
* Corrupt images, policy ``on_corrupt``:
  ``"fail"`` (default): ``reader[i]`` raises :class:`DatasetError` naming the file; :meth:`scan` raises
  on the first bad file. ``"skip"``: the constructor calls :meth:`scan`, which decodes every image
  once (minutes for ObMan's 141,550 JPEGs), drops the samples whose image is missing or does not
  decode, lists them in ``reader.skipped`` and emits ONE ``warnings.warn`` with the count and the
  first file names.
  A file that breaks after the scan still raises in ``reader[i]``.
  ObMan's truncated JPEGs are not corrupt: they are read as ObMan's own loader reads them
  (:func:`read_rgb_truncated`, PIL's ``LOAD_TRUNCATED_IMAGES``) and counted (``reader.truncated``).
* Wrong-shaped annotation → :class:`AnnotationError` naming the file and the field (at construction
  for per-sequence label files, in ``reader[i]`` for per-sample files).
* Gesture datasets without a predefined split: ``split="all"`` (the paper's §4.3.3 10-fold CV is made
  by the trainers); ``"train"``/``"test"`` is a deterministic 80/20 hold-out, stratified by class
  (sorted by class then key, every fifth sample is test), so 1,160 RWTH images give 928/232 (§4.1.3).

``READERS`` is a read-only mapping that imports a dataset module on first lookup, so the dataset
modules can import the shared base class from here without an import cycle.
"""

from __future__ import annotations

import importlib
import re
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from keyhand.data.record import DatasetError, DatasetNotFoundError, HandSample

__all__ = ["READERS", "DatasetReader", "open_dataset", "read_rgb", "read_rgb_truncated", "project", "intrinsics_matrix",
           "natural_key", "largest_component", "mask_box", "pad_box", "holdout_split"]

ON_CORRUPT = ("fail", "skip")
#: How many file names the skip warning lists.
WARN_NAMES = 5


def natural_key(text: str) -> tuple:
    """Sort key that orders embedded integers numerically (``SK_color_2`` before ``SK_color_10``)."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file fully into (H, W, 3) uint8 RGB; :class:`DatasetError` naming the file if not."""
    try:
        with Image.open(path) as im:
            im.load()  # full decode: a truncated file fails here, not later
            rgb = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file missing") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"{path}: corrupt or unreadable image ({type(exc).__name__}: {exc})") from None
    return np.ascontiguousarray(rgb, dtype=np.uint8)


_TRUNCATED = threading.Lock()


def read_rgb_truncated(path: Path) -> tuple[np.ndarray, bool]:
    """(RGB image, truncated?): :func:`read_rgb`, and where that fails, the decode PIL gives with
    ``ImageFile.LOAD_TRUNCATED_IMAGES = True`` (what obman_train's ``obman.py`` sets globally: the rows the file
    lacks come out grey). A file PIL cannot read even so (not an image, cut inside its header) raises
    :class:`DatasetError` as :func:`read_rgb` does. The flag is set only for this decode (under a lock)."""
    try:
        return read_rgb(path), False
    except DatasetError:
        if not path.is_file():
            raise
        with _TRUNCATED:
            before = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = True
            try:
                return read_rgb(path), True
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = before


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """(3, 3) float32 pinhole matrix."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], np.float32)


def project(joints_3d: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pinhole projection ``u = fx·x/z + cx``: (N, 3) camera-frame points → (N, 2) float32 px."""
    p = np.asarray(joints_3d, np.float64) @ np.asarray(K, np.float64).T
    return (p[:, :2] / p[:, 2:3]).astype(np.float32)


def largest_component(mask: np.ndarray) -> np.ndarray | None:
    """The largest 8-connected component of a binary mask as uint8 {0, 1}, or None if the mask is empty."""
    m = (np.asarray(mask) > 0).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == best).astype(np.uint8)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box ``(x0, y0, x1, y1)`` (x1, y1 exclusive) of the non-zero pixels, or None."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def pad_box(box: tuple[float, float, float, float], pad: float, width: int, height: int
            ) -> tuple[int, int, int, int] | None:
    """Grow a box by ``pad`` × its larger side on every side and clip it to the image; None if empty."""
    x0, y0, x1, y1 = box
    m = pad * max(x1 - x0, y1 - y0)
    out = (max(0, int(np.floor(x0 - m))), max(0, int(np.floor(y0 - m))),
           min(width, int(np.ceil(x1 + m))), min(height, int(np.ceil(y1 + m))))
    return out if out[2] > out[0] and out[3] > out[1] else None


def holdout_split(items: Sequence[Any], labels: Sequence[int], split: str, test_every: int = 5) -> list:
    """Deterministic stratified hold-out over ``items`` given in a stable order (e.g. sorted by key).

    ``"all"`` keeps every item; otherwise items are ranked by (label, position) and every
    ``test_every``-th of that ranking (the 5th, 10th, ...) is ``"test"``, the rest ``"train"`` (80/20)."""
    if split == "all":
        return list(items)
    order = sorted(range(len(items)), key=lambda i: (labels[i], i))
    test = {i for rank, i in enumerate(order) if rank % test_every == test_every - 1}
    return [items[i] for i in range(len(items)) if (i in test) == (split == "test")]


class DatasetReader(Sequence):
    """Shared index / lazy loading / corrupt-image policy; subclasses implement the dataset format.

    Subclasses set ``name``, ``homepage`` and ``splits`` and implement :meth:`_index` (list of items,
    each with a ``key`` attribute), :meth:`_load` (item → HandSample) and :meth:`_image_files`
    (item → the image files :meth:`scan` must decode).
    """

    name: ClassVar[str] = ""
    homepage: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ()

    def __init__(self, root: str | Path, split: str, on_corrupt: str = "fail") -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetNotFoundError(
                f"{self.name} dataset not found at {self.root}: set data.{self.name}.root in params.yaml "
                f"to the folder holding it (obtain it from {self.homepage})")
        if split not in self.splits:
            raise ValueError(f"{self.name}: split must be one of {self.splits}, got {split!r}")
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"{self.name}: on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}")
        self.split = split
        self.on_corrupt = on_corrupt
        self.skipped: list[str] = []
        self._items = sorted(self._index(), key=lambda it: natural_key(it.key))
        if on_corrupt == "skip":
            self.scan()

    # -- subclass interface ---------------------------------------------------------------------
    def _index(self) -> list:
        raise NotImplementedError

    def _load(self, item: Any) -> HandSample:
        raise NotImplementedError

    def _image_files(self, item: Any) -> list[Path]:
        raise NotImplementedError

    def _decode(self, path: Path) -> None:
        """Decode one file for :meth:`scan` (raise DatasetError if it does not decode)."""
        read_rgb(path)

    # -- public API -----------------------------------------------------------------------------
    @property
    def keys(self) -> list[str]:
        """Sample keys (paths relative to ``root``) in the reader's stable, naturally sorted order."""
        return [it.key for it in self._items]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> HandSample:  # type: ignore[override]
        if not -len(self._items) <= i < len(self._items):
            raise IndexError(f"{self.name}: index {i} out of range for {len(self._items)} samples")
        return self._load(self._items[i])

    def __iter__(self) -> Iterator[HandSample]:
        for item in self._items:
            yield self._load(item)

    def scan(self) -> list[str]:
        """Decode every image once. ``"fail"``: raise on the first bad file. ``"skip"``: drop those samples,
        record them in ``self.skipped`` and warn once. Returns the files skipped by this call."""
        kept, bad = [], []
        for item in self._items:
            broken = None
            for path in self._image_files(item):
                try:
                    self._decode(path)
                except DatasetError:
                    if self.on_corrupt == "fail":
                        raise
                    broken = path
                    break
            if broken is None:
                kept.append(item)
            else:
                bad.append(str(broken))
        self._items = kept
        self.skipped.extend(bad)
        if bad:
            names = ", ".join(Path(b).name for b in bad[:WARN_NAMES])
            names += ", ..." if len(bad) > WARN_NAMES else ""
            warnings.warn(f"{self.name} ({self.split}): skipped {len(bad)} sample(s) with a corrupt or "
                          f"missing image: {names} (full list in reader.skipped)", stacklevel=2)
        return bad

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"


class _Registry(Mapping):
    """``name → reader class``; each dataset module is imported on first lookup (they import this one)."""

    _where = {"obman": ("keyhand.data.obman", "ObManReader"), "stb": ("keyhand.data.stb", "STBReader"),
              "rwth": ("keyhand.data.rwth", "RWTHReader"), "senz3d": ("keyhand.data.senz3d", "Senz3DReader")}

    def __getitem__(self, name: str) -> type[DatasetReader]:
        module, cls = self._where[name]
        return getattr(importlib.import_module(module), cls)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __repr__(self) -> str:
        return f"READERS({', '.join(self._where)})"


#: dataset name → reader class (paper §4.1.1-4.1.4)
READERS = _Registry()


def open_dataset(name: str, root: str | Path, split: str, **opts: Any) -> DatasetReader:
    """Open dataset ``name`` (a key of ``READERS``) at ``root``; ``opts`` go to the reader's constructor."""
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(READERS)}")
    return READERS[name](root, split, **opts)

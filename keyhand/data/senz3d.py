"""Creative Senz3D reader (Memo & Zanuttigh; paper §4.1.4: 11 gestures x 4 people x 30 = 1,320 samples).

    from keyhand.data.senz3d import Senz3DReader
    reader = Senz3DReader("/data/senz3d", "all")
    s = reader[0]          # image (480, 640, 3), depth (240, 320) mm, gesture 0..10, subject "S1"
    box = reader.hand_box(s)   # nearest depth blob mapped onto the colour image, or None

Genuine layout (LTTM, University of Padova, lttm.dei.unipd.it/downloads/gesture; its readme:
"r-depth.bin: Senz3D depth map raw (320 x 240 short 16 bit), r-conf.bin: Senz3D confidence map raw
(320 x 240 short 16 bit), r-color.png: Senz3D color map (640 x 480), where 1 <= r <= 30 is the number
of repetition")::

    root/S{1..4}/G{1..11}/{1..30}-color.png    colour, 640 x 480 (the paper's "320 x 240" is the ToF map)
                          {1..30}-depth.bin    240 rows x 320 columns, int16 little-endian, row-major, mm
                          {1..30}-conf.bin     same shape and type, ToF confidence (amplitude)

The archive unpacks into ``senz3d_dataset/`` holding ``acquisitions/S{1..4}/...`` (the path the dataset's
users read, e.g. ``senz3d_dataset/acquisitions/S1/G11/30-color.png``): the root may be either folder
(``acquisitions/`` or the one it is unpacked in). Keys are relative to the folder holding ``S1..S4``
(``S1/G1/1-color.png``), the same for both roots.

* Class = gesture folder ``G{g}`` → ``gesture = g − 1`` (0..10), ``gesture_name = "G{g}"`` (the dataset
  numbers its gestures, it does not name them); subject = ``S{s}``; ``extra["repetition"] = r``.
* ``depth``: float32 mm; pixels ≤ 0 or ≥ 32000 (the DepthSense saturation / no-return codes 32001,
  32002) are set to 0 = invalid. ``extra["confidence"]``: float32 raw confidence. A ``.bin`` that does
  not hold 320 x 240 int16 raises AnnotationError naming the file and the field.
* Split: ``"all"`` (paper: all samples, 10-fold 80/20 CV in the trainers), or the stratified 80/20
  hold-out ``"train"``/``"test"`` of :func:`keyhand.data.readers.holdout_split`.

hand_box (the paper crops "close to the hand"): valid depth (and confidence ≥ ``min_confidence``) →
nearest depth ``d0`` = 1st percentile of the valid depths (robust to flying pixels) → pixels within
``band_mm`` of ``d0`` → opening → largest connected component → its box in the depth map → mapped to
the colour image, tight (``pad`` 0: the preparation enlarges the crop once, by 20 %). Registration
approximation: the genuine per-device calibration is not distributed with the dataset, so the two cameras
are modelled as co-centred pinholes with the DepthSense 325 datasheet fields of view (depth 74° x 58°,
colour 63.2° x 49.3°; nominal, unverified for the 640 x 480 mode) and the ~25 mm baseline is ignored:
``u_c = cx_c + s_x (u_d − cx_d)`` with ``s_x = f_x,colour / f_x,depth`` (≈ 2.45 for 320 → 640 px), same
for v. The crop's 20 % enlargement (~10 % of the box per side) absorbs the parallax (a few px at arm's
length); pass ``fov=`` to use other values.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from keyhand.data.readers import (
    DatasetReader,
    holdout_split,
    largest_component,
    mask_box,
    natural_key,
    pad_box,
    read_rgb,
)
from keyhand.data.record import AnnotationError, DatasetError, DatasetNotFoundError, HandSample

__all__ = ["Senz3DReader", "read_bin", "depth_box", "depth_box_to_color", "DEPTH_SHAPE", "DS325_FOV"]

DEPTH_SHAPE = (240, 320)  # rows, columns
INVALID_DEPTH = 32000
#: nominal DepthSense 325 fields of view, degrees (horizontal, vertical)
DS325_FOV = {"depth": (74.0, 58.0), "color": (63.2, 49.3)}
_COLOR = re.compile(r"^(\d+)-color\.png$")


def read_bin(path: Path, field: str) -> np.ndarray:
    """One Senz3D ``.bin`` map: (240, 320) int16; AnnotationError naming the file and field if malformed."""
    try:
        raw = np.fromfile(path, dtype="<i2")
    except FileNotFoundError:
        raise DatasetError(f"{path}: {field} file missing") from None
    expected = DEPTH_SHAPE[0] * DEPTH_SHAPE[1]
    if raw.size != expected or path.stat().st_size != 2 * expected:
        raise AnnotationError(f"{path}: field '{field}' must hold {DEPTH_SHAPE[1]}x{DEPTH_SHAPE[0]} int16 "
                              f"({2 * expected} bytes), got {path.stat().st_size} bytes")
    return raw.reshape(DEPTH_SHAPE)


def depth_box(depth: np.ndarray, confidence: np.ndarray | None = None, band_mm: float = 150.0,
              min_confidence: float = 0.0, min_pixels: int = 20) -> tuple[int, int, int, int] | None:
    """Box ``(x0, y0, x1, y1)`` of the nearest depth blob in depth-map pixels, or None (module docstring)."""
    valid = depth > 0
    if confidence is not None:
        valid &= confidence >= min_confidence
    if valid.sum() < min_pixels:
        return None
    d0 = float(np.percentile(depth[valid], 1.0))
    near = (valid & (depth <= d0 + band_mm)).astype(np.uint8)
    near = cv2.morphologyEx(near, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    blob = largest_component(near)
    if blob is None or blob.sum() < min_pixels:
        return None
    return mask_box(blob)


def _focal(size_px: float, fov_deg: float) -> float:
    """Pinhole focal length (px) of an image ``size_px`` wide spanning ``fov_deg``."""
    return (size_px / 2) / math.tan(math.radians(fov_deg) / 2)


def depth_box_to_color(box: tuple[float, float, float, float], depth_size: tuple[int, int],
                       color_size: tuple[int, int], fov: dict = DS325_FOV) -> tuple[float, ...]:
    """Map a depth-map box to colour pixels with the co-centred pinhole approximation (module docstring).

    Sizes are (width, height). Box edges are pixel-edge coordinates (x1, y1 exclusive)."""
    (wd, hd), (wc, hc) = depth_size, color_size
    sx = _focal(wc, fov["color"][0]) / _focal(wd, fov["depth"][0])
    sy = _focal(hc, fov["color"][1]) / _focal(hd, fov["depth"][1])
    x0, y0, x1, y1 = box
    return (wc / 2 + sx * (x0 - wd / 2), hc / 2 + sy * (y0 - hd / 2),
            wc / 2 + sx * (x1 - wd / 2), hc / 2 + sy * (y1 - hd / 2))


@dataclass(frozen=True)
class _Item:
    key: str
    color: Path
    depth: Path
    conf: Path
    subject: int
    gesture: int
    repetition: int


class Senz3DReader(DatasetReader):
    """Creative Senz3D reader (module docstring: layout, binary format, labels, hand box)."""

    name = "senz3d"
    homepage = "https://lttm.dei.unipd.it/downloads/gesture/ (Creative Senz3D, Memo & Zanuttigh)"
    splits = ("all", "train", "test")

    def __init__(self, root: str | Path, split: str = "all", load_depth: bool = True,
                 on_corrupt: str = "fail") -> None:
        self.load_depth = load_depth
        super().__init__(root, split, on_corrupt)

    def _index(self) -> list[_Item]:
        subjects = []
        for base in (self.root, self.root / "acquisitions"):   # acquisitions/ itself, or the folder holding it
            subjects = sorted(p for p in base.glob("S*") if p.is_dir() and p.name[1:].isdigit())
            if subjects:
                break
        if not subjects:
            raise DatasetNotFoundError(
                f"senz3d: no S1..S4 folders in {self.root} nor in {self.root / 'acquisitions'} (expected "
                f"S{{1..4}}/G{{1..11}}/{{1..30}}-color.png): set data.senz3d.root in params.yaml (obtain it from "
                f"{self.homepage})")
        base = subjects[0].parent
        items = []
        for sdir in subjects:
            for gdir in sorted(p for p in sdir.glob("G*") if p.is_dir() and p.name[1:].isdigit()):
                for color in gdir.iterdir():
                    m = _COLOR.match(color.name)
                    if m is None:
                        continue
                    r = m.group(1)
                    gesture = int(gdir.name[1:])
                    items.append(_Item(key=color.relative_to(base).as_posix(), color=color,
                                       depth=gdir / f"{r}-depth.bin", conf=gdir / f"{r}-conf.bin",
                                       subject=int(sdir.name[1:]), gesture=gesture, repetition=int(r)))
        items.sort(key=lambda it: natural_key(it.key))  # stable order before the hold-out
        return holdout_split(items, [it.gesture for it in items], self.split)

    def _image_files(self, item: _Item) -> list[Path]:
        return [item.color]

    def _load(self, item: _Item) -> HandSample:
        depth, extra = None, {"repetition": item.repetition}
        if self.load_depth and item.depth.exists():
            d = read_bin(item.depth, "depth").astype(np.float32)
            d[(d <= 0) | (d >= INVALID_DEPTH)] = 0.0
            depth = d
            if item.conf.exists():
                extra["confidence"] = read_bin(item.conf, "confidence").astype(np.float32)
        return HandSample(
            image=read_rgb(item.color), key=item.key, source=self.name, depth=depth,
            gesture=item.gesture - 1, gesture_name=f"G{item.gesture}", subject=f"S{item.subject}",
            extra=extra,
        ).validate()

    def hand_box(self, sample: HandSample, band_mm: float = 150.0, min_confidence: float = 0.0,
                 pad: float = 0.0, fov: dict = DS325_FOV) -> tuple[int, int, int, int] | None:
        """Nearest-blob box on the colour image, ``(x0, y0, x1, y1)`` px (x1, y1 exclusive), tight unless ``pad``
        (× its larger side, per side) is given, or None."""
        if sample.depth is None:
            return None
        box = depth_box(sample.depth, sample.extra.get("confidence"), band_mm, min_confidence)
        if box is None:
            return None
        h, w = sample.image.shape[:2]
        dh, dw = sample.depth.shape
        return pad_box(depth_box_to_color(box, (dw, dh), (w, h), fov), pad, w, h)

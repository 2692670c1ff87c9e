"""RWTH German Fingerspelling reader (Dreuw et al., 2006; paper §4.1.3: 30 static gestures, 1,160 images).

    from keyhand.data.rwth import RWTHReader
    reader = RWTHReader("/data/rwth", "all")             # static gestures, one camera, one frame per sequence
    RWTHReader("/data/rwth", "all", camera="both")       # both cameras (twice the images)
    s = reader[0]                                        # image, gesture 0..29, gesture_name, subject
    box = reader.hand_box(s)                             # (x0, y0, x1, y1) skin-colour box | None

The database (www-i6.informatik.rwth-aachen.de/~dreuw/fingerspelling.php): 35 gestures of German Sign
Language fingerspelling — A-Z, SCH, Ä, Ö, Ü and the numbers 1-5; J, Z, Ä, Ö and Ü contain motion —
signed by 20 persons, twice (two sessions on different days), recorded by a webcam (320 x 240) and a
camcorder (352 x 288), 25 fps, MPEG-4 (DivX), 1,400 sequences per the database page.

On-disk layout read here (the download unpacks into ``video/`` plus the lists
``i6_data_P20_{BOTH,SESSION_1,SESSION_2}.txt`` and ``scripts/``; sequence ids as used by SignCLIP's
RWTH loader are ``<signer>_<gesture>_<session>_<camera>``)::

    root/video/<signer>_<gesture>_<session>_<camera>.{avi,mpg,mpeg,mp4}     one sequence per file
    root/images/<same stem>.{png,jpg,jpeg,ppm}   optional still frames (e.g. frames you extracted);
                                                 a still replaces the video of the same stem

* A class is a gesture; ``<gesture>`` is the 1-based id in ``root/gesture_ids.txt`` (lines ``N = X``) if
  that file exists, else in :data:`RWTH_GESTURES` (A-Z = 1-26, SCH 27, Ä 28, Ö 29, Ü 30, 1-5 = 31-35 —
  an assumed order, see below), or the letter itself (``3_SCH_1_cam1.png``).
* Subject = signer (``P01``..``P20``); ``extra`` holds session, camera, the source file and frame index.
* ``static_only=True`` (paper): the 30 static classes :data:`RWTH_STATIC` (A-Z without J and Z, SCH,
  1-5), indexed 0..29 in that order; ``False``: all 35 classes, indexed in :data:`RWTH_GESTURES` order.
* One image per sequence: the still, or the video's ``frame`` (``"middle"`` by default — the static
  handshape is held mid-sequence — or an integer index).
* One camera (``camera="cam1"``, the default): the paper's 1,160 images are one recording per signer,
  session and static sign (30 x 20 x 2 = 1,200 sequences per camera), not both viewpoints of it; the second
  camera would put the same performance twice into the set (and across a train/test split).
  ``camera="cam2"`` takes the other one, ``"both"`` (or None) every camera found.
* Split: ``"all"`` (paper §4.3.3 runs its own 10-fold 80/20 CV), or the deterministic stratified 80/20
  ``"train"``/``"test"`` of :func:`keyhand.data.readers.holdout_split` (1,160 → 928/232 as §4.1.3).

Not verified against the real download (it could not be inspected here): the id → letter order, which
camera is ``cam1``, and how [33]/Dreuw picked the 1,160 images (30 x 20 x 2 = 1,200 sequences per
camera; 40 fewer). The reader counts whatever sequences it finds and says so in ``len(reader)``.

hand_box: skin-colour segmentation in YCrCb (Cr 133-173, Cb 77-127, Chai & Ngan 1999), morphological
opening/closing, largest connected component, its tight box (``pad`` 0: the preparation enlarges the crop
once, by 20 %, as for the joint-based crops). In the whole-body camera the face can be the largest skin
blob; a second pass can refine the box with the framework's own silhouette.
"""

from __future__ import annotations

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

__all__ = ["RWTHReader", "RWTH_GESTURES", "RWTH_STATIC", "RWTH_MOTION", "skin_box"]

RWTH_GESTURES = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + ("SCH", "Ä", "Ö", "Ü", "1", "2", "3", "4", "5")
RWTH_MOTION = ("J", "Z", "Ä", "Ö", "Ü")
RWTH_STATIC = tuple(g for g in RWTH_GESTURES if g not in RWTH_MOTION)  # 30 classes
VIDEO_EXTS = (".avi", ".mpg", ".mpeg", ".mp4")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".ppm")
_NAME = re.compile(r"^(\d+)_([^_]+)_(\d+)_(cam\d+)$", re.IGNORECASE)
#: YCrCb skin range (Chai & Ngan 1999)
SKIN_CR, SKIN_CB = (133, 173), (77, 127)


def skin_box(image: np.ndarray, pad: float = 0.0,
             min_area: float = 0.002) -> tuple[int, int, int, int] | None:
    """Box of the largest skin-coloured blob of an RGB image (module docstring), or None."""
    ycrcb = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2YCrCb)
    skin = cv2.inRange(ycrcb, (0, SKIN_CR[0], SKIN_CB[0]), (255, SKIN_CR[1], SKIN_CB[1]))
    skin = cv2.morphologyEx(skin, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    skin = cv2.morphologyEx(skin, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    blob = largest_component(skin)
    if blob is None or blob.sum() < min_area * blob.size:
        return None
    h, w = image.shape[:2]
    return pad_box(mask_box(blob), pad, w, h)


@dataclass(frozen=True)
class _Item:
    key: str
    path: Path
    gesture: int
    gesture_name: str
    subject: str
    session: int
    camera: str


class RWTHReader(DatasetReader):
    """RWTH fingerspelling reader (module docstring: layout, classes, subjects, split, hand box)."""

    name = "rwth"
    homepage = "http://www-i6.informatik.rwth-aachen.de/~dreuw/fingerspelling.php (Dreuw et al., 2006)"
    splits = ("all", "train", "test")

    def __init__(self, root: str | Path, split: str = "all", static_only: bool = True,
                 camera: str | None = "cam1", frame: str | int = "middle", on_corrupt: str = "fail") -> None:
        if not (frame == "middle" or isinstance(frame, int)):
            raise ValueError(f"rwth: frame must be 'middle' or an int, got {frame!r}")
        if camera == "both":
            camera = None
        if camera is not None and not re.fullmatch(r"cam\d+", str(camera)):
            raise ValueError(f"rwth: camera must be 'cam1', 'cam2' or 'both', got {camera!r}")
        self.static_only, self.camera, self.frame = static_only, camera, frame
        self.classes = RWTH_STATIC if static_only else RWTH_GESTURES
        super().__init__(root, split, on_corrupt)

    def _id_names(self) -> tuple[str, ...]:
        path = self.root / "gesture_ids.txt"
        if not path.is_file():
            return RWTH_GESTURES
        names = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                if " = " not in line:
                    raise AnnotationError(f"{path}: line {n} must read 'N = LETTER', got {line!r}")
                names.append(line.split(" = ", 1)[1].strip())
        return tuple(names)

    def _index(self) -> list[_Item]:
        folders = [(self.root / "video", VIDEO_EXTS), (self.root / "images", IMAGE_EXTS)]
        if not any(f.is_dir() for f, _ in folders):
            raise DatasetNotFoundError(
                f"rwth: no {self.root / 'video'} (nor images/) folder: set data.rwth.root in params.yaml "
                f"(obtain the database from {self.homepage})")
        id_names = self._id_names()
        by_stem: dict[str, Path] = {}
        for folder, exts in folders:  # stills (second) replace videos of the same stem
            if folder.is_dir():
                by_stem.update({p.stem: p for p in folder.iterdir() if p.suffix.lower() in exts})
        items = []
        paths = sorted(by_stem.values(), key=lambda p: natural_key(p.relative_to(self.root).as_posix()))
        for path in paths:  # stable order before the hold-out
            m = _NAME.match(path.stem)
            if m is None:
                raise AnnotationError(f"{path}: field 'file name' must read "
                                      "<signer>_<gesture>_<session>_<camera> (e.g. 1_1_1_cam1)")
            signer, token, session, camera = m.groups()
            numeric = token.isdigit() and 0 < int(token) <= len(id_names)
            gesture = id_names[int(token) - 1] if numeric else token
            if gesture not in RWTH_GESTURES:
                raise AnnotationError(f"{path}: field 'gesture' {token!r} is not one of the 35 RWTH gestures")
            if gesture not in self.classes or (self.camera is not None and camera.lower() != self.camera):
                continue
            label = self.classes.index(gesture)
            items.append(_Item(key=path.relative_to(self.root).as_posix(), path=path, gesture=label,
                               gesture_name=gesture, subject=f"P{int(signer):02d}", session=int(session),
                               camera=camera.lower()))
        return holdout_split(items, [it.gesture for it in items], self.split)

    def _image_files(self, item: _Item) -> list[Path]:
        return [item.path]

    def _decode(self, path: Path) -> None:
        self._read(path)

    def _read(self, path: Path) -> tuple[np.ndarray, int]:
        """(RGB image, frame index) of a still or of the configured video frame."""
        if path.suffix.lower() in IMAGE_EXTS:
            return read_rgb(path), 0
        if not path.is_file():
            raise DatasetError(f"{path}: video file missing")
        cap = cv2.VideoCapture(str(path))
        frames = []
        try:
            while cap.isOpened():
                ok, bgr = cap.read()
                if not ok:
                    break
                frames.append(bgr)
        finally:
            cap.release()
        if not frames:
            raise DatasetError(f"{path}: cannot decode video (no frame read)")
        index = len(frames) // 2 if self.frame == "middle" else int(self.frame)
        if not -len(frames) <= index < len(frames):
            raise DatasetError(f"{path}: frame {index} out of range ({len(frames)} frames)")
        return cv2.cvtColor(frames[index], cv2.COLOR_BGR2RGB), index % len(frames)

    def _load(self, item: _Item) -> HandSample:
        image, frame = self._read(item.path)
        return HandSample(
            image=image, key=item.key, source=self.name, gesture=item.gesture, gesture_name=item.gesture_name,
            subject=item.subject,
            extra={"session": item.session, "camera": item.camera, "file": str(item.path), "frame": frame},
        ).validate()

    def hand_box(self, sample: HandSample, pad: float = 0.0) -> tuple[int, int, int, int] | None:
        """Skin-colour box around the hand, ``(x0, y0, x1, y1)`` px (x1, y1 exclusive), tight unless ``pad``
        (× its larger side, per side) is given, or None."""
        return skin_box(sample.image, pad=pad)

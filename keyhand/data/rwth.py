"""RWTH German Fingerspelling reader (Dreuw et al., 2006; paper §4.1.3: 30 static gestures, 1,160 images).

    from keyhand.data.rwth import RWTHReader
    reader = RWTHReader("/data/rwth", "all")             # the paper's 20 signers, static signs, one camera
    RWTHReader("/data/rwth", "all", camera="both")       # both cameras (twice the images)
    RWTHReader(root, "all", signers=None, sessions=[1])  # every signer found, first session only
    reader.summary()                                     # one line: what was found beside the paper's counts
    s = reader[0]                                        # image, gesture 0..29, gesture_name, subject
    box = reader.hand_box(s)                             # (x0, y0, x1, y1) skin-colour box | None

The database (www-i6.informatik.rwth-aachen.de/~dreuw/fingerspelling.php): 35 gestures of German Sign
Language fingerspelling — A-Z, SCH, Ä, Ö, Ü and the numbers 1-5; J, Z, Ä, Ö and Ü contain motion —
signed by 20 persons, twice (two sessions on different days), recorded by a webcam (``cam1``, the dominant
hand, 320 x 240) and a camcorder (``cam2``, the whole body, 352 x 288), 25 fps, MPEG-4 (DivX), 1,400
sequences per the database page. The download holds signers 1-20 (sessions 1 and 2) and signers 23-26
(session 1 only); the paper uses 20 individuals, i.e. signers 1-20 (the default ``signers``).

On-disk layout read here (the download unpacks into ``video/`` plus the id list ``gesture_ids.txt``, the
lists ``i6_data_P20_{BOTH,SESSION_1,SESSION_2}.txt`` and ``scripts/``; sequence ids as SignCLIP's RWTH
loader reads them, ``<signer_id>_<letter_id>_<seq_id>_<camera_id>.mpg``)::

    video/[<any subfolders>/]<signer>_<gesture>_<session>_<camera>.{mpg,mpeg,avi,mp4}   one sequence per file
    images/[<any subfolders>/]<same stem>.{png,jpg,jpeg,ppm}   optional still frames (e.g. frames you
                                                 extracted); a still replaces the video of the same stem
    gesture_ids.txt                              the database's id list, one ``N = NAME`` per line

The root may be the folder the archive unpacks into or any folder above it: ``video/`` and ``images/``
folders (and the root itself when it is one of them) are searched for recursively, and so is
``gesture_ids.txt`` (the one nearest the root). Keys are the paths relative to the root.

* A class is a gesture; ``<gesture>`` is the 1-based id of the database's id list if one is found, else
  of :data:`RWTH_GESTURES`, the database's numbering (A-Z = 1-26, Ä = 27, Ö = 28, Ü = 29, SCH = 30,
  1-5 = 31-35); a name also works in a file name (``3_SCH_1_cam1.png``). The id list names its gestures
  ``A``..``Z``, ``AE``, ``OE``, ``UE``, ``SCH``, ``One``..``Five``; names are read case-insensitively, also
  as ``Ä``/``Ö``/``Ü`` and ``1``..``5``, separated from the id by ``=``, ``:``, ``,``, a tab or spaces
  (UTF-8 or Latin-1). A line or file name that names no RWTH gesture raises AnnotationError naming it.
* Subject = signer (``P01``..``P26``); ``extra`` holds session, camera, the source file and frame index.
* Filters (reader options, params ``data.rwth.signers`` / ``sessions`` / ``camera``): ``signers`` (default
  1-20, the paper's 20 individuals; None = every signer found), ``sessions`` (default 1 and 2; None = all),
  ``camera`` (below).
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
* :meth:`RWTHReader.summary`: the sequences found and kept (signers, sessions, camera, classes) and their
  80/20 sizes beside the paper's 1,160 and 928/232; the prepare stage prints it.

Not verified against the real download (it could not be inspected here): how [33]/Dreuw picked the 1,160
images (30 x 20 x 2 = 1,200 sequences per camera; 40 fewer). The reader counts whatever sequences it finds
and says so in :meth:`~RWTHReader.summary`.

hand_box: skin-colour segmentation in YCrCb (Cr 133-173, Cb 77-127, Chai & Ngan 1999), morphological
opening/closing, largest connected component, its tight box (``pad`` 0: the preparation enlarges the crop
once, by 20 %, as for the joint-based crops). In the whole-body camera the face can be the largest skin
blob; a second pass can refine the box with the framework's own silhouette.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
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

__all__ = ["RWTHReader", "RWTH_GESTURES", "RWTH_STATIC", "RWTH_MOTION", "PAPER_SIGNERS", "gesture_name",
           "read_id_list", "skin_box"]

#: the database's gesture ids 1..35, in order
RWTH_GESTURES = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + ("Ä", "Ö", "Ü", "SCH", "1", "2", "3", "4", "5")
RWTH_MOTION = ("J", "Z", "Ä", "Ö", "Ü")
RWTH_STATIC = tuple(g for g in RWTH_GESTURES if g not in RWTH_MOTION)  # 30 classes
#: how the database's id list (and file names) spell the gestures that are not one letter
ALIASES = {"AE": "Ä", "OE": "Ö", "UE": "Ü", "ONE": "1", "TWO": "2", "THREE": "3", "FOUR": "4", "FIVE": "5"}
#: paper §4.1.3: 20 individuals (the download's signers 1-20), 1,160 images, 928 / 232
PAPER_SIGNERS = tuple(range(1, 21))
PAPER_COUNTS = {"all": 1160, "train": 928, "test": 232}
ID_LIST = "gesture_ids.txt"
VIDEO_EXTS = (".mpg", ".mpeg", ".avi", ".mp4")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".ppm")
FOLDERS = {"video": VIDEO_EXTS, "images": IMAGE_EXTS}
_NAME = re.compile(r"^(\d+)_([^_]+)_(\d+)_(cam\d+)$", re.IGNORECASE)
_ID_LINE = re.compile(r"^\s*(\d+)\s*(?:[=:,;\t]|\s)\s*(\S.*?)\s*$")
#: YCrCb skin range (Chai & Ngan 1999)
SKIN_CR, SKIN_CB = (133, 173), (77, 127)


def gesture_name(token: str) -> str | None:
    """The RWTH gesture a name spells (``"a"``, ``"AE"``, ``"Ä"``, ``"Sch"``, ``"One"``, ``"1"`` ...), or None."""
    t = token.strip().strip("'\"").strip().upper()
    t = ALIASES.get(t, t)
    return t if t in RWTH_GESTURES else None


def read_id_list(path: Path) -> dict[int, str]:
    """The database's id list: ``{id: gesture}`` (module docstring); AnnotationError naming the file and line."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    ids: dict[int, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _ID_LINE.match(line)
        name = gesture_name(m.group(2)) if m else None
        if name is None:
            raise AnnotationError(f"{path}: line {n} must read 'N = NAME' with NAME one of the 35 RWTH gestures "
                                  f"(A-Z, AE, OE, UE, SCH, One-Five), got {line.strip()!r}")
        number = int(m.group(1))
        if number in ids:
            raise AnnotationError(f"{path}: line {n}: id {number} given twice")
        ids[number] = name
    return ids


def _ranges(values: Iterable[int]) -> str:
    """``[1, 2, 3, 5]`` → ``"1-3, 5"``."""
    out: list[str] = []
    for v in sorted(set(values)):
        if out and "-" in out[-1] and int(out[-1].split("-")[1]) == v - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{v}"
        elif out and "-" not in out[-1] and int(out[-1]) == v - 1:
            out[-1] = f"{out[-1]}-{v}"
        else:
            out.append(str(v))
    return ", ".join(out) or "none"


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
                 camera: str | None = "cam1", frame: str | int = "middle", on_corrupt: str = "fail",
                 signers: Iterable[int] | None = PAPER_SIGNERS, sessions: Iterable[int] | None = (1, 2)) -> None:
        if not (frame == "middle" or isinstance(frame, int)):
            raise ValueError(f"rwth: frame must be 'middle' or an int, got {frame!r}")
        if camera == "both":
            camera = None
        if camera is not None and not re.fullmatch(r"cam\d+", str(camera)):
            raise ValueError(f"rwth: camera must be 'cam1', 'cam2' or 'both', got {camera!r}")
        self.signers, self.sessions = self._ids("signers", signers), self._ids("sessions", sessions)
        self.static_only, self.camera, self.frame = static_only, camera, frame
        self.classes = RWTH_STATIC if static_only else RWTH_GESTURES
        self.found: dict[str, set] = {"signers": set(), "sessions": set(), "cameras": set()}
        self.counts: dict[str, int] = {}
        super().__init__(root, split, on_corrupt)

    @staticmethod
    def _ids(field: str, values: Iterable[int] | None) -> frozenset[int] | None:
        if values is None:
            return None
        ids = frozenset(values)
        if not ids or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in ids):
            raise ValueError(f"rwth: {field} must be positive integers (or None = all), got {values!r}")
        return ids

    def _id_names(self) -> dict[int, str]:
        """The database's id list nearest the root, else :data:`RWTH_GESTURES` (module docstring)."""
        lists = []
        for folder, _, files in os.walk(self.root, followlinks=True):
            lists += [Path(folder) / f for f in files if f.lower() == ID_LIST]
        if not lists:
            return dict(enumerate(RWTH_GESTURES, 1))
        return read_id_list(min(lists, key=lambda p: (len(p.parts), str(p))))

    def _files(self) -> list[Path]:
        """Every sequence file under a ``video/`` or ``images/`` folder at any depth (stills replace videos)."""
        found: dict[str, dict[str, Path]] = {"video": {}, "images": {}}
        for folder, _, files in os.walk(self.root, followlinks=True):
            parts = (self.root.name,) + Path(folder).relative_to(self.root).parts
            kind = next((p.lower() for p in reversed(parts) if p.lower() in FOLDERS), None)
            if kind is None:
                continue
            for f in files:
                path = Path(folder) / f
                if path.suffix.lower() not in FOLDERS[kind]:
                    continue
                other = found[kind].setdefault(path.stem, path)
                if other != path:
                    raise AnnotationError(f"{path}: sequence {path.stem} found twice (also {other}): keep one copy "
                                          "under data.rwth.root")
        if not found["video"] and not found["images"]:
            raise DatasetNotFoundError(
                f"rwth: no video/ (nor images/) folder with sequences under {self.root} (expected video/"
                "<signer>_<gesture>_<session>_<camera>.mpg): set data.rwth.root in params.yaml "
                f"(obtain the database from {self.homepage})")
        by_stem = {**found["video"], **found["images"]}
        return sorted(by_stem.values(), key=lambda p: natural_key(p.relative_to(self.root).as_posix()))

    def _index(self) -> list[_Item]:
        id_names = self._id_names()
        items = []
        for path in self._files():  # stable order before the hold-out
            m = _NAME.match(path.stem)
            if m is None:
                raise AnnotationError(f"{path}: field 'file name' must read "
                                      "<signer>_<gesture>_<session>_<camera> (e.g. 1_1_1_cam1)")
            signer, token, session, camera = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4).lower()
            gesture = id_names.get(int(token)) if token.isdigit() else gesture_name(token)
            if gesture is None:
                raise AnnotationError(f"{path}: field 'gesture' {token!r} is not one of the 35 RWTH gestures")
            for field, value in (("signers", signer), ("sessions", session), ("cameras", camera)):
                self.found[field].add(value)
            if (gesture not in self.classes or (self.camera is not None and camera != self.camera)
                    or (self.signers is not None and signer not in self.signers)
                    or (self.sessions is not None and session not in self.sessions)):
                continue
            items.append(_Item(key=path.relative_to(self.root).as_posix(), path=path,
                               gesture=self.classes.index(gesture), gesture_name=gesture, subject=f"P{signer:02d}",
                               session=session, camera=camera))
        if not items:
            raise DatasetError(f"rwth: no sequence under {self.root} matches {self._selection()} (found signers "
                               f"{_ranges(self.found['signers'])}, sessions {_ranges(self.found['sessions'])}, "
                               f"cameras {', '.join(sorted(self.found['cameras']))}): check data.rwth in params.yaml")
        labels = [it.gesture for it in items]
        self.counts = {split: len(holdout_split(items, labels, split)) for split in ("all", "train", "test")}
        return holdout_split(items, labels, self.split)

    def _selection(self) -> str:
        signers = "every signer" if self.signers is None else f"signers {_ranges(self.signers)}"
        sessions = "every session" if self.sessions is None else f"sessions {_ranges(self.sessions)}"
        return f"{signers}, {sessions}, {self.camera or 'both cameras'}, {len(self.classes)} classes"

    def summary(self) -> str:
        """One line: the sequences kept (and their 80/20 sizes) beside the paper's §4.1.3 1,160 and 928/232."""
        c, p = self.counts, PAPER_COUNTS
        return (f"rwth: {c['all']:,} sequences kept ({self._selection()}; 80/20 hold-out {c['train']}/{c['test']}) "
                f"— the paper's §4.1.3: {p['all']:,} images, {p['train']}/{p['test']} (20 signers); found signers "
                f"{_ranges(self.found['signers'])}, sessions {_ranges(self.found['sessions'])}"
                + (f"; {len(self.skipped)} skipped (corrupt or missing)" if self.skipped else ""))

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

"""ObMan reader (Hasson et al., CVPR 2019; paper §4.1.1: SFE pre-training on 141,550 RGB images).

    from keyhand.data.obman import ObManReader
    reader = ObManReader("/data/obman", "train")              # mode="rgb": rgb/, the paper's 141,550
    s = reader[0]   # image (256, 256, 3), joints_3d mm camera frame, joints_2d px, mask (hand), extra
    reader.summary()   # one line: images found beside the paper's 141,550, truncated JPEGs read so far

Genuine layout (obman_render's blender_grasps.py writes it; obman/obman_train's ``ObMan`` class reads it)::

    root/{train,val,test}/
        rgb/XXXXXXXX.jpg        hand + object (composited on a background), 256 x 256
        rgb_hand/XXXXXXXX.jpg   the same scene rendered without the object (hand only)
        rgb_obj/XXXXXXXX.jpg    the object only (not read here: no hand)
        segm/XXXXXXXX.png       3 channels as written by cv2.imwrite: [0] segmentation of rgb/,
                                [1] of rgb_hand/, [2] of rgb_obj/; values 22/24 right hand,
                                21/23 left hand, 100 object
        depth/XXXXXXXX.png      3 channels quantised between meta depth_min/depth_max (not read)
        meta/XXXXXXXX.pkl       dict: coords_2d (21, 2) px, coords_3d (21, 3) m, verts_3d (778, 3) m,
                                side, hand_pose, pca_pose, shape, mano_pose, trans, z, class_id,
                                sample_id, obj_path, obj_scale, affine_transform (4, 4),
                                depth_min/max, hand_depth_min/max, obj_depth_min/max, ...

The index is the listing of ``meta/`` (as ObMan's loader does); the image of a meta file missing on
disk surfaces as "image file missing" (``reader[i]`` raises; ``on_corrupt="skip"`` drops it).

Modes name the image folder they read (ObMan's loader selects by folder and segmentation channel:
its ``mode='all'|'hand'|'obj'`` reads ``rgb``/``rgb_hand``/``rgb_obj`` with channel 0/1/2). The paper's
141,550 (§4.1.1, "either hand-only or hand-object configurations") is the size of ObMan's train split,
i.e. one image per meta file, the ``rgb/`` folder:

* ``"rgb"`` (default): ``rgb/`` with segm channel 0, hand + object; the paper's 141,550 train images.
* ``"rgb_hand"``: ``rgb_hand/`` with segm channel 1, the hand-only renders of the same grasps.
* ``"rgb+rgb_hand"``: both (2 x the split; ``rgb_hand/`` only where the folder exists), keys tell them apart.

The former names ``hand_object``/``hand``/``all`` stop with one line naming the new ones (``all`` read
both folders, twice the paper's set).

Truncated JPEGs: ObMan's loader sets ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True``, so an ``rgb`` file
cut short is read (the missing rows grey) rather than refused; this reader does the same
(:func:`keyhand.data.readers.read_rgb_truncated`), logs each one (logger ``keyhand.data.obman``) and counts
them in ``reader.truncated`` and :meth:`ObManReader.summary`. A file PIL cannot read even so (not an image,
cut inside its header) is corrupt and follows ``on_corrupt``.

Conversions (checked against obman_render/coordutils.py and obman/obman.py):

* Joint order: ``coords_3d`` is already root, thumb, index, middle, ring, pinky, each base → tip
  (coordutils reorders the SMPL+H joints with ``[0, 13, 14, 15, 16, 1, 2, 3, 17, 4, ...]`` and appends
  the MANO fingertip vertices 6206/5795/5905/6016/6134 of the right hand): identical to manopth's
  order, so no permutation.
* Frame: ``coords_3d``/``verts_3d`` are in Blender's camera-at-origin world frame (y up, z backwards).
  ``cam_extr`` (3 × 4) maps them to the OpenCV camera frame: ObMan uses the fixed
  ``[[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 0]]`` (camutils.get_extrinsic: R_b2cv, camera at the
  origin); a ``cam_extr`` key in the meta file, if any, takes precedence. Metres → millimetres.
* Intrinsics: the fixed ObMan camera ``fx = fy = 480, cx = cy = 128`` (60 mm lens on a 32 mm sensor,
  256 px; obman.py ``cam_intr``). joints_2d is the projection of joints_3d (equal to ``coords_2d``).
* mask: the hand pixels of the mode's segm channel (22/24 for a right hand, 21/23 for a left one).
* extra: ``verts_3d`` (778, 3) mm camera frame, ``hand_pose``, ``pca_pose``, ``shape``, ``class_id``,
  ``sample_id``, ``obj_path``, ``meta_file``, ``folder``.

Meta files are plain pickles; they are read with a restricted unpickler (numpy arrays and plain
Python values only; anything else is refused and nothing of it runs).
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from keyhand.data.readers import DatasetReader, intrinsics_matrix, project, read_rgb_truncated
from keyhand.data.record import NUM_JOINTS, AnnotationError, DatasetError, DatasetNotFoundError, HandSample
from keyhand.geometry.mano import RestrictedUnpickler, UnsafePickleError

__all__ = ["ObManReader", "OBMAN_INTRINSICS", "OBMAN_CAM_EXTR", "MODES", "read_meta"]

log = logging.getLogger(__name__)

OBMAN_INTRINSICS = intrinsics_matrix(480.0, 480.0, 128.0, 128.0)
OBMAN_CAM_EXTR = np.array([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 0]], np.float32)
#: mode -> (rgb folder, segm channel) pairs
MODES = {"rgb": (("rgb", 0),), "rgb_hand": (("rgb_hand", 1),), "rgb+rgb_hand": (("rgb", 0), ("rgb_hand", 1))}
#: the former mode names -> the new ones
RENAMED_MODES = {"hand_object": "rgb", "hand": "rgb_hand", "all": "rgb+rgb_hand"}
#: paper §4.1.1: the ObMan images the SFE is pretrained on (ObMan's train split, rgb/)
PAPER_COUNT = 141550
HAND_LABELS = {"right": (22, 24), "left": (21, 23)}
NUM_VERTS = 778


class _MetaUnpickler(RestrictedUnpickler):
    """The MANO unpickler's numpy/builtins allow-list, without its chumpy/scipy/copyreg allowances."""

    def find_class(self, module: str, name: str) -> Any:
        refused = module.startswith(("chumpy", "scipy")) or module in ("copy_reg", "copyreg")
        if not refused:
            try:
                return super().find_class(module, name)
            except UnsafePickleError:
                pass
        raise DatasetError(f"{self._path}: refused to unpickle {module}.{name} "
                           "(an ObMan meta file holds only numpy arrays and plain Python values)")


def read_meta(path: Path) -> dict:
    """Load one ``meta/XXXXXXXX.pkl`` with the restricted unpickler."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: meta file missing") from None
    try:
        meta = _MetaUnpickler(io.BytesIO(data), path).load()
    except DatasetError:
        raise
    except Exception as exc:  # truncated / not a pickle
        why = f"{type(exc).__name__}: {exc}"
        raise DatasetError(f"{path}: not a readable ObMan meta pickle ({why})") from None
    if not isinstance(meta, dict):
        raise AnnotationError(f"{path}: an ObMan meta pickle holds a dict, found {type(meta).__name__}")
    return meta


def _array(meta: dict, field: str, shape: tuple[int, ...], path: Path,
           required: bool = True) -> np.ndarray | None:
    if field not in meta:
        if required:
            raise AnnotationError(f"{path}: field '{field}' missing")
        return None
    try:
        value = np.asarray(meta[field], np.float64)
    except (TypeError, ValueError):
        kind = type(meta[field]).__name__
        raise AnnotationError(f"{path}: field '{field}' is not numeric ({kind})") from None
    if value.shape != shape:
        raise AnnotationError(f"{path}: field '{field}' must have shape {shape}, got {value.shape}")
    if not np.all(np.isfinite(value)):
        raise AnnotationError(f"{path}: field '{field}' holds non-finite values")
    return value


@dataclass(frozen=True)
class _Item:
    key: str
    image: Path
    meta: Path
    segm: Path
    channel: int
    folder: str


class ObManReader(DatasetReader):
    """ObMan split reader (module docstring: layout, modes, conversions)."""

    name = "obman"
    homepage = "https://www.di.ens.fr/willow/research/obman/data/ (Hasson et al., CVPR 2019)"
    splits = ("train", "val", "test")

    def __init__(self, root: str | Path, split: str = "train", mode: str = "rgb",
                 on_corrupt: str = "fail", load_mask: bool = True) -> None:
        if mode in RENAMED_MODES:
            raise ValueError(f"obman: mode {mode!r} was renamed {RENAMED_MODES[mode]!r} (modes: 'rgb' = rgb/ hand + "
                             "object, the paper's; 'rgb_hand' = rgb_hand/ hand-only renders; 'rgb+rgb_hand' = both)")
        if mode not in MODES:
            raise ValueError(f"obman: mode must be one of {tuple(MODES)}, got {mode!r}")
        self.mode = mode
        self.load_mask = load_mask
        self.truncated: list[str] = []   # JPEGs read truncated, as ObMan's loader reads them (module docstring)
        super().__init__(root, split, on_corrupt)

    def _index(self) -> list[_Item]:
        split_dir = self.root / self.split
        meta_dir = split_dir / "meta"
        if not meta_dir.is_dir():
            raise DatasetNotFoundError(
                f"obman: {meta_dir} not found (expected {self.root}/{{train,val,test}}/meta/*.pkl): set "
                f"data.obman.root in params.yaml (obtain ObMan from {self.homepage})")
        with os.scandir(meta_dir) as it:
            prefixes = sorted(e.name[:-4] for e in it if e.name.endswith(".pkl"))
        items = []
        for folder, channel in MODES[self.mode]:
            rgb_dir = split_dir / folder
            if not rgb_dir.is_dir():
                if self.mode == "rgb+rgb_hand" and folder == "rgb_hand":
                    continue  # both: the hand-only renders where the download has them
                raise DatasetNotFoundError(
                    f"obman: {rgb_dir} not found (mode {self.mode!r} reads {folder}/): set data.obman.root "
                    f"in params.yaml (obtain ObMan from {self.homepage})")
            for prefix in prefixes:
                items.append(_Item(key=f"{self.split}/{folder}/{prefix}.jpg", image=rgb_dir / f"{prefix}.jpg",
                                   meta=meta_dir / f"{prefix}.pkl", segm=split_dir / "segm" / f"{prefix}.png",
                                   channel=channel, folder=folder))
        return items

    def _image_files(self, item: _Item) -> list[Path]:
        return [item.image] + ([item.segm] if self.load_mask and item.segm.exists() else [])

    def _decode(self, path: Path) -> None:
        if path.suffix == ".jpg":
            self._image(path)
        else:
            super()._decode(path)

    def _image(self, path: Path) -> np.ndarray:
        """The RGB image, a truncated JPEG read and counted as ObMan's loader reads it (module docstring)."""
        image, truncated = read_rgb_truncated(path)
        if truncated and str(path) not in self.truncated:
            self.truncated.append(str(path))
            log.warning("obman: %s is a truncated JPEG, read as ObMan's loader reads it (PIL "
                        "LOAD_TRUNCATED_IMAGES; missing rows grey): %d truncated so far", path, len(self.truncated))
        return image

    def summary(self) -> str:
        """One line: the images found beside the paper's 141,550 (§4.1.1), and the truncated JPEGs read so far."""
        paper = f"the paper's §4.1.1: {PAPER_COUNT:,} train images of rgb/"
        return (f"obman ({self.split}, mode {self.mode}): {len(self):,} images ({paper}); "
                f"{len(self.truncated)} truncated JPEG(s) read as ObMan's loader does")

    def _mask(self, item: _Item, side: str) -> np.ndarray | None:
        if not self.load_mask or not item.segm.exists():
            return None
        segm = cv2.imread(str(item.segm), cv2.IMREAD_UNCHANGED)  # cv2 keeps the channel order ObMan wrote
        if segm is None:
            raise DatasetError(f"{item.segm}: corrupt or unreadable image (cv2 could not decode it)")
        if segm.ndim == 3:
            segm = segm[..., item.channel]  # hand-only renders (blender_hands.py) write one channel
        return np.isin(segm, HAND_LABELS.get(side, HAND_LABELS["right"])).astype(np.uint8)

    def _load(self, item: _Item) -> HandSample:
        meta = read_meta(item.meta)
        coords_3d = _array(meta, "coords_3d", (NUM_JOINTS, 3), item.meta)
        extr = OBMAN_CAM_EXTR
        if "cam_extr" in meta:
            raw = np.asarray(meta["cam_extr"], np.float64)
            if raw.shape not in ((3, 4), (4, 4)):
                raise AnnotationError(f"{item.meta}: field 'cam_extr' must have shape (3, 4) or (4, 4), "
                                      f"got {raw.shape}")
            extr = raw[:3]
        R, t = np.asarray(extr[:, :3], np.float64), np.asarray(extr[:, 3], np.float64)
        joints_3d = ((coords_3d @ R.T + t) * 1000.0).astype(np.float32)  # m, Blender → mm, OpenCV
        side = str(meta.get("side", "right"))
        extra: dict[str, Any] = {"meta_file": str(item.meta), "folder": item.folder}
        verts = _array(meta, "verts_3d", (NUM_VERTS, 3), item.meta, required=False)
        if verts is not None:
            extra["verts_3d"] = ((verts @ R.T + t) * 1000.0).astype(np.float32)
        for field in ("hand_pose", "pca_pose", "shape"):
            if field in meta:
                extra[field] = np.asarray(meta[field], np.float32)
        for field in ("class_id", "sample_id", "obj_path"):
            if field in meta:
                extra[field] = meta[field]
        return HandSample(
            image=self._image(item.image), key=item.key, source=self.name,
            joints_2d=project(joints_3d, OBMAN_INTRINSICS), joints_3d=joints_3d,
            intrinsics=OBMAN_INTRINSICS.copy(), mask=self._mask(item, side), side=side, extra=extra,
        ).validate()

"""STB reader, SK subset (Zhang et al., ICIP 2017; paper §4.1.2: 15,000 train / 3,000 test images).

    from keyhand.data.stb import STBReader
    reader = STBReader("/data/stb", "test")                   # B1Counting + B1Random: 3,000 samples
    s = reader[0]   # image (480, 640, 3), joints_3d mm SK colour frame, joints_2d px, side "left"

Genuine layout (the dataset's README, github.com/zhjwustc/icip17_stereo_hand_pose_dataset)::

    root/images/B{1..6}{Counting,Random}/SK_color_{0..1499}.png    Intel RealSense F200 colour, 640 x 480
                                         SK_depth_{i}.png, BB_left_{i}.png, BB_right_{i}.png (not read)
    root/labels/B{1..6}{Counting,Random}_SK.mat                   'handPara' (3, 21, 1500), millimetres
                                        ..._BB.mat                (Bumblebee2 labels, not read)

The common copies of the download keep the sequence folders directly under the root, labels beside them
(``root/B1Counting/SK_color_0.png``, ``root/labels/B1Counting_SK.mat``). The layout is detected per
sequence: ``root/images/<seq>/`` if it exists, else ``root/<seq>/``; a sequence with neither stops with one
line naming both. Keys are the image paths relative to the root (``images/B1Counting/SK_color_0.png`` or
``B1Counting/SK_color_0.png``); ``reader.sequences`` gives each sample's sequence (the held-out
validation sequence of the pipeline, ``data.stb.val_sequence``, is one whole training sequence).

12 sequences x 1,500 frames. Split (as obman_train's StereoHands and most STB work): test = B1Counting +
B1Random (3,000), train = B2..B6 (15,000); ``"all"`` = the 18,000.

Conversions:

* Frame: the SK labels are in the F200 *depth* camera frame. The README gives the colour↔depth extrinsics
  "rotation vector [0.00531 -0.01196 0.00301] (Rodrigues), translation [-24.0381 -0.4563 -1.2326]
  (transform the coordinates relative to color camera to those relative to depth camera)", i.e.
  ``X_d = R X_c + T``, so ``X_c = R^T (X_d − T)`` (the README's positionCalc.m: ``stereoR \\ (depthXYZ −
  stereoT)``; Ge et al. 2019 and Yang et al. 2020 convert the same way). Both are OpenCV-style frames
  (x right, y down, z forward), millimetres.
* Intrinsics (README, F200 colour): fx 607.92271, fy 607.88192, cx 314.78337, cy 236.42484.
  joints_2d = projection of joints_3d with them.
* Joint order (README): palm centre, little mcp/pip/dip/tip, ring ..., middle ..., index ..., thumb
  mcp/pip/dip/tip: fingers little → thumb, each base → tip (not tip → base). Common order takes
  ``STB_TO_COMMON = [0, 17, 18, 19, 20, 13, 14, 15, 16, 9, 10, 11, 12, 5, 6, 7, 8, 1, 2, 3, 4]`` (the same
  permutation as obman_train's stereohands.py); STB's four thumb points (named mcp..tip by analogy)
  map one to one onto thumb1..4 (CMC, MCP, IP, tip).
* Joint 0: STB annotates the palm centre, not the wrist. ``palm_to_wrist``:
  ``"extrapolate"`` (default) — ``wrist = palm + (palm − ring MCP)``, i.e. ring MCP + 2·(palm − ring
  MCP), the conversion of Ge et al. (CVPR 2019, STB loader of their released code), reused by Yang
  et al. (BiHand, BMVC 2020); the palm centre is about halfway between the MCP row and the wrist.
  ``"keep"`` — joint 0 stays the palm centre (what hand3d [33] and obman_train [35] evaluate against);
  use it to compare with numbers reported on the palm-rooted skeleton. ``extra["root_joint"]`` says
  which ("wrist (extrapolated from palm)" or "palm centre"), ``extra["palm"]`` holds the palm centre.
* Hand: STB shows a left hand (joint names ``loc_bn_*_L``): ``side="left"``. The reader keeps it as recorded;
  preparation mirrors it into a right hand for the right MANO model (``prepare_split(mirror_to="right")``:
  image, 2D, 3D and intrinsics together, re-projection preserved; :func:`keyhand.data.crop.mirror_sample`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from scipy.spatial.transform import Rotation

from keyhand.data.readers import DatasetReader, intrinsics_matrix, project, read_rgb
from keyhand.data.record import NUM_JOINTS, AnnotationError, DatasetError, DatasetNotFoundError, HandSample

__all__ = ["STBReader", "SK_COLOR_INTRINSICS", "SK_DEPTH_TO_COLOR", "STB_TO_COMMON", "SEQUENCES",
           "depth_to_color", "palm_to_wrist"]

SK_COLOR_INTRINSICS = intrinsics_matrix(607.92271, 607.88192, 314.78337, 236.42484)
SK_ROT_VEC = (0.00531, -0.01196, 0.00301)          # colour → depth, Rodrigues
SK_TRANS = np.array([-24.0381, -0.4563, -1.2326])  # colour → depth, mm
SK_R = Rotation.from_rotvec(SK_ROT_VEC).as_matrix()
#: (R, T) with X_depth = R X_color + T
SK_DEPTH_TO_COLOR = (SK_R, SK_TRANS)
STB_TO_COMMON = np.array([0, 17, 18, 19, 20, 13, 14, 15, 16, 9, 10, 11, 12, 5, 6, 7, 8, 1, 2, 3, 4])
RING_MCP_COMMON = 13
_BACKGROUNDS = [f"B{i}{kind}" for i in range(1, 7) for kind in ("Counting", "Random")]
SEQUENCES = {"test": _BACKGROUNDS[:2], "train": _BACKGROUNDS[2:], "all": _BACKGROUNDS}
PALM_TO_WRIST = ("extrapolate", "keep")


def depth_to_color(xyz_depth: np.ndarray) -> np.ndarray:
    """(..., 3) F200 depth-camera points (mm) → colour-camera points: ``R^T (X − T)`` (row vectors)."""
    return (np.asarray(xyz_depth, np.float64) - SK_TRANS) @ SK_R


def palm_to_wrist(joints: np.ndarray) -> np.ndarray:
    """Common-order joints with the palm centre at 0 → wrist extrapolated as palm + (palm − ring MCP)."""
    out = np.array(joints, np.float64, copy=True)
    out[..., 0, :] = 2.0 * out[..., 0, :] - out[..., RING_MCP_COMMON, :]
    return out


@dataclass(frozen=True)
class _Item:
    key: str
    image: Path
    joints_3d: np.ndarray  # (21, 3) mm, colour frame, common order (joint 0 as configured)
    palm: np.ndarray
    sequence: str
    frame: int


class STBReader(DatasetReader):
    """STB SK-colour reader (module docstring: layout, frame, joint order, palm → wrist)."""

    name = "stb"
    homepage = "https://github.com/zhjwustc/icip17_stereo_hand_pose_dataset (Zhang et al., ICIP 2017)"
    splits = ("train", "test", "all")

    def __init__(self, root: str | Path, split: str = "train", palm_to_wrist: str = "extrapolate",
                 on_corrupt: str = "fail") -> None:
        if palm_to_wrist not in PALM_TO_WRIST:
            raise ValueError(f"stb: palm_to_wrist must be one of {PALM_TO_WRIST}, got {palm_to_wrist!r}")
        self.palm_to_wrist = palm_to_wrist
        super().__init__(root, split, on_corrupt)

    def _labels(self, sequence: str) -> np.ndarray:
        path = self.root / "labels" / f"{sequence}_SK.mat"
        if not path.is_file():
            raise DatasetNotFoundError(
                f"stb: label file {path} not found (expected {self.root}/labels/B{{1..6}}{{Counting,Random}}"
                f"_SK.mat): set data.stb.root in params.yaml (obtain STB from {self.homepage})")
        try:
            mat = scipy.io.loadmat(str(path))
        except Exception as exc:  # truncated / not a MAT file
            raise DatasetError(f"{path}: not a readable MAT file ({type(exc).__name__}: {exc})") from None
        if "handPara" not in mat:
            raise AnnotationError(f"{path}: field 'handPara' missing")
        para = mat["handPara"]
        if not (isinstance(para, np.ndarray) and para.ndim == 3 and para.shape[:2] == (3, NUM_JOINTS)
                and np.issubdtype(para.dtype, np.number)):
            got = getattr(para, "shape", type(para).__name__)
            raise AnnotationError(f"{path}: field 'handPara' must have shape (3, 21, N), got {got}")
        if not np.all(np.isfinite(para)):
            raise AnnotationError(f"{path}: field 'handPara' holds non-finite values")
        return para.astype(np.float64).transpose(2, 1, 0)  # (N, 21, 3) mm, depth frame, STB order

    def _image_dir(self, sequence: str) -> Path:
        """``root/images/<seq>/`` (the README's layout) or ``root/<seq>/`` (the common copies), per sequence."""
        for folder in (self.root / "images" / sequence, self.root / sequence):
            if folder.is_dir():
                return folder
        raise DatasetNotFoundError(
            f"stb: no image folder for sequence {sequence}: neither {self.root / 'images' / sequence} nor "
            f"{self.root / sequence} exists: set data.stb.root in params.yaml (obtain STB from {self.homepage})")

    def _index(self) -> list[_Item]:
        items = []
        for seq in SEQUENCES[self.split]:
            joints = depth_to_color(self._labels(seq))[:, STB_TO_COMMON]  # (N, 21, 3) colour frame
            palms = joints[:, 0].copy()
            if self.palm_to_wrist == "extrapolate":
                joints = palm_to_wrist(joints)
            folder = self._image_dir(seq)
            for i in range(joints.shape[0]):
                image = folder / f"SK_color_{i}.png"
                items.append(_Item(key=image.relative_to(self.root).as_posix(), image=image,
                                   joints_3d=joints[i].astype(np.float32), palm=palms[i].astype(np.float32),
                                   sequence=seq, frame=i))
        return items

    @property
    def sequences(self) -> list[str]:
        """Each sample's sequence (``B2Counting`` ...), in the reader's order."""
        return [it.sequence for it in self._items]

    def _image_files(self, item: _Item) -> list[Path]:
        return [item.image]

    def _load(self, item: _Item) -> HandSample:
        extrapolated = self.palm_to_wrist == "extrapolate"
        root_joint = "wrist (extrapolated from palm)" if extrapolated else "palm centre"
        joints_3d = item.joints_3d.copy()
        return HandSample(
            image=read_rgb(item.image), key=item.key, source=self.name,
            joints_2d=project(joints_3d, SK_COLOR_INTRINSICS), joints_3d=joints_3d,
            intrinsics=SK_COLOR_INTRINSICS.copy(), side="left",
            extra={"sequence": item.sequence, "frame": item.frame, "root_joint": root_joint,
                   "palm": item.palm.copy()},
        ).validate()

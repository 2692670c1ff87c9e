"""The one sample record every dataset reader yields (paper §4.1), and the common joint order.

    from keyhand.data.record import HandSample, JOINT_NAMES
    for sample in reader:             # any reader in keyhand.data
        sample.image                  # (H, W, 3) uint8 RGB
        sample.joints_2d              # (21, 2) float32 pixels (x right, y down), or None
        sample.joints_3d              # (21, 3) float32 millimetres, camera frame, or None

Joint order (21): the manopth order that :class:`keyhand.geometry.mano.ManoLayer` outputs —
wrist, thumb 1-4, index 1-4, middle 1-4, ring 1-4, little 1-4, where 1 is the finger's base joint
(MCP; CMC for the thumb) and 4 the fingertip. Readers convert their dataset's order to this one.

Camera frame: x right, y down, z forward (OpenCV), millimetres; ``intrinsics`` maps it to pixels:
``u = fx·x/z + cx``. Gesture datasets carry no joints (``joints_2d``/``joints_3d`` None) but a
``gesture`` label and a ``subject``.

Params that point at the real datasets (params.yaml): ``data.obman.root``, ``data.stb.root``,
``data.rwth.root``, ``data.senz3d.root``; the MANO file: ``mano.model_path``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from keyhand.skeleton import JOINT_NAMES, MIDDLE_MCP, NUM_JOINTS, WRIST

__all__ = ["JOINT_NAMES", "NUM_JOINTS", "MIDDLE_MCP", "WRIST", "HandSample", "DatasetError",
           "DatasetNotFoundError", "AnnotationError"]

# JOINT_NAMES, NUM_JOINTS, WRIST, MIDDLE_MCP (the §3.1 crop centre p_c): keyhand.skeleton, re-exported here


class DatasetError(ValueError):
    """Bad dataset input; the message is one line naming the file (and field)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset root is missing: the message names the path, the param and where to obtain it."""


class AnnotationError(DatasetError):
    """An annotation has the wrong shape or type: the message names the file and the field."""


@dataclass
class HandSample:
    """One image and its annotations, in the common convention (module docstring)."""

    image: np.ndarray                       # (H, W, 3) uint8 RGB
    key: str                                # unique within the dataset (e.g. relative image path)
    source: str                             # dataset name: "obman", "stb", "rwth", "senz3d", "synth-*"
    joints_2d: np.ndarray | None = None     # (21, 2) float32 px
    joints_3d: np.ndarray | None = None     # (21, 3) float32 mm, camera frame
    intrinsics: np.ndarray | None = None    # (3, 3) float32
    visibility: np.ndarray | None = None    # (21,) float32 in {0, 1}
    mask: np.ndarray | None = None          # (H, W) uint8 {0, 1} hand silhouette, when the dataset has one
    depth: np.ndarray | None = None         # (H', W') float32 mm, when the dataset has one (Senz3D)
    gesture: int | None = None              # class index
    gesture_name: str | None = None
    subject: str | None = None
    side: str = "right"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.visibility is None and self.joints_2d is not None:
            self.visibility = np.ones(NUM_JOINTS, np.float32)

    def validate(self) -> HandSample:
        """Check shapes and dtypes; raise :class:`AnnotationError` naming the key and field."""
        img = self.image
        ok = isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
        if not ok:
            got = getattr(img, "shape", type(img).__name__)
            raise AnnotationError(f"{self.key}: field 'image' must be (H, W, 3) uint8, got {got}")
        for name, shape in (("joints_2d", (NUM_JOINTS, 2)), ("joints_3d", (NUM_JOINTS, 3)),
                            ("intrinsics", (3, 3)), ("visibility", (NUM_JOINTS,))):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, np.ndarray) or value.shape != shape:
                got = getattr(value, "shape", type(value).__name__)
                raise AnnotationError(f"{self.key}: field '{name}' must have shape {shape}, got {got}")
            if not np.all(np.isfinite(value)):
                raise AnnotationError(f"{self.key}: field '{name}' holds non-finite values")
        if self.mask is not None and self.mask.shape != img.shape[:2]:
            raise AnnotationError(
                f"{self.key}: field 'mask' has shape {self.mask.shape}, image is {img.shape[:2]}")
        return self

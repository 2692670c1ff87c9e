"""MANO layer (paper §3.4.1, Eqs. 2-5) and the skeleton adaptation, in PyTorch.

    from keyhand.geometry.mano import ManoLayer
    layer = ManoLayer(side="right", num_pca_comps=30)          # proxy hand unless a file is given
    out = layer(global_orient=torch.zeros(B, 3),                # (B, 3) axis-angle of the wrist
                hand_pose=torch.zeros(B, 30),                   # (B, ncomps) PCA coefficients
                betas=torch.zeros(B, 10))                       # (B, 10) shape
    out.vertices  # (B, 778, 3) in `layer.unit` (mm by default)
    out.joints    # (B, 21, 3)  manopth order: wrist, thumb 1-4, index 1-4, middle 1-4, ring 1-4, little 1-4

The model is M(β, θ) = W(T_p(β, θ), J(β), θ, 𝒲) (Eq. 2): linear blend skinning of the template
T_p = T̂ + B_S(β) + B_P(θ) (Eq. 3), with the shape blend shapes B_S(β) = Σ β_n S_n (Eq. 4) and the
pose correctives B_P(θ) = Σ (R_n(θ) − R_n(θ*)) P_n over the 9K rotation entries of the K = 15
articulated joints (Eq. 5). The joints J(β) come from the sparse joint regressor applied to the
shaped template. Pose is axis-angle per joint in the parent's frame; the 45 finger values are either
given directly or as PCA coefficients: θ_fingers = c · hands_components[:n] + hands_mean (zero mean
with ``flat_hand_mean=True``), exactly as the official MANO / manopth / smplx do.

Units: the MANO file is in metres; the layer returns ``unit`` ("mm" by default, the unit of the
metrics, or "m"). Joints: the 16 MANO joints plus five fingertip vertices (``tip_vertex_ids``;
manopth's by default, which the proxy hand also uses), reordered to the manopth order above.

Files: ``model_path=None`` uses keyhand's license-free proxy hand (written in MANO's own pickle
format into the cache folder on first use, see :mod:`keyhand.geometry.proxy_hand`); a path to an
official ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl`` (or to the folder holding them) loads it unchanged.
Official files are read with a restricted unpickler that turns chumpy objects into arrays without
importing chumpy and refuses every other class.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse
import torch
from torch import Tensor, nn

from keyhand.skeleton import JOINT_NAMES

__all__ = [
    "MANO_JOINT_NAMES",
    "JOINT_NAMES_21",
    "MANOPTH_TIP_VERTEX_IDS",
    "ManoFileError",
    "UnsafePickleError",
    "ManoModel",
    "ManoOutput",
    "ManoLayer",
    "SkeletonAdaptation",
    "axis_angle_to_matrix",
    "rot6d_to_matrix",
    "rotation_matrix",
    "load_mano_pickle",
    "RestrictedUnpickler",
    "load_mano_model",
    "resolve_model_path",
    "default_cache_dir",
]

#: The 16 MANO joints in the file's order.
MANO_JOINT_NAMES = (
    "wrist",
    "index1", "index2", "index3",
    "middle1", "middle2", "middle3",
    "little1", "little2", "little3",
    "ring1", "ring2", "ring3",
    "thumb1", "thumb2", "thumb3",
)
#: The 21 output joints (manopth order): MANO joints plus fingertips ("4"), :data:`keyhand.skeleton.JOINT_NAMES`.
JOINT_NAMES_21 = JOINT_NAMES
#: manopth's fingertip vertices of the official mesh: thumb, index, middle, ring, little.
MANOPTH_TIP_VERTEX_IDS = (745, 317, 444, 556, 673)
# Index into cat([16 MANO joints, 5 tips]) giving the manopth order.
_ORDER_21 = (0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20)

MANO_PARAM_HINT = (
    "set `mano.model_path` in params.yaml to the official MANO_RIGHT.pkl/MANO_LEFT.pkl "
    "(obtained by registering at https://mano.is.tue.mpg.de, 'Models & Code'), "
    "or leave it empty to use keyhand's generated proxy hand"
)


class ManoFileError(ValueError):
    """A MANO file is missing, unreadable or malformed (the message names the file)."""


class UnsafePickleError(ManoFileError):
    """The pickle asks for a class outside the allow-list; nothing from it was executed."""


# --------------------------------------------------------------------------------------------
# Restricted unpickling of official MANO files (no chumpy needed, nothing else allowed).
# --------------------------------------------------------------------------------------------
class _Placeholder:
    """Stands in for a chumpy or scipy.sparse object while unpickling; converted afterwards."""

    kind = "object"

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # protocol 0/1 reconstructor path
        self._state: Any = None

    def __setstate__(self, state: Any) -> None:
        self._state = state


class _ChumpyPlaceholder(_Placeholder):
    kind = "chumpy"


class _SparsePlaceholder(_Placeholder):
    kind = "sparse"
    fmt = "csc"


_NUMPY_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
_SPARSE_CLASSES = {
    name: type(f"_Sparse_{name}", (_SparsePlaceholder,), {"fmt": name[:3]})
    for name in ("csc_matrix", "csr_matrix", "coo_matrix", "csc_array", "csr_array", "coo_array")
}

_BUILTINS_ALLOWED = {"object": object, "set": set, "frozenset": frozenset, "slice": slice}


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """_codecs.encode restricted to the latin-1 codec (no codec lookup by name)."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """copyreg._reconstructor, limited to placeholder classes built on ``object``."""
    if not (isinstance(cls, type) and issubclass(cls, _Placeholder)) or base is not object:
        raise pickle.UnpicklingError(f"copyreg._reconstructor of {cls!r}")
    return cls.__new__(cls)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only numpy arrays/dtypes, scipy sparse matrices, chumpy placeholders and
    plain builtins; any other class raises :class:`UnsafePickleError` naming it and the file. Subclass
    and narrow ``find_class`` for other formats (the ObMan meta reader does)."""

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_ALLOWED:
            return super().find_class(module.replace("numpy.core", "numpy._core"), name)
        if module.startswith("chumpy"):
            return _ChumpyPlaceholder
        if module.startswith("scipy.sparse") and name in _SPARSE_CLASSES:
            return _SPARSE_CLASSES[name]
        if module == "_codecs" and name == "encode":
            return _latin1_encode  # how Python 3 writes bytes at protocol 2
        if module in ("copy_reg", "copyreg") and name == "_reconstructor":
            return _safe_reconstructor
        if module in ("__builtin__", "builtins") and name in _BUILTINS_ALLOWED:
            return _BUILTINS_ALLOWED[name]  # plain data only (chumpy's state holds sets)
        raise UnsafePickleError(
            f"{self._path}: refused to unpickle {module}.{name} "
            "(a MANO file holds only numpy arrays, scipy sparse matrices and chumpy arrays)"
        )


def _convert(obj: Any, path: Path, key: str) -> Any:
    if isinstance(obj, _ChumpyPlaceholder):
        state = obj._state
        if isinstance(state, Mapping) and "x" in state:
            return np.asarray(state["x"])
        raise ManoFileError(f"{path}: key '{key}' is a chumpy expression without a value ('x'); "
                            "only plain chumpy arrays are supported")
    if isinstance(obj, _SparsePlaceholder):
        st = obj._state if isinstance(obj._state, Mapping) else {}
        try:
            shape = tuple(int(v) for v in st.get("_shape", st.get("shape")))
            if obj.fmt == "coo":
                coords = st["coords"] if "coords" in st else (st["row"], st["col"])
                return scipy.sparse.coo_matrix((st["data"], tuple(coords)), shape=shape).tocsc()
            cls = scipy.sparse.csc_matrix if obj.fmt == "csc" else scipy.sparse.csr_matrix
            return cls((st["data"], st["indices"], st["indptr"]), shape=shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise ManoFileError(f"{path}: key '{key}' is a malformed sparse matrix ({exc})") from None
    if isinstance(obj, dict):
        return {k: _convert(v, path, f"{key}.{k}" if key else str(k)) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_convert(v, path, key) for v in obj)
    return obj


def load_mano_pickle(path: str | os.PathLike) -> dict[str, Any]:
    """Read a MANO pickle into a dict of numpy arrays / scipy sparse matrices / strings.

    Allowed: numpy arrays and dtypes, scipy sparse matrices, chumpy arrays (turned into their
    values, chumpy need not be installed). Anything else raises :class:`UnsafePickleError`
    before it is constructed, with one line naming the class and the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ManoFileError(f"MANO model file not found: {path} ({MANO_PARAM_HINT})")
    with open(path, "rb") as fh:
        try:
            data = RestrictedUnpickler(fh, path).load()
        except UnsafePickleError:
            raise
        except Exception as exc:  # truncated/corrupt files
            raise ManoFileError(f"{path}: not a readable MANO pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise ManoFileError(f"{path}: a MANO pickle holds a dict, found {type(data).__name__}")
    return _convert(data, path, "")


# --------------------------------------------------------------------------------------------
# Model data: validated arrays.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ManoModel:
    """The arrays of a MANO file, validated. Lengths in metres."""

    path: Path
    v_template: np.ndarray        # (V, 3) T̂
    faces: np.ndarray             # (F, 3) int64
    J_regressor: np.ndarray       # (16, V) dense
    weights: np.ndarray           # (V, 16) 𝒲
    shapedirs: np.ndarray         # (V, 3, n_betas) S_n of Eq. 4
    posedirs: np.ndarray          # (V, 3, 135) P_n of Eq. 5
    parents: tuple[int, ...]      # (16,), parents[0] = -1
    hands_components: np.ndarray  # (45, 45) rows are components
    hands_mean: np.ndarray        # (45,)
    meta: dict

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]


def _field(data: dict, key: str, path: Path, shape: tuple[int | None, ...]) -> np.ndarray:
    if key not in data:
        raise ManoFileError(f"{path}: missing key '{key}' (not a MANO model file?)")
    value = data[key]
    arr = value.toarray() if scipy.sparse.issparse(value) else np.asarray(value)
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape, strict=True)):
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise ManoFileError(f"{path}: key '{key}' has shape {arr.shape}, expected {want}")
    if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
        raise ManoFileError(f"{path}: key '{key}' holds non-finite values")
    return arr


def load_mano_model(path: str | os.PathLike) -> ManoModel:
    """Load and validate a MANO file (official or proxy)."""
    path = Path(path)
    data = load_mano_pickle(path)
    v = _field(data, "v_template", path, (None, 3)).astype(np.float64)
    n = v.shape[0]
    faces = _field(data, "f", path, (None, 3)).astype(np.int64)
    if faces.size and (faces.min() < 0 or faces.max() >= n):
        raise ManoFileError(f"{path}: key 'f' indexes vertex {faces.max()} but the template has {n}")
    kintree = _field(data, "kintree_table", path, (2, 16)).astype(np.int64)
    parents = [-1] + [int(p) for p in kintree[0, 1:]]
    if any(not 0 <= p < i for i, p in enumerate(parents) if i > 0):
        raise ManoFileError(f"{path}: key 'kintree_table' must list each parent before its child")
    shapedirs = _field(data, "shapedirs", path, (n, 3, None)).astype(np.float64)
    return ManoModel(
        path=path,
        v_template=v,
        faces=faces,
        J_regressor=_field(data, "J_regressor", path, (16, n)).astype(np.float64),
        weights=_field(data, "weights", path, (n, 16)).astype(np.float64),
        shapedirs=shapedirs,
        posedirs=_field(data, "posedirs", path, (n, 3, 135)).astype(np.float64),
        parents=tuple(parents),
        hands_components=_field(data, "hands_components", path, (45, 45)).astype(np.float64),
        hands_mean=_field(data, "hands_mean", path, (45,)).astype(np.float64),
        meta=dict(data.get("keyhand_meta", {})),
    )


def default_cache_dir() -> Path:
    """keyhand's cache folder: ``$KEYHAND_CACHE`` or ``~/.cache/keyhand``."""
    return Path(os.environ.get("KEYHAND_CACHE") or Path.home() / ".cache" / "keyhand")


def resolve_model_path(model_path: str | os.PathLike | None, side: str = "right", seed: int = 0) -> Path:
    """The MANO file to load: the given file, ``MANO_{SIDE}.pkl`` in a given folder, or the proxy.

    With ``model_path`` empty, keyhand's proxy hand is generated (deterministically from ``seed``)
    into the cache folder on first use and reused afterwards.
    """
    if side not in ("right", "left"):
        raise ValueError(f"mano side must be 'right' or 'left', got {side!r}")
    fname = f"MANO_{side.upper()}.pkl"
    if model_path in (None, ""):
        from keyhand.geometry import proxy_hand

        target = default_cache_dir() / "hand_model" / f"proxy-v{proxy_hand.PROXY_VERSION}-seed{seed}" / fname
        if not target.is_file():
            proxy_hand.write_proxy_hand(target, seed=seed, side=side)
        return target
    path = Path(model_path).expanduser()
    if path.is_dir():
        path = path / fname
    if not path.is_file():
        raise ManoFileError(f"MANO model file not found: {path} ({MANO_PARAM_HINT})")
    return path


# --------------------------------------------------------------------------------------------
# Differentiable layer.
# --------------------------------------------------------------------------------------------
def axis_angle_to_matrix(aa: Tensor) -> Tensor:
    """Rodrigues' formula, (..., 3) axis-angle -> (..., 3, 3); exact gradients at zero angle."""
    theta2 = (aa * aa).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    small = theta2 < 1e-8
    theta2_safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = theta2_safe.sqrt()
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2_safe)
    x, y, z = aa.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*aa.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def rot6d_to_matrix(r6: Tensor) -> Tensor:
    """The continuous 6D rotation representation (Zhou et al., CVPR 2019), (..., 6) -> (..., 3, 3).

    The two 3-vectors are Gram-Schmidt orthonormalised into the first two COLUMNS of R; the third is their
    cross product. (1, 0, 0, 0, 1, 0) is the identity. Unlike axis-angle it has no discontinuity at π.
    """
    a, b = r6[..., :3], r6[..., 3:]
    x = torch.nn.functional.normalize(a, dim=-1, eps=1e-8)
    y = torch.nn.functional.normalize(b - (x * b).sum(-1, keepdim=True) * x, dim=-1, eps=1e-8)
    z = torch.cross(x, y, dim=-1)
    return torch.stack([x, y, z], -1)


def rotation_matrix(rot: Tensor) -> Tensor:
    """(..., 3) axis-angle or (..., 6) 6D rotation -> (..., 3, 3), chosen by the last dimension."""
    if rot.shape[-1] == 3:
        return axis_angle_to_matrix(rot)
    if rot.shape[-1] == 6:
        return rot6d_to_matrix(rot)
    raise ValueError(f"rotation must have 3 (axis-angle) or 6 (6D) values, got shape {tuple(rot.shape)}")


@dataclass
class ManoOutput:
    """Outputs of :class:`ManoLayer`, lengths in the layer's ``unit``."""

    vertices: Tensor     # (B, V, 3)
    joints: Tensor       # (B, 21, 3) manopth order (JOINT_NAMES_21)
    mano_joints: Tensor  # (B, 16, 3) MANO order (MANO_JOINT_NAMES)
    full_pose: Tensor    # (B, 48) axis-angle: global orient + 15 joints, hands_mean included
    rotations: Tensor    # (B, 16, 3, 3) per-joint local rotations


class ManoLayer(nn.Module):
    """The MANO hand model M(β, θ) (Eqs. 2-5) as a batched, differentiable PyTorch module.

    Args:
        model_path: official MANO pickle (or its folder); ``None`` = keyhand's proxy hand.
        side: "right" or "left" (selects ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl`` in a folder).
        num_pca_comps: 15, 30 or 45 PCA pose coefficients (Table 3 of the paper); with
            ``use_pca=False`` the hand pose is the 45 axis-angle values.
        flat_hand_mean: if True the pose mean is the flat hand, else the file's ``hands_mean``.
        unit: "mm" (default; the metrics' unit) or "m" (the file's unit).
        tip_vertex_ids: fingertip vertices (thumb, index, middle, ring, little); default from the
            proxy file's metadata, else manopth's ids for the official mesh.
    """

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        side: str = "right",
        num_pca_comps: int = 45,
        use_pca: bool = True,
        flat_hand_mean: bool = False,
        unit: str = "mm",
        tip_vertex_ids: tuple[int, ...] | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if unit not in ("mm", "m"):
            raise ValueError(f"mano unit must be 'mm' or 'm', got {unit!r}")
        if not 1 <= num_pca_comps <= 45:
            raise ValueError(f"mano num_pca_comps must be in 1..45, got {num_pca_comps}")
        model = load_mano_model(resolve_model_path(model_path, side, seed))
        self.model_path = model.path
        self.side = side
        self.use_pca = use_pca
        self.num_pca_comps = num_pca_comps if use_pca else 45
        self.flat_hand_mean = flat_hand_mean
        self.unit = unit
        self.scale = 1000.0 if unit == "mm" else 1.0
        tips = tip_vertex_ids or tuple(model.meta.get("tip_vertex_ids", MANOPTH_TIP_VERTEX_IDS))
        if len(tips) != 5 or max(tips) >= model.num_vertices:
            raise ManoFileError(f"{model.path}: fingertip vertex ids {tips} do not fit {model.num_vertices} "
                                "vertices; pass tip_vertex_ids")
        self.tip_vertex_ids = tuple(int(t) for t in tips)
        self.parents = model.parents
        self.meta = model.meta

        def buf(name: str, value: np.ndarray, kind: torch.dtype = dtype) -> None:
            self.register_buffer(name, torch.as_tensor(np.ascontiguousarray(value), dtype=kind))

        n = model.num_vertices
        buf("v_template", model.v_template)                                       # (V, 3)
        buf("shapedirs", model.shapedirs)                                         # (V, 3, nb)
        buf("posedirs", model.posedirs.reshape(n * 3, 135).T)                     # (135, V*3)
        buf("J_template", model.J_regressor @ model.v_template)                   # (16, 3)
        buf("J_shapedirs", np.einsum("jv,vcb->jcb", model.J_regressor, model.shapedirs))  # (16, 3, nb)
        buf("lbs_weights", model.weights)                                         # (V, 16)
        buf("hands_components", model.hands_components[: self.num_pca_comps])     # (n, 45)
        mean = np.zeros(45) if flat_hand_mean else model.hands_mean
        buf("hands_mean", mean)                                                   # (45,)
        buf("faces", model.faces, torch.long)                                     # (F, 3)
        buf("_order", np.asarray(_ORDER_21), torch.long)
        buf("_tips", np.asarray(self.tip_vertex_ids), torch.long)
        # Kinematic levels: joints whose parents are all in earlier levels (4 levels for MANO).
        depth = [0] * 16
        for j in range(1, 16):
            depth[j] = depth[self.parents[j]] + 1
        self._levels = [[j for j in range(16) if depth[j] == d] for d in range(1, max(depth) + 1)]

    @property
    def num_betas(self) -> int:
        return self.shapedirs.shape[-1]

    def extra_repr(self) -> str:
        return (f"side={self.side}, pca={self.use_pca}({self.num_pca_comps}), flat_hand_mean="
                f"{self.flat_hand_mean}, unit={self.unit}, file={self.model_path}")

    def full_pose(self, global_orient: Tensor, hand_pose: Tensor) -> Tensor:
        """(B, 3), (B, ncomps | 45) -> (B, 48) axis-angle pose with the mean added."""
        if self.use_pca:
            hand_pose = hand_pose @ self.hands_components
        return torch.cat([global_orient, hand_pose + self.hands_mean], dim=1)

    def forward(
        self,
        global_orient: Tensor | None = None,
        hand_pose: Tensor | None = None,
        betas: Tensor | None = None,
        transl: Tensor | None = None,
    ) -> ManoOutput:
        """Pose the hand.

        Args:
            global_orient: (B, 3) axis-angle rotation about the wrist joint (the paper's R).
            hand_pose: (B, num_pca_comps) PCA coefficients, or (B, 45) axis-angle if ``use_pca=False``.
            betas: (B, n_betas) shape coefficients β (zeros if None).
            transl: (B, 3) translation in metres (added before the unit conversion).
        """
        ref = next(t for t in (global_orient, hand_pose, betas, transl, self.v_template) if t is not None)
        bsz = ref.shape[0] if ref is not self.v_template else 1
        dt, dev = self.v_template.dtype, self.v_template.device
        if global_orient is None:
            global_orient = torch.zeros(bsz, 3, dtype=dt, device=dev)
        if hand_pose is None:
            hand_pose = torch.zeros(bsz, self.num_pca_comps, dtype=dt, device=dev)
        if betas is None:
            betas = torch.zeros(bsz, self.num_betas, dtype=dt, device=dev)
        if hand_pose.shape[-1] != self.num_pca_comps:
            raise ValueError(f"hand_pose has {hand_pose.shape[-1]} values, the layer expects "
                             f"{self.num_pca_comps} ({'PCA' if self.use_pca else 'axis-angle'})")
        nb = betas.shape[-1]
        if nb > self.num_betas:
            raise ValueError(f"betas has {nb} values, the model has {self.num_betas} shape directions")

        pose = self.full_pose(global_orient, hand_pose)                      # (B, 48)
        rot = axis_angle_to_matrix(pose.reshape(bsz, 16, 3))                 # (B, 16, 3, 3)
        # Eq. 3-4: shape blend shapes on template and joints.
        v_shaped = self.v_template + torch.einsum("vcb,nb->nvc", self.shapedirs[..., :nb], betas)
        joints = self.J_template + torch.einsum("jcb,nb->njc", self.J_shapedirs[..., :nb], betas)
        # Eq. 5: pose correctives from (R_n(θ) − R_n(θ*)), θ* the zero pose (R = I).
        eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
        pose_feature = (rot[:, 1:] - eye).reshape(bsz, 135)
        v_posed = v_shaped + (pose_feature @ self.posedirs).reshape(bsz, -1, 3)

        # Forward kinematics, one batched step per tree level; G = global rigid transforms.
        rot_g = [None] * 16
        pos_g = [None] * 16
        rot_g[0], pos_g[0] = rot[:, 0], joints[:, 0]
        for level in self._levels:
            par = [self.parents[j] for j in level]
            r_par = torch.stack([rot_g[p] for p in par], 1)                  # (B, L, 3, 3)
            p_par = torch.stack([pos_g[p] for p in par], 1)                  # (B, L, 3)
            offset = joints[:, level] - joints[:, par]                       # (B, L, 3)
            r_new = r_par @ rot[:, level]
            p_new = p_par + (r_par @ offset[..., None])[..., 0]
            for i, j in enumerate(level):
                rot_g[j], pos_g[j] = r_new[:, i], p_new[:, i]
        rot_g_t = torch.stack(rot_g, 1)                                      # (B, 16, 3, 3)
        pos_g_t = torch.stack(pos_g, 1)                                      # (B, 16, 3) posed joints
        # Eq. 2: LBS with transforms that map rest positions to posed ones.
        trans = pos_g_t - (rot_g_t @ joints[..., None])[..., 0]              # (B, 16, 3)
        affine = torch.cat([rot_g_t.reshape(bsz, 16, 9), trans], -1)        # (B, 16, 12)
        blended = (self.lbs_weights @ affine).reshape(bsz, -1, 12)          # (B, V, 12)
        r_v = blended[..., :9].reshape(bsz, -1, 3, 3)
        verts = (r_v @ v_posed[..., None])[..., 0] + blended[..., 9:]       # (B, V, 3)

        if transl is not None:
            verts = verts + transl[:, None]
            pos_g_t = pos_g_t + transl[:, None]
        verts = verts * self.scale
        mano_joints = pos_g_t * self.scale
        all_joints = torch.cat([mano_joints, verts[:, self._tips]], 1)      # (B, 21, 3)
        return ManoOutput(
            vertices=verts,
            joints=all_joints[:, self._order],
            mano_joints=mano_joints,
            full_pose=pose,
            rotations=rot,
        )


class SkeletonAdaptation(nn.Module):
    """Skeleton adaptation of §3.4.1: a linear layer, initialised to the identity, mapping the MANO
    joints to a dataset's joint annotations (following the paper's ref. [35]).

    Each output joint is a learned linear combination of the input joints, the same for x, y and
    z, so the map commutes with rotations; at initialisation it is the identity. ``(B, J_in, 3) ->
    (B, J_out, 3)``; for ``J_out != J_in`` the first min(J_in, J_out) rows start as the identity.
    """

    def __init__(self, num_in: int = 21, num_out: int = 21) -> None:
        super().__init__()
        w = torch.zeros(num_out, num_in)
        k = min(num_in, num_out)
        w[:k, :k] = torch.eye(k)
        self.weight = nn.Parameter(w)

    def forward(self, joints: Tensor) -> Tensor:
        return torch.einsum("oi,bic->boc", self.weight.to(joints.dtype), joints)

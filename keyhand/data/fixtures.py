"""Tiny copies of ObMan, STB, RWTH and Creative Senz3D in their published on-disk layouts, and a MANO-format
hand file: what ``keyhand rehearse`` (pipeline/rehearse.py) runs the paper's protocol on, on a CPU.

    from keyhand.data.fixtures import FixtureSizes, write_fixtures
    roots = write_fixtures("runs/rehearse/data-fixtures")          # {"obman": Path, "stb": ..., "mano": file}
    open_dataset("stb", roots["stb"], "test")                       # the readers read them as the real sets

Each writer produces the layout its reader documents (keyhand/data/{obman,stb,rwth,senz3d}.py), nothing else:

* ObMan (``write_obman``): ``{train,val,test}/{rgb,rgb_hand}/XXXXXXXX.jpg`` (256 x 256), ``segm/XXXXXXXX.png`` (3
  channels as cv2 writes them: [0] of rgb/ with 22 = right hand, 100 = object; [1] of rgb_hand/ with 24) and
  ``meta/XXXXXXXX.pkl`` (protocol-2 pickle of numpy arrays and plain values: coords_2d px, coords_3d and verts_3d
  in metres in Blender's camera-at-origin frame, side, hand_pose, pca_pose, shape, trans, z, class_id, ...).
  The images are ObMan's fixed camera (fx = fy = 480, cx = cy = 128); rgb/ is the hand with an object in front
  of part of it, rgb_hand/ the same hand alone.
* STB (``write_stb``): ``images/B{1..6}{Counting,Random}/SK_color_{i}.png`` (640 x 480, the F200 colour camera's
  intrinsics) and ``labels/B{1..6}{Counting,Random}_SK.mat`` with ``handPara`` (3, 21, N) in millimetres in the
  F200 *depth* frame, STB's joint order (palm centre, little .. thumb, each base -> tip). Every one of the 12
  sequences gets frames (B1 = the test split; any B2-B6 sequence can be a held-out validation sequence). The
  hand is a LEFT hand (STB's), the palm centre is the midpoint of wrist and ring MCP (the inverse of the reader's
  ``wrist = 2 palm - ring MCP``), so the reader gives back the rendered joints.
* RWTH (``write_rwth``): ``video/<signer>_<gesture>_<session>_cam1.avi`` (320 x 240 MJPG, 3 frames, the static
  hand shape in the middle one), ``<gesture>`` the 1-based id of :data:`keyhand.data.rwth.RWTH_GESTURES`; the
  ``classes`` of the 30 static signs spread over their ids (A, ..., SCH, ..., 5), ``signers`` signers, session 1.
* Senz3D (``write_senz3d``): ``S{s}/G{g}/{r}-color.png`` (640 x 480), ``{r}-depth.bin`` and ``{r}-conf.bin``
  (240 x 320 int16 little-endian): the hand at its rendered distance, a background plane behind it, a patch of
  the DepthSense no-return code 32001; the depth map registered to the colour image with the reader's own
  co-centred mapping (:func:`keyhand.data.senz3d.depth_box_to_color`), so its nearest-blob box lands on the hand.
* The hand model (``write_mano``): keyhand's license-free proxy in MANO's pickle format, ``mano/MANO_RIGHT.pkl``.

The hands are rendered by :func:`keyhand.data.synthetic.generate` with that MANO file (natural poses for the pose
sets; the canonical gestures of :data:`keyhand.data.poses.GESTURES`, one synthetic subject per signer, for the
gesture sets: class ``c`` shows gesture ``c mod 12``), then warped into each dataset's camera: the two cameras
share their centre, so going from the renderer's intrinsics to the dataset's is an affine image warp and the 3D
joints stay as rendered. Samples whose joints would leave the dataset's image are not used. Everything is a
function of the sizes and the seed (``fixtures.json``, written last, records both: a folder of the same
version, sizes and seed is reused as it is).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import scipy.io
from PIL import Image

from keyhand.atomic import atomic_write_bytes, atomic_write_text

__all__ = ["FIXTURE_VERSION", "FixtureSizes", "write_fixtures", "write_mano", "write_obman", "write_stb",
           "write_rwth", "write_senz3d", "warp_to_camera", "stb_frame_counts"]

FIXTURE_VERSION = "1"
STAMP = "fixtures.json"
#: ObMan's Blender camera (y up, z backwards) <-> OpenCV: its own inverse.
_BLENDER = np.diag([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class FixtureSizes:
    """How many samples each fixture holds (the defaults: the fewest that keep every stage meaningful)."""

    obman: tuple[tuple[str, int], ...] = (("train", 6), ("val", 1), ("test", 1))   # per split (rgb/ and rgb_hand/)
    stb_test_frames: int = 2          # per B1 sequence (B1Counting, B1Random): the test split
    stb_train_frames: int = 1         # per B2..B6 sequence (10 sequences): train and the held-out val
    rwth_signers: int = 2
    rwth_classes: int = 10            # N of the 30 static signs, spread over them (ids 1-35: A .. SCH .. 5)
    senz3d_subjects: int = 2
    senz3d_repetitions: int = 1       # per subject and gesture (11 gestures)
    seed: int = 0


def stb_frame_counts(sizes: FixtureSizes) -> dict[str, int]:
    """Frames per STB sequence: B1Counting/B1Random (test) and the ten B2-B6 sequences."""
    from keyhand.data.stb import SEQUENCES

    return {seq: sizes.stb_test_frames if seq in SEQUENCES["test"] else sizes.stb_train_frames
            for seq in SEQUENCES["all"]}


# ------------------------------------------------------------------------------------------------ rendering
def _render(kind: str, out: Path, n: int, size: tuple[int, int], model: Path, seed: int, subjects: int = 4):
    """A generated synthetic set of ``n`` images (H, W) = ``size`` (a folder of fewer is extended); its reader."""
    from keyhand.data.synthetic import SyntheticReader, generate

    root = generate(kind, out, {"all": n}, seed=seed, image_size=size, model_path=str(model),
                    num_subjects=subjects)
    return SyntheticReader(root, "all")


def warp_to_camera(image: np.ndarray, K_from: np.ndarray, K_to: np.ndarray, size: tuple[int, int],
                   mirror: bool = False, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """The image a camera of intrinsics ``K_to`` and (W, H) ``size`` at the same centre sees: the affine
    ``u' = fx'/fx (u - cx) + cx'`` (per axis). ``mirror``: the view of the 3D points reflected ``x -> -x``
    (``u' = cx' - fx'/fx (u - cx)``), i.e. the other hand."""
    sx, sy = K_to[0, 0] / K_from[0, 0], K_to[1, 1] / K_from[1, 1]
    if mirror:
        sx = -sx
    M = np.array([[sx, 0.0, K_to[0, 2] - sx * K_from[0, 2]], [0.0, sy, K_to[1, 2] - sy * K_from[1, 2]]])
    return cv2.warpAffine(image, M, size, flags=interpolation, borderMode=cv2.BORDER_REFLECT_101)


def _inside(joints_2d: np.ndarray, size: tuple[int, int], margin: float) -> bool:
    w, h = size
    return bool(((joints_2d >= margin) & (joints_2d <= np.array([w - 1, h - 1]) - margin)).all())


def _project(joints_3d: np.ndarray, K: np.ndarray) -> np.ndarray:
    p = np.asarray(joints_3d, np.float64) @ np.asarray(K, np.float64).T
    return p[:, :2] / p[:, 2:3]


def _hands(out: Path, need: int, model: Path, seed: int, K: np.ndarray, size: tuple[int, int], margin: float,
           mirror: bool = False) -> tuple[object, list[int]]:
    """Rendered STB-like hands (at half the camera's resolution: warped up, the hand is what matters) of which
    ``need`` keep every joint ``margin`` px inside a (W, H) ``size`` image of intrinsics ``K``: (reader, indices).
    Renders more candidates until enough fit."""
    flip = np.diag([-1.0 if mirror else 1.0, 1.0, 1.0])
    render_size = (max(32, size[1] // 2), max(32, size[0] // 2))
    n, picked, seen = need + max(2, need // 4), [], 0
    for _ in range(8):
        reader = _render("synth-stb", out, n, render_size, model, seed)
        for i in range(seen, len(reader)):
            ann = json.loads((reader.root / reader.keys[i]).with_suffix(".json").read_text())
            if _inside(_project(np.asarray(ann["joints_3d"]) @ flip, K), size, margin):
                picked.append(i)
                if len(picked) == need:
                    return reader, picked
        seen, n = len(reader), 2 * n
    raise RuntimeError(f"fixtures: only {len(picked)} of {seen} rendered hands fit a {size} image, {need} needed")


def _png(path: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb)
    if not ok:  # pragma: no cover - cv2 encodes any uint8 array
        raise RuntimeError(f"fixtures: PNG encoding of {path} failed")
    atomic_write_bytes(path, buf.tobytes())


def _to_world(x: np.ndarray) -> np.ndarray:
    """OpenCV camera-frame millimetres -> ObMan's Blender camera-at-origin metres."""
    return (np.asarray(x, np.float64) @ _BLENDER) / 1000.0


def _jpg(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, quality=92)


# --------------------------------------------------------------------------------------------------- MANO
def write_mano(root: str | os.PathLike, seed: int = 0) -> Path:
    """``root/mano/MANO_RIGHT.pkl``: keyhand's proxy hand in MANO's pickle format (the official file drops in)."""
    from keyhand.geometry.proxy_hand import write_proxy_hand

    return write_proxy_hand(Path(root) / "mano" / "MANO_RIGHT.pkl", seed=seed, side="right")


# -------------------------------------------------------------------------------------------------- ObMan
def _occluder(rng: np.random.Generator, joints_2d: np.ndarray, size: int) -> np.ndarray:
    """A filled ellipse (the grasped object) over part of the hand: (size, size) bool."""
    obj = np.zeros((size, size), np.uint8)
    centre = joints_2d[rng.choice([1, 5, 9, 13])] + rng.normal(0, 6, 2)
    axes = (int(rng.uniform(18, 34)), int(rng.uniform(12, 26)))
    cv2.ellipse(obj, (int(centre[0]), int(centre[1])), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return obj.astype(bool)


def write_obman(root: str | os.PathLike, model: str | os.PathLike, splits: dict[str, int] | None = None,
                seed: int = 0, scratch: str | os.PathLike | None = None) -> Path:
    """ObMan's layout (module docstring) with ``splits`` images per split; returns ``root``."""
    from keyhand.data.obman import OBMAN_INTRINSICS

    root, splits = Path(root), dict(splits or FixtureSizes().obman)
    size = 256
    total = sum(splits.values())
    reader, picked = _hands(Path(scratch or root / ".render") / "obman", total, Path(model), seed, OBMAN_INTRINSICS,
                            (size, size), margin=12.0)
    chosen = iter(picked)
    rng = np.random.default_rng([seed, 11])
    for split, n in splits.items():
        d = root / split
        for sub in ("rgb", "rgb_hand", "segm", "meta"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        for j in range(n):
            i = next(chosen)
            s = reader[i]
            K = s.intrinsics.astype(np.float64)
            hand_img = warp_to_camera(s.image, K, OBMAN_INTRINSICS, (size, size))
            hand = warp_to_camera(s.mask, K, OBMAN_INTRINSICS, (size, size), interpolation=cv2.INTER_NEAREST) > 0
            joints_2d = _project(s.joints_3d, OBMAN_INTRINSICS)
            obj = _occluder(rng, joints_2d, size)
            colour = rng.uniform(40, 220, 3)
            rgb = hand_img.copy()
            rgb[obj] = np.clip(colour + rng.normal(0, 6, (int(obj.sum()), 3)), 0, 255).astype(np.uint8)
            segm = np.zeros((size, size, 3), np.uint8)
            segm[..., 0] = np.where(obj, 100, np.where(hand, 22, 0))
            segm[..., 1] = np.where(hand, 24, 0)
            segm[..., 2] = np.where(obj, 100, 0)
            prefix = f"{j:08d}"
            _jpg(d / "rgb" / f"{prefix}.jpg", rgb)
            _jpg(d / "rgb_hand" / f"{prefix}.jpg", hand_img)
            ok, buf = cv2.imencode(".png", segm)   # cv2's channel order, as ObMan's renderer wrote it
            atomic_write_bytes(d / "segm" / f"{prefix}.png", buf.tobytes())
            ann = json.loads((reader.root / reader.keys[i]).with_suffix(".json").read_text())
            verts = reader.vertices(i).astype(np.float64)
            z = float(s.joints_3d[:, 2].mean()) / 1000.0
            meta = {"coords_2d": joints_2d.astype(np.float32), "coords_3d": _to_world(s.joints_3d).astype(np.float32),
                    "verts_3d": _to_world(verts).astype(np.float32), "side": "right",
                    "hand_pose": np.asarray(ann["pose"], np.float32), "pca_pose": np.zeros(45, np.float32),
                    "mano_pose": np.asarray(ann["pose"], np.float32), "shape": np.asarray(ann["betas"], np.float32),
                    "trans": _to_world(s.joints_3d.mean(0, keepdims=True))[0].astype(np.float32), "z": z,
                    "class_id": "02876657", "sample_id": f"fixture{split}{j}", "obj_path": "fixture/ellipse.obj",
                    "obj_scale": 0.1, "affine_transform": np.eye(4, dtype=np.float32),
                    "depth_min": np.float32(z - 0.15), "depth_max": np.float32(z + 0.15),
                    "hand_depth_min": np.float32(z - 0.08), "hand_depth_max": np.float32(z + 0.08),
                    "obj_depth_min": np.float32(z - 0.1), "obj_depth_max": np.float32(z)}
            atomic_write_bytes(d / "meta" / f"{prefix}.pkl", pickle.dumps(meta, protocol=2))
    return root


# ---------------------------------------------------------------------------------------------------- STB
def write_stb(root: str | os.PathLike, model: str | os.PathLike, frames: dict[str, int] | None = None,
              seed: int = 0, scratch: str | os.PathLike | None = None) -> Path:
    """STB's SK layout (module docstring), ``frames`` per sequence (default: :func:`stb_frame_counts`)."""
    from keyhand.data.stb import RING_MCP_COMMON, SK_COLOR_INTRINSICS, SK_DEPTH_TO_COLOR, STB_TO_COMMON

    root = Path(root)
    frames = dict(frames or stb_frame_counts(FixtureSizes()))
    size = (640, 480)
    total = sum(frames.values())
    reader, picked = _hands(Path(scratch or root / ".render") / "stb", total, Path(model), seed + 1,
                            SK_COLOR_INTRINSICS, size, margin=16.0, mirror=True)
    chosen = iter(picked)
    R, T = SK_DEPTH_TO_COLOR
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for seq, n in frames.items():
        para = np.zeros((3, 21, n))
        for f in range(n):
            s = reader[next(chosen)]
            image = warp_to_camera(s.image, s.intrinsics.astype(np.float64), SK_COLOR_INTRINSICS, size, mirror=True)
            (root / "images" / seq).mkdir(parents=True, exist_ok=True)
            _png(root / "images" / seq / f"SK_color_{f}.png", image)
            common = np.asarray(s.joints_3d, np.float64) * np.array([-1.0, 1.0, 1.0])   # the left hand, colour frame
            common[0] = 0.5 * (common[0] + common[RING_MCP_COMMON])                      # STB's palm centre
            stb = np.empty_like(common)
            stb[STB_TO_COMMON] = common                                                   # common -> STB order
            para[:, :, f] = (stb @ R.T + T).T                                             # colour -> depth frame
        scipy.io.savemat(str(root / "labels" / f"{seq}_SK.mat"), {"handPara": para})
    return root


# -------------------------------------------------------------------------------------------- gesture sets
def _gesture_reader(out: Path, per: list[tuple[int, int, int]], size: tuple[int, int], model: Path, seed: int,
                    subjects: int):
    """Render the synthetic gesture set so that (class g, subject s, repetition r) of ``per`` is sample
    ``g mod G + G (s + S (r + g div G))`` (class g shows synthetic gesture g mod G, G = 12); returns (reader, index
    of each entry of ``per``)."""
    from keyhand.data.poses import GESTURES

    G = len(GESTURES)
    index = [g % G + G * (s + subjects * (r + g // G)) for g, s, r in per]
    return _render("synth-gestures", out, max(index) + 1, size, model, seed, subjects=subjects), index


def _upscale(image: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """A half-resolution render brought to the dataset's (W, H) ``size``."""
    return cv2.resize(image, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)


def _video(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> None:
    """An MJPG .avi of RGB frames, written next to ``path`` then renamed (never a half-written file)."""
    h, w = frames[0].shape[:2]
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.avi")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():  # pragma: no cover - OpenCV's own MJPEG writer needs no codec library
        raise RuntimeError(f"fixtures: cannot write {path} (cv2.VideoWriter MJPG)")
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    os.replace(tmp, path)


def write_rwth(root: str | os.PathLike, model: str | os.PathLike, signers: int = 2, classes: int = 30,
               seed: int = 0, scratch: str | os.PathLike | None = None) -> Path:
    """RWTH's ``video/`` layout (module docstring): ``classes`` of the 30 static signs, evenly spread over them (the
    first and the last, "A" and "5", always among them), x ``signers`` signers, session 1."""
    from keyhand.data.rwth import RWTH_GESTURES, RWTH_STATIC

    root = Path(root)
    chosen = sorted({int(round(x)) for x in np.linspace(0, len(RWTH_STATIC) - 1, max(1, classes))})
    per = [(j, k, 0) for k in range(signers) for j in range(len(chosen))]   # j: the j-th chosen sign
    reader, index = _gesture_reader(Path(scratch or root / ".render") / "rwth", per, (120, 160), Path(model),
                                    seed + 2, signers)
    (root / "video").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 13])
    for (j, k, _), i in zip(per, index, strict=True):
        c = chosen[j]
        image = _upscale(reader[i].image, (320, 240))
        gesture_id = RWTH_GESTURES.index(RWTH_STATIC[c]) + 1
        # the sign held still in the middle frame; the hand moving into it before and out of it after
        shifted = [np.roll(image, int(d), axis=1) for d in rng.integers(-6, 7, 2)]
        _video(root / "video" / f"{k + 1}_{gesture_id}_1_cam1.avi", [shifted[0], image, shifted[1]])
    return root


def write_senz3d(root: str | os.PathLike, model: str | os.PathLike, subjects: int = 2, repetitions: int = 1,
                 seed: int = 0, scratch: str | os.PathLike | None = None) -> Path:
    """Creative Senz3D's layout (module docstring): 11 gestures x ``subjects`` x ``repetitions``."""
    from keyhand.data.senz3d import DEPTH_SHAPE, depth_box_to_color

    root = Path(root)
    per = [(g, s, r) for s in range(subjects) for g in range(11) for r in range(repetitions)]
    reader, index = _gesture_reader(Path(scratch or root / ".render") / "senz3d", per, (240, 320), Path(model),
                                    seed + 3, subjects)
    hd, wd = DEPTH_SHAPE
    x0, y0, x1, y1 = depth_box_to_color((0, 0, 1, 1), (wd, hd), (640, 480))   # the reader's registration
    us = np.clip(np.floor(x0 + (x1 - x0) * (np.arange(wd) + 0.5)).astype(int), 0, 639)
    vs = np.clip(np.floor(y0 + (y1 - y0) * (np.arange(hd) + 0.5)).astype(int), 0, 479)
    rng = np.random.default_rng([seed, 17])
    for (g, s, r), i in zip(per, index, strict=True):
        sample = reader[i]
        folder = root / f"S{s + 1}" / f"G{g + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        _png(folder / f"{r + 1}-color.png", _upscale(sample.image, (640, 480)))
        hand = _upscale(sample.mask, (640, 480), nearest=True)[np.ix_(vs, us)] > 0
        z = float(sample.joints_3d[:, 2].mean())
        wall = 1100.0 + 250.0 * np.linspace(0, 1, wd)[None, :] + rng.normal(0, 3, (hd, wd))
        depth = np.where(hand, z + rng.normal(0, 4, (hd, wd)), wall)
        conf = np.where(hand, 900, 250) + rng.integers(0, 50, (hd, wd))
        depth[:12, -20:] = 32001     # a no-return patch (DepthSense saturation code)
        conf[:12, -20:] = 0
        atomic_write_bytes(folder / f"{r + 1}-depth.bin", np.round(depth).astype("<i2").tobytes())
        atomic_write_bytes(folder / f"{r + 1}-conf.bin", conf.astype("<i2").tobytes())
    return root


# ----------------------------------------------------------------------------------------------- all four
def write_fixtures(out: str | os.PathLike, sizes: FixtureSizes | None = None, log=None) -> dict[str, Path]:
    """Write the four datasets and the MANO file under ``out`` (reused when ``fixtures.json`` matches);
    returns ``{"obman", "stb", "rwth", "senz3d": dataset root, "mano": MANO_RIGHT.pkl}``."""
    out, sizes = Path(out), sizes or FixtureSizes()
    roots = {name: out / name for name in ("obman", "stb", "rwth", "senz3d")}
    roots["mano"] = out / "mano" / "MANO_RIGHT.pkl"
    want = {"version": FIXTURE_VERSION, "sizes": json.loads(json.dumps(asdict(sizes)))}
    stamp = out / STAMP
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == want and all(p.exists() for p in roots.values()):
                return roots
        except json.JSONDecodeError:
            pass
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    scratch = out / ".render"
    model = write_mano(out, seed=sizes.seed)
    steps = (("obman", lambda: write_obman(roots["obman"], model, dict(sizes.obman), sizes.seed, scratch)),
             ("stb", lambda: write_stb(roots["stb"], model, stb_frame_counts(sizes), sizes.seed, scratch)),
             ("rwth", lambda: write_rwth(roots["rwth"], model, sizes.rwth_signers, sizes.rwth_classes, sizes.seed,
                                         scratch)),
             ("senz3d", lambda: write_senz3d(roots["senz3d"], model, sizes.senz3d_subjects, sizes.senz3d_repetitions,
                                             sizes.seed, scratch)))
    for name, write in steps:
        write()
        if log:
            log(f"fixtures: wrote {roots[name]}")
    shutil.rmtree(scratch, ignore_errors=True)
    atomic_write_text(stamp, json.dumps(want, indent=1))
    return roots

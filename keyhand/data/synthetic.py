"""Synthetic hand datasets: the embedded default that replaces ObMan, STB and the gesture sets.

    from keyhand.data.synthetic import generate, SyntheticReader
    generate("synth-stb", "data/synth-stb", sizes={"train": 600, "test": 200}, seed=0)
    reader = SyntheticReader("data/synth-stb", "train")      # yields keyhand.data.record.HandSample

    keyhand make-synthetic synth-gestures --out data/synth-gestures --per-class 10
    keyhand contact-sheet data/synth-stb --split train --out docs/synth_stb.png

The hand is the MANO layer's (the proxy, or the official model when configured) rendered with
keyhand's rasteriser z-buffer (:func:`keyhand.geometry.render.rasterize`) under a pinhole camera,
with smooth Lambert shading, skin tones with a lighter palm and nails (the cues that tell a palm view from
a back view, :func:`_surface_marks`), procedural textured backgrounds and, for the ObMan-like
set, random occluding objects in front of the hand. Poses come from
:mod:`keyhand.data.poses`: natural poses (STB/ObMan-like) or canonical gestures with per-sample
noise (gesture set: ``len(GESTURES)`` classes, several "subjects" = shape + skin tone).

On-disk format (``root/``):
    dataset.json                       kind, seed, sizes, image size, classes, subjects, version
    {split}/{i:06d}.png                RGB image, H×W
    {split}/{i:06d}_mask.png           uint8: 255 = visible hand, 128 = occluding object, 0 = background
    {split}/{i:06d}.json               joints_2d (21×2 px, OpenCV convention: pixel centres at integers),
                                       joints_3d (21×3 mm, camera frame x right y down z forward),
                                       intrinsics (3×3), visibility (21, 1 = inside the image),
                                       gesture/gesture_name/subject (gesture set), betas, pose (45, flat-mean
                                       axis-angle), global rotation (3×3)
Joint order: :data:`keyhand.data.record.JOINT_NAMES` (manopth order).
Every sample is a function of (seed, kind, split, index) only: the same seed gives the same files,
whatever the batch size. Files are written atomically and ``dataset.json`` last.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from keyhand.atomic import atomic_write_bytes
from keyhand.data.poses import GESTURES, HandArticulation, sample_natural_curls
from keyhand.data.record import NUM_JOINTS, DatasetNotFoundError, HandSample

__all__ = ["KINDS", "SYNTH_VERSION", "generate", "SyntheticReader", "render_batch", "contact_sheet"]

SYNTH_VERSION = "2"
KINDS = ("synth-obman", "synth-stb", "synth-gestures")
_SPLIT_IDS = {"train": 1, "val": 2, "test": 3}
# Skin tones (linear-ish RGB in [0, 1]), light to dark.
_SKIN = np.array([[0.96, 0.80, 0.69], [0.91, 0.72, 0.58], [0.82, 0.62, 0.48], [0.70, 0.50, 0.36],
                  [0.55, 0.38, 0.27], [0.40, 0.27, 0.19], [0.30, 0.20, 0.15]])
# The palm's tone (mixed half and half with the skin's) and the nails' (_surface_marks).
_PALM = np.array([0.96, 0.74, 0.68])
_NAIL = np.array([0.94, 0.82, 0.80], np.float32)


@dataclass(frozen=True)
class _Scene:
    """Per-sample random choices (numpy), a function of (seed, split, index)."""

    betas: np.ndarray      # (10,)
    pose: np.ndarray       # (45,) axis-angle, flat-hand-mean space
    rotation: np.ndarray   # (3, 3) hand -> camera
    centre_px: np.ndarray  # (2,) where the hand's joint centroid lands
    depth_m: float         # distance of the joint centroid
    focal: float
    skin: np.ndarray       # (3,)
    light: np.ndarray      # (3,) direction towards the light, camera frame
    gesture: int
    subject: int


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


class _SceneSampler:
    def __init__(self, kind: str, art: HandArticulation, frame: np.ndarray, seed: int, size: tuple[int, int],
                 num_subjects: int) -> None:
        self.kind, self.art, self.frame, self.seed, self.size = kind, art, frame, seed, size
        self.gesture_names = list(GESTURES)
        srng = np.random.default_rng([seed, 99])
        self.subject_betas = srng.normal(0, 0.8, size=(num_subjects, 10))
        self.subject_skin = _SKIN[srng.permutation(len(_SKIN))[np.arange(num_subjects) % len(_SKIN)]]

    def __call__(self, split: str, index: int) -> _Scene:
        rng = np.random.default_rng([self.seed, KINDS.index(self.kind), _SPLIT_IDS.get(split, 9), index])
        h, w = self.size
        gesture, subject = -1, -1
        noise = rng.normal(0, np.radians(4), size=(15, 3))
        if self.kind == "synth-gestures":
            n_cls, n_sub = len(self.gesture_names), len(self.subject_betas)
            gesture = index % n_cls
            subject = (index // n_cls) % n_sub
            g = GESTURES[self.gesture_names[gesture]]
            curl = np.clip(np.asarray(g["curl"]) + rng.normal(0, 0.07, 5), 0, 1)
            spread = float(np.clip(g["spread"] + rng.normal(0, 0.1), 0, 1))
            betas = self.subject_betas[subject] + rng.normal(0, 0.05, 10)
            skin = self.subject_skin[subject] * rng.uniform(0.95, 1.05)
            tilt_max, roll_max = np.radians(35), np.radians(30)
        else:
            curls, spreads = sample_natural_curls(rng, 1)
            curl, spread = curls[0], float(spreads[0])
            betas = rng.normal(0, 1.0, 10)
            skin = _SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.9, 1.1)
            # ObMan-like: any view; STB-like: a hand held up in front of the camera (STB's sequences)
            tilt_max, roll_max = (np.radians(70), np.pi) if self.kind == "synth-obman" else (np.radians(50),
                                                                                              np.radians(75))
        pose = self.art.pose(curl, spread, noise)
        # View: the hand frame's (fingers, dorsal) axes to the camera's (up, towards camera or away),
        # then a random tilt and roll.
        facing = 1.0 if rng.random() < 0.6 else -1.0      # dorsum (+1) or palm (-1) towards the camera
        target = np.stack([np.array([0.0, -1.0, 0.0]), np.array([0.0, 0.0, -facing])])
        target = np.concatenate([target, np.cross(target[0], target[1])[None]])
        base = target.T @ self.frame                      # frame rows: fingers, dorsal, third axis
        tilt = _rotation(np.array([rng.normal(), rng.normal(), 0.0]), rng.uniform(0, tilt_max))
        roll = _rotation(np.array([0.0, 0.0, 1.0]), rng.uniform(-roll_max, roll_max))
        rotation = roll @ tilt @ base
        focal = rng.uniform(0.9, 1.3) * w
        depth = focal / w * 0.19 / rng.uniform(0.3, 0.5)   # a 19 cm hand spans 30-50 % of the width
        centre = np.array([rng.uniform(0.38, 0.62) * w, rng.uniform(0.38, 0.62) * h])
        light = np.array([rng.normal(0, 0.6), rng.normal(-0.5, 0.5), -1.0])
        return _Scene(betas=betas, pose=pose, rotation=rotation, centre_px=centre, depth_m=depth,
                      focal=focal, skin=np.clip(skin, 0, 1), light=light / np.linalg.norm(light),
                      gesture=gesture, subject=subject)


def _hand_frame(layer) -> np.ndarray:
    """(3, 3) rows: finger direction, dorsal normal, their cross product (rest skeleton)."""
    joints = layer.J_template.detach().cpu().double().numpy()
    fingers = joints[4] - joints[0]
    fingers /= np.linalg.norm(fingers)
    sign = 1.0 if layer.side == "right" else -1.0
    dorsal = sign * np.cross(joints[7] - joints[0], joints[1] - joints[0])  # right hand: (L-W)×(I-W)
    dorsal -= fingers * np.dot(dorsal, fingers)
    dorsal /= np.linalg.norm(dorsal)
    return np.stack([fingers, dorsal, np.cross(fingers, dorsal)])


def _vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """(V, 3) unit vertex normals: the area-weighted sum of the adjacent faces' normals."""
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    vn = np.zeros_like(v)
    for c in range(3):
        np.add.at(vn, f[:, c], fn)
    return vn / np.linalg.norm(vn, axis=1, keepdims=True).clip(1e-12)


def _surface_marks(layer, frame: np.ndarray) -> np.ndarray:
    """(V, 2) per-vertex weights in [0, 1] of the palm side and of the nails, from the flat rest hand.

    A real hand's palm (and the palmar side of its fingers) is lighter than its back, and its nails mark the
    dorsum: the cues that tell a palm from a back view whose silhouettes are mirror images. Without them the
    SFE confused the thumb and little-finger sides on 25 % of the STB-like test crops (docs/statistics.md).
    """
    dt = layer.v_template.dtype
    with torch.no_grad():
        out = layer(global_orient=torch.zeros(1, 3, dtype=dt), hand_pose=torch.zeros(1, 45, dtype=dt),
                    betas=torch.zeros(1, 10, dtype=dt))
    v, j = out.vertices[0].double().numpy(), out.joints[0].double().numpy()
    up = _vertex_normals(v, layer.faces.numpy()) @ frame[1]                                              # +1 dorsal, -1 palmar
    palm = np.clip((-up - 0.1) / 0.4, 0.0, 1.0)
    nail = np.zeros(len(v))
    for tip in (4, 8, 12, 16, 20):                                  # manopth order: the fingertips
        seg = j[tip] - j[tip - 1]
        length = np.linalg.norm(seg)
        along = (v - j[tip - 1]) @ seg / length ** 2                  # 0 at the last joint, 1 at the tip
        near = np.clip((along - 0.35) / 0.15, 0.0, 1.0) * (np.linalg.norm(v - j[tip], axis=1) < 0.9 * length)
        nail = np.maximum(nail, near * np.clip((up - 0.35) / 0.25, 0.0, 1.0))
    return np.stack([palm, nail], 1).astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A procedural textured background, float32 (H, W, 3) in [0, 1]."""
    kind = rng.integers(4)
    base = rng.uniform(0.1, 0.9, 3)
    if kind == 0:  # smooth colour noise at a random scale
        s = int(rng.integers(3, 12))
        img = cv2.resize(rng.uniform(0, 1, (s, s, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    elif kind == 1:  # stripes
        period = rng.uniform(8, 40)
        ang = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        t = np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * 2 * np.pi / period)[..., None]
        other = rng.uniform(0.1, 0.9, 3)
        img = np.where(t > 0, base, other).astype(np.float32)
    elif kind == 2:  # random rectangles and discs
        img = np.tile(base.astype(np.float32), (h, w, 1))
        for _ in range(int(rng.integers(5, 20))):
            c = tuple(float(v) for v in rng.uniform(0, 1, 3))
            x, y = int(rng.integers(w)), int(rng.integers(h))
            if rng.random() < 0.5:
                cv2.circle(img, (x, y), int(rng.integers(5, max(6, w // 4))), c, -1)
            else:
                cv2.rectangle(img, (x, y), (x + int(rng.integers(10, w // 2)), y + int(rng.integers(10, h // 2))),
                              c, -1)
    else:  # gradient with fine grain
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        g = (xx / w * rng.uniform(-1, 1) + yy / h * rng.uniform(-1, 1))[..., None]
        img = np.clip(base + 0.4 * g * rng.uniform(-1, 1, 3), 0, 1).astype(np.float32)
    grain = rng.normal(0, rng.uniform(0.0, 0.05), (h, w, 1)).astype(np.float32)
    return np.clip(img + grain, 0, 1)


def _occluders(rng: np.random.Generator, img: np.ndarray, joints_2d: np.ndarray) -> np.ndarray:
    """Draw 1-2 objects in front of the hand (ObMan-like); returns their mask (H, W) bool."""
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    span = max(float(np.ptp(joints_2d[:, 0])), float(np.ptp(joints_2d[:, 1])), 10.0)
    for _ in range(int(rng.integers(1, 3))):
        cx, cy = joints_2d[rng.integers(NUM_JOINTS)] + rng.normal(0, 0.15 * span, 2)
        layer = np.zeros((h, w), np.uint8)
        ax = (int(rng.uniform(0.12, 0.3) * span), int(rng.uniform(0.12, 0.3) * span))
        if rng.random() < 0.5:
            cv2.ellipse(layer, (int(cx), int(cy)), ax, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 7))))
            radii = rng.uniform(0.5, 1.0, angles.size) * max(ax)
            pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).astype(np.int32)
            cv2.fillPoly(layer, [pts], 1)
        colour = rng.uniform(0, 1, 3).astype(np.float32)
        yy = np.linspace(1.1, 0.7, h, dtype=np.float32)[:, None, None]
        sel = layer.astype(bool)
        img[sel] = np.clip(colour * yy, 0, 1)[np.nonzero(sel)[0], 0]
        mask |= layer
    return mask.astype(bool)


def render_batch(layer, scenes: list[_Scene], size: tuple[int, int], marks: np.ndarray | None = None) -> list[dict]:
    """Render scenes with the MANO layer and keyhand's rasteriser; returns per-sample arrays.

    ``marks``: the layer's :func:`_surface_marks` (computed when None), interpolated per pixel."""
    from keyhand.geometry.render import rasterize

    h, w = size
    if marks is None:
        marks = _surface_marks(layer, _hand_frame(layer))
    dt = layer.v_template.dtype
    betas = torch.as_tensor(np.stack([s.betas for s in scenes]), dtype=dt)
    pose = torch.as_tensor(np.stack([s.pose for s in scenes]), dtype=dt)
    with torch.no_grad():
        out = layer(global_orient=torch.zeros(len(scenes), 3, dtype=dt), hand_pose=pose, betas=betas)
    verts = out.vertices.double().numpy()                    # (B, V, 3) layer units
    joints = out.joints.double().numpy()                     # (B, 21, 3)
    unit = 1000.0 if layer.unit == "mm" else 1.0
    results, cam_verts = [], []
    for s, v, j in zip(scenes, verts, joints, strict=True):
        centroid = j.mean(0)
        vc = (v - centroid) @ s.rotation.T / unit             # metres, camera orientation
        jc = (j - centroid) @ s.rotation.T / unit
        k = np.array([[s.focal, 0, w / 2 - 0.5], [0, s.focal, h / 2 - 0.5], [0, 0, 1.0]])
        # place the centroid at depth_m on the ray through centre_px
        ray = np.linalg.solve(k, np.array([*s.centre_px, 1.0]))
        shift = ray * s.depth_m
        vc, jc = vc + shift, jc + shift
        uvj = (jc @ k.T)[:, :2] / jc[:, 2:3]
        uvv = (vc @ k.T)[:, :2] / vc[:, 2:3]
        ndc = np.concatenate([(2 * uvv[:, :1] + 1) / w - 1, (2 * uvv[:, 1:2] + 1) / h - 1, vc[:, 2:3]], 1)
        cam_verts.append(ndc)
        results.append({"joints_3d": jc * 1000.0, "joints_2d": uvj, "intrinsics": k, "verts_cam": vc})
    faces = layer.faces
    frags = rasterize(torch.as_tensor(np.stack(cam_verts), dtype=torch.float32), faces, (h, w))
    face_idx = frags.face_idx.numpy()
    bary = frags.bary.numpy()
    f_np = faces.numpy()
    for r, s, fi, bc in zip(results, scenes, face_idx, bary, strict=True):
        vn = _vertex_normals(r["verts_cam"], f_np)
        hit = fi >= 0
        normals = np.einsum("pk,pkc->pc", bc[hit], vn[f_np[fi[hit]]])
        normals /= np.linalg.norm(normals, axis=1, keepdims=True).clip(1e-12)
        lambert = np.abs(normals @ s.light)  # two-sided: thin parts may be seen from behind
        shade = np.zeros(fi.shape, np.float32)
        shade[hit] = 0.35 + 0.65 * lambert
        r["hand_mask"] = hit
        r["shade"] = shade
        r["marks"] = np.zeros((*fi.shape, 2), np.float32)
        r["marks"][hit] = np.einsum("pk,pkc->pc", bc[hit], marks[f_np[fi[hit]]])
        del r["verts_cam"]
    return results


def _compose(scene: _Scene, rendered: dict, rng: np.random.Generator, occluders: bool) -> tuple:
    h, w = rendered["hand_mask"].shape
    img = _background(rng, h, w)
    hand = rendered["hand_mask"]
    tex = 1.0 + 0.04 * cv2.resize(rng.normal(0, 1, (h // 4, w // 4)).astype(np.float32), (w, h))
    palm, nail = rendered["marks"][..., :1], rendered["marks"][..., 1:]
    albedo = scene.skin.astype(np.float32) * (1 - palm) + (0.5 * scene.skin + 0.5 * _PALM).astype(np.float32) * palm
    albedo = albedo * (1 - nail) + _NAIL * nail
    colour = albedo * (rendered["shade"] * tex)[..., None]
    alpha = cv2.GaussianBlur(hand.astype(np.float32), (3, 3), 0.6)[..., None]
    img = img * (1 - alpha) + np.clip(colour, 0, 1) * alpha
    obj = _occluders(rng, img, rendered["joints_2d"]) if occluders else np.zeros_like(hand)
    img = np.clip(img + rng.normal(0, 0.01, img.shape), 0, 1)
    image = (img * 255 + 0.5).astype(np.uint8)
    mask = np.where(obj, 128, np.where(hand, 255, 0)).astype(np.uint8)
    return image, mask


def _png(image: np.ndarray) -> bytes:
    arr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _check_resumable(root: Path, kind: str, seed: int, image_size: tuple[int, int]) -> None:
    """Generation resumes a folder sample by sample: refuse one written by another generator version, kind, seed
    or image size (its samples would be mixed with new ones) in one line naming its dataset.json."""
    meta_file = root / "dataset.json"
    if not meta_file.exists():
        return
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{meta_file}: not a generator's dataset.json; remove {root} or choose another output "
                         "folder") from None
    want = {"version": SYNTH_VERSION, "kind": kind, "seed": seed, "image_size": list(image_size)}
    for key, value in want.items():
        if meta.get(key) != value:
            raise ValueError(f"{meta_file}: written with {key} {meta.get(key)}, not {value}; remove {root} "
                             "or choose another output folder")


def generate(kind: str, out: str | os.PathLike, sizes: dict[str, int], seed: int = 0,
             image_size: tuple[int, int] = (240, 320), model_path: str | None = None,
             num_subjects: int = 4, batch_size: int = 32,
             progress: Callable[[int, int], None] | None = None) -> Path:
    """Generate a synthetic dataset (module docstring) and return its root.

    Args:
        kind: ``synth-obman`` (occluders), ``synth-stb`` or ``synth-gestures``.
        sizes: images per split, e.g. ``{"train": 600, "test": 200}``; for the gesture set the
            classes and subjects cycle with the index, so use a multiple of classes × subjects.
        image_size: (H, W) of the full images (the §3.1 crop happens in preparation).
        model_path: MANO file (None: the proxy hand).
    """
    from keyhand.geometry.mano import ManoLayer

    if kind not in KINDS:
        raise ValueError(f"synthetic kind must be one of {KINDS}, got {kind!r}")
    root = Path(out)
    _check_resumable(root, kind, seed, image_size)
    layer = ManoLayer(model_path, side="right", use_pca=False, flat_hand_mean=True, unit="mm",
                      dtype=torch.float64)  # float64: per-sample results do not depend on the batch
    art = HandArticulation.from_layer(layer)
    frame = _hand_frame(layer)
    sampler = _SceneSampler(kind, art, frame, seed, image_size, num_subjects)
    marks = _surface_marks(layer, frame)
    total, done = sum(sizes.values()), 0
    for split, n in sizes.items():
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        for start in range(0, n, batch_size):
            idx = [i for i in range(start, min(n, start + batch_size)) if not (folder / f"{i:06d}.json").exists()]
            if idx:
                scenes = [sampler(split, i) for i in idx]
                for i, s, r in zip(idx, scenes, render_batch(layer, scenes, image_size, marks), strict=True):
                    rng = np.random.default_rng([seed, KINDS.index(kind), _SPLIT_IDS.get(split, 9), i, 7])
                    image, mask = _compose(s, r, rng, occluders=kind == "synth-obman")
                    vis = ((r["joints_2d"] >= 0) & (r["joints_2d"] <= np.array(image_size[::-1]) - 1)).all(1)
                    ann = {
                        "joints_2d": r["joints_2d"].round(4).tolist(),
                        "joints_3d": r["joints_3d"].round(4).tolist(),
                        "intrinsics": r["intrinsics"].tolist(),
                        "visibility": vis.astype(int).tolist(),
                        "gesture": s.gesture, "subject": s.subject,
                        "gesture_name": sampler.gesture_names[s.gesture] if s.gesture >= 0 else None,
                        "betas": s.betas.round(6).tolist(), "pose": s.pose.round(6).tolist(),
                        "rotation": s.rotation.round(8).tolist(),
                    }
                    atomic_write_bytes(folder / f"{i:06d}.png", _png(image))
                    atomic_write_bytes(folder / f"{i:06d}_mask.png", _png(mask))
                    atomic_write_bytes(folder / f"{i:06d}.json", json.dumps(ann).encode())  # last: marks done
            done += min(n, start + batch_size) - start
            if progress:
                progress(done, total)
    meta = {"kind": kind, "version": SYNTH_VERSION, "seed": seed, "sizes": sizes,
            "image_size": list(image_size), "model": str(layer.model_path),
            "classes": list(GESTURES) if kind == "synth-gestures" else [],
            "num_subjects": num_subjects if kind == "synth-gestures" else 0}
    atomic_write_bytes(root / "dataset.json", json.dumps(meta, indent=2).encode())
    return root


class SyntheticReader:
    """Reads a generated dataset's split as :class:`HandSample` records (lazy image loading)."""

    def __init__(self, root: str | os.PathLike, split: str = "train") -> None:
        self.root = Path(root)
        meta = self.root / "dataset.json"
        if not meta.is_file():
            raise DatasetNotFoundError(
                f"synthetic dataset not found: {meta} (set data.synthetic.root in params.yaml or run "
                "`keyhand make-synthetic`)")
        self.meta = json.loads(meta.read_text())
        self.split = split
        n = int(self.meta["sizes"].get(split, 0))
        self.keys = [f"{split}/{i:06d}" for i in range(n)]
        self.source = self.meta["kind"]

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> HandSample:
        key = self.keys[i]
        base = self.root / key
        ann = json.loads(base.with_suffix(".json").read_text())
        image = cv2.imread(str(base.with_suffix(".png")), cv2.IMREAD_COLOR)
        if image is None:
            from keyhand.data.record import DatasetError

            raise DatasetError(f"{base.with_suffix('.png')}: unreadable image")
        mask = cv2.imread(str(base) + "_mask.png", cv2.IMREAD_GRAYSCALE)
        return HandSample(
            image=cv2.cvtColor(image, cv2.COLOR_BGR2RGB), key=key, source=self.source,
            joints_2d=np.asarray(ann["joints_2d"], np.float32), joints_3d=np.asarray(ann["joints_3d"], np.float32),
            intrinsics=np.asarray(ann["intrinsics"], np.float32),
            visibility=np.asarray(ann["visibility"], np.float32),
            mask=None if mask is None else (mask == 255).astype(np.uint8),
            gesture=None if ann["gesture"] < 0 else int(ann["gesture"]), gesture_name=ann["gesture_name"],
            subject=None if ann["subject"] < 0 else f"s{ann['subject']}",
            extra={"object_mask": None if mask is None else (mask == 128).astype(np.uint8)},
        ).validate()

    def vertices(self, i: int, tol_mm: float = 0.01) -> np.ndarray:
        """(778, 3) float32 ground-truth mesh of sample ``i``, mm, camera frame (the frame of its joints_3d).

        Rebuilt from the stored generator parameters (betas, pose, rotation) with the hand model the set was
        generated with (``dataset.json`` "model"; keyhand's proxy when that file is gone) exactly as
        :func:`render_batch` placed it; the placement's translation is solved from the stored joints_3d, whose
        reconstruction must agree within ``tol_mm`` or :class:`DatasetError` names the sample and the model."""
        from keyhand.data.record import DatasetError
        from keyhand.geometry.mano import ManoLayer

        path = (self.root / self.keys[i]).with_suffix(".json")
        ann = json.loads(path.read_text())
        if getattr(self, "_mesh_layer", None) is None:
            model = self.meta.get("model")
            self._mesh_layer = ManoLayer(model if model and Path(model).is_file() else None, side="right",
                                         use_pca=False, flat_hand_mean=True, unit="mm", dtype=torch.float64)
        layer = self._mesh_layer
        with torch.no_grad():
            out = layer(global_orient=torch.zeros(1, 3, dtype=torch.float64),
                        hand_pose=torch.as_tensor([ann["pose"]], dtype=torch.float64),
                        betas=torch.as_tensor([ann["betas"]], dtype=torch.float64))
        v, j = out.vertices[0].numpy(), out.joints[0].numpy()
        rot, stored = np.asarray(ann["rotation"], np.float64), np.asarray(ann["joints_3d"], np.float64)
        centroid = j.mean(0)
        joints = (j - centroid) @ rot.T
        shift = (stored - joints).mean(0)
        err = float(np.abs(joints + shift - stored).max())
        if not err <= tol_mm:
            raise DatasetError(f"{path}: the generator parameters do not reproduce joints_3d with the hand model "
                               f"{layer.model_path} (max {err:.3g} mm > {tol_mm} mm): no ground-truth mesh")
        return ((v - centroid) @ rot.T + shift).astype(np.float32)


def contact_sheet(root: str | os.PathLike, split: str, out: str | os.PathLike, n: int = 16,
                  cols: int = 4) -> Path:
    """A PNG grid of the first ``n`` samples with their 2D joints and skeleton drawn."""
    from keyhand.data.masks import PARENTS as parents

    reader = SyntheticReader(root, split)
    colours = [(255, 255, 255)] + [c for c in [(255, 80, 80), (255, 200, 0), (80, 220, 80), (60, 160, 255),
                                                (220, 90, 255)] for _ in range(4)]
    tiles = []
    for i in range(min(n, len(reader))):
        s = reader[i]
        img = s.image.copy()
        for j, p in enumerate(parents):
            a = tuple(int(v) for v in s.joints_2d[j])
            if p >= 0:
                cv2.line(img, tuple(int(v) for v in s.joints_2d[p]), a, colours[j], 1, cv2.LINE_AA)
            cv2.circle(img, a, 2, colours[j], -1, cv2.LINE_AA)
        label = s.gesture_name or s.key
        cv2.putText(img, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(img)
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[r:r + cols], 1) for r in range(0, len(tiles), cols)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, _png(np.concatenate(rows, 0)))
    return out

"""Inference on image files: 2D/3D joints, the MANO mesh and a Fig. 6 panel per image, timed per component.

    from trainers.predict import load_model, predict_images
    model, cfg = load_model("runs/train")                       # a folder (its latest checkpoint) or a .pt
    results = predict_images(model, ["hand.jpg"], "out/", box=None)
    results[0]["times_ms"]    # {"sfe": ..., "ve": ..., "he": ..., "total": ...}   (§4.3: 64.9 / 9.6 / 15.04 ms)

    keyhand predict hand.jpg other.png --checkpoint runs/train --out predictions/ [--box x0,y0,x1,y1]

Crop. The §3.1 crop (Eq. 1) is centred on the middle-finger MCP and sized from the 2D joints, which a raw
image does not have. Without annotations this module crops either the given hand box ``(x0, y0, x1, y1)``
(original px, e.g. from a hand detector) as the square of side ``max(w, h) · (1 + enlarge)`` around its
centre (``enlarge`` = 0.2 as §3.1), or, with no box, the centred square of side ``min(H, W)`` of the image;
the crop is resized to ``model.image_size`` and standardised (§3.2). A hand that fills a different fraction
of that square than the training crops did will be estimated less well.

Per image ``<stem>`` it writes:
    <stem>.json        joints_2d (21×2, original image px), joints_2d_crop (crop px), joints_3d_mm (21×3, R·J,
                       wrist-rooted MANO frame), the view (t NDC, s NDC/mm, rot axis-angle), theta, beta,
                       crop box [cx, cy, side] (original px), times_ms
    <stem>.obj         the mesh (778 vertices in mm, MANO faces)
    <stem>_panel.png   Fig. 6 panel: (a) input crop, (b) 2D joints, (c) silhouette of the re-projected mesh
                       (Eq. 7, renderer), (d) 3D joints, (e) mesh

Times: the SFE, VE and HE (the HE includes the MANO layer, the projection and the renderer) are timed with
forward hooks around the three submodules, CUDA-synchronised on GPU, batch 1, after one warm-up pass;
``total`` is the whole forward pass (it includes resizing f to the VE input).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from keyhand.atomic import atomic_path, atomic_write_json, atomic_write_text
from keyhand.data.crop import CropBox, crop_affine, crop_image, normalize
from keyhand.data.prepare import box_to_crop
from keyhand.model.config import ModelConfig
from keyhand.skeleton import PARENTS
from trainers.checkpoint import load_checkpoint
from trainers.device import Timer, resolve_device, synchronize

__all__ = ["PredictError", "load_model", "prepare_image", "ComponentTimer", "predict_images", "write_obj",
           "render_panel", "split_panels"]

_FINGER_COLOURS = ["#ff5050", "#ffc800", "#50dc50", "#3ca0ff", "#dc5aff"]


class PredictError(ValueError):
    """A bad input image, box or checkpoint (one line naming it)."""


def load_model(checkpoint: str | os.PathLike, device: str | torch.device | None = "auto"
               ) -> tuple[nn.Module, ModelConfig]:
    """Rebuild the Framework a checkpoint (or a run folder's latest) was trained with, in eval mode."""
    from keyhand.model.framework import Framework

    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt.get("config") or {}
    if cfg.get("stage") == "gesture" or "model" not in cfg:
        raise PredictError(f"{ckpt['path']}: not a framework checkpoint (stage {cfg.get('stage')!r}); "
                           "use one of the sfe or train stage")
    try:
        model_cfg = ModelConfig.model_validate(cfg["model"])
    except ValueError as e:
        raise PredictError(f"{ckpt['path']}: its model settings no longer validate "
                           f"({str(e).strip().splitlines()[0]})") from None
    model = Framework(model_cfg)
    model.load_state_dict(ckpt["model"])
    return model.to(resolve_device(device)).eval(), model_cfg


def _needs_mesh(model: nn.Module, what: str) -> None:
    """One line instead of a crash: the direct-regression control predicts joints, no HE parameters or mesh."""
    if getattr(model.cfg, "estimator", "mano") != "mano":
        raise PredictError(f"{what} needs the hand estimator's mesh, but this checkpoint is the direct-regression "
                           "control (model.estimator: direct): evaluate it with keyhand evaluate")


def prepare_image(path: str | os.PathLike, image_size: int, box: Sequence[float] | None = None,
                  enlarge: float = 0.2) -> tuple[np.ndarray, np.ndarray, CropBox, np.ndarray]:
    """Read an image and crop it (module docstring).

    Returns ``(image_rgb (H, W, 3) uint8, crop (S, S, 3) uint8, box, A)`` with ``A`` the (3, 3) affine from
    original px to crop px.
    """
    p = Path(path)
    bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if bgr is None:
        raise PredictError(f"{p}: not a readable image" if p.is_file() else f"{p}: no such image file")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]
    if box is not None:
        if len(box) != 4 or not (box[2] > box[0] and box[3] > box[1]):
            raise PredictError(f"{p}: box must be x0,y0,x1,y1 with x1 > x0 and y1 > y0, got {tuple(box)}")
        crop_box = box_to_crop(tuple(float(b) for b in box), enlarge)
    else:
        crop_box = CropBox(w / 2.0, h / 2.0, float(min(h, w)))
    crop, A = crop_image(rgb, crop_box, image_size)
    return rgb, crop, crop_box, A


class ComponentTimer:
    """Forward hooks timing ``model.sfe``, ``model.ve``, ``model.he`` (ms, CUDA-synchronised); a context manager.

    ``times`` accumulates per component over the forward passes run inside the ``with`` block.
    """

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model, self.device = model, device
        self.times: dict[str, float] = {}
        self._handles: list = []
        self._start: dict[str, float] = {}

    def __enter__(self) -> ComponentTimer:
        import time

        for name in ("sfe", "ve", "he"):
            mod = getattr(self.model, name, None)
            if mod is None:
                self.times[name] = 0.0
                continue

            def pre(_m, _inp, name=name):
                synchronize(self.device)
                self._start[name] = time.perf_counter()

            def post(_m, _inp, _out, name=name):
                synchronize(self.device)
                dt = (time.perf_counter() - self._start.pop(name)) * 1e3
                self.times[name] = self.times.get(name, 0.0) + dt

            self._handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def write_obj(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray) -> Path:
    """A Wavefront .obj of a mesh: vertices (V, 3) (mm), faces (F, 3) 0-based (written 1-based)."""
    p = Path(path)
    lines = ["# keyhand MANO mesh, millimetres"]
    lines += [f"v {x:.4f} {y:.4f} {z:.4f}" for x, y, z in np.asarray(vertices, np.float64)]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in np.asarray(faces, np.int64)]
    atomic_write_text(p, "\n".join(lines) + "\n")
    return p


def _skeleton_2d(ax, j2d: np.ndarray) -> None:
    for j, parent in enumerate(PARENTS):
        colour = "white" if j == 0 else _FINGER_COLOURS[(j - 1) // 4]
        if parent >= 0:
            ax.plot(j2d[[parent, j], 0], j2d[[parent, j], 1], color=colour, lw=1.5)
        ax.scatter(j2d[j, 0], j2d[j, 1], s=8, color=colour, zorder=3)


def _equal_3d(ax, pts: np.ndarray) -> None:
    c = (pts.max(0) + pts.min(0)) / 2
    r = max(float((pts.max(0) - pts.min(0)).max()) / 2, 1e-3)
    ax.set_xlim(c[0] - r, c[0] + r)
    ax.set_ylim(c[1] - r, c[1] + r)
    ax.set_zlim(c[2] - r, c[2] + r)


def render_panel(out_png: str | os.PathLike, crop: np.ndarray, joints_2d: np.ndarray, silhouette: np.ndarray | None,
                 joints_3d: np.ndarray, vertices: np.ndarray, faces: np.ndarray, title: str | None = None) -> Path:
    """Fig. 6-style panel (matplotlib Agg): (a) input, (b) 2D joints, (c) silhouette, (d) 3D joints, (e) mesh.

    Args: crop (S, S, 3) uint8; joints_2d (21, 2) crop px; silhouette (R, R) in [0, 1] or None;
    joints_3d (21, 3) mm; vertices (778, 3) mm; faces (F, 3). 3D views look along +z (camera) with y down.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    # camera frame (x right, y down, z forward) -> plot frame (x right, y up = -y, z towards the viewer = -z),
    # seen from +z (elev 90): the view of the weak-perspective projection (Eq. 6)
    def view(p: np.ndarray) -> np.ndarray:
        return np.stack([p[:, 0], -p[:, 1], -p[:, 2]], 1)

    fig = plt.figure(figsize=(12.5, 2.8), dpi=100)
    s = crop.shape[0]
    ax = fig.add_subplot(1, 5, 1)
    ax.imshow(crop)
    ax.set_title("(a) input")
    ax = fig.add_subplot(1, 5, 2)
    ax.imshow(crop)
    _skeleton_2d(ax, np.asarray(joints_2d))
    ax.set_xlim(-0.5, s - 0.5)
    ax.set_ylim(s - 0.5, -0.5)
    ax.set_title("(b) 2D joints")
    ax = fig.add_subplot(1, 5, 3)
    if silhouette is not None:
        sil = cv2.resize(np.asarray(silhouette, np.float32), (s, s), interpolation=cv2.INTER_LINEAR)
        ax.imshow(crop)
        ax.imshow(sil, cmap="gray", alpha=0.75, vmin=0, vmax=1)
    else:
        ax.imshow(np.zeros((s, s)), cmap="gray")
    ax.set_title("(c) silhouette")
    for a in fig.axes:
        a.set_xticks([])
        a.set_yticks([])
    j3 = view(np.asarray(joints_3d, np.float64))
    ax = fig.add_subplot(1, 5, 4, projection="3d")
    for j, parent in enumerate(PARENTS):
        colour = "black" if j == 0 else _FINGER_COLOURS[(j - 1) // 4]
        if parent >= 0:
            ax.plot(*j3[[parent, j]].T, color=colour, lw=2)
    ax.scatter(*j3.T, s=6, color="black")
    _equal_3d(ax, j3)
    ax.view_init(elev=90, azim=-90)
    ax.set_axis_off()
    ax.set_title("(d) 3D joints")
    v = view(np.asarray(vertices, np.float64))
    f = np.asarray(faces, np.int64)
    tri = v[f]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-9
    shade = 0.35 + 0.65 * np.abs(normals @ np.array([0.0, 0.0, 1.0]))
    colours = np.clip(shade[:, None] * np.array([0.93, 0.75, 0.62]), 0, 1)
    ax = fig.add_subplot(1, 5, 5, projection="3d")
    ax.add_collection3d(Poly3DCollection(tri, facecolors=colours, edgecolors="none"))
    _equal_3d(ax, v)
    ax.view_init(elev=90, azim=-90)
    ax.set_axis_off()
    ax.set_title("(e) mesh")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    p = Path(out_png)
    with atomic_path(p) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return p


@torch.no_grad()
def predict_images(model: nn.Module, images: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                   box: Sequence[float] | None = None, enlarge: float = 0.2, panels: bool = True,
                   warmup: bool = True) -> list[dict[str, Any]]:
    """Run the framework on image files and write JSON, .obj and panel PNG per image (module docstring).

    Returns, per image, the JSON record (with ``times_ms``: ``sfe``, ``ve``, ``he``, ``total``) plus the
    ``files`` written.
    """
    _needs_mesh(model, "predict")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    model.eval()
    size = int(model.cfg.image_size)
    faces = model.faces.detach().cpu().numpy()
    results = []
    for k, path in enumerate(images):
        rgb, crop, crop_box, A = prepare_image(path, size, box, enlarge)
        x = torch.from_numpy(normalize(crop))[None].to(device)
        if warmup and k == 0:
            model(x)
            synchronize(device)
        with ComponentTimer(model, device) as ct, Timer(device) as total:
            o = model(x)
        j2d_crop = o.joints_2d[0].float().cpu().numpy()
        inv = np.linalg.inv(crop_affine(crop_box, size))
        j2d = j2d_crop @ inv[:2, :2].T + inv[:2, 2]
        record = {
            "image": str(path),
            "image_size": [int(rgb.shape[0]), int(rgb.shape[1])],
            "crop_box": [float(v) for v in crop_box.as_array()],
            "crop": "box" if box is not None else "centre square",
            "joints_2d": j2d.round(3).tolist(),
            "joints_2d_crop": j2d_crop.round(3).tolist(),
            "joints_3d_mm": o.joints_3d[0].float().cpu().numpy().round(3).tolist(),
            "t": o.t[0].float().cpu().tolist(), "s": float(o.s[0, 0]), "rot": o.rot[0].float().cpu().tolist(),
            "theta": o.theta[0].float().cpu().tolist(), "beta": o.beta[0].float().cpu().tolist(),
            "times_ms": {**{n: round(ct.times.get(n, 0.0), 3) for n in ("sfe", "ve", "he")},
                         "total": round(total.ms, 3)},
            "device": str(device),
        }
        stem = Path(path).stem
        files = {"json": out / f"{stem}.json", "obj": out / f"{stem}.obj"}
        write_obj(files["obj"], o.vertices[0].float().cpu().numpy(), faces)
        if panels:
            sil = None if o.silhouette is None else o.silhouette[0].float().cpu().numpy()
            files["panel"] = render_panel(out / f"{stem}_panel.png", crop, j2d_crop, sil,
                                          o.joints_3d[0].float().cpu().numpy(), o.vertices[0].float().cpu().numpy(),
                                          faces, title=Path(path).name)
        atomic_write_json(files["json"], record, indent=1)
        results.append({**record, "files": {k: str(v) for k, v in files.items()}})
    return results


@torch.no_grad()
def split_panels(model: nn.Module, dataset, indices: Sequence[int], out_dir: str | os.PathLike) -> list[Path]:
    """Fig. 6 panels of prepared-split samples (their stored §3.1 crops): ``<out_dir>/<index>_panel.png``."""
    _needs_mesh(model, "Fig. 6 panels")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    faces = model.faces.detach().cpu().numpy()
    written = []
    try:
        for i in indices:
            item = dataset[int(i)]
            crop = np.asarray(dataset.raw(int(i))["images"])
            o = model(item["image"][None].to(device))
            sil = None if o.silhouette is None else o.silhouette[0].float().cpu().numpy()
            written.append(render_panel(out / f"{int(i):06d}_panel.png", crop, o.joints_2d[0].float().cpu().numpy(),
                                        sil, o.joints_3d[0].float().cpu().numpy(),
                                        o.vertices[0].float().cpu().numpy(), faces, title=dataset.key(int(i))))
    finally:
        model.train(was)
    return written

"""Hand silhouette ground truth with GrabCut initialised from the 2D joints (paper §3.5, following [37]).

    from keyhand.data.masks import grabcut_mask, compute_masks, MaskItem, load_mask
    m = grabcut_mask(image, joints_2d)                      # (H, W) uint8 {0, 1}
    items = [MaskItem(key, joints_2d, image_path="img/000001.png"), ...]
    report = compute_masks(items, "data/masks", workers=os.cpu_count())   # parallel, resumable
    m = load_mask("data/masks", key)

§3.5: "Hand silhouettes are computed from the input image with the GrabCut algorithm, implemented using
the OpenCV library, and 2D joint annotations ... are used to initialize the foreground, background, and
probable foreground/background regions". The initial GrabCut label map (``cv2.GC_INIT_WITH_MASK``):

* definite foreground (GC_FGD): the 20 bones of the 21-joint skeleton (parent → child lines) drawn
  ``bone_thickness`` px thick (default 4 % of the hand size, inside a finger, which is ~8-10 %), plus the
  palm polygon (wrist, thumb CMC and the four MCPs) shrunk to ``palm_shrink`` about its centroid;
* probable foreground (GC_PR_FGD): the skeleton (1-px bones and the full palm polygon) dilated by
  ``fg_margin`` (1 %); ``pr_fg_region="hull"`` uses the joints' convex hull instead;
* probable background (GC_PR_BGD): a ring of width ``ring`` (8 %) around the probable foreground, within
  the joints' bounding box enlarged by ``box_margin`` (25 %) on every side;
* definite background (GC_BGD): everything else (outside the ring or outside the enlarged box).

"Hand size" is the larger side of the joints' bounding box, at least the hand length estimated from the
palm (px). Choices measured on the hand-like fixture (``pipeline/bench_data.py``): GrabCut learns its
foreground colour model from every FGD/PR_FGD pixel, so a wide probable-foreground band (the dilated
convex hull, or a finger-wide band) fills it with the background seen between the fingers and the
result swallows whole background regions (mean IoU over 60 images: 0.58 with the hull dilated by 6 %,
0.61 with an 8 % band, 0.91 with the 1 % band, 0.96 with the 1 % band and the 8 % ring). The ring
bounds how far the mask may extend beyond the skeleton (``fg_margin + ring`` of the hand size, ~19 px
for a hand filling a 256² crop): loosen it if the joint annotations are far off the finger centre
lines. GrabCut runs on the enlarged box plus a ``context`` band only, with OpenCV's RNG seeded (its
k-means init), so masks are reproducible.
Post-processing keeps the connected component(s) touching the definite foreground and fills holes
smaller than ``max_hole_frac`` of the hand area (a thumb-index loop stays open).

Files: one PNG per key (``{out_dir}/{key}.mask.png``, 0/255 single channel), written atomically (a hidden
temporary file then ``os.replace``), so an interrupted run leaves no partial file under a final name and a
rerun skips the keys already done. :func:`mask_chunk` is the unit of work (a list of items in, a list of
:class:`MaskResult` out); :func:`compute_masks` spreads chunks over local processes, and a Ray runner can
submit the same function.

:func:`draw_hand_fixture` draws a simple hand-like image with its exact mask (tests, benchmark).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from keyhand.atomic import atomic_write_bytes
from keyhand.data.record import NUM_JOINTS, DatasetError
from keyhand.skeleton import BONES, PARENTS  # re-exported: the 21-joint skeleton

__all__ = ["PARENTS", "BONES", "MaskError", "MaskItem", "MaskResult", "MaskReport", "grabcut_init",
           "grabcut_mask", "mask_path", "save_mask", "load_mask", "mask_chunk", "compute_masks",
           "draw_hand_fixture", "iou"]

_PALM = (0, 1, 5, 9, 13, 17)  # wrist, thumb CMC, index/middle/ring/little MCP
MASK_SUFFIX = ".mask.png"


class MaskError(DatasetError):
    """A mask could not be computed or written; the message names the key or file."""


# --------------------------------------------------------------------------------------------
# GrabCut on one image


def _hand_size(j: np.ndarray) -> float:
    """Hand size (px): the joints' bounding-box side, at least the hand length estimated from the palm
    (wrist → middle MCP ≈ 0.45 of it; index → little MCP ≈ 0.4), so a fist is not taken for a small hand."""
    palm_len = float(np.linalg.norm(j[0] - j[9]))
    palm_width = float(np.linalg.norm(j[5] - j[17]))
    return float(max(np.ptp(j[:, 0]), np.ptp(j[:, 1]), 2.2 * palm_len, 2.4 * palm_width, 1.0))


def grabcut_init(shape: tuple[int, int], joints_2d: np.ndarray, bone_thickness: float | None = None,
                 fg_margin: float = 0.01, box_margin: float = 0.25, palm_shrink: float = 0.8,
                 pr_fg_region: str = "skeleton", ring: float | None = 0.08) -> np.ndarray:
    """The initial GrabCut label map from the joints (module docstring).

    Args:
        shape: (H, W) of the image.
        joints_2d: (21, 2) px, manopth order.
        bone_thickness: px; default 4 % of the hand size (at least 2 px).
        fg_margin: dilation of the probable-foreground region, fraction of the hand size.
        box_margin: enlargement of the joints' bounding box on every side, fraction of the hand size.
        palm_shrink: the definite-foreground palm polygon is scaled by this factor about its centroid
            (0 = no palm fill).
        pr_fg_region: "skeleton" (bones and palm polygon) or "hull" (convex hull of the joints).
        ring: width of the probable-background ring, fraction of the hand size (None = the whole box).
    Returns:
        (H, W) uint8 with values in {GC_BGD, GC_FGD, GC_PR_BGD, GC_PR_FGD}.
    """
    h, w = shape
    j = np.asarray(joints_2d, np.float64)
    size = _hand_size(j)
    thick = max(2, round(0.04 * size if bone_thickness is None else bone_thickness))
    init = np.full((h, w), cv2.GC_BGD, np.uint8)
    lo = np.floor(j.min(0) - box_margin * size).astype(int)
    hi = np.ceil(j.max(0) + box_margin * size).astype(int)
    init[max(lo[1], 0):max(hi[1] + 1, 0), max(lo[0], 0):max(hi[0] + 1, 0)] = cv2.GC_PR_BGD
    pts = np.round(j).astype(np.int32)
    pr_fg = np.zeros((h, w), np.uint8)
    if pr_fg_region == "hull":
        cv2.fillConvexPoly(pr_fg, cv2.convexHull(pts), 1)
    elif pr_fg_region == "skeleton":
        _draw_skeleton(pr_fg, j, 1.0)
    else:
        raise ValueError(f"grabcut_init: pr_fg_region must be 'skeleton' or 'hull', got {pr_fg_region!r}")
    r = max(1, round(fg_margin * size))
    pr_fg = cv2.dilate(pr_fg, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    if ring is not None:  # definite background beyond a ring of width ring·size around the probable fg
        rr = max(1, round(ring * size))
        near = cv2.dilate(pr_fg, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rr + 1, 2 * rr + 1)))
        init[near == 0] = cv2.GC_BGD
    init[pr_fg > 0] = cv2.GC_PR_FGD
    fg = np.zeros((h, w), np.uint8)
    for a, b in BONES:
        cv2.line(fg, tuple(map(int, pts[a])), tuple(map(int, pts[b])), 1, thickness=int(thick))
    if palm_shrink > 0:
        _draw_skeleton(fg, j, palm_shrink, bones=False)
    init[fg > 0] = cv2.GC_FGD
    return init


def _draw_skeleton(canvas: np.ndarray, j: np.ndarray, palm_scale: float, bones: bool = True) -> None:
    """Fill the palm polygon (scaled about its centroid) and, if ``bones``, draw 1-px bones."""
    palm = j[list(_PALM)]
    palm = palm.mean(0) + palm_scale * (palm - palm.mean(0))
    cv2.fillConvexPoly(canvas, cv2.convexHull(np.round(palm).astype(np.int32)), 1)
    if bones:
        pts = np.round(j).astype(np.int32)
        for a, b in BONES:
            cv2.line(canvas, tuple(map(int, pts[a])), tuple(map(int, pts[b])), 1, thickness=1)


def _postprocess(fg: np.ndarray, seeds: np.ndarray, max_hole_frac: float) -> np.ndarray:
    """Keep components of ``fg`` touching ``seeds``; fill holes smaller than max_hole_frac × area."""
    n, labels = cv2.connectedComponents(fg, connectivity=8)
    if n > 2:
        keep = np.zeros(n, bool)
        keep[np.unique(labels[seeds > 0])] = True
        keep[0] = False
        fg = keep[labels].astype(np.uint8)
    area = int(fg.sum())
    if area and max_hole_frac > 0:
        n, labels, stats, _ = cv2.connectedComponentsWithStats(1 - fg, connectivity=4)
        h, w = fg.shape
        x, y, bw, bh = (stats[:, i] for i in range(4))
        touches = (x == 0) | (y == 0) | (x + bw == w) | (y + bh == h)
        fill = ~touches & (stats[:, cv2.CC_STAT_AREA] < max_hole_frac * area)
        fill[0] = False  # label 0 of the inverted map is the foreground itself
        fg = np.where(fill[labels], 1, fg).astype(np.uint8)
    return fg


def grabcut_mask(image: np.ndarray, joints_2d: np.ndarray, iterations: int = 5,
                 bone_thickness: float | None = None, fg_margin: float = 0.01, box_margin: float = 0.25,
                 palm_shrink: float = 0.8, pr_fg_region: str = "skeleton", ring: float | None = 0.08,
                 context: float = 0.1, max_hole_frac: float = 0.02, seed: int = 0,
                 info: dict | None = None) -> np.ndarray:
    """§3.5 hand silhouette: GrabCut (``iterations`` rounds) initialised from the 2D joints.

    Args:
        image: (H, W, 3) uint8 (RGB or BGR: GrabCut's colour models do not care).
        joints_2d: (21, 2) px in the image, manopth order.
        iterations: GrabCut iterations.
        bone_thickness, fg_margin, box_margin, palm_shrink, pr_fg_region, ring: see :func:`grabcut_init`.
        context: extra band (fraction of the hand size) around the enlarged box given to GrabCut as
            definite background.
        max_hole_frac: holes smaller than this fraction of the mask area are filled.
        seed: seed of OpenCV's global RNG, set before GrabCut (its k-means init), so the result is a
            function of the inputs only.
        info: if a dict, receives ``fallback`` (True when GrabCut failed and the initial foreground
            (definite + probable) was returned instead).
    Returns:
        (H, W) uint8 in {0, 1}.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise MaskError(f"grabcut_mask: image must be (H, W, 3) uint8, got {image.dtype} {image.shape}")
    j = np.asarray(joints_2d, np.float64)
    if j.shape != (NUM_JOINTS, 2) or not np.all(np.isfinite(j)):
        raise MaskError(f"grabcut_mask: joints_2d must be finite (21, 2), got {j.shape}")
    h, w = image.shape[:2]
    init = grabcut_init((h, w), j, bone_thickness, fg_margin, box_margin, palm_shrink, pr_fg_region, ring)
    # Region of interest: the enlarged box plus a context band, clipped to the image.
    size = _hand_size(j)
    pad = (box_margin + context) * size
    x0, y0 = (max(int(np.floor(v - pad)), 0) for v in j.min(0))
    x1, y1 = min(int(np.ceil(j[:, 0].max() + pad)) + 1, w), min(int(np.ceil(j[:, 1].max() + pad)) + 1, h)
    out = np.zeros((h, w), np.uint8)
    if x1 <= x0 or y1 <= y0:
        raise MaskError("grabcut_mask: the joints lie entirely outside the image")
    roi = np.ascontiguousarray(init[y0:y1, x0:x1])
    fallback = False
    try:
        cv2.setRNGSeed(seed)  # GrabCut's k-means initialisation draws from OpenCV's global RNG
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(np.ascontiguousarray(image[y0:y1, x0:x1]), roi, None, bgd, fgd, int(iterations),
                    cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # e.g. no background pixel in the ROI (hand filling the image)
        fallback = True
        roi = np.ascontiguousarray(init[y0:y1, x0:x1])
    fg = ((roi == cv2.GC_FGD) | (roi == cv2.GC_PR_FGD)).astype(np.uint8)
    fg = _postprocess(fg, (init[y0:y1, x0:x1] == cv2.GC_FGD).astype(np.uint8), max_hole_frac)
    out[y0:y1, x0:x1] = fg
    if info is not None:
        info["fallback"] = fallback
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two binary masks (1.0 when both are empty)."""
    a, b = a > 0, b > 0
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


# --------------------------------------------------------------------------------------------
# Files


def mask_path(out_dir: str | os.PathLike, key: str) -> Path:
    """Where the mask of ``key`` lives: ``{out_dir}/{key}.mask.png`` (key may contain '/')."""
    parts = Path(key).parts
    if not parts or Path(key).is_absolute() or ".." in parts:
        raise MaskError(f"mask key {key!r} must be a relative path without '..'")
    return Path(out_dir) / (key + MASK_SUFFIX)


def save_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write a {0, 1} mask as a 0/255 PNG, atomically."""
    ok, buf = cv2.imencode(".png", (mask > 0).astype(np.uint8) * 255)
    if not ok:
        raise MaskError(f"{path}: PNG encoding failed")
    atomic_write_bytes(path, buf.tobytes())


def load_mask(out_dir: str | os.PathLike, key: str) -> np.ndarray:
    """Read the mask of ``key``: (H, W) uint8 {0, 1}; MaskError naming the file if missing/corrupt."""
    path = mask_path(out_dir, key)
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise MaskError(f"{path}: missing or unreadable mask (run the masks stage)")
    return (m > 127).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Batch / parallel


@dataclass
class MaskItem:
    """One unit of mask work: a key, its (21, 2) px joints and its image (in memory or a path)."""

    key: str
    joints_2d: np.ndarray
    image: np.ndarray | None = None     # (H, W, 3) uint8 RGB
    image_path: str | None = None       # read with cv2 when image is None

    def load_image(self) -> np.ndarray:
        if self.image is not None:
            return self.image
        if self.image_path is None:
            raise MaskError(f"{self.key}: MaskItem has neither image nor image_path")
        img = cv2.imread(str(self.image_path), cv2.IMREAD_COLOR)
        if img is None:
            raise MaskError(f"{self.image_path}: missing or unreadable image")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@dataclass
class MaskResult:
    key: str
    status: str                 # "done", "fallback" (written, GrabCut failed), "skipped", "failed"
    path: str
    seconds: float = 0.0
    error: str | None = None


@dataclass
class MaskReport:
    done: int = 0
    fallback: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)   # (key, error)
    seconds: float = 0.0

    @property
    def written(self) -> int:
        return self.done + self.fallback


def mask_chunk(chunk: Sequence[MaskItem], out_dir: str | os.PathLike, iterations: int = 5,
               grabcut_kwargs: dict | None = None, overwrite: bool = False,
               cv2_threads: int | None = None) -> list[MaskResult]:
    """Compute and write the masks of one chunk; skips keys whose file exists (unless ``overwrite``).

    Self-contained and picklable (the unit a process pool or a Ray task runs). A failing item is
    reported (status "failed", the error text) without stopping the chunk and writes nothing.
    ``cv2_threads``: OpenCV threads during the chunk (restored after); leave None in a process forked
    from one that used OpenCV's thread pool: ``cv2.setNumThreads`` deadlocks there (observed).
    """
    old_threads = cv2.getNumThreads()
    if cv2_threads is not None:
        cv2.setNumThreads(cv2_threads)
    results = []
    try:
        for item in chunk:
            path = mask_path(out_dir, item.key)
            if path.exists() and not overwrite:
                results.append(MaskResult(item.key, "skipped", str(path)))
                continue
            t0 = time.perf_counter()
            try:
                info: dict = {}
                m = grabcut_mask(item.load_image(), item.joints_2d, iterations=iterations, info=info,
                                 **(grabcut_kwargs or {}))
                save_mask(path, m)
                status = "fallback" if info.get("fallback") else "done"
                results.append(MaskResult(item.key, status, str(path), time.perf_counter() - t0))
            except (MaskError, cv2.error, OSError, ValueError) as e:
                results.append(MaskResult(item.key, "failed", str(path), time.perf_counter() - t0,
                                          f"{type(e).__name__}: {e}"))
    finally:
        if cv2_threads is not None:
            cv2.setNumThreads(old_threads)
    return results


def _init_worker() -> None:
    cv2.setNumThreads(1)  # a fresh (spawned) process: safe, unlike in a forked one


def _as_item(x) -> MaskItem:
    if isinstance(x, MaskItem):
        return x
    if getattr(x, "joints_2d", None) is not None and getattr(x, "image", None) is not None:  # HandSample
        return MaskItem(x.key, np.asarray(x.joints_2d, np.float32), image=x.image)
    raise MaskError(f"compute_masks: cannot make a MaskItem from {type(x).__name__} "
                    f"(key {getattr(x, 'key', '?')!r}: needs image and joints_2d)")


def compute_masks(items: Iterable, out_dir: str | os.PathLike, workers: int | None = None,
                  iterations: int = 5, chunk_size: int = 16, grabcut_kwargs: dict | None = None,
                  overwrite: bool = False, mp_context: str = "spawn", progress=None) -> MaskReport:
    """GrabCut masks for all ``items`` (MaskItem or HandSample), over ``workers`` processes; resumable.

    Keys whose mask file exists are skipped before any work (a rerun after an interruption only does
    what is left). ``workers`` defaults to ``os.cpu_count()``; 1 runs in this process. ``mp_context``:
    the start method, "spawn" by default: "fork" deadlocks once the parent has used OpenCV's thread
    pool (observed here), so workers start fresh (~1.3 s each, in parallel, mostly importing torch via
    keyhand.data.record) and the caller's ``__main__`` must be importable (a script with an
    ``if __name__ == "__main__"`` guard, pytest, a CLI entry point; not ``python - <<EOF``).
    ``progress``, if given, is called with each chunk's list of :class:`MaskResult`.
    """
    t0 = time.perf_counter()
    workers = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    report = MaskReport()
    todo = []
    for x in items:
        item = _as_item(x)
        if not overwrite and mask_path(out_dir, item.key).exists():
            report.skipped += 1
        else:
            todo.append(item)
    chunks = [todo[i:i + chunk_size] for i in range(0, len(todo), chunk_size)]

    def collect(results: list[MaskResult]) -> None:
        for r in results:
            if r.status == "done":
                report.done += 1
            elif r.status == "fallback":
                report.fallback += 1
            elif r.status == "skipped":
                report.skipped += 1
            else:
                report.failed.append((r.key, r.error or ""))
        if progress is not None:
            progress(results)

    if workers == 1 or len(chunks) <= 1:
        for c in chunks:  # in this process, on one OpenCV thread (restored after each chunk)
            collect(mask_chunk(c, out_dir, iterations, grabcut_kwargs, overwrite, cv2_threads=1))
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=get_context(mp_context),
                                 initializer=None if mp_context == "fork" else _init_worker) as pool:
            futures = [pool.submit(mask_chunk, c, str(out_dir), iterations, grabcut_kwargs, overwrite)
                       for c in chunks]
            for fut in as_completed(futures):
                collect(fut.result())
    report.seconds = time.perf_counter() - t0
    return report


# --------------------------------------------------------------------------------------------
# A simple hand-like fixture with an exact mask


# Local hand frame, hand length 1 (wrist → middle tip), y towards the fingers, x towards the little finger.
# Thumb CMC and the four MCPs.
_BASES = np.array([[-0.20, 0.14], [-0.15, 0.50], [-0.04, 0.53], [0.07, 0.51], [0.17, 0.45]])
_LENGTHS = np.array([[0.17, 0.14, 0.11], [0.22, 0.13, 0.10], [0.24, 0.15, 0.11], [0.22, 0.14, 0.10],
                     [0.17, 0.10, 0.09]])
_ANGLES = np.deg2rad([-50.0, -10.0, 0.0, 8.0, 18.0])   # finger directions from +y
_WIDTHS = np.array([0.085, 0.075, 0.078, 0.074, 0.065])


def draw_hand_fixture(rng: np.random.Generator, size: int = 256, skin: tuple[int, int, int] | None = None,
                      fill: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw a hand-like image: a skin-coloured palm and five jointed fingers on a textured background.

    The hand is placed like an Eq. 1 crop (middle MCP at the centre, the joints' extent filling
    ``fill``/1.2 of the image). Not a render of MANO: a quick stand-in with an exact mask.

    Returns:
        ``(image (size, size, 3) uint8 RGB, mask (size, size) uint8 {0, 1}, joints_2d (21, 2) float32 px)``.
    """
    # Joints in the local frame, random spread and flexion (flexion foreshortens the segments).
    j = np.zeros((NUM_JOINTS, 2))
    for f in range(5):
        base = 1 + 4 * f
        j[base] = _BASES[f] + rng.normal(0, 0.01, 2)
        ang = _ANGLES[f] + rng.normal(0, np.deg2rad(7))
        curl = 0.0
        for s in range(3):
            curl += rng.uniform(0, np.deg2rad(35))
            ang += rng.normal(0, np.deg2rad(4))
            step = _LENGTHS[f, s] * max(np.cos(curl), 0.25)
            j[base + s + 1] = j[base + s] + step * np.array([np.sin(ang), np.cos(ang)])
    theta = rng.uniform(-np.pi, np.pi)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    j = j @ rot.T * np.array([1.0, -1.0])   # image y points down
    pc = j[9]
    extent = max(np.max(j.max(0) - pc), np.max(pc - j.min(0)))
    scale = fill * size / (2.4 * extent)
    joints = (j - pc) * scale + (size - 1) / 2.0
    thickness = rng.uniform(0.8, 1.25)  # finger width variation
    # Mask: palm polygon + finger capsules.
    mask = np.zeros((size, size), np.uint8)
    sub = 4  # draw with sub-pixel precision
    pts = np.round(joints * 16).astype(np.int32)
    palm = [0, 1, 5, 9, 13, 17]
    wrist_dir = joints[0] - joints[9]
    wrist_dir /= np.linalg.norm(wrist_dir) + 1e-9
    side = np.array([-wrist_dir[1], wrist_dir[0]]) * 0.12 * scale
    poly = np.concatenate([joints[palm], [joints[0] + side, joints[0] - side]])
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(poly * 16).astype(np.int32)), 1, cv2.LINE_8, sub)
    for f in range(5):
        width = max(2, int(round(_WIDTHS[f] * scale * thickness)))
        chain = list(range(1 + 4 * f, 5 + 4 * f))
        for a, b in zip(chain[:-1], chain[1:], strict=True):
            cv2.line(mask, tuple(map(int, pts[a])), tuple(map(int, pts[b])), 1, width, cv2.LINE_8, sub)
        cv2.circle(mask, tuple(map(int, pts[chain[-1]])), width * 8, 1, -1, cv2.LINE_8, sub)
    # Background: low-frequency colour field + random strokes and boxes + noise.
    low = rng.uniform(0, 255, (4, 4, 3)).astype(np.float32)
    bg = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(4, 12))):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        p0 = tuple(int(v) for v in rng.integers(0, size, 2))
        p1 = tuple(int(v) for v in rng.integers(0, size, 2))
        if rng.random() < 0.5:
            cv2.line(bg, p0, p1, colour, int(rng.integers(1, 8)))
        else:
            cv2.rectangle(bg, p0, p1, colour, -1)
    bg += rng.normal(0, 10, bg.shape).astype(np.float32)
    # Hand: skin colour with a shading gradient and mild texture.
    if skin is None:
        skin = tuple(float(c) for c in np.array([224, 172, 138]) * rng.uniform(0.45, 1.05))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    g = rng.normal(0, 1, 2)
    shade = 1.0 + 0.15 * (g[0] * (xx - 0.5) + g[1] * (yy - 0.5))
    hand = np.array(skin, np.float32) * shade[..., None]
    hand += rng.normal(0, 4, (size, size, 3)).astype(np.float32)
    img = np.where(mask[..., None] > 0, hand, bg)
    img = cv2.GaussianBlur(img, (0, 0), 0.7)
    return np.clip(img, 0, 255).astype(np.uint8), mask, joints.astype(np.float32)

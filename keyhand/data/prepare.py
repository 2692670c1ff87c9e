"""Preparation: any dataset → §3.1 crops in the prepared cache → §3.5 GrabCut masks beside it.

    from keyhand.data.prepare import open_reader, prepare_split, compute_split_masks
    reader = open_reader("synth-stb", "data/synth-stb", "train")          # or "stb", "rwth", ...
    manifest = prepare_split(reader, "data/prepared/synth-stb/train", image_size=256, enlarge=0.2)
    report = compute_split_masks("data/prepared/synth-stb/train", "data/masks/synth-stb/train", workers=2)
    ds = PreparedDataset("data/prepared/synth-stb/train", masks_dir="data/masks/synth-stb/train")

Two steps, two folders, so that each is a DVC stage with its own outputs:

1. :func:`prepare_split` crops every sample (Eq. 1 around the middle-finger MCP, enlarged by 20 %, padded
   where the box leaves the image, resized to ``image_size``²) and writes the split once with
   :func:`keyhand.data.cache.write_split`: image, the dataset's own mask when it has one, crop-px joints,
   camera, label. Gesture datasets carry no joints: their crop is the square around the reader's
   ``hand_box`` (RWTH: skin-colour blob, Senz3D: nearest depth blob; see those readers), enlarged by
   ``enlarge``; without a box the centred square of the whole image is used and counted. The readers' boxes
   are tight (no padding of their own), so a gesture crop is enlarged once, by ``enlarge`` (20 %).
   Left hands are mirrored into right ones (``mirror_to="right"``, the side of the MANO model; image, mask,
   2D and 3D joints, intrinsics and mesh, re-projection preserved: :func:`keyhand.data.crop.mirror_sample`),
   STB's left hand included; the count is in :class:`PrepareStats`, the setting in the split's params.
   Ground-truth meshes, where the dataset has them (``extra["verts_3d"]``: ObMan; the ``vertices(i)`` of
   the synthetic reader, rebuilt from its generator parameters), go beside the shards as ``vertices.npy``
   (n, V, 3) float32 mm in the prepared joints' camera frame, NaN rows for samples without one, and
   ``vertices.json`` (written last, with the split's params hash): :func:`read_split_vertices`.
   Video frames: where the samples say which sequence and frame they come from (``extra["sequence"]``,
   ``extra["frame"]``: STB's B1Counting ... frames 0-1499), ``sequences.json`` beside the shards holds them
   per sample in the split's order (with the split's params hash): :func:`read_split_sequences`. The
   statistics resample such frames in blocks (:mod:`keyhand.stats`): consecutive frames are not independent.
2. :func:`compute_split_masks` runs GrabCut initialised from the crop-px joints
   (:func:`keyhand.data.masks.grabcut_mask`) on every prepared crop, over ``workers`` processes, one PNG
   per sample (resumable: a rerun does only what is missing), then packs them into ``masks.npy``
   (n, S, S) uint8 {0, 1} in the split's order with ``manifest.json`` written last (atomically). Samples
   without 2D joints get an all-zero mask and ``has`` 0. The manifest records the split's params hash:
   :class:`keyhand.data.cache.PreparedDataset` refuses masks made for another preparation.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from keyhand.atomic import atomic_path
from keyhand.data.cache import (
    MASKS_FILE,
    MASKS_MANIFEST,
    CacheError,
    PreparedDataset,
    _atomic_json,
    read_manifest,
    read_masks_manifest,
    write_split,
)
from keyhand.data.crop import CropBox, crop_sample, mirror_sample
from keyhand.data.heatmaps import DEFAULT_SIGMA
from keyhand.data.masks import MaskItem, MaskReport, compute_masks, load_mask, mask_path
from keyhand.data.record import DatasetError, HandSample

__all__ = ["PrepareStats", "open_reader", "box_to_crop", "prepare_split", "compute_split_masks",
           "read_masks_manifest", "read_split_vertices", "read_split_sequences", "VERTICES_FILE",
           "VERTICES_MANIFEST", "SEQUENCES_FILE"]

#: Ground-truth meshes beside a prepared split's shards (module docstring).
VERTICES_FILE = "vertices.npy"
VERTICES_MANIFEST = "vertices.json"
#: Each sample's video sequence and frame, beside a prepared split's shards (module docstring).
SEQUENCES_FILE = "sequences.json"
HAND_SIDES = ("right", "left")


def open_reader(name: str, root: str | os.PathLike, split: str, on_corrupt: str = "fail", **options):
    """The reader of dataset ``name``: a generated ``synth-*`` set or a real one (``keyhand.data.readers``).

    ``options`` go to a real reader's constructor (ObMan ``mode``, STB ``palm_to_wrist``: params.yaml's
    ``data.obman`` / ``data.stb``); a synthetic set takes none.
    """
    if name.startswith("synth-"):
        from keyhand.data.synthetic import KINDS, SyntheticReader

        if name not in KINDS:
            raise ValueError(f"unknown synthetic dataset {name!r}; known: {', '.join(KINDS)}")
        if options:
            raise ValueError(f"{name}: a synthetic set takes no reader options, got {sorted(options)}")
        return SyntheticReader(root, split)
    from keyhand.data import obman, rwth, senz3d, stb  # noqa: F401  (register the readers)
    from keyhand.data.readers import open_dataset

    return open_dataset(name, root, split, on_corrupt=on_corrupt, **options)


def box_to_crop(box: tuple[float, float, float, float], enlarge: float) -> CropBox:
    """A square crop around an ``(x0, y0, x1, y1)`` box (pixel edges, x1 / y1 exclusive, as the readers'
    ``hand_box``): its centre, side = larger side × (1 + enlarge). The box covers the continuous interval
    [x0 − ½, x1 − ½] of the crop's pixel-centre convention, so its centre is (x0 + x1 − 1) / 2."""
    x0, y0, x1, y1 = box
    return CropBox((x0 + x1 - 1) / 2.0, (y0 + y1 - 1) / 2.0, max(x1 - x0, y1 - y0) * (1.0 + enlarge))


@dataclass
class PrepareStats:
    """What :func:`prepare_split` did."""

    written: int = 0
    by_joints: int = 0          # cropped with Eq. 1
    by_hand_box: int = 0        # gesture sets: the reader's hand box
    whole_image: int = 0        # no joints and no box: centred square of the image
    whole_image_keys: list[str] = field(default_factory=list)
    mirrored: int = 0           # samples of the other hand mirrored into ``mirror_to``
    meshes: int = 0             # samples with a ground-truth mesh in vertices.npy
    sequences: int = 0          # video sequences the samples come from (sequences.json), 0: independent images
    skipped_files: list[str] = field(default_factory=list)   # the reader's corrupt-image policy "skip"


class _Meshes:
    """Collects the ground-truth meshes of a split being written into ``vertices.npy`` (module docstring)."""

    def __init__(self, out_dir: Path, capacity: int) -> None:
        self.out_dir, self.capacity = out_dir, capacity
        self.tmp = out_dir / f".{VERTICES_FILE}.{os.getpid()}.partial.npy"
        self.array: np.ndarray | None = None
        self.n = 0
        self.count = 0
        self.enabled = True

    def attach(self, reader, i: int, sample: HandSample) -> HandSample:
        """The sample with ``extra["verts_3d"]`` from the reader's ``vertices(i)`` when it has none of its own."""
        provider = getattr(reader, "vertices", None)
        if not self.enabled or sample.extra.get("verts_3d") is not None or not callable(provider):
            return sample
        try:
            verts = provider(i)
        except DatasetError as e:  # e.g. another hand model than the one that generated the set
            self.enabled = False
            warnings.warn(f"prepare: no ground-truth meshes for this split: {e}", stacklevel=3)
            return sample
        return replace(sample, extra={**sample.extra, "verts_3d": verts})

    def add(self, sample: HandSample) -> None:
        verts = sample.extra.get("verts_3d") if self.enabled else None
        if verts is not None:
            verts = np.asarray(verts, np.float32)
            if self.array is None:
                if verts.ndim != 2 or verts.shape[1] != 3:
                    raise DatasetError(f"{sample.key}: field 'verts_3d' must be (V, 3), got {verts.shape}")
                self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32,
                                                       shape=(self.capacity, *verts.shape))
                self.array[:] = np.nan
            if verts.shape != self.array.shape[1:]:
                raise DatasetError(f"{sample.key}: field 'verts_3d' is {verts.shape}, earlier samples "
                                   f"{self.array.shape[1:]}")
            if self.n >= self.capacity:
                raise DatasetError(f"{sample.key}: the reader yielded more samples than its length {self.capacity}")
            self.array[self.n] = verts
            self.count += 1
        self.n += 1

    def close(self, manifest: dict) -> int:
        """Publish vertices.npy (trimmed to the split's count) and vertices.json; returns the mesh count."""
        if self.array is None or not self.enabled or self.count == 0:
            self.discard()
            return 0
        n, shape = int(manifest["count"]), self.array.shape[1:]
        with atomic_path(self.out_dir / VERTICES_FILE) as final:
            out = np.lib.format.open_memmap(final, mode="w+", dtype=np.float32, shape=(n, *shape))
            out[:] = self.array[:n]
            out.flush()
            del out
        self.discard()
        _atomic_json(self.out_dir / VERTICES_MANIFEST, {
            "count": n, "meshes": self.count, "num_vertices": int(shape[0]), "unit": "mm",
            "frame": "camera (the split's joints_3d)", "split_params_hash": manifest["params_hash"]})
        return self.count

    def discard(self) -> None:
        self.array = None  # drops the memmap
        self.tmp.unlink(missing_ok=True)


class _Sequences:
    """Collects each sample's ``extra["sequence"]`` / ``extra["frame"]`` (None where it has none) into
    ``sequences.json`` (module docstring)."""

    def __init__(self) -> None:
        self.sequence: list[str | None] = []
        self.frame: list[int | None] = []

    def add(self, sample: HandSample) -> None:
        seq, frame = sample.extra.get("sequence"), sample.extra.get("frame")
        self.sequence.append(None if seq is None else str(seq))
        self.frame.append(None if frame is None else int(frame))

    def close(self, out_dir: Path, manifest: dict) -> int:
        """Write sequences.json when any sample has a sequence; returns the number of sequences."""
        names = {s for s in self.sequence if s is not None}
        if not names:
            return 0
        if len(self.sequence) != int(manifest["count"]):
            raise DatasetError(f"prepare: {len(self.sequence)} sequence labels for {manifest['count']} samples")
        _atomic_json(out_dir / SEQUENCES_FILE, {"count": len(self.sequence), "sequence": self.sequence,
                                                "frame": self.frame, "split_params_hash": manifest["params_hash"]})
        return len(names)


def _cropped(reader, image_size: int, enlarge: float, stats: PrepareStats, mirror_to: str | None = None,
             meshes: _Meshes | None = None, sequences: _Sequences | None = None) -> Iterator[HandSample]:
    for i, sample in enumerate(reader):
        if meshes is not None:
            sample = meshes.attach(reader, i, sample)
        if sequences is not None:
            sequences.add(sample)
        if sample.joints_2d is not None:
            stats.by_joints += 1
            out = crop_sample(sample, image_size, enlarge)
        else:
            box = reader.hand_box(sample) if hasattr(reader, "hand_box") else None
            if box is not None:
                stats.by_hand_box += 1
                crop = box_to_crop(box, enlarge)
            else:
                h, w = sample.image.shape[:2]
                stats.whole_image += 1
                stats.whole_image_keys.append(sample.key)
                crop = CropBox(w / 2.0, h / 2.0, float(min(h, w)))
            out = crop_sample(sample, image_size, enlarge, box=crop)
        if mirror_to is not None and out.side != mirror_to:
            out = mirror_sample(out)
            stats.mirrored += 1
        if meshes is not None:
            meshes.add(out)
        yield out


def prepare_split(reader, out_dir: str | os.PathLike, image_size: int = 256, enlarge: float = 0.2,
                  shard_size: int = 1024, params: dict | None = None, sigma: float = DEFAULT_SIGMA,
                  mirror_to: str | None = "right", meshes: bool = True) -> tuple[dict, PrepareStats]:
    """Crop every sample of ``reader`` (§3.1) and write the prepared split; returns (manifest, stats).

    The §3.5 heatmaps that readers of the split compute are recorded with it: side ``image_size // 4``
    (64 at 256², the SFE's output), Gaussian ``sigma`` in heatmap pixels (2.5).

    ``mirror_to``: the hand side of the model (``"right"``, MANO_RIGHT); samples of the other side are
    mirrored into it (:func:`keyhand.data.crop.mirror_sample`). None keeps every sample as it is.

    ``params`` (what produced the data: dataset, root, seed ...) are hashed into the manifest together
    with the crop settings, so the masks and the trainers can check what they read. Ground-truth meshes,
    where the samples have them, are written beside the shards (module docstring, :func:`read_split_vertices`)
    unless ``meshes`` is False (a split no evaluation reads: real ObMan's would be ~1.3 GB).
    """
    if mirror_to is not None and mirror_to not in HAND_SIDES:
        raise ValueError(f"prepare: mirror_to must be one of {HAND_SIDES} or None, got {mirror_to!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in (VERTICES_MANIFEST, VERTICES_FILE, SEQUENCES_FILE):  # a previous preparation's are not ours
        (out / name).unlink(missing_ok=True)
    stats = PrepareStats()
    full = {"crop": {"image_size": image_size, "enlarge": enlarge, "mirror_to": mirror_to}, **(params or {})}
    sink = _Meshes(out, len(reader)) if meshes else None
    frames = _Sequences()
    try:
        manifest = write_split(_cropped(reader, image_size, enlarge, stats, mirror_to, sink, frames), out,
                               shard_size=shard_size, image_size=image_size, heatmap_size=max(1, image_size // 4),
                               sigma=sigma, params=full)
        stats.meshes = sink.close(manifest) if sink is not None else 0
        stats.sequences = frames.close(out, manifest)
    finally:
        if sink is not None:
            sink.discard()
    stats.written = int(manifest["count"])
    stats.skipped_files = list(getattr(reader, "skipped", []))
    return manifest, stats


def _made_for(folder: Path, meta: dict, count: int) -> bool:
    """A side file of a prepared split (its ``meta``, ``count`` rows) belongs to the split's current preparation."""
    split = read_manifest(folder, check_files=False)
    return meta.get("split_params_hash") == split["params_hash"] and count == split["count"]


def read_split_vertices(split_dir: str | os.PathLike | None) -> np.ndarray | None:
    """The ground-truth meshes of a prepared split: (n, V, 3) float32 mm (read-only memmap, NaN rows for
    samples without one, row i = sample i), or None when the split has none (or ``split_dir`` is None).
    :class:`keyhand.data.cache.CacheError` naming the folder if they were made for another preparation."""
    if split_dir is None:
        return None
    folder = Path(split_dir)
    path = folder / VERTICES_MANIFEST
    if not path.is_file():
        return None
    hint = "re-run the data preparation stage (keyhand prepare / dvc repro)"
    try:
        meta = json.loads(path.read_text())
        verts = np.load(folder / VERTICES_FILE, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise CacheError(f"{path}: unreadable ground-truth meshes ({e}): {hint}") from None
    if not _made_for(folder, meta, verts.shape[0]):
        raise CacheError(f"{folder / VERTICES_FILE} was made for another preparation of {folder}: {hint}")
    return verts


def read_split_sequences(split_dir: str | os.PathLike | None) -> dict[str, list] | None:
    """Each sample's video sequence and frame of a prepared split: ``{"sequence": [str | None] * n, "frame":
    [int | None] * n}`` in the split's order, or None when its samples are independent images (no
    sequences.json: synthetic sets, ObMan) or ``split_dir`` is None. :class:`keyhand.data.cache.CacheError`
    naming the folder if it was made for another preparation."""
    if split_dir is None:
        return None
    folder = Path(split_dir)
    path = folder / SEQUENCES_FILE
    if not path.is_file():
        return None
    hint = "re-run the data preparation stage (keyhand prepare / dvc repro)"
    try:
        meta = json.loads(path.read_text())
        sequence, frame = list(meta["sequence"]), list(meta["frame"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CacheError(f"{path}: unreadable sequence labels ({e}): {hint}") from None
    if len(sequence) != len(frame) or not _made_for(folder, meta, len(sequence)):
        raise CacheError(f"{path} was made for another preparation of {folder}: {hint}")
    return {"sequence": sequence, "frame": frame}


def compute_split_masks(split_dir: str | os.PathLike, masks_dir: str | os.PathLike, workers: int | None = None,
                        iterations: int = 5, grabcut_kwargs: dict | None = None, chunk_size: int = 16,
                        progress: Callable[[list], None] | None = None) -> MaskReport:
    """GrabCut masks (§3.5) for every prepared crop of ``split_dir``, packed into ``masks_dir`` (module doc).

    Resumable: per-sample PNGs already in ``masks_dir/png`` are kept. The packed ``masks.npy`` and its
    manifest are removed first and written last, so an interrupted run leaves nothing a reader trusts.
    A sample whose GrabCut fails is reported in the returned report and gets an empty mask (has 0).
    """
    split = read_manifest(split_dir)
    out = Path(masks_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MASKS_MANIFEST).unlink(missing_ok=True)
    ds = PreparedDataset(split_dir)
    png_dir = out / "png"

    def items() -> Iterator[MaskItem]:
        for i in range(len(ds)):
            r = ds.raw(i)
            if r["has"][1]:
                yield MaskItem(ds.key(i), np.asarray(r["joints_2d"], np.float32), image=np.asarray(r["images"]))

    report = compute_masks(items(), png_dir, workers=workers, iterations=iterations, chunk_size=chunk_size,
                           grabcut_kwargs=grabcut_kwargs, progress=progress)
    size = int(split["image_size"])
    has = np.zeros(len(ds), np.uint8)
    with atomic_path(out / MASKS_FILE) as tmp:
        packed = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(ds), size, size))
        for i in range(len(ds)):
            key = ds.key(i)
            if mask_path(png_dir, key).is_file():
                packed[i] = load_mask(png_dir, key)
                has[i] = 1
            else:
                packed[i] = 0
        packed.flush()
        del packed
    _atomic_json(out / MASKS_MANIFEST, {
        "count": len(ds), "image_size": size, "split_params_hash": split["params_hash"],
        "iterations": iterations, "grabcut": grabcut_kwargs or {}, "has": has.tolist(),
        "done": report.done, "fallback": report.fallback, "failed": [k for k, _ in report.failed],
    })
    return report

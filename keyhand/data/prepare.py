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
   ``enlarge``; without a box the centred square of the whole image is used and counted.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from keyhand.data.cache import (
    MASKS_FILE,
    MASKS_MANIFEST,
    PreparedDataset,
    _atomic_json,
    read_manifest,
    read_masks_manifest,
    write_split,
)
from keyhand.data.crop import CropBox, crop_sample
from keyhand.data.heatmaps import DEFAULT_SIGMA
from keyhand.data.masks import MaskItem, MaskReport, compute_masks, load_mask, mask_path
from keyhand.data.record import HandSample

__all__ = ["PrepareStats", "open_reader", "box_to_crop", "prepare_split", "compute_split_masks",
           "read_masks_manifest"]

def open_reader(name: str, root: str | os.PathLike, split: str, on_corrupt: str = "fail"):
    """The reader of dataset ``name``: a generated ``synth-*`` set or a real one (``keyhand.data.readers``)."""
    if name.startswith("synth-"):
        from keyhand.data.synthetic import KINDS, SyntheticReader

        if name not in KINDS:
            raise ValueError(f"unknown synthetic dataset {name!r}; known: {', '.join(KINDS)}")
        return SyntheticReader(root, split)
    from keyhand.data import obman, rwth, senz3d, stb  # noqa: F401  (register the readers)
    from keyhand.data.readers import open_dataset

    return open_dataset(name, root, split, on_corrupt=on_corrupt)


def box_to_crop(box: tuple[float, float, float, float], enlarge: float) -> CropBox:
    """A square crop around an ``(x0, y0, x1, y1)`` box: its centre, side = larger side × (1 + enlarge)."""
    x0, y0, x1, y1 = box
    return CropBox((x0 + x1) / 2.0, (y0 + y1) / 2.0, max(x1 - x0, y1 - y0) * (1.0 + enlarge))


@dataclass
class PrepareStats:
    """What :func:`prepare_split` did."""

    written: int = 0
    by_joints: int = 0          # cropped with Eq. 1
    by_hand_box: int = 0        # gesture sets: the reader's hand box
    whole_image: int = 0        # no joints and no box: centred square of the image
    whole_image_keys: list[str] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)   # the reader's corrupt-image policy "skip"


def _cropped(reader, image_size: int, enlarge: float, stats: PrepareStats) -> Iterator[HandSample]:
    for sample in reader:
        if sample.joints_2d is not None:
            stats.by_joints += 1
            yield crop_sample(sample, image_size, enlarge)
            continue
        box = reader.hand_box(sample) if hasattr(reader, "hand_box") else None
        if box is not None:
            stats.by_hand_box += 1
            crop = box_to_crop(box, enlarge)
        else:
            h, w = sample.image.shape[:2]
            stats.whole_image += 1
            stats.whole_image_keys.append(sample.key)
            crop = CropBox(w / 2.0, h / 2.0, float(min(h, w)))
        yield crop_sample(sample, image_size, enlarge, box=crop)


def prepare_split(reader, out_dir: str | os.PathLike, image_size: int = 256, enlarge: float = 0.2,
                  shard_size: int = 1024, params: dict | None = None, sigma: float = DEFAULT_SIGMA
                  ) -> tuple[dict, PrepareStats]:
    """Crop every sample of ``reader`` (§3.1) and write the prepared split; returns (manifest, stats).

    The §3.5 heatmaps that readers of the split compute are recorded with it: side ``image_size // 4``
    (64 at 256², the SFE's output), Gaussian ``sigma`` in heatmap pixels (2.5).

    ``params`` (what produced the data: dataset, root, seed ...) are hashed into the manifest together
    with the crop settings, so the masks and the trainers can check what they read.
    """
    stats = PrepareStats()
    full = {"crop": {"image_size": image_size, "enlarge": enlarge}, **(params or {})}
    manifest = write_split(_cropped(reader, image_size, enlarge, stats), out_dir, shard_size=shard_size,
                           image_size=image_size, heatmap_size=max(1, image_size // 4), sigma=sigma, params=full)
    stats.written = int(manifest["count"])
    stats.skipped_files = list(getattr(reader, "skipped", []))
    return manifest, stats


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
    tmp = out / f".{MASKS_FILE}.tmp"
    packed = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(ds), size, size))
    has = np.zeros(len(ds), np.uint8)
    for i in range(len(ds)):
        key = ds.key(i)
        if mask_path(png_dir, key).is_file():
            packed[i] = load_mask(png_dir, key)
            has[i] = 1
        else:
            packed[i] = 0
    packed.flush()
    del packed
    os.replace(tmp, out / MASKS_FILE)
    _atomic_json(out / MASKS_MANIFEST, {
        "count": len(ds), "image_size": size, "split_params_hash": split["params_hash"],
        "iterations": iterations, "grabcut": grabcut_kwargs or {}, "has": has.tolist(),
        "done": report.done, "fallback": report.fallback, "failed": [k for k, _ in report.failed],
    })
    return report

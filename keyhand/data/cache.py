"""The prepared-sample cache: cropped samples stored once as memory-mappable arrays, read fast in training.

    from keyhand.data.cache import write_split, PreparedDataset
    write_split((crop_sample(s) for s in reader), "data/prepared/stb/train", params={"crop": ...})
    ds = PreparedDataset("data/prepared/stb/train", augment=Augmenter(seed=0))
    item = ds[0]      # dict of tensors (below)
    loader = DataLoader(ds, batch_size=32, num_workers=2)   # fork workers: do not call cv2.setNumThreads
                                                              # in them (deadlocks after fork, observed)

On disk (``split_dir/``), one group of ``.npy`` files per shard ``k`` (``np.lib.format.open_memmap``):

    images-{k:05d}.npy         (n, S, S, 3) uint8 RGB, the §3.1 crop (S = 256)
    masks-{k:05d}.npy          (n, S, S) uint8 {0, 1} hand silhouette (§3.5 GrabCut or the dataset's)
    joints_2d-{k:05d}.npy      (n, 21, 2) float32 crop px
    joints_3d-{k:05d}.npy      (n, 21, 3) float32 mm, camera frame (not root-relative: the loss does that)
    intrinsics-{k:05d}.npy     (n, 3, 3) float32, crop intrinsics K' (= A K)
    visibility-{k:05d}.npy     (n, 21) float32 {0, 1}
    gesture-{k:05d}.npy        (n,) int64 class index, -1 when absent
    subject-{k:05d}.npy        (n,) int64 index into manifest "subjects", -1 when absent
    has-{k:05d}.npy            (n, 4) uint8 flags: mask, joints_2d, joints_3d, intrinsics present
    keys-{k:05d}.json          the n sample keys
    manifest.json              written LAST, atomically: version, count, shards (files, counts), fields
                               (dtype, shape), params and their content hash, subjects, gesture names

Trust rule: a split is valid only with a manifest.json that parses, has this version and whose shards
exist with the listed shapes. :func:`write_split` deletes the manifest before writing anything, writes each
shard under a temporary name then renames it, writes the manifest last and removes files no manifest
lists, so an interrupted preparation leaves nothing a later run trusts and a rerun rewrites it.

Heatmaps (§3.5, 21×64×64, σ = 2.5 heatmap px) are computed on the fly from joints_2d: ~0.1 ms per sample
vectorised, against 344 KB per sample (1.8× the image) to store them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from keyhand.atomic import atomic_path, atomic_write_json
from keyhand.data.augment import Augmenter
from keyhand.data.crop import normalize
from keyhand.data.heatmaps import DEFAULT_SIGMA, joint_heatmaps
from keyhand.data.record import NUM_JOINTS, DatasetError, HandSample

__all__ = ["CACHE_VERSION", "CacheError", "write_split", "read_manifest", "is_prepared", "params_hash",
           "PreparedDataset"]

CACHE_VERSION = 1
MANIFEST = "manifest.json"
#: GrabCut masks packed beside a split by :func:`keyhand.data.prepare.compute_split_masks`.
MASKS_FILE = "masks.npy"
MASKS_MANIFEST = "manifest.json"
HAS_FLAGS = ("mask", "joints_2d", "joints_3d", "intrinsics")
_SHARD_FILE = re.compile(r"^(?:[a-z_0-9]+)-\d{5}\.(?:npy|json)$")


class CacheError(DatasetError):
    """A prepared split is missing, incomplete or stale; the message names the split directory."""


def _fields(image_size: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    s = image_size
    return {
        "images": ("uint8", (s, s, 3)),
        "masks": ("uint8", (s, s)),
        "joints_2d": ("float32", (NUM_JOINTS, 2)),
        "joints_3d": ("float32", (NUM_JOINTS, 3)),
        "intrinsics": ("float32", (3, 3)),
        "visibility": ("float32", (NUM_JOINTS,)),
        "gesture": ("int64", ()),
        "subject": ("int64", ()),
        "has": ("uint8", (len(HAS_FLAGS),)),
    }


def params_hash(params: dict) -> str:
    """Content hash (sha256, 16 hex) of a JSON-able params dict, key order independent."""
    blob = json.dumps(params, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _atomic_json(path: Path, obj) -> None:
    atomic_write_json(path, obj, indent=1)


class _ShardWriter:
    """Fills one shard's memmaps under temporary names; ``close`` trims and renames them."""

    def __init__(self, out_dir: Path, index: int, capacity: int, fields: dict) -> None:
        self.out_dir, self.index, self.capacity, self.fields = out_dir, index, capacity, fields
        self.n = 0
        self.keys: list[str] = []
        self.tmp = {f: out_dir / f".{f}-{index:05d}.npy.tmp" for f in fields}
        self.arrays = {f: np.lib.format.open_memmap(self.tmp[f], mode="w+", dtype=dt,
                                                    shape=(capacity, *shape))
                       for f, (dt, shape) in fields.items()}

    def add(self, row: dict, key: str) -> None:
        for f, value in row.items():
            self.arrays[f][self.n] = value
        self.keys.append(key)
        self.n += 1

    def close(self) -> dict:
        files = {}
        for f, arr in self.arrays.items():
            final = self.out_dir / f"{f}-{self.index:05d}.npy"
            if self.n < self.capacity:  # last shard: copy the filled rows to an exact-size file
                with atomic_path(final) as trimmed:
                    out = np.lib.format.open_memmap(trimmed, mode="w+", dtype=arr.dtype,
                                                    shape=(self.n, *arr.shape[1:]))
                    out[:] = arr[:self.n]
                    out.flush()
                    del out
                self.tmp[f].unlink()
            else:
                arr.flush()
                os.replace(self.tmp[f], final)
            files[f] = final.name
        self.arrays.clear()
        keys = self.out_dir / f"keys-{self.index:05d}.json"
        _atomic_json(keys, self.keys)
        return {"index": self.index, "count": self.n, "files": files, "keys": keys.name}

    def abort(self) -> None:
        self.arrays.clear()
        for p in self.tmp.values():
            p.unlink(missing_ok=True)


def _row(sample: HandSample, image_size: int, subjects: dict[str, int]) -> dict:
    s = sample.validate()
    if s.image.shape != (image_size, image_size, 3):
        raise CacheError(f"{s.key}: image is {s.image.shape}, the cache stores "
                         f"({image_size}, {image_size}, 3) crops (run keyhand.data.crop.crop_sample first)")
    has = [s.mask is not None, s.joints_2d is not None, s.joints_3d is not None, s.intrinsics is not None]
    subject = -1
    if s.subject is not None:
        subject = subjects.setdefault(str(s.subject), len(subjects))
    zeros = np.zeros
    return {
        "images": s.image,
        "masks": (s.mask > 0) if s.mask is not None else zeros((image_size, image_size), np.uint8),
        "joints_2d": s.joints_2d if has[1] else zeros((NUM_JOINTS, 2), np.float32),
        "joints_3d": s.joints_3d if has[2] else zeros((NUM_JOINTS, 3), np.float32),
        "intrinsics": s.intrinsics if has[3] else zeros((3, 3), np.float32),
        "visibility": s.visibility if s.visibility is not None else zeros(NUM_JOINTS, np.float32),
        "gesture": -1 if s.gesture is None else int(s.gesture),
        "subject": subject,
        "has": np.array(has, np.uint8),
    }


def write_split(samples: Iterable[HandSample], out_dir: str | os.PathLike, shard_size: int = 1024,
                image_size: int = 256, heatmap_size: int = 64, sigma: float = DEFAULT_SIGMA,
                params: dict | None = None, overwrite: bool = True) -> dict:
    """Write cropped samples (``image_size``² crops, §3.1) as a prepared split; returns the manifest.

    Args:
        samples: HandSample iterable, already cropped (crop px joints, crop intrinsics).
        out_dir: the split directory (created).
        shard_size: samples per shard (~260 KB each at 256²).
        heatmap_size, sigma: the §3.5 heatmap parameters readers use by default (recorded).
        params: what produced the samples (dataset, crop, mask params ...), hashed into the manifest.
        overwrite: False = keep an existing valid split whose params hash matches (``samples`` unread).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    full_params = {"cache_version": CACHE_VERSION, "image_size": image_size, "heatmap_size": heatmap_size,
                   "sigma": sigma, **(params or {})}
    phash = params_hash(full_params)
    if not overwrite and is_prepared(out, phash):
        return read_manifest(out)
    (out / MANIFEST).unlink(missing_ok=True)  # from here on, nothing in out_dir is trusted
    fields = _fields(image_size)
    subjects: dict[str, int] = {}
    gesture_names: dict[int, str] = {}
    sources: dict[str, int] = {}
    shards: list[dict] = []
    writer: _ShardWriter | None = None
    try:
        for sample in samples:
            if writer is None:
                writer = _ShardWriter(out, len(shards), shard_size, fields)
            writer.add(_row(sample, image_size, subjects), sample.key)
            if sample.gesture is not None and sample.gesture_name is not None:
                gesture_names[int(sample.gesture)] = sample.gesture_name
            sources[sample.source] = sources.get(sample.source, 0) + 1
            if writer.n == shard_size:
                shards.append(writer.close())
                writer = None
        if writer is not None:
            shards.append(writer.close())
            writer = None
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    manifest = {
        "version": CACHE_VERSION,
        "count": sum(s["count"] for s in shards),
        "image_size": image_size,
        "heatmap_size": heatmap_size,
        "sigma": sigma,
        "fields": {f: {"dtype": dt, "shape": list(shape)} for f, (dt, shape) in fields.items()},
        "has_flags": list(HAS_FLAGS),
        "shards": shards,
        "subjects": sorted(subjects, key=subjects.get),
        "gesture_names": {str(k): v for k, v in sorted(gesture_names.items())},
        "sources": sources,
        "params": full_params,
        "params_hash": phash,
    }
    listed = {MANIFEST} | {s["keys"] for s in shards} | {f for s in shards for f in s["files"].values()}
    for p in out.iterdir():  # files of an older, larger split or of an interrupted run
        if p.is_file() and p.name not in listed and (_SHARD_FILE.match(p.name) or p.name.endswith(".tmp")):
            p.unlink()
    _atomic_json(out / MANIFEST, manifest)
    return manifest


def read_manifest(split_dir: str | os.PathLike, check_files: bool = True) -> dict:
    """The validated manifest of a prepared split; :class:`CacheError` naming the directory otherwise."""
    split = Path(split_dir)
    path = split / MANIFEST
    hint = "re-run the data preparation stage (keyhand prepare / dvc repro)"
    if not path.is_file():
        why = ("does not exist" if not split.exists()
               else "has no manifest.json (never prepared, or interrupted)")
        raise CacheError(f"prepared split {split} {why}: {hint}")
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("version") != CACHE_VERSION:
            raise CacheError(f"prepared split {split} has cache version {manifest.get('version')}, "
                             f"expected {CACHE_VERSION}: {hint}")
        shards = manifest["shards"]
        fields = manifest["fields"]
        if sum(s["count"] for s in shards) != manifest["count"]:
            raise CacheError(f"prepared split {split}: manifest counts disagree: {hint}")
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CacheError(f"prepared split {split}: unreadable manifest.json ({e}): {hint}") from e
    if check_files:
        for s in shards:
            if not (split / s["keys"]).is_file():
                raise CacheError(f"prepared split {split}: missing {s['keys']}: {hint}")
            for f, spec in fields.items():
                name = s["files"].get(f)
                try:
                    arr = np.load(split / name, mmap_mode="r") if name else None
                except (OSError, ValueError) as e:
                    raise CacheError(f"prepared split {split}: unreadable {name} ({e}): {hint}") from e
                want = (s["count"], *spec["shape"])
                if arr is None or arr.shape != want or str(arr.dtype) != spec["dtype"]:
                    got = None if arr is None else (arr.shape, str(arr.dtype))
                    raise CacheError(f"prepared split {split}: shard file {name or f} is {got}, "
                                     f"manifest says {want} {spec['dtype']}: {hint}")
                del arr
    return manifest


def is_prepared(split_dir: str | os.PathLike, expected_hash: str | None = None) -> bool:
    """True if the split is valid (and, when given, was prepared with params hashing to ``expected_hash``)."""
    try:
        manifest = read_manifest(split_dir)
    except CacheError:
        return False
    return expected_hash is None or manifest["params_hash"] == expected_hash



def read_masks_manifest(masks_dir: str | os.PathLike) -> dict:
    """The manifest of packed GrabCut masks, or :class:`CacheError` naming the folder."""
    path = Path(masks_dir) / MASKS_MANIFEST
    hint = "re-run the masks stage (keyhand masks / dvc repro)"
    if not path.is_file() or not (Path(masks_dir) / MASKS_FILE).is_file():
        raise CacheError(f"masks {masks_dir} are not complete (no {MASKS_MANIFEST}): {hint}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CacheError(f"{path}: unreadable ({e}): {hint}") from None


class PreparedDataset(Dataset):
    """A prepared split as a torch Dataset (memory-mapped, picklable for DataLoader workers).

    Each item is a dict of tensors:
        image       (3, S, S) float32, per-image standardised (§3.2), after ``augment`` (§4.2) if given
        heatmaps    (21, H, H) float32, §3.5 Gaussians (σ heatmap px) from joints_2d, zeros without joints
        mask        (1, M, M) float32 in [0, 1] (M = ``mask_size`` or S; area-averaged when smaller)
        joints_2d   (21, 2) float32 crop px
        joints_3d   (21, 3) float32 mm, camera frame
        intrinsics  (3, 3) float32 crop intrinsics
        visibility  (21,) float32: stored visibility ∧ inside the crop (0 for all without joints_2d)
        has_mask, has_joints_2d, has_joints_3d, has_intrinsics: () float32 {0, 1}
        gesture, subject, index: () int64 (-1 when absent)

    Args:
        split_dir: a directory written by :func:`write_split`.
        augment: an :class:`Augmenter` applied to the uint8 crop with key ``(epoch, index)``.
        heatmap_size, sigma: default to the manifest's.
        mask_size: output mask side (None = image size).
        masks_dir: packed GrabCut masks (:func:`keyhand.data.prepare.compute_split_masks`) to use instead
            of the stored ones (the dataset's own); they must have been made for this preparation.
        expected_hash: if given, the split must have been prepared with these params.
    Raises:
        CacheError naming the directory when the split has no valid manifest.
    """

    def __init__(self, split_dir: str | os.PathLike, augment: Augmenter | None = None,
                 heatmap_size: int | None = None, sigma: float | None = None, mask_size: int | None = None,
                 expected_hash: str | None = None, epoch: int = 0,
                 masks_dir: str | os.PathLike | None = None) -> None:
        self.split_dir = Path(split_dir)
        self.manifest = read_manifest(self.split_dir)
        self.masks_dir = None if masks_dir is None else Path(masks_dir)
        self._mask_has: np.ndarray | None = None
        if self.masks_dir is not None:
            mm = read_masks_manifest(self.masks_dir)
            if mm.get("split_params_hash") != self.manifest["params_hash"] or mm.get("count") != len(self):
                raise CacheError(f"masks {self.masks_dir} were made for another preparation of {self.split_dir}: "
                                 "re-run the masks stage (keyhand masks / dvc repro)")
            self._mask_has = np.asarray(mm["has"], np.uint8)
        if expected_hash is not None and self.manifest["params_hash"] != expected_hash:
            raise CacheError(f"prepared split {self.split_dir} was prepared with params hash "
                             f"{self.manifest['params_hash']}, expected {expected_hash}: re-run the data "
                             f"preparation stage")
        self.augment = augment
        self.image_size = int(self.manifest["image_size"])
        self.heatmap_size = int(heatmap_size or self.manifest["heatmap_size"])
        self.sigma = float(sigma if sigma is not None else self.manifest["sigma"])
        self.mask_size = int(mask_size or self.image_size)
        self.epoch = int(epoch)
        counts = [s["count"] for s in self.manifest["shards"]]
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._arrays: dict[str, list[np.ndarray]] | None = None
        self._masks: np.ndarray | None = None  # packed GrabCut masks (memmap), opened lazily
        self._keys: dict[int, list[str]] = {}
        self._content_hash: str | None = None

    def content_hash(self) -> str:
        """sha256 (16 hex) of the bytes this dataset reads: the split's manifest and shard files and, with
        ``masks_dir``, the packed masks and their manifest (a run's identity; computed once)."""
        if self._content_hash is None:
            h = hashlib.sha256()
            shards = self.manifest["shards"]
            names = sorted({s["keys"] for s in shards} | {f for s in shards for f in s["files"].values()})
            files = [self.split_dir / MANIFEST, *(self.split_dir / n for n in names)]
            if self.masks_dir is not None:
                files += [self.masks_dir / MASKS_MANIFEST, self.masks_dir / MASKS_FILE]
            for path in files:
                h.update(f"{path.parent.name}/{path.name}\0".encode())
                with open(path, "rb") as f:
                    h.update(hashlib.file_digest(f, "sha256").digest())
            self._content_hash = h.hexdigest()[:16]
        return self._content_hash

    def __len__(self) -> int:
        return int(self.manifest["count"])

    def set_epoch(self, epoch: int) -> None:
        """New augmentation draws per epoch (workers see it when they are re-created each epoch)."""
        self.epoch = int(epoch)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_arrays"] = None  # memmaps are re-opened in each worker, never pickled
        state["_masks"] = None
        return state

    def _open(self) -> dict[str, list[np.ndarray]]:
        if self._arrays is None:
            self._arrays = {f: [np.load(self.split_dir / s["files"][f], mmap_mode="r")
                                for s in self.manifest["shards"]] for f in self.manifest["fields"]}
        return self._arrays

    def _locate(self, index: int) -> tuple[int, int]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples in {self.split_dir}")
        index %= n
        shard = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return shard, int(index - self._offsets[shard])

    def key(self, index: int) -> str:
        """The sample key of ``index``."""
        shard, row = self._locate(index)
        if shard not in self._keys:
            path = self.split_dir / self.manifest["shards"][shard]["keys"]
            self._keys[shard] = json.loads(path.read_text())
        return self._keys[shard][row]

    def raw(self, index: int) -> dict[str, np.ndarray]:
        """The stored arrays of one sample (read-only memmap views; image uint8 (S, S, 3))."""
        shard, row = self._locate(index)
        return {f: arrs[shard][row] for f, arrs in self._open().items()}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        r = self.raw(index)
        index %= len(self)
        image = np.asarray(r["images"])
        if self.augment is not None:
            image = self.augment(image, (self.epoch, index))
        has = np.asarray(r["has"], np.float32)
        vis = np.asarray(r["visibility"], np.float32) * has[1]
        if self.masks_dir is not None:
            if self._masks is None:
                self._masks = np.load(self.masks_dir / MASKS_FILE, mmap_mode="r")
            r["masks"] = self._masks[index]
            has[0] = float(self._mask_has[index])
        heatmaps, vis = joint_heatmaps(r["joints_2d"], vis, self.image_size, self.heatmap_size, self.sigma)
        mask = np.asarray(r["masks"], np.float32)
        if self.mask_size != self.image_size:
            mask = cv2.resize(mask, (self.mask_size, self.mask_size), interpolation=cv2.INTER_AREA)
        return {
            "image": torch.from_numpy(normalize(image)),
            "heatmaps": torch.from_numpy(heatmaps),
            "mask": torch.from_numpy(mask)[None],
            "joints_2d": torch.from_numpy(np.array(r["joints_2d"], np.float32)),
            "joints_3d": torch.from_numpy(np.array(r["joints_3d"], np.float32)),
            "intrinsics": torch.from_numpy(np.array(r["intrinsics"], np.float32)),
            "visibility": torch.from_numpy(vis),
            **{f"has_{name}": torch.tensor(has[i]) for i, name in enumerate(HAS_FLAGS)},
            "gesture": torch.tensor(int(r["gesture"]), dtype=torch.int64),
            "subject": torch.tensor(int(r["subject"]), dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
        }

    def __repr__(self) -> str:
        return f"PreparedDataset({str(self.split_dir)!r}, n={len(self)}, augment={self.augment!r})"

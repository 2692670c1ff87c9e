"""Benchmark of the data path: §3.5 GrabCut masks (accuracy, speed, parallel speed-up) and the prepared
cache read through a DataLoader (without and with §4.2 augmentation).

    python -m pipeline.bench_data                      # defaults: 64 mask images, 1024 cached samples
    python -m pipeline.bench_data --synth-root data/synth-stb   # GrabCut IoU on the synthetic renders too

(a) GrabCut: hand-like images with exact masks (:func:`keyhand.data.masks.draw_hand_fixture`; pass
``synth_root`` to score a generated :mod:`keyhand.data.synthetic` dataset, cropped as in §3.1, as well),
mean IoU against the true masks and masks/s on 1 process and on ``workers`` processes (wall time of
:func:`keyhand.data.masks.compute_masks`, worker start-up included).
(b) Cache: ``cache_n`` random 256² samples written with :func:`keyhand.data.cache.write_split`, read by a
DataLoader (``num_workers`` workers, batch ``batch_size``) for ``epochs`` epochs, samples/s after the first
batch (files in the page cache; targets ≥ 500/s plain, ≥ 150/s augmented on 2 cores).

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from keyhand.data.augment import Augmenter
from keyhand.data.cache import PreparedDataset, write_split
from keyhand.data.masks import MaskItem, compute_masks, draw_hand_fixture, iou, load_mask
from keyhand.data.record import HandSample

TARGETS = {"plain": 500.0, "augmented": 150.0}


def _fixture_items(n: int, size: int, seed: int) -> tuple[list[MaskItem], dict[str, np.ndarray]]:
    items, truth = [], {}
    for i in range(n):
        img, mask, joints = draw_hand_fixture(np.random.default_rng([seed, i]), size=size)
        key = f"fixture/{i:05d}"
        items.append(MaskItem(key, joints, image=img))
        truth[key] = mask
    return items, truth


def _synth_items(root: str, split: str, n: int) -> tuple[list[MaskItem], dict[str, np.ndarray]]:
    from keyhand.data.crop import crop_sample
    from keyhand.data.synthetic import SyntheticReader

    reader = SyntheticReader(root, split)
    items, truth = [], {}
    for i in range(min(n, len(reader))):
        s = crop_sample(reader[i], 256)
        items.append(MaskItem(f"synth/{s.key}", s.joints_2d, image=s.image))
        truth[f"synth/{s.key}"] = s.mask
    return items, truth


def bench_grabcut(n: int = 64, size: int = 256, iterations: int = 5, workers: int | None = None,
                  seed: int = 0, synth_root: str | None = None, synth_split: str = "train") -> list[dict]:
    """(a): IoU and masks/s on 1 and ``workers`` (default all cores) processes.

    ``value`` is the wall-clock rate (process start-up included); the note adds the steady rate, measured
    between the first and the last finished chunk.
    """
    workers = workers or os.cpu_count() or 1
    sets = [("fixture", *_fixture_items(n, size, seed))]
    if synth_root:
        sets.append(("synthetic", *_synth_items(synth_root, synth_split, n)))
    rows = []
    for name, items, truth in sets:
        speeds, steady = {}, {}
        for w in sorted({1, workers}):
            with tempfile.TemporaryDirectory() as out:
                done: list[tuple[float, int]] = []
                t0 = time.perf_counter()
                rep = compute_masks(items, out, workers=w, iterations=iterations, chunk_size=4,
                                    progress=lambda res, d=done: d.append((time.perf_counter(), len(res))))
                dt = time.perf_counter() - t0
                speeds[w] = len(items) / dt
                steady[w] = (sum(k for _, k in done[1:]) / (done[-1][0] - done[0][0])
                             if len(done) > 1 else speeds[w])
                ious = [iou(load_mask(out, it.key), truth[it.key]) for it in items
                        if truth[it.key] is not None]
            rows.append({"bench": "grabcut", "data": f"{name} ({len(items)} × {size}²)", "setting":
                         f"{w} process{'es' if w > 1 else ''}, {iterations} iter", "value": speeds[w],
                         "unit": "masks/s",
                         "note": (f"mean IoU {np.mean(ious):.3f} (min {np.min(ious):.3f}, "
                                  f"fallback {rep.fallback}, failed {len(rep.failed)}); steady "
                                  f"{steady[w]:.1f} masks/s"
                                  + (f"; speed-up ×{speeds[w] / speeds[1]:.2f} wall, "
                                     f"×{steady[w] / steady[1]:.2f} steady" if w > 1 else ""))})
    return rows


def _cache_samples(n: int, seed: int):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (16, 256, 256, 3), dtype=np.uint8)
    for i in range(n):
        yield HandSample(image=np.roll(base[i % 16], i, axis=1), key=f"bench/{i:06d}", source="bench",
                         joints_2d=rng.uniform(10, 246, (21, 2)).astype(np.float32),
                         joints_3d=rng.uniform(-100, 600, (21, 3)).astype(np.float32),
                         intrinsics=np.diag([500.0, 500.0, 1.0]).astype(np.float32),
                         mask=(base[i % 16, :, :, 0] > 128).astype(np.uint8))


def _loader_rate(ds: PreparedDataset, batch_size: int, num_workers: int, epochs: int) -> float:
    count, t0 = 0, None
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                            persistent_workers=False, generator=torch.Generator().manual_seed(epoch))
        for batch in loader:
            if t0 is None:  # start the clock at the first batch (worker start-up excluded)
                t0 = time.perf_counter()
                continue
            count += len(batch["index"])
    return count / (time.perf_counter() - t0)


def bench_cache(n: int = 1024, batch_size: int = 32, num_workers: int = 2, epochs: int = 2,
                shard_size: int = 512, seed: int = 0, root: str | None = None) -> list[dict]:
    """(b): samples/s through a DataLoader, without and with augmentation."""
    rows = []
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        split = Path(tmp) / "train"
        t0 = time.perf_counter()
        write_split(_cache_samples(n, seed), split, shard_size=shard_size)
        write_rate = n / (time.perf_counter() - t0)
        rows.append({"bench": "cache", "data": f"{n} × 256² (shards of {shard_size})",
                     "setting": "write_split", "value": write_rate, "unit": "samples/s",
                     "note": "one process"})
        for name, aug in (("plain", None), ("augmented", Augmenter(seed=0))):
            ds = PreparedDataset(split, augment=aug)
            t1 = time.perf_counter()
            for i in range(64):
                ds[i]
            single = 64 / (time.perf_counter() - t1)
            rate = _loader_rate(ds, batch_size, num_workers, epochs)
            rows.append({"bench": "cache", "data": f"{n} × 256²", "setting":
                         f"DataLoader {num_workers} workers, batch {batch_size}, {name}", "value": rate,
                         "unit": "samples/s",
                         "note": (f"target ≥ {TARGETS[name]:.0f}: "
                                  f"{'met' if rate >= TARGETS[name] else 'MISSED'}; "
                                  f"__getitem__ alone {single:.0f}/s in-process")})
    return rows


def run(mask_n: int = 64, cache_n: int = 1024, workers: int | None = None, num_workers: int = 2,
        batch_size: int = 32, iterations: int = 5, synth_root: str | None = None) -> list[dict]:
    """Both benchmarks; one row per measurement."""
    return (bench_grabcut(mask_n, iterations=iterations, workers=workers, synth_root=synth_root)
            + bench_cache(cache_n, batch_size=batch_size, num_workers=num_workers))


def format_table(rows: list[dict]) -> str:
    lines = ["| bench | data | setting | throughput | notes |", "|---|---|---|---|---|"]
    lines += [f"| {r['bench']} | {r['data']} | {r['setting']} | {r['value']:.1f} {r['unit']} | {r['note']} |"
              for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mask-n", type=int, default=64)
    ap.add_argument("--cache-n", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=None, help="GrabCut processes (default: all cores)")
    ap.add_argument("--num-workers", type=int, default=2, help="DataLoader workers")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--synth-root", default=None)
    a = ap.parse_args()
    print(f"cpu cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}")
    print(format_table(run(a.mask_n, a.cache_n, a.workers, a.num_workers, a.batch_size, a.iterations,
                           a.synth_root)))

"""§3.5 GrabCut silhouettes from 2D joints: accuracy on hand-like fixtures, init labels, parallel
resumable batch runs with atomic writes."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from keyhand.data import masks as masks_mod
from keyhand.data.masks import (
    BONES,
    PARENTS,
    MaskError,
    MaskItem,
    compute_masks,
    draw_hand_fixture,
    grabcut_init,
    grabcut_mask,
    iou,
    load_mask,
    mask_chunk,
    mask_path,
)
from keyhand.data.record import HandSample


@pytest.fixture(scope="module")
def fixtures() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return [draw_hand_fixture(np.random.default_rng(i), size=256) for i in range(6)]


def test_skeleton_tree():
    assert PARENTS[:6] == (-1, 0, 1, 2, 3, 0) and PARENTS[9:13] == (0, 9, 10, 11) and len(BONES) == 20


def test_init_labels(fixtures):
    img, gt, j = fixtures[0]
    init = grabcut_init(gt.shape, j)
    assert set(np.unique(init)) == {cv2.GC_BGD, cv2.GC_FGD, cv2.GC_PR_BGD, cv2.GC_PR_FGD}
    pts = np.round(j).astype(int)
    inside = (pts >= 0).all(1) & (pts < 256).all(1)
    assert (init[pts[inside, 1], pts[inside, 0]] == cv2.GC_FGD).all()  # joints lie on the definite bones
    fg = init == cv2.GC_FGD
    assert (gt[fg] == 1).mean() > 0.97                                   # definite fg is hand
    hull = grabcut_init(gt.shape, j, pr_fg_region="hull", ring=None)
    assert (hull == cv2.GC_PR_FGD).sum() > (init == cv2.GC_PR_FGD).sum()


def test_grabcut_iou_on_hand_like_images(fixtures):
    ious = []
    for img, gt, j in fixtures:
        info = {}
        m = grabcut_mask(img, j, iterations=5, info=info)
        assert m.shape == gt.shape and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
        assert not info["fallback"]
        ious.append(iou(m, gt))
    assert np.mean(ious) >= 0.8, ious
    assert min(ious) >= 0.7, ious
    img, gt, j = fixtures[0]
    np.testing.assert_array_equal(grabcut_mask(img, j), grabcut_mask(img, j))  # reproducible


def test_small_hand_in_large_image():
    img, gt, j = draw_hand_fixture(np.random.default_rng(11), size=128)
    big = cv2.resize(np.random.default_rng(1).integers(0, 255, (8, 8, 3)).astype(np.uint8), (480, 360))
    big[100:228, 200:328] = img
    m = grabcut_mask(big, j + np.float32([200, 100]))
    assert iou(m[100:228, 200:328], gt) > 0.75 and m.sum() == m[100:228, 200:328].sum()


def test_bad_inputs():
    img = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(MaskError, match="uint8"):
        grabcut_mask(img.astype(np.float32), np.zeros((21, 2)))
    with pytest.raises(MaskError, match="21, 2"):
        grabcut_mask(img, np.zeros((20, 2)))
    with pytest.raises(MaskError, match="outside"):
        grabcut_mask(img, np.full((21, 2), -500.0))
    with pytest.raises(MaskError):
        mask_path("/tmp", "../escape")


def _items(fixtures, n=None):
    return [MaskItem(f"train/{i:03d}", j, image=img) for i, (img, _, j) in enumerate(fixtures[:n])]


def test_resume_skips_done_items(fixtures, tmp_path):
    out = tmp_path / "masks"
    first = compute_masks(_items(fixtures, 2), out, workers=1, iterations=2)
    assert (first.done, first.skipped, first.failed) == (2, 0, [])
    stamp = os.stat(mask_path(out, "train/000")).st_mtime_ns
    seen = []
    again = compute_masks(_items(fixtures, 4), out, workers=1, iterations=2, progress=seen.extend)
    assert (again.written, again.skipped) == (2, 2)
    assert sorted(r.key for r in seen) == ["train/002", "train/003"]
    assert os.stat(mask_path(out, "train/000")).st_mtime_ns == stamp
    gt = fixtures[0][1]
    assert iou(load_mask(out, "train/000"), gt) > 0.7


def test_parallel_matches_serial(fixtures, tmp_path):
    samples = [HandSample(image=img, key=f"s{i}", source="fixture", joints_2d=j) for i, (img, _, j) in
               enumerate(fixtures[:4])]
    rep = compute_masks(samples, tmp_path / "par", workers=2, iterations=2, chunk_size=2)
    assert rep.written == 4 and not rep.failed
    serial = mask_chunk(_items(fixtures, 1), tmp_path / "ser", iterations=2)
    assert serial[0].status == "done"
    np.testing.assert_array_equal(load_mask(tmp_path / "par", "s0"), load_mask(tmp_path / "ser", "train/000"))


def test_interrupted_write_leaves_no_partial_file(fixtures, tmp_path, monkeypatch):
    out = tmp_path / "masks"

    def crash(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(masks_mod.os, "replace", crash)
    res = mask_chunk(_items(fixtures, 1), out, iterations=1)
    assert res[0].status == "failed" and "simulated" in res[0].error
    assert not mask_path(out, "train/000").exists()
    assert not [p for p in out.rglob("*") if p.is_file()]  # the temporary file was removed too
    with pytest.raises(MaskError, match="missing"):
        load_mask(out, "train/000")
    monkeypatch.undo()
    assert compute_masks(_items(fixtures, 1), out, workers=1, iterations=1).written == 1


def test_failed_item_does_not_stop_chunk(fixtures, tmp_path):
    items = [MaskItem("bad", np.zeros((21, 2)), image_path=str(tmp_path / "nope.png")), *_items(fixtures, 1)]
    rep = compute_masks(items, tmp_path, workers=1, iterations=1)
    assert rep.written == 1 and rep.failed[0][0] == "bad" and "nope.png" in rep.failed[0][1]

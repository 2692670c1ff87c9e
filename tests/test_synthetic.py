"""The synthetic datasets (keyhand.data.synthetic): determinism, exact annotations, gestures, contact sheet."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from keyhand.data.poses import GESTURES
from keyhand.data.readers import project
from keyhand.data.record import DatasetNotFoundError
from keyhand.data.synthetic import SyntheticReader, contact_sheet, generate

SIZE = (96, 128)


@pytest.fixture(scope="module")
def stb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate("synth-stb", tmp_path_factory.mktemp("synth") / "stb", {"train": 6, "test": 2}, seed=3,
                    image_size=SIZE)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_images(stb: Path, tmp_path: Path) -> None:
    again = generate("synth-stb", tmp_path / "again", {"train": 6, "test": 2}, seed=3, image_size=SIZE,
                     batch_size=4)  # a different batch size must not matter
    assert _files(again) == _files(stb)
    other = generate("synth-stb", tmp_path / "other", {"train": 2}, seed=4, image_size=SIZE)
    assert (other / "train/000000.png").read_bytes() != (stb / "train/000000.png").read_bytes()


def test_resume_rewrites_only_what_is_missing(stb: Path, tmp_path: Path) -> None:
    root = generate("synth-stb", tmp_path / "r", {"train": 6, "test": 2}, seed=3, image_size=SIZE)
    (root / "train/000004.json").unlink()        # an interrupted sample: its json (written last) is missing
    stamp = (root / "train/000001.png").stat().st_mtime_ns
    generate("synth-stb", root, {"train": 6, "test": 2}, seed=3, image_size=SIZE)
    assert _files(root) == _files(stb)
    assert (root / "train/000001.png").stat().st_mtime_ns == stamp


def test_annotations_are_exact_and_consistent(stb: Path) -> None:
    reader = SyntheticReader(stb, "train")
    assert len(reader) == 6 and len(SyntheticReader(stb, "test")) == 2
    for s in reader:
        assert s.image.shape == (*SIZE, 3) and s.image.dtype == np.uint8
        assert s.joints_3d[:, 2].min() > 100                                  # in front of the camera, mm
        np.testing.assert_allclose(project(s.joints_3d, s.intrinsics), s.joints_2d, atol=0.01)
        bones = np.linalg.norm(s.joints_3d[[4, 8, 12, 16, 20]] - s.joints_3d[0], axis=1)
        assert 80 < bones.max() < 260                                         # wrist to fingertips, adult hand
        inside = s.visibility > 0
        assert inside.sum() >= 15
        # the visible hand mask covers the hand: most in-image joints lie on it (or within 3 px)
        near = cv2.dilate(s.mask, np.ones((7, 7), np.uint8))
        px = np.round(s.joints_2d[inside]).astype(int)
        assert near[px[:, 1], px[:, 0]].mean() > 0.8
        assert 0.01 < s.mask.mean() < 0.6
        assert s.gesture is None and s.subject is None


def test_obman_like_set_has_occluders(tmp_path: Path) -> None:
    root = generate("synth-obman", tmp_path / "obman", {"train": 6}, seed=0, image_size=SIZE)
    reader = SyntheticReader(root, "train")
    occluded = [int(s.extra["object_mask"].sum()) for s in reader]
    assert sum(o > 0 for o in occluded) >= 3
    for s in reader:
        assert not (s.mask.astype(bool) & s.extra["object_mask"].astype(bool)).any()   # disjoint labels


def test_gesture_set_classes_subjects_and_noise(tmp_path: Path) -> None:
    n_cls = len(GESTURES)
    assert n_cls >= 10
    root = generate("synth-gestures", tmp_path / "g", {"train": 2 * n_cls}, seed=0, image_size=SIZE,
                    num_subjects=2)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["classes"] == list(GESTURES) and meta["num_subjects"] == 2
    reader = SyntheticReader(root, "train")
    labels = [s.gesture for s in reader]
    assert labels == list(range(n_cls)) * 2
    assert [s.subject for s in reader] == ["s0"] * n_cls + ["s1"] * n_cls
    assert all(s.gesture_name == list(GESTURES)[s.gesture] for s in reader)
    # same class, different subject: different shape and per-sample pose noise, similar articulation
    a, b = (json.loads((root / f"train/{i:06d}.json").read_text()) for i in (0, n_cls))
    assert a["betas"] != b["betas"] and a["pose"] != b["pose"]
    assert np.abs(np.subtract(a["pose"], b["pose"])).mean() < 0.25


def test_contact_sheet_draws_joints(stb: Path, tmp_path: Path) -> None:
    out = contact_sheet(stb, "train", tmp_path / "sheet.png", n=6, cols=3)
    sheet = cv2.imread(str(out))
    assert sheet.shape == (2 * SIZE[0], 3 * SIZE[1], 3)
    first = cv2.cvtColor(SyntheticReader(stb, "train")[0].image, cv2.COLOR_RGB2BGR)
    assert (sheet[: SIZE[0], : SIZE[1]] != first).any(axis=2).mean() > 0.005   # skeleton drawn over it


def test_bad_input_one_line(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="make-synthetic"):
        SyntheticReader(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="synth-stb"):
        generate("synth-nothing", tmp_path / "x", {"train": 1})
    from pipeline.cli import app

    result = CliRunner().invoke(app, ["make-synthetic", "synth-nothing", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "unknown synthetic dataset" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(app, ["make-synthetic", "synth-stb", "--out", str(tmp_path / "x"),
                                      "--split", "train"])
    assert result.exit_code == 2 and "NAME=COUNT" in result.output
    assert not (tmp_path / "x").exists()


def test_palm_and_back_views_differ_by_palm_tone_and_nails() -> None:
    """The flat hand seen from its back and from its palm casts mirror-image silhouettes; the palm's lighter tone
    and the nails (back view only) tell the views apart, as on real hands (without them the SFE confused the
    thumb and little-finger sides of a quarter of the test crops, docs/statistics.md)."""
    import torch

    from keyhand.data.synthetic import _SKIN, _compose, _hand_frame, _Scene, render_batch
    from keyhand.geometry.mano import ManoLayer

    layer = ManoLayer(None, side="right", use_pca=False, flat_hand_mean=True, unit="mm", dtype=torch.float64)
    frame = _hand_frame(layer)
    scenes = []
    for facing in (1.0, -1.0):                              # back, then palm towards the camera
        target = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -facing]])
        target = np.concatenate([target, np.cross(target[0], target[1])[None]])
        scenes.append(_Scene(betas=np.zeros(10), pose=np.zeros(45), rotation=target.T @ frame,
                             centre_px=np.array([63.5, 47.5]), depth_m=0.5, focal=160.0, skin=_SKIN[2],
                             light=np.array([0.0, 0.0, -1.0]), gesture=-1, subject=-1))
    back, palm = render_batch(layer, scenes, SIZE)
    assert (back["hand_mask"] ^ palm["hand_mask"][:, ::-1]).mean() < 0.05      # mirror-image silhouettes
    hb, hp = back["hand_mask"], palm["hand_mask"]
    assert back["marks"][hb, 0].mean() < 0.05 and palm["marks"][hp, 0].mean() > 0.8     # palm tone
    assert 0.01 < back["marks"][hb, 1].mean() < 0.2 and palm["marks"][hp, 1].max() == 0  # nails
    img_b = _compose(scenes[0], back, np.random.default_rng(0), occluders=False)[0]
    img_p = _compose(scenes[1], palm, np.random.default_rng(0), occluders=False)[0]
    assert abs(back["shade"][hb].mean() - palm["shade"][hp].mean()) < 0.01            # same lighting
    assert (img_p[hp].mean(0) - img_b[hb].mean(0) > 8).all()                          # a lighter palm


def test_a_folder_of_another_generator_version_or_seed_is_refused(tmp_path: Path) -> None:
    root = generate("synth-stb", tmp_path / "v", {"train": 1}, seed=0, image_size=SIZE)
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "version": "1"}))
    with pytest.raises(ValueError, match=r"dataset.json.*version 1"):
        generate("synth-stb", root, {"train": 2}, seed=0, image_size=SIZE)
    assert (root / "train/000000.json").exists() and not (root / "train/000001.json").exists()  # nothing lost
    other = generate("synth-stb", tmp_path / "w", {"train": 1}, seed=0, image_size=SIZE)
    with pytest.raises(ValueError, match=r"dataset.json: written with seed 0, not 1"):
        generate("synth-stb", other, {"train": 1}, seed=1, image_size=SIZE)
    from pipeline.cli import app

    result = CliRunner().invoke(app, ["make-synthetic", "synth-stb", "--out", str(other), "--seed", "1",
                                      "--height", str(SIZE[0]), "--width", str(SIZE[1])])
    assert result.exit_code == 2 and "written with seed 0, not 1" in result.output
    (other / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"dataset.json: not a generator's dataset.json"):
        generate("synth-stb", other, {"train": 1}, seed=0, image_size=SIZE)

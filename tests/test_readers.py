"""Dataset readers (paper §4.1.1-4.1.4) on tiny fixtures written in each dataset's genuine layout, and what
preparation does with them: STB's left hand mirrored into a right one, the gesture crops enlarged once by 20 %,
the synthetic sets' ground-truth meshes."""

from __future__ import annotations

import json
import logging
import math
import pickle
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
from PIL import Image
from scipy.spatial.transform import Rotation

from keyhand.data.cache import PreparedDataset, read_manifest
from keyhand.data.obman import OBMAN_INTRINSICS, ObManReader
from keyhand.data.prepare import box_to_crop, prepare_split, read_split_vertices
from keyhand.data.readers import READERS, DatasetReader, holdout_split, open_dataset, project
from keyhand.data.record import JOINT_NAMES, AnnotationError, DatasetError, DatasetNotFoundError, HandSample
from keyhand.data.rwth import RWTH_STATIC, RWTHReader
from keyhand.data.senz3d import Senz3DReader
from keyhand.data.stb import SEQUENCES, SK_COLOR_INTRINSICS, STBReader

J = JOINT_NAMES.index
FINGERS = ("thumb", "index", "middle", "ring", "little")


def known_hand(z: float = 600.0, shift: float = 0.0) -> np.ndarray:
    """(21, 3) mm, OpenCV camera frame, common order: a hand with every joint in a distinct place."""
    joints = np.zeros((21, 3))
    joints[0] = (shift, 70.0, z)
    bases = {"thumb": (35.0, 45.0), "index": (20.0, 0.0), "middle": (5.0, -3.0), "ring": (-10.0, 0.0),
             "little": (-25.0, 5.0)}
    dirs = {"thumb": (0.8, -0.6), "index": (0.1, -1.0), "middle": (0.0, -1.0), "ring": (-0.1, -1.0),
            "little": (-0.25, -1.0)}
    for f in FINGERS:
        d = np.array(dirs[f]) / np.linalg.norm(dirs[f])
        for k in range(4):
            xy = np.array(bases[f]) + d * 22.0 * k
            joints[J(f"{f}{k + 1}")] = (xy[0] + shift, xy[1], z - 4.0 * k)
    return joints


def write_image(path: Path, size: tuple[int, int] = (32, 24), value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def corrupt(path: Path) -> None:
    path.write_bytes(b"\x89PNG not really an image" if path.suffix == ".png" else b"\xff\xd8\xff garbage")


def check_skip_policy(factory, bad: Path, n: int) -> None:
    """'fail' raises naming the file; 'skip' drops the sample, lists it and warns exactly once."""
    with pytest.raises(DatasetError, match=bad.name):
        factory(on_corrupt="fail").scan()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader = factory(on_corrupt="skip")
    assert len(reader) == n - 1 and reader.skipped == [str(bad)]
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and "skipped 1 sample" in msgs[0] and bad.name in msgs[0]


def test_registry() -> None:
    assert set(READERS) == {"obman", "stb", "rwth", "senz3d"}
    assert all(issubclass(READERS[k], DatasetReader) for k in READERS)
    with pytest.raises(ValueError, match="unknown dataset"):
        open_dataset("nyu", "/nowhere", "train")


@pytest.mark.parametrize("name,split",
                         [("obman", "train"), ("stb", "test"), ("rwth", "all"), ("senz3d", "all")])
def test_missing_root_message(tmp_path: Path, name: str, split: str) -> None:
    root = tmp_path / "absent"
    with pytest.raises(DatasetNotFoundError) as err:
        open_dataset(name, root, split)
    msg = str(err.value)
    assert "\n" not in msg and str(root) in msg and f"data.{name}.root" in msg and "http" in msg


def test_holdout_split_is_stratified_80_20() -> None:
    items = list(range(1160))
    labels = [i % 30 for i in items]
    train, test = holdout_split(items, labels, "train"), holdout_split(items, labels, "test")
    assert (len(train), len(test)) == (928, 232) and not set(train) & set(test)
    assert holdout_split(items, labels, "all") == items


# ---------------------------------------------------------------------------------------------- ObMan
OBMAN_EXTR = np.diag([1.0, -1.0, -1.0])


def obman_meta(joints_mm: np.ndarray, **over) -> dict:
    world = (joints_mm @ OBMAN_EXTR) / 1000.0  # OpenCV mm → Blender world m (R is its own inverse)
    meta = {"coords_3d": world.astype(np.float32),
            "coords_2d": project(joints_mm, OBMAN_INTRINSICS),
            "verts_3d": np.tile(world[:1], (778, 1)).astype(np.float32), "side": "right",
            "hand_pose": np.zeros(45, np.float32), "pca_pose": np.zeros(45, np.float32),
            "shape": np.zeros(10, np.float32), "class_id": "02876657", "sample_id": "abc",
            "obj_path": "x.obj",
            "affine_transform": np.eye(4, dtype=np.float32), "depth_min": np.float32(0.4),
            "depth_max": np.float32(0.9), "z": 0.6}
    meta.update(over)
    return meta


@pytest.fixture
def obman_root(tmp_path: Path) -> Path:
    root = tmp_path / "obman"
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        d = root / split
        for sub in ("meta", "segm"):
            (d / sub).mkdir(parents=True)
        for i in range(n):
            prefix = f"{i:08d}"
            write_image(d / "rgb" / f"{prefix}.jpg", (16, 16), 100)
            write_image(d / "rgb_hand" / f"{prefix}.jpg", (16, 16), 200)
            segm = np.zeros((16, 16, 3), np.uint8)
            segm[2:6, 2:6, 0] = 22      # hand in rgb/
            segm[8:12, 8:12, 0] = 100   # object in rgb/
            segm[1:9, 1:9, 1] = 24      # hand in rgb_hand/
            cv2.imwrite(str(d / "segm" / f"{prefix}.png"), segm)
            with open(d / "meta" / f"{prefix}.pkl", "wb") as fh:  # protocol 2 as Blender's Python 3 wrote
                pickle.dump(obman_meta(known_hand(shift=10.0 * i)), fh, protocol=2)
    return root


def test_obman_counts_modes_and_keys(obman_root: Path) -> None:
    assert [len(ObManReader(obman_root, s)) for s in ("train", "val", "test")] == [3, 1, 2]
    r = ObManReader(obman_root, "train")
    assert r.keys == [f"train/rgb/{i:08d}.jpg" for i in range(3)]
    assert len(ObManReader(obman_root, "train", mode="rgb_hand")) == 3
    both = ObManReader(obman_root, "train", mode="rgb+rgb_hand")
    assert len(both) == 6 and sum(k.startswith("train/rgb_hand/") for k in both.keys) == 3


def test_obman_conversion(obman_root: Path) -> None:
    s = ObManReader(obman_root, "test")[1]
    assert isinstance(s, HandSample) and s.source == "obman" and s.image.shape == (16, 16, 3)
    truth = known_hand(shift=10.0)
    np.testing.assert_allclose(s.joints_3d, truth, atol=1e-3)   # frame flip + m → mm, no permutation
    assert s.joints_3d[J("thumb4"), 0] > s.joints_3d[J("little4"), 0]    # thumb tip on +x as placed
    assert s.joints_3d[J("middle4"), 1] < s.joints_3d[J("wrist"), 1]     # fingertips above the wrist
    np.testing.assert_allclose(s.intrinsics, [[480, 0, 128], [0, 480, 128], [0, 0, 1]])
    np.testing.assert_allclose(s.joints_2d, project(s.joints_3d, s.intrinsics), atol=1e-4)
    uv = 480 * truth[:, :2] / truth[:, 2:] + 128
    np.testing.assert_allclose(s.joints_2d, uv, atol=1e-3)
    assert s.mask.sum() == 16 and s.mask[3, 3] == 1 and s.mask[9, 9] == 0   # hand label only, channel 0
    assert s.extra["verts_3d"].shape == (778, 3) and s.extra["class_id"] == "02876657"
    assert ObManReader(obman_root, "test", mode="rgb_hand")[0].mask.sum() == 64  # channel 1


def test_obman_cam_extr_from_meta(obman_root: Path) -> None:
    path = obman_root / "val" / "meta" / "00000000.pkl"
    extr = np.eye(4)[:3]
    extr[:, 3] = (0.0, 0.0, 0.5)
    with open(path, "wb") as fh:
        pickle.dump(obman_meta(known_hand(), coords_3d=np.ones((21, 3), np.float32), cam_extr=extr), fh)
    expect = np.full((21, 3), [1000, 1000, 1500])  # identity rotation, 0.5 m along z, m → mm
    np.testing.assert_allclose(ObManReader(obman_root, "val")[0].joints_3d, expect)


def test_obman_bad_annotations(obman_root: Path) -> None:
    path = obman_root / "val" / "meta" / "00000000.pkl"
    with open(path, "wb") as fh:
        pickle.dump(obman_meta(known_hand(), coords_3d=np.zeros((20, 3), np.float32)), fh)
    with pytest.raises(AnnotationError, match=r"00000000\.pkl: field 'coords_3d' must have shape \(21, 3\)"):
        ObManReader(obman_root, "val")[0]
    with open(path, "wb") as fh:
        fh.write(b"cos\nsystem\n(S'echo pwned'\ntR.")  # a pickle calling os.system
    with pytest.raises(DatasetError, match="refused to unpickle os.system"):
        ObManReader(obman_root, "val")[0]


def test_obman_corrupt_image(obman_root: Path) -> None:
    bad = obman_root / "train" / "rgb" / "00000001.jpg"
    corrupt(bad)
    with pytest.raises(DatasetError, match="00000001.jpg"):
        ObManReader(obman_root, "train")[1]
    check_skip_policy(lambda **kw: ObManReader(obman_root, "train", **kw), bad, 3)


# ------------------------------------------------------------------------------------------------ STB
def stb_order(common: np.ndarray) -> np.ndarray:
    """A common-order hand in STB's README order: palm, little, ring, middle, index, thumb (mcp → tip)."""
    fingers = ("little", "ring", "middle", "index", "thumb")
    names = ["wrist"] + [f"{f}{k}" for f in fingers for k in (1, 2, 3, 4)]
    return np.stack([common[J(n)] for n in names])


@pytest.fixture
def stb_root(tmp_path: Path) -> Path:
    root = tmp_path / "stb"
    (root / "labels").mkdir(parents=True)
    R = Rotation.from_rotvec([0.00531, -0.01196, 0.00301]).as_matrix()   # README: colour → depth
    T = np.array([-24.0381, -0.4563, -1.2326])
    for b in range(1, 7):
        for kind in ("Counting", "Random"):
            seq = f"B{b}{kind}"
            frames = [stb_order(known_hand(shift=5.0 * i + b)) @ R.T + T for i in range(2)]  # depth frame
            para = np.stack(frames).transpose(2, 1, 0)                                        # (3, 21, N)
            scipy.io.savemat(root / "labels" / f"{seq}_SK.mat", {"handPara": para})
            for i in range(2):
                write_image(root / "images" / seq / f"SK_color_{i}.png", (16, 12))
    return root


def test_stb_split_counts_and_keys(stb_root: Path) -> None:
    assert [len(STBReader(stb_root, s)) for s in ("train", "test", "all")] == [20, 4, 24]
    assert STBReader(stb_root, "test").keys == [f"images/B1{k}/SK_color_{i}.png"
                                                for k in ("Counting", "Random") for i in range(2)]


def test_stb_frame_order_and_projection(stb_root: Path) -> None:
    truth = known_hand(shift=5.0 * 1 + 1)   # B1Counting frame 1
    s = STBReader(stb_root, "test", palm_to_wrist="keep")[1]
    assert s.side == "left" and s.extra["root_joint"] == "palm centre"
    np.testing.assert_allclose(s.joints_3d, truth, atol=1e-3)   # depth → colour frame and reorder undone
    for name in ("thumb1", "thumb4", "index4", "middle1", "ring3", "little4"):
        np.testing.assert_allclose(s.joints_3d[J(name)], truth[J(name)], atol=1e-3)
    np.testing.assert_allclose(s.intrinsics, SK_COLOR_INTRINSICS)
    assert s.intrinsics[0, 0] == pytest.approx(607.92271) and s.intrinsics[1, 2] == pytest.approx(236.42484)
    np.testing.assert_allclose(s.joints_2d, project(truth, SK_COLOR_INTRINSICS), atol=1e-3)
    w = STBReader(stb_root, "test")[1]   # default: wrist = palm + (palm − ring MCP)
    np.testing.assert_allclose(w.joints_3d[0], 2 * truth[0] - truth[J("ring1")], atol=1e-3)
    np.testing.assert_allclose(w.joints_3d[1:], truth[1:], atol=1e-3)
    np.testing.assert_allclose(w.extra["palm"], truth[0], atol=1e-3)


def test_stb_left_hand_is_mirrored_at_preparation(stb_root: Path, tmp_path: Path) -> None:
    """STB shows a left hand, the model is the right MANO: preparation mirrors image, 2D, 3D and intrinsics so
    that the mirrored 3D joints still project onto the mirrored 2D joints."""
    ramp = np.broadcast_to(np.linspace(0, 255, 640)[None, :, None], (480, 640, 3)).astype(np.uint8)
    Image.fromarray(ramp).save(stb_root / "images" / "B1Counting" / "SK_color_0.png")   # left dark, right bright
    assert {s.side for s in STBReader(stb_root, "test")} == {"left"}
    mirrored, stats = prepare_split(STBReader(stb_root, "test"), tmp_path / "m", image_size=64)
    kept, kept_stats = prepare_split(STBReader(stb_root, "test"), tmp_path / "k", image_size=64, mirror_to=None)
    assert stats.mirrored == 4 and kept_stats.mirrored == 0 and stats.meshes == 0
    assert read_split_vertices(tmp_path / "m") is None                # real STB has no mesh
    assert mirrored["params"]["crop"]["mirror_to"] == "right" and mirrored["params_hash"] != kept["params_hash"]
    dm, dk = PreparedDataset(tmp_path / "m"), PreparedDataset(tmp_path / "k")
    for i in range(4):
        a, b = dm.raw(i), dk.raw(i)
        np.testing.assert_allclose(a["joints_3d"], b["joints_3d"] * np.float32([-1, 1, 1]))   # X -> -X
        np.testing.assert_allclose(a["joints_2d"][:, 0], 63.0 - b["joints_2d"][:, 0], atol=1e-3)  # about the
        np.testing.assert_allclose(a["joints_2d"][:, 1], b["joints_2d"][:, 1], atol=1e-3)         # crop centre
        np.testing.assert_allclose(project(a["joints_3d"], a["intrinsics"]), a["joints_2d"], atol=2e-3)
        np.testing.assert_allclose(project(b["joints_3d"], b["intrinsics"]), b["joints_2d"], atol=2e-3)
        np.testing.assert_array_equal(a["images"], b["images"][:, ::-1])
        np.testing.assert_array_equal(a["visibility"], b["visibility"])
    ramp_m, ramp_k = (np.asarray(d.raw(0)["images"])[32, :, 0].astype(int) for d in (dm, dk))
    assert ramp_k[-1] - ramp_k[0] > 5 and ramp_m[0] - ramp_m[-1] > 5    # the ramp really runs the other way
    with pytest.raises(ValueError, match="mirror_to"):
        prepare_split(STBReader(stb_root, "test"), tmp_path / "x", image_size=64, mirror_to="up")


def test_stb_bad_annotation(stb_root: Path) -> None:
    path = stb_root / "labels" / "B1Random_SK.mat"
    scipy.io.savemat(path, {"handPara": np.zeros((3, 20, 2))})
    with pytest.raises(AnnotationError, match=r"B1Random_SK\.mat: field 'handPara' must have shape"):
        STBReader(stb_root, "test")
    scipy.io.savemat(path, {"joints": np.zeros((3, 21, 2))})
    with pytest.raises(AnnotationError, match="B1Random_SK.mat: field 'handPara' missing"):
        STBReader(stb_root, "test")


def test_stb_corrupt_image(stb_root: Path) -> None:
    bad = stb_root / "images" / "B1Random" / "SK_color_0.png"
    corrupt(bad)
    with pytest.raises(DatasetError, match="SK_color_0.png"):
        STBReader(stb_root, "test")[2]
    check_skip_policy(lambda **kw: STBReader(stb_root, "test", **kw), bad, 4)


# ----------------------------------------------------------------------------------------------- RWTH
SKIN, BACKGROUND = (220, 170, 140), (40, 90, 200)


def skin_scene(size=(64, 48), box=(20, 10, 36, 30)) -> np.ndarray:
    img = np.zeros((size[1], size[0], 3), np.uint8)
    img[:] = BACKGROUND
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = SKIN
    return img


@pytest.fixture
def rwth_root(tmp_path: Path) -> Path:
    root = tmp_path / "rwth"
    (root / "images").mkdir(parents=True)
    (root / "video").mkdir()
    for signer in (1, 2):
        for gid in (1, 2, 30):                   # A, B, SCH (the database's ids: 27-29 are Ä, Ö, Ü)
            for session in (1, 2):
                Image.fromarray(skin_scene()).save(root / "images" / f"{signer}_{gid}_{session}_cam1.png")
    Image.fromarray(skin_scene()).save(root / "images" / "1_10_1_cam1.png")   # J: motion, excluded
    video = root / "video" / "3_3_1_cam2.avi"   # gesture id 3 = C, 5 frames of increasing grey
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (32, 24))
    for k in range(5):
        writer.write(np.full((24, 32, 3), 40 * k, np.uint8))
    writer.release()
    return root


def test_rwth_classes_subjects_and_split(rwth_root: Path) -> None:
    r = RWTHReader(rwth_root, "all")          # one camera by default (the paper's 1,160 images)
    assert len(r) == 12 and {r[i].extra["camera"] for i in range(len(r))} == {"cam1"}
    assert len(RWTHReader(rwth_root, "all", camera="both")) == 13
    assert len(RWTHReader(rwth_root, "all", camera=None)) == 13
    assert len(RWTHReader(rwth_root, "all", camera="cam2")) == 1
    assert len(RWTHReader(rwth_root, "all", static_only=False)) == 13   # + J (motion) of cam1
    with pytest.raises(ValueError, match="camera must be"):
        RWTHReader(rwth_root, "all", camera="webcam")
    s = r[r.keys.index("images/2_30_1_cam1.png")]
    assert (s.gesture, s.gesture_name, s.subject) == (RWTH_STATIC.index("SCH"), "SCH", "P02")
    assert s.joints_3d is None and s.extra["session"] == 1 and s.extra["camera"] == "cam1"
    assert r[r.keys.index("images/1_1_2_cam1.png")].gesture == 0 and len(RWTH_STATIC) == 30
    train, test = RWTHReader(rwth_root, "train"), RWTHReader(rwth_root, "test")
    assert len(train) + len(test) == 12 and not set(train.keys) & set(test.keys) and len(test) == 2


def test_rwth_video_middle_frame(rwth_root: Path) -> None:
    r = RWTHReader(rwth_root, "all", camera="cam2")
    s = r[r.keys.index("video/3_3_1_cam2.avi")]
    assert s.gesture_name == "C" and s.extra["frame"] == 2 and s.image.shape == (24, 32, 3)
    assert abs(float(s.image.mean()) - 80) < 6


def test_rwth_hand_box(rwth_root: Path) -> None:
    r = RWTHReader(rwth_root, "all")
    box = r.hand_box(r[0])                                         # tight by default
    assert box is not None and np.allclose(box, (20, 10, 36, 30), atol=1)
    padded = r.hand_box(r[0], pad=0.1)
    assert padded[0] < box[0] and padded[3] > box[3]
    blank = HandSample(image=np.zeros((48, 64, 3), np.uint8), key="x", source="rwth")
    assert r.hand_box(blank) is None


def test_gesture_crop_is_the_hand_box_enlarged_once_by_20_percent(rwth_root: Path, tmp_path: Path) -> None:
    """README: the square around the hand box, enlarged by 20 % (once: the box itself is not padded)."""
    r = RWTHReader(rwth_root, "all")
    assert box_to_crop(r.hand_box(r[0]), 0.2).side == pytest.approx(1.2 * 20)   # box 16 x 20 px
    _, stats = prepare_split(r, tmp_path / "rwth", image_size=48, enlarge=0.2)
    assert stats.by_hand_box == 12 and stats.whole_image == 0 and stats.mirrored == 0
    crop = np.asarray(PreparedDataset(tmp_path / "rwth").raw(0)["images"]).astype(np.float64)
    # skin fraction of each pixel (red: background 40, skin 220; bilinear resampling keeps it linear)
    frac = (crop[..., 0] - BACKGROUND[0]) / (SKIN[0] - BACKGROUND[0])
    # the 20 x 16 px blob spans 20 / 24 of the crop's 48 rows and 16 / 24 of its columns, centred (15 % per
    # side and then 20 % would give 20 / 31.2 of them)
    assert frac[:, 24].sum() == pytest.approx(48 * 20 / 24, abs=0.3)
    assert frac[24, :].sum() == pytest.approx(48 * 16 / 24, abs=0.3)
    rows = frac.sum(1)
    assert np.flatnonzero(rows > 0.5).mean() == pytest.approx(23.5, abs=0.3)


def test_rwth_bad_name_and_corrupt(rwth_root: Path) -> None:
    bad = rwth_root / "images" / "1_2_2_cam1.png"
    corrupt(bad)
    check_skip_policy(lambda **kw: RWTHReader(rwth_root, "all", **kw), bad, 12)
    (rwth_root / "video" / "4_1_1_cam2.avi").write_bytes(b"not a video")
    with pytest.raises(DatasetError, match="4_1_1_cam2.avi: cannot decode video"):
        r = RWTHReader(rwth_root, "all", camera="both")
        r[r.keys.index("video/4_1_1_cam2.avi")]
    (rwth_root / "images" / "holiday.png").write_bytes(b"")
    with pytest.raises(AnnotationError, match="holiday.png: field 'file name'"):
        RWTHReader(rwth_root, "all")


# --------------------------------------------------------------------------------------------- Senz3D
HAND_DEPTH_BOX = (140, 100, 180, 150)   # x0, y0, x1, y1 in the 320 x 240 depth map


def senz_depth() -> np.ndarray:
    d = np.full((240, 320), 1500, np.int16)
    x0, y0, x1, y1 = HAND_DEPTH_BOX
    d[y0:y1, x0:x1] = 450
    d[0:5, 0:5] = 32001          # saturated → invalid
    d[20, 300] = 300             # a single flying pixel nearer than the hand (removed by the opening)
    return d


@pytest.fixture
def senz_root(tmp_path: Path) -> Path:
    root = tmp_path / "senz3d"
    for s in (1, 2):
        for g in (1, 2, 3):
            d = root / f"S{s}" / f"G{g}"
            for r in (1, 2):
                write_image(d / f"{r}-color.png", (640, 480), 90)
                senz_depth().astype("<i2").tofile(d / f"{r}-depth.bin")
                np.full((240, 320), 500, "<i2").tofile(d / f"{r}-conf.bin")
    return root


def test_senz3d_labels_depth_and_split(senz_root: Path) -> None:
    r = Senz3DReader(senz_root, "all")
    assert len(r) == 12 and r.keys[0] == "S1/G1/1-color.png"
    s = r[r.keys.index("S2/G3/2-color.png")]
    assert (s.gesture, s.gesture_name, s.subject, s.extra["repetition"]) == (2, "G3", "S2", 2)
    assert s.image.shape == (480, 640, 3) and s.depth.shape == (240, 320) and s.depth.dtype == np.float32
    assert s.depth[120, 160] == 450 and s.depth[0, 0] == 0 and s.depth[200, 10] == 1500
    assert s.extra["confidence"].shape == (240, 320)
    assert len(Senz3DReader(senz_root, "train")) + len(Senz3DReader(senz_root, "test")) == 12


def test_senz3d_hand_box(senz_root: Path) -> None:
    r = Senz3DReader(senz_root, "all")
    box = r.hand_box(r[0])                                         # tight by default
    focal = lambda n, fov: (n / 2) / math.tan(math.radians(fov) / 2)  # noqa: E731
    sx, sy = focal(640, 63.2) / focal(320, 74.0), focal(480, 49.3) / focal(240, 58.0)
    x0, y0, x1, y1 = HAND_DEPTH_BOX
    expect = (320 + sx * (x0 - 160), 240 + sy * (y0 - 120), 320 + sx * (x1 - 160), 240 + sy * (y1 - 120))
    assert box is not None and np.allclose(box, expect, atol=1.5)
    padded = r.hand_box(r[0], pad=0.1)
    assert padded[0] < box[0] and padded[3] > box[3]
    assert r.hand_box(HandSample(image=np.zeros((4, 4, 3), np.uint8), key="x", source="senz3d")) is None


def test_senz3d_bad_depth_and_corrupt(senz_root: Path) -> None:
    bad_depth = senz_root / "S1" / "G2" / "1-depth.bin"
    np.zeros(100, "<i2").tofile(bad_depth)
    r = Senz3DReader(senz_root, "all")
    with pytest.raises(AnnotationError, match=r"1-depth\.bin: field 'depth' must hold 320x240 int16"):
        r[r.keys.index("S1/G2/1-color.png")]
    bad = senz_root / "S2" / "G1" / "2-color.png"
    corrupt(bad)
    check_skip_policy(lambda **kw: Senz3DReader(senz_root, "all", **kw), bad, 12)


# ------------------------------------------------------------------------------------- synthetic meshes

def test_synthetic_ground_truth_mesh_through_preparation(tmp_path: Path) -> None:
    """The synthetic sets' meshes, rebuilt from their generator parameters, land where the image shows the hand
    and travel with the prepared split (vertices.npy, same camera frame as joints_3d, checked hash)."""
    from keyhand.data.cache import CacheError
    from keyhand.data.synthetic import SyntheticReader, generate

    root = generate("synth-stb", tmp_path / "synth", {"test": 3}, seed=0, image_size=(96, 128))
    reader = SyntheticReader(root, "test")
    for i in range(3):
        s, verts = reader[i], reader.vertices(i)
        assert verts.shape == (778, 3) and verts.dtype == np.float32
        uv = np.clip(np.round(project(verts, s.intrinsics)).astype(int), 0, [127, 95])
        hand = (s.mask | s.extra["object_mask"]).astype(np.uint8)      # the rendered silhouette
        off = cv2.distanceTransform(1 - hand, cv2.DIST_L2, 5)[uv[:, 1], uv[:, 0]]
        assert off.max() <= 1.5                                       # every vertex on (or at the rim of) it
    _, none = prepare_split(reader, tmp_path / "prep", image_size=64, meshes=False)
    assert none.meshes == 0 and read_split_vertices(tmp_path / "prep") is None
    manifest, stats = prepare_split(reader, tmp_path / "prep", image_size=64)
    assert stats.meshes == 3
    verts = read_split_vertices(tmp_path / "prep")
    ds = PreparedDataset(tmp_path / "prep")
    for i in range(3):
        np.testing.assert_allclose(verts[i], reader.vertices(i), atol=1e-4)
        # crop intrinsics map the (unchanged) camera-frame mesh into the crop like the joints
        raw = ds.raw(i)
        np.testing.assert_allclose(project(raw["joints_3d"], raw["intrinsics"]), raw["joints_2d"], atol=2e-3)
    assert read_split_vertices(None) is None
    # a stale file (another preparation) is refused with one line
    (tmp_path / "prep" / "vertices.json").write_text(json.dumps({"split_params_hash": "0" * 16, "count": 3}))
    with pytest.raises(CacheError, match="another preparation"):
        read_split_vertices(tmp_path / "prep")
    # the generator parameters must reproduce the joints with the hand model, or no mesh is claimed
    ann = json.loads((root / "test" / "000001.json").read_text())
    ann["betas"] = [b + 1.0 for b in ann["betas"]]
    (root / "test" / "000001.json").write_text(json.dumps(ann))
    with pytest.raises(DatasetError, match="000001.json: the generator parameters do not reproduce"):
        SyntheticReader(root, "test").vertices(1)
    with pytest.warns(UserWarning, match="no ground-truth meshes"):
        _, stats = prepare_split(SyntheticReader(root, "test"), tmp_path / "prep", image_size=64)
    assert stats.meshes == 0 and read_split_vertices(tmp_path / "prep") is None


# ------------------------------------------------------------------- issue 19: the datasets as downloaded
#: The RWTH download's id list spells the gestures this way (27-30 and 31-35 as the database numbers them).
RWTH_DOWNLOAD_IDS = [*"ABCDEFGHIJKLMNOPQRSTUVWXYZ", "AE", "OE", "UE", "SCH", "One", "Two", "Three", "Four", "Five"]


def write_video(path: Path, frames: int = 5, size: tuple[int, int] = (32, 24)) -> None:
    """A short MPEG-1 program stream (``.mpg``, the RWTH download's container) of increasing grey."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"PIM1"), 25, size)
    for k in range(frames):
        writer.write(np.full((size[1], size[0], 3), 40 * k, np.uint8))
    writer.release()


def write_id_list(path: Path, lines: list[str], encoding: str = "utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("\r\n".join(lines).encode(encoding) + b"\r\n")


def test_rwth_database_numbering_27_ae_28_oe_29_ue_30_sch(tmp_path: Path) -> None:
    """The database numbers its signs 1-26 = A-Z, 27 = AE (Ä), 28 = OE (Ö), 29 = UE (Ü), 30 = SCH, 31-35 = one..five
    (issue 19 item 1, from the download's id list). Layout: the database page (fingerspelling.php: 35 gestures,
    video sequences) and SignCLIP's RWTH loader (RWTHFSMetaProcessor: ``<signer>_<letter_id>_<seq_id>_<camera>.mpg``,
    the id list ``gesture_ids.txt`` read line by line as ``N = NAME``)."""
    root = tmp_path / "rwth"
    for gid in (1, 27, 28, 29, 30, 31, 35):
        write_video(root / "video" / f"1_{gid}_1_cam1.mpg")
    names = lambda r: {k.split("_")[1]: r[i].gesture_name for i, k in enumerate(r.keys)}  # noqa: E731
    static, every = RWTHReader(root, "all"), RWTHReader(root, "all", static_only=False)
    assert names(static) == {"1": "A", "30": "SCH", "31": "1", "35": "5"}      # Ä, Ö, Ü (motion) left out
    assert names(every) == {"1": "A", "27": "Ä", "28": "Ö", "29": "Ü", "30": "SCH", "31": "1", "35": "5"}
    assert static[static.keys.index("video/1_30_1_cam1.mpg")].gesture == RWTH_STATIC.index("SCH")
    # the download's own id list, read as it is: AE/OE/UE/SCH/One..Five, any case, CRLF, the separators seen
    lines = [f"{i} = {n}" for i, n in enumerate(RWTH_DOWNLOAD_IDS, 1)]
    lines[27], lines[28], lines[30] = "28=oe", "29:\tUe", "31\tONE"
    write_id_list(root / "gesture_ids.txt", lines)
    assert names(RWTHReader(root, "all", static_only=False)) == names(every)
    lines[26] = "27 = Ä"                                                       # a Latin-1 list naming the umlaut
    write_id_list(root / "gesture_ids.txt", lines, encoding="latin-1")
    assert names(RWTHReader(root, "all", static_only=False)) == names(every)
    lines[35:] = ["36 = Eszett"]
    write_id_list(root / "gesture_ids.txt", lines)
    with pytest.raises(AnnotationError, match=r"gesture_ids\.txt: line 36 must read 'N = NAME'") as err:
        RWTHReader(root, "all")
    assert "\n" not in str(err.value)


@pytest.fixture
def rwth_download(tmp_path: Path) -> Path:
    """The download as the database page describes it and issue 19 counted it: signers 1-20 in sessions 1 and 2,
    signers 23-26 in session 1 only, both cameras (here signers 1, 2, 20, 23, 26 and signs A, SCH)."""
    root = tmp_path / "rwth"
    for signer in (1, 2, 20, 23, 26):
        for session in ((1,) if signer > 20 else (1, 2)):
            for gid in (1, 30):
                for cam in ("cam1", "cam2"):
                    write_video(root / "video" / f"{signer}_{gid}_{session}_{cam}.mpg", frames=3)
    write_id_list(root / "gesture_ids.txt", [f"{i} = {n}" for i, n in enumerate(RWTH_DOWNLOAD_IDS, 1)])
    return root


def test_rwth_paper_signers_sessions_camera_filters_and_summary(rwth_download: Path) -> None:
    """Default: the paper's 20 individuals (signers 1-20), both sessions, cam1; each filter a reader option (and a
    params key, data.rwth.signers / sessions / camera); the summary line sets what was kept beside §4.1.3's
    1,160 and 928/232. Layout: the database page and SignCLIP's RWTH loader (see the numbering test)."""
    from pipeline.params import Params

    r = RWTHReader(rwth_download, "all")
    assert len(r) == 3 * 2 * 2                                                  # signers 1, 2, 20 x 2 sessions x A, SCH
    assert {s.subject for s in r} == {"P01", "P02", "P20"} and {s.extra["camera"] for s in r} == {"cam1"}
    assert len(RWTHReader(rwth_download, "all", signers=None)) == 12 + 2 * 2  # + 23 and 26 (session 1 only)
    assert len(RWTHReader(rwth_download, "all", sessions=[1])) == 3 * 2
    assert len(RWTHReader(rwth_download, "all", camera="both")) == 24
    line = r.summary()
    assert "12 sequences kept" in line and "signers 1-2, 20" in line and "80/20 hold-out 10/2" in line
    assert "1,160 images, 928/232" in line and "found signers 1-2, 20, 23, 26" in line and "\n" not in line
    with pytest.raises(DatasetError, match=r"no sequence under .* matches signers 21.*found signers 1-2, 20, 23, 26"):
        RWTHReader(rwth_download, "all", signers=[21])
    with pytest.raises(ValueError, match="rwth: signers must be positive integers"):
        RWTHReader(rwth_download, "all", signers=[0])
    options = Params().reader_options("rwth")                                 # params defaults = the paper's
    assert options == {"signers": list(range(1, 21)), "sessions": [1, 2], "camera": "cam1"}
    assert RWTHReader(rwth_download, "all", **options).keys == r.keys
    mine = Params.model_validate({"data": {"rwth": {"signers": [23, 26], "sessions": [1], "camera": "both"}}})
    assert len(RWTHReader(rwth_download, "all", **mine.reader_options("rwth"))) == 2 * 2 * 2


def test_rwth_nested_video_folders_and_root_above_the_archive(tmp_path: Path) -> None:
    """video/ may hold subfolders, and the root may be the folder the archive was unpacked into (one level above
    it), or video/ itself; the id list is found beside video/. Layout: the database page's download (video/,
    gesture_ids.txt, the i6_data_P20_*.txt lists, scripts/) and SignCLIP's RWTH loader's file names."""
    downloads = tmp_path / "downloads"
    archive = downloads / "fingerspelling"
    write_video(archive / "video" / "signer01" / "1_1_1_cam1.mpg")
    write_video(archive / "video" / "signer02" / "2_30_2_cam1.mpg")
    (archive / "i6_data_P20_BOTH.txt").write_text("1_1_1_cam1\n2_30_2_cam1\n")
    write_image(archive / "scripts" / "setup.png")                          # not a sequence: outside video/, images/
    write_id_list(archive / "gesture_ids.txt", [f"{i} = {n}" for i, n in enumerate(RWTH_DOWNLOAD_IDS, 1)])
    above = RWTHReader(downloads, "all")
    assert above.keys == ["fingerspelling/video/signer01/1_1_1_cam1.mpg",
                          "fingerspelling/video/signer02/2_30_2_cam1.mpg"]
    assert [s.gesture_name for s in above] == ["A", "SCH"]
    s = above[0]
    assert s.image.shape == (24, 32, 3) and s.extra["frame"] == 2 and abs(float(s.image.mean()) - 80) < 6
    assert len(RWTHReader(archive, "all")) == 2 and len(RWTHReader(archive / "video", "all")) == 2
    write_id_list(archive / "gesture_ids.txt", ["1 A"] + ["x"])                # the nested list is the one read
    with pytest.raises(AnnotationError, match=r"fingerspelling/gesture_ids\.txt: line 2"):
        RWTHReader(downloads, "all")
    with pytest.raises(DatasetNotFoundError, match=r"no video/ \(nor images/\) folder with sequences under"):
        RWTHReader(archive / "scripts", "all")


def test_obman_modes_name_the_folders_they_read(obman_root: Path) -> None:
    """The paper's 141,550 are ObMan's train rgb/ (one image per meta file): the default. Layout: obman_train's
    handobjectdatasets/obman.py (index = meta/ listing; mode all/hand/obj reads rgb/, rgb_hand/, rgb_obj/ with segm
    channel 0/1/2)."""
    from pydantic import ValidationError

    from pipeline.params import Params

    n_meta = len(list((obman_root / "train" / "meta").glob("*.pkl")))
    r = ObManReader(obman_root, "train")
    assert r.mode == "rgb" and len(r) == n_meta and all(k.startswith("train/rgb/") for k in r.keys)
    assert len(ObManReader(obman_root, "train", mode="rgb+rgb_hand")) == 2 * n_meta
    assert Params().data.obman.mode == "rgb" and Params().reader_options("obman") == {"mode": "rgb"}
    for old, new in (("hand_object", "rgb"), ("hand", "rgb_hand"), ("all", "rgb+rgb_hand")):
        with pytest.raises(ValueError, match=rf"obman: mode '{old}' was renamed '{re.escape(new)}'"):
            ObManReader(obman_root, "train", mode=old)
        with pytest.raises(ValidationError, match=rf"'{old}' was renamed '{re.escape(new)}'"):
            Params.model_validate({"data": {"obman": {"mode": old}}})
    assert "3 images" in r.summary() and "141,550" in r.summary()


def truncated_jpeg(path: Path, size: int = 16) -> None:
    """A JPEG cut short inside its entropy-coded data (header intact), as a partial download leaves it."""
    noise = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=100)
    data = path.read_bytes()
    scan = data.index(b"\xff\xda")                                           # start of scan
    path.write_bytes(data[: scan + (len(data) - scan) // 2])


def test_obman_truncated_jpeg_read_as_obmans_loader_does(obman_root: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """ObMan's own loader (obman_train handobjectdatasets/obman.py) sets ``ImageFile.LOAD_TRUNCATED_IMAGES = True``:
    a truncated rgb/ JPEG is read (and counted, in the log and the summary), not refused; a file that is not an
    image at all still follows data.on_corrupt. Layout: that loader's (see the modes test)."""
    bad = obman_root / "train" / "rgb" / "00000001.jpg"
    truncated_jpeg(bad)
    with pytest.raises(OSError, match="truncated"):                          # PIL alone refuses it
        Image.open(bad).load()
    r = ObManReader(obman_root, "train")
    with caplog.at_level(logging.WARNING, logger="keyhand.data.obman"):
        s = r[1]
        r[1]                                                                   # read twice, counted once
    assert s.image.shape == (16, 16, 3) and r.truncated == [str(bad)]
    assert "1 truncated JPEG(s)" in r.summary()
    assert [m for m in caplog.messages if "truncated JPEG" in m and bad.name in m and "1 truncated so far" in m]
    ObManReader(obman_root, "train").scan()                                   # "fail": not an error
    skipping = ObManReader(obman_root, "train", on_corrupt="skip")
    assert len(skipping) == 3 and skipping.skipped == [] and skipping.truncated == [str(bad)]
    garbage = obman_root / "train" / "rgb" / "00000002.jpg"
    corrupt(garbage)                                                           # not an image: on_corrupt applies
    with pytest.raises(DatasetError, match="00000002.jpg: corrupt or unreadable"):
        ObManReader(obman_root, "train")[2]
    check_skip_policy(lambda **kw: ObManReader(obman_root, "train", **kw), garbage, 3)


def test_stb_sequence_folders_under_the_root(stb_root: Path) -> None:
    """The common copies of STB keep each sequence folder directly under the root, labels in root/labels/ (issue 19);
    the README's layout is root/images/<seq>/ (github.com/zhjwustc/icip17_stereo_hand_pose_dataset). Detected per
    sequence; a sequence with neither stops with one line naming both."""
    for seq in ("B1Counting", "B3Random"):
        (stb_root / "images" / seq).rename(stb_root / seq)
    test = STBReader(stb_root, "test")
    assert test.keys == [f"B1Counting/SK_color_{i}.png" for i in range(2)] + \
        [f"images/B1Random/SK_color_{i}.png" for i in range(2)]
    assert all(s.image.shape == (12, 16, 3) for s in test)                     # no "image file missing"
    train = STBReader(stb_root, "train")
    assert len(train) == 20 and "B3Random/SK_color_0.png" in train.keys
    assert train.sequences.count("B3Random") == 2 and set(train.sequences) == set(SEQUENCES["train"])
    (stb_root / "B1Counting").rename(stb_root / "elsewhere")
    with pytest.raises(DatasetNotFoundError, match=r"no image folder for sequence B1Counting: neither .*images/"
                                                   r"B1Counting nor .*stb/B1Counting exists") as err:
        STBReader(stb_root, "test")
    assert "\n" not in str(err.value)


def test_senz3d_root_is_the_unpacked_folder_or_acquisitions(senz_root: Path, tmp_path: Path) -> None:
    """The archive unpacks into senz3d_dataset/acquisitions/S*/G*/ (the dataset's readme; its users read e.g.
    senz3d_dataset/acquisitions/S1/G11/30-color.png): either folder is a root, with the same keys."""
    unpacked = tmp_path / "senz3d_dataset"
    unpacked.mkdir()
    senz_root.rename(unpacked / "acquisitions")
    (unpacked / "readme.txt").write_text("r-depth.bin: Senz3D depth map raw (320 x 240 short 16 bit)\n")
    a, b = Senz3DReader(unpacked, "all"), Senz3DReader(unpacked / "acquisitions", "all")
    assert len(a) == 12 and a.keys == b.keys and a.keys[0] == "S1/G1/1-color.png"
    assert a[0].depth.shape == (240, 320)
    with pytest.raises(DatasetNotFoundError, match=r"no S1..S4 folders in .* nor in .*acquisitions"):
        Senz3DReader(tmp_path, "all")


def test_stb_val_is_one_whole_held_out_training_sequence(stb_root: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The pose role's val split on STB is data.stb.val_sequence, whole: its frames leave train, and no val frame's
    sequence appears in train (consecutive frames are near-duplicates). Through the prepare stage."""
    from pydantic import ValidationError

    from pipeline.params import Params
    from pipeline.stages.data import held_out, stage_prepare

    assert Params().data.stb.val_sequence == "B2Counting"
    reader = STBReader(stb_root, "train")
    val, train = held_out(reader, "val", val_sequence="B4Random"), held_out(reader, "train", val_sequence="B4Random")
    assert {reader.sequences[i] for i in val.indices} == {"B4Random"} and len(val) == 2
    assert "B4Random" not in {reader.sequences[i] for i in train.indices} and len(train) == 18
    with pytest.raises(ValueError, match="held-out val sequence 'B1Counting' has no sample"):
        held_out(reader, "val", val_sequence="B1Counting")
    monkeypatch.chdir(tmp_path)
    p = Params.model_validate({"model": {"image_size": 32},
                               "data": {"source": "real", "allow_proxy_hand": True, "obman": {"root": str(stb_root)},
                                        "stb": {"root": str(stb_root), "val_sequence": "B6Random"}}})
    stage_prepare(p, "pose")
    keys = {split: [PreparedDataset(Path("data/prepared/pose/stb") / split).key(i) for i in range(n)]
            for split, n in (("train", 18), ("val", 2), ("test", 4))}
    seq = lambda key: key.split("/")[1]  # noqa: E731 - images/<seq>/SK_color_i.png
    assert {seq(k) for k in keys["val"]} == {"B6Random"} and "B6Random" not in {seq(k) for k in keys["train"]}
    assert read_manifest(Path("data/prepared/pose/stb/val"))["params"]["val_sequence"] == "B6Random"
    with pytest.raises(ValidationError, match=r"data\.stb\.val_sequence"):
        Params.model_validate({"data": {"stb": {"val_sequence": "B1Counting"}}})   # the test split is not a choice

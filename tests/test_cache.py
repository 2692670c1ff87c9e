"""The prepared cache: round trip, manifest-last trust rule (interrupted writes), DataLoader workers."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from keyhand.data.augment import Augmenter
from keyhand.data.cache import (
    CacheError,
    PreparedDataset,
    is_prepared,
    read_manifest,
    write_split,
)
from keyhand.data.crop import normalize
from keyhand.data.heatmaps import joint_heatmaps
from keyhand.data.record import DatasetError, HandSample

S = 256


def make_samples(n: int, seed: int = 0) -> list[HandSample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        hand = i % 3 != 2  # every third sample is a gesture sample: no joints, no mask
        img = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
        out.append(HandSample(
            image=img, key=f"split/{i:04d}.png", source="synth-test",
            joints_2d=rng.uniform(20, 236, (21, 2)).astype(np.float32) if hand else None,
            joints_3d=rng.uniform(-80, 600, (21, 3)).astype(np.float32) if hand else None,
            intrinsics=np.diag([500.0, 500.0, 1.0]).astype(np.float32) if hand else None,
            mask=(rng.random((S, S)) > 0.5).astype(np.uint8) if hand else None,
            gesture=None if hand else i % 5, gesture_name=None if hand else f"g{i % 5}",
            subject=None if hand else f"subj{i % 2}",
        ))
    return out


def test_round_trip(tmp_path):
    samples = make_samples(10)
    man = write_split(samples, tmp_path / "train", shard_size=4, params={"dataset": "test"})
    assert man["count"] == 10 and [s["count"] for s in man["shards"]] == [4, 4, 2]
    assert man["subjects"] == ["subj0", "subj1"] and man["gesture_names"] == {"0": "g0", "2": "g2", "3": "g3"}
    assert np.load(tmp_path / "train" / "images-00002.npy", mmap_mode="r").shape == (2, S, S, 3)
    ds = PreparedDataset(tmp_path / "train")
    assert len(ds) == 10
    for i in (0, 2, 5, 9, -1):
        s, item = samples[i], ds[i]
        assert ds.key(i) == s.key
        assert item["image"].shape == (3, S, S) and item["image"].dtype == torch.float32
        np.testing.assert_allclose(item["image"].numpy(), normalize(s.image), atol=1e-6)
        assert item["heatmaps"].shape == (21, 64, 64) and item["mask"].shape == (1, S, S)
        assert item["index"].item() == i % 10
        if s.joints_2d is not None:
            hm, vis = joint_heatmaps(s.joints_2d, s.visibility)
            np.testing.assert_array_equal(item["heatmaps"].numpy(), hm)
            np.testing.assert_array_equal(item["joints_2d"].numpy(), s.joints_2d)
            np.testing.assert_array_equal(item["joints_3d"].numpy(), s.joints_3d)  # camera frame, as given
            np.testing.assert_array_equal(item["intrinsics"].numpy(), s.intrinsics)
            np.testing.assert_array_equal(item["mask"][0].numpy(), s.mask)
            assert item["has_mask"] == 1 and item["has_joints_3d"] == 1 and item["gesture"] == -1
            assert item["subject"] == -1 and item["visibility"].sum() == 21
        else:
            assert item["has_mask"] == 0 and item["has_joints_2d"] == 0 and item["heatmaps"].abs().sum() == 0
            assert item["visibility"].sum() == 0 and item["gesture"] == s.gesture
            assert man["subjects"][item["subject"]] == s.subject
    small = PreparedDataset(tmp_path / "train", mask_size=64, heatmap_size=32)
    assert small[0]["mask"].shape == (1, 64, 64) and small[0]["heatmaps"].shape == (21, 32, 32)
    with pytest.raises(IndexError):
        ds[10]


def test_interrupted_preparation_is_never_trusted(tmp_path):
    split = tmp_path / "train"
    samples = make_samples(9)

    def crashing():
        for i, s in enumerate(samples):
            if i == 6:
                raise KeyboardInterrupt  # killed mid-way
            yield s

    with pytest.raises(KeyboardInterrupt):
        write_split(crashing(), split, shard_size=4)
    assert (split / "images-00000.npy").exists()     # a complete shard was written ...
    assert not list(split.glob("*.tmp")) and not list(split.glob(".*.tmp"))
    with pytest.raises(CacheError, match=str(split)):  # ... but nothing is trusted without the manifest
        PreparedDataset(split)
    assert not is_prepared(split)
    man = write_split(samples, split, shard_size=4)  # the rerun completes
    assert man["count"] == 9 and len(PreparedDataset(split)) == 9

    # A valid split being re-prepared: the old manifest goes first, so a crash leaves nothing trusted.
    with pytest.raises(KeyboardInterrupt):
        write_split(crashing(), split, shard_size=4)
    with pytest.raises(CacheError, match="manifest"):
        read_manifest(split)
    write_split(samples[:3], split, shard_size=4)    # a smaller split: stale shards are removed
    assert sorted(p.name for p in split.glob("images-*.npy")) == ["images-00000.npy"]
    assert len(PreparedDataset(split)) == 3


def test_corrupt_or_mismatched_manifest(tmp_path):
    split = tmp_path / "val"
    man = write_split(make_samples(3), split, params={"sigma_note": 1})
    (split / "masks-00000.npy").unlink()
    with pytest.raises(CacheError, match="masks-00000"):
        PreparedDataset(split)
    write_split(make_samples(3), split, params={"sigma_note": 1})
    with pytest.raises(CacheError, match="params hash"):
        PreparedDataset(split, expected_hash="0" * 16)
    assert PreparedDataset(split, expected_hash=man["params_hash"])
    (split / "manifest.json").write_text("{not json")
    with pytest.raises(CacheError, match="unreadable manifest"):
        PreparedDataset(split)
    with pytest.raises(CacheError, match="does not exist"):
        PreparedDataset(tmp_path / "nowhere")


def test_keep_existing_split_with_same_params(tmp_path):
    split = tmp_path / "train"
    write_split(make_samples(3), split, params={"a": 1})

    def must_not_be_read():
        raise AssertionError("samples consumed")
        yield

    assert write_split(must_not_be_read(), split, params={"a": 1}, overwrite=False)["count"] == 3
    with pytest.raises(AssertionError):
        write_split(must_not_be_read(), split, params={"a": 2}, overwrite=False)


def test_bad_sample_names_key(tmp_path):
    s = make_samples(1)[0]
    s.image = s.image[:100]
    with pytest.raises(DatasetError, match="split/0000.png.*'mask'"):   # HandSample.validate
        write_split([s], tmp_path / "x")
    s.mask = None
    with pytest.raises(CacheError, match="split/0000.png.*crop_sample"):  # not a 256² crop
        write_split([s], tmp_path / "x")
    assert not is_prepared(tmp_path / "x")


def test_dataloader_two_workers_and_augmentation(tmp_path):
    split = tmp_path / "train"
    write_split(make_samples(12), split, shard_size=5)
    ds = PreparedDataset(split, augment=Augmenter(seed=3, min_groups=2))
    assert len(pickle.dumps(ds)) < 20_000  # memmaps are not pickled
    ds[0]  # opens the memmaps in this process; the copy sent to workers must still work
    loader = DataLoader(ds, batch_size=4, num_workers=2)
    batches = list(loader)
    assert len(batches) == 3
    b = batches[0]
    assert b["image"].shape == (4, 3, S, S) and b["heatmaps"].shape == (4, 21, 64, 64)
    assert b["mask"].shape == (4, 1, S, S) and b["gesture"].dtype == torch.int64
    assert torch.cat([x["index"] for x in batches]).tolist() == list(range(12))
    # Augmentation: reproducible per (epoch, index) whatever the worker, different from the plain image.
    again = torch.cat([x["image"] for x in DataLoader(ds, batch_size=6, num_workers=2)])
    torch.testing.assert_close(torch.cat([x["image"] for x in batches]), again)
    plain = PreparedDataset(split)[1]["image"]
    assert not torch.equal(plain, again[1])
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["image"], again[1])
    assert json.loads((split / "manifest.json").read_text())["count"] == 12

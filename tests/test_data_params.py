"""params.yaml's reader settings reach the readers: ``data.obman.mode`` and ``data.stb.palm_to_wrist``, through
the ``prepare`` stage itself (the path ``dvc repro`` runs), on the genuine-layout fixtures of test_readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from keyhand.data.cache import PreparedDataset, read_manifest
from keyhand.data.record import JOINT_NAMES
from pipeline.params import Params
from pipeline.stages.data import stage_prepare
from tests.test_readers import obman_root, stb_root  # noqa: F401 - pytest fixtures

SMALL = {"model": {"image_size": 32}}


def _params(obman_dir: Path, stb_dir: Path, **data) -> Params:
    # these tests read real-layout fixtures without the MANO file: the explicit opt-in to the proxy hand
    base = {"source": "real", "allow_proxy_hand": True, "obman": {"root": str(obman_dir)},
            "stb": {"root": str(stb_dir)}}
    return Params.model_validate({**SMALL, "data": {**base, **data}})


@pytest.mark.parametrize("mode, count", [("rgb", 3), ("rgb_hand", 3), ("rgb+rgb_hand", 6)])
def test_obman_mode_reaches_the_reader(obman_root: Path, stb_root: Path, tmp_path: Path,  # noqa: F811
                                       monkeypatch: pytest.MonkeyPatch, mode: str, count: int) -> None:
    monkeypatch.chdir(tmp_path)
    stage_prepare(_params(obman_root, stb_root, obman={"root": str(obman_root), "mode": mode}), "pretrain")
    split = Path("data/prepared/pretrain/obman/train")
    manifest = read_manifest(split)
    assert manifest["count"] == count and manifest["params"]["mode"] == mode
    keys = [PreparedDataset(split).key(i) for i in range(count)]
    assert any("/rgb_hand/" in k for k in keys) == (mode != "rgb")
    assert all("/rgb_hand/" in k for k in keys) == (mode == "rgb_hand")


def test_stb_palm_to_wrist_reaches_the_reader(obman_root: Path, stb_root: Path, tmp_path: Path,  # noqa: F811
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    joints = {}
    for how in ("keep", "extrapolate"):
        (tmp_path / how).mkdir()
        monkeypatch.chdir(tmp_path / how)
        stage_prepare(_params(obman_root, stb_root, stb={"root": str(stb_root), "palm_to_wrist": how}), "pose")
        split = Path("data/prepared/pose/stb/test")
        assert read_manifest(split)["params"]["palm_to_wrist"] == how
        ds = PreparedDataset(split)
        joints[how] = np.stack([ds.raw(i)["joints_3d"] for i in range(len(ds))])
    keep, wrist = joints["keep"], joints["extrapolate"]
    ring = JOINT_NAMES.index("ring1")
    np.testing.assert_allclose(wrist[:, 1:], keep[:, 1:], atol=1e-4)                     # only joint 0 moves
    np.testing.assert_allclose(wrist[:, 0], 2 * keep[:, 0] - keep[:, ring], atol=1e-3)   # palm + (palm - ring MCP)
    assert np.abs(wrist[:, 0] - keep[:, 0]).max() > 5.0                                   # mm: a real difference
